"""Patch preparation: grid without overlap, foreground rule, determinism, splits, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from memostudy.cli import main
from memostudy.data.manifest import manifest_from_folder
from memostudy.data.patches import load_patches
from memostudy.data.prepare import prepare
from memostudy.data.volume_io import write_nifti


def _manifest(cohort: Path, tmp_path: Path, patch: int = 8) -> Path:
    return manifest_from_folder(cohort, tmp_path / "m.yaml", name="toy", modality="CT", patch_size=patch)


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_patches_follow_grid_foreground_and_split(cohort: Path, tmp_path: Path) -> None:
    s = prepare(_manifest(cohort, tmp_path), cache=tmp_path / "cache", progress=False)
    table = pd.read_csv(s.path / "patches.csv")
    # MONAI's Spacing keeps voxel centres: 16 voxels at 2 mm -> 31 at 1 mm, 8 at 4 mm -> 29, so an
    # 8^3 grid has 3 x 3 x 3 cells; tissue fills x < 16 mm, so only origin_0 in {0, 8} passes
    assert set(table["origin_0"]) == {0, 8}
    assert len(table) == 4 * 2 * 3 * 3
    origins = table[["subject", "origin_0", "origin_1", "origin_2"]]
    assert not origins.duplicated().any()
    assert all(table[c].mod(8).eq(0).all() for c in ("origin_0", "origin_1", "origin_2"))
    assert table.groupby("subject")["split"].nunique().max() == 1
    ps = load_patches(s.path, split=None)
    assert ps.volumes.shape == (len(table), 1, 8, 8, 8)
    assert ps.volumes.min() >= -1 and ps.volumes.max() <= 1
    # every kept patch is mostly tissue (~40 HU -> 0.04 after the [-1000, 1000] window)
    assert (ps.volumes.mean(dim=(1, 2, 3, 4)) > -0.2).all()


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_preparation_is_deterministic(cohort: Path, tmp_path: Path) -> None:
    m = _manifest(cohort, tmp_path)
    a = prepare(m, cache=tmp_path / "c1", progress=False)
    b = prepare(m, cache=tmp_path / "c2", progress=False)
    ta, tb = pd.read_csv(a.path / "patches.csv"), pd.read_csv(b.path / "patches.csv")
    assert list(ta["sha256"]) == list(tb["sha256"])
    assert (a.path / "patches" / f"{ta.patch_id[0]}.npy").read_bytes() == (b.path / "patches" / f"{tb.patch_id[0]}.npy").read_bytes()


def test_second_prepare_reuses_and_inputs_unchanged(cohort: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in cohort.iterdir()}
    m = _manifest(cohort, tmp_path)
    prepare(m, cache=tmp_path / "c", progress=False)
    assert prepare(m, cache=tmp_path / "c", progress=False).reused
    assert {p.name: p.read_bytes() for p in cohort.iterdir()} == before


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("memostudy: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _assert_nothing_half_written(cache: Path) -> None:
    assert not cache.exists() or not [p for p in cache.iterdir() if p.name not in ("sources", ".locks")]


@pytest.mark.parametrize("damage", ["corrupt_gzip", "truncated_nifti", "nan", "four_d"])
def test_bad_volume_gets_one_line_naming_file(damage: str, cohort: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    target = cohort / "subj1.nii.gz"
    if damage == "corrupt_gzip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
        target.write_bytes(bytes(data))
    elif damage == "truncated_nifti":
        target.unlink()
        target = cohort / "subj1.nii"
        write_nifti(target, np.zeros((16, 16, 8), np.float32))
        target.write_bytes(target.read_bytes()[:600])
    elif damage == "nan":
        arr = np.zeros((16, 16, 8), np.float32)
        arr[3, 3, 3] = np.nan
        write_nifti(target, arr)
    else:
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 3), np.float32), np.eye(4)), str(target))
    m = _manifest(cohort, tmp_path)
    line = _cli_error(["data", "prepare", str(m), "--cache", str(tmp_path / "cache")], capsys)
    assert target.name in line
    expected = {"corrupt_gzip": "cannot read", "truncated_nifti": "cannot read", "nan": "NaN", "four_d": "expected a 3D"}
    assert expected[damage] in line
    _assert_nothing_half_written(tmp_path / "cache")


def test_checksum_mismatch_via_cli(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _manifest(cohort, tmp_path)
    with gzip.open(cohort / "subj0.nii.gz", "rb") as fh:
        raw = fh.read()
    with gzip.open(cohort / "subj0.nii.gz", "wb") as fh:
        fh.write(raw[:-4] + b"\x01\x02\x03\x04")
    line = _cli_error(["data", "prepare", str(m), "--cache", str(tmp_path / "cache")], capsys)
    assert "subj0.nii.gz" in line and "does not match the manifest" in line
    _assert_nothing_half_written(tmp_path / "cache")


def test_patch_larger_than_volume(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _manifest(cohort, tmp_path, patch=64)
    line = _cli_error(["data", "prepare", str(m), "--cache", str(tmp_path / "cache")], capsys)
    assert "subj0.nii.gz" in line and "larger than the volume" in line
    _assert_nothing_half_written(tmp_path / "cache")


def test_missing_file_and_empty_folder_via_cli(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _manifest(cohort, tmp_path)
    (cohort / "subj3.nii.gz").unlink()
    line = _cli_error(["data", "prepare", str(m), "--cache", str(tmp_path / "cache")], capsys)
    assert "subj3.nii.gz" in line and "missing" in line
    (tmp_path / "empty").mkdir()
    line = _cli_error(["data", "manifest", str(tmp_path / "empty"), "--out", str(tmp_path / "e.yaml")], capsys)
    assert "empty" in line and "no volumes found" in line


def test_interrupted_build_leaves_nothing(cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memostudy.data.prepare as prep

    calls = {"n": 0}
    real = prep.cut_patches

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prep, "cut_patches", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(_manifest(cohort, tmp_path), cache=tmp_path / "cache", progress=False)
    _assert_nothing_half_written(tmp_path / "cache")


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_changed_manifest_sets_old_aside_and_rebuilds(cohort: Path, tmp_path: Path) -> None:
    m = _manifest(cohort, tmp_path)
    first = prepare(m, cache=tmp_path / "c", progress=False)
    old_table = (first.path / "patches.csv").read_text()
    assert "hi: 1000" in m.read_text()
    m.write_text(m.read_text().replace("hi: 1000", "hi: 800"))
    second = prepare(m, cache=tmp_path / "c", progress=False)
    assert not second.reused and second.set_aside is not None
    assert second.set_aside.name.startswith("toy.stale-") and "set aside" in "\n".join(second.lines())
    assert (second.set_aside / "patches.csv").read_text() == old_table  # moved, not deleted
    assert (second.path / "patches.csv").read_text() != old_table
    assert prepare(m, cache=tmp_path / "c", progress=False).reused


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_force_replaces_with_the_same_result(cohort: Path, tmp_path: Path) -> None:
    m = _manifest(cohort, tmp_path)
    first = prepare(m, cache=tmp_path / "c", progress=False)
    table = (first.path / "patches.csv").read_text()
    again = prepare(m, cache=tmp_path / "c", progress=False, force=True)
    assert not again.reused and again.set_aside is None
    assert (again.path / "patches.csv").read_text() == table
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".locks", "toy"]


def test_patch_size_override_is_its_own_data_set(cohort: Path, tmp_path: Path) -> None:
    s = prepare(_manifest(cohort, tmp_path), cache=tmp_path / "c", progress=False, patch_size=16)
    assert s.name == "toy-p16" and s.patch_size == (16, 16, 16)
    assert load_patches(s.path, split=None).volumes.shape[2:] == (16, 16, 16)


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_volume_without_foreground_is_named_as_skipped(cohort: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    write_nifti(cohort / "subj3.nii.gz", (-1000 + rng.normal(0, 5, (16, 16, 8))).astype(np.float32), (2, 2, 4))
    s = prepare(_manifest(cohort, tmp_path), cache=tmp_path / "c", progress=False)
    assert s.skipped == ["subj3.nii.gz: no patch passed the foreground rule (min_foreground 0.5); "
                         "subject subj3 has no patches from it"]
    assert "skipped    subj3.nii.gz: no patch passed" in "\n".join(s.lines())
    assert prepare(_manifest(cohort, tmp_path / "again"), cache=tmp_path / "c", progress=False).skipped == s.skipped


def test_nothing_is_deleted_outside_the_cache(cohort: Path, tmp_path: Path) -> None:
    from memostudy.data.prepare import _remove_own

    (tmp_path / "c").mkdir()
    (tmp_path / "victim").mkdir()
    with pytest.raises(RuntimeError, match="refusing to delete"):
        _remove_own(tmp_path / "c" / ".." / "victim", tmp_path / "c")
    with pytest.raises(RuntimeError, match="refusing to delete"):
        _remove_own(tmp_path / "c" / "toy", tmp_path / "c")  # a data set is only ever renamed
    assert (tmp_path / "victim").is_dir()


def test_demo_ct_is_real_chest_ct_split_by_patient(demo_ct: Path) -> None:
    table = pd.read_csv(demo_ct / "patches.csv")
    assert set(table["subject"]) == {"lung1", "lung2"}
    assert table.groupby("subject")["split"].nunique().max() == 1
    train = load_patches(demo_ct, "train", limit=64)
    assert train.volumes.shape[1:] == (1, 32, 32, 32)
    # real CT: air, soft tissue and bone all present after the [-1000, 1000] HU window
    v = train.volumes
    assert (v < -0.9).any() and ((v > -0.1) & (v < 0.2)).any() and (v > 0.3).any()
    assert train.spacing == (1.0, 1.0, 1.0)


def _manifest_2d(cohort: Path, tmp_path: Path, step_mm: float = 8) -> Path:
    """The toy cohort's manifest made 2D: 8 x 8 patches from axial slices, 1 mm in-plane."""
    import yaml

    path = _manifest(cohort, tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["name"] = "toy-2d"
    raw["preprocessing"] |= {"patch_size": [8, 8], "spacing": [1.0, 1.0],
                             "slices": {"plane": "axial", "step_mm": step_mm}}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_slice_indices_step_is_rounded_to_whole_slices_and_centred() -> None:
    from memostudy.data.prepare import slice_indices

    assert slice_indices(8, 4.0, 8.0) == [0, 2, 4, 6]
    assert slice_indices(12, 5.0, 15.0) == [1, 4, 7, 10]  # the 2 slices left over: one at each end
    assert slice_indices(61, 5.0, 15.0)[:2] == [0, 3] and len(slice_indices(61, 5.0, 15.0)) == 21
    assert slice_indices(3, 6.5, 1.0) == [0, 1, 2]  # a step below the slice spacing uses every slice


@pytest.mark.slow  # prepares a data set end to end: make test runs it
def test_2d_patches_are_cut_from_spaced_axial_slices_with_the_3d_rules(cohort: Path, tmp_path: Path) -> None:
    s = prepare(_manifest_2d(cohort, tmp_path), cache=tmp_path / "cache", progress=False)
    table = pd.read_csv(s.path / "patches.csv")
    # in-plane 2 mm -> 1 mm gives 31 x 31 (3 x 3 cells of 8 x 8); tissue fills x < 16 mm, so origin_0 in {0, 8};
    # z keeps its 8 native 4 mm slices, 8 mm apart = every 2nd: slices 0, 2, 4, 6
    assert set(table["origin_0"]) == {0, 8} and set(table["origin_2"]) == {0, 2, 4, 6}
    assert len(table) == 4 * 2 * 3 * 4
    assert table.groupby("subject")["split"].nunique().max() == 1
    assert s.patch_size == (8, 8) and s.spacing == (1.0, 1.0) and s.slices == {"plane": "axial", "step_mm": 8}
    assert "from axial slices every 8 mm" in "\n".join(s.lines())
    ps = load_patches(s.path, split=None)
    assert ps.volumes.shape == (len(table), 1, 8, 8) and ps.spacing == (1.0, 1.0)
    assert np.load(s.path / table["file"][0]).shape == (8, 8)
    assert (ps.volumes.mean(dim=(1, 2, 3)) > -0.2).all()
    # a 3D data set of the same cohort is what it always was: no slicing rule in its dataset.json
    s3 = prepare(_manifest(cohort, tmp_path / "3d"), cache=tmp_path / "cache3", progress=False)
    assert s3.patch_size == (8, 8, 8) and s3.slices is None
    assert "slices" not in json.loads((s3.path / "dataset.json").read_text())


def test_patch_size_override_of_a_2d_manifest_stays_2d(cohort: Path, tmp_path: Path) -> None:
    s = prepare(_manifest_2d(cohort, tmp_path, step_mm=16), cache=tmp_path / "c", progress=False, patch_size=16)
    assert s.name == "toy-2d-p16" and s.patch_size == (16, 16)
    assert load_patches(s.path, split=None).volumes.shape[1:] == (1, 16, 16)
