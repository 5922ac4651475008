"""The embedded dataset: a Held-Suarez climate simulated with dinosaur, stored in the ERA5/WB2 schema.

Modules, in the order data flows through them:
- `model`: the dynamical core (dry primitive equations, Held-Suarez forcing) and its state;
- `forcing`: the stochastic vorticity / heating forcing that makes 12 h transitions uncertain;
- `cache`: spin-up and restart states on disk, keyed by a hash of the physics;
- `run`: spin-up, the stored trajectory in chunks, re-integration from restarts;
- `diagnostics`: modal state -> WB2 variables on pressure levels on the WB2 64x32 grid;
- `store`: the zarr writer and the store's identity (config hash);
- `reference`: the perfect-model reference ensemble in the forecast layout;
- `summary`: a climate sanity summary.

Importing this package imports JAX and dinosaur.
"""

from gencast_rmmd.data.simulator.cache import CACHE_ENV_VAR, TrajectoryCache, resolve_cache_root
from gencast_rmmd.data.simulator.reference import (
    ReferenceEnsemble, branch_mismatch, reference_ensemble, spread_to_change_ratio)
from gencast_rmmd.data.simulator.run import SimulationResult, simulate_store

__all__ = [
    "CACHE_ENV_VAR", "ReferenceEnsemble", "SimulationResult", "TrajectoryCache", "branch_mismatch",
    "reference_ensemble", "resolve_cache_root", "simulate_store", "spread_to_change_ratio",
]
