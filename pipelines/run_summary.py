"""What a pipeline run cost, measured: wall time, peak memory and CPU time per stage and in all, and the machine.

Each stage command's peak resident memory and CPU time come from the kernel
when the runner reaps it (`os.wait4`: the command and every process it waited
for, as `/usr/bin/time` reports them), so they are exact, not sampled. The
run's peak is the largest of the pipeline process and all its commands
(`getrusage`), the figure `/usr/bin/time -v` prints for the whole run.

`DIR/run_summary.json`, rewritten atomically at the end of every run (also a
failed or interrupted one):

    {"pipeline", "config_file", "git_commit", "started", "ended", "result": ok|failed|interrupted,
     "wall_seconds", "peak_rss_bytes", "cpu_seconds",
     "machine": {"host", "platform", "python", "cpu_model", "cpu_count", "usable_cpus", "memory_bytes"},
     "headlines": [the landing page's headlines, when the scorecard stage has written them],
     "stages": [{"name", "action": ran|resumed|skipped|not_applicable|not_reached (`pipelines.states`),
                 "seconds", "peak_rss_bytes", "cpu_seconds", "ended"}]}

A stage this run skipped keeps the figures of the run that made it, with that
run's `ended`; one that never ran has none. README figures are quoted from
this file, with its date and machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from gencast_rmmd.io_utils import write_json_atomic
from pipelines.states import StageAction

RUN_SUMMARY_FILE = "run_summary.json"
HEADLINES_FILE = "scorecard/headlines.json"


@dataclass(frozen=True)
class CommandUsage:
    """What one reaped command used: peak resident memory (bytes) and CPU time (user + system, seconds)."""

    peak_rss_bytes: int
    cpu_seconds: float

    @classmethod
    def of(cls, usage: resource.struct_rusage) -> "CommandUsage":
        return cls(maxrss_bytes(usage.ru_maxrss), usage.ru_utime + usage.ru_stime)


def maxrss_bytes(maxrss: int) -> int:
    """`ru_maxrss` in bytes (the kernel counts KiB on Linux, bytes on macOS)."""
    return int(maxrss) * (1 if sys.platform == "darwin" else 1024)


def run_peak_rss_bytes() -> int:
    """The peak resident memory of this process and of every command it reaped so far."""
    return max(maxrss_bytes(resource.getrusage(who).ru_maxrss)
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def machine() -> dict:
    """Host, platform, CPU model and count (and how many this process may use), memory."""
    model = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
            "cpu_model": model, "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "memory_bytes": psutil.virtual_memory().total}


def run_summary(content: dict, wall_seconds: float, order: list[str]) -> dict:
    """The summary of the manifest `content`'s latest run, which took `wall_seconds`, stages in `order`."""
    run = content["runs"][-1]
    stages = []
    for name in order:
        record = content["stages"].get(name, {})
        stages.append({"name": name, "action": run["actions"].get(name, StageAction.NOT_REACHED),
                       **{key: record.get(key) for key in ("seconds", "peak_rss_bytes", "cpu_seconds", "ended")}})
    return {"pipeline": content.get("pipeline", {}).get("name"),
            "config_file": content.get("pipeline", {}).get("config_file"),
            "git_commit": content.get("environment", {}).get("git_commit"),
            "started": run["started"], "ended": run.get("ended"), "result": run.get("result"),
            "wall_seconds": round(wall_seconds, 2), "peak_rss_bytes": run_peak_rss_bytes(),
            "cpu_seconds": round(sum(stage["cpu_seconds"] or 0.0 for stage in stages
                                     if StageAction.parse(stage["action"]).worked), 2),
            "machine": machine(), "stages": stages}


def write_run_summary(workdir: Path, content: dict, wall_seconds: float, order: list[str]) -> dict:
    """Write `DIR/run_summary.json` for the latest run (atomically); return it.

    With the landing page's headlines in `DIR/scorecard/headlines.json` (the `scorecard` stage writes them),
    the summary quotes them too, so what the run cost and what it showed are in one file.
    """
    summary = run_summary(content, wall_seconds, order)
    headlines = workdir / HEADLINES_FILE
    if headlines.is_file():
        summary["headlines"] = json.loads(headlines.read_text())["headlines"]
    write_json_atomic(workdir / RUN_SUMMARY_FILE, summary)
    return summary
