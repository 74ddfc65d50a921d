"""Block correlation: the broad copy definition's "at least half of its voxels", scored block by block.

The definition (:mod:`memostudy.detect.families`, issue 17) calls a synthetic volume a copy of a training volume
when *most of it* (at least half of its voxels) shows that training volume's anatomy. A correlation over the
whole volume (Akbar et al., :mod:`memostudy.detect.baseline`) answers a different question: the half that was
replaced by new content (a partial copy), or the part where a bias field or a local deformation changed the
intensities, pulls the whole volume's correlation down with it. This detector asks the definition's question
directly:

1. Both volumes are cut into the same grid of blocks of ``side`` voxels per axis (8^3 = 512 voxels; the last
   block of an axis whose length is not a multiple of ``side`` ends at the volume's edge, overlapping its
   neighbour, so every voxel is in some block).
2. Per block, the Pearson correlation of the two volumes' voxels at the same place (a flat block, constant in
   either volume, correlates 0: it shows no anatomy).
3. The score of the pair is the mean of the best ``keep`` fraction of its block correlations (default half:
   the definition's limit). A copy that keeps half its source scores like a whole copy, while a novel volume
   must match *many* blocks closely, which unrelated anatomy does not; a smooth bias field or contrast curve is
   nearly affine within a block, which the correlation ignores, and a small local displacement moves a block's
   content by a fraction of its side.

The nearest training volume of a query is the one with the highest score. Like every detector here the score
has its own scale (in [-1, 1], higher = more similar) and its own threshold, calibrated on real reference
volumes scored the same way. ``orientations=True`` also tries every shape-preserving flip and 90-degree
rotation of the query (48 for a cube), as the oriented pixel correlation does, at 48 times the cost; every novel
volume then picks its best of 48, which raises the threshold. :func:`block_oriented_nearest_both` instead gives each
pair its best orientation on pooled volumes and scores a shortlist of pairs in that orientation only (far less
than every orientation of every pair); :mod:`memostudy.detect.registry` combines it with the plain score ("blocks-either") so
that flipped and rotated copies are found while the plain score keeps its own threshold.

It does not search shifts or arbitrary rotations: a copy moved by more than a fraction of a block, or turned by
more than a few degrees, is not aligned block to block (the registered detector,
:mod:`memostudy.detect.registration`, can score its registered pairs with :func:`block_score` instead).

Cost: the same multiply-adds as the pixel correlation (one batched matrix product per block), plus a top-k over
the blocks of each pair, which dominates: 1,000 x 1,000 volumes of 32^3 took 3.0 s on 2 cores against 0.47 s for
the pixel correlation (``benchmarks/bench_similarity.py``), with about 1 GB of extra memory at the default
``block_mb`` (one ``chunk x base_chunk x blocks`` float32 block of scores and its top-k). 2D images
``(N, 1, H, W)`` work the same way with square blocks. Measured sensitivity and specificity: README, "Block
correlation".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from memostudy.detect.similarity import Nearest
from memostudy.errors import ConfigError


@dataclass(frozen=True)
class BlockConfig:
    """Settings of the block correlation (:func:`block_nearest`).

    Attributes:
        side: block side in voxels (pixels in 2D); volumes with an axis shorter than this use that axis's length
            (one block along it).
        keep: fraction of a pair's blocks, the best ones, whose correlations are averaged (0.5: the definition's
            "at least half of its voxels").
        orientations: also try every shape-preserving flip and 90-degree rotation of the query, keep the best
            (:func:`block_nearest`: every orientation of every pair, 48 times the cost for a cube).
        shortlist: for :func:`block_oriented_nearest_both`: pairs scored per query (and per base volume) in their
            best orientation, picked by the correlation of the volumes average-pooled by ``pool``.
        pool: average-pooling factor per axis of that preselection (4: 32^3 -> 8^3).
    """

    side: int = 8
    keep: float = 0.5
    orientations: bool = False
    shortlist: int = 3
    pool: int = 4

    def validate(self) -> BlockConfig:
        """Check the settings; raises :class:`~memostudy.errors.ConfigError` naming the bad one."""
        if self.side < 2:
            raise ConfigError(f"block side must be >= 2 voxels, got {self.side}")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"block keep must be in (0, 1], got {self.keep}")
        if self.shortlist < 1 or self.pool < 1:
            raise ConfigError(f"block shortlist and pool must be >= 1, got {self.shortlist} and {self.pool}")
        return self


def effective_side(spatial: tuple[int, ...], side: int) -> int:
    """The block side used for volumes of ``spatial`` size: ``side``, or the shortest axis when that is shorter."""
    return min(side, *spatial)


def block_starts(length: int, side: int) -> list[int]:
    """Start offsets of the blocks along one axis of ``length`` voxels: every ``side`` voxels, and a last block
    ending at the edge when ``length`` is not a multiple of ``side`` (so every voxel is covered)."""
    if length < side:
        raise ValueError(f"an axis of {length} voxels is shorter than the block side {side}")
    starts = list(range(0, length - side + 1, side))
    if starts[-1] + side < length:
        starts.append(length - side)
    return starts


def block_rows(volumes: torch.Tensor, side: int) -> torch.Tensor:
    """The blocks of each volume as standardised rows (centred, unit norm; a constant block is all zeros), so
    that a dot product of two rows is the Pearson correlation of two blocks.

    Args:
        volumes: (N, 1, D, H, W) volumes or (N, 1, H, W) images.
        side: block side.

    Returns:
        (K, N, side^d) float32: block k of every volume (blocks in C order over the grid of
        :func:`block_starts` per axis).
    """
    if volumes.dim() not in (4, 5) or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be (N, 1, D, H, W) or (N, 1, H, W), got {tuple(volumes.shape)}")
    rows = _tiles(volumes[:, 0].float(), side).transpose(0, 1)
    rows = rows - rows.mean(dim=2, keepdim=True)
    return rows / torch.linalg.vector_norm(rows, dim=2, keepdim=True).clamp_min(1e-12)


def _tiles(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, *spatial) -> (N, K, side^d): the blocks of :func:`block_starts` per axis, in C order over the grid."""
    nd = x.dim() - 1
    for axis in range(1, nd + 1):
        length = x.shape[axis]
        block_starts(length, side)  # checks the axis is long enough
        # a view of the windows at 0, side, 2 side, ...; the last block ending at the edge appended when the axis
        # is not a multiple of the side (the starts of block_starts)
        windows = x.unfold(axis, side, side)
        if length % side:
            windows = torch.cat([windows, x.narrow(axis, length - side, side).unfold(axis, side, side)], dim=axis)
        x = windows
    return x.reshape(len(x), math.prod(x.shape[1:1 + nd]), side ** nd)  # the one copy of the blocks


def top_mean(correlations: torch.Tensor, keep: float) -> torch.Tensor:
    """Mean of the best ``ceil(keep * K)`` values along the last axis (K blocks)."""
    k = correlations.shape[-1]
    m = max(1, math.ceil(keep * k - 1e-9))
    if m >= k:
        return correlations.mean(-1)
    return correlations.topk(m, dim=-1).values.mean(-1)


def block_score_matrix(query_rows: torch.Tensor, base_rows: torch.Tensor, keep: float) -> torch.Tensor:
    """(Nq, Nb) block scores of every query with every base volume from their :func:`block_rows`."""
    corr = torch.bmm(query_rows, base_rows.transpose(1, 2))  # (K, Nq, Nb)
    return top_mean(corr.permute(1, 2, 0), keep)


def _check_search(query: torch.Tensor, base: torch.Tensor, cfg: BlockConfig) -> None:
    """Refuse bad settings (:class:`~memostudy.errors.ConfigError`), sets of two shapes or an empty base (ValueError)."""
    cfg.validate()
    if query.shape[1:] != base.shape[1:]:
        raise ValueError(f"block correlation needs volumes of one shape, got {tuple(query.shape[1:])} "
                         f"and {tuple(base.shape[1:])}")
    if len(base) == 0:
        raise ValueError("base is empty: nothing to search")


def block_nearest(query: torch.Tensor, base: torch.Tensor, cfg: BlockConfig = BlockConfig(),
                  block_mb: float = 256.0) -> Nearest:
    """For each query volume, the base volume with the highest block score (module docstring): the first half of
    :func:`block_nearest_both`."""
    return block_nearest_both(query, base, cfg, block_mb)[0]


def block_nearest_both(query: torch.Tensor, base: torch.Tensor, cfg: BlockConfig = BlockConfig(),
                       block_mb: float = 256.0, progress: bool = False) -> tuple[Nearest, Nearest]:
    """Nearest neighbours by block score in both directions from one pass over the pairs.

    The score of a pair does not depend on which volume is the query (the same blocks are compared, and the
    orientations of the search form a group), so one matrix of scores per chunk gives each query its nearest base
    volume and each base volume its nearest query volume, as the assessment needs both.

    Args:
        query: (Nq, 1, D, H, W) volumes or (Nq, 1, H, W) images.
        base: (Nb, 1, ...) of the same shape.
        cfg: block side, the kept fraction, and whether to search the query's orientations.
        block_mb: memory for one block of scores and the prepared rows (bounds the extra memory at a few times
            this).
        progress: a progress bar (with ETA) over the query chunks, shown once the search has taken 2 s.

    Returns:
        ``(query_to_base, base_to_query)`` :class:`~memostudy.detect.similarity.Nearest`: values the best block
        score in [-1, 1] (higher = more similar), indices the other set's volume (ties go to the lowest index).
    """
    from memostudy.detect.views import orient, shape_preserving
    from memostudy.detect.views import orientations as axis_orientations

    _check_search(query, base, cfg)
    nd = query.dim() - 2
    side = effective_side(tuple(query.shape[2:]), cfg.side)
    blocks = math.prod(len(block_starts(n, side)) for n in query.shape[2:])
    fit = max(1, int(block_mb * 2**20 // (4 * blocks * side ** nd)))  # base volumes per prepared chunk
    base_rows = [(j, block_rows(base[j:j + fit], side)) for j in range(0, len(base), fit)]
    # a query chunk's score block is chunk x fit x blocks floats
    chunk = max(1, min(fit, int(block_mb * 2**20 // (4 * blocks * min(fit, len(base))))))
    table = axis_orientations(nd)
    turns = [table[k] for k in shape_preserving(query.shape, nd)[1:]] if cfg.orientations else []
    q2b = Nearest(torch.full((len(query),), -math.inf), torch.zeros(len(query), dtype=torch.int64))
    b2q = Nearest(torch.full((len(base),), -math.inf), torch.zeros(len(base), dtype=torch.int64))
    from tqdm.auto import tqdm

    what = f"block correlation{f' x {len(turns) + 1} orientations' if turns else ''} {len(query)} x {len(base)}"
    for i in tqdm(range(0, len(query), chunk), desc=what, delay=2, disable=not progress):
        q = query[i:i + chunk]
        rows = block_rows(q, side)
        for j, b in base_rows:
            pair = block_score_matrix(rows, b, cfg.keep)  # (chunk, fit): the identity first
            for o in turns:
                torch.maximum(pair, block_score_matrix(block_rows(orient(q, o).contiguous(), side), b, cfg.keep),
                               out=pair)
            v, idx = pair.max(dim=1)
            better = v > q2b.values[i:i + len(q)]
            q2b.values[i:i + len(q)][better], q2b.indices[i:i + len(q)][better] = v[better], idx[better] + j
            v, idx = pair.max(dim=0)
            better = v > b2q.values[j:j + len(v)]
            b2q.values[j:j + len(v)][better], b2q.indices[j:j + len(v)][better] = v[better], idx[better] + i
    return q2b, b2q


def _pooled(volumes: torch.Tensor, pool: int) -> torch.Tensor:
    """The volumes (N, 1, ...) average-pooled by ``pool`` per axis (at most the axis's length), float32."""
    kernel = tuple(min(pool, n) for n in volumes.shape[2:])
    f = torch.nn.functional.avg_pool3d if volumes.dim() == 5 else torch.nn.functional.avg_pool2d
    return f(volumes.float(), kernel)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, V) centred rows of unit norm: a dot product of two rows is the Pearson correlation."""
    rows = x.flatten(1)
    rows = rows - rows.mean(dim=1, keepdim=True)
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-12)


def oriented_shortlist(query: torch.Tensor, base: torch.Tensor, cfg: BlockConfig = BlockConfig()
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs worth scoring in another orientation, and the orientation of each.

    Both sets are average-pooled by ``cfg.pool`` (a 32^3 volume becomes 8^3: 64 times fewer voxels), the pooled
    query is turned into each of its shape-preserving orientations (pooling first: on an axis that is a multiple of
    the pool factor, pooling and a flip or axis swap commute), and every pooled query is correlated with every
    pooled base volume; each pair keeps its best orientation. A pair is shortlisted when the base volume is among
    the query's ``cfg.shortlist`` best, or the query among the base volume's (the assessment needs both directions).

    Returns:
        ``(pairs, turn)``: (Nq, Nb) bool, the shortlisted pairs; (Nq, Nb) int64, each pair's best orientation
        (an index into :func:`memostudy.detect.views.orientations`; 0 = as stored).
    """
    from memostudy.detect.views import orient, shape_preserving
    from memostudy.detect.views import orientations as axis_orientations

    nd = query.dim() - 2
    table = axis_orientations(nd)
    pooled_query, base_rows = _pooled(query, cfg.pool), _unit_rows(_pooled(base, cfg.pool))
    best = torch.full((len(query), len(base)), -math.inf)
    turn = torch.zeros((len(query), len(base)), dtype=torch.int64)
    for k in shape_preserving(query.shape, nd):
        corr = _unit_rows(orient(pooled_query, table[k]) if k else pooled_query) @ base_rows.T
        better = corr > best
        best[better], turn[better] = corr[better], k
    pairs = torch.zeros_like(best, dtype=torch.bool)
    rows_idx = torch.arange(len(query))[:, None]
    pairs[rows_idx, best.topk(min(cfg.shortlist, len(base)), dim=1).indices] = True
    pairs[best.topk(min(cfg.shortlist, len(query)), dim=0).indices, torch.arange(len(base))[None, :]] = True
    return pairs, turn


def block_oriented_nearest_both(query: torch.Tensor, base: torch.Tensor, cfg: BlockConfig = BlockConfig(),
                                progress: bool = False) -> tuple[Nearest, Nearest]:
    """Nearest neighbours by block score with the query in its best orientation, on a shortlist of pairs.

    The block score does not search orientations (a flipped copy's blocks meet the wrong blocks), and searching
    every orientation of every pair (``cfg.orientations`` in :func:`block_nearest`) costs 48 times as much and lets
    every novel volume pick its best of 48, which raises the threshold. Here each pair is first given its best
    orientation on pooled volumes (:func:`oriented_shortlist`), and only the shortlisted pairs are scored, by the
    block score of the query turned that way. A volume whose shortlist misses its source is still found by the plain
    block score; the two are combined in :mod:`memostudy.detect.registry` ("blocks-either").

    Args:
        query: (Nq, 1, D, H, W) volumes or (Nq, 1, H, W) images.
        base: (Nb, 1, ...) of the same shape.
        cfg: block side and kept fraction, the shortlist size and the pooling factor (``orientations`` is ignored).
        progress: a progress bar (with ETA) over the query volumes, shown once the search has taken 2 s.

    Returns:
        ``(query_to_base, base_to_query)`` :class:`~memostudy.detect.similarity.Nearest` as in
        :func:`block_nearest_both`; a volume none of whose pairs was shortlisted (it cannot happen with a shortlist
        of at least one) would score -inf.
    """
    from tqdm.auto import tqdm

    from memostudy.detect.views import orient
    from memostudy.detect.views import orientations as axis_orientations

    _check_search(query, base, cfg)
    nd = query.dim() - 2
    table = axis_orientations(nd)
    side = effective_side(tuple(query.shape[2:]), cfg.side)
    pairs, turn = oriented_shortlist(query, base, cfg)
    base_rows = block_rows(base, side)  # (K, Nb, side^d)
    scores = torch.full((len(query), len(base)), -math.inf)
    what = f"oriented block correlation {len(query)} x {len(base)} (shortlist {cfg.shortlist})"
    for i in tqdm(range(len(query)), desc=what, delay=2, disable=not progress):
        js = pairs[i].nonzero()[:, 0]
        for k in turn[i, js].unique().tolist():
            jk = js[turn[i, js] == k]
            q = query[i:i + 1] if k == 0 else orient(query[i:i + 1], table[k]).contiguous()
            scores[i, jk] = block_score_matrix(block_rows(q, side), base_rows[:, jk], cfg.keep)[0]
    q2b, b2q = scores.max(dim=1), scores.max(dim=0)
    return Nearest(q2b.values, q2b.indices), Nearest(b2q.values, b2q.indices)


def block_score(query: torch.Tensor, warped: torch.Tensor, cover: torch.Tensor | None = None,
                cfg: BlockConfig = BlockConfig()) -> float:
    """The block score of one synthetic volume and one training volume already moved onto its grid.

    Args:
        query: (D, H, W) or (H, W) the synthetic volume.
        warped: the training volume on the query's grid, same shape.
        cover: where the moved training volume covers the query's grid (in [0, 1]); a block not fully covered
            (any voxel < 0.99) scores 0, so an overlap smaller than half the volume cannot score high. None:
            everywhere covered.
        cfg: block side and kept fraction (``orientations`` is ignored).

    Returns:
        The mean of the best ``cfg.keep`` fraction of the block correlations, in [-1, 1].
    """
    cfg.validate()
    if query.shape != warped.shape:
        raise ValueError(f"block score needs two volumes of one shape, got {tuple(query.shape)} and {tuple(warped.shape)}")
    cfg = dataclasses.replace(cfg, side=effective_side(tuple(query.shape), cfg.side))
    q = block_rows(query[None, None], cfg.side)[:, 0]
    w = block_rows(warped[None, None], cfg.side)[:, 0]
    corr = (q * w).sum(-1)
    if cover is not None:
        # a block is covered when all of its voxels are
        covered = _tiles((cover >= 0.99).float()[None], cfg.side)[0].amin(-1) > 0.5
        corr = torch.where(covered, corr, torch.zeros_like(corr))
    return float(top_mean(corr, cfg.keep))
