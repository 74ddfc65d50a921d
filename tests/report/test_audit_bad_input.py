"""Bad input and leftovers for `memostudy audit` (issue 18): every case exits 2 with one line naming the
file or folder and what to do, no traceback, the inputs unchanged (checksums) and nothing half-written
in ``--out``; and the cases that must now succeed (``--force`` with another detector config, a killed
run's leftovers, another audit's lock released)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from memostudy.cli import main
from memostudy.data.phantom import phantom_volumes
from memostudy.data.volume_io import write_nifti
from memostudy.report.audit import AUDIT_FILES, BUILDING_PREFIX, COMPLETE_MARKER, LOCK_FILE
from tests.conftest import write_volume_folder as _folder

FAST = ["--no-aligned", "--set", "channels=8,16", "--set", "input_pool=2", "--set", "epochs=1", "--set", "batch_size=4"]


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, Path]:
    train = phantom_volumes(6, 16, seed=0)
    return {"train": _folder(tmp_path / "train", train, "t"),
            "reference": _folder(tmp_path / "ref", phantom_volumes(5, 16, seed=3), "r"),
            "synthetic": _folder(tmp_path / "syn", torch.cat([train[:2].flip(2), phantom_volumes(2, 16, seed=7)]), "s")}


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _audit(folders: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["audit", "--train", str(folders["train"]), "--reference", str(folders["reference"]),
                 "--synthetic", str(folders["synthetic"]), "--out", str(out), *FAST, *extra])


def _refused(folders, out: Path, capsys, *extra: str) -> str:
    """Run the audit, expect exit 2 with one line, the inputs and ``out`` unchanged; return the line."""
    inputs = {k: _tree(v) for k, v in folders.items() if v.is_dir()}
    before = _tree(out) if out.exists() else None
    capsys.readouterr()
    assert _audit(folders, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert {k: _tree(v) for k, v in folders.items() if v.is_dir()} == inputs
    if before is None:
        assert not out.exists(), "an output folder was created for inputs that failed"
    else:
        assert _tree(out) == before
    return err


def test_absurd_intensities_name_the_file(folders, tmp_path, capsys):
    v = phantom_volumes(1, 16, seed=9)[0, 0].numpy().copy()
    v[2:4] = 1e30
    write_nifti(folders["train"] / "huge.nii.gz", v)
    err = _refused(folders, tmp_path / "out", capsys)
    assert "huge.nii.gz" in err and "units" in err


def test_infinite_values_name_the_file(folders, tmp_path, capsys):
    v = np.zeros((16, 16, 16), np.float32)
    v[1, 2, 3] = np.inf
    write_nifti(folders["synthetic"] / "inf.nii.gz", v)
    assert "inf.nii.gz" in _refused(folders, tmp_path / "out", capsys)


def test_damaged_checkpoint_names_the_file(folders, tmp_path, capsys):
    bad = tmp_path / "wrong.pt"
    torch.save({"kind": "memostudy-detector", "config": {"channels": [8, 16]}, "state_dict": {"x": torch.zeros(2)}}, bad)
    err = _refused(folders, tmp_path / "out", capsys, "--detector", str(bad))
    assert "wrong.pt" in err and "damaged" in err


def test_missing_input_folder_creates_no_output(folders, tmp_path, capsys):
    folders["synthetic"] = tmp_path / "nowhere"
    _refused(folders, tmp_path / "out", capsys)


@pytest.mark.parametrize("how", ["same folder", "same files"])
def test_reference_equal_to_train_is_refused(folders, tmp_path, capsys, how):
    folders["reference"] = folders["train"] if how == "same folder" else Path(shutil.copytree(folders["train"], tmp_path / "copy"))
    assert "--reference" in _refused(folders, tmp_path / "out", capsys)


@pytest.mark.slow
def test_reference_sharing_some_training_volumes_is_warned_about(folders, tmp_path, capsys):
    shutil.copy(folders["train"] / "t00.nii.gz", folders["reference"] / "t00.nii.gz")
    assert _audit(folders, tmp_path / "out") == 0
    assert "1 of 6 --reference volume(s) are also in --train (e.g. t00.nii.gz)" in capsys.readouterr().err


def test_existing_detector_is_not_replaced_without_force(folders, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "detector.pt").write_bytes(b"the user's own file")
    assert "--force" in _refused(folders, out, capsys)
    assert (out / "detector.pt").read_bytes() == b"the user's own file"


@pytest.mark.slow
def test_second_audit_into_one_folder_refuses_while_the_first_holds_the_lock(folders, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / LOCK_FILE)):
        assert "another `memostudy audit`" in _refused(folders, out, capsys)
    assert _audit(folders, out) == 0


def _results(out: Path) -> dict[str, str]:
    """The result files' checksums; summary.json without its timings, provenance and input paths."""
    tree = {f: h for f, h in _tree(out).items() if f in AUDIT_FILES and f not in ("summary.json", "report.html")}
    summary = json.loads((out / "summary.json").read_text())
    for k in ("seconds", "provenance", "inputs"):  # inputs name the --out folder
        summary.pop(k)
    return tree | {"summary.json": json.dumps(summary, sort_keys=True)}


@pytest.mark.slow
def test_force_with_another_detector_config_replaces_the_results(folders, tmp_path, capsys):
    """Defect 2: `--force` deleted the old results, then refused the old detector_training."""
    out = tmp_path / "out"
    assert _audit(folders, out) == 0
    assert _audit(folders, out, "--set", "epochs=2") == 2  # complete results: refused without --force
    assert _audit(folders, out, "--set", "epochs=2", "--force") == 0
    assert "trained on another config; set it aside" in capsys.readouterr().err
    assert _results(out) == _results(_audit_into(folders, tmp_path / "fresh", "--set", "epochs=2"))
    assert json.loads((out / "summary.json").read_text())["detector"]["config"]["epochs"] == 2
    assert not list(out.glob(f"{BUILDING_PREFIX}*")) and not list(out.glob("detector_training.aside-*"))


def _audit_into(folders, out: Path, *extra: str) -> Path:
    assert _audit(folders, out, *extra) == 0
    return out


@pytest.mark.slow
def test_leftovers_of_a_killed_run_are_finished_or_removed(folders, tmp_path):
    """Defect 8: a kill while writing left summary.json and the CSVs without report.html and the next run
    refused. Now results are built aside; a complete build is moved in, an incomplete one removed."""
    out = _audit_into(folders, tmp_path / "out")
    expected = _results(out)
    # an older version's half-written output: summary.json and tables without report.html
    (out / "report.html").unlink()
    incomplete = out / f"{BUILDING_PREFIX}killed"
    incomplete.mkdir()
    (incomplete / "synthetic.csv").write_text("half")
    # (its detector.pt is reused as the refusal of a detector.pt without --force says)
    assert _audit(folders, out, "--detector", str(out / "detector.pt")) == 0
    assert _results(out) == expected and not incomplete.exists()
    # killed between moving a complete build's files in: the next run finishes the move first
    complete = out / f"{BUILDING_PREFIX}moving"
    complete.mkdir()
    for f in AUDIT_FILES:
        shutil.copy(out / f, complete / f)
    (complete / COMPLETE_MARKER).write_text("complete\n")
    (out / "summary.json").unlink()
    assert _audit(folders, out, "--force") == 0 and _results(out) == expected and not complete.exists()
