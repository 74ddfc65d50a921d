"""Continuous copying statistics on numbers whose answer is known: copies, held-out draws, shifted samples."""

from __future__ import annotations

import numpy as np
import pytest

from memostudy.study.copying import authenticity, cliffs_delta, data_copying_ct


def test_cliffs_delta_counts_dominating_pairs() -> None:
    # x=[2, 3], y=[1, 2, 3]: pairs with x > y: 2>1, 3>1, 3>2 = 3; with x < y: 2<3 = 1; delta = (3 - 1) / 6
    d = cliffs_delta(np.array([2.0, 3.0]), np.array([1.0, 2.0, 3.0]), n_boot=200)
    assert d.value == pytest.approx(2 / 6)
    assert d.lo <= d.value <= d.hi
    assert cliffs_delta(np.array([5.0, 6.0]), np.array([1.0, 2.0]), n_boot=200).value == 1.0
    assert cliffs_delta(np.array([1.0, 2.0]), np.array([5.0, 6.0]), n_boot=200).value == -1.0


def test_cliffs_delta_interval_excludes_zero_only_for_a_real_shift() -> None:
    rng = np.random.default_rng(0)
    shifted = cliffs_delta(rng.normal(1.0, 1, 60), rng.normal(0, 1, 60), n_boot=500)
    same = cliffs_delta(rng.normal(0, 1, 60), rng.normal(0, 1, 60), n_boot=500)
    assert shifted.lo > 0.2 and same.lo < 0 < same.hi


@pytest.fixture(scope="module")
def clouds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"train": rng.normal(size=(200, 4)), "test": rng.normal(size=(200, 4)),
            "fresh": rng.normal(size=(200, 4))}


def test_ct_is_strongly_negative_for_copies_and_near_zero_for_fresh_draws(clouds) -> None:
    train, test = clouds["train"], clouds["test"]
    copies = train[:200] + 1e-3 * np.random.default_rng(2).normal(size=(200, 4))
    ct_copies = data_copying_ct(train, test, copies, n_cells=4, seed=0)
    ct_fresh = data_copying_ct(train, test, clouds["fresh"], n_cells=4, seed=0)
    assert ct_copies.c_t < -8 and ct_copies.used.all()
    assert abs(ct_fresh.c_t) < 2.5
    assert ct_copies.test_share.sum() == pytest.approx(1.0)
    # under-fitting: generated points spread wider than the data are farther from the training set
    assert data_copying_ct(train, test, 3 * clouds["fresh"], n_cells=4).c_t > 3


def test_ct_z_score_matches_the_mann_whitney_formula_in_one_cell() -> None:
    # one cell; test distances 1, 2 (points at x=1, 2); generated at 0.5, 3 -> distances 0.5, 3
    train = np.zeros((1, 1))
    res = data_copying_ct(train, np.array([[1.0], [2.0]]), np.array([[0.5], [3.0]]), n_cells=1)
    u = 2  # pairs with the generated point farther: 3 > 1, 3 > 2
    z = (u - (2 * 2 / 2 - 0.5)) / np.sqrt(2 * 2 * 5 / 12)
    assert res.c_t == pytest.approx(z)


def test_cells_with_too_few_generated_points_are_left_out(clouds) -> None:
    train = clouds["train"]
    far = train[train[:, 0] > 1.0][:5] + 1e-3  # a handful of copies in one corner only
    res = data_copying_ct(train, clouds["test"], far, n_cells=4, min_generated=3, seed=0)
    assert res.used.sum() == 1 and np.isfinite(res.c_t)


def test_authenticity_is_low_for_copies_and_high_for_distant_points(clouds) -> None:
    train = clouds["train"]
    assert authenticity(train, train[:50].copy()) == 0.0  # exact copies: distance 0
    assert authenticity(train, train[:50] + 1e-4) == 0.0
    assert authenticity(train, train[:50] + 100.0) == 1.0
    held_out = authenticity(train, clouds["test"])
    assert 0.2 < held_out < 0.9  # unseen real draws sit in between
    # by hand: real 0, 1, 10 (their nearest-neighbour distances 1, 1, 9); generated 0.4 (nearest real 0 at
    # 0.4 < 1: unauthentic), 12 (nearest 10 at 2 < 9: unauthentic), 5 (nearest 1 at 4 > 1: authentic)
    real = np.array([[0.0], [1.0], [10.0]])
    assert authenticity(real, np.array([[0.4], [12.0], [5.0]])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="two real points"):
        authenticity(real[:1], real)


@pytest.mark.slow
def test_statistics_of_a_study_run_flag_training_volumes_offered_as_samples(tiny_result) -> None:
    from memostudy.detect.assessment import assess
    from memostudy.study.copying import copying_statistics

    train, ref = tiny_result.train, tiny_result.reference
    a = assess(train.volumes, ref.volumes, train.volumes, tiny_result.detector, train.ids, ref.ids, train.ids,
               cfg=tiny_result.config.assessment)
    s = copying_statistics(a, tiny_result.detector, train.volumes, ref.volumes, train.volumes)
    assert s["similarity_delta"] == 1.0  # every copy is more similar to the training set than every reference volume
    assert s["authenticity"] == 0.0 and s["authenticity_reference"] > 0
    # 8 copies against 8 reference volumes in one cell: U = 0, Z = -(32 - 0.5) / sqrt(8 * 8 * 17 / 12)
    assert s["c_t"] == pytest.approx(-31.5 / np.sqrt(64 * 17 / 12))
    real = tiny_result.statistics["final"]  # the run's own samples sit far less close
    assert real["c_t"] > s["c_t"] and real["authenticity"] > 0
