"""Positive views: the 48 orientations and the transform families."""

from __future__ import annotations

import pytest
import torch

from memostudy.detect.views import (
    FAMILIES,
    apply_family,
    flip_indices,
    orient,
    orient_batch,
    orientations,
    random_view,
    rotation_indices,
    shape_preserving,
)


def _smooth(n: int, size: int = 16) -> torch.Tensor:
    """Volumes of two broad Gaussian blobs each (smooth, so a small shift or blur keeps them alike)."""
    g = torch.Generator().manual_seed(0)
    ax = torch.linspace(-1, 1, size)
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"))
    out = []
    for _ in range(n):
        v = torch.zeros(size, size, size)
        for _ in range(2):
            c = (torch.rand(3, 1, 1, 1, generator=g) - 0.5)
            v += torch.exp(-((grid - c) ** 2).sum(0) / 0.2)
        out.append(v / v.max() * 1.6 - 0.8)
    return torch.stack(out).unsqueeze(1)


def _asym(size: int = 6) -> torch.Tensor:
    """A volume with no symmetry: every voxel value distinct."""
    return torch.arange(size**3, dtype=torch.float32).reshape(1, 1, size, size, size)


def test_48_distinct_orientations_identity_first():
    table = orientations()
    assert len(table) == 48 and table[0].is_identity
    outs = {tuple(orient(_asym(), o).flatten().tolist()) for o in table}
    assert len(outs) == 48
    assert len(flip_indices()) == 7 and len(rotation_indices()) == 23
    assert sum(o.det == 1 for o in table) == 24


def test_rotations_are_proper():
    # a proper rotation by 90 degrees about one axis is in the rotation set, a single flip is not
    x = _asym()
    rot = torch.rot90(x, 1, dims=(3, 4))
    rot_ids = {tuple(orient(x, orientations()[i]).flatten().tolist()) for i in rotation_indices()}
    assert tuple(rot.flatten().tolist()) in rot_ids
    assert tuple(x.flip(2).flatten().tolist()) not in rot_ids


def test_orient_batch_matches_per_sample():
    x = torch.cat([_asym() + i for i in range(5)])
    idx = torch.tensor([0, 3, 47, 3, 20])
    out = orient_batch(x, idx)
    for i in range(5):
        assert torch.equal(out[i], orient(x[i], orientations()[int(idx[i])]))


def test_non_cubic_keeps_shape():
    assert len(shape_preserving((8, 8, 8))) == 48
    assert len(shape_preserving((8, 8, 4))) == 16
    x = torch.rand(6, 1, 8, 8, 4)
    assert random_view(x, torch.Generator().manual_seed(0)).shape == x.shape


@pytest.mark.parametrize("family", FAMILIES)
def test_family_shape_and_seed(family):
    x = _smooth(4)
    a = apply_family(x, family, torch.Generator().manual_seed(3))
    b = apply_family(x, family, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    if family == "identity":
        assert torch.equal(a, x)
    else:
        assert not torch.equal(a, x)
    if family in ("flip", "rot90", "orientation"):  # same voxels, other places
        assert torch.equal(a.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    if family in ("shift", "blur", "intensity", "noise"):  # a small change: still strongly correlated
        c = torch.corrcoef(torch.stack([a.flatten(), x.flatten()]))[0, 1]
        assert c > (0.5 if family == "shift" else 0.8)  # up to 3 voxels of 16 moves a lot
    if family == "intensity":
        assert a.min() >= -1 and a.max() <= 1


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown transform family"):
        apply_family(torch.zeros(1, 1, 4, 4, 4), "warp", torch.Generator())


def _asym2d(size: int = 5) -> torch.Tensor:
    """A 2D image (1, 1, H, W) with no symmetry: every pixel value distinct."""
    return torch.arange(size**2, dtype=torch.float32).reshape(1, 1, size, size)


def test_a_square_has_the_8_orientations_of_d4_identity_first():
    table = orientations(2)
    assert len(table) == 8 and table[0].is_identity and all(o.spatial_dims == 2 for o in table)
    x = _asym2d()
    outs = [orient(x, o) for o in table]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    # D4 = the 4 rotations by multiples of 90 degrees, each mirrored or not (torch's own ops, not ours)
    d4 = {tuple(torch.rot90(m, k, dims=(2, 3)).flatten().tolist()) for m in (x, x.flip(3)) for k in range(4)}
    assert {tuple(o.flatten().tolist()) for o in outs} == d4
    assert len(flip_indices(2)) == 3 and len(rotation_indices(2)) == 3 and sum(o.det == 1 for o in table) == 4
    rot = {tuple(orient(x, table[i]).flatten().tolist()) for i in rotation_indices(2)}
    assert rot == {tuple(torch.rot90(x, k, dims=(2, 3)).flatten().tolist()) for k in (1, 2, 3)}
    assert len(orientations()) == 48 and orientations()[4].flips == (True, False, False)  # 3D order unchanged


def test_every_2d_orientation_is_undone_by_its_inverse():
    from memostudy.detect.alignment import _inverse

    x, table = _asym2d(), orientations(2)
    for i, o in enumerate(table):
        back = orient(orient(x, o), table[_inverse(i, 2)])
        assert torch.equal(back, x), i


def test_2d_batches_orient_shift_and_view_in_2d():
    x = torch.cat([_asym2d(6) + i for i in range(4)])
    idx = torch.tensor([0, 7, 3, 7])
    out = orient_batch(x, idx)
    assert all(torch.equal(out[i], orient(x[i], orientations(2)[int(idx[i])])) for i in range(4))
    assert len(shape_preserving(x.shape, 2)) == 8 and len(shape_preserving((1, 1, 8, 6), 2)) == 4
    img = _smooth(3)[:, :, 8]  # (3, 1, 16, 16) slices
    g = torch.Generator().manual_seed(0)
    assert random_view(img, g).shape == img.shape
    from memostudy.detect.views import translate

    moved = translate(img, torch.tensor([[2.0, -1.0]] * 3))
    # content moved by +2 rows and -1 column: pixel (r, c) of the result is pixel (r + 2, c - 1) of the image
    assert torch.allclose(moved[..., 3:10, 3:10], img[..., 5:12, 2:9], atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        translate(img, torch.zeros(3, 3))


@pytest.mark.parametrize("family", FAMILIES)
def test_2d_family_shape_and_seed(family):
    x = _smooth(4)[:, :, 8]
    a = apply_family(x, family, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, apply_family(x, family, torch.Generator().manual_seed(3)))
    assert torch.equal(a, x) == (family == "identity")
    if family in ("flip", "rot90", "orientation"):  # same pixels, other places
        assert torch.equal(a.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
