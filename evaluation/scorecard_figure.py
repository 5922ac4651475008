"""The scorecard PNG, in the style of GenCast (Price et al. 2024, Fig. 2) and WeatherBench2.

Rows are variable × level, columns lead times; a cell's colour is the
relative difference 100·(A − B)/B in % on a diverging blue–red scale clipped
at ±`clip_percent(...)` (the smallest of `CLIP_STEPS` that holds 95 % of the
cells, so a scorecard against persistence is not one saturated colour): blue
where A has the lower error (better), red where it is worse, white where they tie. One row of panels per candidate forecast, with a
CRPS panel and an ensemble-mean RMSE panel side by side. matplotlib is
imported here only, so the command line stays fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.scorecard import lead_label, row_label

CLIP_PERCENT = 20.0            # the scale when there is nothing to fit it to
CLIP_STEPS = (5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
COLORMAP = "RdBu_r"  # negative (A better) blue, positive (A worse) red
PANEL_METRICS: tuple[tuple[str, str], ...] = (("crps", "CRPS"), ("ensemble_mean_rmse", "Ensemble-mean RMSE"))
_CELL_INCHES = (0.34, 0.2)  # width, height of one cell


def clip_percent(values) -> float:
    """The colour scale's clip: the smallest of `CLIP_STEPS` at or above the 95th percentile of |value|.

    `values`: arrays of relative differences in % (any shapes).
    """
    finite = np.abs(np.concatenate([np.ravel(np.asarray(array, dtype=np.float64)) for array in values] or [[]]))
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return CLIP_PERCENT
    wanted = float(np.percentile(finite, 95))
    return next((step for step in CLIP_STEPS if step >= wanted), CLIP_STEPS[-1])


def text_colour(rgba) -> str:
    """Black or white, whichever reads better on the background `rgba` (WCAG relative luminance)."""
    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(float(channel)) for channel in rgba[:3])
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return "white" if (1.05 / (luminance + 0.05)) > ((luminance + 0.05) / 0.05) else "black"


def _grid(comparison: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, int]], list[pd.Timedelta]]:
    """Relative differences as a (rows, leads) matrix, with the row keys and the leads."""
    values = comparison["relative_difference"].unstack("lead_time")
    rows = list(dict.fromkeys((variable, level) for variable, level, _ in comparison.index))
    values = values.reindex(pd.MultiIndex.from_tuples(rows, names=["variable", "level"]))
    leads = [pd.Timedelta(lead) for lead in values.columns]
    return values.to_numpy(dtype=np.float64), rows, leads


def _draw_panel(axes, comparison: pd.DataFrame, title: str, show_rows: bool, norm, colormap):
    matrix, rows, leads = _grid(comparison)
    image = axes.imshow(np.ma.masked_invalid(matrix), cmap=colormap, norm=norm, aspect="auto",
                        interpolation="nearest")
    axes.set_facecolor("#d9d9d9")  # targets without a value
    axes.set_xticks(range(len(leads)), [lead_label(lead) for lead in leads], fontsize=7)
    axes.set_xlabel("lead time (days)", fontsize=8)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([row_label(variable, level) for variable, level in rows] if show_rows else [],
                         fontsize=7)
    axes.tick_params(length=0)
    axes.set_xticks(np.arange(-0.5, len(leads)), minor=True)
    axes.set_yticks(np.arange(-0.5, len(rows)), minor=True)
    axes.grid(which="minor", color="white", linewidth=0.6)
    axes.tick_params(which="minor", length=0)
    # Heavier separators between pressure-level variables; surface fields form one block.
    for position in range(1, len(rows)):
        (variable, level), (previous, previous_level) = rows[position], rows[position - 1]
        if variable != previous and max(level, previous_level) >= 0:
            axes.axhline(position - 0.5, color="black", linewidth=1.0)
    for spine in axes.spines.values():
        spine.set_visible(False)
    if len(rows) * len(leads) <= 240:
        for (row, column), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                axes.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=6,
                          color=text_colour(colormap(norm(value))))
    axes.set_title(title, fontsize=9, loc="left")
    return image


def comparisons_clip(comparisons: dict[str, dict[str, pd.DataFrame]]) -> float:
    """The colour scale's clip (`clip_percent`) for every panel of a scorecard."""
    return clip_percent([frames[metric]["relative_difference"].to_numpy()
                         for frames in comparisons.values() for metric, _ in PANEL_METRICS])


def plot_scorecard(comparisons: dict[str, dict[str, pd.DataFrame]], baseline_label: str, region: str,
                   out: Path) -> float:
    """Write the scorecard PNG to `out` (atomically); return its colour scale's clip in %.

    `comparisons[label][metric]` is `scorecard.compare(...)` of candidate
    `label` against the baseline on `metric` (`crps`, `ensemble_mean_rmse`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from gencast_rmmd.io_utils import atomic_path

    labels = list(comparisons)
    row_counts = [len(comparisons[label][PANEL_METRICS[0][0]].droplevel("lead_time").index.unique())
                  for label in labels]
    leads = max(comparisons[label][PANEL_METRICS[0][0]].index.get_level_values("lead_time").nunique()
                for label in labels)
    width = 2 * (1.2 + leads * _CELL_INCHES[0]) + 0.6
    heights = [0.9 + rows * _CELL_INCHES[1] for rows in row_counts]
    figure, axes = plt.subplots(len(labels), 2, figsize=(width, sum(heights) + 1.3), squeeze=False,
                                layout="constrained", gridspec_kw={"height_ratios": heights})
    clip = comparisons_clip(comparisons)
    norm = Normalize(vmin=-clip, vmax=clip, clip=True)
    colormap = plt.get_cmap(COLORMAP)
    image = None
    for row, label in enumerate(labels):
        for column, (metric, metric_name) in enumerate(PANEL_METRICS):
            image = _draw_panel(axes[row, column], comparisons[label][metric],
                                f"{metric_name}: {label} vs {baseline_label}", column == 0, norm, colormap)
    colorbar = figure.colorbar(image, ax=axes, orientation="horizontal", extend="both", shrink=0.6,
                               aspect=40, pad=0.02)
    colorbar.set_label(f"relative difference (A − B) / B  [%],  clipped at ±{clip:g}%\n"
                       "blue: A better   ·   red: A worse", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    figure.suptitle(f"Scorecard, region: {region.replace('_', ' ')}", fontsize=11)
    with atomic_path(out) as temporary:
        figure.savefig(temporary, dpi=150, format="png", bbox_inches="tight", pad_inches=0.15)  # legend whole
    plt.close(figure)
    return clip
