"""The LDM's flip/rotate augmentation: each patch becomes one of its orientations, replayably."""

from __future__ import annotations

import torch

from memostudy.data.augment import FlipRotate
from memostudy.detect.views import orient, orientations


def test_flip_rotate_turns_each_patch_to_one_orientation_replayably():
    x = torch.randn(6, 1, 8, 8, 8)
    out = FlipRotate((8, 8, 8))(x, torch.Generator().manual_seed(3))
    assert torch.equal(FlipRotate((8, 8, 8))(x, torch.Generator().manual_seed(3)), out)  # replayable
    table = orientations()
    for a, b in zip(x, out):
        assert any(torch.equal(orient(a, o), b) for o in table)
    assert sum(not torch.equal(a, b) for a, b in zip(x, out)) >= 3
    flat = torch.randn(4, 1, 8, 8, 4)  # rotations only in the one square plane: the shape stays
    assert FlipRotate((8, 8, 4), prob=1.0)(flat).shape == flat.shape


def test_flip_rotate_of_square_images_gives_one_of_their_8_orientations():
    x = torch.randn(8, 1, 6, 6)
    out = FlipRotate((6, 6))(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    for a, b in zip(x, out):
        square = [torch.rot90(f, k, (1, 2)) for f in (a, a.flip(1)) for k in range(4)]
        assert any(torch.equal(s, b) for s in square)
    assert sum(not torch.equal(a, b) for a, b in zip(x, out)) >= 4
