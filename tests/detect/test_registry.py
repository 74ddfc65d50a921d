"""The detector registry: every detector by name, each search the same as calling its pieces directly."""

from __future__ import annotations

import pytest
import torch

from memostudy.data.phantom import phantom_volumes
from memostudy.detect.alignment import AlignConfig, aligned_nearest, candidates
from memostudy.detect.baseline import pixel_nearest
from memostudy.detect.blocks import block_nearest, block_oriented_nearest_both
from memostudy.detect.detector import Detector, DetectorConfig, DetectorNet, embed
from memostudy.detect.families import COPY_FAMILIES, make_copies
from memostudy.detect.matching import CompareConfig, base_vectors, query_vectors
from memostudy.detect.metrics import calibrate_threshold, combine_nearest, is_copy
from memostudy.detect.registry import DETECTORS, TRAINING_FREE, Searches
from memostudy.detect.similarity import nearest, set_nearest

ALIGN = AlignConfig(max_shift=2, shortlist=2, subvoxel=(0.0,), blurs=(0.0,))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = DetectorConfig(channels=(8, 16), hidden=32).validate()
    det = Detector(DetectorNet(cfg).eval(), cfg)
    train = phantom_volumes(5, 16, seed=0)
    query = torch.cat([train[:2].flip(3), phantom_volumes(2, 16, seed=4)])
    reference = phantom_volumes(3, 16, seed=9)
    return det, train, query, reference


def _searches(setup, compare: CompareConfig | None = None) -> Searches:
    det, train, query, reference = setup
    return Searches(det, train, {"query": query, "reference": reference}, compare or CompareConfig(), "pearson", ALIGN)


def _same(a, b) -> None:
    assert torch.equal(a.values, b.values) and torch.equal(a.indices, b.indices)


def _close(a, b) -> None:
    """The same search up to float rounding (e.g. the same vectors computed in other batches)."""
    assert torch.allclose(a.values, b.values, atol=1e-5) and torch.equal(a.indices, b.indices)


@pytest.mark.slow
def test_each_detector_is_its_pieces(setup):
    det, train, query, reference = setup
    s = _searches(setup)
    q2b, b2q = set_nearest(query_vectors(det, query), base_vectors(det, train))
    _same(s.nearest("contrastive", "query"), q2b)
    _same(s.reverse("contrastive", "query"), b2q)  # each training volume's nearest query volume
    # a query set's 32-d embeddings are pooled from the oriented latent maps the contrastive search computed
    _close(s.nearest("contrastive-32d", "query"), nearest(embed(det, query), embed(det, train)))
    _same(s.nearest("pixel", "query"), pixel_nearest(query, train))
    _same(s.reverse("pixel", "query"), pixel_nearest(train, query))
    _same(s.nearest("pixel-oriented", "query"), pixel_nearest(query, train, orientations=True))
    _same(s.nearest("blocks", "query"), block_nearest(query, train))
    # the reverse comes from the same matrix of scores, transposed: the same search up to float rounding
    _close(s.reverse("blocks", "query"), block_nearest(train, query))
    oq, ob = block_oriented_nearest_both(query, train)
    _same(s.nearest("blocks-oriented", "query"), oq)
    _same(s.reverse("blocks-oriented", "query"), ob)
    brefs = (s.nearest("blocks", "reference"), s.nearest("blocks-oriented", "reference"))
    _same(s.nearest("blocks-either", "query"), combine_nearest(brefs, (s.nearest("blocks", "query"), oq), same_scale=True))
    _same(s.reverse("blocks-either", "query"), combine_nearest(brefs, (s.reverse("blocks", "query"), ob), same_scale=True))
    shortlist = candidates(query, train, ALIGN, embed(det, query), embed(det, train))
    aligned = aligned_nearest(query, train, shortlist, ALIGN)
    _close(s.nearest("aligned", "query"), aligned)
    # the reverse search's shortlist comes from the same oriented correlations, transposed
    back = aligned_nearest(train, query, candidates(train, query, ALIGN, embed(det, train), embed(det, query)), ALIGN)
    _close(s.reverse("aligned", "query"), back)
    refs = (s.nearest("contrastive", "reference"), s.nearest("aligned", "reference"))
    _same(s.nearest("combined", "query"), combine_nearest(refs, (q2b, aligned)))
    assert len(s.reverse("combined", "query").values) == len(train)


@pytest.mark.slow
def test_flipped_copies_meet_their_source_under_the_orientation_searches(setup):
    s = _searches(setup)
    for name in ("contrastive", "pixel-oriented", "blocks-oriented", "blocks-either", "aligned"):
        res = s.nearest(name, "query")
        assert res.indices[:2].tolist() == [0, 1], name
    # the plain pixel correlation is blind to the flip: a flipped copy scores below its own source
    assert (s.nearest("pixel", "query").values[:2] < s.nearest("pixel-oriented", "query").values[:2]).all()


@pytest.mark.slow
def test_comparison_settings_change_the_contrastive_search(setup):
    det, train, query, _ = setup
    s = _searches(setup, CompareConfig(representation="embedding"))
    res = s.nearest("contrastive", "query")
    assert torch.allclose(res.values, nearest(embed(det, query), embed(det, train)).values, atol=1e-6)
    unpooled = _searches(setup, CompareConfig(orientation_pooling=False))
    assert not torch.equal(unpooled.embedding("query"), s.embedding("query"))
    _same(unpooled.nearest("contrastive", "query"), _searches(setup).nearest("contrastive", "query"))  # latent: no pooling


def test_each_search_runs_once_and_names_are_checked(setup):
    s = _searches(setup)
    assert s.nearest("pixel", "query") is s.nearest("pixel", "query")
    assert s.embedding("train") is s.embedding("train")
    with pytest.raises(ValueError, match="unknown detector"):
        s.nearest("ssim", "query")
    with pytest.raises(ValueError, match="unknown query set"):
        s.nearest("pixel", "synthetic")
    assert DETECTORS == ("contrastive", "contrastive-32d", "pixel", "pixel-oriented", "blocks", "blocks-oriented",
                         "blocks-either", "aligned", "combined")


def test_without_a_detector_only_the_training_free_searches_run(setup):
    _, train, query, reference = setup
    s = Searches(None, train, {"query": query, "reference": reference})
    _same(s.nearest("blocks", "query"), block_nearest(query, train))
    _same(s.nearest("pixel", "query"), pixel_nearest(query, train))
    assert TRAINING_FREE == ("pixel", "pixel-oriented", "blocks", "blocks-oriented", "blocks-either")
    assert s.nearest("blocks-either", "query").indices[:2].tolist() == [0, 1]  # the flipped copies
    for name in ("contrastive", "contrastive-32d", "aligned", "combined"):
        with pytest.raises(ValueError, match="needs a trained contrastive detector"):
            s.nearest(name, "query")


@pytest.mark.slow
def test_registered_is_optional_and_its_pieces(setup):
    from memostudy.detect.registration import RegisterConfig, registered_nearest
    from memostudy.detect.registry import OPTIONAL_DETECTORS, registered_changes

    det, train, query, reference = setup
    assert "registered" in OPTIONAL_DETECTORS and "registered" not in DETECTORS  # off unless asked for
    reg = RegisterConfig(shortlist=2, starts=1, extra_rotations=24, iterations=10)
    s = Searches(det, train, {"query": query, "reference": reference}, CompareConfig(), "pearson", ALIGN, reg)
    shortlist = candidates(query, train, AlignConfig(max_shift=2, shortlist=2, subvoxel=(0.0,), blurs=(0.0,)),
                           embed(det, query), embed(det, train))
    direct = registered_nearest(query, train, shortlist, reg)
    _same(s.nearest("registered", "query"), direct.nearest)
    assert registered_changes(s, "query") == direct.changes
    assert len(s.reverse("registered", "query").values) == len(train)


@pytest.fixture(scope="module")
def phantoms():
    return phantom_volumes(8, 32, seed=0), phantom_volumes(12, 32, seed=50), phantom_volumes(4, 32, seed=90)


@pytest.mark.parametrize("family", COPY_FAMILIES)
def test_every_family_yields_copies_the_block_correlation_finds_on_tiny_data(phantoms, family):
    train, reference, fill = phantoms
    copies = make_copies(train[:4], family, 1, seed=1, others=fill)
    s = Searches(None, train, {"copies": copies, "reference": reference})
    found = s.nearest("blocks-either", "copies")
    threshold = calibrate_threshold(s.nearest("blocks-either", "reference").values, 95.0)
    hits = (found.indices == torch.arange(4)) & torch.from_numpy(is_copy(found.values, threshold))
    # a found copy: its nearest training volume is its source and it scores above the reference's 95th percentile;
    # at least three of the four copies of a family at strength 1 (rigid motion and combinations: at least two)
    assert int(hits.sum()) >= (2 if family in ("rigid", "combined") else 3), (family, hits.tolist())
