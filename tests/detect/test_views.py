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


def test_flip_rotate_turns_each_patch_to_one_orientation_replayably():
    from memostudy.detect.views import FlipRotate, orient, orientations

    x = torch.randn(6, 1, 8, 8, 8)
    torch.manual_seed(3)
    out = FlipRotate((8, 8, 8))(x)
    torch.manual_seed(3)
    assert torch.equal(FlipRotate((8, 8, 8))(x), out)  # drawn from torch's global RNG: replayable
    table = orientations()
    for a, b in zip(x, out):
        assert any(torch.equal(orient(a, o), b) for o in table)
    assert sum(not torch.equal(a, b) for a, b in zip(x, out)) >= 3
    flat = torch.randn(4, 1, 8, 8, 4)  # rotations only in the one square plane: the shape stays
    assert FlipRotate((8, 8, 4), prob=1.0)(flat).shape == flat.shape
