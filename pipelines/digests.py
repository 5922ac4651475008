"""Content digests of stage outputs, independent of where the work directory lies.

- NetCDF files: every variable's raw (undecoded) values, dims and dtype, not
  the attributes (which hold absolute paths and timestamps), so the same
  forecast written in two work directories has the same digest;
- training runs: the latest checkpoint's step and parameter hashes;
- one split of the data stage's summary (`split:train`): that split's fingerprint;
- configs (`config`, a YAML file such as a selection's chosen config): the
  content that can change a result (`model_settings`), so that where a
  training runs does not change what depends on the config;
- the landing page (`page`): sha256 of its text without the run section the runner rewrites when a run
  ends (`pipelines.report_run`);
- other files: sha256 of the bytes; directories: of every file's name and bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from gencast_rmmd.config import without_keys


def sha256_json(payload: Any) -> str:
    """sha256 of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_sha256(path: Path) -> str:
    """sha256 over the relative names and bytes of every file below `path` (sorted)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def netcdf_digest(path: Path) -> str:
    """sha256 over every variable's name, dims, dtype and raw values (attributes ignored).

    Also reads a zarr store: a forecast written as NetCDF and as zarr has one digest.
    """
    import xarray as xr

    digest = hashlib.sha256()
    with xr.open_dataset(path, decode_cf=False, mask_and_scale=False, decode_times=False,
                         decode_timedelta=False) as dataset:
        for name in sorted(map(str, dataset.variables)):
            variable = dataset.variables[name]
            values = np.asarray(variable.values)
            digest.update(f"{name}{variable.dims}{values.dtype}{values.shape}".encode())
            digest.update(values.astype(str).tobytes() if values.dtype == object
                          else np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


# What a stage's identity leaves out (a subset of `gencast_rmmd.training.run_config.RESULT_NEUTRAL_KEYS`).
STAGE_NEUTRAL_KEYS = ("distributed", "train.progress", "data.splits.test")


def model_settings(config: dict) -> dict:
    """A config (as a mapping) without what cannot change the trained model or forecast.

    Left out: where it runs (`distributed`), progress bars and the test split
    (a nightly run with a rolling test window must not retrain). `config` is
    left unchanged.
    """
    return without_keys(json.loads(json.dumps(config)), STAGE_NEUTRAL_KEYS)


def run_record(run_dir: Path) -> dict:
    """The latest checkpoint of a training run: relative path, step, params and EMA params sha256."""
    from gencast_rmmd.training.checkpoint import latest_checkpoint, read_meta

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} holds no complete checkpoint")
    meta = read_meta(checkpoint)
    return {"checkpoint": str(checkpoint.relative_to(run_dir)), "step": int(meta["step"]),
            "params_sha256": meta.get("params_sha256", ""), "ema_params_sha256": meta.get("ema_params_sha256", "")}


def output_record(kind: str, path: Path) -> dict:
    """`{"digest": ...}` plus what else describes an output of `kind` (netcdf, run, split:NAME, config, file,
    page, directory)."""
    if kind.startswith("split:"):
        split = json.loads(path.read_text())["splits"][kind.split(":", 1)[1]]
        return {"digest": split["fingerprint"], "start": split["start"], "end": split["end"]}
    if kind == "netcdf":
        size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else (
            path.stat().st_size)            # a zarr store (`forecast.format: zarr`) is a directory
        return {"digest": netcdf_digest(path), "bytes": size}
    if kind == "run":
        record = run_record(path)
        return {"digest": sha256_json({k: record[k] for k in ("step", "params_sha256", "ema_params_sha256")}),
                **record}
    if kind == "config":
        import yaml

        return {"digest": sha256_json(model_settings(yaml.safe_load(path.read_text()))),
                "bytes": path.stat().st_size}
    if kind == "file":
        return {"digest": file_sha256(path), "bytes": path.stat().st_size}
    if kind == "page":
        from pipelines.report_run import page_digest

        return {"digest": page_digest(path)}
    if kind == "directory":
        return {"digest": directory_sha256(path)}
    raise ValueError(f"unknown output kind {kind!r}")
