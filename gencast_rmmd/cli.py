"""The `gencast-rmmd` command line.

Sub-commands live beside the code they drive and are registered here. Errors
are answered in one place: bad input (`UserInputError`, click usage errors)
prints one line and exits 2; anything else is an internal error, exits 1 and
prints a traceback only when GENCAST_RMMD_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer

from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training.task import TrainingDiverged

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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map errors to exit codes (0 ok, 2 bad input, 1 internal)."""
    try:
        # With standalone_mode=False click returns (not raises) the code of `typer.Exit(code)`.
        code = app(args=argv, prog_name="gencast-rmmd", standalone_mode=False)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # internal error: one line, traceback on request
        if os.environ.get("GENCAST_RMMD_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(error).__name__}: {error} "
              "(set GENCAST_RMMD_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
