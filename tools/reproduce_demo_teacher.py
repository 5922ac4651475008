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

import sys

from reproduce_weights import REPO, reproduce

if __name__ == "__main__":
    sys.exit(reproduce(__doc__, "teacher", REPO / "gencast_rmmd" / "teacher" / "pretrained" / "demo",
                       REPO / "configs" / "pipelines" / "demo_teacher.yaml", "teacher", "runs/pipelines/demo_teacher"))
