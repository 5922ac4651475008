"""Quality gates: rules a forecast's scores must pass, read from `configs/eval/*.yaml`.

A rules file names the forecast it judges (`candidate`: a scores file's label, as `evaluate --label` set
it), the region, and a list of rules. Each rule is checked at every lead time of the candidate's scores
file (a lead missing from a file fails the rule: nothing is assumed):

- `beats`: the ratio of a metric (default fair CRPS; lower is better) of the candidate to a baseline's is
  below `below` (default 1) at every lead, for one target (`geopotential@500`, or a surface variable's
  bare name), or for `target: mean`, the mean of that ratio over every target both files score. The
  pairs come from `evaluation.scorecard.compare`, so a gate counts exactly what the scorecard shows.
- `within`: a metric of the candidate (e.g. `spread_skill_ratio`), for one target or its mean over all
  targets, lies in [low, high] at every lead.
- `at_most`: a measured duration (a `--timings` JSON object {name: seconds}) is at most `limit_s`; a
  duration that was not measured fails rather than be assumed.

A NaN fails its rule. A rule with `required: false` is reported (context, such as a perfect-model
reference) without deciding the gate. `check_gate` returns a `GateResult`; `gencast-rmmd gate`
(`evaluation.cli`) writes it as JSON and markdown and exits 3 when a required rule fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluation.compare import target_name
from evaluation.metrics import METRICS
from evaluation.scorecard import ScoreSet, compare, load_scores, metric_frame
from gencast_rmmd.errors import UserInputError, validation_message
from gencast_rmmd.io_utils import read_json_object, read_yaml_mapping

MEAN_TARGET = "mean"   # `target: mean`: the mean over every (variable, level) target


class _Rule(BaseModel):
    """What every rule has: a unique name, whether it decides the gate, and what it checks in words."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    required: bool = True
    description: str = ""


class _MetricRule(_Rule):
    """A rule on a metric of the scores files (`evaluation.metrics.METRICS`), for a target or their mean."""

    metric: str
    candidate: str | None = None      # default: the rules file's candidate
    target: str = MEAN_TARGET

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
        return metric


class BeatsRule(_MetricRule):
    """`candidate`'s `metric` / `baseline`'s `metric` < `below` at every lead, for `target` or the mean ratio."""

    kind: Literal["beats"]
    baseline: str
    metric: str = "crps"
    below: float = Field(default=1.0, gt=0)


class WithinRule(_MetricRule):
    """`low` <= `candidate`'s `metric` <= `high` at every lead, for `target` or the mean over targets."""

    kind: Literal["within"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> "WithinRule":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self


class AtMostRule(_Rule):
    """The measured duration `timing` (seconds) is at most `limit_s`."""

    kind: Literal["at_most"]
    timing: str
    limit_s: float = Field(gt=0)


Rule = Annotated[Union[BeatsRule, WithinRule, AtMostRule], Field(discriminator="kind")]


class GateRules(BaseModel):
    """A rules file: its title, the candidate's label, the region and the rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    candidate: str
    region: str = "global"
    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _checked(cls, rules: list[Rule]) -> list[Rule]:
        names = [rule.name for rule in rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(repeated)}")
        return rules


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict and the numbers behind it: `rows` name -> value per lead (None for NaN)."""

    name: str
    kind: str
    required: bool
    passed: bool
    description: str
    rows: dict[str, list[float | None]] = field(default_factory=dict)
    value: float | None = None        # at_most: the measured seconds (None: not measured)


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict: passed when every required rule passed."""

    title: str
    rules_file: str
    candidate: str
    region: str
    leads_hours: list[int]
    passed: bool
    rules: list[RuleResult]
    scores: dict[str, str]
    timings_s: dict[str, float]

    def as_json(self) -> dict:
        """The result as a JSON-ready mapping, with `gates` (name -> passed) for a quick read."""
        return {**asdict(self), "gates": {rule.name: rule.passed for rule in self.rules}}


def load_rules(path: str | Path) -> GateRules:
    """Read and validate a rules file; every problem is one `UserInputError` line naming the key."""
    raw = read_yaml_mapping(path)
    try:
        return GateRules.model_validate(raw)
    except ValidationError as error:
        raise UserInputError(validation_message(str(path), error)) from None


def scores_by_label(paths: Sequence[str | Path]) -> dict[str, ScoreSet]:
    """The scores files in `paths` (files, or directories whose `*.nc` are all read), by label."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.nc"))
            if not found:
                raise UserInputError(f"--scores {path}: the directory holds no .nc scores file")
            files += found
        else:
            files.append(path)
    sets: dict[str, ScoreSet] = {}
    for path in files:
        score_set = load_scores(path)
        if score_set.label in sets:
            raise UserInputError(f"--scores: {sets[score_set.label].path} and {path} are both labelled "
                                 f"{score_set.label!r}; give one scores file per forecast")
        sets[score_set.label] = score_set
    return sets


def read_timings(path: str | Path | None) -> dict[str, float]:
    """A `--timings` JSON object {name: seconds}; entries that are not numbers are left out."""
    if path is None:
        return {}
    content = read_json_object(path, f"--timings {path}", "give a JSON object {name: seconds}")
    return {str(name): float(value) for name, value in content.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _score_set(sets: Mapping[str, ScoreSet], label: str, rule: str) -> ScoreSet:
    if label not in sets:
        raise UserInputError(f"rule {rule}: no scores file labelled {label!r} among --scores (labels: "
                             f"{', '.join(sorted(sets))}); score that forecast with `evaluate --label {label}`")
    return sets[label]


def _per_lead(values: pd.Series, target: str, rule: str) -> pd.Series:
    """`values` indexed by (variable, level, lead_time) -> by lead_time: one target's, or the mean over targets.

    The mean keeps NaN (a target without a number cannot be averaged away).
    """
    if target == MEAN_TARGET:
        return values.groupby(level="lead_time").apply(lambda group: group.mean(skipna=False))
    names = [target_name(variable, None if level == -1 else level) for variable, level, _ in values.index]
    chosen = values[[name == target for name in names]]
    if chosen.empty:
        raise UserInputError(f"rule {rule}: no target {target!r} in the scores (targets: "
                             f"{', '.join(sorted(set(names)))}, or {MEAN_TARGET})")
    return chosen.droplevel(["variable", "level"])


def _row(values: pd.Series, leads: pd.Index) -> list[float | None]:
    return [None if not np.isfinite(value) else float(value) for value in values.reindex(leads).to_numpy()]


def _all(row: list[float | None], accept) -> bool:
    return all(value is not None and accept(value) for value in row)


def check_beats(rule: BeatsRule, sets: Mapping[str, ScoreSet], candidate: str, region: str,
                leads: pd.Index) -> RuleResult:
    """A `beats` rule: the metric ratio candidate / baseline per lead (`scorecard.compare`'s pairs)."""
    candidate = rule.candidate or candidate
    pairs = compare(_score_set(sets, candidate, rule.name), _score_set(sets, rule.baseline, rule.name),
                    rule.metric, region)
    ratio = _row(_per_lead(pairs["candidate"] / pairs["baseline"], rule.target, rule.name), leads)
    rows = {} if rule.target == MEAN_TARGET else {
        f"{rule.target} {rule.metric} {label}": _row(_per_lead(pairs[column], rule.target, rule.name), leads)
        for column, label in (("candidate", candidate), ("baseline", rule.baseline))}
    rows[f"{rule.target} {rule.metric} ratio {candidate} / {rule.baseline}"] = ratio
    passed = _all(ratio, lambda value: value < rule.below)
    description = rule.description or (f"{rule.metric} of {candidate} below {rule.below:g} x {rule.baseline}'s "
                                       f"at every lead ({rule.target})")
    return RuleResult(rule.name, rule.kind, rule.required, passed, description, rows)


def check_within(rule: WithinRule, sets: Mapping[str, ScoreSet], candidate: str, region: str,
                 leads: pd.Index) -> RuleResult:
    """A `within` rule: the candidate's metric per lead in [low, high]."""
    candidate = rule.candidate or candidate
    values = _per_lead(metric_frame(_score_set(sets, candidate, rule.name), rule.metric, region), rule.target,
                       rule.name)
    row = _row(values, leads)
    description = rule.description or (f"{rule.metric} of {candidate} within [{rule.low:g}, {rule.high:g}] at "
                                       f"every lead ({rule.target})")
    return RuleResult(rule.name, rule.kind, rule.required, _all(row, lambda value: rule.low <= value <= rule.high),
                      description, {f"{rule.target} {rule.metric} {candidate}": row})


def check_at_most(rule: AtMostRule, timings: Mapping[str, float]) -> RuleResult:
    """An `at_most` rule: a measured duration against its limit; unmeasured fails."""
    value = timings.get(rule.timing)
    passed = value is not None and math.isfinite(value) and value <= rule.limit_s
    measured = "not measured" if value is None else f"{value:.1f} s"
    description = (rule.description or f"{rule.timing} at most {rule.limit_s:g} s") + f" (measured: {measured})"
    return RuleResult(rule.name, rule.kind, rule.required, passed, description, value=value)


def check_gate(rules: GateRules, sets: Mapping[str, ScoreSet], timings: Mapping[str, float] | None = None,
               rules_file: str = "") -> GateResult:
    """Every rule of `rules` on the scores `sets` (by label) and measured `timings`; see the module docstring."""
    timings = dict(timings or {})
    candidate = _score_set(sets, rules.candidate, "candidate")
    leads = metric_frame(candidate, "crps", rules.region).index.get_level_values("lead_time").unique().sort_values()
    results = []
    for rule in rules.rules:
        if isinstance(rule, BeatsRule):
            results.append(check_beats(rule, sets, rules.candidate, rules.region, leads))
        elif isinstance(rule, WithinRule):
            results.append(check_within(rule, sets, rules.candidate, rules.region, leads))
        else:
            results.append(check_at_most(rule, timings))
    return GateResult(rules.title, rules_file, rules.candidate, rules.region,
                      [int(round(lead / pd.Timedelta(hours=1))) for lead in leads],
                      all(result.passed for result in results if result.required), results,
                      {label: str(score_set.path) for label, score_set in sets.items()}, timings)


def gate_markdown(result: GateResult) -> str:
    """The verdict as markdown: one line per rule, then every rule's numbers per lead in one table."""
    verdict = "PASSED" if result.passed else "FAILED"
    lines = [f"# {result.title}", "", f"**{verdict}** for `{result.candidate}` (region {result.region}; rules "
             f"`{result.rules_file}`).", "", "## Rules", ""]
    for rule in result.rules:
        mark = ("PASS" if rule.passed else "FAIL") if rule.required else ("ok" if rule.passed else "no") + \
            " (reported, not required)"
        lines.append(f"- {mark}: `{rule.name}`: {rule.description}")
    if result.timings_s:
        lines += ["", "Timings (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in
                                                  result.timings_s.items())]
    table = [(rule.name, label, values) for rule in result.rules for label, values in rule.rows.items()]
    if table:
        leads = result.leads_hours
        lines += ["", "## Per lead", "", "| rule | row | " + " | ".join(f"{hours} h" for hours in leads) + " |",
                  "|---|---|" + "---|" * len(leads)]
        lines += [f"| {name} | {label} | " + " | ".join("NaN" if value is None else f"{value:.4g}"
                                                         for value in values) + " |" for name, label, values in table]
    lines += ["", "Scores files: " + ", ".join(f"{label} `{path}`" for label, path in result.scores.items())]
    return "\n".join(lines) + "\n"
