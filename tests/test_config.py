"""Configs: one schema for every data config, --set overrides, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from gencast_rmmd.config import WB2_LEVELS_13, DataFileConfig, apply_overrides, load_config
from gencast_rmmd.data.variables import VARIABLES
from gencast_rmmd.errors import UserInputError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "data"


def _split_bounds(split) -> tuple:
    """(start, end) of a split, as fractions of the time axis or as timestamps."""
    if split.fraction is not None:
        return split.fraction
    return pd.Timestamp(split.start), pd.Timestamp(split.end)


@pytest.mark.parametrize("name", sorted(path.name for path in CONFIGS.glob("*.yaml")))
def test_every_data_config_validates_and_keeps_its_splits_apart(name):
    """What the schema checks one section at a time does not cover: train, validation and test come in that order
    without overlap (nothing scored was trained on), in one form (fractions or dates), and every variable and
    level is one the writers have CF metadata for."""
    data = load_config(CONFIGS / name, DataFileConfig).data
    splits = data.splits
    bounds = [_split_bounds(split) for split in (splits.train, splits.validation, splits.test)]
    assert len({type(start) for start, _ in bounds}) == 1, bounds
    for (_, end), (start, _) in zip(bounds, bounds[1:]):
        assert end <= start if splits.train.fraction is not None else end < start, bounds
    variables = data.variables
    assert set((*variables.time_varying, *variables.static)) <= set(VARIABLES)
    assert set(data.levels) <= set(WB2_LEVELS_13)


def test_era5_config_uses_gencast_variables_and_date_splits():
    data = load_config(CONFIGS / "era5_wb2_64x32.yaml", DataFileConfig).data
    assert data.path.startswith("gs://weatherbench2/") and "64x32" in data.path
    assert len(data.levels) == 13 and data.splits.train.start == "1979-01-01"
    assert "total_precipitation_12hr" in data.variables.target_only


def test_overrides_and_data_path():
    config = load_config(CONFIGS / "demo.yaml", DataFileConfig,
                         ["data.levels=[850, 500]", "data.loader.batch_size=8", "data.splits.test.fraction=[0.5,1]"],
                         data_path="gs://bucket/store.zarr")
    assert config.data.levels == (500, 850)
    assert config.data.loader.batch_size == 8
    assert config.data.splits.test.fraction == (0.5, 1.0)
    assert config.data.path == "gs://bucket/store.zarr"


def test_overrides_do_not_mutate_input():
    raw = {"data": {"loader": {"batch_size": 1}}}
    updated = apply_overrides(raw, ["data.loader.batch_size=2"])
    assert raw["data"]["loader"]["batch_size"] == 1 and updated["data"]["loader"]["batch_size"] == 2


def test_unquoted_yaml_dates_are_accepted():
    config = load_config(CONFIGS / "demo.yaml", DataFileConfig, ["data.splits.train={start: 2000-01-01, end: 2000-06-30}"])
    assert config.data.splits.train.start == "2000-01-01"


def test_configs_are_frozen():
    config = load_config(CONFIGS / "demo.yaml", DataFileConfig)
    with pytest.raises(ValidationError):
        config.data.step_hours = 6


@pytest.mark.parametrize("override,message", [
    ("data.variabels.surface=[x]", "data.variabels: unknown key"),
    ("data.levels=[500,500]", "data.levels: Value error, levels must be unique"),
    ("data.splits.train={start: 2000-01-01, fraction: [0, 1]}", "data.splits.train: Value error, give either"),
    ("data.splits.train={start: not-a-date}", "is not an ISO date"),
    ("data.variables.surface=[t2m, t2m]", "listed twice: t2m"),
    ("data.loader.prefetch=lots", "data.loader.prefetch: Input should be a valid integer"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(UserInputError) as raised:
        load_config(CONFIGS / "demo.yaml", DataFileConfig, [override])
    text = str(raised.value)
    assert message in text and "\n" not in text and text.startswith(str(CONFIGS / "demo.yaml"))
