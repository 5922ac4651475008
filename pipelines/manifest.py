"""`DIR/manifest.json`: what each stage ran with, what it made, when, and on what software.

    {"pipeline": {name, config_file, config_sha256},
     "environment": {python, platform, host, packages: {name: version}, git_commit},
     "stages": {NAME: {state, order, group, description, config_sha256, inputs: {stage.output: digest},
                       identity, outputs: {key: {path, kind, digest, ...}}, commands, log,
                       started, ended, seconds, peak_rss_bytes, cpu_seconds, attempts, action, error, pid}},
     "runs": [{started, ended, command, result, actions: {NAME: ran|resumed|skipped|not_applicable},
               wall_seconds, peak_rss_bytes}]}

`state` is pending, running, done, failed or not_applicable (`pipelines.states`). A stage's
`identity` hashes its config and its inputs' digests; a stage is skipped when
its recorded identity matches and its outputs exist. Written atomically after
every change, so a kill leaves the last consistent state. A stage's
`peak_rss_bytes` and `cpu_seconds` are its commands' (`pipelines.run_summary`),
a run's its wall time and the peak of the pipeline and all its commands.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from gencast_rmmd.config import REPO_ROOT
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import write_json_atomic
from pipelines.states import StageState

MANIFEST_FILE = "manifest.json"
PACKAGES = ("gencast-rmmd", "jax", "jaxlib", "dm-haiku", "optax", "numpy", "xarray", "zarr", "dask",
            "distributed", "pydantic", "dinosaur", "netCDF4")


def now() -> str:
    """UTC time as ISO text (seconds)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """HEAD's commit of the source checkout, read from `.git` without running git (None outside a checkout).

    `.git` is a directory in a clone and a `gitdir: PATH` file in a `git worktree` (where long experiments
    run); a worktree's branch refs live in the common directory its `commondir` file names.
    """
    git = repo / ".git"
    try:
        if git.is_file():
            git = (repo / git.read_text().strip().removeprefix("gitdir:").strip()).resolve()
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        for directory in dict.fromkeys((git, common)):
            if (directory / ref).is_file():
                return (directory / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def environment() -> dict:
    """Python, platform, host, versions of the packages that decide results, and the git commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
            "packages": versions, "git_commit": git_commit()}


def _structure_problem(content: Any) -> str | None:
    """What is wrong with the shape of a parsed manifest (a JSON object of stage records and runs), or None."""
    if not isinstance(content, dict):
        return f"a JSON {type(content).__name__}, not an object"
    stages, runs = content.get("stages", {}), content.get("runs", [])
    if not isinstance(stages, dict) or not all(isinstance(record, dict) for record in stages.values()):
        return "'stages' is not an object of stage records"
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        return "'runs' is not a list of run records"
    return None


class Manifest:
    """The manifest of one work directory, saved after every change."""

    def __init__(self, path: Path, content: dict):
        self.path = path
        self.content = content

    @classmethod
    def load(cls, workdir: Path) -> "Manifest":
        """Read `workdir/manifest.json` (an empty manifest when there is none)."""
        path = Path(workdir) / MANIFEST_FILE
        if not path.exists():
            return cls(path, {"stages": {}, "runs": []})
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserInputError(f"{path} is not a readable manifest ({error}); move it away to start over") from None
        problem = _structure_problem(content)
        if problem:
            raise UserInputError(f"{path} is not a gencast-rmmd manifest ({problem}); move it away to start over")
        content.setdefault("stages", {})
        content.setdefault("runs", [])
        return cls(path, content)

    @property
    def stages(self) -> dict[str, dict]:
        return self.content["stages"]

    def ordered_stages(self) -> list[tuple[str, dict]]:
        """Stage records in execution order (the file keeps them sorted by name)."""
        return sorted(self.stages.items(), key=lambda item: item[1].get("order", len(self.stages)))

    @property
    def current_run(self) -> dict:
        return self.content["runs"][-1]

    def stage(self, name: str) -> dict:
        return self.stages.setdefault(name, {"state": StageState.PENDING})

    def update_stage(self, name: str, **fields: Any) -> dict:
        record = self.stage(name)
        record.update(fields)
        self.save()
        return record

    def save(self) -> None:
        self.content["updated"] = now()
        write_json_atomic(self.path, self.content)
