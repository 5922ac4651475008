"""Probabilistic and deterministic verification metrics (docs/DESIGN.md §6).

Two layers, as in WeatherBench2 `metrics.py`:

1. *Pointwise statistics*: per grid point, lead and initialisation, from the
   ensemble X_1..X_M and the truth Y (member axis reduced). They are linear
   in what gets averaged, so they can be area-averaged and then averaged over
   initialisation times (`evaluation.scoring`).
2. *Finalisers*: turn those averages into the reported metric (square roots
   for RMSE and spread, the spread/skill ratio). Square roots are taken only
   after averaging over space and initialisation times.

Numerics: every kernel works on anomalies D_i = X_i − Y in float64, so that
large offsets (geopotential ~5e4 m² s⁻²) do not cancel the small spread.

References: Gneiting & Raftery (2007) JASA 102:359 (CRPS); Ferro (2014)
QJRMS 140:1917 and Zamo & Naveau (2018) Math. Geosci. 50:209 (fair CRPS and
its sorted form); Fortin et al. (2014) J. Hydrometeor. 15:1708 (spread/skill
with √((M+1)/M)); Hamill (2001) MWR 129:550 (rank histograms); WeatherBench2
`metrics.py` (CRPS, CRPSSkill, CRPSSpread, EnsembleMeanRMSE,
DebiasedEnsembleMeanMSE, EnsembleStddev, SpreadSkillRatio); GenCast paper
eqs. A.6 and A.9.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import xarray as xr

# Pointwise statistics, in the order the fused kernel stacks them.
STATISTICS: tuple[str, ...] = (
    "absolute_error",            # mean_i |X_i − Y|                  (CRPS skill part)
    "pair_spread",               # E|X − X'|, i ≠ j                   (CRPS spread part)
    "ensemble_mean_squared_error",  # (X̄ − Y)²
    "ensemble_variance",         # var_ddof1(X)
    "ensemble_mean_error",       # X̄ − Y
    "truth_rank",                # rank of Y among the members, 0..M (random ties)
)


# --------------------------------------------------------------------------- numpy kernels


def sorted_pair_spread(sorted_members: np.ndarray) -> np.ndarray:
    """E|X − X'| over distinct members from members sorted along the last axis.

    With X₍₁₎ ≤ … ≤ X₍M₎, Σ_i Σ_j |X_i − X_j| = 2·Σ_i (2i − M − 1)·X₍i₎, so the
    mean over the M(M−1) ordered pairs i ≠ j is 2·mean_i[(2i − M − 1)·X₍i₎]/(M − 1).
    O(M) after an O(M log M) sort. Unbiased for E|X − X'| when M ≥ 2; returns 0
    for M = 1 (a point mass has no spread). Units: those of X.
    """
    members = sorted_members.shape[-1]
    if members < 2:
        return np.zeros(sorted_members.shape[:-1], dtype=np.float64)
    rank_coefficients = 2.0 * np.arange(1, members + 1, dtype=np.float64) - members - 1.0
    return 2.0 * (sorted_members @ rank_coefficients) / (members * (members - 1.0))


def fair_crps_parts_numpy(forecast: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(skill, spread) of the fair CRPS with members on the last axis of `forecast`.

    skill = mean_i |X_i − Y|; spread = E|X − X'| over i ≠ j (`sorted_pair_spread`);
    fair CRPS = skill − ½·spread. Computed in float64 on the sorted anomalies
    D₍i₎ = X₍i₎ − Y (`sorted_anomaly_blocks`; the spread is shift invariant).
    Units: those of X.
    """
    points_shape, members = np.shape(forecast)[:-1], np.shape(forecast)[-1]
    skill, spread = np.empty(points_shape), np.empty(points_shape)
    for rows, anomalies in sorted_anomaly_blocks(forecast, truth):
        spread.reshape(-1)[rows] = sorted_pair_spread(anomalies)
        skill.reshape(-1)[rows] = (np.abs(anomalies, out=anomalies) @ np.ones(members)) / members
    return skill, spread


def pair_spread_numpy(forecast: np.ndarray) -> np.ndarray:
    """E|X − X'| over distinct members (`sorted_pair_spread`), members on the last axis, in float64."""
    spread = np.empty(np.shape(forecast)[:-1])
    for rows, sorted_members in sorted_anomaly_blocks(forecast, 0.0):
        spread.reshape(-1)[rows] = sorted_pair_spread(sorted_members)
    return spread


# Points per block in `sorted_anomaly_blocks`: a block's float64 work (BLOCK_POINTS × M × 8 bytes,
# 400 kB for 50 members) stays in a core's cache, where a whole chunk's would not.
BLOCK_POINTS = 1024


def sorted_anomaly_blocks(forecast: np.ndarray, truth: np.ndarray):
    """Yield `(rows, D)` over blocks of points: D₍i₎ = X₍i₎ − Y in float64, each row sorted.

    `rows` is a slice of the flattened (C order) index of the points, the shape
    of `forecast` less its last (member) axis; `truth` is broadcast to it.
    The members are sorted in their own dtype (float32 stays float32: half the
    bytes to move, and sorting is exact in any dtype) and only then converted
    and shifted: both steps are monotone, so D holds exactly the values, in
    order, that sorting X − Y computed in float64 would give. NaN members sort
    last and make the point's statistics NaN. Blocks of non-negative float32
    (temperature, geopotential, precipitation) sort as int32: the same order.
    """
    forecast = np.asarray(forecast)
    if forecast.dtype not in (np.float32, np.float64):
        forecast = forecast.astype(np.float64)
    points_shape = forecast.shape[:-1]
    truth = np.broadcast_to(np.asarray(truth, dtype=np.float64), points_shape).reshape(-1)
    start = 0
    for members in _member_rows(forecast):
        for offset in range(0, members.shape[0], BLOCK_POINTS):
            block = np.array(members[offset:offset + BLOCK_POINTS], order="C")  # a copy: sorted in place
            if block.dtype == np.float32 and not np.signbit(block).any():
                # IEEE floats without a sign bit order as their bit patterns (+NaN after +inf),
                # and numpy sorts short int32 rows about 1.5x faster than float32 ones.
                block.view(np.int32).sort(axis=-1)
            else:
                block.sort(axis=-1)
            rows = slice(start + offset, start + offset + block.shape[0])
            anomalies = block.astype(np.float64, copy=False)
            anomalies -= truth[rows, None]
            yield rows, anomalies
        start += members.shape[0]


def _member_rows(forecast: np.ndarray):
    """Views of `forecast` as 2-D (points, members) arrays that cover its points once, in C order.

    apply_ufunc hands the kernel the member axis moved last, a strided view;
    reshaping it whole would copy the chunk whenever the member axis sat between
    other axes (`time, prediction_timedelta, number, level, …`), so the leading
    axes are iterated until the rest reshapes without a copy.
    """
    if 0 in forecast.shape[:-1]:
        return
    for split in range(forecast.ndim):  # split = ndim − 1 always works: one point per view
        rows_shape = (int(np.prod(forecast.shape[split:-1])), forecast.shape[-1])
        try:
            np.reshape(forecast[(0,) * split], rows_shape, copy=False)
        except ValueError:
            continue
        for index in np.ndindex(forecast.shape[:split]):
            yield np.reshape(forecast[index], rows_shape, copy=False)
        return


def _anomalies(forecast: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """D_i = X_i − Y in float64, members on the last axis."""
    return np.asarray(forecast, dtype=np.float64) - np.asarray(truth, dtype=np.float64)[..., None]


def truth_rank_numpy(forecast: np.ndarray, truth: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Rank of the truth among M members (members on the last axis), 0..M, ties broken at random.

    rank = #{i : X_i < Y} + ⌊U·(#{i : X_i = Y} + 1)⌋ with U ~ Uniform[0, 1) given in
    `uniforms` (same shape as `truth`), so a truth tied with k members takes each
    of the k + 1 possible ranks with equal probability (Hamill 2001). NaN truth
    gives rank −1 (masked downstream).
    """
    return _rank_from_anomalies(_anomalies(forecast, truth), np.isnan(truth), uniforms)


def _rank_from_anomalies(anomalies: np.ndarray, truth_missing: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    # The sign of X − Y is exact in IEEE arithmetic: X − Y = 0 iff X = Y.
    below = np.sum(anomalies < 0.0, axis=-1)
    ties = np.sum(anomalies == 0.0, axis=-1)
    rank = below + np.floor(np.asarray(uniforms) * (ties + 1)).astype(np.int64)
    return np.where(truth_missing, -1, rank)


def ensemble_statistics_numpy(forecast: np.ndarray, truth: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """All pointwise statistics of `STATISTICS` in one pass, stacked on a new last axis.

    `forecast` has members on its last axis; `truth` and `uniforms` lack it. The
    ensemble variance uses ddof = 1 and is 0 for M = 1 (a point mass). Everything
    is computed on the sorted anomalies D₍i₎ = X₍i₎ − Y in float64
    (`sorted_anomaly_blocks`: one sort per point, block by block).
    """
    members = np.shape(forecast)[-1]
    statistics = np.empty((*np.shape(forecast)[:-1], len(STATISTICS)))
    flat = statistics.reshape(-1, len(STATISTICS))
    truth_missing = np.broadcast_to(np.isnan(truth), statistics.shape[:-1]).reshape(-1)
    uniforms = np.broadcast_to(uniforms, statistics.shape[:-1]).reshape(-1)
    for rows, anomalies in sorted_anomaly_blocks(forecast, truth):
        mean_error = anomalies.mean(axis=-1)
        flat[rows, 1] = sorted_pair_spread(anomalies)
        flat[rows, 2] = mean_error**2
        flat[rows, 3] = anomalies.var(axis=-1, ddof=1) if members > 1 else 0.0
        flat[rows, 4] = mean_error
        flat[rows, 5] = _rank_from_anomalies(anomalies, truth_missing[rows], uniforms[rows])
        flat[rows, 0] = np.abs(anomalies, out=anomalies).mean(axis=-1)
    return statistics


# --------------------------------------------------------------------------- pointwise xarray metrics


def _member_apply(kernel, member_dim: str, forecast: xr.DataArray, *pointwise: xr.DataArray,
                  output_dtype=np.float64, output_dim: str | None = None, output_size: int = 1) -> xr.DataArray:
    """`kernel(members_last, *pointwise)` over every point, lazily block by block for dask data.

    `pointwise` arrays (the truth, tie-break draws) lack `member_dim`. The result
    has the broadcast dims of the inputs less `member_dim`, plus `output_dim` (of
    `output_size`) last when given. Dask-backed inputs go through `_map_point_blocks`.
    """
    return xr.apply_ufunc(
        lambda *arrays: _map_point_blocks(kernel, *arrays, output_dtype=output_dtype,
                                          output_size=output_size if output_dim else None),
        forecast, *pointwise, input_core_dims=[[member_dim], *([[]] * len(pointwise))],
        output_core_dims=[[output_dim]] if output_dim else [[]], dask="allowed")


def _map_point_blocks(kernel, forecast, *pointwise, output_dtype, output_size: int | None):
    """Run a members-last numpy kernel on each dask block, keeping the member axis in the graph.

    `apply_ufunc(dask="parallelized")` contracts the member axis, and dask then
    copies every forecast block (`concatenate3`) before the kernel sees it: a
    whole extra pass over the largest array. Here the member axis stays an axis
    of the output (length 1, or `output_size`), so each task runs the kernel on
    the block itself, the lazy member-last transpose fused in as a view.
    `pointwise` arrays (no member axis) are broadcast against the forecast's points.
    """
    import dask.array

    if not any(isinstance(array, dask.array.Array) for array in (forecast, *pointwise)):
        return kernel(forecast, *pointwise)
    forecast = dask.array.asarray(forecast)
    forecast = forecast.rechunk({forecast.ndim - 1: -1})  # every member of a point in one block
    expanded = [dask.array.asarray(array)[..., None] for array in pointwise]

    def block_kernel(members, *arrays):
        result = kernel(members, *(array[..., 0] for array in arrays))
        return result[..., None] if output_size is None else result

    # Blocks are matched by position: the pointwise arrays are rechunked to the forecast's points.
    expanded = [array.rechunk(forecast.chunks[:-1] + ((1,),)) if array.shape[:-1] == forecast.shape[:-1] else array
                for array in expanded]
    mapped = dask.array.map_blocks(block_kernel, forecast, *expanded, dtype=output_dtype,
                                   chunks=forecast.chunks[:-1] + ((output_size or 1,),),
                                   meta=np.empty((0,) * forecast.ndim, dtype=output_dtype))
    return mapped[..., 0] if output_size is None else mapped


def fair_crps_skill(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "number") -> xr.DataArray:
    """CRPS skill part, pointwise: mean_i |X_i − Y| (units of X; unbiased; = MAE for M = 1)."""
    return _member_apply(lambda x, y: fair_crps_parts_numpy(x, y)[0], member_dim, forecast, truth)


def fair_crps_spread(forecast: xr.DataArray, member_dim: str = "number") -> xr.DataArray:
    """CRPS spread part, pointwise: E|X − X'| = 2·mean_i[(2i − M − 1)·X₍i₎]/(M − 1).

    Mean absolute difference over the M(M−1) ordered pairs of distinct members,
    from the sorted members in O(M log M); unbiased for M ≥ 2 (Zamo & Naveau 2018).
    """
    return _member_apply(pair_spread_numpy, member_dim, forecast)


def fair_crps(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "number") -> xr.DataArray:
    """Fair (ensemble-size unbiased) CRPS, pointwise: skill − ½·spread.

    CRPS_fair = (1/M)Σ_i|X_i − Y| − 1/(2M(M−1)) Σ_i Σ_j |X_i − X_j|, computed with
    the sorted O(M log M) spread. Its expectation equals the CRPS of the
    distribution the members are drawn from, for any M ≥ 2 (Ferro 2014; GenCast
    eq. A.6; WB2 `CRPS`). Units of X.
    """
    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        skill, spread = fair_crps_parts_numpy(x, y)
        return skill - 0.5 * spread
    return _member_apply(kernel, member_dim, forecast, truth)


def biased_crps(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "number") -> xr.DataArray:
    """The classical ensemble CRPS (the CRPS of the empirical distribution), pointwise.

    CRPS_biased = (1/M)Σ_i|X_i − Y| − 1/(2M²) Σ_i Σ_j |X_i − X_j| = skill − ½·((M−1)/M)·spread.
    Biased high by ½·E|X − X'|/M for finite M; identical to `properscoring` and
    `xskillscore.crps_ensemble`. Relation: CRPS_fair = CRPS_biased − spread/(2M).
    """
    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        members = x.shape[-1]
        skill, spread = fair_crps_parts_numpy(x, y)
        return skill - 0.5 * (members - 1.0) / members * spread
    return _member_apply(kernel, member_dim, forecast, truth)


def ensemble_mean_squared_error(forecast: xr.DataArray, truth: xr.DataArray,
                                member_dim: str = "number") -> xr.DataArray:
    """(X̄ − Y)², the squared error of the ensemble mean X̄ = (1/M)Σ_i X_i (units of X squared).

    Its mean over space and time is the ensemble-mean MSE (WB2 `EnsembleMeanMSE`);
    it is biased high by E[var(X)]/M as an estimate of the infinite-ensemble MSE.
    """
    return (forecast.mean(member_dim) - truth) ** 2


def debiased_ensemble_mean_squared_error(forecast: xr.DataArray, truth: xr.DataArray,
                                         member_dim: str = "number") -> xr.DataArray:
    """(X̄ − Y)² − var_ddof1(X)/M: unbiased for the MSE of the infinite-ensemble mean.

    Subtracting the sampling variance of X̄ removes the finite-ensemble penalty
    (WB2 `DebiasedEnsembleMeanMSE`; GenCast eq. A.9). Undefined for M = 1. May be
    negative pointwise; only its averages are meaningful.
    """
    members = forecast.sizes[member_dim]
    return ensemble_mean_squared_error(forecast, truth, member_dim) - ensemble_variance(forecast, member_dim) / members


def ensemble_variance(forecast: xr.DataArray, member_dim: str = "number") -> xr.DataArray:
    """Unbiased ensemble variance var_ddof1(X) = Σ_i (X_i − X̄)²/(M − 1), pointwise (units of X squared)."""
    return forecast.var(member_dim, ddof=1)


def truth_rank(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "number",
               seed: int = 0) -> xr.DataArray:
    """Rank 0..M of the truth among the members, ties broken at random with a seeded generator.

    See `truth_rank_numpy` for the rule. `tie_break_uniforms(truth, seed)`
    supplies U, so the same seed and chunking give the same ranks. NaN truth
    gives −1.
    """
    return _member_apply(truth_rank_numpy, member_dim, forecast, truth, tie_break_uniforms(truth, seed),
                         output_dtype=np.int64)


def tie_break_uniforms(template: xr.DataArray, seed: int) -> xr.DataArray:
    """Uniform[0, 1) draws shaped (and chunked) like `template`, from a seeded generator.

    numpy's `default_rng(seed)` for in-memory data, dask's `default_rng(seed)`
    (reproducible for a given chunking) for dask-backed data.
    """
    if template.chunks is not None:
        import dask.array

        values = dask.array.random.default_rng(seed).random(template.shape, chunks=template.data.chunks)
    else:
        values = np.random.default_rng(seed).random(template.shape)
    return xr.DataArray(values, dims=template.dims, coords=template.coords)


def ensemble_statistics(forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = "number",
                        seed: int = 0) -> xr.Dataset:
    """The pointwise `STATISTICS` of a forecast against the truth, one variable each, lazily.

    One fused kernel (`ensemble_statistics_numpy`) per dask chunk: the forecast
    is read once for all metrics. Output variables have the truth's dims.
    """
    stacked = _member_apply(ensemble_statistics_numpy, member_dim, forecast, truth, tie_break_uniforms(truth, seed),
                            output_dim="statistic", output_size=len(STATISTICS))
    return xr.Dataset({name: stacked.isel(statistic=index, drop=True) for index, name in enumerate(STATISTICS)})


# --------------------------------------------------------------------------- finalisers


def spread_skill_ratio(mean_variance: xr.DataArray, mean_squared_error: xr.DataArray,
                       members: int) -> xr.DataArray:
    """Spread/skill ratio √((M+1)/M) · √(mean var_ddof1(X)) / √(mean (X̄ − Y)²).

    Means are over space (area weighted) and initialisation times. The factor
    √((M+1)/M) makes the ratio 1 in expectation for a perfectly calibrated
    M-member ensemble, whose ensemble-mean MSE is (1 + 1/M)·E[var] (Fortin et al.
    2014; WB2 `SpreadSkillRatio`). NaN for M = 1.
    """
    if members < 2:
        return xr.full_like(mean_variance, np.nan)
    return np.sqrt((members + 1.0) / members) * np.sqrt(mean_variance) / np.sqrt(mean_squared_error)


def finalize_metrics(means: Mapping[str, xr.DataArray], members: int) -> dict[str, xr.DataArray]:
    """Reported metrics from the space- and time-averaged pointwise statistics.

    `means[name]` is the average of statistic `name` (see `STATISTICS`). For
    M = 1 the forecast is read as a point mass: CRPS = skill = MAE (exact), spread
    and stddev are 0, and the ensemble-only metrics (debiased RMSE, SSR) are NaN.
    `rmse` is reported for M = 1 only (the deterministic RMSE); `bias` is the
    mean error of the ensemble mean (of the forecast for M = 1).
    """
    skill, spread = means["absolute_error"], means["pair_spread"]
    mse, variance = means["ensemble_mean_squared_error"], means["ensemble_variance"]
    nan = xr.full_like(mse, np.nan)
    ensemble = members >= 2
    return {
        "crps": skill - 0.5 * spread,
        "crps_skill": skill,
        "crps_spread": spread,
        "ensemble_mean_rmse": np.sqrt(mse),
        # Clipped at 0: a negative debiased MSE means "indistinguishable from 0".
        "debiased_ensemble_mean_rmse": np.sqrt((mse - variance / members).clip(min=0.0)) if ensemble else nan,
        "ensemble_stddev": np.sqrt(variance),
        "spread_skill_ratio": spread_skill_ratio(variance, mse, members),
        "rmse": np.sqrt(mse) if not ensemble else nan,
        "bias": means["ensemble_mean_error"],
    }


METRICS: tuple[str, ...] = ("crps", "crps_skill", "crps_spread", "ensemble_mean_rmse",
                            "debiased_ensemble_mean_rmse", "ensemble_stddev", "spread_skill_ratio",
                            "rmse", "bias")

# Written to the scores file so that a reader knows exactly what each number is.
FORMULAS: dict[str, str] = {
    "crps": "fair CRPS = crps_skill - 0.5 * crps_spread (unbiased for any M >= 2; for M = 1, the MAE)",
    "crps_skill": "mean_i |X_i - Y|",
    "crps_spread": "E|X - X'| over members i != j = 2 mean_i[(2i - M - 1) X_(i)] / (M - 1), sorted members",
    "ensemble_mean_rmse": "sqrt(mean (mean_i X_i - Y)^2)",
    "debiased_ensemble_mean_rmse": "sqrt(max(0, mean[(mean_i X_i - Y)^2 - var_ddof1(X) / M]))",
    "ensemble_stddev": "sqrt(mean var_ddof1(X))",
    "spread_skill_ratio": "sqrt((M + 1) / M) * ensemble_stddev / ensemble_mean_rmse",
    "rmse": "sqrt(mean (X - Y)^2), deterministic forecasts (M = 1) only",
    "bias": "mean (mean_i X_i - Y)",
    "rank_histogram": "area-weighted frequency of the truth's rank 0..M among the members, random tie-breaking",
    "averaging": ("cell-area latitude weights w = sin(upper) - sin(lower), normalised to mean 1; points "
                  "where the truth is NaN are masked; mean over space, then over initialisation times, "
                  "then square roots"),
}
