"""Rows of the table whose config is chosen on validation inits: a grid's candidates, a row's extra seeds.

A distiller entry (`distill.NAME`) or a teacher sampler row
(`teacher_samplers.LABEL`) may carry `grid: {dotted.key: [values, ...]}`,
keys of the row's config (`train.learning_rate`, `distill.reward_weight`;
`sampler.churn` for a teacher sampler row). Its candidates are the factorial
product of the values, in one documented order: keys sorted, each key's
values in the order written, the last key varying fastest
(`itertools.product`). Candidate K is labelled `NAME.cK`; an entry without
a grid has one candidate, labelled `NAME`. The dot keeps candidate labels
apart from the labels of the test table (`NAME`, `NAME_seedS`, which are
plain names): candidates are only forecast on validation, never scored on test.

A nested grid (`grid: {train: {learning_rate: [...]}}`, which is what
`--set distill.NAME.grid.train.learning_rate=[...]` writes) means the same as
the dotted form.

`select.NAME` writes the choice to `selection/NAME.json` and the chosen full
config to `selection/NAME.yaml`. A distiller entry with `base: OTHER` starts
from OTHER's config: when that is only known once a choice is made, the row's
`BaseConfig` says which selection file and which overrides its runs train.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import AfterValidator, BeforeValidator

from gencast_rmmd.config import config_to_dict
from gencast_rmmd.errors import UserInputError


def _flatten_grid(grid: Any, prefix: str = "") -> Any:
    """`{train: {learning_rate: [1, 2]}}` -> `{"train.learning_rate": [1, 2]}` (anything else unchanged)."""
    if not isinstance(grid, dict):
        return grid
    flat = {}
    for key, values in grid.items():
        if isinstance(values, dict):
            flat.update(_flatten_grid(values, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = values
    return flat


def _distinct_values(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    for key, values in grid.items():
        if not values:
            raise ValueError(f"{key}: give at least one value")
        texts = [json.dumps(value, sort_keys=True) for value in values]
        if len(set(texts)) != len(texts):
            raise ValueError(f"{key}: the values {values} repeat one another; give distinct values")
    return grid


Grid = Annotated[dict[str, list[Any]], BeforeValidator(_flatten_grid), AfterValidator(_distinct_values)]
"""A pipeline row's `grid:` (dotted key -> candidate values), as the config sections declare it."""


def selection_file(name: str) -> str:
    """What `select.NAME` writes: every candidate's values and validation figures, and the choice."""
    return f"selection/{name}.json"


def selection_config(name: str) -> str:
    """The chosen candidate's full config, which a grid row's extra seeds and `base: NAME` entries train."""
    return f"selection/{name}.yaml"


def value_overrides(values: dict[str, Any]) -> list[str]:
    """A candidate's grid values as `--set` overrides: `{"train.steps": 5}` -> `["train.steps=5"]`."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The candidates' values in candidate order: keys sorted, the last key varying fastest."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def lookup(content: dict, dotted: str) -> Any:
    """The value at `dotted` (`train.learning_rate`) of a nested mapping (KeyError when it is not there)."""
    node: Any = content
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


@dataclass(frozen=True)
class Candidate:
    """One config of a row: its label (`NAME` or `NAME.cK`), grid values and validated config.

    `config` is a DistillConfig for a student row and a `TeacherSamplerConfig`
    for a teacher sampler row; `sampler` holds the `--sampler key=value`
    overrides its forecasts use (teacher sampler rows only).
    """

    label: str
    index: int | None                   # None: the row has no grid
    values: dict[str, Any]
    config: Any
    sampler: tuple[str, ...] = ()


RowKind = Literal["student", "teacher_sampler"]


@dataclass(frozen=True)
class BaseConfig:
    """Where the config of a `base: OTHER` row starts at run time: a file of the work directory and overrides.

    `file` is `selection/X.yaml` when the config starts from a choice made on
    validation (`chosen_by`: the grid row X, OTHER itself or the nearest grid
    row up OTHER's `base` chain), else OTHER's resolved `configs/distill.OTHER.yaml`
    (`chosen_by` None: the row's config is known before any stage runs).
    `overrides` (`--set` syntax) are the entries' overrides from that file down
    to this row, in order; a candidate's grid values or an extra seed follow them.
    """

    base: str                           # the entry named by `base:`
    file: str
    overrides: tuple[str, ...]
    chosen_by: str | None


@dataclass(frozen=True)
class Row:
    """A row of the table: a distiller entry or a teacher sampler row, with its candidates.

    `seeds` are extra training seeds of the chosen config (rows `NAME_seedS`);
    `from_entry` is the distiller entry whose (chosen) run is this one's `--teacher`;
    `base_config` where a `base:` entry's config starts at run time; `weights`
    a weights package (phase-1, or phase-2 on its `from_entry`) the row installs instead of training. The
    candidates' configs of a row that follows a choice (`follows`) are its
    pre-selection views: the values the choice sets hold those of the config file.
    """

    name: str
    kind: RowKind
    grid: tuple[str, ...]               # the grid's keys, sorted; () without a grid
    candidates: tuple[Candidate, ...]
    seeds: tuple[int, ...] = ()
    from_entry: str | None = None
    base_config: BaseConfig | None = None
    weights: Path | None = None          # a weights package installed instead of training

    @property
    def selected(self) -> bool:
        """True when the row's config is chosen among candidates on validation (it has a grid)."""
        return bool(self.grid)

    @property
    def follows(self) -> str | None:
        """The grid row whose choice this row's config starts from (a `base:` entry's), else None."""
        return self.base_config.chosen_by if self.base_config else None

    def config_name(self, label: str) -> str:
        """The file in `DIR/configs/` of a candidate's (or a fixed-config seed row's) resolved config."""
        return f"{'distill' if self.kind == 'student' else 'teacher_sampler'}.{label}.yaml"

    def seed_label(self, seed: int) -> str:
        return f"{self.name}_seed{seed}"

    def seed_config(self, seed: int) -> Any:
        """The config of extra seed `seed` of a row without a grid (a grid row's seeds train its selection)."""
        if self.selected:
            raise ValueError(f"{self.name}: the seeds of a grid row train the chosen candidate's config")
        return self.candidates[0].config.model_copy(update={"seed": seed})

    @property
    def label_configs(self) -> dict[str, Any]:
        """Label -> resolved config of the labels with a file in `DIR/configs/`: candidates, fixed-config seed rows."""
        configs = {candidate.label: candidate.config for candidate in self.candidates}
        if not self.selected:
            configs.update({self.seed_label(seed): self.seed_config(seed) for seed in self.seeds})
        return configs

    @property
    def labels(self) -> list[str]:
        """The row's labels in the test table: the chosen config, then one per extra seed."""
        return [self.name, *(self.seed_label(seed) for seed in self.seeds)]


@dataclass(frozen=True)
class BestOf:
    """`best_of.NAME`: extra seeds (rows `NAME_seedS`) of the row among `among` that `select.NAME` ranks best."""

    name: str
    among: tuple[str, ...]
    seeds: tuple[int, ...]

    def seed_label(self, seed: int) -> str:
        return f"{self.name}_seed{seed}"

    @property
    def labels(self) -> list[str]:
        """Its rows of the test table, one per seed (they join the winner's row there)."""
        return [self.seed_label(seed) for seed in self.seeds]


def _unknown_key(content: dict, key: str) -> str:
    """`key is not a key of the config; keys of train: ...` (its parent section's keys, else the top level's)."""
    parent = key.rpartition(".")[0]
    try:
        section = lookup(content, parent) if parent else content
    except KeyError:
        section = None
    if not isinstance(section, dict):
        parent, section = "", content
    return (f"{key} is not a key of the config; {'keys of ' + parent if parent else 'top-level keys'}: "
            f"{', '.join(sorted(section))}")


def expand_row(name: str, kind: RowKind, owner: str, grid: dict[str, list[Any]],
               load: Callable[[list[str]], Any], sampler: Callable[[dict[str, Any]], tuple[str, ...]] | None = None,
               seeds: tuple[int, ...] = (), from_entry: str | None = None,
               base_config: BaseConfig | None = None) -> Row:
    """A row's candidates: `load(extra_overrides)` validates the row's config with one candidate's values.

    Every grid key must name a value of the config (`owner` prefixes the
    one-line error, e.g. `distill.rmmd.grid`); `sampler(values)` gives a
    teacher sampler candidate's `--sampler` overrides.
    """
    base = config_to_dict(load([]))
    for key in grid:
        try:
            found = lookup(base, key)
        except KeyError:
            raise UserInputError(f"{owner}.grid: {_unknown_key(base, key)}") from None
        if isinstance(found, dict):
            raise UserInputError(f"{owner}.grid: {key} is a section of the config; name one of its values "
                                 f"({', '.join(f'{key}.{sub}' for sub in sorted(found))})")
    points = grid_points(grid) if grid else [{}]
    candidates = []
    for index, values in enumerate(points):
        label = f"{name}.c{index}" if grid else name
        try:
            config = load(value_overrides(values))
        except UserInputError as error:
            raise UserInputError(f"{owner}.grid: candidate {label} {values}: {error}") from None
        candidates.append(Candidate(label, index if grid else None, values, config,
                                    sampler(values) if sampler else ()))
    return Row(name, kind, tuple(sorted(grid)), tuple(candidates), tuple(seeds), from_entry, base_config)
