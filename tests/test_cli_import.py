"""The command line starts without the model stack: no JAX, haiku or optax until a command runs.

`gencast-rmmd --help` (and every `... --help`) only needs typer and the option
declarations; importing JAX costs seconds on a loaded machine. Each check runs
in a fresh interpreter, because this test process has JAX imported already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MODEL_STACK = ("jax", "jaxlib", "haiku", "optax")


def _modules_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; return its exit code and which of MODEL_STACK it imported."""
    probe = (f"import sys\n{code}\n"
             f"sys.stderr.write('\\nLOADED ' + __import__('json').dumps("
             f"[m for m in {MODEL_STACK!r} if m in sys.modules]) + '\\n')\n")
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    marker = [line for line in finished.stderr.splitlines() if line.startswith("LOADED ")]
    assert marker, finished.stderr[-2000:]
    return {"loaded": json.loads(marker[-1][len("LOADED "):]), "out": finished.stdout, "err": finished.stderr}


def test_importing_the_cli_imports_no_jax():
    """`import gencast_rmmd.cli` registers every sub-app (data, models, distill, import, evaluation,
    pipelines) without importing jax, haiku or optax."""
    result = _modules_after("import gencast_rmmd.cli")
    assert result["loaded"] == [], result


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["forecast", "--help"],
                                  ["distill", "--help"], ["import", "gencast", "--help"],
                                  ["evaluate", "--help"], ["pipeline", "run", "--help"],
                                  ["data", "stats", "--help"]], ids=" ".join)
def test_help_imports_no_jax(argv):
    """The `--help` path (the console script's `main`) prints the usage and imports no model stack."""
    result = _modules_after("from gencast_rmmd.cli import main\n"
                            "try:\n"
                            f"    code = main({argv!r})\n"
                            "except SystemExit as done:\n"
                            "    code = done.code\n"
                            "assert code in (0, None), code")
    assert "Usage: gencast-rmmd" in result["out"], result
    assert result["loaded"] == [], result
