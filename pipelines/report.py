"""The pipeline's landing page, `scorecard/index.html`: what a forecaster reads first.

From top to bottom:
- what the page shows (the data, simulated or not; teacher, students, teacher sampler rows, the perfect-model
  reference and the baselines; what RMMD stands for) and what the figures rest on (test inits, members, leads,
  targets, the bootstrap);
- the headlines: each student and teacher sampler row against the teacher (CRPS change with its 95 %
  interval, targets won, speed), then lead by lead where the teacher and each row beat climatology and where
  not;
- the fair-CRPS change by lead against climatology and against the teacher, each cell with its interval and
  the targets won (`evaluation.by_lead`: per-init CRPS of the forecasts against the truth, paired moving-block
  bootstrap over the inits), the speed table, links to the full scorecards (`gencast-rmmd scorecard` against
  the teacher, climatology and persistence), the choices made on validation;
- the stages and what the run cost (`pipelines.report_run`, rewritten by the runner when a run ends).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.by_lead import (BETTER, LEVEL, WORSE, LeadChanges, Sample, bootstrap, lead_changes, per_init_tables,
                                shared_targets)
from evaluation.compare import forecast_layout
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.io_utils import atomic_path
from pipelines.manifest import Manifest
from pipelines.report_run import html_table, run_section
from pipelines.table import forecast_path

TEACHER, CLIMATOLOGY, PERSISTENCE, REFERENCE = "teacher", "climatology", "persistence", "reference"
DRAWS = 2000
METHODS = {                                   # distill.method -> what the row is, in a reader's words
    "mmd": "a moment-matching student (moment matching distillation alone, RMMD's phase 1)",
    "rmmd": "an RMMD student (Rewarded Moment Matching Distillation: moment matching to the teacher plus the "
            "fair ensemble CRPS as a reward)",
    "crps_only": "a student trained on the fair-CRPS reward alone",
    "draft": "a DRaFT student (the CRPS reward back-propagated through its last sampling steps)",
    "dmd": "a DMD student (distribution matching distillation: the teacher's and a fake score model's "
           "denoisers compared on the student's samples, plus the fair-CRPS reward)",
    "gndm": "a GNDM student (distribution matching recast as a per-sample reward, normalised within each "
            "group of members and optimised by clipped policy-gradient updates; GNDMR adds the fair-CRPS reward)",
    "dmdr": "a DMDR student (distribution matching to the teacher tilted towards the fair-CRPS reward, then "
            "distribution matching plus the reward, the matching being the regulariser against reward hacking)",
}
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 78em; line-height: 1.35; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; vertical-align: top; }
td:first-child, th:first-child { text-align: left; }
th { background: #eee; }
table.stages td, table.stages th { text-align: left; } table.stages td:nth-child(5) { text-align: right; }
td.better { background: #d3e6f7; } td.worse { background: #f9d9d2; }
.ci, .won { font-size: 11px; color: #444; }
.headlines li { margin: 0.3em 0; }
.about { background: #f6f6f6; border-left: 4px solid #888; padding: 0.6em 1em; }
img { max-width: 100%; }
"""


def lead_name(hours: int) -> str:
    """12 h, 1 d, 1.5 d, …"""
    return f"{hours} h" if hours < 24 else f"{hours / 24:g} d"


def lead_ranges(indices: list[int], hours: list[int]) -> str:
    """Leads at `indices` (ascending) as ranges of consecutive ones: '12 h–2 d, 3 d'."""
    groups: list[list[int]] = []
    for index in indices:
        if groups and index == groups[-1][-1] + 1:
            groups[-1].append(index)
        else:
            groups.append([index])
    return ", ".join(lead_name(hours[group[0]]) if len(group) == 1 else
                     f"{lead_name(hours[group[0]])}–{lead_name(hours[group[-1]])}" for group in groups)


def _interval_text(low_high: list[float] | None, digits: int = 1) -> str:
    return "" if low_high is None else f"[{low_high[0]:+.{digits}f}, {low_high[1]:+.{digits}f}]"


def climatology_sentence(changes: LeadChanges, hours: list[int]) -> str:
    """'teacher against climatology: better at 12 h–3 d; level at 3.5 d; worse at 4 d (CRPS −69 % … +2 %)'."""
    verdicts = changes.verdicts()
    span = f"{changes.change_pct[0]:+.0f} % at {lead_name(hours[0])} to {changes.change_pct[-1]:+.0f} % at " \
           f"{lead_name(hours[-1])}"
    if all(verdict == BETTER for verdict in verdicts):
        return (f"{changes.label} beats climatology at every lead, {lead_name(hours[0])} to "
                f"{lead_name(hours[-1])} (fair CRPS {span})")
    parts = [f"{word} at {lead_ranges([i for i, v in enumerate(verdicts) if v == verdict], hours)}"
             for verdict, word in ((BETTER, "better"), (LEVEL, "level (interval holds 0)"), (WORSE, "worse"))
             if verdict in verdicts]
    return f"{changes.label} against climatology: {'; '.join(parts)} (fair CRPS {span})"


def teacher_sentence(changes: LeadChanges, sample: Sample, speed: dict | None) -> str:
    """'rmmd: fair CRPS +1.6 % against the teacher (95 % interval [...]), lower on 130 of 448 targets (…, 29.0 %) …'."""
    cells = changes.targets * len(changes.change_pct)
    interval = (f"95 % interval {_interval_text(changes.overall_interval_95, 2)}" if changes.overall_interval_95
                else f"no interval: {sample.no_interval}")
    text = (f"{changes.label}: fair CRPS {changes.overall_pct:+.2f} % against the teacher ({interval}), lower on "
            f"{changes.overall_won} of {cells} targets (variable × level × lead, "
            f"{100 * changes.overall_won / cells:.1f} %)")
    models = (speed or {}).get("models", {})
    if changes.label in models and TEACHER in models:
        row, teacher = models[changes.label], models[TEACHER]
        text += (f"; {teacher['seconds_per_step'] / row['seconds_per_step']:.2f}x the teacher's speed per 12 h step "
                 f"({row['nfe_per_step']} denoiser calls against {teacher['nfe_per_step']})")
    return text


def _cell(changes: LeadChanges, lead: int | None) -> tuple[str, str]:
    """One table cell (change, interval, targets won) and its class."""
    if lead is None:
        value, low_high, won, total = (changes.overall_pct, changes.overall_interval_95, changes.overall_won,
                                       changes.targets * len(changes.change_pct))
        verdict = "" if low_high is None else (BETTER if low_high[1] < 0 else WORSE if low_high[0] > 0 else "")
    else:
        value, won, total = changes.change_pct[lead], changes.targets_won[lead], changes.targets
        low_high = None if changes.interval_95 is None else changes.interval_95[lead]
        verdict = changes.verdicts()[lead] if low_high is not None else ""
    text = (f"<b>{value:+.1f}</b>" + (f"<br><span class='ci'>{_interval_text(low_high)}</span>" if low_high else "")
            + f"<br><span class='won'>{won}/{total} won</span>")
    return text, verdict if verdict != LEVEL else ""


def by_lead_table(changes: dict[str, LeadChanges], sample: Sample, describe: dict[str, str]) -> str:
    """Rows: forecasts; columns: leads and all leads; cells: change in %, its interval, targets won."""
    header = ["forecast", "members", *(lead_name(hours) for hours in sample.lead_hours), "all leads"]
    rows = [[(html.escape(label), {"title": describe.get(label, "")}), str(sample.members.get(label, "")),
             *((text, {"class": css}) for text, css in (_cell(row, lead)
                                                         for lead in [*range(len(sample.lead_hours)), None]))]
            for label, row in changes.items()]
    return html_table(header, rows)


def _speed_section(speed: dict | None) -> str:
    if not speed:
        return ""
    models = dict(sorted(speed["models"].items(), key=lambda item: item[0] != TEACHER))   # teacher first
    teacher = models.get(TEACHER)
    rows = [[html.escape(label), f"{entry['seconds_per_step'] * 1000:.1f}", str(entry["nfe_per_step"]),
             f"{teacher['seconds_per_step'] / entry['seconds_per_step']:.2f}x" if teacher else "–"]
            for label, entry in models.items()]
    header = ["model", "wall time per 12 h step (ms)", "denoiser calls per step", "speedup against the teacher (wall)"]
    return ("<h2>Speed</h2>" + html_table(header, rows) +
            f"<p>Median of {speed['repeats']} steps of {speed['members']} members × {speed['inits']} init(s) on "
            f"{speed['device_count']} {html.escape(speed['device'])} device(s), after compilation, "
            "in one process (the ratios are comparable; the absolute times depend on the machine).</p>")


def _ranking(selection: dict) -> str:
    """A `best_of` entry's ranking: every row's chosen run on validation, the best one marked."""
    best = selection["chosen"]["row"]
    rows = [[html.escape(entry["row"]), html.escape(entry["label"]), f"{entry['crps_change_pct']:+.2f}",
             f"{entry['win_rate']:.0%}", ("best", {"class": "better"}) if entry["row"] == best else ("", {"class": ""})]
            for entry in selection["rows"]]
    return (f"<h3>{html.escape(selection['name'])}</h3><p>The rows' chosen runs ranked; its extra seeds train "
            f"{html.escape(best)}'s config.</p>" + html_table(
                ["row", "chosen run", "fair CRPS change against the teacher (%)", "targets won (%)", ""], rows))


def _selection_section(workdir: Path) -> str:
    """Per grid row: every candidate's values and validation figures, the chosen one marked; per `best_of`
    entry, its ranking."""
    parts, selection = [], None
    for path in sorted((workdir / "selection").glob("*.json")):
        selection = json.loads(path.read_text())
        if "rows" in selection:
            parts.append(_ranking(selection))
            continue
        chosen = selection["chosen"]["index"]
        rows = [[html.escape(entry["label"]), html.escape(", ".join(f"{k}={v}" for k, v in entry["values"].items())),
                 f"{entry['crps_change_pct']:+.2f}", f"{entry['win_rate']:.0%}",
                 ("chosen", {"class": "better"}) if entry["index"] == chosen else ("", {"class": ""})]
                for entry in selection["candidates"]]
        base = selection.get("base")
        on_base = (f"<p>Candidates: <code>{html.escape(base['config'])}</code> (chosen earlier) with "
                   f"{html.escape(', '.join(base['overrides']) or 'no overrides')} and their values.</p>"
                   if base else "")
        parts.append(f"<h3>{html.escape(selection['name'])}</h3>{on_base}" + html_table(
            ["candidate", "values", "fair CRPS change against the teacher (%)", "targets won (%)", ""], rows))
    if selection is None:
        return ""
    return ("<h2>Chosen on validation</h2><p>Each grid row's candidates, scored on "
            f"{len(selection['validation_inits'])} validation init(s) (never on the test inits): "
            f"{html.escape(selection['criterion'])}. The chosen config is <code>selection/NAME.yaml</code>.</p>"
            + "".join(parts))


def _describe(workdir: Path, students: list[str], samplers: list[str]) -> dict[str, str]:
    """What each row is, from its resolved config (`configs/distill.LABEL.yaml`) or its kind."""
    import yaml

    described = {TEACHER: "the GenCast-style diffusion forecaster the students are distilled from",
                 REFERENCE: "the simulator itself from the same initial states: the best any model could do",
                 CLIMATOLOGY: "states of the training period drawn as an ensemble",
                 PERSISTENCE: "the initial state repeated at every lead"}
    for label in students:
        path = workdir / "configs" / f"distill.{label.split('_seed')[0]}.yaml"
        config = yaml.safe_load(path.read_text()) if path.is_file() else {}
        method = (config.get("distill") or {}).get("method")
        steps = ((config.get("distill") or {}).get("student") or {}).get("steps")
        described[label] = METHODS.get(method, f"a {method or 'distilled'} student") + (
            f", {steps} sampling steps" if steps else "")
    for label in samplers:
        described[label] = "the teacher's own sampler with fewer denoiser calls (no distillation)"
    return described


def _about(attrs: dict, sample: Sample, describe: dict[str, str], labels: list[str], region: str) -> str:
    """The 'what you are looking at' paragraph and the sample it rests on."""
    data = html.escape(str(attrs.get("truth_title") or attrs.get("truth_location") or "the data store"))
    simulated = ("<p>The data are <b>a simulated dry atmosphere, not real weather</b>: the Held–Suarez climate "
                 "of the dinosaur dynamical core on a flat aquaplanet (no moisture, seasons or diurnal cycle), "
                 "written in the ERA5 / WeatherBench2 layout so the product runs on it as it does on ERA5. The "
                 "scores say how well each model learnt this climate.</p>"
                 if any(key.startswith("truth_gencast_rmmd_simulation") for key in attrs) else "")
    rows = "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(describe[label])}</li>"
                   for label in labels if label in describe)
    times = pd.DatetimeIndex(sample.init_times)
    spacing = (f", every {lead_name(int(np.median(np.diff(times.asi8)) // 3_600_000_000_000))}"
               if times.size > 1 else "")
    bootstrap_text = (f"95 % intervals from a paired moving-block bootstrap over the inits ({sample.draws} draws, "
                      f"blocks of {sample.block_inits} init(s) covering at least the longest lead)"
                      if sample.block_inits else f"no intervals ({html.escape(sample.no_interval or '')})")
    return (f"<div class='about'><p><b>What you are looking at.</b> Ensemble forecasts of <i>{data}</i>, scored "
            "against the same store on test initialisation times that no training or choice used. The score is "
            "the fair CRPS (lower is better; in the variable's units), the area-weighted mean over the region; "
            "a change in % is 100 (CRPS / CRPS<sub>baseline</sub> − 1), negative where the forecast is better. "
            f"A target is one variable at one level (and lead).</p>{simulated}<ul>{rows}</ul>"
            f"<p><b>Sample:</b> {times.size} test inits ({times[0]:%Y-%m-%d %H} UTC to {times[-1]:%Y-%m-%d %H} UTC"
            f"{spacing}), leads {lead_name(sample.lead_hours[0])} to {lead_name(sample.lead_hours[-1])}, "
            f"{len(sample.targets)} targets per lead, region {html.escape(region)}; {bootstrap_text}."
            + (" With few inits the intervals are rough: they say how much the verdict could move with other "
               "weather, not more." if sample.block_inits else "") + "</p></div>")


def write_report(workdir: Path, out: Path, region: str = "global", students: list[str] | None = None,
                 samplers: list[str] = (), forecasts: list[str] | None = None, truth: str | None = None,
                 draws: int = DRAWS, seed: int = 0) -> list[str]:
    """Write the landing page `out` for the pipeline in `workdir` (forecasts against `truth`); return the
    headlines.

    `students`: the student rows (default: the manifest's `distill.LABEL` stages); `samplers`: the teacher
    sampler rows; `forecasts`: the labels with a forecast in `forecasts/` to show (default: every one).
    """
    workdir = Path(workdir)
    manifest = Manifest.load(workdir)
    if students is None:
        students = [name.split(".", 1)[1] for name, _ in manifest.ordered_stages()
                    if name.startswith("distill.") and name.count(".") == 1]
    found = {label: forecast_path(workdir, label)
             for label in forecasts or [path.stem for path in sorted((workdir / "forecasts").iterdir())]}
    labels = [label for label, path in found.items() if path is not None]
    if TEACHER not in labels:
        raise UserInputError(f"no teacher forecast in {workdir / 'forecasts'}; run the forecast stages first")
    rows = [label for label in [*students, *samplers] if label in labels]
    order = [TEACHER, *rows, REFERENCE, CLIMATOLOGY, PERSISTENCE]
    labels = sorted(labels, key=lambda label: order.index(label) if label in order else len(order))
    paths = {label: str(found[label]) for label in labels}
    truth_store = open_dataset(truth)
    layouts = {label: forecast_layout(path) for label, path in paths.items()}     # each forecast opened once here
    tables = per_init_tables(paths, truth_store, shared_targets(layouts, truth_store), region)
    indices, sample = bootstrap(tables, draws, seed, {label: layout.members for label, layout in layouts.items()})
    speed_file = workdir / "scorecard" / "speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    describe = _describe(workdir, students, list(samplers))
    against_teacher = lead_changes(tables, TEACHER, indices, [*rows, *(l for l in (REFERENCE,) if l in tables)])
    headlines = [teacher_sentence(against_teacher[label], sample, speed) for label in rows]
    sections = []
    if CLIMATOLOGY in tables:
        against_climatology = lead_changes(tables, CLIMATOLOGY, indices,
                                           [label for label in labels if label != CLIMATOLOGY])
        headlines += [climatology_sentence(against_climatology[label], sample.lead_hours)
                      for label in [TEACHER, *rows]]
        sections.append("<h2>Fair CRPS change against climatology, by lead (%)</h2>"
                        "<p>Each cell: the change in %, its 95 % interval, and the targets (variable × level) with "
                        "a lower CRPS. Blue: better than climatology (interval below 0); red: worse (above 0).</p>"
                        + by_lead_table(against_climatology, sample, describe)
                        + "<p><a href='vs_climatology/index.html'>Full scorecard against climatology</a> (CRPS, "
                          "spread/skill and RMSE per variable, level and lead, with units).</p>")
    else:
        headlines.append("no climatology forecast in this pipeline: set baselines.climatology: true to judge "
                         "the models against climatology")
    if against_teacher:
        sections.append("<h2>Fair CRPS change against the teacher, by lead (%)</h2>"
                        "<p>Blue: better than the teacher (interval below 0); red: worse.</p>"
                        + by_lead_table(against_teacher, sample, describe)
                        + "<p><a href='students_vs_teacher/index.html'>Full scorecard against the teacher</a>:</p>"
                          "<a href='students_vs_teacher/index.html'><img src='students_vs_teacher/scorecard.png' "
                          "alt='scorecard: students against the teacher'></a>" + _speed_section(speed))
    if PERSISTENCE in tables:
        sections.append("<p><a href='vs_persistence/index.html'>Full scorecard against persistence</a>.</p>")
    name = manifest.content.get("pipeline", {}).get("name", "pipeline")
    page = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(name)}: forecast scores"
            f"</title><style>{_STYLE}</style></head><body>",
            f"<h1>Pipeline {html.escape(name)}: ensemble forecast scores ({html.escape(region)})</h1>",
            _about(_truth_attrs(workdir), sample, describe, labels, region),
            "<h2>Headlines</h2><ul class='headlines'>"
            + "".join(f"<li><b>{html.escape(line)}</b></li>" for line in headlines) + "</ul>",
            *sections, _selection_section(workdir), run_section(workdir), "</body></html>"]
    with atomic_path(out) as temporary:
        temporary.write_text("\n".join(page), encoding="utf-8")
    return headlines


def _truth_attrs(workdir: Path) -> dict:
    """The teacher's scores file's attributes (`truth_*` describe the data store), or none."""
    path = workdir / "scores" / f"{TEACHER}.nc"
    if not path.is_file():
        return {}
    import xarray as xr

    with xr.open_dataset(path) as scores:
        return dict(scores.attrs)
