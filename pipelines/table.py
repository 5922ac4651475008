"""The RMMD table of a pipeline work directory (`table.json`, `table.md`), every figure on the TEST inits.

`build_table` reads what the stages wrote: `forecasts/LABEL.nc` and `forecasts/inits.json`, `scores/LABEL.nc`
(`gencast-rmmd evaluate`), `selection/NAME.json` (`pipelines.selection`), `scorecard/speed.json` (the `speed`
stage), `configs/pipeline.yaml` and `manifest.json`. It works with whatever exists: a row whose forecast is
missing is listed as pending, and a target that needs it is "not measured yet". Region: `global` by default.

Per row, against the teacher (targets: the teacher's variable@level that the truth has; leads: the teacher's):
- CRPS change: mean over targets and leads of 100 (CRPS / CRPS_teacher − 1), the fair CRPS averaged over the
  inits first (`evaluation.compare.change_pct`), with the 95 % interval of the paired moving-block bootstrap
  over the inits (blocks ≥ the longest lead; the same draws as `gencast-rmmd compare --seed`); win rate: the
  share of (target, lead) cells with a lower init-mean CRPS (`evaluation.compare.win_rate`);
- RMSE change: mean over cells of 100 (RMSE / RMSE_teacher − 1), ensemble-mean RMSE from the scores file;
- SSR per lead: the spread/skill ratio averaged over targets; "closer" at a lead when the mean over targets
  of |SSR − 1| is at most the teacher's;
- rank-histogram outer-bin excess: (h_0 + h_M) (M + 1) / 2 − 1, the two outer bins' mean frequency relative
  to a flat histogram's 1 / (M + 1), averaged over targets and leads (0: flat outer bins; > 0: the truth
  falls outside the ensemble too often, under-dispersion; < 0: over-dispersion); the teacher's is its row's;
- speedup: the teacher's measured seconds per 12 h step over the row's (speed.json; an extra seed row is
  timed as its row), and its denoiser calls per step (speed.json, else the test forecast's `nfe_per_step`);
- gap closed: mean over cells of (CRPS_teacher − CRPS_row) / (CRPS_teacher − CRPS_reference), over the cells
  where the reference leads the teacher by more than `GAP_MINIMUM` of the teacher's CRPS (a tiny or
  negative gap makes the ratio noise; those cells are left out and counted);
- chosen on validation: the grid values `select.NAME` chose (`fixed`: the row had no grid).

Then the pairs of `ORDERING` (each present row against the present one before it) and every distilled row
against the teacher sampler row with the nearest denoiser calls per step; the seeds of every row with extra
seed rows (`seed_summary`); the zonal spectrum check (`evaluation.spectrum`); and the targets as measured.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.compare import (MINIMUM_DRAWS, block_bootstrap_indices, block_length, change_pct, check_same_layout,
                                crps_per_init, forecast_layout, interval, target_name, win_rate)
from evaluation.io import open_forecast
from gencast_rmmd.errors import UserInputError
from pipelines.states import StageState

TEACHER, REFERENCE, BASELINES = "teacher", "reference", ("persistence", "climatology")
ORDERING = ("mmd", "mmd_tuned", "rmmd_offline", "rmmd")      # each expected to beat the one before
# The 8-step on-policy RMMD rows D's first targets are checked for (each that the config has): the method as
# the paper gives it, and ours with the rolled-out reward.
MAIN_ROWS, FOUR_STEP_ROW = ("rmmd", "rmmd_rollout"), "rmmd_4step"
MAIN_WIN_RATE, MAIN_SEEDS, FOUR_STEP_WIN_RATE, FOUR_STEP_SPEEDUP = 0.90, 3, 0.75, 9.0
GAP_MINIMUM = 0.01            # gap cells where CRPS_teacher − CRPS_reference ≤ 1 % of CRPS_teacher are left out
PENDING = "pending"
NOT_MEASURED = "not measured yet"  # a target whose rows are not all scored
_SEED_LABEL = re.compile(r"^(?P<base>.+)_seed(?P<seed>\d+)$")


def table_stage_spec(labels: list[str], selections: list[str], timed: bool = True, store: str = "STORE",
                     draws: int = 5000) -> dict:
    """How a `table` stage (group 7, after `scorecard`) wires into `pipelines.stages`: inputs, command, outputs.

    `labels`: every test forecast (teacher, rows, extra seeds, teacher samplers, reference, persistence,
    climatology), each read as `forecast.LABEL.forecast` and `evaluate.LABEL.scores`; `selections`: the grid
    rows, read as `select.NAME.selection`; `timed`: whether the `speed` stage runs (`speed.speed`). The
    settings that change the table are draws, seed and region.
    """
    inputs = ["forecast.inits.inits", *(f"forecast.{label}.forecast" for label in labels),
              *(f"evaluate.{label}.scores" for label in labels),
              *(f"select.{name}.selection" for name in selections), *(["speed.speed"] if timed else [])]
    return {"name": "table", "group": 7, "settings": {"draws": draws, "seed": 0, "region": "global"},
            "inputs": inputs,
            "command": ["pipeline", "task", "table", "--workdir", ".", "--truth", store, "--out", "table",
                        "--draws", str(draws)],
            "outputs": {"json": ("file", "table/table.json"), "markdown": ("file", "table/table.md")}}


@dataclass(frozen=True)
class RowPlan:
    """A row the pipeline forecasts on test: its label, kind and (extra seed rows) the row it repeats."""

    label: str
    kind: str                 # teacher, teacher_sampler, student, seed, reference, baseline
    base: str | None = None
    seed: int | None = None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict | None:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


# Forecast files: NetCDF, or zarr stores (`forecast.format: zarr`).
FORECAST_FILES = (".nc", ".zarr")


def forecast_path(workdir: Path, label: str) -> Path | None:
    """The test forecast of `label` in a work directory (`forecasts/LABEL.nc` or `.zarr`), None if absent."""
    return next((path for suffix in FORECAST_FILES if (path := workdir / "forecasts" / f"{label}{suffix}").exists()),
                None)


def planned_rows(workdir: Path, pipeline: dict, manifest: dict, rows: list[str] | None = None) -> list[RowPlan]:
    """The rows of the table in order: teacher, teacher samplers, students (each with its seeds), reference,
    persistence, climatology: the pipeline config's rows, and any other `forecasts/*.nc` there is. `rows`
    keeps only those (and the teacher and the reference, which every row is measured against)."""
    stages = manifest.get("stages", {})
    present = sorted({path.stem for path in (workdir / "forecasts").glob("*") if path.suffix in FORECAST_FILES
                      and "." not in path.stem})
    plans = {TEACHER: RowPlan(TEACHER, "teacher")}
    plans.update({label: RowPlan(label, "teacher_sampler") for label in pipeline.get("teacher_samplers") or {}})
    for name, entry in (pipeline.get("distill") or {}).items():
        plans[name] = RowPlan(name, "student")
        plans.update({f"{name}_seed{s}": RowPlan(f"{name}_seed{s}", "seed", name, s) for s in entry.get("seeds", [])})
    for name, entry in (pipeline.get("best_of") or {}).items():      # seeds of the row ranked best on validation
        best = (_read_json(workdir / "selection" / f"{name}.json") or {}).get("chosen", {}).get("row", name)
        plans.update({f"{name}_seed{s}": RowPlan(f"{name}_seed{s}", "seed", best, s) for s in entry.get("seeds", [])})
    for label in present:
        match = _SEED_LABEL.match(label)
        if label in plans or label == REFERENCE or label in BASELINES:
            continue
        plans[label] = (RowPlan(label, "seed", match["base"], int(match["seed"])) if match
                        else RowPlan(label, "teacher_sampler" if label.startswith("teacher_") else "student"))
    simulated = (pipeline.get("data") or {}).get("simulate") and (pipeline.get("reference") or {}).get("enabled", True)
    if stages.get(f"forecast.{REFERENCE}", {}).get("state") != StageState.NOT_APPLICABLE and (simulated or REFERENCE in present):
        plans[REFERENCE] = RowPlan(REFERENCE, "reference")
    climatology = (pipeline.get("baselines") or {}).get("climatology", True)
    plans.update({label: RowPlan(label, "baseline") for label in BASELINES
                  if label in present or (pipeline and (label == "persistence" or climatology))})
    ordered = []
    for kind in ("teacher", "teacher_sampler", "student", "reference", "baseline"):
        for plan in (plan for plan in plans.values() if plan.kind == kind):
            ordered += [plan, *sorted((p for p in plans.values() if p.base == plan.label), key=lambda p: p.seed)]
        if kind == "student":      # seed rows whose row is not in the config
            ordered += [plan for plan in plans.values() if plan.kind == "seed" and plan.base not in plans]
    return [plan for plan in ordered if rows is None or plan.label in rows or plan.label in (TEACHER, REFERENCE)]


def _header(workdir: Path, manifest: dict, truth_url: str, region: str) -> dict:
    from gencast_rmmd.config import REPO_ROOT
    from pipelines.digests import file_sha256

    pipeline = manifest.get("pipeline", {})
    config_file = pipeline.get("config_file")
    shown = config_file
    if config_file and Path(config_file).is_relative_to(REPO_ROOT):
        shown = str(Path(config_file).relative_to(REPO_ROOT))
    resolved = workdir / "configs" / "pipeline.yaml"
    run = manifest.get("stages", {}).get(TEACHER, {}).get("outputs", {}).get("run", {})
    validation = _read_json(workdir / "validation" / "inits.json") or next(
        (_read_json(path) for path in sorted((workdir / "selection").glob("*.json"))), None) or {}
    stages = manifest.get("stages", {}).values()
    test_inits = (_read_json(workdir / "forecasts" / "inits.json") or {}).get("inits") or []
    return {"test_inits": len(test_inits) or None, "pipeline": pipeline.get("name") or workdir.name,
            "config_file": shown,
            "config_sha256": pipeline.get("config_sha256"),
            "config_file_sha256": file_sha256(Path(config_file)) if config_file and Path(config_file).is_file()
            else None,
            "resolved_config_sha256": file_sha256(resolved) if resolved.is_file() else None,
            "git_commit": manifest.get("environment", {}).get("git_commit"),
            "teacher_checkpoint": {key: run.get(key) for key in ("checkpoint", "step", "params_sha256",
                                                                 "ema_params_sha256")},
            "validation_inits": len(validation.get("inits") or validation.get("validation_inits") or []) or None,
            "wall_seconds": float(sum(stage.get("seconds") or 0.0 for stage in stages)),
            "stages_done": sum(stage.get("state") == StageState.DONE for stage in stages), "stages": len(stages),
            "truth": truth_url, "region": region,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _chosen(workdir: Path, plan: RowPlan) -> str | None:
    """'key=value, …' that select.NAME chose; 'fixed' for a row without a grid; a seed row: its row's and seed."""
    if plan.kind not in ("teacher_sampler", "student", "seed"):
        return None
    selection = _read_json(workdir / "selection" / f"{plan.base or plan.label}.json")
    values = ", ".join(f"{key}={value}" for key, value in selection["chosen"]["values"].items()) if selection \
        else "fixed"
    return f"{values}; seed {plan.seed}" if plan.kind == "seed" else values


def _speed(speed: dict, plan: RowPlan, forecast: Path | None) -> dict:
    """The row's timing from speed.json; its denoiser calls from there, else from its test forecast's
    `nfe_per_step` (written by `forecast`), so that a partial table pairs rows before the `speed` stage runs."""
    models = speed.get("models", {})
    entry, teacher = models.get(plan.base or plan.label), models.get(TEACHER)
    calls = entry["nfe_per_step"] if entry else None
    if calls is None and forecast is not None:
        recorded = open_forecast(str(forecast)).attrs.get("nfe_per_step")
        calls = int(recorded) if recorded is not None else None
    return {"speedup": teacher["seconds_per_step"] / entry["seconds_per_step"] if entry and teacher else None,
            "denoiser_calls": calls, "seconds_per_step": entry["seconds_per_step"] if entry else None}


def _cells(dataset, targets: list[str], leads: list[int], select) -> np.ndarray:
    """`select(variable)` (dims lead_time[, level], ...) of every target at `leads`: [target, lead, ...]."""
    stacked = []
    for target in targets:
        variable, _, level = target.partition("@")
        array = select(variable)
        array = array.sel(level=int(level)) if level else array
        hours = [int(round(value / np.timedelta64(1, "h"))) for value in array["lead_time"].values]
        stacked.append(array.isel(lead_time=[hours.index(lead) for lead in leads]).values)
    return np.stack(stacked).astype(np.float64)


def score_figures(scores_path: Path, targets: list[str], leads: list[int], region: str) -> dict | None:
    """RMSE and SSR [target, lead] and the rank-histogram outer-bin excess of a scores file (None: absent)."""
    from evaluation.regions import canonical_region
    from evaluation.scorecard import load_scores
    from evaluation.scores_file import RANK_HISTOGRAM_SUFFIX

    if not scores_path.is_file():
        return None
    dataset = load_scores(scores_path).dataset
    region = canonical_region(region)
    try:
        rmse, ssr = (_cells(dataset, targets, leads, lambda v, m=metric: dataset[v].sel(metric=m, region=region))
                     for metric in ("ensemble_mean_rmse", "spread_skill_ratio"))
        histogram = _cells(dataset, targets, leads,
                           lambda v: dataset[f"{v}{RANK_HISTOGRAM_SUFFIX}"].sel(region=region))
    except (KeyError, ValueError):
        return None            # scored on other targets, leads or regions than the teacher's forecast
    bins = histogram.shape[-1]
    outer = float(np.mean((histogram[..., 0] + histogram[..., -1]) * bins / 2.0 - 1.0)) if bins > 1 else None
    return {"rmse": rmse, "ssr": ssr, "outer_excess": outer}


def _lead_mean(values: np.ndarray) -> np.ndarray:
    """Mean over targets (axis 0) of the finite values per lead; NaN where none is finite (one member: no SSR)."""
    finite = np.isfinite(values)
    return np.where(finite.any(axis=0), np.where(finite, values, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1),
                    np.nan)


def gap_share(table: dict, teacher: dict, reference: dict) -> tuple[float | None, int, int]:
    """Mean over cells of (T − R) / (T − Ref) (init-mean CRPS), over the cells with T − Ref > `GAP_MINIMUM` T.

    Returns (share, cells used, cells); share None when no cell has a gap.
    """
    means = [np.stack([source[name].mean(axis=0) for name in teacher]) for source in (teacher, table, reference)]
    crps_teacher, crps_row, crps_reference = means
    gap = crps_teacher - crps_reference
    used = gap > GAP_MINIMUM * crps_teacher
    share = float(np.mean(((crps_teacher - crps_row)[used]) / gap[used])) if used.any() else None
    return share, int(used.sum()), int(used.size)


def _pair(first: str, second: str, points: dict, resampled: dict) -> dict:
    """first − second in CRPS-change points, its interval and the share of draws with first ahead (as compare)."""
    difference = resampled[first] - resampled[second]
    return {"a": first, "b": second, "points": points[first] - points[second], "interval_95": interval(difference),
            "a_ahead_fraction": float(np.mean(difference < 0))}


def seed_summary(labels: list[str], points: dict, resampled: dict, wins: dict, draws: int, seed: int) -> dict:
    """Mean ± sd (ddof 1) over seeds of the CRPS change, and its interval over seeds × inits.

    The interval is a two-stage bootstrap: each draw resamples the init blocks (the rows' shared draws) and,
    independently, the seeds with replacement (generator seed + 1), and averages the drawn seeds' changes.
    """
    changes = np.array([points[label] for label in labels])
    chosen = np.random.default_rng(seed + 1).integers(0, len(labels), size=(draws, len(labels)))
    per_draw = np.stack([resampled[label] for label in labels])            # [seed, draw]
    averaged = per_draw[chosen, np.arange(draws)[:, None]].mean(axis=1)
    return {"row": labels[0], "seeds": labels, "count": len(labels), "mean": float(changes.mean()),
            "sd": float(changes.std(ddof=1)) if len(labels) > 1 else None, "interval_95": interval(averaged),
            "win_rates": [wins[label] for label in labels], "min_win_rate": min(wins[label] for label in labels)}


def _spectrum(forecasts: dict[str, Path], labels: list[str], truth, layout) -> dict:
    from evaluation.spectrum import SPECTRUM_LEADS, SPECTRUM_TARGETS, ZONAL_BANDS, band_label, band_powers

    targets = [(variable, level) for variable, level in SPECTRUM_TARGETS
               if target_name(variable, level) in layout.targets and variable in truth.data_vars]
    leads = [lead for lead in SPECTRUM_LEADS if lead in layout.lead_hours]
    section = {"bands": [band_label(band) for band in ZONAL_BANDS], "leads_hours": leads,
               "targets": [target_name(*target) for target in targets], "lat_range": [-90.0, 90.0],
               "truth": {}, "ratios": {}}
    if not targets or not leads:
        return section
    for label in labels:
        powers = band_powers(str(forecasts[label]), truth, targets, leads)
        if label == TEACHER:
            section["truth"] = {name: powers["truth"].sel(target=name).values for name in section["targets"]}
        section["ratios"][label] = {name: (powers["forecast"] / powers["truth"]).sel(target=name).values
                                    for name in section["targets"]}
    return section


def _target(text: str, status: str, detail: str) -> dict:
    return {"target": text, "status": status, "detail": detail}


def _main_targets(main_row: str, rows: dict[str, dict], scored: set[str], seeds: list[dict]) -> list[dict]:
    """D's two targets for one 8-step on-policy RMMD row: the win rate and interval across its seeds, and SSR."""
    found = []
    main = next((entry for entry in seeds if entry["row"] == main_row), None)
    text = (f"8-step RMMD ({main_row}): win rate ≥ {MAIN_WIN_RATE:.0%}, the 95 % interval of the mean CRPS "
            f"change below 0, across ≥ {MAIN_SEEDS} seeds")
    if main_row not in scored:
        found.append(_target(text, NOT_MEASURED, f"{main_row} is not scored"))
    else:
        measured = main or {"count": 1, "min_win_rate": rows[main_row]["win_rate"],
                            "interval_95": rows[main_row]["interval_95"]}
        low, high = measured["interval_95"]
        detail = (f"{measured['count']} seed(s): lowest win rate {measured['min_win_rate']:.1%}, interval "
                  f"[{low:+.2f}, {high:+.2f}] %")
        met = measured["min_win_rate"] >= MAIN_WIN_RATE and high < 0
        found.append(_target(text, NOT_MEASURED if measured["count"] < MAIN_SEEDS else ("met" if met else "not met"),
                             detail))
    text = f"8-step RMMD ({main_row}): SSR at every lead at least as close to 1 as the teacher's"
    closer = rows.get(main_row, {}).get("ssr_closer")
    found.append(_target(text, NOT_MEASURED, f"{main_row} has no scores") if closer is None else _target(
        text, "met" if all(closer) else "not met", f"closer at {sum(closer)} of {len(closer)} leads"))
    return found


def targets_section(rows: dict[str, dict], seeds: list[dict], pairs: list[dict], sampler_pairs: list[dict],
                    plans: list[RowPlan]) -> list[dict]:
    """The issue's targets as measured: met, not met, or not measured yet (a row it needs is absent)."""
    scored = {label for label, row in rows.items() if row["status"] == "scored"}
    found = []
    planned = {plan.label for plan in plans}
    for main_row in (row for row in MAIN_ROWS if row in planned):
        found += _main_targets(main_row, rows, scored, seeds)
    text = f"4-step RMMD ({FOUR_STEP_ROW}): ≥ {FOUR_STEP_WIN_RATE:.0%} wins at ≥ {FOUR_STEP_SPEEDUP:g}x speedup"
    four = rows.get(FOUR_STEP_ROW, {})
    if FOUR_STEP_ROW not in scored or four.get("speedup") is None:
        found.append(_target(text, NOT_MEASURED, f"{FOUR_STEP_ROW} is not scored and timed"))
    else:
        met = four["win_rate"] >= FOUR_STEP_WIN_RATE and four["speedup"] >= FOUR_STEP_SPEEDUP
        found.append(_target(text, "met" if met else "not met",
                             f"win rate {four['win_rate']:.1%} at {four['speedup']:.2f}x"))
    by_row = {pair["a"]: pair for pair in sampler_pairs}
    for plan in plans:
        if plan.kind != "student":
            continue
        text = f"{plan.label} beats the teacher's own sampler at ~the same denoiser calls"
        pair = by_row.get(plan.label)
        if pair is None:
            found.append(_target(text, NOT_MEASURED,
                                 f"{plan.label} or a teacher sampler row with its denoiser calls is not scored"))
        else:
            found.append(_target(text, "met" if pair["points"] < 0 else "not met",
                                 f"{pair['points']:+.2f} points vs {pair['b']}"))
    text = "ordering " + " → ".join(ORDERING) + ": each row better than the one before"
    detail = "; ".join(f"{pair['a']} − {pair['b']} {pair['points']:+.2f} points" for pair in pairs)
    absent = [name for name in ORDERING if name not in scored]
    found.append(_target(text, NOT_MEASURED, f"not scored: {', '.join(absent)}" + (f"; {detail}" if detail else ""))
                 if absent else _target(text, "met" if all(pair["points"] < 0 for pair in pairs) else "not met",
                                        detail))
    return found


def _plain(value):
    """JSON-native copy: numpy scalars and arrays, tuples → lists; non-finite floats → None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def build_table(workdir: Path, truth_url: str, rows: list[str] | None = None, draws: int = 5000, seed: int = 0,
                region: str = "global") -> dict:
    """The table of the pipeline in `workdir` (see the module docstring), JSON-native; `rows` narrows the rows."""
    from evaluation.regions import REGION_ALIASES, REGIONS, canonical_region
    from gencast_rmmd.data.stores import open_dataset

    workdir = Path(workdir)
    if not workdir.is_dir() or not ((workdir / "manifest.json").is_file() or (workdir / "forecasts").is_dir()):
        raise UserInputError(f"{workdir} is not a pipeline work directory (no manifest.json, no forecasts/); give "
                             "the --workdir of `gencast-rmmd pipeline run`")
    if draws < MINIMUM_DRAWS:
        raise UserInputError(f"--draws must be at least {MINIMUM_DRAWS}, got {draws}")
    if region not in REGIONS and region not in REGION_ALIASES:
        raise UserInputError(f"unknown --region {region!r}; known: {', '.join(REGIONS)}")
    region = canonical_region(region)
    manifest = _read_json(workdir / "manifest.json") or {}
    plans = planned_rows(workdir, _read_yaml(workdir / "configs" / "pipeline.yaml") or {}, manifest, rows)
    forecasts = {plan.label: path for plan in plans if (path := forecast_path(workdir, plan.label)) is not None}
    result = {"header": _header(workdir, manifest, truth_url, region), "rows": [], "pairs": [], "sampler_pairs": [],
              "seeds": [], "spectrum": {}, "targets": []}
    row_figures = {plan.label: {"label": plan.label, "kind": plan.kind, "status": PENDING} for plan in plans}
    if TEACHER in forecasts:
        _measure(workdir, plans, forecasts, open_dataset(truth_url), region, draws, seed, result, row_figures)
    else:
        for label in forecasts:
            row_figures[label]["status"] = "forecast present; the teacher's forecast is pending"
    result["rows"] = list(row_figures.values())
    result["targets"] = targets_section(row_figures, result["seeds"], result["pairs"], result["sampler_pairs"], plans)
    return _plain(result)


def _measure(workdir: Path, plans: list[RowPlan], forecasts: dict[str, Path], truth, region: str, draws: int,
             seed: int, result: dict, row_figures: dict[str, dict]) -> None:
    """Score every present forecast against the teacher's and fill `result` and `row_figures` in place."""
    layout = forecast_layout(str(forecasts[TEACHER]))
    targets = [name for name in layout.targets if name.split("@")[0] in truth.data_vars]
    leads, block_hours = layout.lead_hours, float(max(layout.lead_hours))
    result["header"].update({"test_inits": int(layout.init_times.size),
                             "first_init": str(np.datetime_as_string(layout.init_times[0], unit="m")),
                             "last_init": str(np.datetime_as_string(layout.init_times[-1], unit="m")),
                             "members": int(open_forecast(str(forecasts[TEACHER])).sizes["number"]),
                             "leads_hours": leads, "targets": targets,
                             "bootstrap": {"method": "paired moving-block bootstrap over the test inits (Künsch 1989)",
                                           "block_hours": block_hours, "draws": draws, "seed": seed,
                                           "block_inits": block_length(layout.init_times, block_hours)}})
    indices = block_bootstrap_indices(layout.init_times, block_hours, draws, np.random.default_rng(seed))
    variables = sorted({name.split("@")[0] for name in targets})
    tables = {}
    for label, path in forecasts.items():
        try:
            if label != TEACHER:
                check_same_layout(layout, forecast_layout(str(path)), leads, targets)
            table = crps_per_init(str(path), truth, region, lead_hours=leads, variables=variables)
            tables[label] = {name: table[name] for name in targets}
        except UserInputError as error:
            row_figures[label]["status"] = f"not comparable: {error}"
    teacher = tables[TEACHER]
    everything = np.arange(layout.init_times.size)[None]
    points = {label: float(change_pct(table, teacher, everything)[0]) for label, table in tables.items()}
    resampled = {label: change_pct(table, teacher, indices) for label, table in tables.items()}
    wins = {label: win_rate(table, teacher) for label, table in tables.items()}
    speed = _read_json(workdir / "scorecard" / "speed.json") or {}
    scores = {label: score_figures(workdir / "scores" / f"{label}.nc", targets, leads, region) for label in tables}
    teacher_scores = scores[TEACHER]
    for plan in plans:
        row = row_figures[plan.label]
        row.update(_speed(speed, plan, forecasts.get(plan.label)), chosen=_chosen(workdir, plan))
        if plan.label not in tables:
            continue
        cells = len(targets) * len(leads)
        row.update(status="scored", crps_change_pct=points[plan.label], interval_95=interval(resampled[plan.label]),
                   win_rate=wins[plan.label], targets_won=int(round(wins[plan.label] * cells)), cells=cells)
        if REFERENCE in tables:
            share, used, total = gap_share(tables[plan.label], teacher, tables[REFERENCE])
            row.update(gap_share=share, gap_cells=used, gap_cells_total=total)
        own = scores[plan.label]
        if own is not None:
            row.update(ssr_by_lead=_lead_mean(own["ssr"]), rank_outer_excess=own["outer_excess"])
        if own is not None and teacher_scores is not None:
            distance = [_lead_mean(np.abs(figures["ssr"] - 1.0)) for figures in (own, teacher_scores)]
            row.update(rmse_change_pct=float(np.mean(100.0 * (own["rmse"] / teacher_scores["rmse"] - 1.0))),
                       ssr_closer=[bool(a <= b) for a, b in zip(*distance)])
    present = [name for name in ORDERING if name in tables]
    result["pairs"] = [_pair(later, earlier, points, resampled) for earlier, later in zip(present, present[1:])]
    samplers = [plan.label for plan in plans if plan.kind == "teacher_sampler" and plan.label in tables
                and row_figures[plan.label].get("denoiser_calls")]
    for plan in plans:
        calls = row_figures[plan.label].get("denoiser_calls")
        if plan.kind == "student" and plan.label in tables and calls and samplers:
            nearest = min(samplers, key=lambda label: (abs(row_figures[label]["denoiser_calls"] - calls),
                                                       row_figures[label]["denoiser_calls"]))
            result["sampler_pairs"].append({**_pair(plan.label, nearest, points, resampled), "a_calls": calls,
                                            "b_calls": row_figures[nearest]["denoiser_calls"]})
    for plan in plans:
        repeats = [p.label for p in plans if p.base == plan.label and p.label in tables]
        if plan.kind == "student" and plan.label in tables and repeats:
            entry = seed_summary([plan.label, *repeats], points, resampled, wins, draws, seed)
            result["seeds"].append({**entry, "pending": [p.label for p in plans if p.base == plan.label
                                                         and p.label not in tables]})
    spectrum_rows = [plan.label for plan in plans if plan.kind in ("teacher", "student") and plan.label in tables]
    result["spectrum"] = _spectrum(forecasts, spectrum_rows, truth, layout)


def write_table(result: dict, out_dir: Path) -> list[Path]:
    """Write `table.json` and `table.md` into `out_dir` atomically; return their paths."""
    from gencast_rmmd.io_utils import atomic_path, write_json_atomic
    from pipelines.table_markdown import markdown

    out_dir = Path(out_dir)
    paths = [out_dir / "table.json", out_dir / "table.md"]
    write_json_atomic(paths[0], result)
    with atomic_path(paths[1]) as temporary:
        temporary.write_text(markdown(result), encoding="utf-8")
    return paths
