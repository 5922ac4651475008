"""Why an ensemble drifts away from the climate: activity and scale-resolved spread against error, per lead.

Usage:
    python benchmarks/teacher_stability.py LABEL=FORECAST.nc [LABEL=FORECAST.nc ...] [--truth data/demo.zarr]
        [--target geopotential:500] [--target temperature:850] [--band-leads 12,24,48]
        [--out results/teacher/stability.md]

For each forecast and target (variable:level), per lead: fair CRPS, spread/skill ratio and activity, and at
`--band-leads` the spread and error power per band of zonal wavenumber in the mid-latitudes, all from
`evaluation.diagnostics` (its docstring defines each number). A diagnostic for the teacher quality gate: it
explains a CRPS that crosses climatology, which the gate only reports.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.diagnostics import MID_LATITUDES, diagnose, lead_hours
from evaluation.spectrum import ZONAL_BANDS, band_label
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.io_utils import atomic_path

LEAD_ROWS = ("crps", "spread_skill_ratio", "activity")


def forecast_section(label: str, path: str, truth, targets: list[tuple[str, int]], band_leads: list[int]) -> list[str]:
    """The markdown of one forecast: a per-lead table, then spread / error power by band at `band_leads`."""
    diagnostics = diagnose(path, truth, targets)
    first = next(iter(diagnostics.values()))
    leads = lead_hours(first)
    lines = [f"## {label}", "", f"`{path}`", "", "| target | row | " + " | ".join(f"{h} h" for h in leads) + " |",
             "|---|---|" + "---|" * len(leads)]
    for target, table in diagnostics.items():
        lines += [f"| {target} | {row} | " + " | ".join(f"{value:.4g}" for value in table[row].values) + " |"
                  for row in LEAD_ROWS]
    lines += ["", "| target | lead | " + " | ".join(f"{band_label(band)} spread / error" for band in ZONAL_BANDS)
              + " |", "|---|---|" + "---|" * len(ZONAL_BANDS)]
    for target, table in diagnostics.items():
        for index in [leads.index(hours) for hours in band_leads if hours in leads]:
            powers = table.isel(prediction_timedelta=index)
            lines.append(f"| {target} | {leads[index]} h | " + " | ".join(
                f"{spread:.3g} / {error:.3g}" for spread, error in zip(powers["spread"].values,
                                                                       powers["error"].values)) + " |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("forecasts", nargs="+", help="LABEL=PATH of a forecast NetCDF or zarr (split at the last =)")
    parser.add_argument("--truth", default="data/demo.zarr")
    parser.add_argument("--target", action="append", default=None, help="variable:level (repeatable)")
    parser.add_argument("--band-leads", default="12,24,48", help="leads (hours) of the band table")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    targets = [(name, int(level)) for name, level in
               (item.split(":") for item in (args.target or ["geopotential:500", "temperature:850"]))]
    truth = open_dataset(args.truth)
    lines = ["# Teacher stability diagnostics", "",
             "Activity: the members' anomaly variance about the truth's time-mean field / the truth's (1 = on the "
             f"climate's attractor). Spread and error power: zonal-wavenumber bands, {MID_LATITUDES[0]:g}-"
             f"{MID_LATITUDES[1]:g} degrees latitude in both hemispheres (`evaluation/diagnostics.py`). "
             f"Command: `python benchmarks/teacher_stability.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
             ""]
    for item in args.forecasts:
        label, path = item.rsplit("=", 1)
        lines += forecast_section(label, path, truth, targets, [int(h) for h in args.band_leads.split(",")])
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as temporary:
            temporary.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
