"""Block correlation: the mean of the best half of the block correlations, chunked, 3D and 2D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.data.phantom import phantom_volumes
from memostudy.detect.baseline import pixel_nearest
from memostudy.detect.blocks import (
    BlockConfig,
    block_nearest,
    block_nearest_both,
    block_oriented_nearest_both,
    block_rows,
    block_score,
    block_starts,
    oriented_shortlist,
    top_mean,
)
from memostudy.detect.families import keep_mask
from memostudy.detect.views import orient, orientations
from memostudy.errors import ConfigError


def test_block_starts_cover_every_voxel():
    assert block_starts(32, 8) == [0, 8, 16, 24]
    assert block_starts(20, 8) == [0, 8, 12]  # the last block ends at the edge
    with pytest.raises(ValueError, match="shorter than the block side"):
        block_starts(6, 8)


def test_block_rows_give_the_pearson_correlation_of_each_block():
    a, b = phantom_volumes(2, 12, seed=0)
    ra, rb = block_rows(a[None], 4), block_rows(b[None], 4)
    assert ra.shape == (27, 1, 64)
    corr = (ra[:, 0] * rb[:, 0]).sum(-1)
    # block (1, 2, 0) of the 3 x 3 x 3 grid: voxels [4:8, 8:12, 0:4]
    k = 1 * 9 + 2 * 3 + 0
    expect = np.corrcoef(a[0, 4:8, 8:12, 0:4].flatten().numpy(), b[0, 4:8, 8:12, 0:4].flatten().numpy())[0, 1]
    assert corr[k].item() == pytest.approx(expect, abs=1e-5)


def test_top_mean_averages_the_best_fraction():
    x = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    assert top_mean(x, 0.5).item() == pytest.approx(0.7)
    assert top_mean(x, 1.0).item() == pytest.approx(0.45)
    assert top_mean(x, 0.1).item() == pytest.approx(0.9)  # at least one block


def test_a_copy_keeping_half_its_voxels_scores_like_a_whole_copy():
    train = phantom_volumes(8, 16, seed=0)
    other = phantom_volumes(1, 16, seed=5)[0]
    mask = keep_mask((16, 16, 16), 0.6, np.array([1.0, 0.2, -0.3]))
    partial = torch.where(mask, train[3], other)[None]
    res = block_nearest(partial, train, BlockConfig(side=4))
    assert res.indices.item() == 3
    assert res.values.item() > 0.99  # the kept 60 % of the blocks alone reach the top half
    whole = pixel_nearest(partial, train).values.item()
    assert whole < 0.9  # the whole-volume correlation is pulled down by the new content
    novel = block_nearest(phantom_volumes(1, 16, seed=9), train, BlockConfig(side=4)).values.item()
    assert novel < res.values.item() - 0.1


def test_orientation_search_and_chunking():
    train = phantom_volumes(7, 12, seed=0)
    copies = torch.cat([train[[2]].flip(2, 3), train[[5]] * 0.5 - 0.1])
    plain = block_nearest(copies, train, BlockConfig(side=4))
    oriented = block_nearest(copies, train, BlockConfig(side=4, orientations=True))
    assert oriented.indices.tolist() == [2, 5] and (oriented.values > 0.999).all()
    assert plain.indices[1] == 5 and plain.values[0] < 0.99  # the plain search misses the flipped copy
    tiny = block_nearest(copies, train, BlockConfig(side=4), block_mb=0.01)  # one volume per chunk
    assert torch.equal(tiny.indices, plain.indices) and torch.allclose(tiny.values, plain.values, atol=1e-6)


def test_images_work_the_same_way():
    train = phantom_volumes(6, 16, seed=0)[:, :, 8]  # (N, 1, 16, 16) images
    copy = train[[4]] * 0.8 + 0.1
    res = block_nearest(copy, train, BlockConfig(side=4))
    assert res.indices.item() == 4
    # every non-flat block correlates 1; flat (background) blocks show no anatomy and count 0
    others = block_nearest(copy, train[[0, 1, 2, 3, 5]], BlockConfig(side=4))
    assert res.values.item() > others.values.item() + 0.1


def test_block_score_counts_uncovered_blocks_as_not_matching():
    v = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(0))  # no flat block
    assert block_score(v, v, cfg=BlockConfig(side=4)) == pytest.approx(1.0, abs=1e-5)
    cover = torch.ones_like(v)
    cover[:11] = 0  # less than half of the blocks fully covered: 1 of 4 block rows along D
    assert block_score(v, v, cover, BlockConfig(side=4)) == pytest.approx(0.5, abs=1e-5)  # 16 of 32 kept blocks at 1


def test_bad_settings_and_shapes_are_refused():
    a = phantom_volumes(2, 12, seed=0)
    with pytest.raises(ConfigError, match="block side"):
        block_nearest(a, a, BlockConfig(side=1))
    with pytest.raises(ConfigError, match="block keep"):
        block_nearest(a, a, BlockConfig(keep=0.0))
    with pytest.raises(ValueError, match="one shape"):
        block_nearest(a, phantom_volumes(2, 16, seed=0))


def test_volumes_smaller_than_a_block_are_one_block_along_that_axis():
    train = torch.randn(4, 1, 6, 12, 12, generator=torch.Generator().manual_seed(0))
    res = block_nearest(train[[2]] * 2.0, train)  # default side 8 > 6: blocks of 6 voxels
    assert res.indices.item() == 2 and res.values.item() == pytest.approx(1.0, abs=1e-5)


def test_a_copy_stands_out_when_most_blocks_are_constant_background():
    # anatomy in one corner (8 of 64 blocks), the rest exact background, as in an MRI with air around the body:
    # the constant blocks correlate 0 for every pair, and the best half still ranks the source first
    g = torch.Generator().manual_seed(0)
    train = torch.full((5, 1, 32, 32, 32), -1.0)
    train[:, :, :16, :16, :16] = torch.rand(5, 1, 16, 16, 16, generator=g)
    res = block_nearest(train[[3]] * 0.7 + 0.1, train)
    assert res.indices.item() == 3
    others = block_nearest(train[[3]] * 0.7 + 0.1, train[[0, 1, 2, 4]])
    assert res.values.item() > others.values.item() + 0.05


@pytest.mark.parametrize("orientations", [False, True])
def test_one_pass_gives_both_directions(orientations):
    train = phantom_volumes(6, 12, seed=0)
    query = torch.cat([train[[2]].flip(3), phantom_volumes(4, 12, seed=3)])
    cfg = BlockConfig(side=4, orientations=orientations)
    q2b, b2q = block_nearest_both(query, train, cfg, block_mb=0.01)  # one volume per chunk both ways
    fwd = block_nearest(query, train, cfg)  # in one chunk: the same up to float rounding
    assert torch.allclose(q2b.values, fwd.values, atol=1e-5) and torch.equal(q2b.indices, fwd.indices)
    back = block_nearest(train, query, cfg)  # searched the other way round: the same scores
    assert torch.allclose(b2q.values, back.values, atol=1e-5) and torch.equal(b2q.indices, back.indices)


def test_the_shortlist_gives_each_pair_its_best_orientation_and_covers_both_directions():
    train = phantom_volumes(6, 16, seed=0)
    turned = orient(train[[4]], orientations(3)[17]).contiguous()
    query = torch.cat([train[[1]].flip(2), turned, phantom_volumes(3, 16, seed=5)])
    pairs, turn = oriented_shortlist(query, train, BlockConfig(side=4, shortlist=2))
    assert pairs.shape == turn.shape == (5, 6)
    # the flipped and the turned copy: their source is shortlisted, turned back by the orientation that made them
    assert pairs[0, 1] and pairs[1, 4]
    assert orient(query[[0]], orientations(3)[int(turn[0, 1])]).equal(train[[1]])
    assert orient(query[[1]], orientations(3)[int(turn[1, 4])]).equal(train[[4]])
    # each query has at least its 2 best base volumes, each base volume at least its 2 best queries
    assert (pairs.sum(1) >= 2).all() and (pairs.sum(0) >= 2).all()
    everything, _ = oriented_shortlist(query, train, BlockConfig(side=4, shortlist=6))
    assert everything.all()


def test_oriented_block_search_finds_flipped_and_turned_copies_both_ways():
    train = phantom_volumes(6, 16, seed=0)
    turned = orient(train[[4]], orientations(3)[17]).contiguous()
    query = torch.cat([train[[1]].flip(2) * 0.5, turned, phantom_volumes(3, 16, seed=5)])
    cfg = BlockConfig(side=4, shortlist=2)
    q2b, b2q = block_oriented_nearest_both(query, train, cfg)
    assert q2b.indices[:2].tolist() == [1, 4] and (q2b.values[:2] > 0.999).all()
    assert b2q.indices[[1, 4]].tolist() == [0, 1] and (b2q.values[[1, 4]] > 0.999).all()
    assert block_nearest(query[:2], train, cfg).values.max() < 0.99  # the plain score misses both
    # a shortlist of pairs in one orientation each never scores more than every orientation of every pair
    full = block_nearest(query, train, BlockConfig(side=4, orientations=True))
    assert (q2b.values <= full.values + 1e-5).all()
    # 2D images: 8 orientations
    imgs = train[:, :, 8]
    flipped = imgs[[3]].flip(3)
    q2b, _ = block_oriented_nearest_both(flipped, imgs, cfg)
    assert q2b.indices.item() == 3 and q2b.values.item() > 0.999
    with pytest.raises(ConfigError, match="shortlist and pool"):
        block_oriented_nearest_both(query, train, BlockConfig(shortlist=0))
