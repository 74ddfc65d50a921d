"""Pixel-space baseline (Akbar et al.): the maximum Pearson correlation of voxels between a volume
and every training volume. Higher = more similar, in [-1, 1].

Each volume is flattened and standardised (zero mean, unit norm) so one matrix product gives the
correlations; the search itself is :func:`memostudy.similarity.nearest`, chunked, so memory is one
block of correlations plus the standardised rows of the two blocks. It is blind to orientation: a
flipped or rotated copy correlates with its source no better than an unrelated volume.
"""

from __future__ import annotations

import torch

from memostudy.similarity import Nearest, nearest


def flatten(volumes: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> (N, C*D*H*W) float32 view/copy, one row per volume."""
    return volumes.reshape(len(volumes), -1).float()


def pixel_nearest(query: torch.Tensor, base: torch.Tensor, chunk: int = 256, base_chunk: int = 256) -> Nearest:
    """For each query volume, its most correlated base volume in voxel space.

    Args:
        query: (Nq, 1, D, H, W) volumes.
        base: (Nb, 1, D, H, W) volumes of the same shape.
        chunk: query volumes per block.
        base_chunk: base volumes per block (a block standardises ``base_chunk`` volumes at a time).

    Returns:
        :class:`~memostudy.similarity.Nearest`: ``values`` (Nq,) max Pearson correlation in [-1, 1]
        (higher = more similar), ``indices`` (Nq,) the base volume it belongs to.
    """
    if query.shape[1:] != base.shape[1:]:
        raise ValueError(f"pixel correlation needs volumes of one shape, got {tuple(query.shape[1:])} and {tuple(base.shape[1:])}")
    return nearest(flatten(query), flatten(base), metric="pearson", chunk=chunk, base_chunk=base_chunk)
