"""`gencast-rmmd data simulate`: write the embedded Held-Suarez dataset (and a reference ensemble).

Heavy imports (JAX, dinosaur, xarray) happen inside the command body so
`gencast-rmmd --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gencast_rmmd.commands.common import ConfigOption, SetOption, console, load_data_config
from gencast_rmmd.errors import UserInputError


def _log(message: str) -> None:
    console.print(message, markup=False)


def simulate(
    out: Annotated[Path, typer.Option("--out", help="Zarr store to write (e.g. data/demo.zarr). A store already "
                                                     "made with the same config is reused.")],
    config: ConfigOption = None,
    overrides: SetOption = None,
    cache_dir: Annotated[Optional[Path], typer.Option(
        "--cache-dir", help="Spin-up / restart cache (default: $GENCAST_RMMD_SIMULATOR_CACHE, else "
                            "data.simulation.cache_dir).")] = None,
    reference_out: Annotated[Optional[Path], typer.Option(
        "--reference-out", help="Also write a perfect-model reference ensemble here (forecast NetCDF, or zarr "
                                "for a name ending in .zarr).")] = None,
    init: Annotated[Optional[list[str]], typer.Option(
        "--init", help="Initialisation time of the reference ensemble (ISO, repeatable).")] = None,
    members: Annotated[int, typer.Option("--members", help="Reference ensemble members.")] = 8,
    steps: Annotated[int, typer.Option("--steps", help="Reference forecast leads (each data.step_hours).")] = 4,
) -> None:
    """Simulate the embedded dataset: Held-Suarez dry dynamics (dinosaur) in the ERA5/WB2 64x32 schema.

    Spins up (cached), integrates `data.simulation.days`, writes pressure-level
    and surface variables 6-hourly, and optionally runs simulator members from
    chosen init times as a perfect-model reference ensemble.
    """
    from gencast_rmmd.data.forecast_io import write_forecast
    from gencast_rmmd.data.simulator.cache import TrajectoryCache, resolve_cache_root
    from gencast_rmmd.data.simulator.reference import (
        BRANCH_TOLERANCE, branch_mismatch, parse_init_times, reference_ensemble, spread_to_change_ratio)
    from gencast_rmmd.data.simulator.run import simulate_store
    from gencast_rmmd.data.simulator.summary import climate_summary
    from gencast_rmmd.data.stores import open_dataset

    from gencast_rmmd.io_utils import check_output_path

    data_config = load_data_config(config, overrides, None).data
    simulation = data_config.simulation
    if simulation is None:
        raise UserInputError(f"{config or 'the config'} has no data.simulation section; use a config such as "
                             "configs/data/demo.yaml")
    # Everything that can be refused is refused before the long run.
    if members < 1 or steps < 1:
        raise UserInputError(f"--members and --steps must be at least 1 (got {members} and {steps})")
    if (reference_out is None) != (not init):
        raise UserInputError("--reference-out and --init go together: give both to write a reference ensemble")
    check_output_path(out, directory=True)
    if cache_dir is not None:
        check_output_path(cache_dir, directory=True, option="--cache-dir")
    if reference_out is not None:
        check_output_path(reference_out, option="--reference-out")
        parse_init_times(simulation, init)
    cache = TrajectoryCache.for_config(simulation, resolve_cache_root(simulation, cache_dir))
    result = simulate_store(simulation, out, cache, log=_log)
    truth = open_dataset(str(out))
    if not result.reused_store:
        for line in climate_summary(truth):
            _log(line)
    if reference_out is None:
        return
    reference = reference_ensemble(simulation, cache, init, members, steps, lead_hours=data_config.step_hours,
                                   log=_log)
    mismatch = branch_mismatch(reference, truth)
    if mismatch > BRANCH_TOLERANCE:
        raise RuntimeError(f"reference members do not branch from the stored state (relative difference "
                           f"{mismatch:.2e} > {BRANCH_TOLERANCE:.0e}); clear the cache {cache.directory}")
    _log(f"reference: members at +0 h match the stored state (max relative difference {mismatch:.1e})")
    lead = reference.dataset["prediction_timedelta"].values[0]
    within = reference.dataset["time"].values + lead <= truth["time"].values[-1]
    if members >= 2 and within.all():
        for variable, level, label in (("geopotential", 500, "z500"), ("temperature", 850, "t850")):
            if level in simulation.levels:
                ratio = spread_to_change_ratio(reference.dataset, truth, variable, level, lead)
                _log(f"reference: {label} member difference at +{lead.astype('timedelta64[h]').astype(int)} h / "
                     f"truth change over it = {ratio:.3f}")
    write_forecast(reference.dataset, reference_out)
    _log(f"wrote {reference_out} ({len(reference.dataset['time'])} inits x {members} members x {steps} leads)")
