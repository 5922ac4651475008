"""Pipeline stage steps that are not product commands: `gencast-rmmd pipeline task data|inits|select|select-best|
devices|speed|scorecards|table|gate`.

Hidden from `gencast-rmmd pipeline --help`: the stages call them, users need not.

- `data`: simulate the embedded store (or check the given one) with the
  product's `data simulate` / `data check`, then write `summary.json`: the
  store, whether it was simulated, each split's range and fingerprint (store
  attributes, variables, levels and the split's model times: cheap, and the
  same for the same data wherever the work directory lies);
- `inits`: choose forecast initialisation times in the test (or validation) split;
- `select`: choose a grid row's candidate on validation (`pipelines.selection`);
- `select-best`: rank a `best_of` entry's rows by their chosen runs on validation;
- `devices`: print the devices a training stage sees (with `distributed.cpu_devices`);
- `speed`: time a 12 h step of the teacher, every student and teacher sampler
  row (`gencast_rmmd.forecast.speed`), writing details and the scorecard's `timing.json`;
- `scorecards`: the product's `scorecard` command against the teacher
  (students and teacher sampler rows, with the speed table), against
  climatology and against persistence (every other forecast), then the
  landing page `scorecard/index.html` (`pipelines.report`);
- `table`: the RMMD table of a work directory, `table.json` and `table.md`
  (`pipelines.table`; its inputs: `pipelines.table.table_stage_spec`);
- `gate`: the product's `gate` on the run's scores with the teacher's measured training time
  (`gate/timings.json`), writing `gate/verdict.{json,md}`.

Exit codes as the product's: 0 ok, 2 bad input (one line), 1 internal error, 3 a gate failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gencast_rmmd.errors import UserInputError

app = typer.Typer(no_args_is_help=True, help="Pipeline stage steps that are not product commands.")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_product_command(args: list[str]) -> None:
    """Run `gencast-rmmd ARGS` (a `data` or evaluation command) in this process, echoing it like a shell would.

    The commands are mounted on an app of their own, not imported from `gencast_rmmd.cli` (which mounts
    `pipelines`): the layer rule's pipelines -> commands. Errors propagate to the task's own entry point,
    `gencast-rmmd pipeline task ...`, which maps them to its exit code as any command's.
    """
    import shlex

    from evaluation import cli as evaluation_cli
    from gencast_rmmd.commands import data as data_commands

    product = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    product.add_typer(data_commands.app, name="data")
    evaluation_cli.register(product)
    _say(f"$ gencast-rmmd {shlex.join(args)}")
    code = product(args=args, prog_name="gencast-rmmd", standalone_mode=False)
    if isinstance(code, int) and code:
        raise typer.Exit(code)


def _may_simulate(path: str) -> bool:
    """A local store that is missing or was written by the simulator (anything else is opened as it is)."""
    if "://" in path:
        return False
    from gencast_rmmd.data.simulator.store import existing_store_hash

    return not Path(path).exists() or existing_store_hash(Path(path)) is not None


def split_fingerprints(source, store_attrs: dict) -> dict:
    """Per split: its time range, model-time count and a fingerprint of what the store holds for it."""
    from pipelines.digests import sha256_json

    dataset = source.dataset
    layout = {name: [list(map(str, dataset[name].dims)), [size for dim, size in dataset[name].sizes.items()
                                                          if dim != "time"], str(dataset[name].dtype)]
              for name in sorted(map(str, dataset.data_vars))}
    common = {"location": source.report.location, "variables": layout, "levels": list(source.config.levels),
              "static": sorted(source.config.variables.static),
              "store_attrs": {key: str(value) for key, value in store_attrs.items()}}
    splits = {}
    for split in ("train", "validation", "test"):
        start, end = source.time_range(split)
        times = source.times[(source.times >= start) & (source.times <= end)]
        splits[split] = {"start": start.isoformat(), "end": end.isoformat(), "count": len(times),
                         "fingerprint": sha256_json({**common, "times": [t.isoformat() for t in times]})}
    return splits


@app.command("data")
def data(config: Annotated[Path, typer.Option("--config", help="Resolved data config (DIR/configs/data.yaml).")],
         out: Annotated[Path, typer.Option("--out", help="summary.json to write.")],
         simulate: Annotated[bool, typer.Option("--simulate", help="Simulate the store when missing.")] = False
         ) -> None:
    """Open (or simulate) the store, check it against the data config and write its summary."""
    from gencast_rmmd.config import DataFileConfig, load_config
    from gencast_rmmd.data.source import DataSource
    from gencast_rmmd.data.stores import open_dataset
    from gencast_rmmd.io_utils import write_json_atomic

    data_config = load_config(config, DataFileConfig).data
    simulated = simulate and _may_simulate(data_config.path)
    if simulate and not simulated:
        _say(f"{data_config.path} is not a store written by the simulator: opening it as it is "
             "(no perfect-model reference)")
    if simulated:
        _run_product_command(["data", "simulate", "--out", data_config.path, "--config", str(config)])
    _run_product_command(["data", "check", "--data", data_config.path, "--config", str(config)])
    source = DataSource.open(data_config)
    summary = {"location": source.report.location, "path": data_config.path, "simulated": simulated,
               "step_hours": data_config.step_hours, "first_time": source.times[0].isoformat(),
               "last_time": source.times[-1].isoformat(),
               "splits": split_fingerprints(source, dict(open_dataset(data_config.path).attrs))}
    write_json_atomic(out, summary)
    for split, entry in summary["splits"].items():
        _say(f"{split:<10} {entry['start']} .. {entry['end']}: {entry['count']} model times, "
             f"fingerprint {entry['fingerprint'][:12]}")


def choose_inits(times, split_range, step, input_frames: int, steps: int, every_hours: int,
                 count: int | None, explicit: list[str], spacing: str = "first", split: str = "test") -> list:
    """Init times whose input frames and leads are all in `times` and whose last lead is in the split.

    Explicit times must all qualify (UserInputError naming the first that does
    not). Otherwise the candidates are the first qualifying time of the split
    and then each one at least `every_hours` after the previous; `spacing:
    first` keeps the first `count` of them, `even` the `count` at evenly spaced
    positions among all of them (the first and the last included), so that
    they span the whole split.
    """
    import numpy as np
    import pandas as pd

    available = set(pd.DatetimeIndex(times))
    start, end = split_range
    section = "forecast" if split == "test" else split

    def qualifies(init) -> bool:
        frames = [init + offset * step for offset in range(-(input_frames - 1), steps + 1)]
        return start <= init and init + steps * step <= end and all(frame in available for frame in frames)

    if explicit:
        chosen = []
        for text in explicit:
            try:
                init = pd.Timestamp(text)
            except (ValueError, TypeError):
                raise UserInputError(f"{section}.inits.times: {text!r} is not an ISO time") from None
            if not qualifies(init):
                raise UserInputError(f"{section}.inits.times: {text} is not a usable init: it needs "
                                     f"{input_frames} input frames and {steps} leads in the store, the last "
                                     f"lead inside the {split} split {start} .. {end}")
            chosen.append(init)
        return sorted(set(chosen))
    candidates = []
    for init in sorted(t for t in available if start <= t <= end):
        if qualifies(init) and (not candidates or init - candidates[-1] >= pd.Timedelta(hours=every_hours)):
            candidates.append(init)
        if spacing == "first" and count is not None and len(candidates) == count:
            break
    if not candidates:
        raise UserInputError(f"the {split} split {start} .. {end} holds no init with {input_frames} input frames "
                             f"and {steps} leads of {step}; reduce {section}.steps or widen the {split} split")
    if spacing == "even" and count is not None and count < len(candidates):
        positions = np.unique(np.round(np.linspace(0, len(candidates) - 1, count)).astype(int))
        candidates = [candidates[position] for position in positions]
    return candidates


@app.command("inits")
def inits(config: Annotated[Path, typer.Option("--config", help="Resolved data config.")],
          steps: Annotated[int, typer.Option("--steps", help="Lead steps.")],
          out: Annotated[Path, typer.Option("--out", help="inits.json to write.")],
          every_hours: Annotated[int, typer.Option("--every-hours")] = 24,
          count: Annotated[Optional[int], typer.Option("--count")] = None,
          time: Annotated[Optional[list[str]], typer.Option("--time", help="Explicit init (repeatable).")] = None,
          split: Annotated[str, typer.Option("--split", help="test or validation.")] = "test",
          spacing: Annotated[str, typer.Option("--spacing", help="first or even (see choose_inits).")] = "first",
          ) -> None:
    """Choose the forecast initialisation times of a split (see `choose_inits`) and write them as JSON."""
    from gencast_rmmd.config import DataFileConfig, load_config
    from gencast_rmmd.data.source import DataSource
    from gencast_rmmd.io_utils import write_json_atomic

    if split not in ("test", "validation") or spacing not in ("first", "even"):
        raise UserInputError(f"--split {split} --spacing {spacing}: expected test|validation and first|even")
    source = DataSource.open(load_config(config, DataFileConfig).data)
    split_range = source.time_range(split)
    chosen = choose_inits(source.times, split_range, source.step, source.config.input_frames, steps, every_hours,
                          count, list(time or []), spacing, split)
    texts = [init.isoformat() for init in chosen]
    write_json_atomic(out, {"inits": texts, "steps": steps, "step_hours": source.config.step_hours,
                            f"{split}_split": [split_range[0].isoformat(), split_range[1].isoformat()]})
    _say(f"{len(texts)} init(s): {', '.join(texts)}")


@app.command("speed")
def speed(model: Annotated[list[str], typer.Option("--model", help="LABEL=CHECKPOINT_OR_RUN (repeatable).")],
          out: Annotated[Path, typer.Option("--out", help="speed.json (details) to write.")],
          timing_out: Annotated[Path, typer.Option("--timing-out", help="timing.json for the scorecard.")],
          model_sampler: Annotated[Optional[list[str]], typer.Option(
              "--model-sampler", help="LABEL:key=value, a sampler override of model LABEL (repeatable).")] = None,
          data: Annotated[Optional[str], typer.Option("--data")] = None,
          members: Annotated[int, typer.Option("--members")] = 2,
          inits: Annotated[int, typer.Option("--inits")] = 1,
          repeats: Annotated[int, typer.Option("--repeats")] = 3) -> None:
    """Median wall time of one 12 h step per model, models interleaved."""
    import jax

    from gencast_rmmd.forecast.speed import measure_step_times, scorecard_timing
    from gencast_rmmd.io_utils import write_json_atomic

    checkpoints: dict[str, str] = {}
    for entry in model:
        label, _, checkpoint = entry.partition("=")
        if not label or not checkpoint or label in checkpoints:
            raise UserInputError(f"--model {entry!r}: expected LABEL=CHECKPOINT_OR_RUN with a label used once")
        checkpoints[label] = checkpoint
    samplers: dict[str, list[str]] = {}
    for entry in model_sampler or []:
        label, _, override = entry.partition(":")
        if label not in checkpoints or "=" not in override:
            raise UserInputError(f"--model-sampler {entry!r}: expected LABEL:key=value with LABEL one of "
                                 f"{', '.join(checkpoints)}")
        samplers.setdefault(label, []).append(override)
    timings = measure_step_times(checkpoints, data, members, inits, repeats, samplers)
    details = {"device": jax.devices()[0].platform, "device_count": jax.device_count(), "members": members,
               "inits": inits, "repeats": repeats,
               "models": {label: {"seconds_per_step": t.seconds_per_step, "nfe_per_step": t.nfe_per_step,
                                  "compile_seconds": t.compile_seconds, "samples": list(t.samples),
                                  **({"sampler": samplers[label]} if label in samplers else {})}
                          for label, t in timings.items()}}
    write_json_atomic(out, details)
    write_json_atomic(timing_out, scorecard_timing(timings))
    for label, timing in timings.items():
        _say(f"{label}: {timing.seconds_per_step * 1000:.1f} ms per 12 h step, {timing.nfe_per_step} denoiser calls")


@app.command("select")
def select(name: Annotated[str, typer.Option("--name", help="The row (distiller or teacher sampler label).")],
           candidate: Annotated[list[str], typer.Option("--candidate", help="Validation forecast of candidate K "
                                                                          "(repeatable, in candidate order).")],
           config: Annotated[list[str], typer.Option("--config", help="Config file of candidate K (repeatable).")],
           baseline: Annotated[str, typer.Option("--baseline", help="The teacher's validation forecast.")],
           truth: Annotated[str, typer.Option("--truth", help="The store.")],
           inits: Annotated[str, typer.Option("--inits", help="validation/inits.json.")],
           out: Annotated[Path, typer.Option("--out", help="selection/NAME.json to write.")],
           config_out: Annotated[Path, typer.Option("--config-out", help="selection/NAME.yaml to write.")],
           key: Annotated[Optional[list[str]], typer.Option("--key", help="A grid key (repeatable).")] = None,
           region: Annotated[str, typer.Option("--region")] = "global",
           base: Annotated[Optional[str], typer.Option(
               "--base", help="A `base:` row's chosen config file its candidates start from (their --config files "
                              "are pre-selection views).")] = None,
           overrides: Annotated[Optional[list[str]], typer.Option(
               "--set", help="An override of --base before the candidate's values (repeatable).")] = None) -> None:
    """Choose the candidate with the lowest validation CRPS change against the teacher (`pipelines.selection`)."""
    from pipelines.selection import select as choose

    selection = choose(name, list(key or []), candidate, config, baseline, truth, inits, region, out, config_out,
                       base, list(overrides or []))
    for entry in selection["candidates"]:
        _say(f"{entry['label']} {entry['values']}: {entry['crps_change_pct']:+.2f} % CRPS vs the teacher, "
             f"wins {entry['win_rate']:.0%} of targets x leads")
    _say(f"chose {selection['chosen']['label']} {selection['chosen']['values']} on "
         f"{len(selection['validation_inits'])} validation init(s): {out}, {config_out}")


@app.command("select-best")
def select_best(name: Annotated[str, typer.Option("--name", help="The best_of entry.")],
                row: Annotated[list[str], typer.Option("--row", help="A distiller row (repeatable).")],
                forecast: Annotated[list[str], typer.Option("--forecast", help="The validation forecast of that "
                                                                               "row's chosen run (repeatable).")],
                baseline: Annotated[str, typer.Option("--baseline", help="The teacher's validation forecast.")],
                truth: Annotated[str, typer.Option("--truth", help="The store.")],
                inits: Annotated[str, typer.Option("--inits", help="validation/inits.json.")],
                out: Annotated[Path, typer.Option("--out", help="selection/NAME.json to write.")],
                region: Annotated[str, typer.Option("--region")] = "global") -> None:
    """Rank rows by their chosen runs' validation CRPS change against the teacher (`pipelines.selection`)."""
    from pipelines.selection import select_best as rank

    selection = rank(name, row, forecast, baseline, truth, inits, region, out)
    for entry in selection["rows"]:
        _say(f"{entry['row']} ({entry['label']}): {entry['crps_change_pct']:+.2f} % CRPS vs the teacher, "
             f"wins {entry['win_rate']:.0%} of targets x leads")
    _say(f"best: {selection['chosen']['row']} on {len(selection['validation_inits'])} validation init(s): {out}")


@app.command("devices")
def devices() -> None:
    """Print the JAX devices this process sees (training stages use all of them)."""
    import jax

    _say(f"{jax.device_count()} {jax.devices()[0].platform} device(s): {', '.join(map(str, jax.devices()))}")


@app.command("scorecards")
def scorecards(out: Annotated[Path, typer.Option("--out", help="Scorecard directory (scorecard/).")],
               forecast: Annotated[list[str], typer.Option("--forecast", help="Label with scores/LABEL.nc.")],
               truth: Annotated[str, typer.Option("--truth", help="The store the forecasts verify against.")],
               student: Annotated[Optional[list[str]], typer.Option("--student", help="Student label.")] = None,
               teacher_sampler: Annotated[Optional[list[str]], typer.Option(
                   "--teacher-sampler", help="Label of a teacher sampler row.")] = None,
               timing: Annotated[Optional[Path], typer.Option("--timing", help="timing.json of the speed stage.")]
               = None,
               region: Annotated[str, typer.Option("--region")] = "global") -> None:
    """`gencast-rmmd scorecard` against the teacher (students and teacher samplers), climatology and
    persistence (every other forecast), then the landing page and its headlines (`headlines.json`)."""
    from gencast_rmmd.io_utils import write_json_atomic
    from pipelines.report import write_report

    students, samplers = list(student or []), list(teacher_sampler or [])
    region_option = ["--region", region]
    if students or samplers:
        _run_product_command(["scorecard", *(a for name in [*students, *samplers]
                                             for a in ("--scores", f"scores/{name}.nc")),
                              "--baseline", "scores/teacher.nc", "--out", str(out / "students_vs_teacher"),
                              *(["--timing", str(timing)] if timing else []), *region_option])
    for baseline in ("climatology", "persistence"):
        others = [label for label in forecast if label != baseline]
        if baseline in forecast and others:
            _run_product_command(["scorecard", *(a for label in others for a in ("--scores", f"scores/{label}.nc")),
                                  "--baseline", f"scores/{baseline}.nc", "--out", str(out / f"vs_{baseline}"),
                                  *region_option])
    headlines = write_report(Path("."), out / "index.html", region, students, samplers, forecast, truth)
    for line in headlines:
        _say(line)
    write_json_atomic(out / "headlines.json", {"headlines": headlines})     # quoted by run_summary.json
    _say(f"wrote {out / 'index.html'}")


def measured_timings(workdir: Path, train_stage: str | None) -> dict[str, float]:
    """{"train_s": the training stage's seconds (its manifest record)} when it trained in one attempt, else {}.

    A resumed stage records its last leg alone, and an installed or imported teacher (no `train_stage`)
    did not train: then `at_most` rules on `train_s` fail rather than assume a time.
    """
    from pipelines.manifest import Manifest

    if train_stage is None:
        return {}
    stage = Manifest.load(workdir).stages.get(train_stage, {})
    return {"train_s": float(stage["seconds"])} if stage.get("attempts") == 1 and stage.get("seconds") else {}


@app.command("gate")
def gate(rules: Annotated[Path, typer.Option("--rules", help="Resolved rules file (DIR/configs/gate.yaml).")],
         scores: Annotated[Path, typer.Option("--scores", help="The scores directory (DIR/scores).")],
         out: Annotated[Path, typer.Option("--out", help="Verdict JSON (gate/verdict.json; .md beside it).")],
         train_stage: Annotated[Optional[str], typer.Option("--train-stage", help="The stage that trained the "
                                                            "teacher (none: installed or imported).")] = None
         ) -> None:
    """The product's `gate` on the run's scores, with the teacher's measured training time; exit 3 if it fails.

    Run in the work directory, as every stage is: its manifest gives the training time.
    """
    from gencast_rmmd.io_utils import write_json_atomic

    timings = out.parent / "timings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(timings, measured_timings(Path("."), train_stage))
    _run_product_command(["gate", "--rules", str(rules), "--scores", str(scores), "--timings", str(timings),
                          "--out", str(out)])


@app.command("table")
def table(workdir: Annotated[Path, typer.Option("--workdir", help="The pipeline's work directory.")],
          truth: Annotated[str, typer.Option("--truth", help="The store the forecasts verify against.")],
          out: Annotated[Path, typer.Option("--out", help="Directory for table.json and table.md.")],
          draws: Annotated[int, typer.Option("--draws", help="Bootstrap draws.")] = 5000,
          seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
          region: Annotated[str, typer.Option("--region")] = "global",
          row: Annotated[Optional[list[str]], typer.Option("--row", help="Only this row (repeatable).")] = None
          ) -> None:
    """The RMMD table on the test inits: every row against the teacher, pairs, seeds, spectra, targets."""
    from pipelines.table import build_table, write_table

    result = build_table(workdir, truth, list(row) if row else None, draws, seed, region)
    for path in write_table(result, out):
        _say(f"wrote {path}")
    for entry in result["targets"]:
        _say(f"{entry['status']:<16} {entry['target']}: {entry['detail']}")
