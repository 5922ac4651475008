"""How hard each term of the on-policy RMMD loss pulls: gradient norms per term, per weighting variant.

Usage:
    python benchmarks/rmmd_gradients.py --phase1 RUN [--at RUN] [--data STORE] [--batches 4]
        [--reward-weight 3] [--variant edm:drift_corrected --variant balanced:posterior_drift ...] [--json]

For each variant (`distill.moment_weight:distill.moment_reference`) it builds
the `rmmd` loss from configs/distill/rmmd.yaml around the phase-1 student
`--phase1` and evaluates, at the student parameters of `--at` (default: the
phase-1 student itself; e.g. a CRPS-only fine-tune, to see how the terms react
to the drift the reward asks for), on `--batches` training batches with the
same keys for every variant:

- |g_mmd|:      norm of the gradient of the moment term;
- |g_reward|:   norm of the gradient of lambda * CRPS (= -lambda R);
- |g_anchor|:   norm of the gradient of (mu/2) * anchor;
- cos(mmd, reward): whether the moment term opposes the reward (< 0) or not.

Medians over the batches. The optimiser clips the summed gradient to norm 1,
so the term with the largest norm sets the direction of the update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from gencast_rmmd.data.batches import batch_stream
from gencast_rmmd.distill.base import repeat_members
from gencast_rmmd.distill.config import load_distill_config
from gencast_rmmd.distill.registry import DISTILLERS
from gencast_rmmd.distill.rewarded import policy_state
from gencast_rmmd.distill.run import _context, _environment, load_source
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent

TERMS = (("mmd", "mmd_surrogate"), ("reward", "crps"), ("anchor", "anchor"))


def _norm(tree) -> float:
    return float(jnp.sqrt(sum(jnp.vdot(leaf, leaf) for leaf in jax.tree.leaves(tree))))


def _dot(a, b) -> float:
    return float(sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def measure(task, params, batches, seed: int) -> dict[str, float]:
    """Median gradient norm of each term (scaled as in the loss) and the mmd-reward cosine."""
    context = task.context
    distill = context.config.distill
    reward_weight = context.reward_weight
    anchor_weight = reward_weight if distill.anchor_weight is None else distill.anchor_weight
    scale = {"mmd": 1.0, "reward": reward_weight, "anchor": 0.5 * anchor_weight}
    state = task.init(jax.random.PRNGKey(seed), None)

    @jax.jit
    def gradients(params, frozen, key, batch):
        prepared = context.space.prepare(batch)
        policy_key, objective_key = jax.random.split(key)
        policy = policy_state(context, params["student"], policy_key,
                              repeat_members(prepared, distill.reward_samples))
        return {name: jax.grad(lambda p, metric=metric: task.objective(p, frozen, objective_key, policy,
                                                                     prepared)[1][metric])(params)
                for name, metric in TERMS}

    rows = []
    for index, batch in enumerate(batches):
        grads = gradients(params, state.frozen, jax.random.fold_in(jax.random.PRNGKey(seed), index), batch)
        grads = {name: jax.tree.map(lambda g, s=scale[name]: s * g, tree) for name, tree in grads.items()}
        norms = {name: _norm(tree) for name, tree in grads.items()}
        cosine = _dot(grads["mmd"], grads["reward"]) / max(norms["mmd"] * norms["reward"], 1e-30)
        rows.append({**norms, "cos_mmd_reward": cosine})
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase1", required=True, help="a phase-1 (method mmd) student run or checkpoint")
    parser.add_argument("--at", default=None, help="student params to evaluate at (default: the phase-1 student)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--reward-weight", type=float, default=3.0)
    parser.add_argument("--variant", action="append", default=None,
                        help="moment_weight:moment_reference (default: all four of edm/balanced x "
                             "drift_corrected/posterior_drift)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variants = args.variant or [f"{w}:{r}" for w in ("edm", "balanced") for r in ("drift_corrected",
                                                                                   "posterior_drift")]
    try:
        source = load_source(args.phase1)
        if source.phase1_checkpoint is None:
            raise UserInputError(f"--phase1 {args.phase1} is a teacher; give a phase-1 (method mmd) student run")
        environment = _environment(source, args.data)
        student = (load_checkpoint(args.at).params["student"] if args.at else source.anchors.student)
        results = {}
        for variant in variants:
            weight, _, reference = variant.partition(":")
            config = load_distill_config(REPO / "configs" / "distill" / "rmmd.yaml", [
                f"distill.reward_weight={args.reward_weight}", f"distill.moment_weight={weight}",
                f"distill.moment_reference={reference}", "train.batch_size=4"])
            task = DISTILLERS["rmmd"](_context(config, environment, source.anchors, source.phase1_checkpoint))
            stream = batch_stream(environment.data, "train", config.train.batch_size)(0)
            batches = [next(stream) for _ in range(args.batches)]
            stream.close()
            results[variant] = measure(task, {"student": student}, batches, args.seed)
            row = results[variant]
            print(f"{variant:28s} |g_mmd| {row['mmd']:9.3f}  |g_reward| {row['reward']:7.3f}  "
                  f"|g_anchor| {row['anchor']:7.3f}  cos(mmd, reward) {row['cos_mmd_reward']:+.2f}", flush=True)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"phase1": args.phase1, "at": args.at, "reward_weight": args.reward_weight,
                          "batches": args.batches, "variants": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
