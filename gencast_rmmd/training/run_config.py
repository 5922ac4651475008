"""The config a run was started with: recorded in every checkpoint, checked on `--resume`.

A resume continues the optimisation of the run's first attempt, so it is only
exact under the config that run started with. Every checkpoint's `meta.json`
records the run's *result config* (`run_config`) and its sha256
(`run_config_sha256`, of the canonical JSON: keys sorted, no spaces); a resume
recomputes the hash and refuses, naming the first differing keys, when it
differs. Checkpoints written by older code carry no hash: those runs resume
unchecked, with a note.

What is hashed: the run's validated config (`seed` and the `train:` section as
the loop runs them, plus the rest of the teacher's or distiller's config and,
for a distiller, its teacher's identity), less `RESULT_NEUTRAL_KEYS`. The rule
for leaving a key out: changing it on resume must leave a run bit-identical to
an uninterrupted run under the recorded config (same params at every step,
same validation losses, so the same best checkpoint), and it must be
something a resumed run has a reason to change. That leaves out where the run
runs (`distributed`: process ids, coordinator, device layout), how it
reports and how often it writes checkpoints (`train.progress`,
`train.log_every`, `train.checkpoint_every`, `train.keep_checkpoints`),
where the data lie (`data.path`: `--data` may point at the same store
elsewhere; its content is not checked) and how they are read
(`data.loader.prefetch`, `data.loader.cache_in_memory`), and the test split
(`data.splits.test`: training never reads it, and the pipeline moves it
between nightly runs). Everything else is in, strictly: model, data
variables, levels and train/validation splits, noise, loss, sampler,
`train.steps` (the cosine schedule depends on it), the learning rate, the
validation settings, the `distill:` section, the seed and the teacher.
A code change that adds a config key therefore changes the hash too: resume
such a run with the code it was started with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from gencast_rmmd.config import without_keys
from gencast_rmmd.errors import UserInputError
from gencast_rmmd.training.checkpoint import latest_checkpoint, read_meta
from gencast_rmmd.training.config import TrainConfig

RESULT_NEUTRAL_KEYS = (
    "distributed", "train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "data.path", "data.loader.prefetch", "data.loader.cache_in_memory", "data.splits.test",
)
MAX_NAMED_CHANGES = 3
_ABSENT = object()


def canonical_json(value: Any) -> str:
    """`value` as JSON with sorted keys and no whitespace: equal configs give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_config(seed: int, train: TrainConfig, settings: Mapping[str, Any]) -> dict:
    """The result config of a run (module docstring): `settings` with the loop's `seed` and `train`, less
    `RESULT_NEUTRAL_KEYS`, in JSON types (tuples as lists), so it compares equal to the recorded one."""
    config = json.loads(canonical_json({**settings, "seed": seed, "train": train.model_dump(mode="json")}))
    return without_keys(config, RESULT_NEUTRAL_KEYS)


def config_sha256(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of `config`."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def checkpoint_record(config: Mapping[str, Any]) -> dict:
    """The `meta.json` entries that record `config` (a `run_config` result)."""
    return {"run_config": dict(config), "run_config_sha256": config_sha256(config)}


def _leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    leaves = {}
    for key, value in config.items():
        leaves.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def _shown(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def config_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, recorded value, current value) for every leaf that differs, keys in sorted order."""
    old, new = _leaves(dict(recorded)), _leaves(dict(current))
    return [(key, old.get(key, _ABSENT), new.get(key, _ABSENT)) for key in sorted(old.keys() | new.keys())
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)]


def check_resume_config(run_dir: str | Path, config: Mapping[str, Any],
                        log: Callable[[str], None] | None = None) -> None:
    """Refuse to resume `run_dir` under a result config other than the one its latest checkpoint records.

    Raises `UserInputError` naming the run directory and up to three changed
    keys (recorded → current); reads, never writes. A run without a checkpoint
    has nothing to continue and passes; a checkpoint without a recorded config
    (older code) passes with a note through `log` (none when `log` is None).
    """
    run_dir = Path(run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return
    meta = read_meta(latest)
    if "run_config_sha256" not in meta:
        if log is not None:
            log(f"note: {latest} records no run config (written by an older version); resuming without "
                "checking that the config is the one the run was started with")
        return
    if meta["run_config_sha256"] == config_sha256(config):
        return
    changes = config_changes(meta.get("run_config", {}), config)
    named = ", ".join(f"{key}: {_shown(old)} → {_shown(new)}" for key, old, new in changes[:MAX_NAMED_CHANGES])
    more = f" and {len(changes) - MAX_NAMED_CHANGES} more" if len(changes) > MAX_NAMED_CHANGES else ""
    raise UserInputError(f"{run_dir} was started with another config ({named or 'its recorded hash differs'}"
                         f"{more}); resume with the config it was started with, or use a new --out")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse an `--out` that is a file, or that holds something when the user did not ask to `--resume`.

    The commands that train (`train`, `distill`) call it first, before they
    write anything into `run_dir`; the loop itself continues whatever run it
    is given, so this is the one place the question is asked.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserInputError(f"{run_dir} is a file; --out must be a directory")
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise UserInputError(f"{run_dir} already holds a run; pass --resume to continue or choose another --out")
