"""Is one forecast's CRPS gain over a baseline larger than another's, beyond the sampling of inits?

    python benchmarks/paired_bootstrap.py --truth data/demo.zarr --baseline runs/rmmd_v5/teacher.nc \
        runs/rmmd_v5/rmmd_on_policy.nc runs/rmmd_v5/rmmd_offline.nc [--draws 5000] [--seed 0] [--json]
    python benchmarks/paired_bootstrap.py --baseline runs/quality_gate/climatology.nc runs/quality_gate/teacher.nc \
        --lead 120 [--target temperature@850]      # one cell of the quality gate, with its interval

Each forecast is scored per initialisation time: the fair CRPS (`evaluation.metrics.fair_crps`) at every point,
its global cell-area mean where the truth is valid (`evaluation.scoring.regional_mean`), one value per
(init, lead) for every (variable, level) target. The headline of `rmmd_demo.py` is then rebuilt from those:
mean over inits per target and lead, change = 100 (CRPS / CRPS_baseline - 1), mean over targets and leads.

The paired bootstrap resamples the inits with replacement, the same draw for every forecast (so that the
weather the inits share cancels), and recomputes each forecast's change and their difference. It prints
each forecast's change with its 95 % interval, and, for the first forecast against each other one, the
difference in points, its interval and the fraction of draws in which the first is ahead.

`--lead H` (repeatable) keeps only those leads and `--target NAME` (repeatable: `variable@level`, or a variable
for all its levels) only those targets, so that one gate cell (say t850 at 120 h against climatology) gets its
own interval. The baseline's own ensemble draw is held fixed: the interval is over the inits only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from evaluation import metrics  # noqa: E402
from evaluation.io import align_truth, open_forecast  # noqa: E402
from evaluation.regions import region_weights  # noqa: E402
from evaluation.scoring import regional_mean  # noqa: E402
from gencast_rmmd.data.stores import open_dataset  # noqa: E402
from teacher_quality_gate import split_levels  # noqa: E402


def crps_per_init(path: str, truth: xr.Dataset) -> dict[str, np.ndarray]:
    """Global fair CRPS per init and lead for every (variable, level) target: name -> [init, lead]."""
    forecast = open_forecast(path)
    aligned, _ = align_truth(forecast, truth)
    weights = region_weights(aligned["latitude"], ("global",))
    table = {}
    for name in aligned.data_vars:
        observed = aligned[name].load()
        crps = metrics.fair_crps(forecast[name].load(), observed, "number")
        regional = regional_mean(crps, observed.notnull(), weights).sel(region="global")
        table.update(split_levels(name, regional.transpose("time", ...)))
    return table


def lead_hours(path: str) -> list[int]:
    """The forecast's lead times in whole hours, in file order."""
    leads = open_forecast(path)["prediction_timedelta"].values
    return [int(lead / np.timedelta64(1, "h")) for lead in leads]


def select(table: dict[str, np.ndarray], columns: list[int], targets: list[str]) -> dict[str, np.ndarray]:
    """The lead `columns` of a per-init table's `targets` (all when empty; a bare variable means all its levels)."""
    def chosen(name: str, target: str) -> bool:
        return name == target or name.split("@")[0] == target

    unknown = [target for target in targets if not any(chosen(name, target) for name in table)]
    if unknown:
        variables = sorted({name.split("@")[0] for name in table})
        raise ValueError(f"no target {', '.join(unknown)} in the forecasts; use a variable or variable@level "
                         f"(variables: {', '.join(variables)})")
    return {name: values[:, columns] for name, values in table.items()
            if not targets or any(chosen(name, target) for target in targets)}


def change_pct(table: dict[str, np.ndarray], baseline: dict[str, np.ndarray], draws: np.ndarray) -> np.ndarray:
    """The mean CRPS % change over targets and leads, for each row of init indices in `draws`: [draw]."""
    changes = [table[name][draws].mean(axis=1) / baseline[name][draws].mean(axis=1) - 1.0 for name in baseline]
    return 100.0 * np.mean(np.stack(changes), axis=(0, 2))


def interval(values: np.ndarray) -> list[float]:
    return [float(value) for value in np.percentile(values, [2.5, 97.5])]


def main() -> int:
    try:
        return run()
    except ValueError as error:  # bad input: one line, exit 2
        print(f"paired_bootstrap: {error}", file=sys.stderr)
        return 2


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("forecasts", nargs="+", help="NetCDF forecasts of the baseline's inits; the first is compared "
                                                     "with each of the others")
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--truth", default=str(REPO / "data" / "demo.zarr"))
    parser.add_argument("--draws", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lead", type=int, action="append", default=[], help="lead in hours (repeatable; "
                                                                             "default: every lead)")
    parser.add_argument("--target", action="append", default=[], help="variable@level, or a variable for all "
                                                                      "its levels (repeatable; default: every target)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args()

    # the leads are checked before the (minutes-long) scoring, which a wrong --lead would waste
    hours = lead_hours(args.baseline)
    missing = sorted(set(args.lead) - set(hours))
    if missing:
        raise ValueError(f"no lead {', '.join(map(str, missing))} h in {args.baseline}; its leads are "
                         f"{', '.join(map(str, hours))} h")
    truth = open_dataset(args.truth)
    baseline = crps_per_init(args.baseline, truth)
    tables = {path: crps_per_init(path, truth) for path in args.forecasts}
    inits = next(iter(baseline.values())).shape[0]
    for path, table in tables.items():
        if set(table) != set(baseline) or any(table[name].shape != baseline[name].shape for name in baseline):
            raise ValueError(f"{path}: not the baseline's targets, inits and leads; forecast the same inits")
    columns = [hours.index(lead) for lead in args.lead] if args.lead else list(range(len(hours)))
    baseline = select(baseline, columns, args.target)
    tables = {path: select(table, columns, args.target) for path, table in tables.items()}
    draws = np.random.default_rng(args.seed).integers(0, inits, size=(args.draws, inits))
    everything = np.arange(inits)[None]
    result = {"inits": inits, "draws": args.draws, "seed": args.seed, "leads_hours": [hours[c] for c in columns],
              "targets": sorted(baseline), "forecasts": {}, "differences": {}}
    resampled = {}
    for path, table in tables.items():
        resampled[path] = change_pct(table, baseline, draws)
        point = float(change_pct(table, baseline, everything)[0])
        result["forecasts"][path] = {"crps_change_pct": point, "interval_95": interval(resampled[path])}
        low, high = result["forecasts"][path]["interval_95"]
        print(f"{path}: {point:+.2f} % vs the baseline, 95 % interval [{low:+.2f}, {high:+.2f}]")
    first, *others = args.forecasts
    for other in others:
        difference = resampled[first] - resampled[other]
        point = result["forecasts"][first]["crps_change_pct"] - result["forecasts"][other]["crps_change_pct"]
        ahead = float(np.mean(difference < 0))
        result["differences"][other] = {"points": point, "interval_95": interval(difference),
                                        "first_ahead_fraction": ahead}
        low, high = result["differences"][other]["interval_95"]
        print(f"{first} - {other}: {point:+.2f} points, 95 % interval [{low:+.2f}, {high:+.2f}], "
              f"first ahead in {100 * ahead:.1f} % of draws")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
