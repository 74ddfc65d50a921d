"""Aligned pixel correlation: shortlist, orientation + shift search, sub-voxel and blur refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.data.phantom import phantom_volumes
from memostudy.detect.alignment import (
    AlignConfig,
    _ncc,
    aligned_nearest,
    box_mean,
    candidates,
    embedding_top_k,
    oriented_top_k,
    smooth,
)
from memostudy.detect.baseline import pixel_nearest
from memostudy.detect.views import ViewParams, blur, shift
from memostudy.errors import ConfigError


@pytest.mark.parametrize("shape,size", [((3, 2, 9, 8, 7), (4, 5, 3)), ((2, 1, 32, 32, 32), (26, 26, 26)),
                                        ((2, 3, 10, 12), (7, 5))])
def test_box_mean_is_the_mean_of_every_window(shape, size):
    x = torch.randn(*shape)
    pool = torch.nn.functional.avg_pool3d if len(size) == 3 else torch.nn.functional.avg_pool2d
    got = box_mean(x, size)
    assert got.dtype == x.dtype and got.shape == pool(x, size, stride=1).shape
    assert torch.allclose(got, pool(x, size, stride=1), atol=1e-6)
    # one window by hand
    assert got[(1, 0, *([1] * len(size)))].item() == pytest.approx(
        x[(1, 0, *(slice(1, 1 + k) for k in size))].mean().item(), abs=1e-6)


def test_ncc_matches_numpy_corrcoef_per_window():
    x = torch.randn(2, 1, 7, 7, 7)
    k = torch.randn(1, 1, 4, 4, 4)
    kn = (k - k.mean()) / (k - k.mean()).norm()
    r = _ncc(x, kn)
    assert r.shape == (2, 1, 4, 4, 4)
    for n, (a, b, c) in [(0, (0, 0, 0)), (1, (3, 1, 2))]:
        window = x[n, 0, a:a + 4, b:b + 4, c:c + 4].flatten().numpy()
        assert np.isclose(r[n, 0, a, b, c].item(), np.corrcoef(window, k.flatten().numpy())[0, 1], atol=1e-5)


def test_shortlists_hold_the_source_of_a_rotated_copy():
    train = phantom_volumes(8, 12, seed=0)
    copy = train[[5]].rot90(1, (2, 4))
    assert oriented_top_k(copy, train, 2)[0, 0] == 5
    emb = torch.randn(8, 4)
    assert embedding_top_k(emb[[3]], emb, 3)[0, 0] == 3
    assert candidates(copy, train, AlignConfig(shortlist=2), emb[[5]], emb).shape == (1, 4)


@pytest.mark.slow  # the full aligned search over every orientation and shift (3 s): make test runs it
def test_shifted_blurred_and_rotated_copies_score_near_one():
    train = phantom_volumes(8, 16, seed=0)
    g = torch.Generator().manual_seed(0)
    p = ViewParams(max_shift=2.0, min_shift=1.0)
    copies = torch.cat([shift(train[[1]], g, p), blur(train[[2]], g), train[[3]].rot90(1, (3, 4)) * 0.7 - 0.1])
    novel = phantom_volumes(3, 16, seed=9)
    cfg = AlignConfig()  # max_shift 3 covers the copy's shift of up to 2 voxels plus the sub-voxel rest
    res = aligned_nearest(torch.cat([copies, novel]), train, candidates(torch.cat([copies, novel]), train, cfg), cfg)
    plain = pixel_nearest(copies, train)
    assert res.indices[:3].tolist() == [1, 2, 3]
    assert (res.values[:3] > 0.97).all()
    assert (res.values[:3] > plain.values + 0.02).all()  # the plain correlation scores these copies lower
    assert (res.values[:3].min() > res.values[3:].max())  # and the copies outrank the novel volumes
    assert (res.values <= 1 + 1e-5).all()


def test_refinement_recovers_a_half_voxel_shift():
    train = phantom_volumes(4, 16, seed=1)
    g = torch.Generator().manual_seed(0)
    half = shift(train[[0]], g, ViewParams(max_shift=0.5, min_shift=0.5))
    sl = torch.tensor([[0]])
    coarse = aligned_nearest(half, train, sl, AlignConfig(sigma=0.0, max_shift=1, subvoxel=(0.0,), blurs=(0.0,)))
    fine = aligned_nearest(half, train, sl, AlignConfig(sigma=0.0, max_shift=1, subvoxel=(-0.5, 0.0, 0.5), blurs=(0.0,)))
    assert fine.values[0] > coarse.values[0]


def test_bad_settings_and_shapes():
    with pytest.raises(ConfigError, match="max_shift 8 is too large"):
        AlignConfig(max_shift=8).validate((1, 16, 16, 16))
    with pytest.raises(ConfigError, match="shortlist"):
        AlignConfig(shortlist=0).validate()
    with pytest.raises(ValueError, match="one shape"):
        aligned_nearest(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 10, 10, 10), torch.zeros(1, 1, dtype=torch.long))


def _fields(n: int, size: int, seed: int) -> torch.Tensor:
    """Smoothed white noise: volumes with no symmetry, so one orientation and shift fits best."""
    from memostudy.detect.calibration import blur as gaussian

    x = gaussian(torch.randn(n, 1, size, size, size, generator=torch.Generator().manual_seed(seed)), 1.5)
    return x / x.std()


@pytest.mark.parametrize(("orientation", "shift_voxels"), [(4, (2.0, 0.0, -1.0)), (13, (0.0, -2.0, 1.0)), (0, (1.0, 1.0, 0.0))])
def test_alignment_reports_the_orientation_and_shift_that_made_the_copy(orientation, shift_voxels):
    from memostudy.detect.alignment import Alignment, align_pairs, aligned_search
    from memostudy.detect.views import orient, orientations, translate

    train = _fields(4, 16, seed=0)
    # the copy: training volume 2 turned by a known orientation (4 = flip of the first axis), then its content moved
    copy = translate(orient(train[[2]], orientations()[orientation]), -torch.tensor([shift_voxels]))
    cfg = AlignConfig(subvoxel=(0.0,), blurs=(0.0,))
    (a,) = align_pairs(copy, train, [(0, 2)], cfg)
    assert isinstance(a, Alignment) and (a.base_index, a.orientation, a.shift) == (2, orientation, shift_voxels)
    change = a.change()
    assert change["shift_voxels"] == list(shift_voxels) and change["flips"] == list(orientations()[orientation].flips)
    assert a.correlation > 0.999
    # applying the change to the training volume gives the copy (away from the border the shift uncovers)
    c = 3
    assert torch.allclose(a.apply(train[2])[..., c:-c, c:-c, c:-c], copy[0, ..., c:-c, c:-c, c:-c], atol=1e-5)
    # the search over the whole training set finds the same source and change, and its value is the correlation
    nn, found = aligned_search(copy, train, candidates(copy, train, AlignConfig(shortlist=2)), cfg)
    assert nn.indices.tolist() == [2] and nn.values[0] == pytest.approx(a.correlation, abs=1e-6)
    same = (found[0].base_index, found[0].orientation, found[0].shift, found[0].blur)
    assert same == (a.base_index, a.orientation, a.shift, a.blur)  # one pair or a batch: rounding may differ


def test_pairs_are_aligned_in_the_order_given():
    from memostudy.detect.alignment import align_pairs
    from memostudy.detect.views import orient, orientations

    train = _fields(4, 16, seed=0)
    query = torch.cat([orient(train[[2]], orientations()[4]), train[[1]], _fields(1, 16, seed=9)])
    cfg = AlignConfig(subvoxel=(0.0,), blurs=(0.0,))
    pairs = [(2, 3), (0, 2), (1, 1), (0, 3)]  # not sorted; one query twice, one base twice
    together = align_pairs(query, train, pairs, cfg)
    alone = [align_pairs(query, train, [p], cfg)[0] for p in pairs]
    assert [a.base_index for a in together] == [3, 2, 1, 3]
    for a, b in zip(together, alone):
        assert (a.orientation, a.shift, a.blur) == (b.orientation, b.shift, b.blur)
        assert a.correlation == pytest.approx(b.correlation, abs=1e-6)
    assert (together[1].orientation, together[2].correlation > 0.999) == (4, True)


@pytest.mark.parametrize(("orientation", "shift_voxels"), [(2, (2.0, -1.0)), (5, (-2.0, 0.0)), (7, (1.0, 2.0))])
def test_2d_alignment_reports_the_d4_orientation_and_shift_that_made_the_copy(orientation, shift_voxels):
    from memostudy.detect.alignment import align_pairs, aligned_search, apply_change
    from memostudy.detect.views import orient, orientations, translate

    train = _fields(4, 16, seed=0)[:, :, 8].contiguous()  # 2D images (4, 1, 16, 16)
    copy = translate(orient(train[[2]], orientations(2)[orientation]), -torch.tensor([shift_voxels]))
    cfg = AlignConfig(subvoxel=(0.0,), blurs=(0.0,))
    (a,) = align_pairs(copy, train, [(0, 2)], cfg)
    assert (a.base_index, a.orientation, a.shift) == (2, orientation, shift_voxels) and a.correlation > 0.999
    change = a.change()
    assert change["flips"] == list(orientations(2)[orientation].flips) and len(change["permutation"]) == 2
    c = 3
    assert torch.allclose(apply_change(train[2], change)[..., c:-c, c:-c], copy[0, ..., c:-c, c:-c], atol=1e-5)
    nn, found = aligned_search(copy, train, candidates(copy, train, AlignConfig(shortlist=2)), cfg)
    assert nn.indices.tolist() == [2] and (found[0].orientation, found[0].shift) == (orientation, shift_voxels)


def test_2d_refinement_finds_blur_and_subpixel_shift_and_pixel_baseline_searches_d4():
    from memostudy.detect.alignment import align_pairs
    from memostudy.detect.views import translate

    train = _fields(4, 16, seed=1)[:, :, 8].contiguous()
    copy = smooth(translate(train[[1]], torch.tensor([[0.5, 0.0]])), 1.5)
    (a,) = align_pairs(copy, train, [(0, 1)], AlignConfig())
    assert a.blur > 0 and a.shift[1] == 0.0 and abs(abs(a.shift[0]) - 0.5) < 1e-6 and a.correlation > 0.99
    flipped = train[[3]].flip(3)  # mirrored left-right: the plain baseline misses it, the D4 search does not
    assert pixel_nearest(flipped, train, orientations=True).values[0] > 0.999
    assert pixel_nearest(flipped, train).values[0] < 0.9


def test_resampled_variants_equal_translate():
    from memostudy.detect.alignment import _resampled
    from memostudy.detect.views import translate

    for v in (torch.randn(1, 1, 6, 5, 7), torch.randn(1, 2, 6, 5)):
        offsets = (-1.25, 0.0, 0.5)
        got = _resampled(v, offsets)
        import itertools

        shifts = torch.tensor(list(itertools.product(offsets, repeat=v.dim() - 2)), dtype=torch.float32)
        want = translate(v.expand(len(shifts), *v.shape[1:]).contiguous(), shifts)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(("orientation", "shift_voxels"), [(4, (2.0, 0.0, -1.0)), (29, (0.0, -3.0, 1.0))])
def test_coarse_to_fine_finds_what_the_exhaustive_search_finds(orientation, shift_voxels):
    from memostudy.detect.alignment import aligned_search, coarse_scores
    from memostudy.detect.views import orient, orientations, shape_preserving, translate

    train = _fields(6, 16, seed=0)
    copy = translate(orient(train[[3]], orientations()[orientation]), -torch.tensor([shift_voxels]))
    novel = _fields(2, 16, seed=5)
    query = torch.cat([copy, novel])
    shortlist = torch.arange(6).expand(3, -1)
    exhaustive, a_ex = aligned_search(query, train, shortlist, AlignConfig(subvoxel=(0.0,), blurs=(0.0,), fine_pairs=0))
    fast, a_fast = aligned_search(query, train, shortlist, AlignConfig(subvoxel=(0.0,), blurs=(0.0,), fine_pairs=2))
    # the copy: same source, orientation and shift, correlation ~1
    assert (a_fast[0].base_index, a_fast[0].orientation, a_fast[0].shift) == (3, orientation, shift_voxels)
    assert a_fast[0].correlation > 0.99  # the shift uncovers up to 3 voxels of repeated border
    # the coarse grid ranks the copy's (source, orientation) first among 6 x 48 pairs
    from memostudy.detect.alignment import smooth

    sc = coarse_scores(smooth(copy, 0.75)[0], smooth(train, 0.75), 3, shape_preserving(copy.shape, 3))
    assert sc.shape == (6, 48) and int(sc.flatten().argmax()) // 48 == 3
    # never above the exhaustive search (it searches a subset), and close to it on novel volumes here
    assert (fast.values <= exhaustive.values + 1e-5).all()
    assert torch.allclose(fast.values, exhaustive.values, atol=0.05)
    with pytest.raises(ConfigError, match="fine_pairs"):
        AlignConfig(fine_pairs=-1).validate()


def test_fine_pairs_is_left_out_of_the_config_dict_at_its_default():
    from memostudy.config import to_dict

    # the sweep cells' defaults.json hashes the assessment config: a default that changes no sweep result keeps it
    assert "fine_pairs" not in to_dict(AlignConfig()) and to_dict(AlignConfig(fine_pairs=0))["fine_pairs"] == 0
