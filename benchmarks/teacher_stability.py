"""Why an ensemble drifts away from the climate: activity and scale-resolved spread against error, per lead.

Usage:
    python benchmarks/teacher_stability.py LABEL=FORECAST.nc [LABEL=FORECAST.nc ...] [--truth data/demo.zarr]
        [--target geopotential:500] [--target temperature:850] [--out results/teacher_stability.md]

For each forecast and target (variable:level), per lead:
- fair CRPS and the spread/skill ratio, from the evaluation package (area weighted);
- activity: the members' anomaly variance about the truth store's time-mean
  field, divided by the truth's at the same valid times. A calibrated ensemble
  keeps it at 1 at every lead (each member is a plausible state); an ensemble
  whose members leave the attractor grows it lead after lead;
- at the first leads, ensemble spread (variance about the ensemble mean,
  unbiased) and ensemble-mean error power summed over bands of zonal wavenumber
  (20-70 degrees of latitude, both hemispheres): where the spread exceeds the
  error, the model samples variability that the truth does not have.

A diagnostic for the teacher quality gate (issue 5): it explains a CRPS that
crosses climatology, which the gate only reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation.io import align_truth, open_forecast  # noqa: E402
from evaluation.metrics import ensemble_variance, fair_crps  # noqa: E402
from evaluation.spectrum import ZONAL_BANDS as BANDS, band_sums  # noqa: E402
from gencast_rmmd.data.grid import latitude_cell_weights  # noqa: E402
from gencast_rmmd.data.stores import open_dataset  # noqa: E402

BAND_LEADS = (0, 1, 3)


def area_mean(field: xr.DataArray, weights: xr.DataArray) -> xr.DataArray:
    return field.weighted(weights).mean(("latitude", "longitude"))


def target_rows(forecast: xr.DataArray, truth: xr.DataArray, climate: xr.DataArray) -> dict[str, np.ndarray]:
    """Per-lead CRPS, SSR and activity of one (variable, level) forecast [time, lead, number, lat, lon]."""
    weights = xr.DataArray(latitude_cell_weights(forecast["latitude"].values), dims="latitude")
    members = forecast.sizes["number"]
    crps = area_mean(fair_crps(forecast, truth), weights).mean("time")
    variance = area_mean(ensemble_variance(forecast), weights).mean("time")
    error = area_mean((forecast.mean("number") - truth) ** 2, weights).mean("time")
    ssr = np.sqrt((members + 1) / members * variance / error)
    activity = (area_mean((forecast - climate) ** 2, weights).mean(("time", "number"))
                / area_mean((truth - climate) ** 2, weights).mean("time"))
    return {"crps": crps.values, "ssr": ssr.values, "activity": activity.values}


def band_rows(forecast: xr.DataArray, truth: xr.DataArray) -> list[tuple[int, list[tuple[float, float]]]]:
    """(lead index, [(spread power, error power) per band]) at `BAND_LEADS`, mid-latitudes."""
    rows = []
    band = (np.abs(forecast["latitude"]) >= 20) & (np.abs(forecast["latitude"]) <= 70)
    for lead in BAND_LEADS:
        if lead >= forecast.sizes["prediction_timedelta"]:
            continue
        members = forecast.isel(prediction_timedelta=lead).sel(latitude=band).transpose(
            "number", "time", "latitude", "longitude").values
        observed = truth.isel(prediction_timedelta=lead).sel(latitude=band).transpose(
            "time", "latitude", "longitude").values
        spectra = np.fft.rfft(members, axis=-1)
        mean = spectra.mean(axis=0)
        spread = (np.abs(spectra - mean) ** 2).sum(axis=0).mean(axis=(0, 1)) / (members.shape[0] - 1)
        error = (np.abs(mean - np.fft.rfft(observed, axis=-1)) ** 2).mean(axis=(0, 1))
        rows.append((lead, list(zip(band_sums(spread, BANDS).tolist(), band_sums(error, BANDS).tolist()))))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("forecasts", nargs="+", help="LABEL=PATH of a forecast NetCDF or zarr (split at the last =)")
    parser.add_argument("--truth", default=str(REPO / "data" / "demo.zarr"))
    parser.add_argument("--target", action="append", default=None, help="variable:level (repeatable)")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    targets = [(name, int(level)) for name, level in
               (item.split(":") for item in (args.target or ["geopotential:500", "temperature:850"]))]
    truth_store = open_dataset(args.truth)
    lines = ["# Teacher stability diagnostics", "",
             "Activity = members' anomaly variance about the truth's time-mean field / the truth's (1 = on the "
             "climate's attractor). Spread and error powers: zonal-wavenumber bands, 20-70 degrees latitude.", ""]
    for item in args.forecasts:
        label, path = item.rsplit("=", 1)
        forecast = open_forecast(path)
        truth, _ = align_truth(forecast, truth_store)
        leads = (forecast["prediction_timedelta"].values / np.timedelta64(1, "h")).astype(int)
        lines += [f"## {label}", "", f"`{path}`: {forecast.sizes['time']} inits, {forecast.sizes['number']} members",
                  "", "| target | row | " + " | ".join(f"{lead} h" for lead in leads) + " |",
                  "|---|---|" + "---|" * len(leads)]
        bands = []
        for name, level in targets:
            field, observed = forecast[name].sel(level=level), truth[name].sel(level=level)
            climate = truth_store[name].sel(level=level).mean("time").load()
            for row, values in target_rows(field.load(), observed.load(), climate).items():
                lines.append(f"| {name} {level} | {row} | " + " | ".join(f"{value:.4g}" for value in values) + " |")
            bands.append((f"{name} {level}", band_rows(field.load(), observed.load())))
        lines += ["", "| target | lead | " + " | ".join(f"wn {a}-{b} spread / error" for a, b in BANDS) + " |",
                  "|---|---|" + "---|" * len(BANDS)]
        for name, rows in bands:
            for lead, powers in rows:
                lines.append(f"| {name} | {leads[lead]} h | "
                             + " | ".join(f"{spread:.3g} / {error:.3g}" for spread, error in powers) + " |")
        lines.append("")
    report = "\n".join(lines)
    print(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(report + "\n")
        partial.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
