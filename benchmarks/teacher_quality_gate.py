"""The teacher quality gate on the embedded demo data: the product's pipeline, then the product's gate.

Usage:
    python benchmarks/teacher_quality_gate.py [--workdir runs/pipelines/teacher_gate]
        [--pipeline configs/pipelines/teacher_gate.yaml] [--rules configs/eval/teacher_gate.yaml]
        [--results results/teacher] [--set key=value ...]

1. `gencast-rmmd pipeline run PIPELINE --workdir WORKDIR --resume` (with `--set`s): simulate the demo store,
   train the demo teacher, forecast 20 test inits x 8 members x 10 steps, the baselines and the perfect-model
   reference, scores and scorecards. Rerun the same command after an interruption.
2. The measured training time: the teacher stage's `seconds` in WORKDIR/manifest.json, written to
   WORKDIR/timings.json as `train_s` only when the stage trained in one attempt (a resumed stage records its
   last leg alone); otherwise it is left out and `trained_within_30_min` fails rather than assume it.
3. `gencast-rmmd gate --rules RULES --scores WORKDIR/scores --timings WORKDIR/timings.json
   --out RESULTS/quality_gate.json` (and quality_gate.md).
4. The record in RESULTS: the two scorecard PNGs (against climatology and persistence), the resolved
   configs the pipeline ran with (configs/), and provenance.json (this command, the pipeline config, the
   code's git commit, the teacher's step and parameter sha256).
Exit status: the gate's (0 passed, 3 failed), or 1 when a command failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from gencast_rmmd.io_utils import write_json_atomic

SCORECARDS = ("vs_climatology", "vs_persistence")


def gencast(*args: object, capture: bool = False) -> subprocess.CompletedProcess:
    """`gencast-rmmd ARGS` in a subprocess, echoed; its stdout kept when `capture`."""
    print("$ gencast-rmmd " + " ".join(map(str, args)), flush=True)
    return subprocess.run([sys.executable, "-m", "gencast_rmmd.cli", *map(str, args)], text=True,
                          stdout=subprocess.PIPE if capture else None)


def measured_timings(workdir: Path) -> dict[str, float]:
    """{"train_s": the teacher stage's seconds} when it trained in one attempt, else {} (not measured)."""
    stage = json.loads((workdir / "manifest.json").read_text())["stages"]["teacher"]
    return {"train_s": stage["seconds"]} if stage.get("attempts") == 1 and stage.get("seconds") else {}


def record(workdir: Path, results: Path, pipeline: str, command: list[str]) -> None:
    """Scorecard PNGs, the resolved configs and provenance.json from WORKDIR into RESULTS."""
    for name in SCORECARDS:
        shutil.copyfile(workdir / "scorecard" / name / "scorecard.png", results / f"scorecard_{name}.png")
    shutil.copytree(workdir / "configs", results / "configs", dirs_exist_ok=True)
    teacher = json.loads(gencast("inspect", workdir / "teacher", "--json", capture=True).stdout)
    manifest = json.loads((workdir / "manifest.json").read_text())
    write_json_atomic(results / "provenance.json", {
        "command": " ".join(command), "pipeline": pipeline, "git_commit": manifest["environment"].get("git_commit"),
        "teacher": {key: teacher.get(key) for key in ("step", "params_sha256", "param_count")},
        "inits": json.loads((workdir / "forecasts" / "inits.json").read_text())["inits"]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/pipelines/teacher_gate"))
    parser.add_argument("--pipeline", default="configs/pipelines/teacher_gate.yaml")
    parser.add_argument("--rules", default="configs/eval/teacher_gate.yaml")
    parser.add_argument("--results", type=Path, default=Path("results/teacher"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="pipeline key=value")
    args = parser.parse_args()
    work, results = args.workdir, args.results
    sets = [item for override in args.overrides for item in ("--set", override)]
    if gencast("pipeline", "run", args.pipeline, "--workdir", work, "--resume", *sets).returncode:
        return 1
    write_json_atomic(work / "timings.json", measured_timings(work))
    results.mkdir(parents=True, exist_ok=True)
    verdict = gencast("gate", "--rules", args.rules, "--scores", work / "scores", "--timings", work / "timings.json",
                      "--out", results / "quality_gate.json").returncode
    if verdict not in (0, 3):
        return 1
    record(work, results, args.pipeline, [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    return verdict


if __name__ == "__main__":
    sys.exit(main())
