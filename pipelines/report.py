"""The pipeline's landing page, `scorecard/index.html`: where to look first.

It links the two scorecards the `scorecard` stage writes (students and the
teacher's few-call sampler rows against the teacher, with the speed table;
every forecast against persistence), repeats their headlines, counts wins lead
by lead (so "the teacher beats persistence from 24 h on" can be read off one
row), shows what each grid row chose on validation (`selection/*.json`; for a
`base:` row, the chosen config its candidates start from) and lists what every
stage did, with its log (a `base:` row's training stages name their base).
Scores are read with `evaluation.scorecard`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from evaluation.scorecard import compare, headline, lead_label, load_scores
from gencast_rmmd.io_utils import atomic_path
from pipelines.manifest import Manifest

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
th { background: #f2f2f2; }
.win { background: #d6e9f8; } .loss { background: #f8dcd6; }
img { max-width: 100%; }
"""


def wins_by_lead(candidate, baseline, region: str) -> pd.Series:
    """Per lead time: "k/n", the targets (variable, level) where the candidate's CRPS is lower."""
    crps = compare(candidate, baseline, "crps", region).reset_index()
    crps = crps[crps["candidate"].notna() & crps["baseline"].notna()]
    grouped = crps.assign(win=crps["candidate"] < crps["baseline"]).groupby("lead_time")["win"]
    return pd.Series({lead: f"{int(wins.sum())}/{len(wins)}" for lead, wins in grouped})


def _table(rows: list[list[str]], header: list[str], classes: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        styles = classes[index] if classes else [""] * len(row)
        body.append("<tr>" + "".join(f"<td class='{style}'>{cell}</td>" for cell, style in zip(row, styles)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _win_class(cell: str) -> str:
    won, total = (int(part) for part in cell.split("/"))
    return "win" if total and won == total else ("loss" if won == 0 else "")


def _comparison_section(title: str, link: str, candidates: list, baseline, region: str) -> tuple[str, list[str]]:
    headlines = [headline(candidate, baseline, region).sentence() for candidate in candidates]
    by_lead = {candidate.label: wins_by_lead(candidate, baseline, region) for candidate in candidates}
    leads = sorted({lead for series in by_lead.values() for lead in series.index})
    rows = [[html.escape(label), *(series.get(lead, "–") for lead in leads)] for label, series in by_lead.items()]
    classes = [["", *(_win_class(cell) if cell != "–" else "" for cell in row[1:])] for row in rows]
    parts = [f"<h2>{html.escape(title)}</h2>", f"<p><a href='{link}/index.html'>Full scorecard</a> "
             f"(tables of CRPS, spread/skill and RMSE per variable, level and lead)</p>",
             *(f"<p><b>{html.escape(line)}</b></p>" for line in headlines),
             "<p>Targets (variable, level) where the forecast's fair CRPS is lower than "
             f"{html.escape(baseline.label)}'s, "
             "by lead time in days:</p>",
             _table(rows, ["forecast", *(lead_label(lead) for lead in leads)], classes),
             f"<a href='{link}/index.html'><img src='{link}/scorecard.png' alt='{html.escape(title)}'></a>"]
    return "\n".join(parts), headlines


def _speed_section(speed_file: Path) -> str:
    if not speed_file.is_file():
        return ""
    speed = json.loads(speed_file.read_text())
    models = dict(sorted(speed["models"].items(), key=lambda item: item[0] != "teacher"))   # teacher first
    teacher = models.get("teacher")
    rows = [[html.escape(label), f"{entry['seconds_per_step'] * 1000:.1f}", str(entry["nfe_per_step"]),
             f"{teacher['seconds_per_step'] / entry['seconds_per_step']:.2f}x" if teacher else "–",
             f"{teacher['nfe_per_step'] / entry['nfe_per_step']:.2f}x" if teacher else "–"]
            for label, entry in models.items()]
    return ("<h2>Speed</h2>" + _table(rows, ["model", "ms per 12 h step", "denoiser calls per step",
                                             "speedup (wall)", "fewer calls"]) +
            f"<p>Median of {speed['repeats']} steps, {speed['members']} members x {speed['inits']} init(s), "
            f"{speed['device_count']} {html.escape(speed['device'])} device(s), after compilation.</p>")


def _selection_section(workdir: Path) -> str:
    """Per grid row: every candidate's values and validation figures, the chosen one marked."""
    parts = []
    for path in sorted((workdir / "selection").glob("*.json")):
        selection = json.loads(path.read_text())
        chosen = selection["chosen"]["index"]
        rows = [[html.escape(entry["label"]), html.escape(", ".join(f"{k}={v}" for k, v in entry["values"].items())),
                 f"{entry['crps_change_pct']:+.2f}", f"{entry['win_rate']:.0%}",
                 "chosen" if entry["index"] == chosen else ""] for entry in selection["candidates"]]
        classes = [["", "", "", "", "win" if entry["index"] == chosen else ""] for entry in selection["candidates"]]
        base = selection.get("base")
        on_base = (f"<p>Candidates: <code>{html.escape(base['config'])}</code> (chosen earlier) with "
                   f"{html.escape(', '.join(base['overrides']) or 'no overrides')} and their values.</p>"
                   if base else "")
        parts.append(f"<h3>{html.escape(selection['name'])}</h3>" + on_base + _table(
            rows, ["candidate", "values", "CRPS change vs teacher (%)", "win rate", ""], classes))
    if not parts:
        return ""
    return ("<h2>Chosen on validation</h2><p>Each grid row's candidates, scored on "
            f"{len(selection['validation_inits'])} validation init(s) (never on the test inits): "
            f"{html.escape(selection['criterion'])}. The chosen config is <code>selection/NAME.yaml</code>.</p>"
            + "".join(parts))


def _stages_section(workdir: Path) -> str:
    manifest = Manifest.load(workdir)
    rows = []
    for name, record in manifest.ordered_stages():
        seconds = record.get("seconds")
        rows.append([html.escape(name), html.escape(record.get("description", "")),
                     html.escape(record.get("state", "")), html.escape(record.get("action", "")),
                     f"{seconds:.0f}" if isinstance(seconds, (int, float)) else "",
                     f"<a href='../{record.get('log', '')}'>log</a>"])
    return ("<h2>Stages</h2>" + _table(rows, ["stage", "what it does", "state", "this run", "seconds", "log"]) +
            "<p>Outputs: <code>teacher/</code> and <code>students/NAME/</code> (checkpoints), "
            "<code>forecasts/*.nc</code>, <code>scores/*.nc</code>; every stage's exact config is in "
            "<code>configs/</code>, its commands and hashes in <code>manifest.json</code>.</p>")


def write_report(workdir: Path, out: Path, region: str = "global", students: list[str] | None = None,
                 samplers: list[str] = (), forecasts: list[str] | None = None) -> list[str]:
    """Write the landing page `out` for the pipeline in `workdir`; return the headlines.

    `students`: the student rows (chosen configs and extra seeds; default: the
    labels of the manifest's `distill.LABEL` stages); `samplers`: the teacher
    sampler rows, baselines compared with the teacher beside the students;
    `forecasts`: the labels with `scores/LABEL.nc` to show (default: every one there).
    """
    workdir = Path(workdir)
    scores = {path.stem: load_scores(path) for path in sorted((workdir / "scores").glob("*.nc"))
              if forecasts is None or path.stem in forecasts}
    manifest = Manifest.load(workdir)
    if students is None:
        students = [name.split(".", 1)[1] for name, _ in manifest.ordered_stages()
                    if name.startswith("distill.") and name.count(".") == 1]
    against_teacher = [*students, *samplers]
    sections, headlines = [], []
    if against_teacher and "teacher" in scores:
        title = f"{'Students' if students else ''}{' and ' if students and samplers else ''}" \
                f"{'teacher sampler rows' if samplers else ''} against the teacher"
        section, lines = _comparison_section(title[0].upper() + title[1:], "students_vs_teacher",
                                             [scores[name] for name in against_teacher if name in scores],
                                             scores["teacher"], region)
        sections.append(section + _speed_section(workdir / "scorecard" / "speed.json"))
        headlines += lines
    if "persistence" in scores:
        others = [score for label, score in scores.items() if label != "persistence"]
        order = ["teacher", *against_teacher, "reference", "climatology"]
        others.sort(key=lambda score: order.index(score.label) if score.label in order else len(order))
        section, lines = _comparison_section("Every forecast against persistence", "vs_persistence", others,
                                             scores["persistence"], region)
        sections.append(section)
        headlines += lines
    name = manifest.content.get("pipeline", {}).get("name", "pipeline")
    page = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(name)}: scorecards</title>"
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>Pipeline {html.escape(name)}: scorecards ({html.escape(region)})</h1>",
            "<p>Fair CRPS (lower is better) of ensemble forecasts on the test split. The teacher is the "
            "GenCast-style diffusion model (many denoiser calls per 12 h step); students are distilled from it "
            "to a few calls per step; teacher sampler rows run the teacher itself with other sampler settings "
            "(e.g. as few calls as a student); the reference, when present, is the simulator itself run from the "
            "same initial states (the best any model of the simulated data could do).</p>",
            *sections, _selection_section(workdir), _stages_section(workdir), "</body></html>"]
    with atomic_path(out) as temporary:
        temporary.write_text("\n".join(page), encoding="utf-8")
    return headlines
