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

import sys

from reproduce_weights import REPO, reproduce

if __name__ == "__main__":
    sys.exit(reproduce(__doc__, "phase1", REPO / "gencast_rmmd" / "distill" / "pretrained" / "demo_phase1",
                       REPO / "configs" / "pipelines" / "demo_phase1.yaml", "students/mmd_base",
                       "runs/pipelines/demo_phase1"))
