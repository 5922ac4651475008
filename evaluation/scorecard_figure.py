"""The scorecard PNG, in the style of GenCast (Price et al. 2024, Fig. 2) and WeatherBench2.

Rows are variable × level, columns lead times; a cell's colour is the
relative difference 100·(A − B)/B in % on a diverging blue–red scale clipped
at ±`CLIP_PERCENT`: blue where A has the lower error (better), red where it is
worse, white where they tie. One row of panels per candidate forecast, with a
CRPS panel and an ensemble-mean RMSE panel side by side. matplotlib is
imported here only, so the command line stays fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.scorecard import lead_label, row_label

CLIP_PERCENT = 20.0
COLORMAP = "RdBu_r"  # negative (A better) blue, positive (A worse) red
PANEL_METRICS: tuple[tuple[str, str], ...] = (("crps", "CRPS"), ("ensemble_mean_rmse", "Ensemble-mean RMSE"))
_CELL_INCHES = (0.34, 0.2)  # width, height of one cell


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
                          color="white" if abs(value) > 0.6 * CLIP_PERCENT else "black")
    axes.set_title(title, fontsize=9, loc="left")
    return image


def plot_scorecard(comparisons: dict[str, dict[str, pd.DataFrame]], baseline_label: str, region: str,
                   out: Path) -> None:
    """Write the scorecard PNG to `out` (atomically).

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
    norm = Normalize(vmin=-CLIP_PERCENT, vmax=CLIP_PERCENT, clip=True)
    colormap = plt.get_cmap(COLORMAP)
    image = None
    for row, label in enumerate(labels):
        for column, (metric, metric_name) in enumerate(PANEL_METRICS):
            image = _draw_panel(axes[row, column], comparisons[label][metric],
                                f"{metric_name}: {label} vs {baseline_label}", column == 0, norm, colormap)
    colorbar = figure.colorbar(image, ax=axes, orientation="horizontal", extend="both", shrink=0.6,
                               aspect=40, pad=0.02)
    colorbar.set_label(f"relative difference (A − B) / B  [%],  clipped at ±{CLIP_PERCENT:g}%\n"
                       "blue: A better   ·   red: A worse", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    figure.suptitle(f"Scorecard, region: {region.replace('_', ' ')}", fontsize=11)
    with atomic_path(out) as temporary:
        figure.savefig(temporary, dpi=150, format="png")
    plt.close(figure)
