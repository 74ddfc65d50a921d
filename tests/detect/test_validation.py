"""Detector validation on a phantom ground truth, and the `memostudy validate-detector` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memostudy.cli import main
from memostudy.data.phantom import phantom_volumes, write_phantom_dataset
from memostudy.detect.detector import DetectorConfig, train_detector
from memostudy.detect.matching import CompareConfig
from memostudy.detect.registry import DETECTORS
from memostudy.detect.validation import ValidationConfig, build_ground_truth, split_held_out, validate_detector
from memostudy.detect.views import COPY_FAMILIES

# standardise off: the aligned detector's shortlist takes 5 candidates by this 2-epoch net's 32-d embedding, and
# with per-volume standardisation that embedding misses the source of one shifted phantom (source_match 0.75)
TINY = DetectorConfig(channels=(8, 16), input_pool=2, hidden=32, batch_size=8, epochs=2, standardise=False)


def test_split_is_deterministic_and_disjoint():
    a, b = split_held_out(11, 0.5, seed=3)
    assert set(a).isdisjoint(b) and len(a) + len(b) == 11
    a2, _ = split_held_out(11, 0.5, seed=3)
    assert np.array_equal(a, a2)


def test_ground_truth_counts():
    train, held = phantom_volumes(6, 16, seed=0), phantom_volumes(6, 16, seed=1)
    gt = build_ground_truth(train, held, ValidationConfig(copies_per_family=4))
    assert len(gt.copies) == 4 * len(COPY_FAMILIES) == len(gt.copy_family) == len(gt.copy_source)
    assert len(gt.reference) + len(gt.novel) == 6


@pytest.mark.slow
def test_table_per_detector_and_family():
    train, held = phantom_volumes(8, 16, seed=0), phantom_volumes(8, 16, seed=1)
    det = train_detector(train, None, TINY)
    res = validate_detector(det, train, held, ValidationConfig(copies_per_family=4))
    assert tuple(res.table["detector"].unique()) == DETECTORS  # the registry's line-up, in its order
    assert len(res.table) == 6 * (1 + len(COPY_FAMILIES))
    # each "all" row is the decision "similarity > threshold" counted over that detector's scores
    for name, row in res.table[res.table["family"] == "all"].set_index("detector").iterrows():
        sc = res.scores[res.scores["detector"] == name]
        thr = res.summary["thresholds"][name]
        assert row["sensitivity"] == (sc[sc["kind"] == "copy"]["similarity"] > thr).mean(), name
        assert row["specificity"] == (sc[sc["kind"] == "novel"]["similarity"] <= thr).mean(), name
        assert row["threshold"] == thr
    px = res.table.set_index(["detector", "family"])
    # an intensity-scaled copy correlates ~1 with its source voxel by voxel: the pixel baseline finds its source
    assert px.loc[("pixel", "intensity"), "source_match"] == 1.0
    # orientation pooling makes the contrastive embedding blind to flips: flipped copies match their source;
    # the latent search tries every orientation of the query, so flipped and rotated copies meet their source as it was
    assert px.loc[("contrastive-32d", "flip"), "source_match"] == 1.0
    for fam in ("flip", "rot90", "orientation"):
        assert px.loc[("contrastive", fam), "source_match"] == 1.0
    # searched over orientations, the pixel correlation finds the source of flipped and rotated copies too
    for fam in ("flip", "rot90", "orientation"):
        assert px.loc[("pixel-oriented", fam), "source_match"] == 1.0
    # aligned over orientations and shifts, and blind to intensity scale: the source of every such copy
    for fam in ("flip", "rot90", "orientation", "intensity", "shift"):
        assert px.loc[("aligned", fam), "source_match"] == 1.0
    # the combined score is a reference rank: its threshold is a fraction of the reference
    assert 0 < res.summary["thresholds"]["combined"] <= 1
    without = validate_detector(det, train, held, ValidationConfig(copies_per_family=4, pixel_orientations=False,
                                                                   aligned=False))
    assert set(without.table["detector"]) == {"contrastive", "contrastive-32d", "pixel"}
    paper = validate_detector(det, train, held, ValidationConfig(copies_per_family=4,
                                                                 compare=CompareConfig(representation="embedding")),
                              pixel=False)
    assert set(paper.table["detector"]) == {"contrastive", "aligned", "combined"}  # the 32-d embedding is the detector
    # ... and it scores as the 32-d embedding did beside the latent search
    as_32d = res.scores[res.scores["detector"] == "contrastive-32d"].drop(columns="detector").reset_index(drop=True)
    as_main = paper.scores[paper.scores["detector"] == "contrastive"].drop(columns="detector").reset_index(drop=True)
    assert (as_32d["nearest_train"] == as_main["nearest_train"]).mean() > 0.95
    assert np.allclose(as_32d["similarity"], as_main["similarity"], atol=1e-5)
    assert paper.summary["config"]["compare"]["representation"] == "embedding"


@pytest.mark.slow
def test_cli_writes_table_and_json(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "ph", n_train=8, n_validation=6, size=16)
    out = tmp_path / "val"
    rc = main(["validate-detector", str(data), "--out", str(out), "--copies-per-family", "3",
               "--set", "channels=8,16", "--set", "input_pool=2", "--set", "epochs=1", "--set", "batch_size=4"])
    assert rc == 0
    summary = json.loads((out / "validation.json").read_text())
    assert summary["n_train"] == 8 and summary["n_reference"] + summary["n_novel"] == 6
    assert (out / "validation.csv").read_text().startswith("detector,family,")
    assert main(["validate-detector", str(data), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert torch.load(out / "detector.pt", weights_only=True)["kind"] == "memostudy-detector"
    assert summary["config"]["compare"] == {"representation": "latent", "search_shift": 2.0, "orientation_pooling": True}


@pytest.mark.slow
def test_cli_comparison_settings_apply_to_a_loaded_detector(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", n_train=8, n_validation=6, size=16)
    fast = ["--copies-per-family", "2", "--set", "channels=8,16", "--set", "epochs=1", "--set", "batch_size=4"]
    assert main(["validate-detector", str(data), "--out", str(tmp_path / "a"), *fast]) == 0
    det = str(tmp_path / "a" / "detector.pt")
    assert main(["validate-detector", str(data), "--out", str(tmp_path / "b"), "--detector", det, *fast,
                 "--set", "representation=embedding", "--set", "orientation_pooling=false"]) == 0
    a, b = (json.loads((tmp_path / d / "validation.json").read_text()) for d in "ab")
    assert b["config"]["compare"] == {"representation": "embedding", "search_shift": 2.0, "orientation_pooling": False}
    assert b["detector"]["checkpoint"] == det and "contrastive-32d" not in {r["detector"] for r in b["results"]}
    assert a["thresholds"]["contrastive"] != b["thresholds"]["contrastive"]


def test_roc_figure_one_curve_per_detector():
    import pandas as pd

    from memostudy.report.figures import roc_figure

    scores = pd.DataFrame({"detector": ["a"] * 4 + ["b"] * 4, "kind": ["copy", "copy", "novel", "novel"] * 2,
                           "family": ["flip", "flip", "", ""] * 2, "similarity": [0.9, 0.8, 0.1, 0.2, 0.1, 0.8, 0.5, 0.2]})
    fig = roc_figure(scores)
    names = [t.name for t in fig.data]
    assert names[0] == "a (AUC 1.000)" and names[1] == "b (AUC 0.500)" and len(names) == 3
