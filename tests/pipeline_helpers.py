"""Running `gencast-rmmd pipeline` from the pipeline tests: a subprocess per run, and the manifest it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

TINY = REPO / "configs" / "pipelines" / "tiny.yaml"
TINY_SELECT = REPO / "configs" / "pipelines" / "tiny_select.yaml"


def pipeline(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gencast_rmmd.cli", "pipeline", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run_pipeline(*args: str, timeout: float = 1200, config: Path = TINY) -> tuple[int, str, str, float]:
    began = time.monotonic()
    process = pipeline("run", config, *args)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err, time.monotonic() - began


def manifest(workdir: Path) -> dict:
    return json.loads((workdir / "manifest.json").read_text())
