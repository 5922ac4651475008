"""Command line: `gencast-rmmd evaluate`, `baseline persistence|climatology`, `scorecard`, `compare`, `gate`.

`register(app)` adds the commands to the main `gencast-rmmd` app. Bodies
import the heavy parts (dask, matplotlib, distributed) only when they run,
so `gencast-rmmd --help` stays fast. Bad input raises `UserInputError`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gencast_rmmd.errors import GATE_FAILED_EXIT, UserInputError

baseline_app = typer.Typer(help="Forecasts from the truth alone (persistence, climatology), in the forecast layout.",
                           no_args_is_help=True)


def _split_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    return names or None


def parse_init_times(values: list[str], every_hours: int = 24):
    """`--init` values as a sorted DatetimeIndex: ISO times, or `START..END` ranges every `every_hours` hours."""
    import pandas as pd

    times = []
    for value in values:
        try:
            if ".." in value:
                start, end = (pd.Timestamp(part) for part in value.split("..", 1))
            else:
                start = end = pd.Timestamp(value)
        except (ValueError, TypeError):
            raise UserInputError(f"--init {value!r} is not an ISO time (e.g. 2000-10-01T00) or a "
                                 "START..END range") from None
        if pd.isna(start) or pd.isna(end):
            raise UserInputError(f"--init {value!r} is not an ISO time (e.g. 2000-10-01T00) or a START..END range")
        if end < start:
            raise UserInputError(f"--init {value!r}: the range ends before it starts; write START..END with "
                                 "START first")
        if every_hours < 1:
            raise UserInputError(f"--init-every-hours must be at least 1 (got {every_hours})")
        times.extend(pd.date_range(start, end, freq=f"{every_hours}h"))
    if not times:
        raise UserInputError("give at least one --init")
    return pd.DatetimeIndex(sorted(set(times)))


def check_scheduler_reachable(address: str, timeout: float = 3.0) -> None:
    """Refuse an unreachable `--dask-scheduler` at once (a dask Client would retry for 30 s, then raise OSError)."""
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address)
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r}; known: {', '.join(sorted(backends))}")
        host, port = parse_host_port(location, default_port=8786) if scheme in ("tcp", "tls") else (None, None)
    except (ValueError, TypeError) as error:
        raise UserInputError(f"--dask-scheduler {address!r} is not a scheduler address such as tcp://HOST:8786 "
                             f"({error})") from None
    if host is None:
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise UserInputError(f"--dask-scheduler {address}: cannot connect ({error.strerror or error}); start a "
                             "scheduler (`dask scheduler`) or leave the option out to compute here") from None


def evaluate(
    forecast: str = typer.Option(..., "--forecast", help="Forecast NetCDF or zarr in the WB2 forecast layout."),
    truth: str = typer.Option(..., "--truth", help="Truth store URL (zarr: local path, file://, gs://)."),
    out: Path = typer.Option(..., "--out", help="Scores NetCDF to write."),
    member_dim: Optional[str] = typer.Option(None, "--member-dim",
                                             help="Member dim name (default: auto-detect number/realization/"
                                                  "member/sample)."),
    regions: Optional[str] = typer.Option(None, "--regions", help="Comma-separated regions (default: all)."),
    variables: Optional[str] = typer.Option(None, "--variables", help="Comma-separated variables (default: all)."),
    dask_scheduler: Optional[str] = typer.Option(None, "--dask-scheduler",
                                                 help="dask.distributed scheduler ADDRESS (default: local)."),
    label: Optional[str] = typer.Option(None, "--label", help="Name on scorecards (default: forecast file stem)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the rank-histogram tie-breaking."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Score a forecast: fair CRPS, spread/skill, ensemble-mean RMSE, rank histograms per variable/level/lead."""
    from evaluation.regions import REGIONS
    from evaluation.scoring import evaluate_files
    from gencast_rmmd.io_utils import check_output_path

    check_output_path(out, directory=False)
    if dask_scheduler:
        check_scheduler_reachable(dask_scheduler)
    scores = evaluate_files(forecast, truth, str(out), member_dim=member_dim,
                            regions=tuple(_split_names(regions) or REGIONS), variables=_split_names(variables),
                            scheduler_address=dask_scheduler, seed=seed, label=label, progress=progress)
    print(f"wrote {out}: {len([n for n in scores.data_vars if 'metric' in scores[n].dims])} variables, "
          f"{scores.attrs['member_count']} members, {scores.attrs['init_count']} inits, "
          f"{scores.sizes['lead_time']} leads")


def _truth_and_variables(truth: str, variables: str | None, config: Path | None):
    from gencast_rmmd.data.stores import open_dataset
    from evaluation.baselines import forecast_variables

    store = open_dataset(truth)
    split, names = None, _split_names(variables)
    if config is not None:
        from gencast_rmmd.config import DataFileConfig, load_config

        loaded = load_config(config, DataFileConfig).data
        split = loaded.splits.train
        if names is None:
            names = [name for name in loaded.variables.time_varying if name in store.data_vars]
    return store, forecast_variables(store, names), split


def _write(forecast, out: Path, truth: str) -> None:
    from dask.diagnostics import ProgressBar

    from gencast_rmmd.data.forecast_io import write_forecast
    from gencast_rmmd.data.stores import describe_location

    forecast.attrs["truth_location"] = str(describe_location(truth))
    with ProgressBar(minimum=1.0, out=sys.stderr):
        write_forecast(forecast, out)
    print(f"wrote {out}: {forecast.sizes['time']} inits, {forecast.sizes['prediction_timedelta']} leads, "
          f"{forecast.sizes['number']} member(s), variables {', '.join(map(str, forecast.data_vars))}")


# Options shared by the baseline commands.
TruthOption = Annotated[str, typer.Option("--truth", help="Truth store URL.")]
InitOption = Annotated[list[str], typer.Option(
    "--init", help="Initialisation time (ISO), repeatable; START..END gives one every --init-every-hours.")]
StepsOption = Annotated[int, typer.Option("--steps", help="Number of lead steps.")]
OutOption = Annotated[Path, typer.Option("--out", help="Forecast to write: NetCDF, or a zarr store for a name "
                                                          "ending in .zarr.")]
StepHoursOption = Annotated[int, typer.Option("--step-hours", help="Hours per step.")]
InitEveryOption = Annotated[int, typer.Option("--init-every-hours", help="Spacing of START..END inits.")]
VariablesOption = Annotated[Optional[str], typer.Option("--variables", help="Comma-separated (default: all).")]


@baseline_app.command("persistence")
def persistence(
    truth: TruthOption, init: InitOption, steps: StepsOption, out: OutOption,
    step_hours: StepHoursOption = 12, init_every_hours: InitEveryOption = 24, variables: VariablesOption = None,
    config: Optional[Path] = typer.Option(None, "--config", help="Data config: its variables are used."),
) -> None:
    """Persistence (M = 1): the state at initialisation, repeated at every lead."""
    from evaluation.baselines import lead_times, persistence_forecast
    from gencast_rmmd.io_utils import check_output_path

    check_output_path(out)
    store, names, _ = _truth_and_variables(truth, variables, config)
    forecast = persistence_forecast(store, parse_init_times(init, init_every_hours), lead_times(steps, step_hours),
                                    names)
    _write(forecast, out, truth)


@baseline_app.command("climatology")
def climatology(
    truth: TruthOption, init: InitOption, steps: StepsOption, out: OutOption,
    members: int = typer.Option(50, "--members", help="Ensemble size M."),
    step_hours: StepHoursOption = 12, init_every_hours: InitEveryOption = 24, variables: VariablesOption = None,
    config: Optional[Path] = typer.Option(None, "--config",
                                          help="Data config: training split and variables (default: the whole "
                                               "store before the first init)."),
    window_days: float = typer.Option(15.0, "--window-days", help="± days of year around the valid date."),
    seed: int = typer.Option(0, "--seed", help="Seed of the member draw."),
) -> None:
    """Climatology: M training-period states from the same time of year (± window) and day, in other years."""
    from evaluation.baselines import climatology_forecast, lead_times
    from gencast_rmmd.io_utils import check_output_path

    check_output_path(out)
    if not window_days >= 0:
        raise UserInputError(f"--window-days must be 0 or more (got {window_days:g}): the half-width of the "
                             "day-of-year window")
    store, names, split = _truth_and_variables(truth, variables, config)
    forecast = climatology_forecast(store, parse_init_times(init, init_every_hours), lead_times(steps, step_hours),
                                    names, members, split, window_days, seed)
    if forecast.attrs["pairs_from_whole_training_period"]:
        print(f"note: {forecast.attrs['pairs_from_whole_training_period']} (init, lead) pairs had no state "
              f"within ±{window_days:g} days in another year; drawn from the whole training period",
              file=sys.stderr)
    _write(forecast, out, truth)


def scorecard(
    scores: list[Path] = typer.Option(..., "--scores", help="Scores file of a forecast A (repeatable)."),
    baseline: Path = typer.Option(..., "--baseline", help="Scores file of the baseline B."),
    out: Path = typer.Option(..., "--out", help="Directory for scorecard.png, index.html, summary.md."),
    timing: Optional[Path] = typer.Option(None, "--timing",
                                          help="timing.json: {name: {wall_seconds_per_step, "
                                               "denoiser_calls_per_step}}; names A, B or labels."),
    region: str = typer.Option("global", "--region", help="Region the scorecard shows."),
) -> None:
    """Scorecard of forecasts against a baseline: PNG (CRPS and RMSE, relative %), HTML and markdown."""
    from evaluation.report import write_scorecard
    from gencast_rmmd.io_utils import check_output_path

    check_output_path(out, directory=True)
    for line in write_scorecard(list(scores), baseline, out, region=region, timing=timing):
        print(line)
    print(f"wrote {out / 'scorecard.png'}, {out / 'index.html'}, {out / 'summary.md'}")


def compare(
    forecasts: list[str] = typer.Argument(..., help="Forecasts of the baseline's inits (NetCDF or zarr)."),
    baseline: str = typer.Option(..., "--baseline", help="Baseline forecast the changes are relative to."),
    truth: str = typer.Option(..., "--truth", help="Truth store URL."),
    lead: list[int] = typer.Option([], "--lead", help="Lead in hours, repeatable (default: every lead)."),
    target: list[str] = typer.Option([], "--target", help="variable@level, or a variable for all its levels, "
                                                           "repeatable (default: every target)."),
    draws: int = typer.Option(5000, "--draws", help="Bootstrap draws (at least 100)."),
    block_days: Optional[float] = typer.Option(None, "--block-days",
                                               help="Bootstrap block length in days (default: the longest "
                                                    "compared lead)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap draws."),
    region: str = typer.Option("global", "--region", help="Region the CRPS is averaged over."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure to this JSON file."),
) -> None:
    """CRPS change of each forecast vs the baseline, and of each pair, with moving-block bootstrap intervals."""
    from evaluation.compare import compare_forecasts, summary_lines
    from gencast_rmmd.io_utils import check_output_path, write_json_atomic

    if json_out is not None:
        check_output_path(json_out, directory=False, option="--json")
    result = compare_forecasts(baseline, forecasts, truth, leads=lead or None, targets=target or None, draws=draws,
                               block_hours=None if block_days is None else 24.0 * block_days, seed=seed,
                               region=region, log=lambda line: print(line, file=sys.stderr))
    for line in summary_lines(result):
        print(line)
    if json_out is not None:
        write_json_atomic(json_out, result)
        print(f"wrote {json_out}")



def gate(
    rules: Path = typer.Option(..., "--rules", help="Rules file (configs/eval/*.yaml)."),
    scores: list[Path] = typer.Option(..., "--scores", help="Scores file, or a directory whose *.nc are all read "
                                                            "(repeatable); rules name them by label."),
    out: Path = typer.Option(..., "--out", help="Verdict JSON to write (NAME.json); NAME.md is written beside it."),
    timings: Optional[Path] = typer.Option(None, "--timings", help="JSON {name: seconds} of measured durations "
                                                                   "for the at_most rules."),
) -> None:
    """Check scores files against quality-gate rules: JSON and markdown verdict; exit 3 when a required rule fails."""
    from evaluation.gates import check_gate, gate_markdown, load_rules, read_timings, scores_by_label
    from gencast_rmmd.io_utils import atomic_path, check_output_path, write_json_atomic

    if out.suffix != ".json":
        raise UserInputError(f"--out {out}: name the verdict NAME.json (NAME.md is written beside it)")
    markdown = out.with_suffix(".md")
    check_output_path(out, directory=False)
    check_output_path(markdown, directory=False)
    result = check_gate(load_rules(rules), scores_by_label(scores), read_timings(timings), rules_file=str(rules))
    write_json_atomic(out, result.as_json())
    with atomic_path(markdown) as temporary:
        temporary.write_text(gate_markdown(result))
    for rule in result.rules:
        print(f"{'PASS' if rule.passed else 'FAIL'}{'' if rule.required else ' (not required)'}: {rule.name}")
    print(f"{'passed' if result.passed else 'FAILED'}: wrote {out}, {markdown}")
    if not result.passed:
        raise typer.Exit(GATE_FAILED_EXIT)


def register(app: typer.Typer) -> None:
    """Add `evaluate`, `baseline`, `scorecard`, `compare` and `gate` to the `gencast-rmmd` app."""
    app.command("evaluate")(evaluate)
    app.add_typer(baseline_app, name="baseline")
    app.command("scorecard")(scorecard)
    app.command("compare")(compare)
    app.command("gate")(gate)
