"""Reproduce the RMMD paper's table on the embedded demo data.

Usage:
    python benchmarks/rmmd_demo.py --teacher TEACHER_RUN [--store data/demo.zarr]
        [--workdir runs/rmmd_demo] [--inits 20] [--members 8] [--steps 10]
        [--phase1-steps 600] [--phase2-steps 400] [--phase2-learning-rate 3e-4] [--set k=v ...]
        [--teacher-forecast F.nc]   # reuse a teacher ensemble of the same held-out inits
        [--student-params raw|ema] [--speed-repeats 5] [--methods mmd,mmd_tuned,...]

The defaults are the setting of the committed table (results/rmmd_demo.md); the
default methods are the paper's table (about 6-7 h on 2 CPU cores).

Methods (each a `gencast-rmmd distill` run from the same teacher):
- mmd               plain moment matching, eta = 1, rho = 7       (configs/distill/mmd.yaml)
- mmd_tuned         moment matching, eta = 0.5, rho = 100         (configs/distill/mmd_tuned.yaml)
- rmmd_offline      + CRPS reward on forward-diffused data states (phase 1 = mmd_tuned)
- rmmd_on_policy    + CRPS reward on the student's own states     (phase 1 = mmd_tuned)
- rmmd_on_policy_4step  the same with a 4-step student (its own 4-step phase 1)
- draft             DRaFT-K: reward through the last K student steps (phase 1 = mmd_tuned)
- crps_only         the reward alone, no distillation terms      (phase 1 = mmd_tuned)
- rmmd_on_policy_lambda1, _3, _30    on-policy RMMD at lambda = 1, 3 and 30 (a lambda sweep's other points)
- rmmd_on_policy_lambda100_mu1      on-policy RMMD led by the reward: lambda = 100, anchor mu = 1
- rmmd_on_policy_frozen_reference    on-policy RMMD with the uncorrected phase-1 aux as moment reference
Every model forecasts the same held-out inits; scores are fair CRPS from
`gencast-rmmd evaluate`. Per method: CRPS % change vs the teacher (mean over
(variable, level, lead) targets), win rate over those targets, mean
spread/skill, measured speedup (benchmarks/bench_speedup.py) and NFE per step.
Writes results/rmmd_demo.{json,md} and a scorecard of on-policy RMMD against
the teacher (results/rmmd_scorecard.{md,png}). Finished runs and files are reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from evaluation.scorecard import ScoreSet, compare as compare_scores, load_scores, metric_frame
from gencast_rmmd.config import load_config
from gencast_rmmd.data.forecast_io import write_forecast
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.forecast.inspect import describe
from gencast_rmmd.teacher.config import TeacherConfig

REPO = Path(__file__).resolve().parent.parent

DISTILL = REPO / "configs" / "distill"
UNSHRUNK = "distill.moment_reference=drift_corrected"
# rmmd.yaml re-noises the student's finished sample at a continuous level; the runs below that stopped the chain
# at a grid step pin that, and the ones measured before the balanced moment weight (session 10 and the old
# table) pin the setting of then (EDM weight, anchor mu = lambda), so that each reproduces its recorded figures.
GRID = "distill.policy_noise=grid"
EARLY = ["distill.moment_weight=edm", "distill.anchor_weight=null", GRID]
# lambda = 3, mu = 0.3: rmmd.yaml's setting before session 21's last probe (now lambda = 10, mu = 1)
LAMBDA3 = ["distill.reward_weight=3.0", "distill.anchor_weight=0.3"]
# name -> (config, phase-1 source: None = teacher, or the method whose run is the phase-1 student, extra sets)
METHODS: dict[str, tuple[str, str | None, list[str]]] = {
    "mmd": ("mmd.yaml", None, []),
    "mmd_tuned": ("mmd_tuned.yaml", None, []),
    "mmd_tuned_4step": ("mmd_tuned.yaml", None, ["distill.student.steps=4"]),
    "rmmd_offline": ("rmmd_offline.yaml", "mmd_tuned", []),
    "rmmd_on_policy": ("rmmd.yaml", "mmd_tuned", []),
    # the 4-step student was measured at LAMBDA3
    "rmmd_on_policy_4step": ("rmmd.yaml", "mmd_tuned_4step", ["distill.student.steps=4", *LAMBDA3]),
    # the chain stopped at a random grid step instead (session 19's on-policy rows)
    "rmmd_on_policy_grid": ("rmmd.yaml", "mmd_tuned", [GRID, *LAMBDA3]),
    "rmmd_on_policy_4step_grid": ("rmmd.yaml", "mmd_tuned_4step", ["distill.student.steps=4", GRID, *LAMBDA3]),
    # a lambda sweep's other points; the same runs as `distill --set 'distill.reward_weight=[1.0,3.0,30.0]'`
    # makes under RUN/lambda_1, RUN/lambda_3, ... These four were measured with the unshrunk drift correction
    # (the default before `posterior_drift`), which they keep.
    "rmmd_on_policy_lambda1": ("rmmd.yaml", "mmd_tuned", ["distill.reward_weight=1.0", UNSHRUNK, *EARLY]),
    "rmmd_on_policy_lambda3": ("rmmd.yaml", "mmd_tuned", ["distill.reward_weight=3.0", UNSHRUNK, *EARLY]),
    "rmmd_on_policy_lambda30": ("rmmd.yaml", "mmd_tuned", ["distill.reward_weight=30.0", UNSHRUNK, *EARLY]),
    # reward-led: lambda = 100 with the anchor mu = 1 set apart, so the reward's gradient is on the MMD term's scale
    "rmmd_on_policy_lambda100_mu1": ("rmmd.yaml", "mmd_tuned", ["distill.reward_weight=100.0", UNSHRUNK,
                                                                 *EARLY, "distill.anchor_weight=1.0"]),
    # the tamed moment term (posterior_drift, balanced weight; benchmarks/rmmd_gradients.py) with the
    # anchor mu = lambda / 10, so that neither the moment term nor the anchor drowns the reward
    "rmmd_on_policy_balanced": ("rmmd.yaml", "mmd_tuned", ["distill.moment_weight=balanced", *LAMBDA3, GRID]),
    # the uncorrected moment reference (the phase-1 aux as it is), for comparison
    "rmmd_on_policy_frozen_reference": ("rmmd.yaml", "mmd_tuned", ["distill.moment_reference=frozen", *EARLY]),
    # session 21's probes of the offline/on-policy ordering (results/rmmd_demo.md)
    "rmmd_on_policy_grid_lambda10_mu1": ("rmmd.yaml", "mmd_tuned", [GRID, "distill.reward_weight=10.0",
                                                                     "distill.anchor_weight=1.0"]),
    "rmmd_on_policy_lambda3_mu03": ("rmmd.yaml", "mmd_tuned", LAMBDA3),
    "draft": ("draft.yaml", "mmd_tuned", []),
    "crps_only": ("crps_only.yaml", "mmd_tuned", []),
}
# the paper's table, in an order that trains each phase-1 student before the methods that start from it
TABLE = ["mmd", "mmd_tuned", "rmmd_offline", "rmmd_on_policy", "draft", "crps_only", "mmd_tuned_4step",
         "rmmd_on_policy_4step"]
REPORTED = ["teacher", "mmd", "mmd_tuned", "rmmd_offline", "rmmd_on_policy", "rmmd_on_policy_4step", "draft",
            "crps_only", "rmmd_on_policy_lambda1", "rmmd_on_policy_lambda3", "rmmd_on_policy_lambda30",
            "rmmd_on_policy_lambda100_mu1", "rmmd_on_policy_balanced", "rmmd_on_policy_frozen_reference",
            "rmmd_on_policy_grid", "rmmd_on_policy_4step_grid", "rmmd_on_policy_grid_lambda10_mu1",
            "rmmd_on_policy_lambda3_mu03"]


def cli(*args: object, log: Path) -> None:
    """`gencast-rmmd ARGS` in a subprocess logging to `log`; exits naming the command when it fails."""
    print("$ gencast-rmmd " + " ".join(map(str, args)), flush=True)
    with open(log, "a") as sink:
        code = subprocess.call([sys.executable, "-m", "gencast_rmmd.cli", *map(str, args)], stdout=sink,
                               stderr=subprocess.STDOUT, cwd=REPO)
    if code:
        raise SystemExit(f"command failed ({code}): gencast-rmmd {' '.join(map(str, args))}; see {log}")


def speed(teacher: Path, student: Path, store: str, members: int, repeats: int) -> dict:
    """bench_speedup.py's JSON for a teacher/student pair."""
    command = [sys.executable, str(REPO / "benchmarks" / "bench_speedup.py"), "--teacher", str(teacher),
               "--student", str(student), "--data", store, "--members", str(members), "--repeats", str(repeats),
               "--json"]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def reuse_teacher_forecast(source: Path, out: Path, inits: list[str], members: int, steps: int) -> None:
    """Copy the first `members` members and `steps` leads of an existing teacher forecast of the same inits.

    Member i depends only on (seed, i, init, step) (`fold_in`), so the first M
    members of a larger ensemble are exactly the M-member forecast.
    """
    forecast = xr.open_dataset(source)
    have = pd.DatetimeIndex(forecast["time"].values)
    if not have.equals(pd.DatetimeIndex(inits)):
        raise SystemExit(f"{source} holds inits {have[0]}..{have[-1]} ({len(have)}), not the {len(inits)} "
                         "held-out inits of this run")
    if forecast.sizes["number"] < members or forecast.sizes["prediction_timedelta"] < steps:
        raise SystemExit(f"{source} has {forecast.sizes['number']} members and "
                         f"{forecast.sizes['prediction_timedelta']} leads; need {members} and {steps}")
    subset = forecast.isel(number=slice(0, members), prediction_timedelta=slice(0, steps)).load()
    subset.attrs["subset_of"] = str(source)
    write_forecast(subset, out)


def teacher_identity(run: Path) -> dict:
    """The teacher checkpoint a table was made from (what `gencast-rmmd inspect` reports): step and parameter hash."""
    record = describe(run)
    return {"run": str(run), "step": record["step"], "params_sha256": record["params_sha256"],
            "param_count": record["param_count"]}


def compare(scores: ScoreSet, teacher: ScoreSet) -> dict:
    """CRPS % change vs the teacher (mean over targets, and per lead), win rate, mean SSR."""
    pairs = compare_scores(scores, teacher, "crps", "global")
    changes = pairs["relative_difference"]
    ssr = metric_frame(scores, "spread_skill_ratio", "global").to_numpy()
    return {"crps_change_pct": float(np.mean(changes.to_numpy())),
            "win_rate": float(np.mean((pairs["candidate"] < pairs["baseline"]).to_numpy())),
            "crps_change_pct_by_lead": [float(np.mean(group.to_numpy()))
                                        for _, group in changes.groupby(level="lead_time")],
            "ssr": float(np.nanmean(ssr)), "targets": len(pairs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--store", default=str(REPO / "data" / "demo.zarr"))
    parser.add_argument("--workdir", default=str(REPO / "runs" / "rmmd_demo"))
    parser.add_argument("--inits", type=int, default=20)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--phase1-steps", type=int, default=600)
    parser.add_argument("--phase2-steps", type=int, default=400)
    parser.add_argument("--phase2-learning-rate", type=float, default=3e-4,
                        help="train.learning_rate of every phase-2 method (the same for all, so the comparison "
                             "is fair); 0: each config's own")
    parser.add_argument("--methods", default=",".join(TABLE),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", default=str(REPO / "results"))
    parser.add_argument("--teacher-forecast", default=None,
                        help="an existing teacher forecast NetCDF of the same inits to reuse (first M members)")
    parser.add_argument("--speed-repeats", type=int, default=5)
    parser.add_argument("--student-params", choices=("ema", "raw"), default="raw",
                        help="forecast the students with their EMA or their raw (last) parameters")
    args = parser.parse_args()
    work, results = Path(args.workdir), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "rmmd_demo.log"
    teacher_run = Path(args.teacher)
    teacher_config = load_config(REPO / "configs" / "teacher" / "demo.yaml", TeacherConfig, [], args.store)
    inits = [init.isoformat() for init in
             DataSource.open(teacher_config.data).windows("test", target_steps=args.steps).evenly_spaced(args.inits)]
    init_args = [item for init in inits for item in ("--init", init)]
    sets = [item for override in args.overrides for item in ("--set", override)]

    runs = {"teacher": teacher_run}
    for name in args.methods.split(","):
        config, phase1, extra = METHODS[name]
        source = runs[phase1] if phase1 else teacher_run
        steps = args.phase2_steps if phase1 else args.phase1_steps
        run = work / name
        rate = [f"train.learning_rate={args.phase2_learning_rate}"] if phase1 and args.phase2_learning_rate else []
        extra_sets = [item for override in [f"train.steps={steps}", *rate, *extra] for item in ("--set", override)]
        cli("distill", "--config", DISTILL / config, "--teacher", source, "--data", args.store, "--out", run,
            *extra_sets, *sets, *(["--resume"] if run.exists() else []), log=log)
        runs[name] = run

    if args.teacher_forecast and not (work / "teacher.nc").exists():
        reuse_teacher_forecast(Path(args.teacher_forecast), work / "teacher.nc", inits, args.members, args.steps)
    table = {}
    scores = {}
    for name, run in runs.items():
        forecast, score = work / f"{name}.nc", work / f"scores_{name}.nc"
        if not forecast.exists():
            params = ["--no-ema"] if name != "teacher" and args.student_params == "raw" else []
            cli("forecast", "--checkpoint", run, "--data", args.store, *init_args, "--steps", args.steps,
                "--members", args.members, *params, "--out", forecast, log=log)
        if not score.exists():
            cli("evaluate", "--forecast", forecast, "--truth", args.store, "--out", score, "--label", name,
                "--no-progress", log=log)
        scores[name] = load_scores(score)
    for name in runs:
        entry = compare(scores[name], scores["teacher"])
        nfe = int(xr.open_dataset(work / f"{name}.nc").attrs["nfe_per_step"])
        entry["nfe_per_step"] = nfe
        timing_file = work / f"speed_{name}.json"
        if name == "teacher":
            timing = {"speedup": 1.0, "nfe_ratio": 1.0}
        elif timing_file.exists():                     # speed depends on the sampler, not on the weights
            timing = json.loads(timing_file.read_text())
        else:
            timing = speed(teacher_run, runs[name], args.store, 4, args.speed_repeats)
            timing_file.write_text(json.dumps(timing, indent=2) + "\n")
        entry["speedup"], entry["nfe_ratio"] = timing["speedup"], timing["nfe_ratio"]
        table[name] = entry
    reported = {name: table[name] for name in REPORTED if name in table}
    summary = {"methods": reported, "inits": inits, "members": args.members, "leads_hours": 12 * args.steps,
               "phase1_steps": args.phase1_steps, "phase2_steps": args.phase2_steps,
               "phase2_learning_rate": args.phase2_learning_rate, "overrides": args.overrides,
               "student_params": args.student_params, "teacher": teacher_identity(teacher_run)}
    results.mkdir(parents=True, exist_ok=True)
    (results / "rmmd_demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# RMMD on the embedded demo data", "",
             f"{len(inits)} held-out inits, {args.members} members, leads 12 h to {12 * args.steps} h; "
             f"phase 1 {args.phase1_steps} steps, phase 2 {args.phase2_steps} steps"
             + (f" at learning rate {args.phase2_learning_rate:g}" if args.phase2_learning_rate else "")
             + f"; students forecast with their {args.student_params} parameters.", "",
             f"Teacher: `{teacher_run}`, step {summary['teacher']['step']}, parameters sha256 "
             f"`{summary['teacher']['params_sha256'][:16]}…`.", "",
             "| method | CRPS change vs teacher (%) | win rate | SSR | speedup | NFE per step |",
             "|---|---|---|---|---|---|"]
    for name, entry in reported.items():
        lines.append(f"| {name} | {entry['crps_change_pct']:+.2f} | {entry['win_rate']:.1%} | {entry['ssr']:.3f} | "
                     f"{entry['speedup']:.2f}x | {entry['nfe_per_step']} |")
    leads = [f"{12 * (index + 1)} h" for index in range(args.steps)]
    lines += ["", "Mean CRPS change vs the teacher by lead (%, mean over variables and levels):", "",
              "| method | " + " | ".join(leads) + " |", "|---|" + "---|" * len(leads)]
    for name, entry in reported.items():
        if name != "teacher":
            lines.append(f"| {name} | " + " | ".join(f"{value:+.1f}" for value in entry["crps_change_pct_by_lead"])
                         + " |")
    (results / "rmmd_demo.md").write_text("\n".join(lines) + "\n")
    if "rmmd_on_policy" in runs:
        cli("scorecard", "--scores", work / "scores_rmmd_on_policy.nc", "--baseline", work / "scores_teacher.nc",
            "--out", work / "scorecard_rmmd", log=log)
        shutil.copy(work / "scorecard_rmmd" / "summary.md", results / "rmmd_scorecard.md")
        shutil.copy(work / "scorecard_rmmd" / "scorecard.png", results / "rmmd_scorecard.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
