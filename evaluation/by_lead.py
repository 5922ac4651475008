"""Each forecast's fair-CRPS change against a baseline lead by lead, with block-bootstrap intervals.

A forecaster reads a model against a baseline one lead at a time ("better than climatology up to 3 days").
`lead_changes` gives, for every forecast against one baseline, the change in % at each lead (the mean over
targets of 100 (CRPS / CRPS_baseline − 1), the CRPS averaged over the inits first:
`evaluation.compare.change_pct_by_lead`), its 95 % interval from the paired moving-block bootstrap over the
inits (`evaluation.compare.block_bootstrap_indices`, blocks at least as long as the longest lead), the number
of targets with a lower init-mean CRPS, and the same three over all leads. With too few inits for a block
bootstrap (e.g. 2 inits 12 h apart and a 24 h lead) there is no interval, and `Sample.no_interval` says why.

Per-init CRPS comes from `evaluation.compare.crps_per_init`, so a lead's change averages exactly the scores
`gencast-rmmd evaluate` writes. The pipeline's landing page (`pipelines.report`) shows these figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from evaluation.compare import (ForecastLayout, PerInitCrps, block_bootstrap_indices, block_length,
                                change_pct_by_lead, crps_per_init, interval)
from gencast_rmmd.errors import UserInputError

BETTER, LEVEL, WORSE = "better", "level", "worse"


@dataclass(frozen=True)
class Sample:
    """What the figures rest on: the inits, leads, targets, members per forecast and the bootstrap."""

    init_times: np.ndarray              # datetime64[ns], ascending
    lead_hours: list[int]
    targets: list[str]                  # "variable@level"
    members: dict[str, int]             # per forecast label
    draws: int
    block_inits: int | None             # None: no interval (see `no_interval`)
    no_interval: str | None


@dataclass(frozen=True)
class LeadChanges:
    """One forecast against one baseline: per lead and over all leads."""

    label: str
    baseline: str
    change_pct: list[float]                     # per lead
    interval_95: list[list[float]] | None       # per lead [low, high]; None without a bootstrap
    targets_won: list[int]                      # per lead, of `targets`
    targets: int
    overall_pct: float
    overall_interval_95: list[float] | None
    overall_won: int                            # (target, lead) cells, of targets × leads

    def verdicts(self) -> list[str]:
        """Per lead: `better` (interval below 0), `worse` (above 0) or `level` (it holds 0).

        Without an interval, the sign of the point change decides (no `level`).
        """
        if self.interval_95 is None:
            return [BETTER if change < 0 else WORSE for change in self.change_pct]
        return [BETTER if high < 0 else WORSE if low > 0 else LEVEL for low, high in self.interval_95]


def per_init_tables(paths: Mapping[str, str], truth: xr.Dataset, targets: Sequence[str], region: str = "global",
                    lead_hours: Sequence[int] | None = None) -> dict[str, PerInitCrps]:
    """Per-init fair CRPS [init, lead] of exactly `targets` for every forecast (label -> path), on the same inits.

    A forecast's other targets (e.g. the simulator's reference holds every level where the store has two)
    are left out, so every table has the same keys. Raises `UserInputError` when a forecast lacks a target
    or has other inits than the first.
    """
    variables = sorted({target.split("@")[0] for target in targets})
    tables = {}
    for label, path in paths.items():
        table = crps_per_init(path, truth, region, lead_hours=lead_hours, variables=variables)
        missing = [target for target in targets if target not in table]
        if missing:
            raise UserInputError(f"{path} has no {missing[0]}; forecast the same variables and levels as the "
                                 "other forecasts")
        tables[label] = PerInitCrps({target: table[target] for target in targets}, table.init_times,
                                    table.lead_hours)
    first = next(iter(tables.values()))
    for label, table in tables.items():
        if not np.array_equal(table.init_times, first.init_times) or table.lead_hours != first.lead_hours:
            raise UserInputError(f"the {label} forecast has other inits or leads than the others; forecast "
                                 "every model from the same inits to the same leads")
    return tables


def shared_targets(layouts: Mapping[str, ForecastLayout], truth: xr.Dataset) -> list[str]:
    """The targets every forecast has (`forecast_layout` of each) and the truth scores, in the first's order."""
    common = set.intersection(*(set(layout.targets) for layout in layouts.values()))
    return [target for target in next(iter(layouts.values())).targets
            if target in common and target.split("@")[0] in truth.data_vars]


def bootstrap(tables: Mapping[str, PerInitCrps], draws: int, seed: int,
              members: Mapping[str, int] | None = None) -> tuple[np.ndarray | None, Sample]:
    """The moving-block bootstrap's init indices [draws, n] (blocks ≥ the longest lead), or None, and the sample.

    None when the inits are too few for a block of that length (the reason is `Sample.no_interval`).
    """
    first = next(iter(tables.values()))
    block_hours = float(max(first.lead_hours))
    try:
        length = block_length(first.init_times, block_hours)
        indices = block_bootstrap_indices(first.init_times, block_hours, draws, np.random.default_rng(seed))
        reason = None
    except UserInputError as error:
        length, indices, reason = None, None, str(error).split(";")[0]
    return indices, Sample(first.init_times, list(first.lead_hours), list(first.table), dict(members or {}),
                           draws, length, reason)


def lead_changes(tables: Mapping[str, PerInitCrps], baseline: str, indices: np.ndarray | None,
                 labels: Sequence[str] | None = None) -> dict[str, LeadChanges]:
    """Every forecast in `labels` (default: all but the baseline) against `tables[baseline]`, lead by lead."""
    reference = tables[baseline]
    everything = np.arange(reference.init_times.size)[None]
    result = {}
    for label in labels if labels is not None else [name for name in tables if name != baseline]:
        table = tables[label]
        point = change_pct_by_lead(table, reference, everything)[0]
        wins = np.stack([table[name].mean(axis=0) < reference[name].mean(axis=0) for name in reference])
        resampled = None if indices is None else change_pct_by_lead(table, reference, indices)
        result[label] = LeadChanges(
            label, baseline, [float(value) for value in point],
            None if resampled is None else [interval(resampled[:, lead]) for lead in range(point.size)],
            [int(count) for count in wins.sum(axis=0)], len(reference), float(point.mean()),
            None if resampled is None else interval(resampled.mean(axis=1)), int(wins.sum()))
    return result
