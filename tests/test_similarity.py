"""The chunked nearest-neighbour search against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.similarity import nearest, similarity_matrix, standardise


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
