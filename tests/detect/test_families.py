"""Copy families of the broad definition and generator-like novel volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.detect.calibration import noise_std, roughness
from memostudy.detect.families import (
    COPY_FAMILIES,
    FAMILY_TABLE,
    GENERATOR_KINDS,
    _volume_fn,
    generator_like,
    keep_mask,
    make_copies,
)

STRENGTHS = (1, 2, 3)


def _fields(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random volumes (white noise blurred by sigma 1.5), standardised to std 0.3, in [-1, 1]."""
    from monai.networks.layers import GaussianFilter

    g = torch.Generator().manual_seed(seed)
    x = GaussianFilter(3, 1.5)(torch.randn(n, 1, size, size, size, generator=g))
    x = (x - x.mean(dim=(1, 2, 3, 4), keepdim=True)) / x.std(dim=(1, 2, 3, 4), keepdim=True)
    return (0.3 * x).clamp(-1, 1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of volumes: (N,)."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.fixture(scope="module")
def vols() -> torch.Tensor:
    return _fields(8)


@pytest.fixture(scope="module")
def others() -> torch.Tensor:
    return _fields(4, seed=1)


def test_table_has_three_strengths_and_marks_the_limit() -> None:
    for name, fam in FAMILY_TABLE.items():
        assert sorted(fam.levels) == [1, 2, 3], name
        inside = [fam.levels[s].inside for s in STRENGTHS]
        # the grid reaches the definition's limit inside and goes past it only at the top
        assert inside == [True, True, False], name
        assert fam.description and all(fam.levels[s].summary for s in STRENGTHS)


@pytest.mark.parametrize("family", COPY_FAMILIES)
@pytest.mark.parametrize("strength", STRENGTHS)
def test_every_family_changes_the_volume_within_range(vols, others, family: str, strength: int) -> None:
    out = make_copies(vols, family, strength, seed=3, others=others)
    assert out.shape == vols.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    assert ((out - vols).abs().flatten(1).mean(1) > 1e-3).all()


@pytest.mark.parametrize("family", COPY_FAMILIES)
def test_stronger_changes_move_further_from_the_source(vols, others, family: str) -> None:
    dist = [float((1 - _corr(make_copies(vols, family, s, seed=5, others=others), vols)).mean()) for s in STRENGTHS]
    assert dist[0] < dist[2], dist
    if family != "rigid":  # rigid 2 and 3 both turn by any angle, so both lose the voxel-wise correlation
        assert dist[0] < dist[1] < dist[2], dist


@pytest.mark.parametrize("family", ["lowres", "contrast", "bias", "blur", "noise"])
def test_inside_copies_that_keep_voxels_in_place_keep_the_anatomy(vols, others, family: str) -> None:
    for s in (1, 2):
        c = _corr(make_copies(vols, family, s, seed=7, others=others), vols)
        assert (c > 0.6).all(), (s, c)


def test_partial_keeps_at_least_half_the_voxels_inside_the_definition(vols) -> None:
    other = torch.full((1, 1, 16, 16, 16), 0.9)  # a value no source voxel has
    for s in STRENGTHS:
        out = make_copies(vols, "partial", s, seed=s, others=other)
        kept = (out == vols).flatten(1).float().mean(1)
        assert ((out == vols) | (out == 0.9)).all()  # every voxel is the source's or the new content's
        lo, hi = FAMILY_TABLE["partial"].levels[s].params["keep"]
        assert ((kept >= lo - 0.01) & (kept <= hi + 0.01)).all(), (s, kept)
        if FAMILY_TABLE["partial"].levels[s].inside:
            assert (kept >= 0.5).all()


def test_keep_mask_is_a_half_space_of_the_asked_size() -> None:
    m = keep_mask((8, 8, 8), 0.5, torch.tensor([1.0, 0.0, 0.0]).numpy())
    assert int(m.sum()) == 256
    assert m[:4].all() and not m[4:].any()  # the cut is the plane across the first axis


@pytest.mark.parametrize("family", COPY_FAMILIES)
def test_a_seed_fixes_the_copies(vols, others, family: str) -> None:
    a = make_copies(vols[:3], family, 2, seed=11, others=others)
    assert torch.equal(a, make_copies(vols[:3], family, 2, seed=11, others=others))
    assert not torch.equal(a, make_copies(vols[:3], family, 2, seed=12, others=others))


def test_partial_without_others_takes_another_volume_of_the_batch(vols) -> None:
    out = make_copies(vols[:2], "partial", 2, seed=0)
    assert ((out[0] == vols[0]) | (out[0] == vols[1])).all() and not torch.equal(out[0], vols[0])
    with pytest.raises(ValueError, match="needs others"):
        make_copies(vols[:1], "partial", 2, seed=0)


def test_bad_arguments_fail_with_a_message(vols, others) -> None:
    with pytest.raises(ValueError, match="unknown copy family"):
        make_copies(vols, "warp", 1)
    with pytest.raises(ValueError, match="strength"):
        make_copies(vols, "blur", 4)
    with pytest.raises(ValueError, match="shape of volumes"):
        make_copies(vols, "partial", 1, others=others[:, :, :8])
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        make_copies(vols[:, 0], "blur", 1)


@pytest.fixture(scope="module")
def images(vols) -> torch.Tensor:
    """2D images (N, 1, H, W): the middle slices of the volumes."""
    return vols[:, :, 8].contiguous()


@pytest.mark.parametrize("family", COPY_FAMILIES)
@pytest.mark.parametrize("strength", STRENGTHS)
def test_every_family_works_on_2d_images(images, others, family: str, strength: int) -> None:
    out = make_copies(images, family, strength, seed=3, others=others[:, :, 8].contiguous())
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    assert ((out - images).abs().flatten(1).mean(1) > 1e-3).all()
    assert torch.equal(out, make_copies(images, family, strength, seed=3, others=others[:, :, 8].contiguous()))


@pytest.mark.parametrize("family", COPY_FAMILIES)
def test_stronger_2d_changes_move_further_from_the_source(images, family: str) -> None:
    dist = [float((1 - _corr(make_copies(images, family, s, seed=5), images)).mean()) for s in STRENGTHS]
    assert dist[0] < dist[2], dist


def test_2d_elastic_moves_pixels_by_the_3d_family_rms_displacement() -> None:
    # a coordinate image shows the displacement directly: output - input = where each pixel was taken from
    coords = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij"))
    rms = []
    for s in STRENGTHS:
        fn = _volume_fn("elastic", s, (64, 64), np.random.RandomState(s))
        moved = torch.stack([fn(coords[a:a + 1], None)[0] for a in range(2)])  # one axis per call (each draws a field)
        rms.append(float((moved - coords)[:, 4:-4, 4:-4].pow(2).mean().sqrt()))
    assert 0.5 < rms[0] < 1.8 and 1.2 < rms[1] < 2.8 and 2.8 < rms[2] < 5.5, rms  # ~1, ~2, ~4 as in 3D


def test_2d_partial_keeps_the_asked_share_of_pixels(images) -> None:
    other = torch.full((1, 1, 16, 16), 0.9)
    for s in STRENGTHS:
        kept = (make_copies(images, "partial", s, seed=s, others=other) == images).flatten(1).float().mean(1)
        lo, hi = FAMILY_TABLE["partial"].levels[s].params["keep"]
        assert ((kept >= lo - 0.01) & (kept <= hi + 0.01)).all(), (s, kept)


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
def test_generator_like_2d_images(images, kind: str) -> None:
    out = generator_like(images, kind, seed=2)
    assert out.shape == images.shape and not torch.equal(out, images) and (_corr(out, images) > 0.6).all()


def test_family_views_work_on_2d_images(images) -> None:
    from memostudy.detect.families import random_family_view

    v = random_family_view(images, torch.Generator().manual_seed(0), COPY_FAMILIES)
    assert v.shape == images.shape and not torch.equal(v, images)


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
def test_generator_like_volumes_are_changed_and_seeded(vols, kind: str) -> None:
    out = generator_like(vols, kind, seed=2)
    assert out.shape == vols.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, vols)
    assert torch.equal(out, generator_like(vols, kind, seed=2))
    assert (_corr(out, vols) > 0.6).all()  # the same novel anatomy, rendered like a generator would


def test_generator_like_is_smoother_or_noisier(vols) -> None:
    base_rough, base_noise = roughness(vols).median(), noise_std(vols).median()
    assert roughness(generator_like(vols, "smooth", 0)).median() < 0.8 * base_rough
    assert roughness(generator_like(vols, "lowres", 0)).median() < base_rough
    assert noise_std(generator_like(vols, "noisy", 0)).median() > max(0.04, 3 * float(base_noise))
    with pytest.raises(ValueError, match="generator-like kind"):
        generator_like(vols, "sharp", 0)


def test_family_views_draw_only_the_given_families(vols) -> None:
    from memostudy.detect.families import random_family_view

    g = torch.Generator().manual_seed(0)
    # contrast only: a monotone intensity curve keeps every voxel's rank, so the rank correlation stays ~1
    v = random_family_view(vols, g, ("contrast",))
    rank = lambda t: t.flatten(1).argsort(1).argsort(1).float()  # noqa: E731
    assert (_corr(rank(v), rank(vols)) > 0.95).all()
    # partial only: part of each view is another volume of the batch, voxel for voxel
    p = random_family_view(vols, g, ("partial",))
    for i in range(len(vols)):
        kept = (p[i] == vols[i]).float().mean()
        assert 0.5 <= kept < 0.95
        assert any(((p[i] == vols[j]) & (p[i] != vols[i])).any() for j in range(len(vols)) if j != i)
    with pytest.raises(ValueError, match="combine"):
        random_family_view(vols, g, ("combined",))
