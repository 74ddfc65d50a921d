"""Load prepared patch data sets (the output of ``memostudy data prepare``) as tensors.

Layout of a prepared data set folder (written by :mod:`memostudy.data.prepare`)::

    <cache>/<name>/
        manifest.yaml        the manifest it was built from (with checksums)
        patches.csv          one row per patch: patch_id, subject, split, source, origin_*, sha256, file
        patches/<id>.npy     float32 (D, H, W) in [-1, 1]; (H, W) for a 2D data set (``patch_size`` [H, W])
        dataset.json         name, modality, patch_size, spacing, intensity mapping, counts per split
        COMPLETE             written last; a folder without it is an interrupted build
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memostudy.errors import DataError

COMPLETE_MARKER = "COMPLETE"


def default_cache() -> Path:
    """The cache root: ``$MEMOSTUDY_CACHE`` or ``~/.cache/memostudy`` (outside the repo)."""
    env = os.environ.get("MEMOSTUDY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memostudy"


@dataclass
class PatchSet:
    """Patches of one split of a prepared data set.

    Attributes:
        volumes: (N, 1, D, H, W) float32 in [-1, 1]; (N, 1, H, W) for a 2D data set.
        ids: patch ids, length N, in ``patches.csv`` order.
        table: the rows of ``patches.csv`` for these patches.
        info: ``dataset.json`` of the data set (spacing in mm as ``spacing``, intensity mapping
            as ``intensity`` = {"kind", "lo", "hi"} mapping [lo, hi] to [-1, 1]).
    """

    volumes: torch.Tensor
    ids: list[str]
    table: pd.DataFrame
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> PatchSet:
        """The patches at ``indices`` (positions in this set, in the order given), with their ids and
        table rows (table re-indexed from 0); ``info`` is shared."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        rows = idx.tolist()
        return PatchSet(volumes=self.volumes[idx], ids=[self.ids[i] for i in rows],
                        table=self.table.iloc[rows].reset_index(drop=True), info=self.info)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel spacing in mm of every patch (two entries, in-plane, for a 2D data set)."""
        return tuple(float(s) for s in self.info.get("spacing", (1.0, 1.0, 1.0)))  # type: ignore[return-value]


def resolve_dataset_dir(name_or_dir: str | Path, cache: str | Path | None = None) -> Path:
    """Find a prepared data set: an existing folder path, or a name under the cache root."""
    p = Path(name_or_dir)
    if p.is_dir() and (p / "patches.csv").exists():
        return p
    root = Path(cache) if cache is not None else default_cache()
    d = root / str(name_or_dir)
    if not (d / COMPLETE_MARKER).exists():
        raise DataError(
            f"{d}: prepared data set not found or incomplete; run `memostudy data prepare {name_or_dir}`"
            + (f" --cache {cache}" if cache is not None else "")
        )
    return d


def load_patches(
    name_or_dir: str | Path,
    split: str | None = "train",
    cache: str | Path | None = None,
    limit: int | None = None,
) -> PatchSet:
    """Load one split (or all patches with ``split=None``) of a prepared data set.

    Args:
        name_or_dir: data set name (looked up in the cache) or its folder.
        split: "train", "validation", "test" or None for every patch.
        cache: cache root; default :func:`default_cache`.
        limit: keep only the first ``limit`` patches of the split (deterministic order).

    Returns:
        A :class:`PatchSet` with volumes (N, 1, D, H, W) (2D data sets: (N, 1, H, W)) float32 in [-1, 1].
    """
    d = resolve_dataset_dir(name_or_dir, cache)
    table = pd.read_csv(d / "patches.csv", dtype={"patch_id": str, "subject": str})
    info = json.loads((d / "dataset.json").read_text()) if (d / "dataset.json").exists() else {}
    if split is not None:
        if split not in set(table["split"]):
            raise DataError(
                f"{d}: no patches in split {split!r}; splits present: {', '.join(sorted(set(table['split'])))}"
            )
        table = table[table["split"] == split]
    if limit is not None:
        table = table.iloc[: int(limit)]
    table = table.reset_index(drop=True)
    arrays = []
    for f in table["file"]:
        path = d / f
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable patch ({e}); rebuild with `memostudy data prepare --force`") from None
    if not arrays:
        raise DataError(f"{d}: split {split!r} has no patches")
    vols = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False)).unsqueeze(1)
    return PatchSet(volumes=vols, ids=list(table["patch_id"]), table=table, info=info)
