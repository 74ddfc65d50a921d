"""Pixel baseline: max voxel Pearson correlation, chunked."""

from __future__ import annotations

import numpy as np
import torch

from memostudy.data.phantom import phantom_volumes
from memostudy.detect.baseline import pixel_nearest


def test_matches_numpy_corrcoef():
    train, synth = phantom_volumes(6, 8, seed=0), phantom_volumes(4, 8, seed=1)
    res = pixel_nearest(synth, train, chunk=3, base_chunk=2)
    c = np.corrcoef(synth.flatten(1).numpy(), train.flatten(1).numpy())[:4, 4:]
    assert np.allclose(res.values.numpy(), c.max(1), atol=1e-5)
    assert res.indices.tolist() == c.argmax(1).tolist()


def test_sees_intensity_copies_not_flips():
    train = phantom_volumes(6, 12, seed=0)
    scaled = train[[2]] * 0.5 + 0.1
    flipped = train[[2]].flip(2, 3)
    res = pixel_nearest(torch.cat([scaled, flipped]), train)
    assert res.indices[0] == 2 and res.values[0] > 0.999
    assert res.values[1] < 0.99  # a flipped copy no longer correlates voxel by voxel


def test_orientation_search_finds_flipped_and_rotated_copies():
    train = phantom_volumes(6, 12, seed=0)
    copies = torch.cat([train[[2]].flip(2, 3), train[[4]].rot90(1, (3, 4)), train[[1]]])
    plain = pixel_nearest(copies, train)
    res = pixel_nearest(copies, train, orientations=True)
    assert res.indices.tolist() == [2, 4, 1]
    assert (res.values > 0.999).all()
    assert (plain.values[:2] < 0.99).all()  # the plain baseline misses the first two
    assert torch.allclose(res.values[2], plain.values[2])  # an unchanged copy scores the same either way
    assert (res.values >= plain.values - 1e-6).all()  # the search keeps the identity's score as a floor


def test_block_size_from_memory_budget_gives_the_same_answer():
    train, synth = phantom_volumes(7, 8, seed=0), phantom_volumes(5, 8, seed=1)
    whole = pixel_nearest(synth, train)  # both fit one block of the default budget
    tiny = pixel_nearest(synth, train, block_mb=2 * 8**3 * 4 / 2**20)  # two volumes per block
    assert torch.equal(whole.indices, tiny.indices)
    assert torch.allclose(whole.values, tiny.values, atol=1e-6)
