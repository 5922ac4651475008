"""Why an ensemble drifts from the climate: activity and scale-resolved spread against error, per lead.

A CRPS that crosses climatology's says *that* a forecast lost its skill; these diagnostics say *how*
(`diagnose`, per target and lead):

- fair CRPS (`metrics.fair_crps`) and the spread/skill ratio (`metrics.spread_skill_ratio`), global
  cell-area means over the points where the truth is valid (`scoring.regional_mean`), averaged over inits:
  the numbers `gencast-rmmd evaluate` reports for the global region;
- activity A = ⟨(X_m − c)²⟩ / ⟨(Y − c)²⟩: the members' anomaly variance about the climate c (the truth
  store's time-mean field), over the truth's at the same valid times (⟨·⟩ the same global mean, averaged
  over inits and members). A calibrated ensemble keeps A at 1 at every lead (each member is a plausible
  state); an ensemble whose members leave the attractor grows it lead after lead;
- spread and error power per band of zonal wavenumber (`spread_error_by_band`), in the mid-latitudes of
  both hemispheres: spread S_b = Σ_{k∈b} Σ_m P_k(X_m − X̄) / (M − 1), error E_b = Σ_{k∈b} P_k(X̄ − Y),
  P_k the one-sided zonal power of `data.grid.zonal_power` averaged over rows with cell-area weights and
  over inits. Summed over every band, S is the unbiased ensemble variance and E the ensemble-mean squared
  error over those rows (Parseval), so a band where S exceeds E is a scale where the model samples
  variability that the truth does not have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from evaluation import metrics
from evaluation.compare import target_name
from evaluation.io import LEAD_DIM, align_truth, open_forecast
from evaluation.regions import region_weights
from evaluation.scoring import regional_mean
from evaluation.spectrum import SPECTRUM_TARGETS, ZONAL_BANDS, zonal_power_by_band
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.errors import UserInputError

MID_LATITUDES = (20.0, 70.0)   # degrees, both hemispheres: where the bands are measured


def global_mean(field: xr.DataArray, valid: xr.DataArray) -> xr.DataArray:
    """Cell-area weighted global mean over (latitude, longitude) where `valid`, as `evaluate` averages."""
    weights = region_weights(field["latitude"], ["global"]).isel(region=0, drop=True)
    return regional_mean(field, valid, weights)


def activity(forecast: xr.DataArray, truth: xr.DataArray, climate: xr.DataArray,
             member_dim: str = "number") -> xr.DataArray:
    """⟨(X_m − c)²⟩ / ⟨(Y − c)²⟩ per lead: global means, averaged over inits (and members). Dimensionless."""
    valid = truth.notnull()
    members = global_mean(((forecast - climate) ** 2).mean(member_dim), valid).mean("time")
    return members / global_mean((truth - climate) ** 2, valid).mean("time")


def lead_scores(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "number") -> xr.Dataset:
    """Fair CRPS and spread/skill ratio per lead, global means over inits, as `evaluate` computes them."""
    valid = truth.notnull()

    def averaged(field: xr.DataArray) -> xr.DataArray:
        return global_mean(field, valid).mean("time")

    return xr.Dataset({
        "crps": averaged(metrics.fair_crps(forecast, truth, member_dim)),
        "spread_skill_ratio": metrics.spread_skill_ratio(
            averaged(metrics.ensemble_variance(forecast, member_dim)),
            averaged(metrics.ensemble_mean_squared_error(forecast, truth, member_dim)), forecast.sizes[member_dim]),
    })


def spread_error_by_band(forecast: xr.DataArray, truth: xr.DataArray,
                         bands: Sequence[tuple[int, int]] = ZONAL_BANDS,
                         lat_range: tuple[float, float] = MID_LATITUDES, member_dim: str = "number") -> xr.Dataset:
    """`spread` and `error` power [lead, band] (units of the field squared): see the module docstring.

    The forecast has dims (time, lead, member, latitude, longitude) in any order; `lat_range` applies to
    both hemispheres. Needs M ≥ 2 members (the spread is unbiased, over M − 1).
    """
    members = forecast.sizes[member_dim]
    if members < 2:
        raise UserInputError(f"spread by band needs at least 2 members (the forecast has {members})")
    mean = forecast.mean(member_dim)

    def power(field: xr.DataArray) -> xr.DataArray:
        return zonal_power_by_band(field, bands, lat_range, both_hemispheres=True)

    return xr.Dataset({"spread": (power(forecast - mean).sum(member_dim) / (members - 1)).mean("time"),
                       "error": power(mean - truth).mean("time")})


def diagnose(forecast_path: str, truth: xr.Dataset | str,
             targets: Sequence[tuple[str, int | None]] = SPECTRUM_TARGETS,
             bands: Sequence[tuple[int, int]] = ZONAL_BANDS) -> dict[str, xr.Dataset]:
    """Every diagnostic of a forecast file for each (variable, level) target, named `variable@level`.

    Per target a Dataset over `prediction_timedelta` with `crps`, `spread_skill_ratio`, `activity` and,
    over (lead, band), `spread` and `error`. The truth is a store (or its URL): its values at the
    forecast's valid times are the verification, its time mean the climate.
    """
    forecast = open_forecast(forecast_path)
    truth = open_dataset(truth) if isinstance(truth, str) else truth
    absent = sorted({variable for variable, _ in targets if variable not in forecast.data_vars
                     or variable not in truth.data_vars})
    if absent:
        raise UserInputError(f"{forecast_path}: no {', '.join(absent)} in the forecast and the truth")
    forecast = forecast[sorted({variable for variable, _ in targets})]
    aligned, _ = align_truth(forecast, truth)
    grid = {"latitude": forecast["latitude"].values, "longitude": forecast["longitude"].values}
    result = {}
    for variable, level in targets:
        fields = [forecast[variable], aligned[variable], truth[variable].mean("time").assign_coords(grid)]
        if level is not None:
            fields = [field.sel(level=level) for field in fields]
        members, observed, climate = (field.load() for field in fields)
        result[target_name(variable, level)] = xr.merge([
            lead_scores(members, observed), activity(members, observed, climate).rename("activity"),
            spread_error_by_band(members, observed, bands)]).transpose(LEAD_DIM, ...)
    return result


def lead_hours(diagnostics: xr.Dataset) -> list[int]:
    """The leads of a `diagnose` result, in whole hours."""
    return [int(round(lead / np.timedelta64(1, "h"))) for lead in diagnostics[LEAD_DIM].values]
