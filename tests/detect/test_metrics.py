"""Threshold, fractions with CIs, detection metrics — against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.detect.metrics import (
    bootstrap_fraction,
    calibrate_threshold,
    copy_fraction,
    detection,
    is_copy,
    sensitivity_specificity,
)


def test_threshold_is_hand_computed_percentile():
    ref = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # linear interpolation: position (10 - 1) * 0.95 = 8.55 -> 0.9 + 0.55 * (1.0 - 0.9)
    t = calibrate_threshold(ref, 95)
    assert t.value == pytest.approx(0.955) and t.n_reference == 10
    assert calibrate_threshold(ref, 50).value == pytest.approx(0.55)
    assert calibrate_threshold(ref[::-1], 95).value == pytest.approx(0.955)  # order does not matter


def test_copy_decision_is_strictly_above():
    assert is_copy([0.5, 0.955, 0.96], 0.955).tolist() == [False, False, True]


def test_fraction_and_ci():
    ref = np.linspace(0, 1, 101)  # 95th percentile = 0.95
    sims = np.r_[np.full(30, 0.99), np.full(70, 0.1)]
    f = copy_fraction(sims, ref, n_boot=500, seed=1)
    assert f.value == pytest.approx(0.3) and f.n == 100
    assert f.lo < 0.3 < f.hi and 0.15 < f.lo and f.hi < 0.45
    again = bootstrap_fraction(sims, ref, n_boot=500, seed=1)
    assert (again.lo, again.hi) == (f.lo, f.hi)
    allin = bootstrap_fraction(np.full(10, 2.0), ref, n_boot=100)
    assert (allin.value, allin.lo, allin.hi) == (1.0, 1.0, 1.0)


def test_detection_by_hand():
    d = detection(copy_scores=[0.9, 0.8, 0.4], novel_scores=[0.1, 0.5, 0.2, 0.6], threshold=0.55)
    assert d.sensitivity == pytest.approx(2 / 3)
    assert d.specificity == pytest.approx(3 / 4)
    # pairs (copy > novel): 0.9 and 0.8 beat all 4; 0.4 beats 0.1 and 0.2 -> 10 of 12
    assert d.auc == pytest.approx(10 / 12)
    # ROC point at specificity 0.75: 3 of the 4 novel scores at or below -> threshold 0.5 -> copies 0.9, 0.8
    assert d.sensitivity_at_spec == pytest.approx(2 / 3) and d.target_specificity == 0.95
    assert detection([0.9, 0.8, 0.4], [0.1, 0.5, 0.2, 0.6], 0.55, target_specificity=0.75).sensitivity_at_spec == pytest.approx(2 / 3)
    # specificity 0.5 -> threshold 0.2 -> all three copies; 1.0 -> threshold 0.6 -> two
    assert detection([0.9, 0.8, 0.4], [0.1, 0.5, 0.2, 0.6], 0.55, target_specificity=0.5).sensitivity_at_spec == 1.0
    assert detection([0.9, 0.8, 0.4], [0.1, 0.5, 0.2, 0.6], 0.55, target_specificity=1.0).sensitivity_at_spec == pytest.approx(2 / 3)


def test_bad_inputs():
    with pytest.raises(ValueError):
        calibrate_threshold([], 95)
    with pytest.raises(ValueError):
        calibrate_threshold([1.0], 101)


def test_sensitivity_specificity_against_manual_labels():
    a = sensitivity_specificity([1, 1, 0, 0, 1, 0], ["copy", "copy", "copy", "novel", "novel", "novel"])
    assert (a.true_positive, a.false_negative, a.true_negative, a.false_positive) == (2, 1, 2, 1)
    assert a.sensitivity == pytest.approx(2 / 3) and a.specificity == pytest.approx(2 / 3)
    assert np.isnan(sensitivity_specificity([True, False], [1, 1]).specificity)  # no volume labelled novel
    with pytest.raises(ValueError, match="copy"):
        sensitivity_specificity([1], ["maybe"])


def test_reference_rank_and_combined_score_by_hand():
    from memostudy.detect.metrics import combined_score, reference_rank

    ref = [0.1, 0.2, 0.3, 0.4]
    assert reference_rank(ref, [0.05, 0.2, 0.35, 0.9]).tolist() == [0.0, 0.5, 0.75, 1.0]
    # detector A ranks the first query higher, detector B (other scale) the second
    out = combined_score([ref, [10, 20, 30, 40]], [[0.35, 0.0], [15, 45]])
    assert out.tolist() == [0.75, 1.0]
    with pytest.raises(ValueError):
        combined_score([ref], [[0.1], [0.2]])


def test_fraction_text_is_the_percentages_with_their_interval():
    from memostudy.detect.metrics import Fraction

    f = Fraction(0.125, 0.04166, 0.25, 24, 0.95)
    assert f.text() == "12.5% [4.2%, 25.0%]"
    assert f.text(digits=0) == "12% [4%, 25%]"


def test_reference_volumes_rank_leave_one_out_in_the_combined_score():
    from memostudy.detect.metrics import combine_nearest, reference_rank
    from memostudy.detect.similarity import Nearest

    ref = [0.1, 0.2, 0.3, 0.4]
    # ranked against the others: the most similar reference volume is below every one of its 4, not 1.0
    assert reference_rank(ref, ref, leave_one_out=True).tolist() == [0.0, 0.25, 0.5, 0.75]
    a, b = Nearest(torch.tensor(ref), torch.arange(4)), Nearest(torch.tensor([4.0, 3, 2, 1]), torch.arange(4))
    assert combine_nearest((a, b), (a, b)).values.tolist() == [0.75, 0.5, 0.5, 0.75]
    # a query beyond every reference volume of one detector ranks 1.0, above every reference volume
    q = (Nearest(torch.tensor([0.9]), torch.tensor([0])), Nearest(torch.tensor([0.0]), torch.tensor([0])))
    assert combine_nearest((a, b), q).values.tolist() == [1.0]
    # both detectors rank the query 1.0: the first detector's volume, or with one scale the higher score's
    refs = (a, Nearest(torch.tensor(ref), torch.arange(4)))
    tie = (Nearest(torch.tensor([0.9]), torch.tensor([2])), Nearest(torch.tensor([0.95]), torch.tensor([3])))
    assert combine_nearest(refs, tie).indices.tolist() == [2]
    assert combine_nearest(refs, tie, same_scale=True).indices.tolist() == [3]


def test_combined_detector_calls_clear_copies_and_its_interval_holds_its_point_estimate():
    """The issue's case: copies beyond every reference volume under one detector got 0 % (threshold 1.0
    from the in-sample ranks) or a point estimate near the top of an interval reaching 0 %."""
    from memostudy.detect.metrics import combine_nearest, copy_fraction
    from memostudy.detect.similarity import Nearest

    rng = np.random.default_rng(1)
    for n_ref, n_syn in ((20, 13), (50, 30), (100, 200)):
        ref = [rng.normal(size=n_ref), rng.normal(size=n_ref)]
        syn = [rng.normal(size=n_syn), rng.normal(size=n_syn)]
        syn[0][: n_syn // 2] += 5  # half the synthetic volumes are copies, obvious to the first detector
        near = [Nearest(torch.tensor(x, dtype=torch.float32), torch.zeros(len(x), dtype=torch.long)) for x in ref + syn]
        r, s = combine_nearest(near[:2], near[:2]).values, combine_nearest(near[:2], near[2:]).values
        f = copy_fraction(s, r, percentile=95, n_boot=2000)
        assert f.lo <= f.value <= f.hi
        assert f.value >= (n_syn // 2) / n_syn  # every copy is called
        assert f.lo >= 0.2  # and the interval does not reach down to no copies (before: 0 %)
