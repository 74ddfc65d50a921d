"""The chunked nearest-neighbour search against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.detect.similarity import nearest, set_nearest, similarity_matrix, standardise


def test_pearson_is_correlation():
    x = torch.randn(5, 7)
    s = similarity_matrix(x, x, "pearson")
    assert np.allclose(s.numpy(), np.corrcoef(x.numpy()), atol=1e-5)
    assert np.allclose(standardise(x).mean(1).numpy(), 0, atol=1e-6)


def test_msd_is_negative_mean_squared_distance():
    q, b = torch.randn(4, 6), torch.randn(3, 6)
    want = -((q[:, None] - b[None]) ** 2).mean(-1)
    assert torch.allclose(similarity_matrix(q, b, "msd"), want, atol=1e-5)


@pytest.mark.parametrize("metric", ["pearson", "msd"])
@pytest.mark.parametrize("chunk,base_chunk", [(3, 5), (100, 100), (1, 1)])
def test_chunked_equals_brute_force(metric, chunk, base_chunk):
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(23, 8, generator=g), torch.randn(17, 8, generator=g)
    full = similarity_matrix(q, b, metric)
    res = nearest(q, b, metric, chunk=chunk, base_chunk=base_chunk)
    assert torch.equal(res.indices, full.argmax(1))
    assert torch.allclose(res.values, full.max(1).values, atol=1e-5)


def test_exact_copy_is_found_and_scores_highest():
    b = torch.randn(10, 16)
    q = b[[7, 2]] * 3 + 1  # Pearson ignores scale and offset
    res = nearest(q, b, "pearson", chunk=1, base_chunk=3)
    assert res.indices.tolist() == [7, 2]
    assert torch.allclose(res.values, torch.ones(2), atol=1e-5)
    res = nearest(b[[4]], b, "msd")
    assert res.indices.item() == 4 and abs(res.values.item()) < 1e-5


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown metric"):
        nearest(torch.zeros(2, 3), torch.zeros(2, 3), "cosine")
    with pytest.raises(ValueError, match="same F"):
        nearest(torch.zeros(2, 3), torch.zeros(2, 4))


def test_constant_rows_score_zero_and_inputs_are_untouched():
    b = torch.randn(6, 9)
    q = torch.cat([torch.full((1, 9), 0.3), b[[1]]])
    q0, b0 = q.clone(), b.clone()
    res = nearest(q, b, "pearson", chunk=1, base_chunk=4)
    assert torch.isfinite(res.values).all()
    assert abs(res.values[0]) < 1e-5 and res.indices[1] == 1
    assert torch.equal(q, q0) and torch.equal(b, b0)


@pytest.mark.parametrize("metric", ["pearson", "msd"])
@pytest.mark.parametrize("block", [7, 2**23])
def test_set_nearest_is_the_best_pair_of_vectors(metric, block):
    g = torch.Generator().manual_seed(3)
    query, base = torch.randn(3, 20, 6, generator=g), torch.randn(4, 9, 6, generator=g)
    # brute force: every (query vector, base vector) pair, best per (query item, base item)
    full = torch.stack([torch.stack([similarity_matrix(query[k], base[j], metric) for j in range(4)])
                        for k in range(3)]).amax(dim=(0, 1))
    q2b, b2q = set_nearest(query, base, metric, block=block)
    assert torch.allclose(q2b.values, full.max(1).values, atol=1e-5) and torch.equal(q2b.indices, full.max(1).indices)
    assert torch.allclose(b2q.values, full.max(0).values, atol=1e-5) and torch.equal(b2q.indices, full.max(0).indices)
    one = set_nearest(query[:1], base[:1], metric, block=block)[0]
    plain = nearest(query[0], base[0], metric)
    assert torch.allclose(one.values, plain.values, atol=1e-5) and torch.equal(one.indices, plain.indices)


def test_set_nearest_bad_inputs():
    with pytest.raises(ValueError, match="same F"):
        set_nearest(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="empty"):
        set_nearest(torch.zeros(1, 3, 4), torch.zeros(1, 0, 4))
