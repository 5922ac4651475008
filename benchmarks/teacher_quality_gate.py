"""The teacher's quality gate on the embedded demo data (issue: GenCast-style teacher).

Usage:
    python benchmarks/teacher_quality_gate.py [--workdir runs/quality_gate] [--store data/demo.zarr]
        [--config configs/teacher/demo.yaml] [--inits 20] [--members 8] [--steps 10] [--set k=v ...]
        [--forecast-jobs 2]

1. simulate the demo store if it is missing;
2. train the demo teacher (resumes a run already in the workdir), timing it;
3. forecast `--members` members from `--inits` held-out inits (test split), 12 h to `--steps` x 12 h,
   in `--forecast-jobs` single-threaded processes over contiguous groups of inits, merged along
   `time` (a member's noise depends on its init time, not on the group: the merged file equals one
   process's); on 2 cores two single-threaded processes forecast ~1.25x faster than one;
4. persistence and climatology baselines, and the simulator's perfect-model reference ensemble;
5. score all four with `gencast-rmmd evaluate`, draw scorecards;
6. check the gates: fair CRPS beats persistence and climatology at every lead for z500, t850 and
   the mean over all (variable, level) targets (mean CRPS ratio < 1); mean spread/skill in [0.6, 1.4];
   and the training took at most 30 min on this machine (the recorded `train_s`; a workdir whose
   training was not timed fails this gate rather than assume it).
Writes `results/teacher_quality_gate.{json,md}` and copies the scorecard markdown to `results/`.
Every stage runs the public CLI in a subprocess; outputs that already exist are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation.compare import split_levels  # noqa: E402
from evaluation.scores_file import open_scores  # noqa: E402
from gencast_rmmd.config import load_config  # noqa: E402
from gencast_rmmd.data.forecast_io import write_forecast  # noqa: E402
from gencast_rmmd.data.source import DataSource  # noqa: E402
from gencast_rmmd.io_utils import atomic_path  # noqa: E402
from gencast_rmmd.teacher.config import TeacherConfig  # noqa: E402

GATE_TARGETS = {"z500": ("geopotential", 500), "t850": ("temperature", 850)}
TRAIN_BUDGET_S = 1800.0  # the issue: the demo teacher trains in <= 30 min on 2 cores


SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def cli(*args: object, log: Path | None = None) -> float:
    """Run `gencast-rmmd ARGS` in a subprocess; return its wall time; raise on failure."""
    return cli_parallel([args], log=log, env=None)


def cli_parallel(commands: list[tuple[object, ...]], log: Path | None = None, env: dict | None = None) -> float:
    """Run several `gencast-rmmd ARGS` at once (each logging to `log`); return the wall time of all."""
    started = time.perf_counter()
    running = []
    with open(log, "a") if log else open("/dev/null", "w") as sink:
        for args in commands:
            print("$ gencast-rmmd " + " ".join(map(str, args)), flush=True)
            running.append((args, subprocess.Popen([sys.executable, "-m", "gencast_rmmd.cli", *map(str, args)],
                                                   stdout=sink, stderr=subprocess.STDOUT if log else None,
                                                   cwd=REPO, env=env)))
        failed = [(args, process.wait()) for args, process in running]
    for args, code in failed:
        if code:
            raise SystemExit(f"command failed ({code}): {' '.join(map(str, args))}" + (f"; see {log}" if log else ""))
    return time.perf_counter() - started


def forecast_in_groups(run: Path, store: str, inits: list[str], steps: int, members: int, out: Path,
                       jobs: int, log: Path) -> None:
    """`gencast-rmmd forecast` over `jobs` contiguous groups of inits at once, merged into `out` along `time`.

    Parts already written by an interrupted call are reused.
    """
    groups = [list(group) for group in np.array_split(np.array(inits), jobs) if len(group)]

    def forecast(group: list[str], path: Path) -> tuple[object, ...]:
        return ("forecast", "--checkpoint", run, "--data", store, *[x for i in group for x in ("--init", i)],
                "--steps", steps, "--members", members, "--out", path)

    if len(groups) == 1:
        cli(*forecast(groups[0], out), log=log)
        return
    parts = [out.with_name(f"{out.stem}.part{index}.nc") for index in range(len(groups))]
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA).strip())
    cli_parallel([forecast(group, part) for group, part in zip(groups, parts) if not part.exists()], log=log, env=env)
    pieces = [xr.open_dataset(part) for part in parts]
    try:
        merged = xr.concat(pieces, dim="time", data_vars="minimal", coords="minimal", compat="override",
                           combine_attrs="override")
        write_forecast(merged, out)
    finally:
        for piece in pieces:
            piece.close()
    for part in parts:
        part.unlink()


def held_out_inits(config: TeacherConfig, store: str, count: int, steps: int) -> list[str]:
    """`count` evenly spaced test-split inits whose `steps`-step windows are complete."""
    source = DataSource.open(config.data.model_copy(update={"path": store}))
    available = source.windows("test", target_steps=steps).init_times
    if len(available) < count:
        raise SystemExit(f"the test split has only {len(available)} inits with {steps} steps; need {count}")
    picks = np.linspace(0, len(available) - 1, count).round().astype(int)
    return [available[i].isoformat() for i in picks]


def target_table(scores: xr.Dataset, metric: str) -> dict[str, np.ndarray]:
    """Global `metric` per lead for every (variable, level) target: name -> [lead]."""
    table = {}
    for name, variable in scores.data_vars.items():
        if name.endswith("_rank_histogram") or "metric" not in variable.dims:
            continue
        table.update(split_levels(name, variable.sel(metric=metric, region="global")))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "quality_gate"))
    parser.add_argument("--store", default=str(REPO / "data" / "demo.zarr"))
    parser.add_argument("--config", default=str(REPO / "configs" / "teacher" / "demo.yaml"))
    parser.add_argument("--inits", type=int, default=20)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", default=str(REPO / "results"))
    parser.add_argument("--forecast-jobs", type=int, default=2,
                        help="single-threaded teacher forecast processes (1: one process on all cores)")
    args = parser.parse_args()
    work, results = Path(args.workdir), Path(args.results)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "quality_gate.log"
    # Stage timings survive a restart: a stage already timed in this workdir is not re-run or re-timed
    # (a resumed training would otherwise report only its last, partial, leg).
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def record(stage: str, seconds: float) -> None:
        timings[stage] = round(seconds, 1)
        with atomic_path(timings_path) as temporary:
            temporary.write_text(json.dumps(timings, indent=2) + "\n")

    if not Path(args.store).exists():
        record("simulate_s", cli("data", "simulate", "--out", args.store, log=log))
    config = load_config(args.config, TeacherConfig, args.overrides, args.store)
    run = work / "teacher"
    sets = [item for override in args.overrides for item in ("--set", override)]
    if "train_s" not in timings:
        record("train_s", cli("train", "--config", args.config, "--data", args.store, "--out", run, *sets,
                              *(["--resume"] if run.exists() else []), log=log))
    inits = held_out_inits(config, args.store, args.inits, args.steps)
    init_args = [item for init in inits for item in ("--init", init)]
    forecasts = {"teacher": work / "teacher.nc", "persistence": work / "persistence.nc",
                 "climatology": work / "climatology.nc", "reference": work / "reference.nc"}
    data_config = REPO / "configs" / "data" / "demo.yaml"
    if not forecasts["teacher"].exists():  # an existing ensemble keeps its recorded timing (if any)
        started = time.perf_counter()
        forecast_in_groups(run, args.store, inits, args.steps, args.members, forecasts["teacher"],
                           max(1, args.forecast_jobs), log)
        record("forecast_s", time.perf_counter() - started)
        record("forecast_jobs", max(1, args.forecast_jobs))
    cli("baseline", "persistence", "--truth", args.store, *init_args, "--steps", args.steps,
        "--config", data_config, "--out", forecasts["persistence"], log=log)
    cli("baseline", "climatology", "--truth", args.store, *init_args, "--steps", args.steps,
        "--members", args.members, "--config", data_config, "--out", forecasts["climatology"], log=log)
    cli("data", "simulate", "--out", args.store, "--reference-out", forecasts["reference"], *init_args,
        "--members", args.members, "--steps", args.steps, log=log)
    scores = {}
    for name, forecast in forecasts.items():
        path = work / f"scores_{name}.nc"
        cli("evaluate", "--forecast", forecast, "--truth", args.store, "--out", path, "--label", name,
            "--no-progress", log=log)
        scores[name] = open_scores(path)
    cli("scorecard", "--scores", work / "scores_teacher.nc", "--baseline", work / "scores_climatology.nc",
        "--out", work / "scorecard_vs_climatology", log=log)
    cli("scorecard", "--scores", work / "scores_teacher.nc", "--baseline", work / "scores_persistence.nc",
        "--out", work / "scorecard_vs_persistence", log=log)
    cli("scorecard", "--scores", work / "scores_reference.nc", "--baseline", work / "scores_teacher.nc",
        "--out", work / "scorecard_reference_vs_teacher", log=log)

    crps = {name: target_table(ds, "crps") for name, ds in scores.items()}
    ssr = target_table(scores["teacher"], "spread_skill_ratio")
    leads_h = (scores["teacher"]["lead_time"].values / np.timedelta64(1, "h")).astype(int).tolist()
    gates, rows = {}, {}
    for label, (variable, level) in GATE_TARGETS.items():
        key = f"{variable}@{level}"
        rows[label] = {name: crps[name][key].tolist() for name in crps}
        for baseline in ("persistence", "climatology"):
            gates[f"{label}_beats_{baseline}"] = bool(np.all(crps["teacher"][key] < crps[baseline][key]))
    for baseline in ("persistence", "climatology"):
        ratio = np.mean([crps["teacher"][k] / crps[baseline][k] for k in crps["teacher"]], axis=0)
        rows[f"mean_crps_ratio_vs_{baseline}"] = ratio.tolist()
        gates[f"mean_beats_{baseline}"] = bool(np.all(ratio < 1.0))
    reference_ratio = np.mean([crps["reference"][k] / crps["teacher"][k] for k in crps["teacher"]], axis=0)
    rows["mean_crps_ratio_reference_vs_teacher"] = reference_ratio.tolist()
    mean_ssr = np.mean([ssr[k] for k in ssr], axis=0)
    rows["mean_ssr_teacher"] = mean_ssr.tolist()
    rows["mean_ssr_reference"] = np.mean(list(target_table(scores["reference"], "spread_skill_ratio").values()),
                                         axis=0).tolist()
    for label, (variable, level) in GATE_TARGETS.items():
        rows[f"ssr_{label}"] = ssr[f"{variable}@{level}"].tolist()
    gates["ssr_within_0.6_1.4"] = bool(np.all((mean_ssr >= 0.6) & (mean_ssr <= 1.4)))
    gates["trained_within_30_min"] = bool(timings.get("train_s", np.inf) <= TRAIN_BUDGET_S)
    summary = {"gates": gates, "passed": all(gates.values()), "leads_hours": leads_h, "rows": rows,
               "timings_s": timings, "inits": inits, "members": args.members,
               "config": args.config, "overrides": args.overrides, "store": args.store}
    results.mkdir(parents=True, exist_ok=True)
    (results / "teacher_quality_gate.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "teacher_quality_gate.md").write_text(render(summary))
    for name in ("scorecard_vs_climatology", "scorecard_vs_persistence"):
        shutil.copy(work / name / "summary.md", results / f"teacher_{name}.md")
        shutil.copy(work / name / "scorecard.png", results / f"teacher_{name}.png")
    print(render(summary))
    return 0 if summary["passed"] else 1


def render(summary: dict) -> str:
    leads = summary["leads_hours"]
    header = "| row | " + " | ".join(f"{h} h" for h in leads) + " |\n|---|" + "---|" * len(leads) + "\n"
    lines = ["# Teacher quality gate (embedded demo data)", "",
             f"{len(summary['inits'])} held-out inits ({summary['inits'][0]} .. {summary['inits'][-1]}), "
             f"{summary['members']} members, config `{Path(summary['config']).name}` "
             f"{' '.join(summary['overrides'])}", "",
             "## Gates", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in summary["gates"].items()]
    lines += ["", f"Timings (s): {json.dumps({k: round(v, 1) for k, v in summary['timings_s'].items()})}", "",
              "## Fair CRPS (global)", "", header.rstrip("\n")]
    for label in GATE_TARGETS:
        for name, values in summary["rows"][label].items():
            lines.append(f"| {label} {name} | " + " | ".join(f"{v:.4g}" for v in values) + " |")
    lines += ["", "## Ratios and spread/skill (mean over all variable x level targets)", "", header.rstrip("\n")]
    for key in ("mean_crps_ratio_vs_persistence", "mean_crps_ratio_vs_climatology",
                "mean_crps_ratio_reference_vs_teacher", "mean_ssr_teacher", "mean_ssr_reference", "ssr_z500",
                "ssr_t850"):
        lines.append(f"| {key} | " + " | ".join(f"{v:.3f}" for v in summary["rows"][key]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
