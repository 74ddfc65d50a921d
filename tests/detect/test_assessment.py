"""`memostudy audit` end to end on folders of NIfTI files made by hand, and its errors."""

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

FAST = ["--set", "channels=8,16", "--set", "input_pool=2", "--set", "epochs=2", "--set", "batch_size=4"]


def _folder(path: Path, vols: torch.Tensor, prefix: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(vols):
        write_nifti(path / f"{prefix}{i:02d}.nii.gz", v[0])
    return path


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
    assert syn["combined_similarity"].between(0, 1).all() and set(syn["combined_is_copy"]) <= {0, 1}
    for name in ("aligned", "combined"):
        assert syn[f"{name}_is_copy"].mean() == pytest.approx(summary[name]["copy_fraction"])
    assert "combined (contrastive or aligned)" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "combined: copy fraction" in html and f"{summary['threshold']:.6g}" in html  # not rounded to 1
    assert "Plotly.newPlot" in html and 'src="https://cdn' not in html  # plotly.js inlined: opens offline
    assert (out / "detector.pt").exists()
    # the saved detector can be reused; an existing --out is refused without --force
    assert _audit(folders, out, "--detector", str(out / "detector.pt")) == 2
    assert "--force" in capsys.readouterr().err
    assert _audit(folders, out, "--detector", str(out / "detector.pt"), "--force", "--no-pixel", "--no-aligned") == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["pixel_baseline"] is None and again["aligned"] is None and again["combined"] is None
    assert not any(c.startswith(("aligned_", "combined_", "pixel_")) for c in pd.read_csv(out / "synthetic.csv").columns)


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
