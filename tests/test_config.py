"""Configs: one schema for every data config, --set overrides, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gencast_rmmd.config import DataFileConfig, apply_overrides, load_config
from gencast_rmmd.errors import UserInputError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "data"


@pytest.mark.parametrize("name", ["demo.yaml", "test.yaml", "era5_wb2_64x32.yaml"])
def test_every_data_config_validates(name):
    config = load_config(CONFIGS / name, DataFileConfig)
    assert config.data.levels == tuple(sorted(config.data.levels))
    assert config.data.variables.surface


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
