"""A small procedural phantom cohort for fast unit tests.

Never the default data and never a stand-in for real data in the study: it exists so tests of
the training loop, detector and report can run in seconds without the demo scans.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memostudy.data.patches import COMPLETE_MARKER


def phantom_volume(size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One phantom: a few random soft ellipsoids of random intensity on a dark background (ellipses, for a
    2D ``size`` (H, W)).

    Returns:
        (D, H, W) (or (H, W)) float32 in [-1, 1].
    """
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    vol = np.full(shape, -1.0, dtype=np.float64)
    axes = (len(shape),) + (1,) * len(shape)  # centre and radii broadcast over the grid
    for _ in range(int(rng.integers(3, 7))):
        c = rng.uniform(-0.6, 0.6, size=len(shape)).reshape(axes)
        r = rng.uniform(0.15, 0.5, size=len(shape)).reshape(axes)
        d = (((grid - c) / r) ** 2).sum(0)
        vol += rng.uniform(0.4, 1.2) * np.exp(-(d**2))
    return np.clip(vol, -1, 1).astype(np.float32)


def phantom_volumes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """``n`` phantoms as a tensor (n, 1, size, size, size) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([phantom_volume(size, rng) for _ in range(n)])).unsqueeze(1)


def write_phantom_dataset(
    out_dir: str | Path, n_train: int = 8, n_validation: int = 4, n_test: int = 0, size: int = 16, seed: int = 0,
    spatial_dims: int = 3,
) -> Path:
    """Write a phantom cohort in the prepared-data-set layout of :mod:`memostudy.data.patches`: cubes of edge
    ``size``, or ``size`` x ``size`` images with ``spatial_dims`` 2 (a 2D data set).

    Each split gets its own subjects, so the subject-level split rule holds.
    """
    out = Path(out_dir)
    (out / "patches").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        for i in range(n):
            pid = f"phantom-{split}-{i:03d}"
            arr = phantom_volume((size,) * spatial_dims, rng)
            np.save(out / "patches" / f"{pid}.npy", arr)
            rows.append({"patch_id": pid, "subject": f"{split}-{i // 4}", "split": split, "source": "phantom",
                         "origin_0": 0, "origin_1": 0, "origin_2": 0, "sha256": "",
                         "file": f"patches/{pid}.npy"})
    pd.DataFrame(rows).to_csv(out / "patches.csv", index=False)
    info = {"name": out.name, "modality": "phantom", "patch_size": [size] * spatial_dims, "spacing": [1.0] * spatial_dims,
            "intensity": {"kind": "none", "lo": -1.0, "hi": 1.0}}
    (out / "dataset.json").write_text(json.dumps(info, indent=2))
    (out / COMPLETE_MARKER).write_text("phantom\n")
    return out
