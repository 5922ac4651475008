"""`gencast-rmmd scorecard`: PNG, HTML and markdown; headline counts; speedup table; bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from evaluation.metrics import METRICS
from evaluation.scorecard import compare, load_scores

LEADS = pd.to_timedelta(np.arange(1, 9) * 12, unit="h")
LEVELS = np.array([500, 700, 850])


def _scores(label: str, crps_scale: np.ndarray | float, seed: int = 0) -> xr.Dataset:
    """A scores file like `evaluate` writes, with CRPS and RMSE growing with lead, scaled by `crps_scale`."""
    rng = np.random.default_rng(seed)
    growth = np.sqrt(np.arange(1, len(LEADS) + 1))

    def values(extra_shape):
        base = np.ones((len(METRICS), 2, len(LEADS), *extra_shape)) * growth.reshape(1, 1, -1, *[1] * len(extra_shape))
        base *= 1.0 + 0.01 * rng.standard_normal(base.shape)
        base[METRICS.index("spread_skill_ratio")] = 1.0
        return base

    upper, surface = values((len(LEVELS),)), values(())
    upper[METRICS.index("crps")] *= crps_scale
    if np.isscalar(crps_scale):
        surface[METRICS.index("crps")] *= crps_scale
    coords = {"metric": list(METRICS), "region": ["global", "tropics"], "lead_time": LEADS, "level": LEVELS}
    return xr.Dataset(
        {"2m_temperature": (("metric", "region", "lead_time"), surface),
         "geopotential": (("metric", "region", "lead_time", "level"), upper),
         "geopotential_rank_histogram": (("region", "lead_time", "level", "rank"),
                                         np.full((2, len(LEADS), len(LEVELS), 5), 0.2))},
        coords=coords, attrs={"label": label, "member_count": 4, "init_count": 10,
                              "first_init": "2001-01-01T00:00", "last_init": "2001-01-10T00:00"})


@pytest.fixture
def score_files(tmp_path):
    """A (student) better than B (teacher) on exactly 20 of 32 targets (24 Z, 8 2T tied); C on none."""
    scale = np.full((len(LEADS), len(LEVELS)), 0.9)
    scale[:4, 0] = 1.15  # four targets where A is worse (Z500, leads 0.5-2 days)
    paths = {}
    for name, label, crps_scale, seed in (("a", "student", scale, 0), ("b", "teacher", 1.0, 0),
                                          ("c", "persistence", 1.3, 1)):
        paths[name] = tmp_path / f"{name}.nc"
        _scores(label, crps_scale, seed).to_netcdf(paths[name])
    return paths


def test_scorecard_writes_png_html_markdown_with_headline(tmp_path, score_files, run_cli):
    out = tmp_path / "card"
    result = run_cli("scorecard", "--scores", score_files["a"], "--baseline", score_files["b"], "--out", out)
    assert result.code == 0, result.err
    a, b = load_scores(score_files["a"]), load_scores(score_files["b"])
    crps = compare(a, b, "crps", "global")
    better = int((crps["candidate"] < crps["baseline"]).sum())
    assert len(crps) == 8 + 24 and better == 20
    sentence = "student better than teacher on 20 of 32 targets (variable, level, lead)"
    assert sentence in result.out
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(out / "scorecard.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    page = (out / "index.html").read_text()
    assert sentence in page and "<img src='scorecard.png'" in page
    assert "<h2>geopotential</h2>" in page and "student SSR" in page and "teacher RMSE" in page
    summary = (out / "summary.md").read_text()
    assert sentence in summary and "| Z500 | 0.5 |" in summary and "| 2T | 4 |" in summary
    # Z500 at 0.5 days: A worse by +15 %, shown as such in the table.
    z500 = crps.loc[("geopotential", 500, LEADS[0])]
    assert z500["relative_difference"] == pytest.approx(15.0, abs=0.5)


def test_several_forecasts_and_a_timing_table(tmp_path, score_files, run_cli):
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"A": {"wall_seconds_per_step": 0.5, "denoiser_calls_per_step": 8},
                                  "teacher": {"wall_seconds_per_step": 2.0, "denoiser_calls_per_step": 39}}))
    out = tmp_path / "card"
    result = run_cli("scorecard", "--scores", score_files["a"], "--scores", score_files["c"],
                     "--baseline", score_files["b"], "--out", out, "--timing", timing)
    assert result.code == 0, result.err
    assert "persistence better than teacher on 0 of 32 targets" in result.out
    summary = (out / "summary.md").read_text()
    assert "## Speed" in summary
    assert "| student | 0.5 | 8 | 4 | 4.875 |" in summary
    assert "persistence ΔCRPS %" in summary


def test_scorecard_bad_input_exits_2(tmp_path, score_files, run_cli):
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"A": {"wall_seconds_per_step": 0.5}}))
    cases = {
        "needs numeric wall_seconds_per_step": ("--timing", timing),
        "has no region": ("--region", "arctic"),
    }
    for message, extra in cases.items():
        result = run_cli("scorecard", "--scores", score_files["a"], "--baseline", score_files["b"],
                         "--out", tmp_path / "card", *extra)
        assert result.code == 2 and message in result.err, result.err
    missing = run_cli("scorecard", "--scores", tmp_path / "nope.nc", "--baseline", score_files["b"],
                      "--out", tmp_path / "card")
    assert missing.code == 2 and "no scores file" in missing.err
