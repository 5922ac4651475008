"""The `gencast-rmmd` command line.

Sub-commands live beside the code they drive and are registered here. Errors
are answered in one place: bad input (`UserInputError`) prints one line and
exits 2; a usage error (unknown option or command, a missing or out-of-range
value) prints click's usual usage message, or the help for a bare group, and
exits 2; a disk that fills up (ENOSPC) says so in one line and exits 2;
anything else is an internal error, exits 1 and prints a traceback only when
GENCAST_RMMD_DEBUG=1. `gate` exits 3 when the scores it checked fail a required rule
(its verdict is written first), so a script can tell a failed gate from bad input.

Typer (pinned 0.29.2) parses with its own bundled copy of click, so its usage
errors are `typer.TyperException`s, not `click.ClickException`s.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

import typer

from gencast_rmmd.errors import TrainingDiverged, UserInputError

app = typer.Typer(
    name="gencast-rmmd",
    help="GenCast-style diffusion forecasting distilled with Rewarded Moment Matching (RMMD).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_commands() -> None:
    from gencast_rmmd.commands import data as data_commands

    from gencast_rmmd.commands import models as model_commands

    app.add_typer(data_commands.app, name="data")
    model_commands.register(app)
    from gencast_rmmd.commands import distill as distill_commands
    distill_commands.register(app)
    from gencast_rmmd.commands import imports as import_commands
    import_commands.register(app)
    try:
        from evaluation import cli as evaluation_cli
    except ImportError as error:  # evaluation is part of the product; surface a broken install
        if "evaluation" not in str(error):
            raise
    else:
        evaluation_cli.register(app)
    from pipelines import cli as pipeline_cli
    pipeline_cli.register(app)


_register_commands()


def _show_usage_error(error: typer.TyperException) -> None:
    """Print a usage error as click does: usage line, help hint and `Error: ...`."""
    show = getattr(error, "show", None)
    if show is not None:
        show()
    else:
        print(f"error: {error.format_message()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map errors to exit codes (0 ok, 2 bad input, 1 internal, 3 gate failed)."""
    try:
        # With standalone_mode=False click returns (not raises) the code of `typer.Exit(code)`.
        code = app(args=argv, prog_name="gencast-rmmd", standalone_mode=False)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except typer.Exit as done:
        return done.exit_code
    except typer.TyperException as error:  # usage errors: click's message and exit 2
        _show_usage_error(error)
        return error.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _internal_error(error)
        # A write outside `atomic_path` (a log, a metrics line) that found the disk full.
        print(f"error: no space left on device writing {error.filename or 'a file'}; free some space and "
              "rerun (with --resume where the command has it)", file=sys.stderr)
        return 2
    except Exception as error:
        return _internal_error(error)
    return code if isinstance(code, int) else 0


def _internal_error(error: Exception) -> int:
    """Internal error: one line, a traceback on request, exit 1."""
    if os.environ.get("GENCAST_RMMD_DEBUG"):
        traceback.print_exception(error)
    print(f"internal error: {type(error).__name__}: {error} "
          "(set GENCAST_RMMD_DEBUG=1 for a traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
