"""Options and helpers shared by commands that take `--config`, `--set` and `--data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from gencast_rmmd.config import DEFAULT_DATA_CONFIG, DataFileConfig, load_config

# Progress and summaries go to stderr; stdout stays clean for machine-readable output.
console = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="YAML config file (default: configs/data/demo.yaml).")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a config value: dotted.key=value (repeatable), e.g. --set data.levels=[500,850].")]
DataOption = Annotated[Optional[str], typer.Option(
    "--data", help="Store path or URL (local, file://, gs://); overrides data.path.")]


def load_data_config(config: Path | None, overrides: list[str] | None, data: str | None) -> DataFileConfig:
    """Load a data config file (default: the demo one) with `--set` overrides and `--data`."""
    return load_config(config or DEFAULT_DATA_CONFIG, DataFileConfig, overrides or [], data)
