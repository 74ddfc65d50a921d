"""The assessment: typed figures per detector, consistent with its tables, for the comparison asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.data.phantom import phantom_volumes
from memostudy.detect.alignment import AlignConfig
from memostudy.detect.assessment import AssessConfig, AssessmentSummary, DetectorFigures, assess, scale_intensities
from memostudy.detect.detector import Detector, DetectorConfig, DetectorNet, embed
from memostudy.detect.matching import CompareConfig
from memostudy.detect.metrics import Fraction
from memostudy.detect.registry import DETECTORS
from memostudy.detect.similarity import nearest
from memostudy.errors import DataError

FAST_ALIGN = AlignConfig(max_shift=2, shortlist=2, subvoxel=(0.0,), blurs=(0.0,))


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    cfg = DetectorConfig(channels=(8, 16), hidden=32).validate()
    det = Detector(DetectorNet(cfg).eval(), cfg, best_epoch=4)
    train = phantom_volumes(6, 16, seed=0)
    synthetic = torch.cat([train[:2].flip(2), phantom_volumes(3, 16, seed=7)])
    reference = phantom_volumes(5, 16, seed=3)
    return det, train, reference, synthetic


def _assess(inputs, **cfg):
    det, train, reference, synthetic = inputs
    return assess(train, reference, synthetic, det, [f"t{i}" for i in range(6)], [f"r{i}" for i in range(5)],
                  [f"s{i}" for i in range(5)], cfg=AssessConfig(n_boot=200, align=FAST_ALIGN, **cfg))


@pytest.mark.slow
def test_summary_is_typed_and_matches_the_tables(inputs):
    a = _assess(inputs, aligned=True)
    s = a.summary
    assert isinstance(s, AssessmentSummary) and (s.n_train, s.n_reference, s.n_synthetic) == (6, 5, 5)
    assert tuple(s.detectors) == tuple(d for d in DETECTORS if d in ("contrastive", "pixel", "aligned", "combined"))
    assert s.best_epoch == 4 and s.detector_config == inputs[0].config
    for name, f in s.detectors.items():
        p = "" if name == "contrastive" else f"{name}_"
        assert isinstance(f, DetectorFigures) and isinstance(f.copies, Fraction)
        assert f.threshold == pytest.approx(np.percentile(a.reference_table[f"{p}similarity"], 95))
        assert f.copies.value == pytest.approx(a.synthetic_table[f"{p}is_copy"].mean())
        assert f.memorized.value == pytest.approx(a.train_table[f"{p}memorized"].mean())
        assert f.n_copies == a.synthetic_table[f"{p}is_copy"].sum() and f.n_memorized == a.train_table[f"{p}memorized"].sum()
        assert f.copies.lo <= f.copies.value <= f.copies.hi and (f.copies.n, f.memorized.n) == (5, 6)
        assert a.thresholds[name] == f.threshold
    # the flipped copies s0, s1 meet their sources t0, t1 under the latent search over orientations
    assert a.synthetic_table["nearest_train_id"][:2].tolist() == ["t0", "t1"]


@pytest.mark.slow
def test_summary_json_layout_is_unchanged(inputs):
    d = _assess(inputs, pixel_baseline=False).summary.as_dict()
    assert list(d) == ["n_train", "n_reference", "n_synthetic", "metric", "percentile", "confidence", "threshold",
                       "memorized_fraction", "memorized_fraction_ci", "copy_fraction", "copy_fraction_ci",
                       "n_memorized", "n_copies", "synthetic_similarity_median", "reference_similarity_median",
                       "pixel_baseline", "aligned", "combined", "detector", "assess_config"]
    assert d["pixel_baseline"] is None and d["detector"]["best_epoch"] == 4
    assert "representation" not in d["detector"]["config"]
    assert d["assess_config"]["compare"] == {"representation": "latent", "search_shift": 2.0, "orientation_pooling": True}


@pytest.mark.slow
def test_only_the_asked_detectors_run(inputs):
    a = _assess(inputs, pixel_baseline=False)
    assert list(a.summary.detectors) == ["contrastive"] and list(a.distributions) == ["contrastive"]
    assert not any(c.startswith("pixel_") for c in a.synthetic_table.columns)


@pytest.mark.slow
def test_comparison_settings_are_honoured(inputs):
    det, train, _, synthetic = inputs
    a = _assess(inputs, pixel_baseline=False, compare=CompareConfig(representation="embedding"))
    expected = nearest(embed(det, synthetic), embed(det, train))
    assert np.allclose(a.synthetic_table["similarity"], expected.values.numpy(), atol=1e-6)
    assert a.config.compare.representation == "embedding"


def test_bad_inputs(inputs):
    det, train, reference, synthetic = inputs
    with pytest.raises(DataError, match="no synthetic"):
        assess(train, reference, synthetic[:0], det, ["t"] * 6, ["r"] * 5, [])
    with pytest.raises(DataError, match="crop or resample"):
        assess(train, reference, phantom_volumes(2, 12), det, ["t"] * 6, ["r"] * 5, ["a", "b"])


def test_scale_intensities_maps_train_percentiles_to_the_unit_range():
    train = torch.linspace(0, 1000, 1000).reshape(1, 1, 10, 10, 10)
    (t, r, s), info = scale_intensities(train, train * 2, train - 500)
    assert info["rule"] == "joint" and t.min() == -1 and t.max() == 1
    assert torch.equal(r, (((train * 2 - info["lo"]) / (info["hi"] - info["lo"])) * 2 - 1).clamp(-1, 1))
    inside = train / 1000
    assert scale_intensities(inside, inside, inside)[1]["rule"] == "as-stored"
