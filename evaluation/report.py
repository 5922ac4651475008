"""`gencast-rmmd scorecard`: the PNG, `index.html` and `summary.md` for forecasts against a baseline.

`index.html` shows the PNG, the headline "A better than B on X of N targets
(variable, level, lead)", the optional speedup table and one table per
variable of CRPS, spread/skill ratio and ensemble-mean RMSE for every forecast
and the baseline (cells of ΔCRPS coloured like the scorecard).
`summary.md` has the same headline and tables in markdown. The three files
are replaced together or not at all.
"""

from __future__ import annotations

import contextlib
import html
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.regions import canonical_region
from evaluation.scorecard import (ScoreSet, Timing, compare, comparison_table, headline, lead_label, load_scores,
                                  load_timing, row_label, speedup_table, unique_labels)
from evaluation.scorecard_figure import COLORMAP, PANEL_METRICS, plot_scorecard, text_colour
from gencast_rmmd.io_utils import atomic_path

SCORECARD_FILES = ("scorecard.png", "index.html", "summary.md")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f2f2f2; }
img { max-width: 100%; }
.headline { font-size: 1.2em; font-weight: 600; }
"""


def _format(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


def _row_name(variable: str, key: tuple[int, pd.Timedelta]) -> tuple[str, str]:
    level, lead = key
    return row_label(variable, level), lead_label(lead)


def _delta_colour(value: float, colormap, clip: float) -> str:
    """Background for a ΔCRPS cell: the scorecard's blue–red scale clipped at ±`clip`, with readable text."""
    if not np.isfinite(value):
        return ""
    from matplotlib.colors import to_hex

    rgba = colormap(0.5 + 0.5 * float(np.clip(value / clip, -1.0, 1.0)))
    return f' style="background:{to_hex(rgba)};color:{text_colour(rgba)}"'


def _column_units(column: str, units: str) -> str:
    """A table column's name with its units: the variable's for CRPS and RMSE, 1 for SSR, % for ΔCRPS."""
    if column.endswith("ΔCRPS %"):
        return column
    return f"{column} ({'1' if column.endswith(' SSR') else units})" if units else column


def table_html(variable: str, table: pd.DataFrame, clip: float = 20.0, units: str = "") -> str:
    """One variable's comparison table as an HTML table (ΔCRPS cells coloured on the ±`clip` % scale)."""
    from matplotlib import colormaps

    colormap = colormaps[COLORMAP]
    header = "".join(f"<th>{html.escape(_column_units(name, units))}</th>"
                     for name in ["target", "lead (days)", *table.columns])
    body = []
    for key, row in table.iterrows():
        target, lead = _row_name(variable, key)
        cells = [f"<td>{html.escape(target)}</td>", f"<td>{lead}</td>"]
        for name, value in row.items():
            colour = _delta_colour(value, colormap, clip) if name.endswith("ΔCRPS %") else ""
            cells.append(f"<td{colour}>{_format(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{header}</tr>{''.join(body)}</table>"


def table_markdown(variable: str, table: pd.DataFrame) -> str:
    """One variable's comparison table in GitHub markdown."""
    columns = ["target", "lead (days)", *table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, row in table.iterrows():
        lines.append("| " + " | ".join([*_row_name(variable, key), *(_format(value) for value in row)]) + " |")
    return "\n".join(lines)


def _frame_html(frame: pd.DataFrame) -> str:
    header = "".join(f"<th>{html.escape(str(name))}</th>" for name in [frame.index.name or "", *frame.columns])
    rows = "".join("<tr>" + f"<td>{html.escape(str(index))}</td>" +
                   "".join(f"<td>{_format(value)}</td>" for value in row) + "</tr>"
                   for index, row in frame.iterrows())
    return f"<table><tr>{header}</tr>{rows}</table>"


def _frame_markdown(frame: pd.DataFrame) -> str:
    columns = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join([str(index), *(_format(value) for value in row)]) + " |"
              for index, row in frame.iterrows()]
    return "\n".join(lines)


def _provenance(score_set: ScoreSet) -> str:
    attrs = score_set.dataset.attrs
    parts = [f"{attrs[key]} {noun}" for key, noun in (("member_count", "members"), ("init_count", "inits"))
             if key in attrs]
    if "first_init" in attrs and "last_init" in attrs:
        parts.append(f"{attrs['first_init']} to {attrs['last_init']}")
    return f"{score_set.label}: {', '.join([*parts, f'file {score_set.path}'])}"


def write_scorecard(scores: list[str | Path], baseline: str | Path, out: str | Path, *, region: str = "global",
                    timing: str | Path | None = None) -> list[str]:
    """Write `scorecard.png`, `index.html` and `summary.md` into directory `out`; return the headlines.

    Every file in `scores` is compared with `baseline` on the targets both have.
    With `timing` (see `scorecard.load_timing`) a speedup table is added.
    """
    out = Path(out)
    region = canonical_region(region)
    loaded = unique_labels([load_scores(path) for path in scores] + [load_scores(baseline)])
    candidates, reference = loaded[:-1], loaded[-1]
    comparisons = {candidate.label: {metric: compare(candidate, reference, metric, region)
                                     for metric, _ in PANEL_METRICS} for candidate in candidates}
    headlines = [headline(candidate, reference, region).sentence() for candidate in candidates]
    timings: dict[str, Timing] = (load_timing(timing, [c.label for c in candidates], reference.label)
                                  if timing else {})
    speedups = speedup_table(timings, reference.label) if timings else None
    variables = list(dict.fromkeys(name for candidate in candidates for name in candidate.variables
                                   if name in reference.variables))
    tables = {name: comparison_table(candidates, reference, name, region) for name in variables}
    sources = [_provenance(score_set) for score_set in loaded]
    # The three files are rendered to temporaries and renamed only when all are complete: a rerun that
    # fails leaves the previous scorecard whole, never a new PNG beside an old page.
    with contextlib.ExitStack() as stack:
        png, page, summary = (stack.enter_context(atomic_path(out / name)) for name in SCORECARD_FILES)
        clip = plot_scorecard(comparisons, reference.label, region, png)
        units = {name: str(reference.dataset[name].attrs.get("units", "")) for name in variables}
        _write_html(page, headlines, speedups, tables, sources, region, clip, units)
        _write_markdown(summary, headlines, speedups, tables, sources, region, units)
    return headlines


def _heading(name: str, units: str) -> str:
    return f"{name} ({units})" if units else name


def _write_html(path: Path, headlines: list[str], speedups: pd.DataFrame | None, tables: dict[str, pd.DataFrame],
                sources: list[str], region: str, clip: float, units: dict[str, str]) -> None:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Scorecard</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Scorecard ({html.escape(region.replace('_', ' '))})</h1>",
             *(f"<p class='headline'>{html.escape(line)}</p>" for line in headlines),
             "<ul>" + "".join(f"<li>{html.escape(source)}</li>" for source in sources) + "</ul>",
             "<img src='scorecard.png' alt='scorecard: relative CRPS and RMSE differences'>",
             f"<p>Colour: relative difference 100·(A − B)/B in %, blue where A is better, clipped at ±{clip:g} %. "
             "CRPS: fair CRPS; SSR: spread/skill ratio with the √((M+1)/M) factor (1 is calibrated, unitless); "
             "RMSE: ensemble-mean RMSE. CRPS and RMSE are in the variable's units, named in each table.</p>"]
    if speedups is not None:
        parts += ["<h2>Speed</h2>", _frame_html(speedups)]
    for name, table in tables.items():
        parts += [f"<h2>{html.escape(_heading(name, units[name]))}</h2>",
                  table_html(name, table, clip, units[name])]
    parts.append("</body></html>")
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(parts), encoding="utf-8")


def _write_markdown(path: Path, headlines: list[str], speedups: pd.DataFrame | None,
                    tables: dict[str, pd.DataFrame], sources: list[str], region: str, units: dict[str, str]) -> None:
    parts = [f"# Scorecard ({region.replace('_', ' ')})", "", *(f"- **{line}**" for line in headlines), "",
             *(f"- {source}" for source in sources), "", "![scorecard](scorecard.png)", "",
             "ΔCRPS % = 100·(CRPS_A − CRPS_B)/CRPS_B (negative: A better). CRPS: fair CRPS; SSR: spread/skill "
             "ratio with the √((M+1)/M) factor; RMSE: ensemble-mean RMSE.", ""]
    if speedups is not None:
        parts += ["## Speed", "", _frame_markdown(speedups), ""]
    for name, table in tables.items():
        parts += [f"## {_heading(name, units[name])}", "", table_markdown(name, table), ""]
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(parts), encoding="utf-8")
