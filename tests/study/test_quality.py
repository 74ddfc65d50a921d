"""Quality metrics: MS-SSIM scale choice, diversity direction, Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.data.phantom import phantom_volume, phantom_volumes
from memostudy.study.quality import frechet_distance, ms_ssim_diversity, ms_ssim_scales


def test_scales_fit_the_volume() -> None:
    assert len(ms_ssim_scales(32)) == 3 and len(ms_ssim_scales(64)) == 5 and len(ms_ssim_scales(8)) == 2
    assert sum(ms_ssim_scales(32)) == pytest.approx(1.0)


def test_identical_samples_are_not_diverse() -> None:
    v = phantom_volumes(6, 32, seed=1)
    same = v[:1].repeat(6, 1, 1, 1, 1)
    assert ms_ssim_diversity(same, n_pairs=8) == pytest.approx(1.0, abs=1e-4)
    assert ms_ssim_diversity(v, n_pairs=8) < 0.9


def test_frechet_distance_grows_with_shift() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    b = torch.randn(200, 8, generator=g)
    near, far = frechet_distance(a, b), frechet_distance(a, b + 1.0)
    assert near < 1.0 < far
    assert far == pytest.approx(8.0, rel=0.35)  # mean shift of 1 in 8 dims adds |mu|^2 = 8


def test_ms_ssim_of_images_is_2d() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.stack([phantom_volume((64, 64), rng) for _ in range(6)])).unsqueeze(1)  # (6, 1, 64, 64)
    assert ms_ssim_diversity(torch.cat([x[:1]] * 4), n_pairs=8) > 0.999
    assert ms_ssim_diversity(x, n_pairs=8) < 0.9
