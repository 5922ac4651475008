"""Restart states on disk: the spin-up cache and the checkpoints that reference runs branch from.

A trajectory (seed + physics) is identified by a hash of the physics-relevant
config, the simulator's format version and the dinosaur / JAX versions. Its
directory holds `trajectory.json` (what the hash covers) and restart files
`restarts/step_000000000.npz`, one full `SimulatorState` each (plain numeric
arrays, read with `allow_pickle=False`), named by the model step they were
taken at. Since the noise of step n depends only on (seed, n), a restart at
step n is valid for any run length, start date or set of output levels.

The cache root is, in order of precedence: an explicit directory (CLI
`--cache-dir`), the environment variable `GENCAST_RMMD_SIMULATOR_CACHE`, or the
config's `simulation.cache_dir` (default `~/.cache/gencast_rmmd/simulator`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from dinosaur import primitive_equations

from gencast_rmmd.config import SimulationConfig
from gencast_rmmd.data.simulator.model import SimulatorState
from gencast_rmmd.io_utils import atomic_path, write_json_atomic

CACHE_ENV_VAR = "GENCAST_RMMD_SIMULATOR_CACHE"
# Bump when a code change alters trajectories, so stale restarts are never reused.
SIMULATOR_FORMAT_VERSION = 1
# The fields of SimulationConfig that decide the model trajectory.
TRAJECTORY_FIELDS: tuple[str, ...] = (
    "seed", "truncation", "sigma_layers", "time_step_minutes", "spinup_days", "output_hours",
    "initial_perturbation_kelvin", "stochastic")
_STATE_FIELDS: tuple[str, ...] = ("vorticity", "divergence", "temperature_variation", "log_surface_pressure")


def resolve_cache_root(config: SimulationConfig, override: str | os.PathLike | None = None) -> Path:
    """The cache root: `override`, else `$GENCAST_RMMD_SIMULATOR_CACHE`, else `config.cache_dir` (expanded)."""
    chosen = override if override is not None else os.environ.get(CACHE_ENV_VAR) or config.cache_dir
    return Path(chosen).expanduser()


def versioned_description(simulation: dict) -> dict:
    """`simulation` (config fields, JSON-serialisable) together with the code versions that shape results."""
    return {"simulation": simulation, "format_version": SIMULATOR_FORMAT_VERSION,
            "dinosaur": metadata.version("dinosaur"), "jax": metadata.version("jax")}


def short_hash(description: dict) -> str:
    """A short stable hash (16 hex digits) of a JSON-serialisable description."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def trajectory_description(config: SimulationConfig) -> dict:
    """What identifies a trajectory: physics-relevant config fields plus code versions."""
    return versioned_description(config.model_dump(mode="json", include=set(TRAJECTORY_FIELDS)))


def trajectory_key(config: SimulationConfig) -> str:
    """The cache key of `config`'s trajectory: `short_hash(trajectory_description(config))`."""
    return short_hash(trajectory_description(config))


@dataclasses.dataclass(frozen=True)
class TrajectoryCache:
    """Restart states of one trajectory under `directory` (`<cache root>/<trajectory key>`)."""

    directory: Path

    @classmethod
    def for_config(cls, config: SimulationConfig, root: Path) -> "TrajectoryCache":
        """The cache of `config`'s trajectory under `root`; writes `trajectory.json` on first use."""
        cache = cls(root / trajectory_key(config))
        description_path = cache.directory / "trajectory.json"
        if not description_path.exists():
            write_json_atomic(description_path, trajectory_description(config))
        return cache

    def restart_path(self, step: int) -> Path:
        """Where the restart at model step `step` lives."""
        return self.directory / "restarts" / f"step_{step:09d}.npz"

    def steps(self) -> list[int]:
        """Model steps with a restart on disk, ascending."""
        folder = self.directory / "restarts"
        if not folder.is_dir():
            return []
        return sorted(int(path.stem.split("_")[1]) for path in folder.glob("step_*.npz"))

    def latest_at_or_before(self, step: int) -> int | None:
        """The latest restart step <= `step`, or None."""
        candidates = [available for available in self.steps() if available <= step]
        return candidates[-1] if candidates else None

    def save(self, state: SimulatorState) -> Path:
        """Write `state` (fetched from the device) as the restart at its step, atomically; keep an existing one."""
        step = int(state.step)
        path = self.restart_path(step)
        if path.exists():
            return path
        arrays = {name: np.asarray(getattr(state.dynamics, name)) for name in _STATE_FIELDS}
        arrays["forcing"] = np.asarray(state.forcing)
        arrays["step"] = np.asarray(step, dtype=np.int64)
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
        return path

    def load(self, step: int) -> SimulatorState:
        """The restart at model step `step` (raises FileNotFoundError if absent)."""
        with np.load(self.restart_path(step), allow_pickle=False) as stored:
            dynamics = primitive_equations.State(**{name: jnp.asarray(stored[name]) for name in _STATE_FIELDS})
            if int(stored["step"]) != step:
                raise ValueError(f"restart {self.restart_path(step)} holds step {int(stored['step'])}")
            return SimulatorState(dynamics, jnp.asarray(stored["forcing"]), jnp.asarray(step, dtype=jnp.int32))
