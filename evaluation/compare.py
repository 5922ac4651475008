"""Is a forecast's CRPS change against a baseline, or against another forecast's, beyond the sampling of inits?

Each forecast is scored per initialisation time: the fair CRPS (`metrics.fair_crps`) at every point, its
cell-area mean over a region where the truth is valid (`scoring.regional_mean`), one value per (init, lead)
for every "variable@level" target (`crps_per_init`). Its mean over inits is `gencast-rmmd evaluate`'s CRPS.
The headline is the mean over targets and leads of the change 100 (CRPS / CRPS_baseline − 1) (`change_pct`).

Its uncertainty comes from a moving-block bootstrap over the inits (`block_bootstrap_indices`): the same
draw of inits for every forecast and the baseline (paired, so the weather they share cancels), in blocks of
consecutive inits at least as long as the longest compared lead, because forecasts from inits closer than
that verify against the same weather and are not independent. `compare_forecasts` gives each forecast's
change with its 95 % interval and win rate, and for every pair (A, B) the difference A − B of their changes
with its interval and the fraction of draws in which A is ahead. The ensembles are held fixed: the intervals
are over the inits only. The command is `gencast-rmmd compare` (`evaluation.cli`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from evaluation import metrics
from evaluation.io import LEAD_DIM, align_truth, open_forecast
from evaluation.regions import REGION_ALIASES, REGIONS, canonical_region, region_weights
from evaluation.scoring import regional_mean
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.errors import UserInputError

MINIMUM_DRAWS = 100
INTERVAL_PERCENTILES = (2.5, 97.5)  # the 95 % interval


def target_name(variable: str, level: float | None = None) -> str:
    """A target's name: `variable@level` (hPa) for an atmospheric variable, the bare variable at the surface."""
    return str(variable) if level is None else f"{variable}@{int(level)}"


def split_levels(name: str, values: xr.DataArray) -> dict[str, np.ndarray]:
    """One entry per target of a variable: `name@level` for each level, or `name` without levels."""
    if "level" not in values.dims:
        return {target_name(name): values.values}
    return {target_name(name, level): values.sel(level=level).values for level in values["level"].values}


@dataclass(frozen=True, eq=False)
class PerInitCrps(Mapping):
    """Per-init CRPS of one forecast: `table[target]` is [init, lead]; inits in time order, leads in hours.

    It is also the mapping target -> [init, lead] itself, so `crps_per_init(...)[target]` works.
    """

    table: dict[str, np.ndarray]
    init_times: np.ndarray  # datetime64[ns], ascending
    lead_hours: list[int]

    def __getitem__(self, target: str) -> np.ndarray:
        return self.table[target]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


@dataclass(frozen=True)
class ForecastLayout:
    """What a forecast holds, read without loading data: sorted init times, lead hours, targets, members."""

    path: str
    init_times: np.ndarray
    lead_hours: list[int]
    targets: list[str]
    members: int = 1          # ensemble members (`number`); 1 for a deterministic forecast, e.g. persistence


def _check_exists(path: str) -> None:
    if "://" in path and not path.startswith("file://"):
        return  # remote stores are checked when opened
    local = Path(path.removeprefix("file://")).expanduser()
    if not local.exists():
        raise UserInputError(f"no forecast at {local}: give the baseline and every forecast as a NetCDF file "
                             "or zarr store in the WB2 forecast layout")


def forecast_layout(path: str) -> ForecastLayout:
    """Open `path` lazily and read its init times (sorted), lead hours and "variable@level" targets."""
    _check_exists(path)
    forecast = open_forecast(path)
    targets = [target_name(name, level) for name, variable in forecast.data_vars.items()
               for level in (forecast["level"].values if "level" in variable.dims else [None])]
    leads = forecast[LEAD_DIM].values / np.timedelta64(1, "h")
    return ForecastLayout(path, np.sort(forecast["time"].values), [int(round(lead)) for lead in leads], targets,
                          int(forecast.sizes.get("number", 1)))


def _check_leads(path: str, available: Sequence[int], wanted: Sequence[int]) -> None:
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise UserInputError(f"no lead {', '.join(map(str, missing))} h in {path}; its leads are "
                             f"{', '.join(map(str, available))} h")


def crps_per_init(path: str, truth: xr.Dataset, region: str = "global", *, lead_hours: Sequence[int] | None = None,
                  variables: Sequence[str] | None = None) -> PerInitCrps:
    """Fair CRPS per init and lead of every target: the region's cell-area mean where the truth is valid.

    CRPS_{t,l} = Σ_j w_j Σ_i v_ij crps_ij / Σ_j w_j Σ_i v_ij at init t and lead l (`scoring.regional_mean`,
    crps the unbiased fair CRPS of `metrics.fair_crps`, v the truth's validity). Its mean over t is
    `gencast-rmmd evaluate`'s CRPS. Only `lead_hours` (default: all) and `variables` (default: all the truth
    has) are scored; rows are in time order.
    """
    forecast = open_forecast(path).sortby("time")
    hours = [int(round(lead / np.timedelta64(1, "h"))) for lead in forecast[LEAD_DIM].values]
    if lead_hours is not None:
        _check_leads(path, hours, lead_hours)
        forecast = forecast.isel({LEAD_DIM: [hours.index(lead) for lead in lead_hours]})
        hours = list(lead_hours)
    if variables is not None:
        forecast = forecast[[name for name in forecast.data_vars if name in variables]]
    aligned, _ = align_truth(forecast, truth)
    region = canonical_region(region)
    weights = region_weights(aligned["latitude"], (region,))
    table: dict[str, np.ndarray] = {}
    for name in aligned.data_vars:
        observed = aligned[name].load()
        crps = metrics.fair_crps(forecast[name].load(), observed, "number")
        regional = regional_mean(crps, observed.notnull(), weights).sel(region=region)
        table.update(split_levels(str(name), regional.transpose("time", LEAD_DIM, ...)))
    return PerInitCrps(table, forecast["time"].values, hours)


def change_pct_by_lead(table: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray],
                       draws: np.ndarray) -> np.ndarray:
    """The mean CRPS change in % over targets k at each lead l, for each row d of init indices in `draws`:
    [draw, lead].

    change_{d,l} = mean_k 100 (mean_{t∈d} CRPS_{k,t,l} / mean_{t∈d} CRPS^baseline_{k,t,l} − 1), over the
    baseline's targets; `np.arange(n_inits)[None]` gives the point estimate.
    """
    changes = [table[name][draws].mean(axis=1) / baseline[name][draws].mean(axis=1) - 1.0 for name in baseline]
    return 100.0 * np.mean(np.stack(changes), axis=0)


def change_pct(table: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray], draws: np.ndarray) -> np.ndarray:
    """The mean CRPS change in % over targets and leads (`change_pct_by_lead` averaged over leads): [draw]."""
    return change_pct_by_lead(table, baseline, draws).mean(axis=1)


def win_rate(table: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray]) -> float:
    """The fraction of (target, lead) cells whose init-mean CRPS is below the baseline's (ties lose)."""
    wins = [table[name].mean(axis=0) < baseline[name].mean(axis=0) for name in baseline]
    return float(np.mean(np.concatenate(wins)))


def block_length(init_times: np.ndarray, block_hours: float) -> int:
    """Inits per bootstrap block: L = ⌈block_hours / Δ⌉ (at least 1), Δ the median spacing of the sorted inits.

    Each init stands for the Δ hours to the next, so L consecutive inits cover L Δ ≥ block_hours. Raises
    `UserInputError` for fewer than 2 inits, repeated inits, block_hours ≤ 0, or L ≥ the number of inits
    (a block holding every init leaves nothing to resample).
    """
    times = np.sort(np.asarray(init_times, dtype="datetime64[ns]"))
    if times.size < 2:
        raise UserInputError(f"{times.size} init(s): the bootstrap over inits needs at least 2; forecast more inits")
    if block_hours <= 0:
        raise UserInputError(f"--block-days must be > 0, got {block_hours / 24:g}")
    spacing = float(np.median(np.diff(times) / np.timedelta64(1, "h")))
    if spacing <= 0:
        raise UserInputError("the forecasts repeat an init time; give each init once")
    length = max(1, int(np.ceil(round(block_hours / spacing, 9))))
    if length >= times.size:
        raise UserInputError(f"a block of {block_hours / 24:g} days is {length} inits at their median spacing of "
                             f"{spacing:g} h, not fewer than the {times.size} inits: nothing to resample; give a "
                             "smaller --block-days or forecast more inits")
    return length


def block_bootstrap_indices(init_times: np.ndarray, block_hours: float, draws: int,
                            rng: np.random.Generator) -> np.ndarray:
    """Moving-block bootstrap over the inits (Künsch 1989, Ann. Statist. 17:1217): init indices [draws, n].

    With the inits sorted in time and L = `block_length(init_times, block_hours)`, each draw concatenates
    b = ⌈n / L⌉ blocks of L consecutive inits whose starts are uniform on the n − L + 1 possible ones, and
    keeps the first n indices (positions in `init_times`, whatever its order). Why blocks: forecasts from
    inits closer than the longest lead verify against shared weather, so their errors are correlated; the
    i.i.d. bootstrap treats them as independent and its intervals are too narrow. Blocks at least as long
    as the longest lead keep that dependence inside a block. L = 1 is the ordinary paired bootstrap (the
    same `rng.integers(0, n, (draws, n))` draw).
    """
    order = np.argsort(np.asarray(init_times, dtype="datetime64[ns]"), kind="stable")
    count = order.size
    length = block_length(init_times, block_hours)
    blocks = -(-count // length)
    starts = rng.integers(0, count - length + 1, size=(draws, blocks))
    positions = (starts[:, :, None] + np.arange(length)).reshape(draws, blocks * length)[:, :count]
    return order[positions]


def interval(values: np.ndarray) -> list[float]:
    """The 95 % percentile interval [2.5 %, 97.5 %] of bootstrap values."""
    return [float(value) for value in np.percentile(values, INTERVAL_PERCENTILES)]


def select_targets(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The `available` targets named by `wanted` ("variable@level", or a variable for all its levels; all if none).

    Raises `UserInputError` naming the unknown ones and listing the variables.
    """
    def chosen(name: str, target: str) -> bool:
        return name == target or name.split("@")[0] == target

    wanted = list(wanted or [])
    unknown = [target for target in wanted if not any(chosen(name, target) for name in available)]
    if unknown:
        variables = sorted({name.split("@")[0] for name in available})
        raise UserInputError(f"no target {', '.join(unknown)} in the baseline and the truth; use a variable or "
                             f"variable@level (variables: {', '.join(variables)})")
    return [name for name in available if not wanted or any(chosen(name, target) for target in wanted)]


def check_same_layout(baseline: ForecastLayout, other: ForecastLayout, leads: Sequence[int],
                      targets: Sequence[str]) -> None:
    """UserInputError (one line) unless `other` has the baseline's init times and every compared lead and target."""
    if not np.array_equal(baseline.init_times, other.init_times):
        extra = np.setdiff1d(other.init_times, baseline.init_times)
        lacking = np.setdiff1d(baseline.init_times, other.init_times)
        details = [f"{len(other.init_times)} inits against the baseline's {len(baseline.init_times)}"]
        if lacking.size:
            details.append(f"lacks {pd.Timestamp(lacking[0]).isoformat()}" + (" …" if lacking.size > 1 else ""))
        if extra.size:
            details.append(f"has {pd.Timestamp(extra[0]).isoformat()}" + (" …" if extra.size > 1 else ""))
        raise UserInputError(f"{other.path}: not the baseline's inits ({'; '.join(details)}); forecast the "
                             f"baseline's inits")
    missing_leads = sorted(set(leads) - set(other.lead_hours))
    if missing_leads:
        raise UserInputError(f"{other.path}: no lead {', '.join(map(str, missing_leads))} h of the baseline "
                             f"(its leads: {', '.join(map(str, other.lead_hours))} h)")
    missing_targets = [name for name in targets if name not in other.targets]
    if missing_targets:
        raise UserInputError(f"{other.path}: lacks the baseline's target(s) {', '.join(missing_targets)}; "
                             "narrow the comparison with --target or forecast those variables")


def compare_forecasts(baseline_path: str, paths: Sequence[str], truth: xr.Dataset | str,
                      leads: Sequence[int] | None = None, targets: Sequence[str] | None = None, draws: int = 5000,
                      block_hours: float | None = None, seed: int = 0, region: str = "global",
                      log: Callable[[str], None] | None = None) -> dict:
    """Each forecast's CRPS change against the baseline and every pair's difference, with block-bootstrap intervals.

    Every check (files, leads, targets, inits, draws, blocks) runs before the scoring. `leads` in hours
    (default: the baseline's), `targets` as `select_targets` (default: all the baseline and truth share),
    `block_hours` default: the longest compared lead. Returns the JSON-able figures: per forecast
    `crps_change_pct` with `interval_95` and `win_rate` (`targets_won` of `cells`); per pair (A, B) in the
    order given, `points` = change_A − change_B with `interval_95` and `a_ahead_fraction`, the fraction of
    draws with change_A < change_B. `log` receives a line before each forecast is scored.
    """
    if len(set(paths)) != len(paths):
        raise UserInputError("a forecast is given twice; give each once")
    if draws < MINIMUM_DRAWS:
        raise UserInputError(f"--draws must be at least {MINIMUM_DRAWS}, got {draws}")
    if region not in REGIONS and region not in REGION_ALIASES:
        raise UserInputError(f"unknown --region {region!r}; known: {', '.join(REGIONS)}")
    region = canonical_region(region)
    baseline = forecast_layout(baseline_path)
    others = [forecast_layout(path) for path in paths]
    leads = sorted(set(leads)) if leads else baseline.lead_hours
    _check_leads(baseline_path, baseline.lead_hours, leads)
    truth = open_dataset(truth) if isinstance(truth, str) else truth
    scorable = [name for name in baseline.targets if name.split("@")[0] in truth.data_vars]
    if not scorable:
        raise UserInputError(f"no variable of {baseline_path} is in the truth store; check the truth URL")
    chosen = select_targets(scorable, targets)
    for other in others:
        check_same_layout(baseline, other, leads, chosen)
    block_hours = float(max(leads)) if block_hours is None else float(block_hours)
    length = block_length(baseline.init_times, block_hours)
    variables = sorted({name.split("@")[0] for name in chosen})

    def scored(path: str) -> dict[str, np.ndarray]:
        if log is not None:
            log(f"scoring {path}")
        table = crps_per_init(path, truth, region, lead_hours=leads, variables=variables)
        return {name: table[name] for name in chosen}

    reference = scored(baseline_path)
    tables = {path: scored(path) for path in paths}
    indices = block_bootstrap_indices(baseline.init_times, block_hours, draws, np.random.default_rng(seed))
    everything = np.arange(baseline.init_times.size)[None]
    result = {"baseline": baseline_path, "region": region, "inits": int(baseline.init_times.size),
              "init_times": [pd.Timestamp(time).isoformat() for time in baseline.init_times],
              "leads_hours": leads, "targets": chosen, "draws": draws, "seed": seed,
              "block_hours": block_hours, "block_inits": length,
              "method": "paired moving-block bootstrap over init times (Künsch 1989)", "forecasts": {}, "pairs": []}
    resampled = {}
    for path, table in tables.items():
        resampled[path] = change_pct(table, reference, indices)
        wins = win_rate(table, reference)
        cells = len(chosen) * len(leads)
        result["forecasts"][path] = {"crps_change_pct": float(change_pct(table, reference, everything)[0]),
                                     "interval_95": interval(resampled[path]), "win_rate": wins,
                                     "targets_won": int(round(wins * cells)), "cells": cells}
    for first, second in itertools.combinations(paths, 2):
        difference = resampled[first] - resampled[second]
        points = result["forecasts"][first]["crps_change_pct"] - result["forecasts"][second]["crps_change_pct"]
        result["pairs"].append({"a": first, "b": second, "points": points, "interval_95": interval(difference),
                                "a_ahead_fraction": float(np.mean(difference < 0))})
    return result


def summary_lines(result: dict) -> list[str]:
    """The figures of `compare_forecasts` as readable lines: setup, one per forecast, one per pair."""
    leads, length = result["leads_hours"], result["block_inits"]
    lines = [f"baseline {result['baseline']}: {result['inits']} inits, leads {leads[0]}–{leads[-1]} h, "
             f"{len(result['targets'])} targets, region {result['region']}; {result['method']}, blocks of "
             f"{length} init{'s' if length > 1 else ''} (≥ {result['block_hours'] / 24:g} days), "
             f"{result['draws']} draws, seed {result['seed']}"]
    for path, figures in result["forecasts"].items():
        low, high = figures["interval_95"]
        lines.append(f"{path}: CRPS {figures['crps_change_pct']:+.2f} % vs the baseline, 95 % interval "
                     f"[{low:+.2f}, {high:+.2f}]; lower CRPS in {figures['targets_won']} of {figures['cells']} "
                     f"(target, lead) cells ({100 * figures['win_rate']:.1f} %)")
    for pair in result["pairs"]:
        low, high = pair["interval_95"]
        lines.append(f"{pair['a']} − {pair['b']}: {pair['points']:+.2f} points, 95 % interval [{low:+.2f}, "
                     f"{high:+.2f}]; {pair['a']} ahead in {100 * pair['a_ahead_fraction']:.1f} % of draws")
    return lines
