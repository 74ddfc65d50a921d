"""Detector validation on a phantom ground truth (broad copy families, held-out folds, generator-like novel
volumes), and the `memostudy validate-detector` command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from memostudy.cli import main
from memostudy.data.phantom import phantom_volumes, write_phantom_dataset
from memostudy.detect.detector import Detector, DetectorConfig, DetectorNet, train_detector
from memostudy.detect.families import COPY_FAMILIES, GENERATOR_KINDS
from memostudy.detect.matching import CompareConfig
from memostudy.detect.registry import DETECTORS, Searches
from memostudy.detect.validation import (
    KIND_FOLDS,
    SEEN,
    ValidationConfig,
    build_ground_truth,
    detector_names,
    fold_plan,
    held_out_config,
    markdown,
    sensitivity_grid,
    split_held_out,
    summarise,
    validate_detector,
)
from memostudy.errors import ConfigError
from memostudy.seeds import Stream, initial_weights

TINY = DetectorConfig(channels=(8, 16), input_pool=2, hidden=32, batch_size=8, epochs=2, standardise=False)
BROAD = DetectorConfig(channels=(8, 16), input_pool=2, hidden=32, batch_size=8, epochs=1, standardise=False,
                       view_families=COPY_FAMILIES)
# no aligned correlation, no oriented pixel search, the 32-d embedding without orientation pooling as the
# contrastive detector: keeps the fast tests fast (the registry loop is the same)
FAST = dict(copies_per_family=1, aligned=False, pixel_orientations=False,
            compare=CompareConfig(representation="embedding", orientation_pooling=False))


def _untrained(cfg: DetectorConfig) -> Detector:
    """A detector with initial weights (seeded by its view families, so each fold's differs): enough to check
    which detector scored what, without training."""
    with initial_weights(Stream.DETECTOR_INIT, len(cfg.view_families)):
        return Detector(DetectorNet(cfg).eval(), cfg)


@pytest.fixture(scope="module")
def volumes() -> tuple[torch.Tensor, torch.Tensor]:
    return phantom_volumes(6, 16, seed=0), phantom_volumes(8, 16, seed=1)


def test_split_is_deterministic_and_disjoint():
    a, b = split_held_out(11, 0.5, seed=3)
    assert set(a).isdisjoint(b) and len(a) + len(b) == 11
    a2, _ = split_held_out(11, 0.5, seed=3)
    assert np.array_equal(a, a2)


def test_ground_truth_has_every_family_and_strength_and_generator_like_novel(volumes):
    train, held = volumes
    gt = build_ground_truth(train, held, ValidationConfig(copies_per_family=1))
    assert len(gt.copies) == 3 * len(COPY_FAMILIES) == len(gt.copy_family) == len(gt.copy_strength)
    cells = pd.Series(list(zip(gt.copy_family, gt.copy_strength.tolist()))).value_counts()
    assert len(cells) == 3 * len(COPY_FAMILIES) and (cells == 1).all()
    assert gt.copy_inside.tolist() == [s < 3 for s in gt.copy_strength.tolist()]  # strength 3 is past the limit
    assert len(gt.reference) + len(gt.novel) == 8 and len(gt.generator) == len(gt.novel)
    assert set(gt.generator_kind) == set(GENERATOR_KINDS)  # 4 novel volumes: one of each kind
    assert not torch.equal(gt.generator, gt.novel)  # made smoother / noisier, not the same volumes
    # a copy is its source changed: closer to it than to the other training volumes
    src = train[torch.from_numpy(gt.copy_source)]
    for fam in ("noise", "contrast"):
        sel = np.array(gt.copy_family) == fam
        assert (gt.copies[sel] - src[sel]).abs().mean() < (gt.copies[sel] - src[sel].roll(1, 0)).abs().mean()


def test_fold_plans_and_held_out_configs():
    assert fold_plan(COPY_FAMILIES, COPY_FAMILIES, "kind") == KIND_FOLDS
    assert fold_plan(COPY_FAMILIES, ("blur", "rigid"), "family") == {"blur": ("blur",), "rigid": ("rigid",)}
    assert fold_plan(COPY_FAMILIES, COPY_FAMILIES, "none") == {}
    assert fold_plan((), COPY_FAMILIES, "kind") == {}  # classic views contain no family: all held out already
    assert fold_plan(("blur", "noise"), COPY_FAMILIES, "kind") == {"resolution": ("blur", "noise")}
    c = held_out_config(BROAD, KIND_FOLDS["resolution"])
    assert c.view_families == ("rigid", "elastic", "contrast", "bias", "partial", "combined")
    assert c.epochs == BROAD.epochs and BROAD.view_families == COPY_FAMILIES  # the rest as it was
    with pytest.raises(ConfigError, match="no family"):
        held_out_config(DetectorConfig(view_families=("blur", "combined")), ("blur",))


def test_detector_names_follow_the_registry():
    assert detector_names(ValidationConfig()) == list(DETECTORS)
    assert detector_names(ValidationConfig(aligned=False), pixel=False) == [
        d for d in DETECTORS if d not in ("aligned", "combined", "pixel", "pixel-oriented")]


def test_held_out_scoring_uses_a_detector_trained_without_the_family(volumes):
    train, held = volumes
    used: dict[str, Detector] = {}

    def held_out(name: str, cfg: DetectorConfig) -> Detector:
        used[name] = _untrained(cfg)
        return used[name]

    seen = _untrained(BROAD)
    vcfg = ValidationConfig(**FAST, families=("rigid", "blur", "noise", "contrast"))
    res = validate_detector(seen, train, held, vcfg, held_out_detector=held_out)
    assert set(used) == {"geometry", "resolution", "intensity"}  # the folds of the validated families
    for name, det in used.items():
        out, cfg = res.folds[name]
        assert cfg is det.config and set(out) <= set(KIND_FOLDS[name])
        assert not set(out) & set(cfg.view_families) and set(out) | set(cfg.view_families) == set(COPY_FAMILIES)
    held_rows = res.table[(res.table["scored"] == "held-out") & (res.table["strength"] > 0)]
    for r in held_rows.itertuples():
        assert r.family in KIND_FOLDS[r.fold], r  # each family scored by the fold that left it out
        assert r.family not in used[r.fold].config.view_families
    # the held-out score of a copy is that fold detector's search, not the seen detector's
    sc = res.scores[(res.scores["detector"] == "contrastive") & (res.scores["kind"] == "copy")]
    rig = sc[(sc["family"] == "rigid") & (sc["fold"] == "geometry")]
    gt = build_ground_truth(train, held, vcfg)
    copies = gt.copies[torch.from_numpy(np.flatnonzero(np.isin(gt.copy_family, KIND_FOLDS["geometry"])))]
    direct = Searches(used["geometry"], train, {"q": copies}, vcfg.compare).nearest("contrastive", "q")
    geo = sc[sc["fold"] == "geometry"]
    assert np.allclose(geo["similarity"], direct.values.numpy(), atol=1e-6) and len(rig) == 3
    seen_rig = sc[(sc["family"] == "rigid") & (sc["fold"] == SEEN)]["similarity"].to_numpy()
    assert not np.allclose(seen_rig, rig["similarity"].to_numpy())
    # detectors without training views score the same seen and held out
    px = res.table[(res.table["detector"] == "pixel") & (res.table["strength"] > 0)]
    wide = px.pivot_table(index=["family", "strength"], columns="scored", values="sensitivity")
    assert np.array_equal(wide["seen"].to_numpy(), wide["held-out"].to_numpy())
    assert set(res.table["family"]) == {"all", "all-inside", "rigid", "blur", "noise", "contrast"}


def test_without_folds_families_in_the_views_get_no_held_out_figure(volumes):
    train, held = volumes
    cfg = DetectorConfig(channels=(8, 16), input_pool=2, hidden=32, standardise=False, view_families=("blur", "noise"))
    res = validate_detector(_untrained(cfg), train, held,
                            ValidationConfig(**FAST | {"folds": "none"}, families=("blur", "contrast"), strengths=(1,)),
                            held_out_detector=lambda *_: pytest.fail("folds none trains nothing"))
    held_rows = res.table[res.table["scored"] == "held-out"]
    assert set(held_rows["family"]) == {"all", "all-inside", "contrast"}  # blur was in the views: seen only
    assert set(res.table[res.table["scored"] == "seen"]["family"]) == {"all", "all-inside", "blur", "contrast"}


def test_classic_views_train_no_held_out_detector(volumes):
    train, held = volumes
    res = validate_detector(_untrained(TINY), train, held, ValidationConfig(**FAST),  # every family
                            held_out_detector=lambda *_: pytest.fail("the classic views contain no family"))
    assert res.folds == {} and set(res.scores["fold"]) == {SEEN}
    t = res.table.set_index(["detector", "scored", "family", "strength"])
    assert t.loc[("contrastive", "seen", "rigid", 2), "sensitivity"] == t.loc[("contrastive", "held-out", "rigid", 2),
                                                                             "sensitivity"]
    # every family and strength yields copies the validation counts, one per cell here
    cells = res.table[(res.table["detector"] == "contrastive") & (res.table["scored"] == "seen") & (res.table["strength"] > 0)]
    assert len(cells) == 3 * len(COPY_FAMILIES) and (cells["n_copies"] == 1).all()
    assert t.loc[("contrastive", "seen", "all-inside", 0), "n_copies"] == 2 * len(COPY_FAMILIES)
    grid = sensitivity_grid(res.table)
    assert ("contrastive", "held-out") in grid.columns and markdown(grid).count("\n") == len(grid) + 1


def _scores(rows: list[tuple]) -> pd.DataFrame:
    cols = ["detector", "fold", "kind", "family", "strength", "inside", "generator_kind", "similarity"]
    f = pd.DataFrame([dict(zip(cols, r)) for r in rows])
    return f.assign(nearest_train=0, source=0)


def test_summary_counts_generator_like_novel_volumes_in_specificity():
    ref = [("d", SEEN, "reference", "", 0, False, "", v) for v in np.linspace(0, 0.5, 21)]  # 95th pct = 0.475
    rows = ref + [
        ("d", SEEN, "novel", "", 0, False, "", 0.2), ("d", SEEN, "novel", "", 0, False, "", 0.3),
        ("d", SEEN, "generator", "", 0, False, "smooth", 0.9), ("d", SEEN, "generator", "", 0, False, "noisy", 0.1),
        ("d", SEEN, "generator", "", 0, False, "smooth", 0.8), ("d", SEEN, "generator", "", 0, False, "lowres", 0.4),
        ("d", SEEN, "copy", "blur", 1, True, "", 0.9), ("d", SEEN, "copy", "blur", 3, False, "", 0.3)]
    table, spec, thr = summarise(_scores(rows), {"blur": SEEN})
    assert thr[("d", SEEN)] == pytest.approx(0.475)
    s = spec.set_index("novel")["specificity"]
    assert s["plain"] == 1.0 and s["generator-like"] == 0.5 and s["smooth"] == 0.0 and s["noisy"] == 1.0
    t = table.set_index(["scored", "family", "strength"])
    assert t.loc[("seen", "all-inside", 0), "sensitivity"] == 1.0 and t.loc[("seen", "all", 0), "sensitivity"] == 0.5
    assert t.loc[("seen", "blur", 1), "specificity_generator"] == 0.5


def test_summary_held_out_rows_take_each_fold_threshold():
    rows = []
    for fold, top in ((SEEN, 0.5), ("f", 0.9)):
        rows += [("d", fold, "reference", "", 0, False, "", v) for v in np.linspace(0, top, 21)]
        rows += [("d", fold, "novel", "", 0, False, "", 0.6), ("d", fold, "generator", "", 0, False, "mixed", 0.1)]
    rows += [("d", SEEN, "copy", "blur", 1, True, "", 0.7), ("d", "f", "copy", "blur", 1, True, "", 0.7)]
    table, _, thr = summarise(_scores(rows), {"blur": "f"})
    t = table.set_index(["scored", "family", "strength"])
    assert t.loc[("seen", "blur", 1), "sensitivity"] == 1.0  # 0.7 > 0.475
    assert t.loc[("held-out", "blur", 1), "sensitivity"] == 0.0  # 0.7 <= 0.855, the fold detector's threshold
    assert t.loc[("held-out", "blur", 1), "fold"] == "f" and t.loc[("held-out", "blur", 1), "specificity"] == 1.0
    assert t.loc[("seen", "blur", 1), "specificity"] == 0.0


@pytest.mark.slow
def test_trained_detectors_per_fold_and_table(volumes):
    train, held = volumes
    det = train_detector(train, None, BROAD)
    configs = {}

    def held_out(name: str, cfg: DetectorConfig) -> Detector:
        configs[name] = cfg
        return train_detector(train, None, cfg)

    res = validate_detector(det, train, held, ValidationConfig(copies_per_family=2, folds="family",
                                                               families=("blur", "rigid")), held_out_detector=held_out)
    assert {k: c.view_families for k, c in configs.items()} == {
        f: tuple(x for x in COPY_FAMILIES if x != f) for f in ("blur", "rigid")}
    assert tuple(res.table["detector"].unique()) == DETECTORS  # the registry's line-up, in its order
    # each row is the decision "similarity > its fold's threshold" counted over the scores
    for r in res.table[res.table["strength"] > 0].itertuples():
        sc = res.scores[(res.scores["detector"] == r.detector) & (res.scores["fold"] == r.fold)
                        & (res.scores["family"] == r.family) & (res.scores["strength"] == r.strength)]
        assert r.sensitivity == (sc["similarity"] > r.threshold).mean(), r
    assert 0 < res.summary["thresholds"][f"combined/{SEEN}"] <= 1  # a reference rank


@pytest.mark.slow
def test_cli_validates_a_2d_data_set_with_held_out_folds(tmp_path):
    data = write_2d_dataset(tmp_path / "ph2d")
    out = tmp_path / "val2d"
    args = ["validate-detector", str(data), "--out", str(out), "--copies-per-family", "1", "--no-progress",
            "--set", "channels=8,16", "--set", "epochs=1", "--set", "batch_size=4", "--set", "hidden=32",
            "--set", "view_families=rigid,elastic,blur,noise,contrast"]
    assert main(args) == 0
    summary = json.loads((out / "validation.json").read_text())
    assert summary["n_train"] == 8 and summary["n_copies"] == 3 * len(COPY_FAMILIES)
    assert summary["detector"]["config"]["spatial_dims"] == 2
    assert set(summary["folds"]) == {"geometry", "resolution", "intensity"}
    for fold in summary["folds"]:
        assert torch.load(out / "held_out" / fold / "detector.pt", weights_only=True)["config"]["spatial_dims"] == 2
    table = pd.read_csv(out / "validation.csv")
    assert set(table["family"]) == {"all", "all-inside", *COPY_FAMILIES} and set(table["detector"]) == set(DETECTORS)
    assert set(table[table["scored"] == "held-out"]["fold"]) >= {"geometry", "resolution", "intensity", SEEN}


@pytest.mark.slow
def test_cli_writes_tables_and_trains_each_held_out_detector_once(tmp_path, capsys):
    data = write_phantom_dataset(tmp_path / "ph", n_train=8, n_validation=8, size=16)
    out = tmp_path / "val"
    args = ["validate-detector", str(data), "--out", str(out), "--copies-per-family", "1", "--families", "blur,noise",
            "--strengths", "1,3", "--no-aligned", "--no-progress", "--set", "channels=8,16", "--set", "epochs=1",
            "--set", "batch_size=4", "--set", "view_families=blur,noise,contrast"]
    assert main(args) == 0
    summary = json.loads((out / "validation.json").read_text())
    assert summary["n_train"] == 8 and summary["n_reference"] + summary["n_novel"] == 8
    assert summary["folds"] == {"resolution": {"held_out": ["blur", "noise"], "view_families": ["contrast"]}}
    held = summary["held_out_detectors"]["resolution"]
    assert held["config"]["view_families"] == ["contrast"]
    assert (out / "validation.csv").read_text().startswith("detector,scored,family,")
    assert "| family | strength | inside |" in (out / "validation.md").read_text()
    assert main(["validate-detector", str(data), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    ckpt = torch.load(out / "held_out" / "resolution" / "detector.pt", weights_only=True)
    assert ckpt["config"]["view_families"] == ["contrast"]
    # a rerun reuses the finished trainings (keyed on config and inputs): same weights, nothing set aside
    assert main([*args, "--force"]) == 0
    assert not list((out / "held_out" / "resolution").glob("*.aside-*"))
    again = json.loads((out / "validation.json").read_text())
    assert again["thresholds"] == summary["thresholds"]


def write_2d_dataset(out, n_train: int = 8, n_validation: int = 8, size: int = 16):
    """A prepared 2D data set in the 3D layout (``patches/<id>.npy`` float32 (H, W), ``patches.csv``,
    ``dataset.json`` with ``patch_size [H, W]``, ``COMPLETE``): the middle slices of a phantom data set."""
    data = write_phantom_dataset(out, n_train=n_train, n_validation=n_validation, size=size)
    for f in (data / "patches").glob("*.npy"):
        np.save(f, np.ascontiguousarray(np.load(f)[size // 2]))
    info = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps(info | {"patch_size": [size, size], "spacing": [1.0, 1.0]}))
    return data


def test_2d_images_give_every_family_and_strength_a_counted_copy(volumes):
    train, held = (v[:, :, 8].contiguous() for v in volumes)  # 2D images (N, 1, 16, 16)
    cfg2d = dataclasses.replace(TINY, spatial_dims=2)
    res = validate_detector(_untrained(cfg2d), train, held, ValidationConfig(**FAST | {"pixel_orientations": True}),
                            held_out_detector=lambda *_: pytest.fail("the classic views contain no family"))
    t = res.table
    cells = t[(t["detector"] == "contrastive") & (t["scored"] == "seen") & (t["strength"] > 0)]
    assert len(cells) == 3 * len(COPY_FAMILIES) and (cells["n_copies"] == 1).all()
    assert set(res.scores["detector"]) == {"contrastive", "pixel", "pixel-oriented", "blocks", "blocks-oriented",
                                          "blocks-either"}
    # copies that keep their pixels in place (and rigid motion inside the 8 orientations' reach, strength 1)
    # lie nearest their own source by pixel correlation; a 2D rigid copy at any angle need not
    px = res.scores[(res.scores["detector"] == "pixel") & (res.scores["kind"] == "copy") & (res.scores["strength"] == 1)]
    kept = px[px["family"].isin(["lowres", "contrast", "bias", "blur", "noise"])]
    assert (kept["nearest_train"] == kept["source"]).all()


def test_roc_figure_one_curve_per_detector():
    from memostudy.report.figures import roc_figure

    scores = pd.DataFrame({"detector": ["a"] * 4 + ["b"] * 4, "kind": ["copy", "copy", "novel", "novel"] * 2,
                           "family": ["flip", "flip", "", ""] * 2, "similarity": [0.9, 0.8, 0.1, 0.2, 0.1, 0.8, 0.5, 0.2]})
    fig = roc_figure(scores)
    names = [t.name for t in fig.data]
    assert names[0] == "a (AUC 1.000)" and names[1] == "b (AUC 0.500)" and len(names) == 3
