"""Retrain the shipped demo phase-2 student from the shipped phase-1 student and check that it is bit-identical.

    python tools/reproduce_demo_phase2.py [--workdir runs/pipelines/demo_phase2]

Runs `configs/pipelines/demo_phase2.yaml` (resumable: run the same command
again after an interruption), exports its `rmmd` student as a phase-2 weights
package in WORKDIR/weights and compares its sha256 (the raw student and aux and
the student's EMA) with the shipped package's
(`gencast_rmmd/distill/pretrained/demo_phase2/weights.json`). Exit 0 when
identical, 1 when not (both hashes printed). As for the teacher and phase 1,
the hash covers every parameter bit and is reproducible on the pinned stack on
x86-64 CPUs; another CPU or XLA build can round differently.
"""

from __future__ import annotations

import sys

from reproduce_weights import REPO, reproduce

if __name__ == "__main__":
    sys.exit(reproduce(__doc__, "phase2", REPO / "gencast_rmmd" / "distill" / "pretrained" / "demo_phase2",
                       REPO / "configs" / "pipelines" / "demo_phase2.yaml", "students/rmmd",
                       "runs/pipelines/demo_phase2"))
