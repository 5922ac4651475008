"""The teacher quality gate on the embedded demo data: the product's pipeline, then the product's gate.

Usage:
    python benchmarks/teacher_quality_gate.py [--workdir runs/pipelines/teacher_gate]
        [--pipeline configs/pipelines/teacher_gate.yaml] [--results results/teacher] [--set key=value ...]

1. `gencast-rmmd pipeline run PIPELINE --workdir WORKDIR --resume` (with `--set`s): simulate the demo store,
   train the demo teacher, forecast 20 test inits x 8 members x 10 steps, the baselines and the perfect-model
   reference, scores and scorecards, and the pipeline's `gate` stage: the rules of its `gate.rules`
   (configs/eval/teacher_gate.yaml) with the teacher stage's measured training time. Rerun the same command
   after an interruption.
2. The record in RESULTS: the gate's verdict (quality_gate.json, quality_gate.md), the two scorecard PNGs
   (against climatology and persistence), the resolved configs the pipeline ran with (configs/), and
   provenance.json (this command, the pipeline config, the code's git commit, the teacher's step and
   parameter sha256).
Exit status: the pipeline's (0 passed, 3 the gate failed), or 1 when a stage failed otherwise.
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


def record(workdir: Path, results: Path, pipeline: str, command: list[str]) -> None:
    """The verdict, scorecard PNGs, the resolved configs and provenance.json from WORKDIR into RESULTS."""
    for suffix in ("json", "md"):
        shutil.copyfile(workdir / "gate" / f"verdict.{suffix}", results / f"quality_gate.{suffix}")
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
    parser.add_argument("--results", type=Path, default=Path("results/teacher"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="pipeline key=value")
    args = parser.parse_args()
    work, results = args.workdir, args.results
    sets = [item for override in args.overrides for item in ("--set", override)]
    verdict = gencast("pipeline", "run", args.pipeline, "--workdir", work, "--resume", *sets).returncode
    if verdict not in (0, 3) or not (work / "gate" / "verdict.json").is_file():
        return 1
    results.mkdir(parents=True, exist_ok=True)
    record(work, results, args.pipeline, [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    return verdict


if __name__ == "__main__":
    sys.exit(main())
