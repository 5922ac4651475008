"""`gencast-rmmd data ...`: simulate, check, stats and regrid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gencast_rmmd.commands.common import ConfigOption, DataOption, SetOption, console, load_data_config
from gencast_rmmd.commands.simulate import simulate as simulate_command
from gencast_rmmd.io_utils import check_output_path

app = typer.Typer(help="Data: simulate the embedded dataset, check a store's schema, compute statistics, "
                       "regrid a store.",
                  no_args_is_help=True)

app.command("simulate")(simulate_command)


@app.command("check")
def check(data: DataOption = None, config: ConfigOption = None, overrides: SetOption = None,
          deep: Annotated[bool, typer.Option(
              "--deep", help="Also read and decode every chunk of every variable the config uses "
                             "(slow on big stores); list each corrupt chunk.")] = False) -> None:
    """Check a store against a data config: variables, levels, dims, times, NaNs; print a schema summary.

    Exits 2 with one line naming the first problem. Time gaps are reported, not errors.
    Without --deep only the chunks the checks sample are read.
    """
    from gencast_rmmd.data.source import DataSource

    data_config = load_data_config(config, overrides, data).data
    if deep:  # first, so that every bad chunk is listed even where the schema checks would stop at one
        _deep_check(data_config)
    source = DataSource.open(data_config)
    for line in source.report.lines():
        console.print(line)
    for split in ("train", "validation", "test"):
        start, end = source.time_range(split)
        windows = source.windows(split)
        skipped = f", {windows.skipped_for_gaps} skipped for gaps" if windows.skipped_for_gaps else ""
        console.print(f"{split:<10} {start} .. {end}: {len(windows)} windows{skipped}")
    console.print(f"ok: {source.report.location} matches the config "
                  f"({source.layout.n_input_channels} input channels per frame, "
                  f"{source.layout.n_target_channels} target channels)")


def _deep_check(data_config) -> None:
    """Read every chunk of the stored arrays the config uses; print each bad one, then exit 2 if any."""
    from gencast_rmmd.data.chunks import deep_check
    from gencast_rmmd.data.schema import DERIVABLE
    from gencast_rmmd.data.stores import checked_store, describe_location, open_store
    from gencast_rmmd.errors import UserInputError

    raw = open_store(data_config.path)
    variables = data_config.variables
    wanted = [*variables.time_varying, *variables.static]
    stored = [name if name in raw.variables else DERIVABLE.get(name, name) for name in wanted]
    names = [name for name in stored if name in raw.variables]
    names += [name for name in raw.dims if name in raw.variables]
    result = deep_check(checked_store(data_config.path), list(dict.fromkeys(names)), log=console.print)
    location = describe_location(data_config.path)
    shown = 20
    for variable, index, problem in result.problems[:shown]:
        console.print(f"corrupt chunk: {variable} {index} ({problem})", markup=False)
    if len(result.problems) > shown:
        console.print(f"... and {len(result.problems) - shown} more corrupt chunks")
    if result.problems:
        variable, index, _ = result.problems[0]
        raise UserInputError(
            f"{location}: {len(result.problems)} corrupt chunk(s) (first: {variable} chunk {index}); "
            "restore the store from its source or write it again")
    absent = sum(result.absent.values())
    console.print(f"deep check: all {result.chunks_read} stored chunks of {len(result.absent)} arrays decode"
                  + (f"; {absent} chunks are not stored (zarr reads them as the fill value)"
                     if absent else ""))


@app.command("stats")
def stats(out: Annotated[Path, typer.Option("--out", help="Output NetCDF file.")],
          data: DataOption = None, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Compute mean, std, diffs_std (12 h changes) and minimum over the training split, with dask."""
    from gencast_rmmd.data.source import DataSource
    from gencast_rmmd.data.stats import compute_stats, save_stats

    check_output_path(out, directory=False)
    data_config = load_data_config(config, overrides, data).data
    source = DataSource.open(data_config)
    start, end = source.time_range("train")
    console.print(f"computing statistics of {source.report.location} over {start} .. {end}")
    result = compute_stats(source, "train", progress=True)
    save_stats(result, out)
    console.print(f"wrote {out} ({len(result.data_vars)} variables, {result.attrs['time_count']} model steps)")


@app.command("regrid")
def regrid(out: Annotated[Path, typer.Option("--out", help="Output zarr store (DIR.zarr).")],
           data: Annotated[str, typer.Option("--data", help="Source store path or URL (local, file://, gs://).")],
           resolution: Annotated[float, typer.Option(
               "--resolution", help="Target spacing in degrees, a grid with poles: 1.0 is GenCast 1p0's "
                                    "181 x 360.")] = 1.0,
           config: ConfigOption = None, overrides: SetOption = None,
           min_valid_fraction: Annotated[float, typer.Option(
               "--min-valid-fraction", min=0.0, max=1.0,
               help="A target cell whose valid source area (non-NaN, e.g. sea temperature over sea) is below "
                    "this fraction of its area is NaN.")] = 0.5) -> None:
    """Regrid a store conservatively to a regular grid with poles (e.g. ERA5 0.25 degree -> 1 degree).

    Area integrals are kept: each target cell is the area-weighted mean of the source cells it overlaps
    (gencast_rmmd/data/regrid.py). With --config only that data config's variables and levels are written;
    every time is. The store is written beside --out and renamed when complete.
    """
    from gencast_rmmd.data.regrid import write_regridded

    check_output_path(out, directory=True)
    variables = levels = None
    if config is not None:
        data_config = load_data_config(config, overrides, data).data
        variables = [*data_config.variables.time_varying, *data_config.variables.static]
        levels = list(data_config.levels)
    result = write_regridded(data, out, resolution, variables, levels, min_valid_fraction)
    console.print(f"wrote {out}: {len(result.data_vars)} variables on {result.sizes['latitude']} x "
                  f"{result.sizes['longitude']} ({resolution:g} degree with poles), "
                  f"{result.sizes.get('time', 0)} times")
