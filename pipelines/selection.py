"""`select.NAME`: choose a row's config among its grid's candidates on validation inits (or, for a `best_of`
entry, the best of several rows' chosen runs: `select_best`).

Every candidate's validation forecast and the teacher's (same inits, leads and
members) are scored per init (`evaluation.compare.crps_per_init`: the fair
CRPS, area mean over `region`, per target and lead). A candidate's figure is
`evaluation.compare.change_pct` at the point estimate: the mean over targets
and leads of 100 (CRPS / CRPS_teacher − 1), the CRPS averaged over the inits
first. The lowest change is chosen; ties go to the lower candidate index, and a
candidate whose change is not finite (a diverged run) is never chosen. The win
rate (the share of (target, lead) cells where it beats the teacher) is reported
beside it, not used.

Writes `selection/NAME.json` (the candidates with their values, validation
change and win rate, the chosen one and the validation inits) and
`selection/NAME.yaml`: the chosen candidate's full config, a copy of its
`configs/` file (what a grid row's extra seeds and `base: NAME` entries
train). A `base:` row that follows another choice has pre-selection views in
`configs/`; its chosen config is its base file (`selection/OTHER.yaml`) with
its overrides and the chosen candidate's values, validated as a distill config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gencast_rmmd.errors import UserInputError

CRITERION = ("lowest mean fair-CRPS change (%) against the teacher over targets and leads on the validation "
             "inits; ties: the lower candidate index")

Table = Mapping[str, np.ndarray]          # target -> fair CRPS [init, lead]


@dataclass(frozen=True)
class CandidateScore:
    """A candidate's validation figures against the teacher."""

    crps_change_pct: float
    win_rate: float


def score_candidates(tables: Sequence[Table], baseline: Table) -> list[CandidateScore]:
    """Each candidate's mean CRPS change (%) and win rate against `baseline` (all on the same inits and leads)."""
    from evaluation.compare import change_pct, win_rate

    shapes = {name: values.shape for name, values in baseline.items()}
    every_init = np.arange(next(iter(shapes.values()))[0])[None]
    scores = []
    for index, table in enumerate(tables):
        if {name: table[name].shape for name in table if name in shapes} != shapes:
            raise UserInputError(f"candidate {index}: its validation forecast does not hold the teacher's targets, "
                                 "inits and leads; rerun its validation forecast")
        scores.append(CandidateScore(float(change_pct(table, baseline, every_init)[0]), win_rate(table, baseline)))
    return scores


def chosen_index(scores: Sequence[CandidateScore]) -> int:
    """The candidate with the lowest finite CRPS change; the lower index among equals."""
    finite = [index for index, score in enumerate(scores) if math.isfinite(score.crps_change_pct)]
    if not finite:
        raise UserInputError("no candidate has a finite validation CRPS change against the teacher "
                             "(every run diverged?); see their validation forecasts")
    return min(finite, key=lambda index: (scores[index].crps_change_pct, index))


def _scores(forecasts: Sequence[str], baseline: str, truth: str, region: str) -> list[CandidateScore]:
    """`score_candidates` of validation forecast files against the baseline's, over `region` of `truth`."""
    from evaluation.compare import crps_per_init
    from gencast_rmmd.data.stores import open_dataset

    truth_dataset = open_dataset(truth)
    baseline_table = crps_per_init(baseline, truth_dataset, region)
    return score_candidates([crps_per_init(path, truth_dataset, region) for path in forecasts], baseline_table)


def select(name: str, keys: Sequence[str], forecasts: Sequence[str], configs: Sequence[str], baseline: str,
           truth: str, inits_file: str, region: str, out: Path, config_out: Path, base: str | None = None,
           base_overrides: Sequence[str] = ()) -> dict:
    """Score the candidates (`forecasts[k]`, whose config file is `configs[k]`), choose, write both files.

    With `base` the chosen config is not a copy of `configs[k]` (a pre-selection
    view) but the distill config `base` with `base_overrides` and the chosen values.
    """
    import yaml

    from gencast_rmmd.io_utils import atomic_path, write_json_atomic
    from pipelines.grid import lookup, value_overrides

    if len(forecasts) != len(configs) or not forecasts:
        raise UserInputError("give one --config per --candidate, at least one candidate")
    contents = [yaml.safe_load(Path(config).read_text()) for config in configs]
    scores = _scores(forecasts, baseline, truth, region)
    chosen = chosen_index(scores)
    candidates = [{"index": index, "label": Path(path).stem, "values": {key: lookup(content, key) for key in keys},
                   "forecast": path, "config": config, "crps_change_pct": score.crps_change_pct,
                   "win_rate": score.win_rate}
                  for index, (path, config, content, score) in enumerate(zip(forecasts, configs, contents, scores))]
    selection = {"name": name, "criterion": CRITERION, "region": region, "baseline": baseline,
                 "validation_inits": json.loads(Path(inits_file).read_text())["inits"], "grid": list(keys),
                 **({"base": {"config": base, "overrides": list(base_overrides)}} if base else {}),
                 "candidates": candidates, "chosen": candidates[chosen]}
    if base is None:
        chosen_config = Path(configs[chosen]).read_text()
    else:
        from gencast_rmmd.config import config_to_dict
        from gencast_rmmd.distill.config import load_distill_config

        config = load_distill_config(base, [*base_overrides, *value_overrides(candidates[chosen]["values"])])
        chosen_config = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    write_json_atomic(out, selection)
    with atomic_path(config_out) as temporary:
        temporary.write_text(chosen_config)
    return selection


def select_best(name: str, rows: Sequence[str], forecasts: Sequence[str], baseline: str, truth: str,
                inits_file: str, region: str, out: Path) -> dict:
    """Rank distiller rows by the validation forecasts of their chosen runs (`forecasts[k]` is `rows[k]`'s);
    write `out` (`selection/NAME.json` of a `best_of` entry) with every row's figures and the best row.

    The criterion is the grid choices' (`CRITERION`, ties to the row listed first). The rows' own choices
    were made on the same validation inits, so every row's figure is its best candidate's: the ranking
    compares like with like.
    """
    from gencast_rmmd.io_utils import write_json_atomic

    if len(rows) != len(forecasts) or not rows:
        raise UserInputError("give one --forecast per --row, at least one row")
    scores = _scores(forecasts, baseline, truth, region)
    chosen = chosen_index(scores)
    entries = [{"row": row, "label": Path(path).stem, "forecast": path, "crps_change_pct": score.crps_change_pct,
                "win_rate": score.win_rate} for row, path, score in zip(rows, forecasts, scores)]
    selection = {"name": name, "criterion": CRITERION.replace("candidate index", "row in `among` order"),
                 "region": region, "baseline": baseline,
                 "validation_inits": json.loads(Path(inits_file).read_text())["inits"], "rows": entries,
                 "chosen": entries[chosen]}
    write_json_atomic(out, selection)
    return selection
