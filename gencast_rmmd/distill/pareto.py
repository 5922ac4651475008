"""The Pareto table of a reward-weight sweep: validation CRPS against fidelity to the teacher.

For each lambda run (its final EMA student) and for the teacher (its own
sampler), on the first `distill.evaluation_batches` validation batches, with
the same keys for every model (common random numbers) and M =
`distill.reward_samples` samples per condition:

- CRPS: the weighted fair CRPS of the reward (`reward.py`, reward units), mean
  over conditions; lower is better. `crps_change_percent` = 100 (CRPS/CRPS_teacher - 1).
- fidelity: the log-spectral distance between the student's and the teacher's
  zonal energy spectra, mean over channels c and zonal wavenumbers k >= 1 of
  |log10 P_student(c, k) - log10 P_teacher(c, k)|, with
  P(c, k) = area-weighted mean over latitudes (and samples) of the one-sided
  zonal power of x (`data.grid.zonal_power`, the evaluation's spectrum) in the
  model's space. 0 = the same spectrum; blurring (a common failure of
  reward fine-tuning) raises it at high k. Lower is better.

A run is Pareto-optimal when no other run is at least as good on both and
better on one. Written to RUN/pareto.json and RUN/pareto.md; a resumed sweep whose
runs were already scored (same EMA params hashes) keeps the table.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from gencast_rmmd.data.batches import batch_stream
from gencast_rmmd.data.grid import zonal_power
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.diffusion.base import Sampler
from gencast_rmmd.diffusion.registry import SAMPLER_BUILDERS
from gencast_rmmd.distill.base import DistillContext, by_member, repeat_members
from gencast_rmmd.io_utils import atomic_path, write_json_atomic
from gencast_rmmd.training import load_checkpoint
from gencast_rmmd.training.checkpoint import read_meta

CRPS_MEASURE = "weighted fair CRPS of M samples per validation condition (reward units; lower is better)"
FIDELITY_MEASURE = ("log-spectral distance of zonal energy spectra, student vs teacher samples, "
                    "mean |log10 P_s - log10 P_t| over channels and wavenumbers k >= 1 (lower is better)")


def zonal_spectrum(fields: np.ndarray, latitude_weights: np.ndarray) -> np.ndarray:
    """P[c, k] = sum_j a_j mean_n P_k(x_n[j, :, c]) / sum_j a_j for fields [N, lat, lon, C] (P_k: `zonal_power`)."""
    power = zonal_power(np.moveaxis(np.asarray(fields), 2, -1)).mean(axis=0)     # [lat, C, k]
    weights = np.asarray(latitude_weights, np.float64)
    return np.einsum("j,jck->ck", weights, power) / weights.sum()


def spectral_distance(spectrum: np.ndarray, reference: np.ndarray) -> float:
    """mean over c and k >= 1 of |log10 P[c, k] - log10 P_ref[c, k]| (spectra [C, K])."""
    tiny = np.finfo(np.float64).tiny
    return float(np.mean(np.abs(np.log10(spectrum[:, 1:] + tiny) - np.log10(reference[:, 1:] + tiny))))


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """For each (a, b) (both lower-is-better): True when no other point dominates it."""
    def dominates(p, q):
        return p[0] <= q[0] and p[1] <= q[1] and (p[0] < q[0] or p[1] < q[1])
    return [not any(dominates(other, point) for other in points if other is not point) for point in points]


def sample_function(context: DistillContext, sampler: Sampler) -> Callable:
    """jit of (params, conditioning, key, target_shape) -> samples of `sampler` (compiled once per shape)."""
    return jax.jit(lambda params, conditioning, key, shape: sampler(context.denoiser(params), conditioning, key, shape),
                   static_argnums=3)


def score(context: DistillContext, draw: Callable, params, batches: list, key: jax.Array) -> tuple[float, np.ndarray]:
    """(mean weighted fair CRPS, mean zonal spectrum) of the samples `draw` makes with `params` over `batches`."""
    members = context.config.distill.reward_samples
    crps, spectra = [], []
    for index, batch in enumerate(batches):
        prepared = context.space.prepare(batch)
        repeated = repeat_members(prepared, members)
        samples = draw(params, repeated.conditioning, jax.random.fold_in(key, index), repeated.clean.shape)
        crps.append(float(context.weighted_crps(by_member(samples, members), prepared.clean, prepared.valid)))
        spectra.append(zonal_spectrum(np.asarray(samples), context.space.norm.latitude_weights))
    return float(np.mean(crps)), np.mean(spectra, axis=0)


def _markdown(table: dict) -> str:
    lines = [f"# Pareto table: {table['method']}", "",
             f"- CRPS: {table['crps_measure']}; teacher {table['teacher']['crps']:.6g} "
             f"({table['teacher']['nfe_per_step']} NFE)",
             f"- fidelity: {table['fidelity_measure']}", "",
             "| lambda | run | step | CRPS | vs teacher (%) | spectral distance | Pareto-optimal |",
             "|---:|---|---:|---:|---:|---:|:---:|"]
    for row in table["runs"]:
        lines.append(f"| {row['lambda']:g} | {row['run']} | {row['step']} | {row['crps']:.6g} | "
                     f"{row['crps_change_percent']:+.2f} | {row['spectral_distance']:.4g} | "
                     f"{'yes' if row['pareto_optimal'] else ''} |")
    return "\n".join(lines) + "\n"


def pareto_is_current(run_dir: Path, checkpoints: dict[float, Path]) -> bool:
    """True when RUN/pareto.json scored exactly these checkpoints' EMA params (a resumed, finished sweep)."""
    path = run_dir / "pareto.json"
    if not path.is_file() or not (run_dir / "pareto.md").is_file():
        return False
    scored = {row["lambda"]: row.get("ema_params_sha256") for row in json.loads(path.read_text())["runs"]}
    return scored == {weight: read_meta(checkpoint).get("ema_params_sha256")
                      for weight, checkpoint in checkpoints.items()}


def write_pareto(run_dir: Path, context: DistillContext, data: DataSource, teacher_sampler: dict,
                 checkpoints: dict[float, Path], log: Callable[[str], None] = print) -> Path:
    """Score the teacher and every lambda run (module docstring); write pareto.json and pareto.md; return the JSON."""
    distill = context.config.distill
    stream = batch_stream(data, "validation", context.config.train.batch_size)(0)
    try:
        batches = list(itertools.islice(stream, distill.evaluation_batches))
    finally:
        stream.close()
    key = jax.random.PRNGKey(context.config.seed)
    teacher = SAMPLER_BUILDERS[teacher_sampler["name"]](teacher_sampler["config"], context.space.latitude,
                                                        context.space.longitude, context.space.noise.spec)
    log(f"scoring the teacher and {len(checkpoints)} students on {len(batches)} validation batches")
    teacher_crps, teacher_spectrum = score(context, sample_function(context, teacher), context.anchors.teacher,
                                           batches, key)
    draw_student = sample_function(context, context.sampler)
    rows = []
    for weight, checkpoint in checkpoints.items():
        loaded = load_checkpoint(checkpoint)
        crps, spectrum = score(context, draw_student, loaded.ema_params["student"], batches, key)
        rows.append({"lambda": weight, "run": str(Path(checkpoint).parent.parent.relative_to(run_dir)),
                     "checkpoint": str(checkpoint), "step": loaded.step,
                     "ema_params_sha256": loaded.meta.get("ema_params_sha256"), "crps": crps,
                     "crps_change_percent": 100.0 * (crps / teacher_crps - 1.0),
                     "spectral_distance": spectral_distance(spectrum, teacher_spectrum)})
    for row, optimal in zip(rows, pareto_optimal([(row["crps"], row["spectral_distance"]) for row in rows])):
        row["pareto_optimal"] = optimal
    table = {"method": distill.method, "crps_measure": CRPS_MEASURE, "fidelity_measure": FIDELITY_MEASURE,
             "members": distill.reward_samples, "validation_batches": len(batches),
             "teacher": {"crps": teacher_crps, "nfe_per_step": int(teacher.nfe_per_step),
                         "student_nfe_per_step": distill.student.steps},
             "runs": rows}
    write_json_atomic(run_dir / "pareto.json", table)
    with atomic_path(run_dir / "pareto.md") as temporary:
        temporary.write_text(_markdown(table))
    return run_dir / "pareto.json"
