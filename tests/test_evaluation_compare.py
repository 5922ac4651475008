"""`gencast-rmmd compare`: per-init CRPS rebuilds `evaluate`'s, the block bootstrap is exact, the CLI and its errors."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from evaluation.compare import (block_bootstrap_indices, block_length, change_pct, crps_per_init, select_targets,
                                win_rate)
from gencast_rmmd.data.forecast_io import write_forecast
from gencast_rmmd.data.stores import open_dataset
from gencast_rmmd.errors import UserInputError
from test_evaluation_scoring import INITS, LEADS, _forecast, _score_files

DAILY = pd.date_range("2001-01-01", periods=5, freq="24h").values


@pytest.fixture(scope="module")
def forecasts(tmp_path_factory, wb2_dataset):
    """baseline.nc, a.nc, b.nc: ensembles of the same inits and leads (seeds 0, 1, 2); and variants of a.nc."""
    folder = tmp_path_factory.mktemp("compare")
    paths = {}
    for seed, name in enumerate(("baseline", "a", "b")):
        paths[name] = folder / f"{name}.nc"
        write_forecast(_forecast(wb2_dataset, seed=seed), paths[name])
    a = _forecast(wb2_dataset, seed=1)
    variants = {"two_inits": a.isel(time=[0, 1]), "one_init": a.isel(time=[0]),
                "two_leads": a.isel(prediction_timedelta=[0, 1]), "no_sst": a.drop_vars("sea_surface_temperature"), "one_level": a.sel(level=[500])}
    for name, variant in variants.items():
        paths[name] = folder / f"{name}.nc"
        write_forecast(variant, paths[name])
    return paths


def test_per_init_crps_averages_to_the_evaluated_crps(forecasts, wb2_store):
    truth = open_dataset(str(wb2_store))
    tables = {name: crps_per_init(str(forecasts[name]), truth) for name in ("baseline", "a")}
    scores = _score_files(forecasts["a"], wb2_store)
    other, baseline = tables["a"], tables["baseline"]
    assert sorted(other) == ["2m_temperature", "sea_surface_temperature", "temperature@500", "temperature@850"]
    assert other["temperature@850"].shape == (len(INITS), len(LEADS))
    assert other.lead_hours == [12, 24, 48] and np.array_equal(other.init_times, INITS.values)
    np.testing.assert_allclose(other["temperature@850"].mean(0),
                               scores["temperature"].sel(metric="crps", region="global", level=850).values, rtol=1e-9)
    np.testing.assert_allclose(other["2m_temperature"].mean(0),
                               scores["2m_temperature"].sel(metric="crps", region="global").values, rtol=1e-9)
    np.testing.assert_allclose(other["sea_surface_temperature"].mean(0),  # land masked by the truth's NaN
                               scores["sea_surface_temperature"].sel(metric="crps", region="global").values, rtol=1e-9)
    # Another region averages over its own cells, as `evaluate` does.
    tropics = crps_per_init(str(forecasts["a"]), truth, "tropics")
    np.testing.assert_allclose(tropics["temperature@500"].mean(0),
                               scores["temperature"].sel(metric="crps", region="tropics", level=500).values, rtol=1e-9)
    # The headline and the win rate, by hand; a forecast against itself changes by 0 in every draw.
    draws = np.random.default_rng(0).integers(0, len(INITS), size=(50, len(INITS)))
    np.testing.assert_allclose(change_pct(baseline, baseline, draws), 0.0, atol=1e-12)
    whole = change_pct(other, baseline, np.arange(len(INITS))[None])[0]
    by_hand = np.mean([100 * (other[k].mean(0) / baseline[k].mean(0) - 1) for k in other])
    np.testing.assert_allclose(whole, by_hand, rtol=1e-12)
    assert np.ptp(change_pct(other, baseline, draws)) > 0
    wins = np.concatenate([other[k].mean(0) < baseline[k].mean(0) for k in other])
    assert win_rate(other, baseline) == wins.mean() and 0 < wins.mean() < 1
    assert win_rate(baseline, baseline) == 0.0  # ties do not win
    # One lead of a few variables: the same numbers as that column of the full table.
    cell = crps_per_init(str(forecasts["a"]), truth, lead_hours=[48], variables=["temperature"])
    assert sorted(cell) == ["temperature@500", "temperature@850"] and cell.lead_hours == [48]
    np.testing.assert_allclose(cell["temperature@850"], other["temperature@850"][:, [2]], rtol=1e-12)
    assert select_targets(list(other), ["temperature"]) == ["temperature@500", "temperature@850"]
    with pytest.raises(UserInputError, match="no target temperature@851"):
        select_targets(list(other), ["temperature@851"])


def _exact_resamples(count: int, length: int) -> np.ndarray:
    """Every equally likely moving-block resample of `count` inits: one per sequence of ⌈count/length⌉ starts."""
    blocks = -(-count // length)
    return np.array([np.concatenate([np.arange(start, start + length) for start in starts])[:count]
                     for starts in itertools.product(range(count - length + 1), repeat=blocks)])


def test_block_bootstrap_reproduces_the_enumerated_distribution():
    """5 daily inits, 48 h blocks (L = 2): 4 starts for each of 3 blocks, 64 resamples of probability 1/64."""
    exact = _exact_resamples(5, 2)
    assert exact.shape == (64, 5) and len({tuple(row) for row in exact}) == 64
    draws = 64_000
    indices = block_bootstrap_indices(DAILY, 48.0, draws, np.random.default_rng(3))
    patterns, counts = np.unique(indices, axis=0, return_counts=True)
    assert {tuple(row) for row in patterns} == {tuple(row) for row in exact}  # no other resample ever appears
    sigma = np.sqrt(draws * (1 / 64) * (1 - 1 / 64))
    assert np.abs(counts - draws / 64).max() < 5 * sigma
    # The statistic's exact bootstrap distribution against the Monte Carlo one (DKW: P(sup gap > 0.015) < 1e-12).
    rng = np.random.default_rng(4)
    baseline = {"t": rng.uniform(1.0, 2.0, (5, 3)), "z": rng.uniform(1.0, 2.0, (5, 3))}
    forecast = {name: values * rng.uniform(0.8, 1.2, values.shape) for name, values in baseline.items()}
    exact_values = np.sort(change_pct(forecast, baseline, exact))
    sampled = change_pct(forecast, baseline, indices)
    assert abs(sampled.mean() - exact_values.mean()) < 5 * exact_values.std() / np.sqrt(draws)
    exact_cdf = np.searchsorted(exact_values, exact_values, side="right") / 64  # blocks in another order tie
    sampled_cdf = np.searchsorted(np.sort(sampled), exact_values, side="right") / draws
    assert np.abs(sampled_cdf - exact_cdf).max() < 0.015
    # Irregular spacing converts with the median spacing: 24, 24, 48, 24 h → Δ = 24 h, still L = 2.
    irregular = DAILY + np.array([0, 0, 0, 24, 24], dtype="timedelta64[h]")
    assert block_length(irregular, 48.0) == 2
    np.testing.assert_array_equal(block_bootstrap_indices(irregular, 48.0, 100, np.random.default_rng(5)),
                                  block_bootstrap_indices(DAILY, 48.0, 100, np.random.default_rng(5)))


def test_block_length_one_is_the_iid_paired_bootstrap():
    """Blocks no longer than the spacing draw every init independently: the very draw of the i.i.d. bootstrap."""
    for block_hours in (1.0, 24.0):
        indices = block_bootstrap_indices(DAILY, block_hours, 1000, np.random.default_rng(7))
        np.testing.assert_array_equal(indices, np.random.default_rng(7).integers(0, 5, size=(1000, 5)))
    exact = _exact_resamples(3, 1)
    assert len(exact) == 27  # all 3^3 sequences of inits: the i.i.d. resamples


def test_block_indices_are_valid_and_contiguous_in_time_whatever_the_input_order():
    rng = np.random.default_rng(8)
    hours = np.cumsum(rng.choice([12, 24, 36], size=11))
    shuffled = rng.permutation(11)
    times = (np.datetime64("2001-01-01T00", "ns") + hours.astype("timedelta64[h]"))[shuffled]
    rank_in_time = np.argsort(np.argsort(times))
    for block_hours in (12.0, 50.0, 100.0):
        length = block_length(times, block_hours)
        assert length == int(np.ceil(block_hours / np.median(np.diff(np.sort(hours)))))
        indices = block_bootstrap_indices(times, block_hours, 500, rng)
        assert indices.shape == (500, 11) and indices.min() >= 0 and indices.max() < 11
        ranks = rank_in_time[indices]
        for start in range(0, 11, length):
            block = ranks[:, start:start + length]
            assert (np.diff(block, axis=1) == 1).all()  # consecutive inits in time within each block
        assert set(ranks[:, 0]) == set(range(11 - length + 1))  # every start is drawn


def test_block_length_rejects_what_cannot_be_resampled():
    assert block_length(DAILY, 72.0) == 3 and block_length(DAILY, 73.0) == 4
    spaced_36 = pd.date_range("2001-01-01", periods=20, freq="36h").values
    assert block_length(spaced_36, 120.0) == 4  # ⌈120 / 36⌉
    for times, block_hours, message in ((DAILY[:1], 24.0, "at least 2"), (DAILY, 0.0, "must be > 0"),
                                        (DAILY, 120.0, "smaller --block-days"),
                                        (np.repeat(DAILY, 2), 24.0, "repeat an init")):
        with pytest.raises(UserInputError, match=message):
            block_length(times, block_hours)


def test_compare_cli_prints_changes_intervals_and_writes_json(tmp_path, forecasts, wb2_store, run_cli):
    out = tmp_path / "compare.json"
    result = run_cli("compare", "--baseline", forecasts["baseline"], forecasts["a"], forecasts["b"],
                     "--truth", wb2_store, "--draws", 500, "--json", out)
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert "3 inits" in lines[0] and "blocks of 2 inits (≥ 2 days)" in lines[0]  # longest lead 48 h, daily inits
    assert lines[1].startswith(f"{forecasts['a']}: CRPS ") and "95 % interval [" in lines[1]
    assert "of 12 (target, lead) cells" in lines[1] and lines[2].startswith(f"{forecasts['b']}: CRPS ")
    assert lines[3].startswith(f"{forecasts['a']} − {forecasts['b']}: ") and "% of draws" in lines[3]
    assert lines[4] == f"wrote {out}"
    figures = json.loads(out.read_text())
    assert not list(tmp_path.glob(".*tmp*"))
    assert figures["inits"] == 3 and figures["leads_hours"] == [12, 24, 48] and figures["block_inits"] == 2
    assert figures["block_hours"] == 48.0 and figures["draws"] == 500 and len(figures["targets"]) == 4
    truth = open_dataset(str(wb2_store))
    tables = {name: crps_per_init(str(forecasts[name]), truth) for name in ("baseline", "a", "b")}
    a, b = (figures["forecasts"][str(forecasts[name])] for name in ("a", "b"))
    point_a = change_pct(tables["a"], tables["baseline"], np.arange(3)[None])[0]
    np.testing.assert_allclose(a["crps_change_pct"], point_a, rtol=1e-12)
    assert a["win_rate"] == win_rate(tables["a"], tables["baseline"]) and a["cells"] == 12
    indices = block_bootstrap_indices(INITS.values, 48.0, 500, np.random.default_rng(0))
    np.testing.assert_allclose(a["interval_95"],
                               np.percentile(change_pct(tables["a"], tables["baseline"], indices), [2.5, 97.5]))
    (pair,) = figures["pairs"]
    assert pair["a"] == str(forecasts["a"]) and pair["b"] == str(forecasts["b"])
    np.testing.assert_allclose(pair["points"], a["crps_change_pct"] - b["crps_change_pct"], rtol=1e-12)
    difference = (change_pct(tables["a"], tables["baseline"], indices)
                  - change_pct(tables["b"], tables["baseline"], indices))
    assert pair["a_ahead_fraction"] == np.mean(difference < 0)
    # One cell: --lead 24 --target temperature@850, with a given block length.
    cell = run_cli("compare", "--baseline", forecasts["baseline"], forecasts["a"], "--truth", wb2_store,
                   "--lead", 24, "--target", "temperature@850", "--block-days", 1, "--draws", 100)
    assert cell.code == 0, cell.err
    at_24h = {name: tables[name]["temperature@850"][:, 1] for name in ("a", "baseline")}
    expected = 100 * (at_24h["a"].mean() / at_24h["baseline"].mean() - 1)
    assert f"CRPS {expected:+.2f} %" in cell.out and "of 1 (target, lead) cells" in cell.out
    assert "blocks of 1 init (≥ 1 days)" in cell.out


def test_by_lead_tables_hold_only_the_shared_targets_when_a_forecast_has_more_levels(forecasts, wb2_store):
    """A forecast with fewer levels (the store's two, where the simulator's reference holds all 13) scores
    against one with more on the levels they share: every table has the same keys and the changes compute.
    Before, the fuller forecast's table kept its extra levels and `lead_changes` failed with a KeyError."""
    from evaluation.by_lead import lead_changes, per_init_tables, shared_targets
    from evaluation.compare import forecast_layout

    truth = open_dataset(str(wb2_store))
    paths = {"baseline": str(forecasts["baseline"]), "one_level": str(forecasts["one_level"])}
    targets = shared_targets({label: forecast_layout(path) for label, path in paths.items()}, truth)
    assert sorted(targets) == ["2m_temperature", "sea_surface_temperature", "temperature@500"]
    tables = per_init_tables(paths, truth, targets)
    assert list(tables["baseline"]) == list(tables["one_level"]) == targets
    changes = lead_changes(tables, "one_level", None)["baseline"]     # the fuller forecast against the other
    assert changes.targets == 3 and len(changes.change_pct) == 3


def test_by_lead_changes_are_compare_s_figures_lead_by_lead(forecasts, wb2_store):
    """The landing page's figures (`evaluation.by_lead`): over all leads exactly `compare_forecasts`'s point,
    interval (the same draws) and wins; each lead the change of that lead's column with the same resampled
    inits; too few inits for a block give no interval and say why; mismatched forecasts are refused."""
    from evaluation.by_lead import BETTER, LEVEL, WORSE, LeadChanges, bootstrap, lead_changes, per_init_tables, \
        shared_targets
    from evaluation.compare import change_pct_by_lead, compare_forecasts, forecast_layout

    truth = open_dataset(str(wb2_store))
    paths = {name: str(forecasts[name]) for name in ("baseline", "a", "b")}
    layouts = {label: forecast_layout(path) for label, path in {**paths, "no_sst": str(forecasts["no_sst"])}.items()}
    targets = shared_targets(layouts, truth)
    assert targets == ["2m_temperature", "temperature@500", "temperature@850"]        # every forecast has them
    del layouts["no_sst"]
    tables = per_init_tables(paths, truth, shared_targets(layouts, truth))
    indices, sample = bootstrap(tables, 500, 0, {label: layout.members for label, layout in layouts.items()})
    assert sample.block_inits == 2 and sample.no_interval is None and sample.lead_hours == [12, 24, 48]
    assert sample.members == {"baseline": 6, "a": 6, "b": 6} and len(sample.targets) == 4
    changes = lead_changes(tables, "baseline", indices)
    assert set(changes) == {"a", "b"}
    reference = compare_forecasts(paths["baseline"], [paths["a"], paths["b"]], truth, draws=500, seed=0)
    for name in ("a", "b"):
        figures, row = reference["forecasts"][paths[name]], changes[name]
        np.testing.assert_allclose(row.overall_pct, figures["crps_change_pct"], rtol=1e-12)
        np.testing.assert_allclose(row.overall_interval_95, figures["interval_95"], rtol=1e-12)
        assert row.overall_won == figures["targets_won"] == sum(row.targets_won) and row.targets == 4
        np.testing.assert_allclose(np.mean(row.change_pct), row.overall_pct, rtol=1e-12)
        for lead in range(3):
            column = {target: values[:, [lead]] for target, values in tables[name].items()}
            base = {target: values[:, [lead]] for target, values in tables["baseline"].items()}
            np.testing.assert_allclose(row.change_pct[lead],
                                       change_pct(column, base, np.arange(3)[None])[0], rtol=1e-12)
            np.testing.assert_allclose(row.interval_95[lead],
                                       np.percentile(change_pct_by_lead(column, base, indices)[:, 0], [2.5, 97.5]))
    # Verdicts: the interval decides; without one, the sign.
    row = LeadChanges("x", "y", [-2.0, 0.5, 3.0], [[-3.0, -1.0], [-1.0, 2.0], [1.0, 5.0]], [4, 2, 0], 4, 0.5,
                      [-1.0, 2.0], 6)
    assert row.verdicts() == [BETTER, LEVEL, WORSE]
    assert LeadChanges("x", "y", [-2.0, 0.5], None, [4, 2], 4, -0.75, None, 6).verdicts() == [BETTER, WORSE]
    # Two inits a day apart cannot be resampled in blocks covering a 48 h lead: no interval, and why.
    two = {name: str(forecasts[name]) for name in ("two_inits",)}
    two_tables = per_init_tables(two, truth, targets)
    none, short = bootstrap(two_tables, 500, 0)
    assert none is None and short.block_inits is None and "nothing to resample" in short.no_interval
    assert lead_changes({**two_tables, "same": two_tables["two_inits"]}, "two_inits", None)["same"].interval_95 is None
    with pytest.raises(UserInputError, match="other inits or leads than the others"):
        per_init_tables({"baseline": paths["baseline"], "two_inits": str(forecasts["two_inits"])}, truth, targets)


@pytest.mark.parametrize("arguments, message", [
    (("--lead", 36), "no lead 36 h in"),
    (("--target", "temperature@851"), "no target temperature@851"),
    (("--target", "geopotential"), "variables: 2m_temperature, sea_surface_temperature, temperature"),
    (("--draws", 50), "--draws must be at least 100"),
    (("--block-days", 0), "--block-days must be > 0"),
    (("--block-days", 3), "smaller --block-days or forecast more inits"),
    (("--region", "mars"), "unknown --region 'mars'"),
])
def test_compare_bad_options_exit_2_with_one_line_before_scoring(forecasts, wb2_store, run_cli, arguments, message):
    result = run_cli("compare", "--baseline", forecasts["baseline"], forecasts["a"], "--truth", wb2_store,
                     *arguments)
    assert result.code == 2, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err  # no "scoring" line


def test_compare_bad_files_exit_2_with_one_line(tmp_path, forecasts, wb2_store, run_cli):
    cases = {
        "no forecast at": (forecasts["baseline"], tmp_path / "missing.nc"),
        "not the baseline's inits (2 inits against the baseline's 3; lacks 2001-01-04T00:00:00)":
            (forecasts["baseline"], forecasts["two_inits"]),
        "no lead 48 h of the baseline (its leads: 12, 24 h)": (forecasts["baseline"], forecasts["two_leads"]),
        "lacks the baseline's target(s) sea_surface_temperature": (forecasts["baseline"], forecasts["no_sst"]),
        "a forecast is given twice": (forecasts["baseline"], forecasts["a"], forecasts["a"]),
        "the bootstrap over inits needs at least 2": (forecasts["one_init"],) * 2,
        "2 inits at their median spacing of 24 h, not fewer than the 2 inits": (forecasts["two_inits"],) * 2,
    }
    for message, (baseline, *others) in cases.items():
        result = run_cli("compare", "--baseline", baseline, *others, "--truth", wb2_store)
        assert result.code == 2, (message, result.err)
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
