"""The distillation methods, by the name `distill.method` selects (one mapping, in one place)."""

from __future__ import annotations

from gencast_rmmd.distill.base import Distiller
from gencast_rmmd.distill.dmd import DistributionMatching
from gencast_rmmd.distill.dmdr import RewardTiltedDistributionMatching
from gencast_rmmd.distill.draft import DraftK
from gencast_rmmd.distill.gndm import GroupNormalisedDistributionMatching
from gencast_rmmd.distill.moment_matching import MomentMatching
from gencast_rmmd.distill.rewarded import CrpsOnly, RewardedMomentMatching

DISTILLERS: dict[str, Distiller] = {
    "mmd": MomentMatching,                # phase 1: moment matching, from the teacher
    "rmmd": RewardedMomentMatching,       # phase 2: rewarded moment matching (on-policy, or offline: true)
    "draft": DraftK,                      # baseline: reward backpropagated through the last K_d student steps
    "crps_only": CrpsOnly,                # baseline: reward alone, one differentiated step on-policy
    "dmd": DistributionMatching,          # phase 2: distribution matching (DMD/DMD2 fake score) + reward + anchor
    "gndm": GroupNormalisedDistributionMatching,  # phase 2: R_dm (+ CRPS: GNDMR) as group-normalised policy rewards
    "dmdr": RewardTiltedDistributionMatching,     # phase 2: reward-tilted DMD (stage 1), then DMD + reward (stage 2)
}
