"""Manifests: checksums refuse tampered files, folder manifests, subject-level splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from memostudy.data.manifest import load_manifest, manifest_from_folder, sha256_of, source_root, verify_checksums
from memostudy.errors import DataError


def test_manifest_from_folder_lists_every_volume_with_checksum(cohort: Path, tmp_path: Path) -> None:
    out = manifest_from_folder(cohort, tmp_path / "m.yaml", modality="CT", patch_size=8)
    m = load_manifest(out)
    assert sorted(v.subject for v in m.volumes) == ["subj0", "subj1", "subj2", "subj3"]
    root = source_root(m)
    for v in m.volumes:
        assert v.sha256 == sha256_of(root / v.path)
    assert m.preprocessing["intensity"] == {"kind": "window", "lo": -1000, "hi": 1000}
    assert m.patch_size == (8, 8, 8)


def test_subject_folders_become_subjects(tmp_path: Path, cohort: Path) -> None:
    folder = tmp_path / "nested"
    for s in ("alice", "bob"):
        (folder / s).mkdir(parents=True)
        for f in ("subj0.nii.gz", "subj1.nii.gz"):
            (folder / s / f).write_bytes((cohort / f).read_bytes())
    m = load_manifest(manifest_from_folder(folder, tmp_path / "m.yaml"))
    assert sorted({v.subject for v in m.volumes}) == ["alice", "bob"]
    assert len(m.volumes) == 4


def test_mrnet_layout_uses_case_subjects_and_top_folder_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, cases in (("train", ("0000", "0001")), ("valid", ("1130",))):
        for plane in ("axial", "coronal"):
            (tmp_path / "mrnet" / split / plane).mkdir(parents=True)
            for c in cases:
                np.save(tmp_path / "mrnet" / split / plane / f"{c}.npy", rng.integers(0, 255, (8, 16, 16)).astype(np.uint8))
    m = load_manifest(manifest_from_folder(tmp_path / "mrnet", tmp_path / "m.yaml"))
    split = m.split_of()
    assert split == {"case0000": "train", "case0001": "train", "case1130": "validation"}
    assert len(m.volumes) == 6


def test_fraction_split_never_puts_a_subject_in_two_splits(tmp_path: Path) -> None:
    from tests.conftest import write_cohort

    write_cohort(tmp_path / "c", n_subjects=10)
    m = load_manifest(manifest_from_folder(tmp_path / "c", tmp_path / "m.yaml", seed=3))
    split = m.split_of()
    assert len(split) == 10 and set(split.values()) == {"train", "validation", "test"}
    assert [sum(v == k for v in split.values()) for k in ("train", "validation", "test")] == [8, 1, 1]
    assert m.split_of() == split  # deterministic


def test_tampered_file_is_refused(cohort: Path, tmp_path: Path) -> None:
    m = load_manifest(manifest_from_folder(cohort, tmp_path / "m.yaml"))
    target = cohort / "subj2.nii.gz"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"subj2\.nii\.gz: sha256 .* does not match"):
        verify_checksums(m, source_root(m))


def test_missing_file_named(cohort: Path, tmp_path: Path) -> None:
    m = load_manifest(manifest_from_folder(cohort, tmp_path / "m.yaml"))
    (cohort / "subj1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"subj1\.nii\.gz: listed in manifest .* but missing"):
        verify_checksums(m, source_root(m))


def test_empty_folder_and_existing_out_are_errors(tmp_path: Path, cohort: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no volumes found"):
        manifest_from_folder(tmp_path / "empty", tmp_path / "m.yaml")
    (tmp_path / "exists.yaml").write_text("x")
    with pytest.raises(DataError, match="already exists"):
        manifest_from_folder(cohort, tmp_path / "exists.yaml")


def test_subject_assigned_twice_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "source": {"kind": "folder", "root": "."},
                                 "volumes": [{"subject": "a", "path": "a.nii", "sha256": "0" * 64}],
                                 "preprocessing": {"patch_size": 8},
                                 "split": {"kind": "by_subject", "assign": {"a": "nowhere"}}}))
    with pytest.raises(DataError, match=r"m\.yaml: split\.assign\.a: got 'nowhere'; use one of train, validation, test"):
        load_manifest(p)


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump({"name": "../x", "source": {"kind": "folder"}, "volumes": 5,
                                 "preprocessing": {"patch_size": "abc"}, "split": {"kind": "by_subject_fraction",
                                                                                   "fractions": "seventy"}}))
    with pytest.raises(DataError) as e:
        load_manifest(p)
    lines = str(e.value).splitlines()
    assert [ln.split(": ")[1] for ln in lines] == ["name", "preprocessing.patch_size", "split.fractions", "volumes"]
    assert all(ln.startswith(f"{p}: ") for ln in lines)


def test_each_file_is_its_own_subject_whatever_its_dots(tmp_path: Path) -> None:
    from tests.conftest import write_cohort

    folder = write_cohort(tmp_path / "c", n_subjects=5)
    names = ["1.2.826.0.1.3680043.2.1125.1.nii.gz", "1.2.826.0.1.3680043.2.1125.2.nii.gz",
             "patient.001.nii.gz", "patient.002.nii.gz", "patient.003.NII.GZ"]
    for old, new in zip(sorted(folder.iterdir()), names):
        old.rename(folder / new)
    m = load_manifest(manifest_from_folder(folder, tmp_path / "m.yaml", seed=1))
    assert sorted(v.subject for v in m.volumes) == sorted(["1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2",
                                                           "patient.001", "patient.002", "patient.003"])
    assert sorted(m.split_of().values()) == ["test", "train", "train", "train", "validation"]


def test_default_name_is_made_safe(tmp_path: Path) -> None:
    from tests.conftest import write_cohort

    folder = write_cohort(tmp_path / "My scans (2024)", n_subjects=1)
    assert load_manifest(manifest_from_folder(folder, tmp_path / "m.yaml")).name == "My-scans-2024"


def test_demo_manifests_parse() -> None:
    for name in ("demo-ct", "demo-mr"):
        m = load_manifest(name)
        assert m.source["kind"] == "pypi-sdist" and len(m.volumes) == 2
        assert set(m.split_of().values()) == {"train", "validation"}


def test_2d_demo_manifests_reuse_the_3d_volumes_and_split() -> None:
    for name in ("demo-ct", "demo-mr"):
        m3, m2 = load_manifest(name), load_manifest(f"{name}-2d")
        assert m2.name == f"{name}-2d" and m2.patch_size == (64, 64) and m3.patch_size == (32, 32, 32)
        assert [(v.subject, v.path, v.sha256) for v in m2.volumes] == [(v.subject, v.path, v.sha256) for v in m3.volumes]
        assert m2.split_of() == m3.split_of() and m2.source == m3.source
        assert m2.slices == {"plane": "axial", "step_mm": 15} and m3.slices is None


@pytest.mark.parametrize("change, problem", [
    ({"patch_size": [8, 8]}, "preprocessing.slices: missing for a 2D patch_size"),
    ({"slices": {"plane": "axial", "step_mm": 8}}, "preprocessing.slices: only for 2D patches"),
    ({"patch_size": [8, 8], "slices": {"plane": "axial", "step_mm": 8}}, "preprocessing.spacing: got [1.0, 1.0, 1.0]"),
    ({"patch_size": [8, 8], "spacing": [1.0, 1.0], "slices": {"plane": "coronal", "step_mm": 8}},
     "preprocessing.slices.plane: got 'coronal'"),
    ({"patch_size": [8, 8, 8, 8]}, "preprocessing.patch_size: got [8, 8, 8, 8]"),
])
def test_2d_settings_that_do_not_fit_are_named(change: dict, problem: str, cohort: Path, tmp_path: Path) -> None:
    path = manifest_from_folder(cohort, tmp_path / "m.yaml", name="toy", modality="CT", patch_size=8)
    raw = yaml.safe_load(path.read_text())
    raw["preprocessing"] |= change
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError) as e:
        load_manifest(path)
    assert problem in str(e.value), str(e.value)
