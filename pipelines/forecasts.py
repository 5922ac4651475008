"""Forecast stages of one split: its init choice and the ensemble forecasts of a model.

The test split (`forecast.inits`, `forecast.LABEL` -> `forecasts/LABEL.nc`,
group 5) and the validation split (`validation.inits`,
`validation.forecast.LABEL` -> `validation/forecasts/LABEL.nc`, group 4,
where choices are made) are built by the same two functions; a `Split`
says where each goes and with what shape. With `forecast.format: zarr` every
forecast is a zarr store `LABEL.zarr` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gencast_rmmd.config import config_to_dict
from pipelines.config import InitsSection
from pipelines.graph import Command, Output, Stage, StageContext, task

DATA_FILE = "configs/data.yaml"
# The file every forecast stage writes, by `forecast.format` (the commands choose the format by the name).
FORECAST_SUFFIXES: dict[str, str] = {"netcdf": ".nc", "zarr": ".zarr"}


@dataclass(frozen=True)
class Model:
    """What a forecast runs: a checkpoint or run directory and `--sampler key=value` overrides."""

    checkpoint: str
    sampler: tuple[str, ...] = ()

    def arguments(self) -> list[str]:
        return ["--checkpoint", self.checkpoint, *(a for override in self.sampler for a in ("--sampler", override))]


@dataclass(frozen=True)
class Split:
    """The forecasts of one data split: stage names, files, group and ensemble shape."""

    split: str                      # "test" or "validation"
    prefix: str                     # forecast stages: PREFIX.LABEL
    directory: str                  # forecast files: DIRECTORY/LABEL.nc (or .zarr)
    inits_stage: str                # the stage choosing the inits
    inits_file: str
    group: int
    store: str
    inits: InitsSection
    steps: int
    members: int
    seed: int
    format: str = "netcdf"          # `forecast.format`: netcdf or zarr
    jobs: int = 1                   # `forecast.jobs`: processes per forecast (the same file; not in the settings)

    @property
    def inputs(self) -> tuple[str, str]:
        """What every forecast of the split reads: the chosen inits and the split's data."""
        return (f"{self.inits_stage}.inits", f"data.{self.split}")

    @property
    def shape(self) -> dict:
        """The settings every ensemble forecast of the split shares (NetCDF forecasts keep their old identity)."""
        return {"steps": self.steps, "members": self.members, "seed": self.seed,
                **({"format": self.format} if self.format != "netcdf" else {})}

    def out(self, label: str) -> str:
        return f"{self.directory}/{label}{FORECAST_SUFFIXES[self.format]}"

    def init_arguments(self, context: StageContext) -> list[str]:
        return [argument for time in context.read_json(self.inits_file)["inits"] for argument in ("--init", time)]


def inits_stage(split: Split, input_frames: int) -> Stage:
    """`forecast.inits` or `validation.inits`: choose the split's initialisation times (`pipeline task inits`)."""
    inits = split.inits
    settings = config_to_dict(inits)
    if inits.spacing == "first":              # the original behaviour keeps the original identity
        settings.pop("spacing")
    return Stage(
        split.inits_stage, split.group, f"choose the initialisation times in the {split.split} split",
        {**settings, "steps": split.steps, "input_frames": input_frames}, (f"data.{split.split}",),
        {"inits": Output("file", split.inits_file)},
        lambda _: [task("inits", "--config", DATA_FILE, "--steps", str(split.steps), "--every-hours",
                        str(inits.every_hours), "--out", split.inits_file,
                        *(["--split", split.split] if split.split != "test" else []),
                        *(["--spacing", inits.spacing] if inits.spacing != "first" else []),
                        *(["--count", str(inits.count)] if inits.count else []),
                        *(argument for time in inits.times for argument in ("--time", time)))])


def forecast_stage(split: Split, label: str, description: str, inputs: tuple[str, ...],
                   model: Callable[[StageContext], Model], sampler: tuple[str, ...] = ()) -> Stage:
    """`PREFIX.LABEL`: the split's ensemble forecast of `model(context)` (`gencast-rmmd forecast`).

    `inputs` decide the model (its run, a selection); `sampler` are fixed
    `--sampler` overrides, part of the settings (a chosen sampler is an input).
    """
    return Stage(
        f"{split.prefix}.{label}", split.group, f"{split.members}-member {split.split} forecasts of {description}",
        {**split.shape, **({"sampler": list(sampler)} if sampler else {})}, (*inputs, *split.inputs),
        {"forecast": Output("netcdf", split.out(label))},
        lambda context: [Command((
            "forecast", *model(context).arguments(), "--data", split.store, *split.init_arguments(context),
            "--steps", str(split.steps), "--members", str(split.members), "--seed", str(split.seed),
            *(("--jobs", str(split.jobs)) if split.jobs > 1 else ()), "--out", split.out(label)))])
