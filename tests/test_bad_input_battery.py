"""Usage errors on every command exit 2 with click's usage message, never "internal error".

The battery walks the registered command tree, so a command added later is covered
too: every group answers a bare call with its help and an unknown subcommand with
"No such command"; every command answers an unknown option with "No such option"
and, where it has required parameters, a bare call with "Missing". Explicit cases
below add out-of-range and mistyped values, extra arguments and flags given values.
None of these reaches a command body, so nothing is read or written.
"""

from __future__ import annotations

import pytest
import typer

from gencast_rmmd.cli import app


def _walk(command, path=()):
    """Yield (path, command, is_group) for every group and command under `command`."""
    subcommands = getattr(command, "commands", None)
    yield path, command, bool(subcommands)
    for name, sub in (subcommands or {}).items():
        yield from _walk(sub, (*path, name))


_TREE = list(_walk(typer.main.get_command(app)))
GROUPS = [path for path, _, is_group in _TREE if is_group]
COMMANDS = [path for path, _, is_group in _TREE if not is_group]
WITH_REQUIRED = [path for path, command, is_group in _TREE
                 if not is_group and any(param.required for param in command.params)]


def _name(path) -> str:
    return " ".join(path) or "<top>"


def assert_usage_error(result, *phrases, usage_line=True):
    """Exit 2, click's message (`Usage:` line where click has the context, one `Error: ...`)."""
    assert result.code == 2, (result.code, result.err)
    assert "internal error" not in result.err and "Traceback" not in result.err, result.err
    if usage_line:
        assert "Usage: gencast-rmmd" in result.err, result.err
    error_lines = [line for line in result.err.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1, result.err
    for phrase in phrases:
        assert phrase in error_lines[0], error_lines[0]


def test_the_tree_covers_every_command_group():
    """The walk sees the groups and commands the README lists (a broken walk would test nothing)."""
    names = {_name(path) for path in GROUPS + COMMANDS}
    for expected in ("<top>", "data", "data simulate", "data check", "data stats", "train",
                     "forecast", "inspect", "distill", "evaluate", "baseline", "scorecard",
                     "compare", "pipeline", "pipeline run", "weights", "weights install"):
        assert expected in names, expected


@pytest.mark.parametrize("path", GROUPS, ids=_name)
def test_bare_group_shows_its_help_and_exits_2(run_cli, path):
    result = run_cli(*path)
    assert result.code == 2, (result.code, result.err)
    assert "internal error" not in result.err
    help_text = result.out + result.err
    assert "Commands" in help_text and "Usage" in help_text, help_text
    for subcommand in typer.main.get_command(app).commands if not path else ():
        assert subcommand in help_text


@pytest.mark.parametrize("path", GROUPS, ids=_name)
def test_unknown_subcommand_exits_2(run_cli, path):
    assert_usage_error(run_cli(*path, "no-such-command"), "No such command 'no-such-command'")


@pytest.mark.parametrize("path", COMMANDS, ids=_name)
def test_unknown_option_exits_2(run_cli, path):
    assert_usage_error(run_cli(*path, "--no-such-option"), "No such option: --no-such-option")


@pytest.mark.parametrize("path", WITH_REQUIRED, ids=_name)
def test_missing_required_parameter_exits_2(run_cli, path):
    assert_usage_error(run_cli(*path), "Missing")


FORECAST = ("forecast", "--checkpoint", "run", "--init", "2020-01-01T00", "--out", "f.nc")


@pytest.mark.parametrize("args, phrase", [
    ((*FORECAST, "--steps", "2", "--members", "0"), "'--members'"),
    ((*FORECAST, "--steps", "0", "--members", "2"), "'--steps'"),
    ((*FORECAST, "--steps", "2", "--members", "2", "--batch-size", "0"), "'--batch-size'"),
    ((*FORECAST, "--steps", "two", "--members", "2"), "'--steps'"),
    ((*FORECAST, "--steps", "2", "--members", "2", "--ema", "yes"), "unexpected extra argument"),
    (("forecast", "--steps", "0"), "'--steps'"),
    (("forecast", "--members", "0"), "'--members'"),
    (("train", "--config", "c.yaml", "--out", "run", "--resume=yes"), "does not take a value"),
    (("train", "--config"), "requires an argument"),
    (("distill", "--config", "c.yaml", "--teacher", "t", "--out", "s", "extra"),
     "unexpected extra argument"),
    (("evaluate", "--forecast", "f.nc", "--truth", "t.zarr", "--out", "s.nc", "--seed", "x"),
     "'--seed'"),
    (("inspect", "a", "b"), "unexpected extra argument"),
    (("compare", "f.nc", "--baseline", "b.nc", "--truth", "t.zarr", "--draws", "many"),
     "'--draws'"),
    (("data", "simulate", "--out"), "requires an argument"),
    (("data", "stats", "--data", "d.zarr"), "Missing option '--out'"),
    (("weights", "verify"), "Missing argument"),
    (("weights", "install", "pkg", "--config", "c.yaml"), "Missing option '--out'"),
    (("pipeline", "run", "c.yaml", "--workdir"), "requires an argument"),
    (("pipeline", "status"), "Missing argument"),
    (("pipeline", "tsk"), "No such command 'tsk'"),
    (("scorecard", "--scores", "s.nc", "--baseline", "b.nc"), "Missing option '--out'"),
    (("baseline", "persistence", "--steps", "x"), "'--steps'"),
], ids=lambda value: " ".join(value) if isinstance(value, tuple) else None)
def test_bad_values_and_arguments_exit_2(run_cli, tmp_path, monkeypatch, args, phrase):
    monkeypatch.chdir(tmp_path)
    # Typer's bundled parser raises these two without the context, so without a Usage: line.
    parser_level = phrase in ("does not take a value", "requires an argument")
    assert_usage_error(run_cli(*args), phrase, usage_line=not parser_level)
    assert list(tmp_path.iterdir()) == [], "a usage error wrote files"


def test_typo_of_a_command_is_suggested(run_cli):
    assert_usage_error(run_cli("forcast"), "Did you mean 'forecast'")


def test_user_input_error_is_still_one_line_exit_2(run_cli, tmp_path):
    """Not a usage error but bad input: the one-line `error:` answer is unchanged."""
    result = run_cli("inspect", tmp_path / "missing")
    assert result.code == 2, result.err
    assert result.err.startswith("error: ") and len(result.err.strip().splitlines()) == 1


def test_internal_errors_still_exit_1(run_cli, monkeypatch):
    """An unexpected exception inside a command stays an internal error (exit 1)."""
    import gencast_rmmd.cli as cli

    def explode() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "app", typer.Typer())
    cli.app.command("explode")(explode)
    cli.app.command("other")(lambda: None)
    result = run_cli("explode")
    assert result.code == 1 and "internal error: RuntimeError: boom" in result.err, result.err
