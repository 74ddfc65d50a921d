"""Across-seed aggregation: hand-computed t intervals, grouping, trend words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memostudy.study.aggregate import aggregate, mean_ci, trend


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
