"""How the detector compares volumes: latent vectors over the query's orientations and the base's shifts."""

from __future__ import annotations

import pytest
import torch

from memostudy.data.phantom import phantom_volumes
from memostudy.detect.detector import Detector, DetectorConfig, DetectorNet, embed
from memostudy.detect.matching import (
    CompareConfig,
    base_vectors,
    configs_from_overrides,
    latent_vectors,
    query_vectors,
    shift_grid,
)
from memostudy.detect.similarity import set_nearest
from memostudy.detect.views import apply_family, translate
from memostudy.errors import ConfigError

TINY = dict(channels=(8, 16), input_pool=2, latent_size=4, hidden=32, batch_size=8)


def _detector() -> Detector:
    torch.manual_seed(0)
    cfg = DetectorConfig(**TINY).validate()
    return Detector(DetectorNet(cfg).eval(), cfg)


def test_shift_grid():
    grid = shift_grid(2.0)
    assert len(grid) == 27 == len(set(grid)) and grid[0] == (0.0, 0.0, 0.0)
    assert {v for s in grid for v in s} == {-2.0, 0.0, 2.0}
    assert shift_grid(0) == [(0.0, 0.0, 0.0)]
    grid2 = shift_grid(2.0, spatial_dims=2)  # 2D images: 9 shifts per (H, W)
    assert len(grid2) == 9 == len(set(grid2)) and grid2[0] == (0.0, 0.0) and shift_grid(0, 2) == [(0.0, 0.0)]


def test_2d_latent_search_finds_a_turned_and_shifted_copy():
    from memostudy.detect.views import orient, orientations

    torch.manual_seed(0)
    cfg = DetectorConfig(**TINY, spatial_dims=2).validate()
    det = Detector(DetectorNet(cfg).eval(), cfg)
    train = phantom_volumes(6, 16, seed=0)[:, :, 8].contiguous()
    q = query_vectors(det, train)
    assert q.shape == (8, 6, 8 * 4 * 4) and torch.allclose(q[0], latent_vectors(det, train))
    # a copy turned by a D4 orientation meets its source exactly in one of the query's 8 orientations
    copies = torch.cat([orient(train[[i]], orientations(2)[k]) for i, k in ((1, 3), (4, 6))])
    found = set_nearest(query_vectors(det, copies), base_vectors(det, train, CompareConfig(search_shift=0)))[0]
    assert found.indices.tolist() == [1, 4] and torch.allclose(found.values, torch.ones(2), atol=1e-5)


@pytest.mark.slow
def test_vector_shapes_and_identity_slices():
    det = _detector()
    x = phantom_volumes(3, 16, seed=0)
    lat = latent_vectors(det, x)
    assert lat.shape == (3, 8 * 4**3)
    q, b = query_vectors(det, x), base_vectors(det, x)
    assert q.shape == (48, 3, 512) and b.shape == (27, 3, 512)
    assert torch.allclose(q[0], lat) and torch.allclose(b[0], lat)  # identity orientation / no shift first
    flat = torch.zeros(2, 1, 16, 16, 4)  # non-cubic: only the 16 orientations that keep the shape
    assert query_vectors(det, flat).shape[0] == 16
    paper = CompareConfig(representation="embedding")
    e = query_vectors(det, x, paper)
    assert e.shape == (1, 3, 32) and torch.equal(e[0], embed(det, x))
    assert torch.equal(base_vectors(det, x, paper)[0], embed(det, x))
    unpooled = CompareConfig(representation="embedding", orientation_pooling=False)
    assert torch.equal(query_vectors(det, x, unpooled)[0], embed(det, x, orientation_pooling=False))
    assert not torch.allclose(query_vectors(det, x, unpooled), e, atol=1e-4)


@pytest.mark.slow
def test_rotated_and_shifted_copies_meet_their_source_exactly():
    # the search itself, with random weights: the orientation that undoes a rotation and the shift that a
    # copy was moved by give the very vectors of the source, so the copy scores 1 against it
    det = _detector()
    train = phantom_volumes(6, 16, seed=1)
    base = base_vectors(det, train)
    rotated = apply_family(train, "rot90", torch.Generator().manual_seed(0))
    res, back = set_nearest(query_vectors(det, rotated), base)
    assert torch.equal(res.indices, torch.arange(6)) and (res.values > 0.9999).all()
    assert torch.equal(back.indices, torch.arange(6))
    moved = translate(train, torch.tensor([[2.0, -2.0, 0.0]] * 6))
    assert (set_nearest(query_vectors(det, moved), base)[0].values > 0.9999).all()
    no_shift = set_nearest(query_vectors(det, moved), base_vectors(det, train, CompareConfig(search_shift=0)))[0]
    assert (no_shift.values < 0.9999).all()


def test_bad_settings():
    with pytest.raises(ConfigError, match="representation"):
        CompareConfig(representation="pixels").validate()
    with pytest.raises(ConfigError, match="search_shift"):
        CompareConfig(search_shift=-1).validate()
    with pytest.raises(ConfigError, match="too large"):
        base_vectors(_detector(), phantom_volumes(2, 16, seed=0), CompareConfig(search_shift=8.0))


def test_overrides_go_to_the_config_they_belong_to():
    det, cmp = configs_from_overrides({"epochs": "3", "representation": "embedding", "orientation_pooling": "false",
                                       "search_shift": "1"})
    assert det == DetectorConfig(epochs=3)
    assert cmp == CompareConfig(representation="embedding", search_shift=1.0, orientation_pooling=False)
    assert configs_from_overrides({}) == (DetectorConfig(), CompareConfig())
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        configs_from_overrides({"bogus": "1"})
    with pytest.raises(ConfigError, match="representation"):
        configs_from_overrides({"representation": "pixels"})


def test_no_field_is_both_a_detector_and_a_comparison_setting():
    import dataclasses

    names = [{f.name for f in dataclasses.fields(c)} for c in (DetectorConfig, CompareConfig)]
    assert not names[0] & names[1]
