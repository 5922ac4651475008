"""A short teacher run and a small held-out forecast: is a config change worth a full quality gate?

Usage:
    python benchmarks/teacher_probe.py NAME [--set key=value ...] [--train-steps 800] [--inits 4]
        [--members 4] [--steps 10] [--workdir runs/probes] [--store data/demo.zarr]
        [--config configs/teacher/demo.yaml] [--sampler key=value ...] [--from-run OTHER] [--no-ema]

Trains `--config` with the overrides for `--train-steps` steps in WORKDIR/NAME (resumed if
there), forecasts `--members` members from `--inits` evenly spaced test-split inits for
`--steps` 12 h steps, and reports per lead, for z500 and t850, the fair CRPS, its ratio to
a climatological ensemble drawn for the same inits, the spread/skill ratio and the
activity (`evaluation/diagnostics.py`: 1 = members stay on the climate's attractor). Appends
one JSON line to WORKDIR/probes.jsonl and prints a markdown table. `--sampler key=value`
changes the sampler for the forecast only (`gencast-rmmd forecast --sampler`); with
`--from-run OTHER` the probe trains nothing and forecasts from WORKDIR/OTHER, so sampler
settings can be compared on one set of weights; `--no-ema` forecasts with the raw parameters.

A probe costs ~12 min on 2 cores at the defaults (800 steps, 4 x 4 members); the gate
(`teacher_quality_gate.py`) costs ~90 min, so probes pick what the gate then confirms.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from evaluation.diagnostics import diagnose
from gencast_rmmd.config import load_config
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.teacher.config import TeacherConfig

PROBE_TARGETS = {"z500": ("geopotential", 500), "t850": ("temperature", 850)}


def gencast(*args: object, log: Path) -> None:
    """`gencast-rmmd ARGS` in a subprocess logging to `log`; exits naming the command when it fails."""
    print("$ gencast-rmmd " + " ".join(map(str, args)), flush=True)
    with open(log, "a") as sink:
        code = subprocess.call([sys.executable, "-m", "gencast_rmmd.cli", *map(str, args)], stdout=sink,
                               stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"command failed ({code}): gencast-rmmd {' '.join(map(str, args))}; see {log}")


def rows_of(path: Path, store: str) -> dict[str, dict[str, list[float]]]:
    """{'z500': {'crps': [...], 'ssr': [...], 'activity': [...]}, 't850': ...} of one forecast file."""
    diagnostics = diagnose(str(path), store, list(PROBE_TARGETS.values()), bands=[(0, 0)])
    return {label: {row: diagnostics[f"{name}@{level}"][column].values.tolist()
                    for row, column in (("crps", "crps"), ("ssr", "spread_skill_ratio"), ("activity", "activity"))}
            for label, (name, level) in PROBE_TARGETS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--train-steps", type=int, default=800)
    parser.add_argument("--inits", type=int, default=4)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workdir", default="runs/probes")
    parser.add_argument("--store", default="data/demo.zarr")
    parser.add_argument("--config", default="configs/teacher/demo.yaml")
    parser.add_argument("--sampler", action="append", default=[])
    parser.add_argument("--from-run", default=None)
    parser.add_argument("--no-ema", action="store_true")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"{args.name}.log"
    overrides = [f"train.steps={args.train_steps}", *args.overrides]
    config = load_config(args.config, TeacherConfig, overrides, args.store)
    run = work / (args.from_run or args.name)
    sets = [item for override in overrides for item in ("--set", override)]
    started = time.perf_counter()
    if args.from_run is None:
        gencast("train", "--config", args.config, "--data", args.store, "--out", run, *sets,
                *(["--resume"] if run.exists() else []), log=log)
    elif not run.is_dir():
        parser.error(f"--from-run {args.from_run}: no run directory {run}")
    train_s = time.perf_counter() - started
    inits = [init.isoformat() for init in
             DataSource.open(config.data).windows("test", target_steps=args.steps).evenly_spaced(args.inits)]
    init_args = [item for init in inits for item in ("--init", init)]
    forecast = work / f"{args.name}.nc"
    started = time.perf_counter()
    gencast("forecast", "--checkpoint", run, "--data", args.store, *init_args, "--steps", args.steps,
            "--members", args.members, "--out", forecast,
            *[item for override in args.sampler for item in ("--sampler", override)],
            *(["--no-ema"] if args.no_ema else []), log=log)
    forecast_s = time.perf_counter() - started
    climatology = work / f"climatology_{args.inits}x{args.steps}.nc"
    if not climatology.exists():
        gencast("baseline", "climatology", "--truth", args.store, *init_args, "--steps", args.steps, "--members", 8,
                "--config", "configs/data/demo.yaml", "--out", climatology, log=log)
    rows, baseline = rows_of(forecast, args.store), rows_of(climatology, args.store)
    for label in rows:
        rows[label]["crps_vs_climatology"] = (np.asarray(rows[label]["crps"])
                                              / np.asarray(baseline[label]["crps"])).tolist()
    record = {"name": args.name, "overrides": overrides, "sampler": args.sampler, "from_run": args.from_run,
              "ema": not args.no_ema,
              "inits": inits, "members": args.members,
              "train_s": round(train_s, 1), "forecast_s": round(forecast_s, 1), "rows": rows}
    with open(work / "probes.jsonl", "a") as sink:
        sink.write(json.dumps(record) + "\n")
    leads = [12 * (k + 1) for k in range(args.steps)]
    print(f"## {args.name}: {' '.join(overrides)} {' '.join(args.sampler)} "
          f"{'(weights of ' + args.from_run + ')' if args.from_run else ''}\n")
    print(f"train {train_s:.0f} s, forecast {forecast_s:.0f} s; {len(inits)} inits x {args.members} members\n")
    print("| target | row | " + " | ".join(f"{h} h" for h in leads) + " |\n|---|---|" + "---|" * len(leads))
    for label, table in rows.items():
        for row in ("crps", "crps_vs_climatology", "ssr", "activity"):
            print(f"| {label} | {row} | " + " | ".join(f"{v:.3g}" for v in table[row]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
