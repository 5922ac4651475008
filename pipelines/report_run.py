"""The landing page's run section: every stage's state, action, duration and log, and what the run cost.

The `scorecard` stage writes the landing page while it is itself running, so the stage table it could write
would show it "running". The section therefore sits between two markers, and the runner rewrites it from the
manifest when a run ends (`refresh_run_section`, called by `pipelines.runner`), so the page's states always
equal the manifest's. The stage's recorded digest leaves the section out (`page_digest`), so the refresh does
not make the page look changed.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

from gencast_rmmd.io_utils import atomic_path
from pipelines.manifest import Manifest
from pipelines.progress import format_bytes, format_duration
from pipelines.run_summary import RUN_SUMMARY_FILE
from pipelines.states import shown

BEGIN, END = "<!-- run section: rewritten from manifest.json when a run ends -->", "<!-- end of run section -->"
_SECTION = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)


Cell = str | tuple[str, dict[str, str]]


def html_table(header: list[str], rows: list[list[Cell]], css: str | None = None) -> str:
    """Every table of the landing page: `header` titles (escaped here), rows of cells.

    A cell is HTML text, or (HTML text, {attribute: value}) for its `class` or `title` (values escaped).
    """
    def cell(value: Cell) -> str:
        text, attributes = (value, {}) if isinstance(value, str) else value
        return "<td" + "".join(f" {name}='{html.escape(str(v))}'" for name, v in attributes.items()) + f">{text}</td>"

    head = "".join(f"<th>{html.escape(title)}</th>" for title in header)
    body = "".join("<tr>" + "".join(cell(value) for value in row) + "</tr>" for row in rows)
    attribute = f" class='{css}'" if css else ""
    return f"<table{attribute}><tr>{head}</tr>{body}</table>"


def _summary_paragraph(workdir: Path) -> str:
    path = workdir / RUN_SUMMARY_FILE
    if not path.is_file():
        return ""
    summary = json.loads(path.read_text())
    machine = summary.get("machine", {})
    return (f"<p>Latest run ({html.escape(str(summary.get('result')))}, ended "
            f"{html.escape(str(summary.get('ended')))}): wall time {format_duration(summary['wall_seconds'])}, "
            f"peak memory {format_bytes(summary['peak_rss_bytes'])} (resident, largest process), CPU time "
            f"{format_duration(summary.get('cpu_seconds') or 0.0)}, on {html.escape(str(machine.get('cpu_model')))} "
            f"({machine.get('usable_cpus')} usable CPUs, {format_bytes(machine.get('memory_bytes') or 0)} memory). "
            f"All figures: <a href='../{RUN_SUMMARY_FILE}'>{RUN_SUMMARY_FILE}</a>.</p>")


def run_section(workdir: Path) -> str:
    """The section from the manifest and `run_summary.json` as they are now, markers included."""
    manifest = Manifest.load(workdir)
    rows = []
    for name, record in manifest.ordered_stages():
        seconds = record.get("seconds")
        rows.append([html.escape(name), html.escape(record.get("description", "")),
                     html.escape(shown(record.get("state", ""))), html.escape(shown(record.get("action", ""))),
                     f"{seconds:.0f}" if isinstance(seconds, (int, float)) else "",
                     f"<a href='../{html.escape(record.get('log', ''))}'>log</a>"])
    return "\n".join([
        BEGIN, "<h2>Stages</h2>",
        html_table(["stage", "what it does", "state", "this run", "duration (s)", "log"], rows, "stages"),
        _summary_paragraph(workdir),
        "<p>Outputs: <code>teacher/</code> and <code>students/NAME/</code> (checkpoints), "
        "<code>forecasts/</code> (ensembles, CF NetCDF or zarr), <code>scores/*.nc</code>; every stage's exact "
        "config is in <code>configs/</code>, its commands and hashes in <code>manifest.json</code>.</p>", END])


def refresh_run_section(page: Path, workdir: Path) -> bool:
    """Rewrite the run section of the landing page `page` in place (atomically); False if there is none."""
    if not page.is_file():
        return False
    text = page.read_text(encoding="utf-8")
    if BEGIN not in text:
        return False
    with atomic_path(page) as temporary:
        temporary.write_text(_SECTION.sub(lambda _: run_section(workdir), text, count=1), encoding="utf-8")
    return True


def page_digest(path: Path) -> str:
    """sha256 of the landing page without its run section (which changes whenever a run ends)."""
    return hashlib.sha256(_SECTION.sub("", path.read_text(encoding="utf-8")).encode()).hexdigest()
