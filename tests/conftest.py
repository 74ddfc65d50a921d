"""Shared fixtures: small CT-like cohorts written as real NIfTI files, and the demo data set."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from memostudy.data.volume_io import write_nifti

os.environ.setdefault("OMP_NUM_THREADS", "2")


def ct_like_volume(rng: np.random.Generator, shape=(16, 16, 8)) -> np.ndarray:
    """A small volume in HU: air (-1000) with a tissue block (about 40 HU, noisy) in the lower x half."""
    vol = np.full(shape, -1000.0, dtype=np.float32)
    vol[: shape[0] // 2] = 40.0
    return vol + rng.normal(0, 5, size=shape).astype(np.float32)


def write_cohort(folder: Path, n_subjects: int = 4, seed: int = 0, spacing=(2.0, 2.0, 4.0)) -> Path:
    """Write ``n_subjects`` CT-like NIfTI files ``subj<i>.nii.gz`` into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_subjects):
        write_nifti(folder / f"subj{i}.nii.gz", ct_like_volume(rng), spacing)
    return folder


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    """Four CT-like subjects, 16x16x8 voxels at 2x2x4 mm (32^3 mm, i.e. 32^3 voxels at 1 mm)."""
    return write_cohort(tmp_path / "cohort")


@pytest.fixture(scope="session")
def demo_ct() -> Path:
    """The real `demo-ct` data set, prepared once (reused from the cache when already there)."""
    from memostudy.data.prepare import prepare

    return prepare("demo-ct", progress=False).path


def default_sigint() -> None:
    """``preexec_fn`` for subprocesses that a test interrupts with SIGINT: a shell that runs the tests in the
    background starts them with SIGINT ignored, which the child would inherit (and Python then installs no
    KeyboardInterrupt handler), so the signal would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: fixtures that train a model once per module or session (tens of seconds on 2 cores): every test that uses
#: one is an end-to-end check and runs in `make test`, not in `make test-fast`
TRAINING_FIXTURES = {"trained", "tiny_result", "run_dir", "demo_ct"}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001 (pytest's hook signature)
    """Mark ``slow`` every test that uses one of :data:`TRAINING_FIXTURES`."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def write_volume_folder(path: Path, vols, prefix: str) -> Path:
    """Write (N, 1, D, H, W) volumes as ``<prefix>NN.nii.gz`` NIfTI files in ``path`` (an audit input folder)."""
    from memostudy.data.volume_io import write_nifti

    path.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(vols):
        write_nifti(path / f"{prefix}{i:02d}.nii.gz", v[0])
    return path
