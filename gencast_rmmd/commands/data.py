"""`gencast-rmmd data ...`: simulate, check and stats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gencast_rmmd.commands.common import ConfigOption, DataOption, SetOption, console, load_data_config
from gencast_rmmd.commands.simulate import simulate as simulate_command

app = typer.Typer(help="Data: simulate the embedded dataset, check a store's schema, compute statistics.",
                  no_args_is_help=True)

app.command("simulate")(simulate_command)


@app.command("check")
def check(data: DataOption = None, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Check a store against a data config: variables, levels, dims, times, NaNs; print a schema summary.

    Exits 2 with one line naming the first problem. Time gaps are reported, not errors.
    """
    from gencast_rmmd.data.source import DataSource

    data_config = load_data_config(config, overrides, data).data
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


@app.command("stats")
def stats(out: Annotated[Path, typer.Option("--out", help="Output NetCDF file.")],
          data: DataOption = None, config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Compute mean, std, diffs_std (12 h changes) and minimum over the training split, with dask."""
    from gencast_rmmd.data.source import DataSource
    from gencast_rmmd.data.stats import compute_stats, save_stats

    data_config = load_data_config(config, overrides, data).data
    source = DataSource.open(data_config)
    start, end = source.time_range("train")
    console.print(f"computing statistics of {source.report.location} over {start} .. {end}")
    result = compute_stats(source, "train", progress=True)
    save_stats(result, out)
    console.print(f"wrote {out} ({len(result.data_vars)} variables, {result.attrs['time_count']} model steps)")
