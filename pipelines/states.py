"""The words a manifest records, as types: a stage's state, what a run did with it, how a run ended.

They are `StrEnum`s, so the manifest's JSON holds their plain values and a value read back compares equal to
its member (`record["state"] == StageState.DONE`). `not_applicable` is one spelling for a state and an action;
manifests written before it was (action "not applicable") are read through `StageAction.parse`.
"""

from __future__ import annotations

from enum import StrEnum


class StageState(StrEnum):
    """Where a stage stands: pending, running, done, failed, or not applicable to this pipeline's inputs."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"


class StageAction(StrEnum):
    """What one run did with a stage (`not_reached`: the run ended before it)."""

    RAN = "ran"
    RESUMED = "resumed"
    SKIPPED = "skipped"
    NOT_APPLICABLE = "not_applicable"
    NOT_REACHED = "not_reached"

    @classmethod
    def parse(cls, value: str) -> "StageAction":
        """A recorded action, also in the older spellings ("not applicable", "not reached")."""
        return cls(value.replace(" ", "_"))

    @property
    def worked(self) -> bool:
        """Whether the stage's commands ran in this run."""
        return self in (StageAction.RAN, StageAction.RESUMED)


class RunResult(StrEnum):
    """How a pipeline run ended (`running` while it runs; `killed`: its process vanished, found by the next)."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    KILLED = "killed"


def shown(value: str) -> str:
    """A state or action as a person reads it: `not_applicable` -> "n/a", `not_reached` -> "not reached"."""
    text = str(value).replace(" ", "_")
    return "n/a" if text == StageState.NOT_APPLICABLE else text.replace("_", " ")
