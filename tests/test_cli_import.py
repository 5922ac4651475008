"""The command line starts without the model stack: no JAX, haiku or optax until a command runs.

`gencast-rmmd --help` (and every `... --help`) only needs typer and the option
declarations; importing JAX costs seconds on a loaded machine. Each check runs
in a fresh interpreter, because this test process has JAX imported already.
"""

from __future__ import annotations

import json
import subprocess
import sys

MODEL_STACK = ("jax", "jaxlib", "haiku", "optax")


def _modules_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; return which of MODEL_STACK it imported, its stdout and stderr."""
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


_EVERY_HELP = """
import contextlib, io
import typer
from gencast_rmmd.cli import app, main

def walk(command, path=()):
    yield path
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from walk(sub, (*path, name))

paths = list(walk(typer.main.get_command(app)))
for path in paths:
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        try:
            code = main([*path, "--help"])
        except SystemExit as done:
            code = done.code
    assert code in (0, None) and "Usage: gencast-rmmd" in shown.getvalue(), (path, code)
print(len(paths), "helps")
"""


def test_every_help_imports_no_jax():
    """`gencast-rmmd --help` and the `--help` of every group and command the CLI registers (data, models,
    distill, import, evaluation, pipelines) print their usage without importing the model stack."""
    result = _modules_after(_EVERY_HELP)
    assert result["loaded"] == [], result
    assert int(result["out"].split()[0]) > 30, result["out"]     # the walk reached the whole tree
