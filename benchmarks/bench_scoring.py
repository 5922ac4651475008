"""Benchmark: our fair CRPS (sorted, O(M log M)) against `xskillscore.crps_ensemble` on the same data.

A synthetic 50-member forecast on the WB2 64x32 grid with 13 levels, 20 leads
and 10 initialisations (about 1 GB in float32) is scored pointwise and averaged
over every point, by both estimators, on the same dask chunks (one init and
one lead per chunk) with the threaded scheduler. Times are the median of
`--repeats` runs. The two values differ by the exact finite-ensemble bias:

    CRPS_fair = CRPS_xskillscore − E|X − X'| / (2M)

(xskillscore wraps properscoring: the CRPS of the empirical distribution),
which the script checks. It also times the whole `evaluate` pipeline (every
metric, 7 regions, rank histograms) on the same forecast.

    python benchmarks/bench_scoring.py [--inits 10] [--members 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import xarray as xr
import xskillscore

from evaluation import metrics
from evaluation.scoring import score_dataset


def synthetic_forecast(inits: int, leads: int, members: int, levels: int, seed: int = 0
                       ) -> tuple[xr.DataArray, xr.DataArray]:
    """A calibrated ensemble and its truth: members and truth drawn from N(μ, σ²) per point, float32."""
    rng = np.random.default_rng(seed)
    latitude = np.linspace(-87.1875, 87.1875, 32)
    longitude = np.arange(64) * 5.625
    shape = (inits, leads, levels, latitude.size, longitude.size)
    mean = 250.0 + 10.0 * rng.standard_normal(shape, dtype=np.float32)
    sigma = np.float32(1.0) + np.arange(leads, dtype=np.float32)[None, :, None, None, None] / 10
    truth = mean + sigma * rng.standard_normal(shape, dtype=np.float32)
    forecast = np.empty((inits, leads, members, *shape[2:]), dtype=np.float32)
    for member in range(members):
        forecast[:, :, member] = mean + sigma * rng.standard_normal(shape, dtype=np.float32)
    coords = {"time": pd.date_range("2020-01-01", periods=inits, freq="D"),
              "prediction_timedelta": pd.to_timedelta(np.arange(1, leads + 1) * 12, unit="h"),
              "level": np.arange(levels), "latitude": latitude, "longitude": longitude}
    dims = ("time", "prediction_timedelta", "level", "latitude", "longitude")
    truth_array = xr.DataArray(truth, dims=dims, coords=coords)
    forecast_array = xr.DataArray(forecast, dims=(*dims[:2], "number", *dims[2:]), coords=coords)
    return forecast_array, truth_array


def timed(function, repeats: int) -> tuple[float, float]:
    """(median seconds, last value) of `function()` over `repeats` runs."""
    seconds, value = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), value


def main() -> None:
    """Run the benchmark and print times, their ratio and the bias-correction check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inits", type=int, default=10)
    parser.add_argument("--leads", type=int, default=20)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--levels", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    forecast, truth = synthetic_forecast(arguments.inits, arguments.leads, arguments.members, arguments.levels)
    members = forecast.sizes["number"]
    chunks = {"time": 1, "prediction_timedelta": 1}
    forecast_chunked, truth_chunked = forecast.chunk(chunks), truth.chunk(chunks)
    print(f"forecast: {forecast.sizes} ({forecast.nbytes / 2**30:.2f} GiB float32), "
          f"{arguments.repeats} repeats, threaded dask scheduler, chunks of one init and one lead")

    def ours() -> float:
        return float(metrics.fair_crps(forecast_chunked, truth_chunked).mean().compute(scheduler="threads"))

    def theirs() -> float:
        score = xskillscore.crps_ensemble(truth_chunked, forecast_chunked, member_dim="number", dim=[])
        return float(score.mean().compute(scheduler="threads"))

    our_seconds, our_value = timed(ours, arguments.repeats)
    print(f"fair CRPS (ours, sorted O(M log M)):      {our_seconds:8.2f} s   mean CRPS {our_value:.8f}")
    their_seconds, their_value = timed(theirs, arguments.repeats)
    print(f"xskillscore.crps_ensemble (biased):       {their_seconds:8.2f} s   mean CRPS {their_value:.8f}")
    print(f"speed ratio xskillscore / ours:           {their_seconds / our_seconds:8.1f} x")

    spread = float(metrics.fair_crps_spread(forecast_chunked).mean().compute(scheduler="threads"))
    corrected = their_value - spread / (2 * members)
    print(f"bias correction: xskillscore − E|X−X'|/(2M) = {their_value:.8f} − {spread:.6f}/{2 * members} "
          f"= {corrected:.8f}; ours {our_value:.8f}; relative difference {abs(corrected - our_value) / our_value:.1e}")

    dataset_forecast = xr.Dataset({"temperature": forecast_chunked})
    dataset_truth = xr.Dataset({"temperature": truth_chunked})
    start = time.perf_counter()
    score_dataset(dataset_forecast, dataset_truth).compute(scheduler="threads")
    print(f"full evaluate pipeline (9 metrics, 7 regions, rank histograms): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
