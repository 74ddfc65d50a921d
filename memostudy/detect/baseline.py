"""Pixel-space baseline (Akbar et al.): the maximum Pearson correlation of voxels between a volume
and every training volume. Higher = more similar, in [-1, 1].

Each volume is flattened and standardised (zero mean, unit norm) so one matrix product gives the
correlations; the search itself is :func:`memostudy.detect.similarity.nearest`, chunked, so memory is one
block of correlations plus the prepared rows of the two blocks (``block_mb`` each). As in the paper it is
blind to orientation: a flipped or rotated copy correlates with its source no better than an unrelated
volume. ``orientations=True`` searches every shape-preserving flip/rotation of the query as well (48 for a
cube) and keeps the best, which catches those copies at 48 times the cost (an extension, not the paper's).
"""

from __future__ import annotations

import torch

from memostudy.detect.similarity import Nearest, nearest
from memostudy.detect.views import orient, shape_preserving
from memostudy.detect.views import orientations as axis_orientations


def flatten(volumes: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> (N, C*D*H*W) float32 view/copy, one row per volume."""
    return volumes.reshape(len(volumes), -1).float()


def pixel_nearest(query: torch.Tensor, base: torch.Tensor, chunk: int | None = None, base_chunk: int | None = None,
                  block_mb: float = 256.0, orientations: bool = False, progress: bool = False) -> Nearest:
    """For each query volume, its most correlated base volume in voxel space.

    Args:
        query: (Nq, 1, D, H, W) volumes, or (Nq, 1, H, W) images.
        base: (Nb, 1, ...) volumes of the same shape.
        chunk: query volumes per block; default: as many as fit ``block_mb``.
        base_chunk: base volumes per block; default: as many as fit ``block_mb``. When the whole
            base fits one block it is standardised once instead of once per query block.
        block_mb: memory for the prepared copy of one block of volumes (256 MiB = 2048 volumes of
            32^3, 256 of 64^3), which bounds the extra memory at about twice this.
        orientations: also try every flip/90-degree rotation of each query volume that keeps its shape
            (48 for a cube, 8 for a square) and keep the highest correlation (ties go to the earliest orientation, the identity first).
        progress: a progress bar (with ETA) over the query blocks, shown once a search has taken 2 s.

    Returns:
        :class:`~memostudy.detect.similarity.Nearest`: ``values`` (Nq,) max Pearson correlation in [-1, 1]
        (higher = more similar), ``indices`` (Nq,) the base volume it belongs to.
    """
    if query.shape[1:] != base.shape[1:]:
        raise ValueError(f"pixel correlation needs volumes of one shape, got {tuple(query.shape[1:])} and {tuple(base.shape[1:])}")
    fit = max(1, int(block_mb * 2**20 // (4 * max(1, base[0].numel() if len(base) else 1))))
    flat_base = flatten(base)

    def search(q: torch.Tensor, what: str = "") -> Nearest:
        return nearest(flatten(q), flat_base, metric="pearson", chunk=chunk or fit, base_chunk=base_chunk or fit,
                       progress=f"pixel correlation{what} {len(query)} x {len(base)}" if progress else None)

    best = search(query)
    if not orientations:
        return best
    nd = query.dim() - 2
    table = axis_orientations(nd)
    for k in shape_preserving(query.shape, nd)[1:]:  # index 0, the identity, is done
        res = search(orient(query, table[k]).contiguous(), f", orientation {k}")
        better = res.values > best.values
        best = Nearest(torch.where(better, res.values, best.values), torch.where(better, res.indices, best.indices))
    return best

