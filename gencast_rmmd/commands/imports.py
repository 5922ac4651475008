"""`gencast-rmmd import gencast`: a published GenCast checkpoint as a teacher run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gencast_rmmd.commands.common import ConfigOption, DataOption, SetOption, console, load_data_config

app = typer.Typer(help="Import models trained elsewhere as teacher runs.", no_args_is_help=True)


@app.command("gencast")
def import_gencast(checkpoint: Annotated[str, typer.Argument(
                       help="graphcast GenCast checkpoint .npz (local path or gs://dm_graphcast/gencast/params/...).")],
                   stats: Annotated[str, typer.Option(
                       "--stats", help="Directory (local, or gs://dm_graphcast/gencast/stats/) with graphcast's "
                                       "diffs_stddev_by_level.nc, mean_by_level.nc, stddev_by_level.nc and "
                                       "min_by_level.nc.")],
                   out: Annotated[Path, typer.Option("--out", help="Run directory to write (empty).")],
                   config: ConfigOption = None, data: DataOption = None, overrides: SetOption = None,
                   allow_other_grid: Annotated[bool, typer.Option(
                       "--allow-other-grid", help="Import for a store whose grid spacing is not the resolution "
                                                  "the checkpoint says it was trained at.")] = False) -> None:
    """Convert a GenCast checkpoint and its statistics into a teacher run for the data config's store."""
    from gencast_rmmd.teacher.gencast_run import write_imported_teacher

    data_config = load_data_config(config, overrides, data).data
    write_imported_teacher(checkpoint, stats, data_config, out, log=console.print, allow_other_grid=allow_other_grid)


def register(root: typer.Typer) -> None:
    """Add the `import` group to the top-level app."""
    root.add_typer(app, name="import")
