"""What both reproduction tools do: run a shipped package's pipeline, export its run, compare the sha256.

Used by tools/reproduce_demo_teacher.py, tools/reproduce_demo_phase1.py and tools/reproduce_demo_phase2.py
(run as scripts, so this module is importable beside them).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHAT = {"teacher": "teacher", "phase1": "phase-1 student", "phase2": "phase-2 student"}


def reproduce(description: str, kind: str, shipped: Path, pipeline: Path, run: str, workdir: str) -> int:
    """Parse `--workdir` (default `workdir`), run `pipeline` there with `--resume`, export `WORKDIR/run` as a
    `kind` package in WORKDIR/weights and compare its hash with the package at `shipped`. 0 when
    bit-identical, 1 when not (both hashes printed) or when the pipeline fails."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    args = parser.parse_args()
    from gencast_rmmd.distill.weights import export_phase1, export_phase2
    from gencast_rmmd.teacher.weights import export_weights
    from gencast_rmmd.training.packages import read_package

    _, expected = read_package(shipped, kind)
    command = [sys.executable, "-m", "gencast_rmmd.cli", "pipeline", "run", str(pipeline), "--workdir",
               str(args.workdir), "--resume"]
    print("$", " ".join(command), flush=True)
    if subprocess.call(command) != 0:
        return 1
    out = args.workdir / "weights"
    export = {"teacher": export_weights, "phase1": export_phase1, "phase2": export_phase2}[kind]
    retrained = export(args.workdir / run, out, expected["source"].get("reproduce"))
    same = retrained["params_sha256"] == expected["params_sha256"]
    print(f"shipped   {expected['params_sha256']}\nretrained {retrained['params_sha256']} ({out})")
    print("bit-identical" if same else f"DIFFERENT: the retrained {WHAT[kind]} is not the shipped one")
    return 0 if same else 1
