"""Retrain the shipped demo teacher from scratch and check that its weights are bit-identical.

    python tools/reproduce_demo_teacher.py [--workdir runs/pipelines/demo_teacher]

Runs `configs/pipelines/demo_teacher.yaml` (resumable: run the same command
again after an interruption), exports the trained teacher as a weights
package in WORKDIR/weights and compares its parameters' sha256 with the
shipped package's (`gencast_rmmd/teacher/pretrained/demo/weights.json`).
Exit 0 when identical, 1 when not (both hashes printed). The hash covers every
parameter bit; it is reproducible on the pinned stack (pyproject.toml) on
x86-64 CPUs. Another CPU or XLA build can round differently, and then the
retrained weights differ in their last bits: the exit status says which.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "gencast_rmmd" / "teacher" / "pretrained" / "demo"
PIPELINE = REPO / "configs" / "pipelines" / "demo_teacher.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/pipelines/demo_teacher"))
    args = parser.parse_args()
    from gencast_rmmd.teacher.weights import export_weights, load_weights

    _, shipped = load_weights(SHIPPED)
    command = [sys.executable, "-m", "gencast_rmmd.cli", "pipeline", "run", str(PIPELINE), "--workdir",
               str(args.workdir), "--resume"]
    print("$", " ".join(command), flush=True)
    if subprocess.call(command) != 0:
        return 1
    out = args.workdir / "weights"
    retrained = export_weights(args.workdir / "teacher", out, shipped["source"].get("reproduce"))
    same = retrained["params_sha256"] == shipped["params_sha256"]
    print(f"shipped   {shipped['params_sha256']}\nretrained {retrained['params_sha256']} ({out})")
    print("bit-identical" if same else "DIFFERENT: the retrained teacher is not the shipped one")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
