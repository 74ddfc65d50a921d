"""The audit's files (report/audit.py), and `memostudy audit` end to end on folders of NIfTI files made
by hand, with its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memostudy.cli import main
from memostudy.data.phantom import phantom_volumes
from memostudy.data.volume_io import write_nifti
from memostudy.detect.assessment import AssessConfig, Assessment, AssessmentSummary, DetectorFigures
from memostudy.detect.detector import DetectorConfig
from memostudy.detect.evidence import CopyEvidence
from memostudy.detect.metrics import Fraction
from memostudy.errors import RunExistsError
from memostudy.report.audit import AUDIT_FILES, check_out_dir, headline, write_audit
from tests.conftest import write_volume_folder as _folder

FAST = ["--set", "channels=8,16", "--set", "input_pool=2", "--set", "epochs=2", "--set", "batch_size=4"]


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, Path]:
    train = phantom_volumes(8, 16, seed=0)
    synthetic = torch.cat([train[:3].flip(2), train[3:4] * 0.9, phantom_volumes(3, 16, seed=7)])
    return {"train": _folder(tmp_path / "train", train, "t"),
            "reference": _folder(tmp_path / "ref", phantom_volumes(6, 16, seed=3), "r"),
            "synthetic": _folder(tmp_path / "syn", synthetic, "s")}


def _audit(folders: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["audit", "--train", str(folders["train"]), "--reference", str(folders["reference"]),
                 "--synthetic", str(folders["synthetic"]), "--out", str(out), *FAST, *extra])


@pytest.mark.slow
def test_audit_outputs_follow_contract(folders, tmp_path, capsys):
    out = tmp_path / "out"
    assert _audit(folders, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("n_train", "n_reference", "n_synthetic", "threshold", "memorized_fraction", "copy_fraction",
                "memorized_fraction_ci", "copy_fraction_ci", "pixel_baseline"):
        assert key in summary, key
    assert (summary["n_train"], summary["n_reference"], summary["n_synthetic"]) == (8, 6, 7)
    lo, hi = summary["copy_fraction_ci"]
    assert lo <= summary["copy_fraction"] <= hi
    syn = pd.read_csv(out / "synthetic.csv")
    assert list(syn.columns[:4]) == ["synthetic_id", "nearest_train_id", "similarity", "is_copy"]
    assert sorted(syn["synthetic_id"]) == sorted(p.name for p in folders["synthetic"].iterdir())
    assert set(syn["is_copy"]) <= {0, 1} and set(syn["nearest_train_id"]) <= {f"t{i:02d}.nii.gz" for i in range(8)}
    assert syn["is_copy"].mean() == pytest.approx(summary["copy_fraction"])
    tr = pd.read_csv(out / "train.csv")
    assert list(tr.columns[:4]) == ["train_id", "nearest_synthetic_id", "similarity", "memorized"]
    assert len(tr) == 8 and set(tr["memorized"]) <= {0, 1}
    # the intensity-scaled copy s03 is found by the pixel baseline
    row = syn.set_index("synthetic_id").loc["s03.nii.gz"]
    assert row["pixel_nearest_train_id"] == "t03.nii.gz" and row["pixel_similarity"] > 0.99
    # the aligned correlation finds the flipped copies s00-s02 and the scaled copy s03, all near 1
    for i in range(4):
        r = syn.set_index("synthetic_id").loc[f"s{i:02d}.nii.gz"]
        assert r["aligned_nearest_train_id"] == f"t{i:02d}.nii.gz" and r["aligned_similarity"] > 0.99
    # the combined score is a reference rank: k / n_reference for some k
    ranks = syn["combined_similarity"].to_numpy() * summary["n_reference"]
    assert np.allclose(ranks, ranks.round(), atol=1e-4) and set(syn["combined_is_copy"]) <= {0, 1}
    for name in ("aligned", "combined"):
        assert syn[f"{name}_is_copy"].mean() == pytest.approx(summary[name]["copy_fraction"])
    assert "combined (contrastive or aligned)" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    co = summary["combined"]
    assert (f"<th>combined: copy fraction</th><td>{co['copy_fraction']:.1%} [{co['copy_fraction_ci'][0]:.1%}, "
            f"{co['copy_fraction_ci'][1]:.1%}]</td>") in html
    assert f"<td>{summary['threshold']:.6g}</td>" in html  # not rounded to 1
    assert "Plotly.newPlot" in html and 'src="https://cdn' not in html  # plotly.js inlined: opens offline
    assert (out / "detector.pt").exists()
    # the saved detector can be reused; an existing --out is refused without --force
    assert _audit(folders, out, "--detector", str(out / "detector.pt")) == 2
    assert "--force" in capsys.readouterr().err
    assert _audit(folders, out, "--detector", str(out / "detector.pt"), "--force", "--no-pixel", "--no-aligned") == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["pixel_baseline"] is None and again["aligned"] is None and again["combined"] is None
    assert not any(c.startswith(("aligned_", "combined_", "pixel_")) for c in pd.read_csv(out / "synthetic.csv").columns)
    # the same detector and comparison give the same contrastive figures as the first run
    assert again["threshold"] == summary["threshold"] and again["copy_fraction"] == summary["copy_fraction"]


@pytest.mark.slow
def test_audit_fdr_reference_smoothness_and_evidence(folders, tmp_path, capsys):
    out = tmp_path / "out"
    # 6 reference volumes: the smallest p-value is 1/7, so BH flags only at a large FDR (0.5 here)
    assert _audit(folders, out, "--fdr", "0.5", "--reference-smoothness", "matched") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fdr"] == 0.5 and summary["assess_config"]["reference_smoothness"] == "matched"
    sm = summary["smoothness"]
    assert set(sm["roughness"]) == {"reference", "synthetic", "reference_matched"} and "blur_sigma" in sm
    syn = pd.read_csv(out / "synthetic.csv")
    for px in ("", "pixel_", "aligned_", "combined_"):
        assert {f"{px}p_value", f"{px}q_value", f"{px}bh_copy"} <= set(syn.columns)
        assert syn[f"{px}p_value"].between(1 / 7 - 1e-9, 1).all() and set(syn[f"{px}bh_copy"]) <= {0, 1}
        key = {"": None, "pixel_": "pixel_baseline", "aligned_": "aligned", "combined_": "combined"}[px]
        figs = summary[key] if key else summary
        assert figs["n_bh_copies"] == syn[f"{px}bh_copy"].sum()
    # the aligned correlation puts the four copies above every reference volume: p = 1/7, and BH at 0.5 flags them
    al = syn.set_index("synthetic_id")
    for i in range(4):
        assert al.loc[f"s{i:02d}.nii.gz", "aligned_p_value"] == pytest.approx(1 / 7)
        assert al.loc[f"s{i:02d}.nii.gz", "aligned_bh_copy"] == 1
    ev = pd.read_csv(out / "evidence.csv")
    assert list(ev.columns[:8]) == ["synthetic_id", "detector", "train_id", "score", "p_value", "q_value", "is_copy", "bh_copy"]
    row = ev[(ev["detector"] == "aligned") & (ev["synthetic_id"] == "s00.nii.gz")].iloc[0]
    # s00 is t00 flipped along its first axis: the evidence says so, with no shift
    assert row["train_id"] == "t00.nii.gz" and json.loads(row["change_flips"]) == [True, False, False]
    assert json.loads(row["change_shift_voxels"]) == [0.0, 0.0, 0.0] and row["change_aligned_correlation"] > 0.99
    html = (out / "report.html").read_text()
    assert "Flagged pair aligned: s0" in html and "copies by Benjamini-Hochberg at FDR 0.5" in html
    assert "copies by Benjamini-Hochberg at FDR 0.5" in capsys.readouterr().out


def test_audit_without_the_contrastive_detector_trains_nothing(folders, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["audit", "--train", str(folders["train"]), "--reference", str(folders["reference"]),
            "--synthetic", str(folders["synthetic"]), "--out", str(out), "--no-contrastive"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "detector: none" in printed and "headline detector: blocks-either" in printed
    assert not (out / "detector.pt").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"] == "blocks-either" and summary["detector"] is None and summary["inputs"]["detector"] is None
    assert summary["threshold"] == summary["blocks_either"]["threshold"] and summary["aligned"] is None
    syn = pd.read_csv(out / "synthetic.csv").set_index("synthetic_id")
    assert "similarity" not in syn.columns
    # s03 is t03 scaled by 0.9: every block correlates 1, above every reference phantom
    assert syn.loc["s03.nii.gz", "blocks_nearest_train_id"] == "t03.nii.gz"
    assert syn.loc["s03.nii.gz", "blocks_similarity"] > 0.999 and syn.loc["s03.nii.gz", "blocks_is_copy"] == 1
    html = (out / "report.html").read_text()
    # the flipped copies s00-s02: found by the oriented block correlation (reference rank 1, above every reference)
    for i in range(3):
        assert syn.loc[f"s{i:02d}.nii.gz", "blocks_either_nearest_train_id"] == f"t{i:02d}.nii.gz"
        assert syn.loc[f"s{i:02d}.nii.gz", "blocks_either_is_copy"] == 1
    assert "<th>headline detector</th><td>blocks-either (the contrastive detector was not run)</td>" in html
    assert "Most similar synthetic volumes (blocks-either)" in html
    # a detector or detector setting has nothing to apply to
    assert main([*args, "--force", "--detector", str(tmp_path / "d.pt")]) == 2
    assert "--no-contrastive" in capsys.readouterr().err
    assert main([*args, "--force", "--set", "epochs=3"]) == 2


@pytest.mark.slow
def test_comparison_settings_apply_to_a_loaded_detector(folders, tmp_path):
    out = tmp_path / "out"
    assert _audit(folders, out, "--no-aligned", "--no-pixel") == 0
    det = out / "detector.pt"
    base = json.loads((out / "summary.json").read_text())
    for setting, key, value in (("representation=embedding", "representation", "embedding"),
                                ("orientation_pooling=false", "orientation_pooling", False),
                                ("search_shift=0", "search_shift", 0.0)):
        other = tmp_path / key
        assert _audit(folders, other, "--no-aligned", "--no-pixel", "--detector", str(det), "--set", setting) == 0
        s = json.loads((other / "summary.json").read_text())
        assert s["assess_config"]["compare"][key] == value and s["detector"] == base["detector"]
        assert "representation" not in s["detector"]["config"]
    sims = {k: pd.read_csv(tmp_path / k / "synthetic.csv")["similarity"] for k in ("representation", "search_shift")}
    base_sims = pd.read_csv(out / "synthetic.csv")["similarity"]
    assert not np.allclose(sims["representation"], base_sims) and not np.allclose(sims["search_shift"], base_sims)
    # the 32-d embedding with and without orientation pooling: a changed embedding, so changed similarities
    assert _audit(folders, tmp_path / "emb_nopool", "--no-aligned", "--no-pixel", "--detector", str(det),
                  "--set", "representation=embedding", "--set", "orientation_pooling=false") == 0
    assert not np.allclose(pd.read_csv(tmp_path / "emb_nopool" / "synthetic.csv")["similarity"], sims["representation"])


def _fraction(value: float, lo: float, hi: float, n: int = 8) -> Fraction:
    return Fraction(value, lo, hi, n, 0.95)


def _assessment(pixel: bool = True) -> Assessment:
    figs = {"contrastive": DetectorFigures(0.75, _fraction(0.25, 0.125, 0.5), _fraction(0.5, 0.25, 0.75, 4), 0.6, 0.4)}
    if pixel:
        figs["pixel"] = DetectorFigures(0.9, _fraction(0.125, 0.0, 0.25), _fraction(0.25, 0.0, 0.5, 4), 0.8, 0.7)
    summary = AssessmentSummary(8, 5, 4, figs, DetectorConfig(), 3, AssessConfig())
    syn = pd.DataFrame({"synthetic_id": ["a", "b", "c", "d"], "nearest_train_id": ["t0"] * 4,
                        "similarity": [0.1, 0.9, 0.5, 0.8], "is_copy": [0, 1, 0, 1]})
    tables = (pd.DataFrame({"train_id": ["t0"]}), syn, pd.DataFrame({"reference_id": ["r0"]}))
    dist = {name: {"candidates": np.array([0.1, 0.2]), "synthetic": np.array([0.3]), "reference": np.array([0.4])}
            for name in figs}
    return Assessment(summary, tables[0], tables[1], tables[2], dist)


def test_write_audit_writes_every_file_from_the_typed_result(tmp_path):
    a = _assessment()
    train = phantom_volumes(2, 16, seed=0)
    a.evidence = [CopyEvidence("b", "t1", "contrastive", 0.9, 0.2, 0.4, True, False,
                               {"orientation": 4, "permutation": [0, 1, 2], "flips": [True, False, False],
                                "shift_voxels": [1.0, 0.0, 0.0], "blur_sigma": 0.0})]
    volumes = {"train": (train, ["t0", "t1"]), "synthetic": (phantom_volumes(4, 16, seed=1), ["a", "b", "c", "d"])}
    paths = write_audit(a, tmp_path / "out", extra={"inputs": {"train": Path("x")}, "value": np.float32(0.5)},
                        volumes=volumes)
    assert sorted(paths) == sorted(AUDIT_FILES) and all(p.exists() for p in paths.values())
    ev = pd.read_csv(paths["evidence.csv"])
    assert ev[["synthetic_id", "train_id", "detector"]].values.tolist() == [["b", "t1", "contrastive"]]
    assert json.loads(ev.loc[0, "change_shift_voxels"]) == [1.0, 0.0, 0.0]
    html = paths["report.html"].read_text()
    assert "Flagged pair aligned: b vs t1" in html and "flipped D; shift +1.0, +0.0, +0.0 voxels" in html
    s = json.loads(paths["summary.json"].read_text())
    assert (s["n_train"], s["threshold"], s["memorized_fraction_ci"], s["n_memorized"], s["n_copies"]) == (8, 0.75, [0.125, 0.5], 2, 2)
    assert s["pixel_baseline"]["threshold"] == 0.9 and s["aligned"] is None and s["combined"] is None
    assert s["detector"] == {"config": json.loads(json.dumps(s["detector"]["config"])), "best_epoch": 3}
    assert s["inputs"] == {"train": "x"} and s["value"] == 0.5 and "git_commit" in s["provenance"]
    assert pd.read_csv(paths["synthetic.csv"])["similarity"].tolist() == [0.1, 0.9, 0.5, 0.8]
    # most similar first in the report's table
    assert html.index("<td>b</td>") < html.index("<td>d</td>") < html.index("<td>c</td>") < html.index("<td>a</td>")
    assert "Similarity distributions: pixel" in html


def test_headline_formats_each_fraction_once():
    rows = headline(_assessment())
    assert rows["memorized fraction of training volumes (95% CI)"] == "25.0% [12.5%, 50.0%]"
    assert rows["copy fraction of synthetic volumes (95% CI)"] == "50.0% [25.0%, 75.0%]"
    assert rows["threshold (pearson, 95th percentile of reference)"] == "0.75"
    assert rows["headline detector"] == "contrastive"
    assert rows["pixel baseline: copy fraction"] == "25.0% [0.0%, 50.0%]"
    assert rows["pixel baseline: memorized fraction"] == "12.5%"
    assert not any(k.startswith("pixel") for k in headline(_assessment(pixel=False)))


def test_check_out_dir_refuses_complete_results_unless_forced_and_removes_nothing(tmp_path):
    out = check_out_dir(tmp_path / "new")
    assert out.is_dir()
    (out / "summary.json").write_text("{}")
    (out / "detector.pt").write_text("kept")
    check_out_dir(out)  # a killed run's summary.json without the tables and report.html is not a result
    for f in AUDIT_FILES:
        (out / f).write_text("old")
    with pytest.raises(RunExistsError, match="summary.json"):
        check_out_dir(out)
    check_out_dir(out, force=True)  # --force replaces only once the new results are complete
    assert (out / "summary.json").read_text() == "old" and (out / "detector.pt").read_text() == "kept"


def _error(folders, tmp_path, capsys) -> str:
    assert _audit(folders, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_shape_mismatch(folders, tmp_path, capsys):
    for p in folders["synthetic"].iterdir():
        p.unlink()
    _folder(folders["synthetic"], phantom_volumes(2, 12), "s")
    assert "crop or resample" in _error(folders, tmp_path, capsys)


def test_shape_mismatch_within_folder(folders, tmp_path, capsys):
    write_nifti(folders["reference"] / "odd.nii.gz", np.zeros((16, 16, 12), np.float32))
    assert "odd.nii.gz" in _error(folders, tmp_path, capsys)


def test_empty_folder(folders, tmp_path, capsys):
    folders["reference"] = tmp_path / "empty"
    folders["reference"].mkdir()
    assert "no volumes found" in _error(folders, tmp_path, capsys)


def test_nan_volume(folders, tmp_path, capsys):
    v = np.zeros((16, 16, 16), np.float32)
    v[3, 3, 3] = np.nan
    write_nifti(folders["synthetic"] / "nan.nii.gz", v)
    assert "NaN" in _error(folders, tmp_path, capsys)


def test_unreadable_file(folders, tmp_path, capsys):
    (folders["train"] / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    assert "broken.nii.gz" in _error(folders, tmp_path, capsys)


# --- 2D images (issue 21) --------------------------------------------------------------------------------------


def _slices(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 1, size, size) middle slices of phantom volumes, in [-1, 1]."""
    return phantom_volumes(n, size, seed=seed)[:, :, size // 2]


def _png_folder(path: Path, images: torch.Tensor, prefix: str) -> Path:
    """Write (N, 1, X, Y) images in [-1, 1] as 16-bit PNGs (what a user exports), read back y upwards as (X, Y)."""
    import SimpleITK as sitk

    path.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(images):
        grid = v[0].numpy().T[::-1]  # (X, Y) y upwards -> rows top to bottom, columns x
        sitk.WriteImage(sitk.GetImageFromArray(np.rint((grid + 1) * 30000).astype(np.uint16)), str(path / f"{prefix}{i:02d}.png"))
    return path


@pytest.fixture()
def folders_2d(tmp_path: Path) -> dict[str, Path]:
    train = _slices(8, seed=0)
    # s00-s02: training images flipped along x; s03: an exact copy; s04-s06: other images
    synthetic = torch.cat([train[:3].flip(2), train[3:4], _slices(3, seed=7)])
    return {"train": _png_folder(tmp_path / "2d" / "train", train, "t"),
            "reference": _png_folder(tmp_path / "2d" / "ref", _slices(6, seed=3), "r"),
            "synthetic": _png_folder(tmp_path / "2d" / "syn", synthetic, "s")}


@pytest.mark.slow
def test_audit_of_2d_png_folders_finds_exact_and_flipped_copies(folders_2d, tmp_path, capsys):
    """The whole audit on 2D images: needs the 2D detectors of memostudy/detect (issue 21, helper h21b)."""
    out = tmp_path / "out"
    assert _audit(folders_2d, out) == 0
    printed = capsys.readouterr().out
    assert "train: 8 2D image(s) of shape (32, 32)" in printed and "intensities: joint" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_train"], summary["n_reference"], summary["n_synthetic"]) == (8, 6, 7)
    assert summary["inputs"]["shape"] == [32, 32] and summary["intensity"]["rule"] == "joint"
    syn = pd.read_csv(out / "synthetic.csv").set_index("synthetic_id")
    # the exact copy: nearest for every detector, at similarity 1, a copy for the pixel baseline too
    row = syn.loc["s03.png"]
    for p in ("", "pixel_", "aligned_"):
        assert row[f"{p}nearest_train_id"] == "t03.png" and row[f"{p}similarity"] > 0.99, p
    assert row["pixel_is_copy"] == 1 and row["is_copy"] == 1
    # the flipped copies: found by the aligned correlation (and the contrastive detector's orientation search)
    for i in range(3):
        r = syn.loc[f"s{i:02d}.png"]
        assert r["aligned_nearest_train_id"] == f"t{i:02d}.png" and r["aligned_similarity"] > 0.99
        assert r["nearest_train_id"] == f"t{i:02d}.png"
    ev = pd.read_csv(out / "evidence.csv")
    flip = ev[(ev["detector"] == "aligned") & (ev["synthetic_id"] == "s00.png")].iloc[0]
    assert flip["train_id"] == "t00.png" and json.loads(flip["change_flips"]) == [True, False]
    assert json.loads(flip["change_shift_voxels"]) == [0.0, 0.0]
    html = (out / "report.html").read_text()
    assert "Flagged pair aligned: s0" in html and "flipped H" in html and "Plotly.newPlot" in html
    assert 'src="https://cdn' not in html


def test_aligned_pairs_of_2d_images_are_three_images_side_by_side():
    from memostudy.report.audit import aligned_pairs
    from memostudy.report.viewer import to_gray8

    a = _assessment()
    train, synthetic = _slices(2, seed=0, size=16), _slices(4, seed=1, size=16)
    a.evidence = [CopyEvidence("b", "t1", "pixel", 0.9, 0.2, 0.4, True, False, {})]
    [(title, fig)] = aligned_pairs(a, train, synthetic, ["t0", "t1"], ["a", "b", "c", "d"])
    assert title.startswith("b vs t1: pixel score 0.9") and "change: not measured" in title
    assert len(fig.data) == 3 and not fig.layout.sliders
    assert [t.xaxis for t in fig.data] == ["x", "x2", "x3"]  # one row
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), to_gray8(synthetic[1, 0].numpy().T, (-1.0, 1.0)))
    np.testing.assert_array_equal(np.asarray(fig.data[2].z), to_gray8(train[1, 0].numpy().T, (-1.0, 1.0)))


def test_a_2d_change_names_the_image_axes():
    from memostudy.report.audit import _change_text

    text = _change_text({"orientation": 2, "permutation": [0, 1], "flips": [True, False], "shift_voxels": [0.0, 1.0]})
    assert text == "axes (0, 1), flipped H; shift +0.0, +1.0 voxels"
    assert "flipped D" in _change_text({"permutation": [0, 1, 2], "flips": [True, False, False]})


def test_2d_images_against_3d_volumes_are_refused_in_one_line(folders_2d, folders, tmp_path, capsys):
    mixed = {**folders_2d, "reference": folders["reference"]}
    err = _error(mixed, tmp_path, capsys)
    assert "are (16, 16, 16) but --train 2D images are (32, 32)" in err and "all 2D images or all 3D volumes" in err


def test_a_colour_png_among_2d_images_is_refused_in_one_line(folders_2d, tmp_path, capsys):
    import SimpleITK as sitk

    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 100  # green only: a colour image
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(folders_2d["synthetic"] / "s99.png"))
    err = _error(folders_2d, tmp_path, capsys)
    assert "s99.png: a colour image" in err and not (tmp_path / "out").exists()
