"""Across-seed aggregation: hand-computed t intervals, grouping, trend words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memostudy.study.aggregate import (
    TrendTest,
    aggregate,
    mean_ci,
    paired_differences,
    setting_order,
    trend,
    trend_test,
    verdict,
)


def test_mean_ci_matches_hand_computation() -> None:
    # values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(0.975, df=2) = 4.302652...
    m, lo, hi = mean_ci([1, 2, 3])
    assert m == 2
    assert hi - m == pytest.approx(4.302652729911275 / np.sqrt(3), rel=1e-9)
    assert m - lo == pytest.approx(hi - m)
    assert mean_ci([0.4]) == (0.4, 0.4, 0.4)
    assert np.isnan(mean_ci([])[0])


def test_aggregate_groups_settings_in_order() -> None:
    t = pd.DataFrame({"augment": [False, False, True, True], "seed": [0, 1, 0, 1],
                      "memorized_fraction": [0.6, 0.5, 0.3, 0.4]})
    a = aggregate(t, ["augment"], ["memorized_fraction"])
    assert list(a["augment"]) == [False, True]
    assert list(a["n_seeds"]) == [2, 2]
    assert a["memorized_fraction_mean"].tolist() == pytest.approx([0.55, 0.35])


def test_trend_needs_separated_intervals() -> None:
    falls = pd.DataFrame({"x_mean": [0.6, 0.3], "x_ci_low": [0.55, 0.25], "x_ci_high": [0.65, 0.35]})
    assert trend(falls, "x") == "falls"
    overlap = pd.DataFrame({"x_mean": [0.6, 0.5], "x_ci_low": [0.4, 0.3], "x_ci_high": [0.8, 0.7]})
    assert trend(overlap, "x") == "no clear trend"
    rises = pd.DataFrame({"x_mean": [0.1, 0.2, 0.5], "x_ci_low": [0.05, 0.1, 0.4], "x_ci_high": [0.15, 0.3, 0.6]})
    assert trend(rises, "x") == "rises"


def test_fraction_intervals_are_clipped_to_0_1() -> None:
    # per-seed fractions 0.0, 0.0, 0.125: the plain t-interval reaches below 0
    m, lo, hi = mean_ci([0.0, 0.0, 0.125])
    assert lo < 0
    assert mean_ci([0.0, 0.0, 0.125], bounds=(0.0, 1.0)) == (m, 0.0, hi)
    t = pd.DataFrame({"s": [1, 1, 1], "memorized_fraction": [0.0, 0.0, 0.125], "val_loss": [-0.1, -0.1, 0.0]})
    a = aggregate(t, ["s"], ["memorized_fraction", "val_loss"])
    assert a["memorized_fraction_ci_low"].iloc[0] == 0.0
    assert a["val_loss_ci_low"].iloc[0] < -0.1  # not a fraction: not clipped


def _paired(values: dict) -> pd.DataFrame:
    """A (setting, seed) table from {setting: [value of seed 0, seed 1, ...]}."""
    return pd.DataFrame([{"n": k, "seed": s, "x": v} for k, vals in values.items() for s, v in enumerate(vals)])


def test_paired_differences_are_per_seed_differences_to_the_reference() -> None:
    # seeds differ a lot (0.1 .. 0.5) but each seed's value at n=32 is 0.1 lower than at n=8
    t = _paired({32: [0.0, 0.2, 0.4], 8: [0.1, 0.3, 0.5]})
    d = paired_differences(t, "n", ["x"])
    assert list(d["n"]) == [8, 32]  # numbers in ascending order; the first is the reference
    assert d["x_diff_mean"].tolist() == pytest.approx([0.0, -0.1])
    # identical differences: no spread, so the interval is that difference
    assert d["x_diff_ci_low"].iloc[1] == pytest.approx(-0.1) and d["x_diff_ci_high"].iloc[1] == pytest.approx(-0.1)
    assert list(d["n_pairs"]) == [3, 3]
    # the unpaired intervals of the two means overlap widely
    a = aggregate(t, ["n"], ["x"])
    assert a["x_ci_low"].max() < a["x_ci_high"].min()
    assert paired_differences(t, "n", ["x"], reference=32)["x_diff_mean"].tolist() == pytest.approx([0.1, 0.0])
    with pytest.raises(ValueError, match="reference setting 64"):
        paired_differences(t, "n", ["x"], reference=64)


def test_trend_test_is_exact_with_few_permutations_and_uses_the_pairing() -> None:
    # 2 settings x 5 seeds, the later setting higher in every seed: rho = 1; of the 2^5 = 32 within-seed
    # permutations, only this one and its mirror reach |rho| = 1, so the two-sided p is 2/32
    t = _paired({0: [0.1, 0.2, 0.3, 0.4, 0.5], 1: [0.2, 0.3, 0.4, 0.5, 0.6]})
    r = trend_test(t, "n", "x")
    assert r.rho == 1.0 and r.exact and r.n_seeds == 5 and r.p == pytest.approx(2 / 32)
    # the same numbers with the seeds' pairing broken: no trend within seeds
    mixed = _paired({0: [0.1, 0.2, 0.3, 0.4, 0.5], 1: [0.6, 0.5, 0.4, 0.3, 0.2]})
    assert trend_test(mixed, "n", "x").p > 0.5


def test_trend_test_of_many_settings_and_ties() -> None:
    rng = np.random.default_rng(0)
    t = _paired({n: list(0.1 * i + 0.01 * rng.normal(size=6)) for i, n in enumerate([8, 32, 128, 494])})
    r = trend_test(t, "n", "x", n_resamples=2000)
    assert r.rho == 1.0 and r.p < 0.001 and not r.exact
    flat = _paired({0: [0.0] * 4, 1: [0.0] * 4})
    assert trend_test(flat, "n", "x").rho == 0.0 and trend_test(flat, "n", "x").p == 1.0
    assert np.isnan(trend_test(_paired({0: [0.1]}), "n", "x").p)


def test_verdict_reads_direction_and_significance() -> None:
    up, down, weak = TrendTest(0.8, 0.01, 5, 2, True), TrendTest(-0.8, 0.01, 5, 2, True), TrendTest(0.8, 0.2, 5, 2, True)
    assert verdict("rises", "memorized_fraction", up) == "seen"
    assert verdict("falls", "memorized_fraction", up) == "opposite"
    assert verdict("falls", "memorized_fraction", weak) == "not seen"
    assert verdict("rises", "c_t", down) == "seen"  # C_T falls as copying rises
    assert verdict("rises", "val_loss", up) == ""
    assert setting_order(pd.DataFrame({"m": ["small", "base", "small"]}), "m") == ["small", "base"]
    assert setting_order(pd.DataFrame({"a": [True, False]}), "a") == [False, True]
