"""The assessment: typed figures per detector, consistent with its tables, for the comparison asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kstest

from memostudy.data.phantom import phantom_volumes
from memostudy.detect.alignment import AlignConfig
from memostudy.detect.assessment import (
    AssessConfig,
    AssessmentSummary,
    DetectorFigures,
    assess,
    column_prefix,
    scale_intensities,
)
from memostudy.detect.baseline import pixel_nearest
from memostudy.detect.blocks import block_nearest
from memostudy.detect.calibration import blur, conformal_p_values
from memostudy.detect.detector import Detector, DetectorConfig, DetectorNet, embed
from memostudy.detect.matching import CompareConfig
from memostudy.detect.metrics import Fraction
from memostudy.detect.registry import DETECTORS
from memostudy.detect.similarity import nearest
from memostudy.errors import ConfigError, DataError

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
    assert tuple(s.detectors) == tuple(d for d in DETECTORS if d in ("contrastive", "pixel", "blocks", "blocks-either",
                                                                    "aligned", "combined"))
    assert s.best_epoch == 4 and s.detector_config == inputs[0].config
    for name, f in s.detectors.items():
        p = column_prefix(name)
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
    assert list(d) == ["n_train", "n_reference", "n_synthetic", "metric", "percentile", "confidence", "headline",
                       "threshold",
                       "memorized_fraction", "memorized_fraction_ci", "copy_fraction", "copy_fraction_ci",
                       "n_memorized", "n_copies", "synthetic_similarity_median", "reference_similarity_median",
                       "n_bh_copies", "min_p_value", "pixel_baseline", "blocks", "blocks_either", "aligned", "combined", "detector",
                       "assess_config",
                       "fdr", "smoothness"]
    assert d["pixel_baseline"] is None and d["detector"]["best_epoch"] == 4 and d["headline"] == "contrastive"
    assert d["blocks"]["threshold"] == pytest.approx(np.percentile(
        block_nearest(inputs[2], inputs[1]).values.numpy(), 95))  # on by default
    assert d["fdr"] == 0.05 and d["smoothness"]["reference_smoothness"] == "as-is"
    assert set(d["smoothness"]["roughness"]) == {"reference", "synthetic"}
    assert "representation" not in d["detector"]["config"]
    assert d["assess_config"]["compare"] == {"representation": "latent", "search_shift": 2.0, "orientation_pooling": True}


@pytest.mark.slow
def test_only_the_asked_detectors_run(inputs):
    a = _assess(inputs, pixel_baseline=False, blocks=False)
    assert list(a.summary.detectors) == ["contrastive"] and list(a.distributions) == ["contrastive"]
    assert not any(c.startswith(("pixel_", "blocks_")) for c in a.synthetic_table.columns)


def test_training_free_detectors_run_without_a_detector(inputs):
    _, train, reference, synthetic = inputs
    ids = ([f"t{i}" for i in range(6)], [f"r{i}" for i in range(5)], [f"s{i}" for i in range(5)])
    a = assess(train, reference, synthetic, None, *ids, cfg=AssessConfig(n_boot=200, contrastive=False))
    s = a.summary
    assert list(s.detectors) == ["pixel", "blocks", "blocks-either"] and s.headline_detector == "blocks-either"
    assert s.detector_config is None and s.best_epoch is None
    d = s.as_dict()
    assert d["headline"] == "blocks-either" and d["detector"] is None
    assert d["threshold"] == d["blocks_either"]["threshold"] and d["copy_fraction"] == d["blocks_either"]["copy_fraction"]
    assert d["blocks"]["threshold"] == pytest.approx(np.percentile(block_nearest(reference, train).values.numpy(), 95))
    cols = set(a.synthetic_table.columns)
    assert {"blocks_similarity", "blocks_either_is_copy", "pixel_p_value"} <= cols and not {"similarity", "is_copy"} & cols
    # the flipped copies s0, s1 are found by the oriented block correlation: reference ranks of 1
    assert a.synthetic_table["blocks_either_nearest_train_id"][:2].tolist() == ["t0", "t1"]
    assert (a.synthetic_table["blocks_either_similarity"][:2] == 1.0).all()
    # without the oriented search the plain block correlation is the headline, without both the pixel baseline
    bl = assess(train, reference, synthetic, None, *ids, cfg=AssessConfig(n_boot=200, contrastive=False,
                                                                           blocks_oriented=False))
    assert list(bl.summary.detectors) == ["pixel", "blocks"] and bl.summary.headline_detector == "blocks"
    px = assess(train, reference, synthetic, None, *ids, cfg=AssessConfig(n_boot=200, contrastive=False, blocks=False))
    assert px.summary.headline_detector == "pixel" and px.summary.as_dict()["threshold"] == px.thresholds["pixel"]


def test_contrastive_settings_that_need_a_detector_are_refused(inputs):
    _, train, reference, synthetic = inputs
    ids = ([f"t{i}" for i in range(6)], [f"r{i}" for i in range(5)], [f"s{i}" for i in range(5)])
    with pytest.raises(ConfigError, match="needs a trained detector"):
        assess(train, reference, synthetic, None, *ids, cfg=AssessConfig(n_boot=10))
    with pytest.raises(ConfigError, match="aligned detector needs the contrastive"):
        AssessConfig(contrastive=False, aligned=True).validate()
    with pytest.raises(ConfigError, match="no detector to run"):
        AssessConfig(contrastive=False, blocks=False, pixel_baseline=False).validate()


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


def test_scale_intensities_in_place_writes_the_same_values_into_the_given_volumes():
    # 3 x 1,000,000 voxels: over the 2,000,000 sampled, so the percentiles come from a subsample
    train = torch.rand(3, 1, 100, 100, 100, generator=torch.Generator().manual_seed(0)) * 1000
    copies = [train.clone(), train.clone() * 2, train.clone() - 500]
    (t, r, s), info = scale_intensities(*copies)
    assert torch.equal(copies[0], train)  # not in place: the inputs are left as they were
    assert info["lo"] == pytest.approx(5, abs=2) and info["hi"] == pytest.approx(995, abs=2)
    (t2, r2, s2), info2 = scale_intensities(*copies, in_place=True)
    assert info2 == info and all(a is b for a, b in zip((t2, r2, s2), copies))
    assert torch.equal(t2, t) and torch.equal(r2, r) and torch.equal(s2, s)
    twice = train.clone()  # one tensor given as two sets is mapped once, into a new tensor
    (t3, r3, _), _ = scale_intensities(twice, twice, train.clone(), in_place=True)
    assert torch.equal(t3, t) and torch.equal(r3, t) and torch.equal(twice, train)


def _bh_by_hand(p: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg step-up written out: flag the k smallest, k the largest index with p_(k) <= k q / m."""
    order = np.argsort(p, kind="stable")
    ok = [k for k in range(1, len(p) + 1) if p[order[k - 1]] <= k * q / len(p)]
    flagged = np.zeros(len(p), bool)
    flagged[order[:max(ok, default=0)]] = True
    return flagged


@pytest.mark.slow
def test_p_values_and_bh_decisions_match_a_computation_by_hand(inputs):
    # 5 reference volumes: the smallest p-value is 1/6, so BH flags only at a large FDR (0.5: k q / m = 0.1 k)
    a = _assess(inputs, aligned=True, fdr=0.5)
    syn, ref = a.synthetic_table, a.reference_table
    for name, f in a.summary.detectors.items():
        px = column_prefix(name)
        r = ref[f"{px}similarity"].to_numpy()
        p = np.array([(1 + (r >= s).sum()) / (1 + len(r)) for s in syn[f"{px}similarity"]])
        assert np.allclose(syn[f"{px}p_value"], p)
        assert syn[f"{px}bh_copy"].astype(bool).tolist() == _bh_by_hand(p, 0.5).tolist()
        assert f.n_bh_copies == syn[f"{px}bh_copy"].sum() and f.min_p_value == pytest.approx(p.min())
    # the flipped copies s0, s1 score above every reference volume under the aligned correlation: p = 1/6, and
    # BH at 0.5 flags them (2 of 5: 1/6 <= 2 * 0.5 / 5)
    assert syn["aligned_p_value"][:2].tolist() == [1 / 6, 1 / 6] and syn["aligned_bh_copy"][:2].tolist() == [1, 1]
    # each flagged volume has evidence, aligned to its training volume: the flip along D that made it
    flagged = {(e.detector, e.synthetic_id) for e in a.evidence}
    for name in a.summary.detectors:
        px = column_prefix(name)
        want = syn[(syn[f"{px}is_copy"] == 1) | (syn[f"{px}bh_copy"] == 1)]["synthetic_id"]
        assert {(name, s) for s in want} == {f for f in flagged if f[0] == name}
    e = next(e for e in a.evidence if e.detector == "aligned" and e.synthetic_id == "s0")
    assert e.train_id == "t0" and e.change["flips"] == [True, False, False] and e.change["shift_voxels"] == [0.0, 0.0, 0.0]


@pytest.mark.slow
def test_matched_reference_is_scored_instead_and_reported(inputs):
    det, train, _, _ = inputs
    g = torch.Generator().manual_seed(1)
    reference = blur(torch.randn(5, 1, 16, 16, 16, generator=g), 0.7).clamp(-1, 1)
    smooth = blur(blur(torch.randn(5, 1, 16, 16, 16, generator=g), 0.7), 1.5).clamp(-1, 1)  # smoother than the reference
    a = assess(train, reference, smooth, det, [f"t{i}" for i in range(6)], [f"r{i}" for i in range(5)],
               [f"s{i}" for i in range(5)], cfg=AssessConfig(n_boot=50, reference_smoothness="matched", evidence=False))
    sm = a.summary.smoothness
    assert sm["reference_smoothness"] == "matched" and sm["blur_sigma"] > 0.3
    assert sm["roughness"]["synthetic"] < sm["roughness"]["reference"]
    assert abs(sm["roughness"]["reference_matched"] - sm["roughness"]["synthetic"]) < 0.1 * sm["roughness"]["synthetic"]
    plain = assess(train, reference, smooth, det, [f"t{i}" for i in range(6)], [f"r{i}" for i in range(5)],
                   [f"s{i}" for i in range(5)], cfg=AssessConfig(n_boot=50, evidence=False))
    # the synthetic side is untouched; the reference side is scored after the blur
    assert np.allclose(a.synthetic_table["pixel_similarity"], plain.synthetic_table["pixel_similarity"])
    assert not np.allclose(a.reference_table["pixel_similarity"], plain.reference_table["pixel_similarity"])
    assert all(e.change == {} for e in a.evidence) and "blur_sigma" not in plain.summary.smoothness  # evidence=False: not aligned


def test_p_values_are_uniform_on_exchangeable_novel_volumes():
    # novel volumes: independent draws from one distribution, so reference and synthetic are exchangeable.
    # Exact: for n + 1 of them, each in turn the synthetic one against the other n, the p-values are 1..n+1 / (n+1).
    g = torch.Generator().manual_seed(0)
    train = torch.randn(12, 1, 6, 6, 6, generator=g)
    pool = pixel_nearest(torch.randn(400, 1, 6, 6, 6, generator=g), train).values.double().numpy()
    n = 19
    p = [conformal_p_values(pool[[j]], np.delete(pool[:n + 1], j))[0] for j in range(n + 1)]
    assert sorted(p) == pytest.approx(np.arange(1, n + 2) / (n + 1))
    # over many random draws of (reference, synthetic) from the pool: uniform by a KS test
    rng = np.random.default_rng(0)
    draws = np.array([conformal_p_values(pool[perm[:1]], pool[perm[1:100]])[0]
                      for perm in (rng.permutation(len(pool)) for _ in range(1000))])
    assert kstest(draws, "uniform").pvalue > 0.01 and abs(np.mean(draws <= 0.05) - 0.05) < 0.025


def test_bad_fdr_and_smoothness_settings():
    with pytest.raises(ConfigError, match="fdr"):
        AssessConfig(fdr=0).validate()
    with pytest.raises(ConfigError, match="reference_smoothness"):
        AssessConfig(reference_smoothness="blurred").validate()


@pytest.mark.slow
def test_2d_assessment_finds_mirrored_copies_and_reports_their_change():
    torch.manual_seed(0)
    cfg = DetectorConfig(channels=(8, 16), hidden=32, spatial_dims=2).validate()
    det = Detector(DetectorNet(cfg).eval(), cfg)
    train = phantom_volumes(6, 16, seed=0)[:, :, 8].contiguous()  # 2D images (6, 1, 16, 16)
    synthetic = torch.cat([train[:2].flip(3), phantom_volumes(3, 16, seed=7)[:, :, 8]])
    reference = phantom_volumes(5, 16, seed=3)[:, :, 8].contiguous()
    a = assess(train, reference, synthetic, det, [f"t{i}" for i in range(6)], [f"r{i}" for i in range(5)],
               [f"s{i}" for i in range(5)], cfg=AssessConfig(n_boot=50, align=FAST_ALIGN, aligned=True))
    assert set(a.summary.detectors) == {"contrastive", "pixel", "blocks", "blocks-either", "aligned", "combined"}
    # the mirrored copies meet their sources exactly under the latent search over the 8 orientations of a square,
    # and under the oriented block correlation
    assert a.synthetic_table["nearest_train_id"][:2].tolist() == ["t0", "t1"]
    assert a.synthetic_table["blocks_either_nearest_train_id"][:2].tolist() == ["t0", "t1"]
    assert a.synthetic_table["aligned_similarity"][:2].min() > 0.999
    found = {(e.synthetic_id, e.detector): e.change for e in a.evidence}
    change = found[("s0", "aligned")]  # flagged: above every reference image
    assert change["flips"] == [False, True] and change["permutation"] == [0, 1] and change["shift_voxels"] == [0.0, 0.0]
