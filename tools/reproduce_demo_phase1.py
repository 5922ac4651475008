"""Retrain the shipped demo phase-1 student from the shipped teacher and check that its weights are bit-identical.

    python tools/reproduce_demo_phase1.py [--workdir runs/pipelines/demo_phase1]

Runs `configs/pipelines/demo_phase1.yaml` (resumable: run the same command
again after an interruption), exports its `mmd_base` student as a phase-1
weights package in WORKDIR/weights and compares its parameters' sha256 with the
shipped package's (`gencast_rmmd/distill/pretrained/demo_phase1/weights.json`).
Exit 0 when identical, 1 when not (both hashes printed). As for the teacher
(tools/reproduce_demo_teacher.py), the hash covers every parameter bit and is
reproducible on the pinned stack on x86-64 CPUs; another CPU or XLA build can
round differently.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "gencast_rmmd" / "distill" / "pretrained" / "demo_phase1"
PIPELINE = REPO / "configs" / "pipelines" / "demo_phase1.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/pipelines/demo_phase1"))
    args = parser.parse_args()
    from gencast_rmmd.distill.weights import export_phase1, load_phase1

    _, shipped = load_phase1(SHIPPED)
    command = [sys.executable, "-m", "gencast_rmmd.cli", "pipeline", "run", str(PIPELINE), "--workdir",
               str(args.workdir), "--resume"]
    print("$", " ".join(command), flush=True)
    if subprocess.call(command) != 0:
        return 1
    out = args.workdir / "weights"
    retrained = export_phase1(args.workdir / "students" / "mmd_base", out, shipped["source"].get("reproduce"))
    same = retrained["params_sha256"] == shipped["params_sha256"]
    print(f"shipped   {shipped['params_sha256']}\nretrained {retrained['params_sha256']} ({out})")
    print("bit-identical" if same else "DIFFERENT: the retrained phase-1 student is not the shipped one")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
