"""Benchmark: our fair CRPS against the CRPS a user would pick, on the same 50-member forecast.

The competitors, each as a user would call it on an xarray Dataset:

- `xskillscore.crps_ensemble` (properscoring's numba gufunc; without numba,
  properscoring falls back to a slow numpy loop that no user should be timed
  against, so the script refuses to run without numba);
- `scores.probability.crps_for_ensemble(method="fair")` (pip package `scores`);
- WeatherBench2's `metrics.SpatialCRPS` (pointwise fair CRPS; WB2 is not on
  PyPI: it is timed when `import weatherbench2` works, e.g. a source checkout
  on PYTHONPATH, and reported as not importable otherwise).

The forecast is synthetic, float32, in the WB2 layout on the 64x32 grid: for
each init and lead, temperature, geopotential and u wind on 13 levels plus
2 m temperature and 12 h precipitation (half its values exactly 0: ties), 50
members drawn around a per-point mean with the truth drawn the same way
(a calibrated ensemble). Every method scores it pointwise and the result is
averaged per variable, on the same dask chunks (one init and one lead) with
the threaded scheduler, in one process. Each repeat runs every method once
in turn (a busy machine slows all of them alike); times are medians after one
warm-up run each. Last, the whole `evaluate` scoring (every metric, every
region, rank histograms) is timed once on the same forecast.

Values: xskillscore computes the CRPS of the empirical distribution, which is
higher than the fair CRPS by the finite-ensemble term

    CRPS_ecdf − CRPS_fair = Σ_i Σ_j |X_i − X_j| / (2 M² (M − 1)),

so its values are compared with a float64 brute-force O(M²) reference of the
estimator it computes, and after that correction with the fair reference.
The others compute the fair CRPS and are compared with the fair reference.
The pointwise check runs on the first init and lead (every variable, level
and grid point); the per-variable means of the timed runs are compared too.

    python benchmarks/bench_scoring.py [--inits 2] [--leads 10] [--members 50] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import numpy as np
import pandas as pd
import xarray as xr

from evaluation import metrics
from evaluation.regions import REGIONS
from evaluation.scoring import score_dataset

MEMBER_DIM = "number"
# name: (offset, spread of the per-point mean, member spread at the first lead, on levels)
VARIABLES: dict[str, tuple[float, float, float, bool]] = {
    "temperature": (250.0, 10.0, 1.0, True),
    "geopotential": (5.0e4, 500.0, 30.0, True),
    "u_component_of_wind": (0.0, 8.0, 2.0, True),
    "2m_temperature": (285.0, 12.0, 1.0, False),
    "total_precipitation_12hr": (0.0, 1.0e-3, 2.0e-3, False),
}


def synthetic_forecast(inits: int, leads: int, members: int, levels: int, seed: int = 0
                       ) -> tuple[xr.Dataset, xr.Dataset]:
    """A calibrated float32 ensemble and its truth: members and truth drawn from N(μ, σ²) per point.

    σ grows by 10 % per lead. Precipitation is clipped at 0, so about half its
    members and truths are exactly 0 (ties between members and with the truth).
    """
    rng = np.random.default_rng(seed)
    latitude = np.linspace(-87.1875, 87.1875, 32)
    longitude = np.arange(64) * 5.625
    coords = {"time": pd.date_range("2020-01-01", periods=inits, freq="D"),
              "prediction_timedelta": pd.to_timedelta(np.arange(1, leads + 1) * 12, unit="h"),
              "level": np.linspace(50, 1000, levels), "latitude": latitude, "longitude": longitude}
    forecast, truth = {}, {}
    for name, (offset, mean_scale, member_scale, on_levels) in VARIABLES.items():
        space = ((levels,) if on_levels else ()) + (latitude.size, longitude.size)
        space_dims = (("level",) if on_levels else ()) + ("latitude", "longitude")
        shape = (inits, leads, *space)
        mean = offset + mean_scale * rng.standard_normal(shape)
        sigma = member_scale * (1.0 + np.arange(leads) / 10).reshape(1, leads, *([1] * len(space)))
        draws = mean[:, :, None] + sigma[:, :, None] * rng.standard_normal((inits, leads, members + 1, *space))
        if name.startswith("total_precipitation"):
            draws = np.maximum(draws, 0.0)
        draws = draws.astype(np.float32)
        dims = ("time", "prediction_timedelta", *space_dims)
        forecast[name] = xr.DataArray(draws[:, :, 1:], dims=(*dims[:2], MEMBER_DIM, *dims[2:]))
        truth[name] = xr.DataArray(draws[:, :, 0], dims=dims)
    return (xr.Dataset(forecast, coords=coords), xr.Dataset(truth, coords=coords))


# --------------------------------------------------------------------------- the methods


def ours(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """`evaluation.metrics.fair_crps`, pointwise, per variable."""
    return xr.Dataset({name: metrics.fair_crps(forecast[name], truth[name], MEMBER_DIM) for name in forecast})


def xskillscore_crps(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """`xskillscore.crps_ensemble` pointwise (dim=[]): the empirical-distribution (ecdf) CRPS."""
    import xskillscore

    return xskillscore.crps_ensemble(truth, forecast, member_dim=MEMBER_DIM, dim=[])


def scores_crps(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """`scores.probability.crps_for_ensemble(method="fair")`, pointwise (preserve_dims="all")."""
    import scores.probability

    return scores.probability.crps_for_ensemble(forecast, truth, MEMBER_DIM, method="fair", preserve_dims="all")


def weatherbench2_crps(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """WB2 `metrics.SpatialCRPS(ensemble_dim).compute_chunk`: pointwise fair CRPS, chunk by chunk.

    WB2 ranks the members on `.values`, so a dask-backed forecast is scored one
    block at a time through `xr.map_blocks`, as WB2's own beam pipeline hands it chunks.
    """
    from weatherbench2 import metrics as wb2_metrics

    def pointwise(forecast_block: xr.Dataset, truth_block: xr.Dataset) -> xr.Dataset:
        return wb2_metrics.SpatialCRPS(ensemble_dim=MEMBER_DIM).compute_chunk(forecast_block, truth_block)

    if not any(variable.chunks for variable in forecast.data_vars.values()):
        return pointwise(forecast, truth)
    template = xr.Dataset({name: truth[name].astype(np.float64) for name in truth})
    return xr.map_blocks(pointwise, forecast, args=[truth], template=template)


def ecdf_to_fair(forecast: xr.Dataset, ecdf: xr.Dataset, pair_sum: xr.Dataset) -> xr.Dataset:
    """CRPS_fair = CRPS_ecdf − Σ_i Σ_j |X_i − X_j| / (2 M² (M − 1)), from the brute-force pair sum."""
    members = forecast.sizes[MEMBER_DIM]
    return ecdf - pair_sum / (2.0 * members**2 * (members - 1))


def importable_methods() -> tuple[dict[str, tuple[Callable, str]], list[str]]:
    """{label: (method, estimator)} of the competitors that import here, and a line per one that does not."""
    methods: dict[str, tuple[Callable, str]] = {"ours (evaluation.metrics.fair_crps)": (ours, "fair")}
    missing = []
    import properscoring
    import properscoring._crps
    import xskillscore

    core = properscoring._crps._crps_ensemble_core
    if type(core).__module__.split(".")[0] != "numba":
        print("numba is not installed, so xskillscore would run properscoring's slow numpy fallback "
              "(not what a user has): pip install numba (it is in the dev extras)", file=sys.stderr)
        sys.exit(2)
    methods[f"xskillscore {xskillscore.__version__}.crps_ensemble (numba)"] = (xskillscore_crps, "ecdf")
    try:
        import scores

        methods[f"scores {scores.__version__} crps_for_ensemble fair"] = (scores_crps, "fair")
    except ImportError as error:
        missing.append(f"scores: not importable ({error}); pip install scores")
    try:
        import weatherbench2

        location = getattr(weatherbench2, "__file__", None) or list(weatherbench2.__path__)[0]
        methods["weatherbench2 SpatialCRPS"] = (weatherbench2_crps, "fair")
        print(f"weatherbench2 imported from {location}")
    except ImportError as error:
        missing.append(f"weatherbench2: not importable ({error}); it is not on PyPI — install it from "
                       "github.com/google-research/weatherbench2 to time it (its CRPS is the same sorted "
                       "fair estimator: ranks by argsort, then 2·mean[(2·rank − M − 1)·X]/(M − 1) in xarray)")
    print(f"properscoring core: {type(core).__module__}.{type(core).__name__} {core.__name__} "
          f"(numba {sys.modules['numba'].__version__})")
    return methods, missing


def properscoring_cores(forecast: np.ndarray, truth: np.ndarray) -> str:
    """Seconds of properscoring's numba gufunc and of its numpy fallback on the same sorted members."""
    import properscoring._crps as crps

    ordered = np.sort(forecast, axis=-1)
    weights = np.ones_like(ordered)
    seconds = {}
    for name, core in (("numba gufunc", crps._crps_ensemble_core), ("numpy fallback", crps._crps_ensemble_vectorized)):
        core(truth, ordered, weights)
        start = time.perf_counter()
        core(truth, ordered, weights)
        seconds[name] = time.perf_counter() - start
    return ", ".join(f"{name} {value:.3f} s" for name, value in seconds.items())


# --------------------------------------------------------------------------- brute-force reference


def brute_force_parts(forecast: np.ndarray, truth: np.ndarray, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_i |X_i − Y| / M, Σ_i Σ_j |X_i − X_j|) in float64 by the O(M²) double sum; members on the last axis."""
    members = forecast.shape[-1]
    flat = forecast.reshape(-1, members).astype(np.float64)
    flat_truth = truth.reshape(-1).astype(np.float64)
    skill, pair_sum = np.empty(flat_truth.size), np.empty(flat_truth.size)
    for start in range(0, flat_truth.size, block):
        rows = slice(start, start + block)
        skill[rows] = np.abs(flat[rows] - flat_truth[rows, None]).mean(axis=-1)
        pair_sum[rows] = np.abs(flat[rows, :, None] - flat[rows, None, :]).sum(axis=(-1, -2))
    return skill.reshape(truth.shape), pair_sum.reshape(truth.shape)


def references(forecast: xr.Dataset, truth: xr.Dataset) -> dict[str, xr.Dataset]:
    """Brute-force float64 fair and ecdf CRPS and the pair sum Σ_i Σ_j |X_i − X_j|, pointwise."""
    members = forecast.sizes[MEMBER_DIM]
    fair, ecdf, pair_sums = {}, {}, {}
    for name in forecast:
        members_last = forecast[name].transpose(..., MEMBER_DIM)
        skill, pair_sum = brute_force_parts(members_last.values, truth[name].transpose(*members_last.dims[:-1]).values)
        dims = members_last.dims[:-1]
        fair[name] = (dims, skill - pair_sum / (2.0 * members * (members - 1)))
        ecdf[name] = (dims, skill - pair_sum / (2.0 * members**2))
        pair_sums[name] = (dims, pair_sum)
    coords = truth.coords
    return {"fair": xr.Dataset(fair, coords=coords), "ecdf": xr.Dataset(ecdf, coords=coords),
            "pair_sum": xr.Dataset(pair_sums, coords=coords)}


def max_differences(values: xr.Dataset, reference: xr.Dataset) -> tuple[float, float]:
    """(max |value − reference|, max of that relative to the variable's mean |reference|) over every variable."""
    absolute, relative = 0.0, 0.0
    for name in reference:
        difference = float(np.abs(values[name].astype(np.float64) - reference[name]).max())
        absolute = max(absolute, difference)
        relative = max(relative, difference / float(np.abs(reference[name]).mean()))
    return absolute, relative


# --------------------------------------------------------------------------- timing


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int
                        ) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per run over `repeats` rounds that run each once in turn, after one warm-up each."""
    results = {label: run() for label, run in runs.items()}
    seconds: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, run in runs.items():
            start = time.perf_counter()
            results[label] = run()
            seconds[label].append(time.perf_counter() - start)
    return {label: statistics.median(times) for label, times in seconds.items()}, results


def main() -> None:
    """Check values against the brute force, time every method, print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inits", type=int, default=2)
    parser.add_argument("--leads", type=int, default=10)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--levels", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=7)
    arguments = parser.parse_args()
    if min(arguments.inits, arguments.leads, arguments.levels, arguments.repeats) < 1 or arguments.members < 2:
        parser.error("--inits, --leads, --levels and --repeats must be at least 1 and --members at least 2")

    methods, missing = importable_methods()
    forecast, truth = synthetic_forecast(arguments.inits, arguments.leads, arguments.members, arguments.levels)
    members = forecast.sizes[MEMBER_DIM]
    chunks = {"time": 1, "prediction_timedelta": 1}
    print(f"forecast: {dict(forecast.sizes)}, variables {list(forecast.data_vars)} "
          f"({forecast.nbytes / 2**30:.2f} GiB float32, {sum(v.size for v in truth.data_vars.values()):,} points "
          f"x {members} members); dask chunks of one init and one lead, threaded scheduler, "
          f"{arguments.repeats} interleaved repeats after a warm-up, median")
    for line in missing:
        print(line)

    first = {"time": 0, "prediction_timedelta": 0}
    sample_forecast, sample_truth = forecast.isel(first), truth.isel(first)
    reference = references(sample_forecast, sample_truth)
    print(f"\npointwise values on init 0, lead 0 ({sum(v.size for v in sample_truth.data_vars.values()):,} points, "
          "every variable) against the float64 brute-force O(M²) double sum:")
    for label, (method, estimator) in methods.items():
        values = method(sample_forecast, sample_truth)
        absolute, relative = max_differences(values, reference[estimator])
        line = f"  {label:48s} vs {estimator} reference: max |diff| {absolute:.2e} (relative {relative:.1e})"
        if estimator == "ecdf":
            fair_absolute, fair_relative = max_differences(ecdf_to_fair(sample_forecast, values, reference["pair_sum"]),
                                                           reference["fair"])
            line += f"; minus Σ|Xi−Xj|/(2M²(M−1)) vs fair: {fair_absolute:.2e} ({fair_relative:.1e})"
        print(line)

    sample = sample_forecast["temperature"].transpose(..., MEMBER_DIM)
    print(f"properscoring's cores on init 0, lead 0 of temperature ({sample.shape}): "
          f"{properscoring_cores(sample.values, sample_truth['temperature'].transpose(*sample.dims[:-1]).values)}")

    forecast_chunked, truth_chunked = forecast.chunk(chunks), truth.chunk(chunks)

    def run(method: Callable) -> Callable[[], xr.Dataset]:
        return lambda: method(forecast_chunked, truth_chunked).mean().compute(scheduler="threads")

    medians, means = interleaved_medians({label: run(method) for label, (method, _) in methods.items()},
                                         arguments.repeats)
    our_label = next(iter(methods))
    spread_mean = xr.Dataset({name: metrics.fair_crps_spread(forecast_chunked[name], MEMBER_DIM)
                              for name in forecast}).mean().compute(scheduler="threads")
    print(f"\n{'method':52s} {'median s':>9s} {'time/ours':>9s}  max relative gap of the per-variable mean "
          "CRPS to ours (xskillscore corrected to fair)")
    for label, (_, estimator) in methods.items():
        mean = means[label]
        if estimator == "ecdf":  # mean of CRPS_ecdf − E|X − X'|/(2M): the fair CRPS
            mean = mean - spread_mean / (2.0 * members)
        gap = max(float(abs(mean[name] - means[our_label][name]) / abs(means[our_label][name])) for name in forecast)
        print(f"{label:52s} {medians[label]:9.3f} {medians[label] / medians[our_label]:8.2f}x  {gap:.1e}")
    fastest = min((label for label in methods if label != our_label), key=medians.get, default=None)
    if fastest is not None:
        print(f"\nours is {medians[fastest] / medians[our_label]:.2f}x faster than the fastest competitor ({fastest})")

    start = time.perf_counter()
    score_dataset(forecast_chunked, truth_chunked).compute(scheduler="threads")
    print(f"our whole evaluate scoring on the same forecast (every metric, {len(REGIONS)} regions, rank histograms, "
          f"once): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
