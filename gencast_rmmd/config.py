"""Validated YAML configuration: schema, loading, `--set` overrides.

Every config file is a mapping of top-level sections (`data:`, later `model:`,
`train:`, ...). Files are validated by pydantic models that forbid unknown keys,
so a typo is a one-line error naming the dotted key. Overrides
(`--set data.levels=[500,850]`) are parsed as YAML values and applied to the
raw mapping before validation. Loaded configs are frozen: nothing mutates a
config after it is built.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gencast_rmmd.errors import UserInputError, validation_message
from gencast_rmmd.io_utils import read_yaml_mapping


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# The 13 pressure levels of WeatherBench2 / GenCast, in hPa (here, below the data layer, as the data schema's default).
WB2_LEVELS_13: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)

# --------------------------------------------------------------------------- data


def _is_timestamp(value: Any) -> bool:
    """Whether pandas reads `value` as a date-time (pandas is imported here so `--help` need not load it)."""
    import pandas as pd

    try:
        pd.Timestamp(value)
    except (ValueError, TypeError):
        return False
    return True


class SplitRange(StrictModel):
    """A split as a date range (`start`/`end`, inclusive ISO dates) or a fraction of the time axis.

    `fraction: [0.0, 0.8]` takes the first 80% of the store's (12-hourly) time
    axis, so a config written for one store works on any other.
    """

    start: str | None = None
    end: str | None = None
    fraction: tuple[float, float] | None = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _dates_as_text(cls, value: Any) -> Any:
        # Unquoted YAML dates arrive as date objects; keep the ISO text.
        return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value

    @model_validator(mode="after")
    def _one_form(self) -> "SplitRange":
        has_dates = self.start is not None or self.end is not None
        if has_dates == (self.fraction is not None):
            raise ValueError("give either start/end dates or a fraction [lo, hi], not both or neither")
        if self.fraction is not None:
            low, high = self.fraction
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(f"fraction must satisfy 0 <= lo < hi <= 1, got {list(self.fraction)}")
        for value in (self.start, self.end):
            if value is not None:
                if not _is_timestamp(value):
                    raise ValueError(f"{value!r} is not an ISO date")
        return self


class SplitsConfig(StrictModel):
    train: SplitRange
    validation: SplitRange
    test: SplitRange


class VariablesConfig(StrictModel):
    """Which WB2 variables the model sees.

    - `surface`: single-level fields that are both inputs and targets;
    - `atmospheric`: pressure-level fields, inputs and targets, on `levels`;
    - `target_only`: predicted but never an input (precipitation);
    - `static`: time-invariant inputs (orography, land-sea mask).
    """

    surface: tuple[str, ...] = ()
    atmospheric: tuple[str, ...] = ()
    target_only: tuple[str, ...] = ()
    static: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> "VariablesConfig":
        if not (self.surface or self.atmospheric):
            raise ValueError("at least one surface or atmospheric variable is needed")
        names = [*self.surface, *self.atmospheric, *self.target_only, *self.static]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"variables listed twice: {', '.join(duplicates)}")
        return self

    @property
    def time_varying(self) -> tuple[str, ...]:
        return (*self.surface, *self.atmospheric, *self.target_only)


class LoaderConfig(StrictModel):
    """How batches are assembled."""

    batch_size: int = Field(4, ge=1)
    seed: int = 0
    shuffle: bool = True
    prefetch: int = Field(2, ge=0)
    # Load the whole split into memory once (small stores); otherwise read per batch.
    cache_in_memory: bool = False


class StochasticForcingConfig(StrictModel):
    """Random vorticity and heating forcing that makes the stored 12 h transition uncertain.

    Two independent AR(1) processes in spectral space,
    F(n+1) = phi F(n) + sqrt(1 - phi^2) s xi(n) with phi = exp(-dt / correlation_hours),
    white noise xi restricted to total wavenumbers [min_wavenumber, max_wavenumber]:
    one added to the vorticity tendency (same pattern at every sigma layer),
    one to the temperature tendency (weighted by sigma: none at the model top,
    full at the surface). The amplitudes are the stationary root-mean-square
    over the sphere at full weight (0 switches a process off).
    """

    amplitude: float = Field(6.0e-11, ge=0.0)          # RMS vorticity tendency [s^-2]
    heating_amplitude: float = Field(1.5e-5, ge=0.0)   # RMS temperature tendency at the surface [K s^-1]
    correlation_hours: float = Field(6.0, gt=0.0)       # AR(1) decorrelation time [h]
    min_wavenumber: int = Field(6, ge=1)               # forced total wavenumbers [min, max]
    max_wavenumber: int = Field(18, ge=1)

    @model_validator(mode="after")
    def _band(self) -> "StochasticForcingConfig":
        if self.min_wavenumber > self.max_wavenumber:
            raise ValueError(f"min_wavenumber ({self.min_wavenumber}) must not exceed "
                             f"max_wavenumber ({self.max_wavenumber})")
        return self


class SimulationConfig(StrictModel):
    """The embedded Held-Suarez simulation (dinosaur) written in the ERA5/WB2 schema.

    Physics-relevant fields (seed, truncation, sigma_layers, time_step_minutes,
    spinup_days, output_hours, stochastic) key the spin-up cache; `days`,
    `start`, `levels` and `chunk_days` only shape what is written.
    """

    seed: int = 0
    truncation: int = Field(21, ge=10)             # spectral truncation simulated (T21 ~ the 64x32 grid)
    sigma_layers: int = Field(12, ge=4)            # equidistant sigma layers
    time_step_minutes: float = Field(60.0, gt=0.0)
    spinup_days: float = Field(100.0, ge=0.0)
    days: float = Field(365.0, gt=0.0)             # stored period after spin-up
    output_hours: int = Field(6, ge=1)
    start: str = "2000-01-01T00:00"                # calendar time of the first stored state
    levels: tuple[int, ...] = WB2_LEVELS_13        # pressure levels written [hPa]
    chunk_days: float = Field(30.0, gt=0.0)        # conversion to pressure levels in time chunks
    initial_perturbation_kelvin: float = Field(1.0, ge=0.0)  # RMS temperature noise at the start of spin-up
    stochastic: StochasticForcingConfig = StochasticForcingConfig()
    cache_dir: str = "~/.cache/gencast_rmmd/simulator"

    @field_validator("levels")
    @classmethod
    def _levels_valid(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if not levels:
            raise ValueError("at least one pressure level is needed")
        if len(set(levels)) != len(levels):
            raise ValueError("levels must be unique")
        if not all(0 < level <= 1100 for level in levels):
            raise ValueError(f"levels must be pressures in hPa within (0, 1100], got {list(levels)}")
        return tuple(sorted(levels))

    @field_validator("start")
    @classmethod
    def _start_is_date(cls, start: str) -> str:
        if not _is_timestamp(start):
            raise ValueError(f"{start!r} is not an ISO date-time")
        return start

    @model_validator(mode="after")
    def _consistent_steps(self) -> "SimulationConfig":
        output_minutes = self.output_hours * 60.0
        steps = output_minutes / self.time_step_minutes
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"time_step_minutes ({self.time_step_minutes:g}) must divide the output "
                             f"interval ({self.output_hours} h) into whole steps")
        for name in ("spinup_days", "days", "chunk_days"):
            outputs = getattr(self, name) * 24.0 / self.output_hours
            if abs(outputs - round(outputs)) > 1e-9:
                raise ValueError(f"{name} ({getattr(self, name):g}) must be a whole number of "
                                 f"{self.output_hours} h output intervals")
        if round(self.chunk_days * 24.0 / self.output_hours) < 1:
            raise ValueError("chunk_days must hold at least one output interval")
        if self.stochastic.max_wavenumber > self.truncation:
            raise ValueError(f"stochastic.max_wavenumber ({self.stochastic.max_wavenumber}) exceeds "
                             f"the truncation (T{self.truncation})")
        return self


class DataConfig(StrictModel):
    """Where the data are and what a training example is (one schema for ERA5 and the simulator)."""

    path: str
    variables: VariablesConfig
    levels: tuple[int, ...] = WB2_LEVELS_13
    step_hours: int = Field(12, ge=1)              # model time step; 6-hourly stores are subsampled
    input_frames: int = Field(2, ge=1)             # t - 12h, t
    target_steps: int = Field(1, ge=1)             # targets at t + 12h * k, k = 1..target_steps
    splits: SplitsConfig
    loader: LoaderConfig = LoaderConfig()
    simulation: SimulationConfig | None = None

    @field_validator("levels")
    @classmethod
    def _levels_sorted_unique(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(levels)) != len(levels):
            raise ValueError("levels must be unique")
        return tuple(sorted(levels))


class DataFileConfig(StrictModel):
    """A `configs/data/*.yaml` file."""

    data: DataConfig


# --------------------------------------------------------------------------- loading

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def _parse_override(override: str) -> tuple[list[str], Any]:
    if "=" not in override:
        raise UserInputError(f"--set {override!r}: expected dotted.key=value, e.g. --set data.levels=[500,850]")
    key, raw_value = override.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise UserInputError(f"--set {override!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    if isinstance(value, (dt.date, dt.datetime)):  # keep dates as the strings the user typed
        value = raw_value.strip()
    return keys, value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of `raw` with each `dotted.key=value` override applied."""
    result = copy.deepcopy(raw)
    for override in overrides:
        keys, value = _parse_override(override)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise UserInputError(
                    f"--set {override!r}: {'.'.join(keys[:depth + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


REPO_ROOT = Path(__file__).resolve().parent.parent


def _resolve_reference(reference: str, config_path: Path) -> Path:
    """A section given as a path: relative to the config file, the working directory or the repo."""
    candidate = Path(reference).expanduser()
    for base in ((config_path.parent, Path.cwd(), REPO_ROOT) if not candidate.is_absolute() else (Path("/"),)):
        if (base / candidate).is_file():
            return base / candidate
    raise UserInputError(f"{config_path}: referenced config {reference} does not exist")


def resolve_sections(raw: dict, config_path: Path, sections: tuple[str, ...] = ("data", "model")) -> dict:
    """Replace sections written as a file path (`data: configs/data/demo.yaml`) by that file's section.

    The referenced file may hold the section under its own name (`data: {...}`)
    or be the section itself. Overrides apply afterwards, to the merged result.
    """
    result = dict(raw)
    for section in sections:
        reference = result.get(section)
        if isinstance(reference, str):
            referenced = read_yaml_mapping(_resolve_reference(reference, config_path))
            result[section] = referenced.get(section, referenced)
    return result


def validate_config(raw: dict, schema: type[ConfigT], source: str) -> ConfigT:
    """Validate a raw mapping against `schema`, turning errors into one-line UserInputErrors."""
    try:
        return schema.model_validate(raw)
    except ValidationError as error:
        raise UserInputError(validation_message(source, error)) from None


def load_config(path: str | Path, schema: type[ConfigT], overrides: list[str] | tuple[str, ...] = (),
                data_path: str | None = None) -> ConfigT:
    """Load YAML `path`, apply `--set` overrides and `--data` (= `data.path`), validate against `schema`."""
    raw = resolve_sections(read_yaml_mapping(path), Path(path))
    overrides = list(overrides)
    if data_path is not None:
        overrides.append(f"data.path={data_path}")
    raw = apply_overrides(raw, overrides)
    # Keep store paths as strings even if YAML would read them as something else.
    if data_path is not None:
        raw["data"]["path"] = data_path
    return validate_config(raw, schema, str(path))


def config_to_dict(config: BaseModel) -> dict:
    """A JSON-serialisable dict of a config (for checkpoints and manifests)."""
    return config.model_dump(mode="json")


def without_keys(config: dict, dotted_keys: tuple[str, ...]) -> dict:
    """A deep copy of a config mapping with each `dotted_keys` entry (e.g. `train.progress`) removed where present."""
    config = copy.deepcopy(config)
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        section = config
        for key in parents:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(last, None)
    return config


DEFAULT_DATA_CONFIG = REPO_ROOT / "configs" / "data" / "demo.yaml"
SplitName = Literal["train", "validation", "test"]
