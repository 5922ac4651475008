"""The brute-force fair CRPS that every CRPS implementation is tested against: the O(M²) double sum in float64.

    CRPS_fair = (1/M) Σ_i |x_i − y|  −  1/(2 M (M−1)) Σ_i Σ_j |x_i − x_j|

(Ferro 2014; WeatherBench2 `CRPS`; GenCast eq. A.6), written as its definition
with nothing clever, so that the evaluation's sorted kernel
(`evaluation.metrics`) and the distillation reward (`gencast_rmmd.distill.reward`)
are both checked against the same formula. Members are on the LAST axis, as in
the evaluation; `np.moveaxis(samples, 0, -1)` adapts the reward's members-first layout.
"""

from __future__ import annotations

import numpy as np


def pairwise_parts(members: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean_i |x_i − y|, Σ_i Σ_j |x_i − x_j|) by the double sum, in float64; `members` [..., M], `truth` [...]."""
    members, truth = np.asarray(members, np.float64), np.asarray(truth, np.float64)
    skill = np.abs(members - truth[..., None]).mean(axis=-1)
    pair_sum = np.abs(members[..., :, None] - members[..., None, :]).sum(axis=(-1, -2))
    return skill, pair_sum


def brute_force_fair_crps(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The fair CRPS of each point, float64: `members` [..., M] with M >= 2, `truth` [...]."""
    count = np.shape(members)[-1]
    skill, pair_sum = pairwise_parts(members, truth)
    return skill - pair_sum / (2 * count * (count - 1))
