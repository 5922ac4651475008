"""Compare scores files: relative differences per target, headline counts, tables, timing.

A *target* is one (variable, level, lead time); surface variables have no
level. Scores files come from `gencast-rmmd evaluate`, read in the in-memory
layout of `evaluation.scores_file` (dims `(metric, region, lead_time[,
level])`). The comparison of a forecast A with a baseline B on a metric is the
relative difference 100·(A − B)/B in %, negative when A has the lower (better)
error. `evaluation.scorecard_figure` draws it and
`evaluation.report` writes HTML and markdown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from evaluation.regions import canonical_region
from evaluation.scores_file import RANK_HISTOGRAM_SUFFIX, open_scores
from gencast_rmmd.data.variables import VARIABLES
from gencast_rmmd.errors import UserInputError

# WB2 / ECMWF short names for row labels ("Z500", "2T", "MSL").
SHORT_NAMES: dict[str, str] = {
    "2m_temperature": "2T", "mean_sea_level_pressure": "MSL", "10m_u_component_of_wind": "10U",
    "10m_v_component_of_wind": "10V", "total_precipitation_12hr": "TP12", "total_precipitation_6hr": "TP6",
    "sea_surface_temperature": "SST", "temperature": "T", "geopotential": "Z", "u_component_of_wind": "U",
    "v_component_of_wind": "V", "vertical_velocity": "W", "specific_humidity": "Q",
}
# Table columns: metric and its column name.
TABLE_METRICS: dict[str, str] = {"crps": "CRPS", "spread_skill_ratio": "SSR", "ensemble_mean_rmse": "RMSE"}


@dataclass(frozen=True)
class ScoreSet:
    """One scores file and the name it goes by on the scorecard."""

    label: str
    path: Path
    dataset: xr.Dataset

    @property
    def variables(self) -> list[str]:
        """Scored variables (data variables with a `metric` dim), surface first, in the WB2 table's order."""
        names = [str(name) for name, array in self.dataset.data_vars.items()
                 if "metric" in array.dims and not str(name).endswith(RANK_HISTOGRAM_SUFFIX)]
        order = {name: position for position, name in enumerate(VARIABLES)}
        return sorted(names, key=lambda name: ("level" in self.dataset[name].dims, order.get(name, len(order))))


def load_scores(path: str | Path) -> ScoreSet:
    """Read a scores NetCDF written by `gencast-rmmd evaluate` into memory (`scores_file.open_scores`).

    The label is the file's `label` attribute (the forecast's name), else the
    file stem. Raises `UserInputError` for a missing file or one without scores.
    """
    path = Path(path)
    dataset = open_scores(path)
    score_set = ScoreSet(str(dataset.attrs.get("label") or path.stem), path, dataset)
    if not score_set.variables or "lead_time" not in dataset.dims:
        raise UserInputError(f"{path} holds no scores (no variable with metric and lead_time dims); "
                             "give a file written by `gencast-rmmd evaluate`")
    return score_set


def unique_labels(score_sets: list[ScoreSet]) -> list[ScoreSet]:
    """The same score sets with repeated labels made unique by a ` (2)`, ` (3)` … suffix."""
    seen: dict[str, int] = {}
    result = []
    for score_set in score_sets:
        count = seen[score_set.label] = seen.get(score_set.label, 0) + 1
        label = score_set.label if count == 1 else f"{score_set.label} ({count})"
        result.append(ScoreSet(label, score_set.path, score_set.dataset))
    return result


def metric_frame(score_set: ScoreSet, metric: str, region: str) -> pd.Series:
    """One metric of one file as a Series indexed by (variable, level, lead_time); level −1 = surface."""
    region = canonical_region(region)
    if region not in score_set.dataset["region"].values:
        raise UserInputError(f"{score_set.path} has no region {region!r}; it has "
                             f"{', '.join(map(str, score_set.dataset['region'].values))}")
    pieces = []
    for name in score_set.variables:
        array = score_set.dataset[name].sel(metric=metric, region=region)
        frame = array.to_dataframe(name="value").reset_index()
        frame["level"] = frame["level"].astype(int) if "level" in frame else -1
        frame["variable"] = name
        pieces.append(frame[["variable", "level", "lead_time", "value"]])
    return pd.concat(pieces).set_index(["variable", "level", "lead_time"])["value"]


def compare(candidate: ScoreSet, baseline: ScoreSet, metric: str, region: str) -> pd.DataFrame:
    """Targets both files score, with columns `candidate`, `baseline` and `relative_difference` (%).

    relative_difference = 100·(A − B)/B; rows keep the candidate's variable
    order, levels ascending, leads ascending.
    """
    a = metric_frame(candidate, metric, region)
    b = metric_frame(baseline, metric, region)
    joined = pd.concat({"candidate": a, "baseline": b}, axis=1, join="inner")
    if joined.empty:
        raise UserInputError(f"{candidate.path} and {baseline.path} share no (variable, level, lead time); "
                             "score both forecasts on the same variables and leads")
    joined["relative_difference"] = 100.0 * (joined["candidate"] - joined["baseline"]) / joined["baseline"]
    order = {name: position for position, name in enumerate(candidate.variables)}
    keys = joined.index.to_frame(index=False)
    keys["order"] = keys["variable"].map(order)
    return joined.iloc[keys.sort_values(["order", "level", "lead_time"]).index.to_numpy()]


@dataclass(frozen=True)
class Headline:
    """'A better than B on X of N targets', counted on CRPS (lower is better)."""

    candidate: str
    baseline: str
    better: int
    total: int

    def sentence(self) -> str:
        """The headline as one sentence."""
        return (f"{self.candidate} better than {self.baseline} on {self.better} of {self.total} targets "
                f"(variable, level, lead) by CRPS")


def headline(candidate: ScoreSet, baseline: ScoreSet, region: str) -> Headline:
    """Count targets where the candidate's CRPS is strictly lower than the baseline's (finite values only)."""
    crps = compare(candidate, baseline, "crps", region)
    finite = crps[np.isfinite(crps["candidate"]) & np.isfinite(crps["baseline"])]
    return Headline(candidate.label, baseline.label, int((finite["candidate"] < finite["baseline"]).sum()),
                    len(finite))


def row_label(variable: str, level: int) -> str:
    """Scorecard row name: short name plus level in hPa, e.g. `Z500`, or `2T` for a surface field."""
    short = SHORT_NAMES.get(variable, variable)
    return short if level < 0 else f"{short}{level}"


def lead_label(lead: pd.Timedelta) -> str:
    """Lead time in days, compactly: `0.5`, `1`, `10`."""
    days = pd.Timedelta(lead) / pd.Timedelta(days=1)
    return f"{days:g}"


def comparison_table(score_sets: list[ScoreSet], baseline: ScoreSet, variable: str, region: str) -> pd.DataFrame:
    """One variable's table: rows (level, lead), columns `<label> <metric>` for every forecast and the baseline.

    Metrics are `TABLE_METRICS` (CRPS, spread/skill ratio SSR, ensemble-mean
    RMSE), plus `<label> ΔCRPS %` = 100·(CRPS_A − CRPS_B)/CRPS_B per candidate.
    """
    columns = {}
    for score_set in [*score_sets, baseline]:
        if variable not in score_set.variables:
            continue
        for metric, column in TABLE_METRICS.items():
            series = metric_frame(score_set, metric, region)
            columns[f"{score_set.label} {column}"] = series.xs(variable, level="variable")
    table = pd.concat(columns, axis=1, join="inner")
    baseline_crps = f"{baseline.label} CRPS"
    for score_set in score_sets:
        if f"{score_set.label} CRPS" in table and baseline_crps in table:
            table[f"{score_set.label} ΔCRPS %"] = (
                100.0 * (table[f"{score_set.label} CRPS"] - table[baseline_crps]) / table[baseline_crps])
    return table.sort_index()


@dataclass(frozen=True)
class Timing:
    """Cost of one forecast: wall seconds and denoiser calls per 12 h step."""

    wall_seconds_per_step: float
    denoiser_calls_per_step: float


def load_timing(path: str | Path, labels: list[str], baseline_label: str) -> dict[str, Timing]:
    """Read `timing.json`: `{name: {"wall_seconds_per_step": s, "denoiser_calls_per_step": n}}`.

    Names are scorecard labels; `A` stands for the first `--scores` file and `B`
    for the baseline. Raises `UserInputError` for a missing file, bad JSON, a
    missing field or a name that is not on the scorecard.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no timing file at {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    aliases = {"A": labels[0], "B": baseline_label}
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: expected an object keyed by forecast name")
    timings = {}
    for key, entry in raw.items():
        name = aliases.get(key, key)
        if name not in [*labels, baseline_label]:
            raise UserInputError(f"{path}: {key!r} is not on the scorecard; use A, B or one of "
                                 f"{', '.join([*labels, baseline_label])}")
        try:
            timing = Timing(float(entry["wall_seconds_per_step"]), float(entry["denoiser_calls_per_step"]))
        except (KeyError, TypeError, ValueError):
            raise UserInputError(f"{path}: {key!r} needs numeric wall_seconds_per_step and "
                                 "denoiser_calls_per_step") from None
        if not (math.isfinite(timing.wall_seconds_per_step) and timing.wall_seconds_per_step > 0):
            raise UserInputError(f"{path}: {key!r}: wall_seconds_per_step must be > 0")
        timings[name] = timing
    return timings


def speedup_table(timings: dict[str, Timing], baseline_label: str) -> pd.DataFrame:
    """Wall time and denoiser calls per step for every timed forecast, and speedups relative to the baseline.

    speedup = baseline seconds per step / forecast seconds per step; NFE ratio =
    baseline calls / forecast calls. Without a baseline timing the ratios are NaN.
    """
    reference = timings.get(baseline_label)
    rows = []
    for label, timing in timings.items():
        rows.append({
            "forecast": label,
            "wall s per 12 h step": timing.wall_seconds_per_step,
            "denoiser calls per step": timing.denoiser_calls_per_step,
            "speedup (wall)": reference.wall_seconds_per_step / timing.wall_seconds_per_step
            if reference else float("nan"),
            "fewer denoiser calls (x)": reference.denoiser_calls_per_step / timing.denoiser_calls_per_step
            if reference and timing.denoiser_calls_per_step > 0 else float("nan"),
        })
    return pd.DataFrame(rows).set_index("forecast")
