"""Conformal p-values, Benjamini-Hochberg decisions and the matched-smoothness reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kstest

from memostudy.detect.calibration import (
    CopyDecisions,
    bh_decisions,
    blur,
    conformal_p_values,
    copy_decisions,
    matched_smoothness,
    noise_std,
    per_volume_chunks,
    roughness,
)


def _fields(n: int, sigma: float, size: int = 16, seed: int = 0) -> torch.Tensor:
    """White noise blurred by ``sigma`` voxels, standardised to std 0.3 (well inside [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    x = blur(torch.randn(n, 1, size, size, size, generator=g), sigma)
    return 0.3 * (x - x.mean(dim=(1, 2, 3, 4), keepdim=True)) / x.std(dim=(1, 2, 3, 4), keepdim=True)


def test_p_values_by_hand() -> None:
    ref = [0.1, 0.2, 0.3, 0.4]
    # 0.35: one reference >= it -> 2/5; 0.05: all four -> 5/5; 0.4: the tie counts -> 2/5; 0.9: none -> 1/5
    p = conformal_p_values([0.35, 0.05, 0.4, 0.9], ref)
    np.testing.assert_allclose(p, [2 / 5, 1.0, 2 / 5, 1 / 5])


def test_p_values_are_uniform_on_exchangeable_scores() -> None:
    rng = np.random.default_rng(0)
    n_ref, draws = 999, 2000
    p = np.array([conformal_p_values(rng.normal(size=1), rng.normal(size=n_ref))[0] for _ in range(draws)])
    assert kstest(p, "uniform").pvalue > 0.01
    # and they are not uniform when the synthetic volumes score higher (copies): the test can fail
    q = np.array([conformal_p_values(rng.normal(size=1) + 1.0, rng.normal(size=n_ref))[0] for _ in range(draws)])
    assert kstest(q, "uniform").pvalue < 1e-6 and np.median(q) < 0.3


def test_p_values_reject_empty_or_nonfinite_reference() -> None:
    with pytest.raises(ValueError, match="at least one"):
        conformal_p_values([0.5], [])
    with pytest.raises(ValueError, match="finite"):
        conformal_p_values([0.5], [0.1, float("nan")])


def test_bh_step_up_by_hand() -> None:
    # m = 4, q = 0.05: thresholds k q / m = 0.0125, 0.025, 0.0375, 0.05 for the sorted p (0.001, 0.03, 0.032, 0.2).
    # p_(2) = 0.03 > 0.025 fails, but p_(3) = 0.032 <= 0.0375 passes, so the step-up flags the three smallest.
    flagged, adjusted = bh_decisions([0.03, 0.2, 0.001, 0.032], q=0.05)
    np.testing.assert_array_equal(flagged, [True, False, True, True])
    # adjusted p: min over k >= i of p_(k) m / k -> 0.004, 0.04267, 0.04267, 0.2
    np.testing.assert_allclose(adjusted, [0.032 * 4 / 3, 0.2, 0.004, 0.032 * 4 / 3])


def test_bh_all_or_nothing_by_hand() -> None:
    # m = 3, thresholds 0.0167, 0.0333, 0.05: the largest p, 0.04 <= 0.05, passes, so all three are flagged
    flagged, _ = bh_decisions([0.02, 0.03, 0.04], q=0.05)
    assert flagged.all()
    flagged, _ = bh_decisions([0.02, 0.5, 0.9], q=0.05)  # 0.02 > 1/3 * 0.05 = 0.0167 and nothing later passes
    assert not flagged.any()
    with pytest.raises(ValueError, match="q must be"):
        bh_decisions([0.1], q=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bh_decisions([1.5], q=0.05)


def test_copy_decisions_combines_p_values_and_bh() -> None:
    syn = np.r_[np.full(3, 2.0), np.linspace(0.01, 0.99, 20)]  # three clear copies, twenty novel-like
    # with 99 reference scores the smallest p is 1/100, above BH's 3 q / 23 = 0.0065: nothing can be flagged
    small = copy_decisions(syn, np.linspace(0, 1, 99), q=0.05)
    np.testing.assert_allclose(small.p_values[:3], 0.01)
    assert small.n_flagged == 0
    d = copy_decisions(syn, np.linspace(0, 1, 999), q=0.05)  # smallest p 1/1000: the three copies pass
    assert isinstance(d, CopyDecisions) and d.n_reference == 999 and d.q == 0.05
    assert d.n_flagged == 3 and d.flagged[:3].all()
    np.testing.assert_array_equal(d.flagged, d.q_values <= 0.05)


def test_noise_std_reads_added_white_noise() -> None:
    x = _fields(16, 2.0)
    g = torch.Generator().manual_seed(1)
    noisy = x + 0.05 * torch.randn(x.shape, generator=g)
    assert float(noise_std(x).median()) < 0.01
    assert abs(float(noise_std(noisy).median()) - 0.05) < 0.005


def test_statistics_in_chunks_equal_one_call() -> None:
    x = _fields(7, 1.0, seed=2)
    # 16^3 float32 volumes are 16 kB: chunks of 0.04 MB hold 2 of them, so 7 volumes take 4 calls
    calls = []
    got = per_volume_chunks(lambda v: calls.append(len(v)) or v.flatten(1).std(1), x, chunk_mb=0.04)
    assert calls == [2, 2, 2, 1]
    torch.testing.assert_close(got, x.flatten(1).std(1))
    assert per_volume_chunks(lambda v: v.flatten(1).mean(1), x[:0]).shape == (0,)


def test_roughness_drops_with_blur_and_ignores_noise_and_scale() -> None:
    x = _fields(16, 1.0)
    r = float(roughness(x).median())
    assert float(roughness(blur(x, 1.0)).median()) < 0.6 * r
    noisy = x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert abs(float(roughness(noisy).median()) - r) < 0.15 * r
    torch.testing.assert_close(roughness(2 * x + 0.1), roughness(x), rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_matched_smoothness_brings_a_sharp_reference_to_a_blurred_noisy_set() -> None:
    sharp = _fields(32, 1.0, seed=0)
    smooth = _fields(32, 2.0, seed=1)  # independent volumes, blurred more: extra sigma about sqrt(2^2 - 1)
    synthetic = smooth + 0.02 * torch.randn(smooth.shape, generator=torch.Generator().manual_seed(3))
    m = matched_smoothness(sharp, synthetic, seed=0)
    assert m.reference.shape == sharp.shape
    assert m.reference_roughness > 1.5 * m.synthetic_roughness  # far apart before
    assert abs(m.matched_roughness - m.synthetic_roughness) < 0.05 * m.synthetic_roughness
    assert 1.2 < m.sigma < 2.2
    assert abs(m.matched_noise - m.synthetic_noise) < 0.2 * m.synthetic_noise and m.noise > 0.01
    assert torch.equal(m.reference, matched_smoothness(sharp, synthetic, seed=0).reference)


def test_matched_smoothness_leaves_a_smoother_reference_alone() -> None:
    smooth, sharp = _fields(8, 2.0), _fields(8, 0.7, seed=1)
    m = matched_smoothness(smooth, sharp, match_noise=False)
    assert m.sigma == 0 and m.noise == 0
    torch.testing.assert_close(m.reference, smooth.clamp(-1, 1))


def test_blur_in_chunks_equals_one_call_of_the_filter():
    from monai.networks.layers import GaussianFilter

    from memostudy.detect.alignment import smooth
    from memostudy.detect.calibration import blur

    x = torch.rand(34, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0))  # 1 MB each: chunks of 32 and 2
    want = GaussianFilter(3, 0.75)(x)
    for got in (blur(x, 0.75), smooth(x, 0.75)):  # equal up to float rounding (the filter's kernels vary with batch size)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert blur(x[:0], 1.0).shape == (0, 1, 64, 64, 64) and torch.equal(blur(x, 0), x)
