"""Zonal power spectra by wavenumber band: does a forecast keep the truth's small scales?

Along each latitude row the field is Fourier transformed in longitude (`numpy.fft.rfft`) and its one-sided
power per zonal wavenumber k is P_k = c_k |F_k|² / N² (N longitudes, c_k = 2 for 0 < k < N/2, else 1), so
that Σ_k P_k is the zonal mean of the squared field (Parseval; units: the field's squared). The powers are
summed over bands of k and averaged over the latitude rows of a range with cell-area weights
(`zonal_power_by_band`).

For an ensemble forecast the power is taken per member, per init, then averaged (`band_powers`): the mean
power of the members, not the power of the ensemble mean, so that a sharp ensemble whose members differ
keeps its small-scale power while a blurred one (a student that averages its samples away) shows LESS
power than the truth in the high bands. The truth's power is computed the same way at the same valid
times; a ratio forecast / truth near 1 in every band is the goal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from evaluation.compare import target_name
from evaluation.io import LEAD_DIM, align_truth, open_forecast
from gencast_rmmd.data.grid import latitude_cell_weights, zonal_power
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.errors import UserInputError

# Inclusive ranges of zonal wavenumber, up to 32 (the Nyquist wavenumber of 64 longitudes).
ZONAL_BANDS: tuple[tuple[int, int], ...] = ((0, 3), (4, 7), (8, 11), (12, 15), (16, 21), (22, 32))
SPECTRUM_TARGETS: tuple[tuple[str, int], ...] = (("geopotential", 500), ("temperature", 850))
SPECTRUM_LEADS: tuple[int, ...] = (24, 120)   # hours


def band_label(band: tuple[int, int]) -> str:
    """A band's name, `wn A-B`."""
    return f"wn {band[0]}-{band[1]}"


def band_sums(power: np.ndarray, bands: Sequence[tuple[int, int]] = ZONAL_BANDS) -> np.ndarray:
    """`power` [..., wavenumber] summed over each inclusive band (A, B): [..., band]."""
    return np.stack([power[..., start:end + 1].sum(axis=-1) for start, end in bands], axis=-1)


def zonal_power_by_band(field: xr.DataArray, bands: Sequence[tuple[int, int]] = ZONAL_BANDS,
                        lat_range: tuple[float, float] = (-90.0, 90.0), both_hemispheres: bool = False
                        ) -> xr.DataArray:
    """Zonal power of `field` per wavenumber band, cell-area averaged over the latitudes in `lat_range`.

    `field` has dims (..., latitude, longitude) on a regular longitude grid; every other dim is kept and a
    `band` dim (labels `wn A-B`, coords `band_start`, `band_end`) replaces latitude and longitude. Per row j:
    Σ_{k∈band} P_jk (`zonal_power`), then Σ_j w_j (·) / Σ_j w_j over the rows with lat_range[0] ≤ φ_j ≤
    lat_range[1] (with `both_hemispheres`, ≤ |φ_j| ≤: the mid-latitudes of both), w the cell-area weights
    of the full grid (`latitude_cell_weights`). NaNs propagate.
    """
    latitude = field["latitude"].values
    distance = np.abs(latitude) if both_hemispheres else latitude
    inside = (distance >= lat_range[0]) & (distance <= lat_range[1])
    if not inside.any():
        raise UserInputError(f"no latitude of the field lies in {lat_range[0]}..{lat_range[1]} degrees"
                             f"{' (either hemisphere)' if both_hemispheres else ''}")
    weights = latitude_cell_weights(latitude)[inside]
    rows = field.isel(latitude=np.flatnonzero(inside)).transpose(..., "latitude", "longitude")
    powers = band_sums(zonal_power(rows.values), bands)                     # [..., latitude, band]
    averaged = np.tensordot(weights / weights.sum(), powers, axes=([0], [-2]))
    kept = rows.dims[:-2]
    return xr.DataArray(averaged, dims=(*kept, "band"),
                        coords={**{dim: rows[dim] for dim in kept if dim in rows.coords},
                                "band": [band_label(band) for band in bands],
                                "band_start": ("band", [band[0] for band in bands]),
                                "band_end": ("band", [band[1] for band in bands])},
                        attrs={"long_name": "zonal power per wavenumber band", "lat_range": list(lat_range)})


def band_powers(forecast_path: str, truth: xr.Dataset | str,
                targets: Sequence[tuple[str, int | None]] = SPECTRUM_TARGETS,
                lead_hours: Sequence[int] = SPECTRUM_LEADS, bands: Sequence[tuple[int, int]] = ZONAL_BANDS,
                lat_range: tuple[float, float] = (-90.0, 90.0)) -> xr.Dataset:
    """Band powers of a forecast and of the truth at its valid times: `forecast`, `truth` [target, lead, band].

    `targets` are (variable, level) pairs (level None at the surface), named `variable@level`; `lead_hours`
    must be leads of the forecast (UserInputError otherwise). The forecast's power is `zonal_power_by_band`
    of every member at every init, then the mean over members and inits; the truth's is the mean over inits
    at init + lead. See the module docstring for why the power is per member.
    """
    forecast = open_forecast(forecast_path)
    truth = open_dataset(truth) if isinstance(truth, str) else truth
    hours = [int(round(lead / np.timedelta64(1, "h"))) for lead in forecast[LEAD_DIM].values]
    missing = [lead for lead in lead_hours if lead not in hours]
    if missing:
        raise UserInputError(f"{forecast_path} has no lead {', '.join(map(str, missing))} h (its leads: "
                             f"{', '.join(map(str, hours))} h)")
    forecast = forecast.isel({LEAD_DIM: [hours.index(lead) for lead in lead_hours]})
    aligned, _ = align_truth(forecast[sorted({name for name, _ in targets})], truth)
    names, predicted, observed = [], [], []
    for variable, level in targets:
        if variable not in aligned.data_vars:
            raise UserInputError(f"{forecast_path}: no {variable} in the forecast and the truth")
        member_field, truth_field = forecast[variable], aligned[variable]
        if level is not None:
            member_field, truth_field = member_field.sel(level=level), truth_field.sel(level=level)
        names.append(target_name(variable, level))
        predicted.append(zonal_power_by_band(member_field.load(), bands, lat_range).mean(("time", "number")))
        observed.append(zonal_power_by_band(truth_field.load(), bands, lat_range).mean("time"))
    index = {"target": names, LEAD_DIM: list(lead_hours)}

    def stacked(arrays: list[xr.DataArray]) -> xr.DataArray:
        return xr.concat(arrays, dim="target").assign_coords(index)

    return xr.Dataset({"forecast": stacked(predicted), "truth": stacked(observed)}).rename({LEAD_DIM: "lead_hours"})
