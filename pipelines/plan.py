"""What `pipeline run` would do in a work directory, without doing it: `gencast-rmmd pipeline plan`.

Before changing a config, the code (a new `git worktree` commit) or the data of a long experiment, an ML
engineer wants to know which stages would run again. For every stage, in order, the plan compares the
identity the runner would compute (`PipelineRunner.identity`: the hash of the stage's settings and of its
inputs' recorded digests) with the one the manifest recorded:

- `skip`: done with the same identity and its outputs present;
- `resume`: an interrupted or failed training stage with the same identity (from its last checkpoint, with
  `--resume`; without it, it starts again);
- `run`: never ran, or its settings changed, or an input's digest changed, or an output is missing;
- `after`: an input runs first, so whether it reruns depends on that input's new output (digests are of
  content: an identical output does not trigger it);
- `not applicable`: recorded so (e.g. the reference on a store the simulator did not make).

Nothing is written and no lock is taken: a plan may be made while the pipeline runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.config import PipelineConfig
from pipelines.manifest import Manifest
from pipelines.resolution import resolve
from pipelines.runner import stage_identity
from pipelines.stages import Stage, build_stages, producer
from pipelines.states import StageState

@dataclass(frozen=True)
class PlannedStage:
    name: str
    verdict: str            # skip | resume | run | after | not applicable
    reason: str


def _verdict(stage: Stage, records: dict[str, dict], workdir: Path, moving: set[str]) -> tuple[str, str]:
    record = records.get(stage.name, {})
    state = record.get("state")
    if state == StageState.NOT_APPLICABLE:
        return "not applicable", "recorded as not applicable"
    if not record:
        return "run", "never ran"
    upstream = sorted({producer(reference) for reference in stage.inputs} & moving)
    if upstream:
        return "after", f"runs again if {' or '.join(upstream)} changes its output"
    identity, config_sha256, inputs = stage_identity(stage, records)
    if record.get("identity") != identity:
        if record.get("config_sha256") != config_sha256:
            return "run", "its settings changed"
        changed = [reference for reference, digest in inputs.items()
                   if (record.get("inputs") or {}).get(reference) != digest]
        return "run", f"input {', '.join(changed) or '?'} changed"
    if state == StageState.DONE:
        missing = [output.path for output in stage.outputs.values() if not (workdir / output.path).exists()]
        return ("run", f"output {missing[0]} is missing") if missing else ("skip", "unchanged")
    if stage.training and state in (StageState.RUNNING, StageState.FAILED):
        return "resume", f"{state} with the same settings: continues from its last checkpoint with --resume"
    return "run", f"{state or 'pending'}"


def plan_pipeline(config_file: str | Path, config: PipelineConfig, workdir: Path) -> list[PlannedStage]:
    """The verdict of every stage of `config` in `workdir` (module docstring)."""
    stages = build_stages(config, resolve(config, config_file))
    records = Manifest.load(workdir).stages
    moving: set[str] = set()
    planned = []
    for stage in stages:
        verdict, reason = _verdict(stage, records, workdir, moving)
        if verdict in ("run", "resume", "after"):
            moving.add(stage.name)
        planned.append(PlannedStage(stage.name, verdict, reason))
    return planned
