"""The stage graph's pieces: a stage is data (settings, inputs, outputs) plus a builder of its commands.

A `Stage`'s `settings` are hashed into its identity, its `inputs`
(`"stage.output"` references) contribute their digests, its `outputs` are
paths relative to the work directory with a digest kind (`pipelines.digests`),
and `commands(context)` builds its processes once the stages before it are
done (forecast commands need the chosen init times, a selected row's
forecast the chosen candidate).
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines.states import StageState


@dataclass(frozen=True)
class Command:
    """One process of a stage: `gencast-rmmd ARGS...`, run with this interpreter."""

    args: tuple[str, ...]

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gencast_rmmd.cli", *self.args]

    def display(self) -> str:
        """The command as a user would type it."""
        return f"gencast-rmmd {shlex.join(self.args)}"


def task(*args: str) -> Command:
    """A pipeline step that is not a product command: `gencast-rmmd pipeline task ...` (pipelines/tasks.py)."""
    return Command(("pipeline", "task", *args))


@dataclass(frozen=True)
class Output:
    """An output path relative to the work directory and how to digest it (see `digests.output_record`)."""

    kind: str
    path: str


@dataclass(frozen=True)
class StageContext:
    """What a stage's command builder may look at: the work directory and earlier stages' states."""

    workdir: Path
    resume_run: bool                       # a training stage continues its run (--resume)
    states: dict[str, str]                 # stage name -> state

    def read_json(self, relative: str) -> dict:
        return json.loads((self.workdir / relative).read_text())

    def applies(self, stage: str) -> bool:
        return self.states.get(stage) not in (None, StageState.NOT_APPLICABLE)


@dataclass(frozen=True)
class Stage:
    name: str
    group: int    # 1 data, 2 stats, 3 teacher, 4 distill and select, 5 forecast, 6 evaluate, 7 scorecard
    description: str
    settings: dict                                        # what the stage runs with (hashed)
    inputs: tuple[str, ...]                               # "stage.output" references
    outputs: dict[str, Output]
    commands: Callable[[StageContext], list[Command]]
    training: bool = False                                # outputs["run"] resumes from its last checkpoint
    applies: Callable[[StageContext], bool] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    extra_seed: bool = False      # trains another seed of a chosen config: no choice reads it (`order: rows`)


@dataclass(frozen=True)
class TrainingSetup:
    """How training stages run: with `distributed.cpu_devices` a forced device count, logged first."""

    environment: dict[str, str]
    preamble: tuple[Command, ...]            # commands before the training command (the devices line)

    @classmethod
    def for_cpu_devices(cls, cpu_devices: int | None) -> "TrainingSetup":
        if not cpu_devices:
            return cls({}, ())
        return cls({"XLA_FLAGS": f"--xla_force_host_platform_device_count={cpu_devices}"}, (task("devices"),))
