"""Aligned pixel correlation: the voxel-space score that survives what a generator does to a copy.

The plain pixel baseline (:mod:`memostudy.detect.baseline`) compares volumes voxel for voxel as they lie, so
a copy that is flipped, rotated, shifted by a voxel or two, or blurred correlates with its source little
better than an unrelated volume does. The contrastive embedding is blind to orientation but, trained on
a few hundred patches on a CPU, it is weak on shifts, blur and intensity changes. This module undoes
those changes explicitly, at the cost of a search:

1. **Shortlist**: for each query the ``shortlist`` training volumes nearest by embedding (when
   embeddings are given) and the ``shortlist`` nearest by pixel correlation searched over every
   orientation, both after smoothing (:func:`candidates`).
2. **Align**: the centre of the query (``max_shift`` voxels cut from each face), smoothed with
   ``sigma`` and turned to each of its shape-preserving orientations (48 for a cube, 8 for a square
   image), is slid over each smoothed candidate at every integer shift up to ``max_shift`` voxels per axis;
   the score is the normalised cross-correlation (Pearson correlation over the overlap), which ignores
   intensity scale and offset. Coarse to fine (``fine_pairs``, the default): every (candidate, orientation)
   pair is first scored on volumes average-pooled by 2, and only the best few are searched at full
   resolution; ``fine_pairs=0`` searches every pair at every shift (one ``conv3d``, ``conv2d`` for images).
3. **Refine**: for the best candidate and orientation, the candidate is also resampled at the
   ``subvoxel`` offsets and blurred with each of ``blurs`` more sigma, and the best correlation of all is kept,
   so sub-voxel shifts and blurred copies match their source as closely as a shifted or blurred
   copy can (coarse to fine: within one voxel of the best integer shift).

Every query gets the same search, so novel volumes also score higher than under the plain baseline;
the threshold is calibrated on real reference volumes scored the same way, as for every detector here.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from memostudy.config import OMIT_DEFAULT
from memostudy.detect.similarity import Nearest, similarity_matrix, standardise
from memostudy.detect.views import orient, orientations, shape_preserving, translate
from memostudy.errors import ConfigError


@dataclass(frozen=True)
class AlignConfig:
    """Settings of the aligned pixel correlation.

    Attributes:
        sigma: Gaussian smoothing (voxels) of query and candidates before they are correlated; damps
            noise and makes the integer shift grid forgiving.
        max_shift: largest shift searched, in whole voxels per axis (the query's centre is cut by this
            much on every face, so it must be less than half the smallest side).
        shortlist: candidates per query from each ranking (embedding, oriented pixel correlation).
        subvoxel: offsets (voxels, per axis, all combinations) at which the best candidate is resampled.
        blurs: extra Gaussian blur sigmas (voxels) tried on the best candidate (0 = none).
        fine_pairs: 0 (exhaustive): every candidate in every orientation of the query is searched at every
            shift, then the best one's variants at every shift. Else (default 4) coarse to fine: (candidate,
            orientation) pairs are ranked on a coarse grid (both volumes average-pooled by 2,
            :func:`coarse_scores`), only the best ``fine_pairs`` are searched at full resolution at every
            shift, and the best one's variants (sub-voxel offsets, blurs) only within one voxel of its
            best shift. The exhaustive search costs one correlation per orientation (48 for a cube),
            candidate and shift, and the refinement as much again; coarse to fine is 3-4x cheaper per
            query. On demo-ct's broad copy families (``benchmarks/bench_families.py --detectors pixel,aligned
            --per-cell 20``, 540 copies, 60 training patches) 4 pairs gave the exhaustive search's sensitivity
            in every family and strength and its specificity within one of 60 novel volumes (README). Left out of
            the config's dict at its default, so the hashes of results that never used this detector (the sweep
            cells' ``defaults.json``) stay as they were.
    """

    sigma: float = 0.75
    max_shift: int = 3
    shortlist: int = 5
    subvoxel: tuple[float, ...] = (0.0, 0.5)
    blurs: tuple[float, ...] = (0.0, 0.75, 1.5)
    fine_pairs: int = field(default=4, metadata=OMIT_DEFAULT)

    def validate(self, shape: tuple[int, ...] | torch.Size | None = None) -> AlignConfig:
        """Check the settings (and, given a batch shape ``(N, C, D, H, W)`` or ``(N, C, H, W)``, that the shifts fit it)."""
        if self.sigma < 0 or any(b < 0 for b in self.blurs) or not self.blurs:
            raise ConfigError(f"alignment sigma and blurs must be >= 0 (and blurs not empty), got {self.sigma}, {self.blurs}")
        if self.fine_pairs < 0:
            raise ConfigError(f"alignment fine_pairs must be >= 0 (0 = exhaustive search), got {self.fine_pairs}")
        if self.max_shift < 0 or self.shortlist < 1 or not self.subvoxel:
            raise ConfigError(f"alignment needs max_shift >= 0, shortlist >= 1 and at least one subvoxel offset, "
                              f"got {self.max_shift}, {self.shortlist}, {self.subvoxel}")
        if shape is not None and 2 * self.max_shift >= min(shape[2:] if len(shape) in (4, 5) else shape[-3:]):
            sides = tuple(shape[2:] if len(shape) in (4, 5) else shape[-3:])
            raise ConfigError(f"alignment max_shift {self.max_shift} is too large for volumes of {sides}: "
                              f"it must be less than half the smallest side")
        return self


def smooth(volumes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of ``(N, C, D, H, W)`` (or images ``(N, C, H, W)``) with MONAI's separable filter
    (a copy when ``sigma`` is 0), in chunks of volumes: :func:`memostudy.detect.calibration.blur`."""
    from memostudy.detect.calibration import blur

    return blur(volumes, sigma)


def oriented_correlations(query: torch.Tensor, base: torch.Tensor, chunk: int = 256, progress: bool = False) -> torch.Tensor:
    """(Nq, Nb): the voxel correlation of each query with each base volume, the highest over the query's
    shape-preserving orientations. The orientations form a group, so the transpose is the same for the base
    volumes searched in their orientations against the queries: one matrix serves both directions (a
    shortlist for the queries and one for the base volumes). Memory: the matrix plus one ``chunk x Nb`` block.
    Volumes ``(N, C, D, H, W)`` or images ``(N, C, H, W)``; ``progress``: a progress bar over the query chunks."""
    from tqdm.auto import tqdm

    nd = query.dim() - 2
    table = orientations(nd)
    b = standardise(base.reshape(len(base), -1))
    out = torch.empty(len(query), len(base))
    with torch.no_grad():
        for q0 in tqdm(range(0, len(query), chunk), desc=f"oriented correlations {len(query)} x {len(base)}",
                       disable=not progress):
            q = query[q0:q0 + chunk]
            best = None
            for i in shape_preserving(query.shape, nd):
                s = standardise(orient(q, table[i]).reshape(len(q), -1)) @ b.T
                best = s if best is None else torch.maximum(best, s)
            out[q0:q0 + len(q)] = best
    return out


def oriented_top_k(query: torch.Tensor, base: torch.Tensor, k: int, chunk: int = 256) -> torch.Tensor:
    """(Nq, k) indices of the base volumes most correlated voxel for voxel with some orientation of
    each query (the shape-preserving ones), best first (:func:`oriented_correlations`). Volumes
    ``(N, C, D, H, W)`` or images ``(N, C, H, W)``."""
    return oriented_correlations(query, base, chunk).topk(min(k, len(base)), dim=1).indices


def embedding_top_k(query: torch.Tensor, base: torch.Tensor, k: int, metric: str = "pearson",
                    chunk: int = 1024) -> torch.Tensor:
    """(Nq, k) indices of the nearest base embeddings of each query embedding, best first."""
    k = min(k, len(base))
    return torch.cat([similarity_matrix(query[q0:q0 + chunk], base, metric).topk(k, dim=1).indices
                      for q0 in range(0, len(query), chunk)])


def candidates(query: torch.Tensor, base: torch.Tensor, cfg: AlignConfig,
               query_embedding: torch.Tensor | None = None, base_embedding: torch.Tensor | None = None,
               oriented: torch.Tensor | None = None) -> torch.Tensor:
    """(Nq, M) shortlist of base indices per query: oriented pixel top-k on smoothed volumes, plus the
    embedding top-k when embeddings are given (M = ``shortlist`` or twice it; repeats are harmless).
    ``oriented``: the (Nq, Nb) :func:`oriented_correlations` of the volumes smoothed with ``cfg.sigma``, when
    already computed (e.g. its transpose, for the other direction)."""
    if oriented is None:
        oriented = oriented_correlations(smooth(query, cfg.sigma), smooth(base, cfg.sigma))
    picks = [oriented.topk(min(cfg.shortlist, len(base)), dim=1).indices]
    if query_embedding is not None and base_embedding is not None:
        picks.insert(0, embedding_top_k(query_embedding, base_embedding, cfg.shortlist))
    return torch.cat(picks, dim=1)


def _kernels(volume: torch.Tensor, m: int, nd: int = 3, which: list[int] | None = None) -> torch.Tensor:
    """The centre of one ``(C, D, H, W)`` volume (or ``(C, H, W)`` image, ``nd`` = 2; ``m`` voxels cut per
    face) in each shape-preserving orientation (or those of ``which``, indices into
    :func:`memostudy.detect.views.orientations`), each centred and scaled to unit norm: ``(n_orientations, C,
    d, h, w)`` (or ``(n, C, h, w)``)."""
    crop = volume[(..., *(slice(m, n - m) for n in volume.shape[-nd:]))]
    table = orientations(nd)
    k = torch.stack([orient(crop, table[i]) for i in (shape_preserving(volume.shape, nd) if which is None else which)])
    k = k - k.mean(dim=tuple(range(1, k.dim())), keepdim=True)
    return k / k.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (k.dim() - 1)))


def box_mean(x: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The mean of every window of ``size`` over the last ``len(size)`` axes of ``x`` (stride 1, no padding):
    what ``avg_pool3d(x, size, stride=1)`` (``avg_pool2d`` for 2D) gives, from cumulative sums (summed area
    tables, in float64) instead of a sum per window. For the large windows of :func:`_ncc` (the query's centre,
    e.g. 26^3 of a 32^3 volume) this is 5-15x faster than average pooling on a CPU core and was most of the
    aligned search's time (``benchmarks/bench_alignment.py``)."""
    out = x.double()
    for ax, k in zip(range(x.dim() - len(size), x.dim()), size):
        c = out.cumsum(ax)
        c = torch.cat([torch.zeros_like(c.narrow(ax, 0, 1)), c], dim=ax)
        out = c.narrow(ax, k, c.shape[ax] - k) - c.narrow(ax, 0, c.shape[ax] - k)
    return (out / float(torch.tensor(tuple(size)).prod())).to(x.dtype)


def _ncc(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of each kernel (zero mean, unit norm) with every window of each
    volume of ``x``: ``(N, C, D, H, W)`` x ``(K, C, d, h, w)`` -> ``(N, K, D-d+1, H-h+1, W-w+1)`` in [-1, 1]
    (images: ``(N, C, H, W)`` x ``(K, C, h, w)`` -> ``(N, K, H-h+1, W-w+1)``)."""
    nd = x.dim() - 2
    size = kernels.shape[-nd:]
    conv = F.conv3d if nd == 3 else F.conv2d
    n = float(kernels[0].numel())
    num = conv(x, kernels)
    mean = box_mean(x, size).sum(1, keepdim=True) / x.shape[1]
    sq = box_mean(x * x, size).sum(1, keepdim=True) / x.shape[1]
    return num / (n * (sq - mean * mean)).clamp_min(1e-12).sqrt()


def coarse_scores(query_s: torch.Tensor, cand_s: torch.Tensor, max_shift: int, which: list[int]) -> torch.Tensor:
    """(M, len(which)): how well each orientation (``which``, indices into
    :func:`memostudy.detect.views.orientations`) of one smoothed query ``(C, D, H, W)`` (or image ``(C, H, W)``)
    matches each smoothed candidate ``(M, C, ...)`` on a coarse grid: both average-pooled by 2, the query's
    centre slid over every shift up to about ``max_shift`` voxels, best normalised cross-correlation. About
    1/64 (1/16 in 2D) of the full search's cost per pair; it ranks pairs for the coarse-to-fine search
    (:attr:`AlignConfig.fine_pairs`)."""
    nd = cand_s.dim() - 2
    pool = F.avg_pool3d if nd == 3 else F.avg_pool2d
    q, cand = pool(query_s[None], 2)[0], pool(cand_s, 2)
    m = max(1, (max_shift + 1) // 2)
    if 2 * m >= min(q.shape[1:]):
        m = 0
    return _ncc(cand, _kernels(q, m, nd, which)).flatten(2).amax(2)


def _shifted(x: torch.Tensor, axis: int, offset: float) -> torch.Tensor:
    """``x`` sampled along ``axis`` at every index plus ``offset`` (sub-voxel allowed): linear interpolation
    between the two neighbours, border values repeated -- what :func:`memostudy.detect.views.translate`
    (``grid_sample``, bilinear, border padding) gives for a shift along one axis, from two gathers."""
    n = x.shape[axis]
    k = math.floor(offset)
    f = float(offset) - k
    idx = torch.arange(n) + k
    lo = x.index_select(axis, idx.clamp(0, n - 1))
    if f == 0.0:
        return lo
    return (1.0 - f) * lo + f * x.index_select(axis, (idx + 1).clamp(0, n - 1))


def _resampled(volume: torch.Tensor, offsets: tuple[float, ...]) -> torch.Tensor:
    """One ``(1, C, D, H, W)`` volume (or ``(1, C, H, W)`` image) translated by every combination of
    ``offsets`` per axis (as :func:`memostudy.detect.views.translate` would, separably, one axis at a time):
    ``(len(offsets) ** 3, C, D, H, W)`` (``len(offsets) ** 2`` images), in the order of
    ``itertools.product(offsets, repeat=3)``."""
    out = volume
    for axis in range(2, volume.dim()):
        out = torch.stack([_shifted(out, axis, o) for o in offsets], dim=1).flatten(0, 1)
    return out


@dataclass(frozen=True)
class Alignment:
    """The change that best maps a base (training) volume onto a query (synthetic) volume, as found by the
    aligned search: ``query ~= apply(base)`` = the base turned to ``orientation``, its content then moved by
    ``shift`` voxels and blurred by ``blur`` more voxels (intensity scale and offset are free: the score is a
    correlation).

    Attributes:
        correlation: normalised cross-correlation after alignment (higher = more similar, at most 1).
        base_index: the base volume aligned.
        orientation: index into :func:`memostudy.detect.views.orientations` (of the volumes' rank: 48 for 3D,
            8 for 2D) of the orientation applied to the base volume (0 = as it lies).
        shift: (3,) content shift in voxels per (D, H, W) axis ((2,) per (H, W) axis for images), applied after
            the orientation (sub-voxel when a ``subvoxel`` offset won; within ``max_shift`` plus the largest
            offset).
        blur: extra Gaussian sigma (voxels) applied to the base volume (0 = none).
    """

    correlation: float
    base_index: int
    orientation: int
    shift: tuple[float, ...]
    blur: float

    def change(self) -> dict[str, Any]:
        """The change as plain JSON values: ``kind`` "orientation+shift", ``orientation`` (index),
        ``permutation`` and ``flips`` (of that orientation: axes taken in this order, then reversed where
        True; 3 axes (D, H, W) for volumes, 2 (H, W) for images), ``shift_voxels`` (per axis) and
        ``blur_sigma``."""
        o = orientations(len(self.shift))[self.orientation]
        return {"kind": "orientation+shift", "orientation": self.orientation, "permutation": list(o.perm),
                "flips": [bool(f) for f in o.flips], "shift_voxels": [round(float(v), 3) for v in self.shift],
                "blur_sigma": float(self.blur)}

    def apply(self, volume: torch.Tensor) -> torch.Tensor:
        """The base volume ``(C, D, H, W)`` or ``(1, C, D, H, W)`` (image ``(C, H, W)`` or ``(1, C, H, W)``)
        moved as found, to lie on the query (border values repeated where the shift uncovers the edge); same
        shape as given."""
        return apply_change(volume, self.change())


def _change_dims(change: dict[str, Any], volume: torch.Tensor) -> int:
    """The spatial rank a change is for: the length of its ``permutation`` or ``shift_voxels``; without
    them, 2 for a ``(C, H, W)`` image and 3 otherwise."""
    for key in ("permutation", "shift_voxels", "flips"):
        if key in change:
            return len(change[key])
    return 2 if volume.dim() == 3 else 3


def apply_change(volume: torch.Tensor, change: dict[str, Any]) -> torch.Tensor:
    """Apply a change of :meth:`Alignment.change` (``orientation``, ``shift_voxels``, ``blur_sigma``) to a
    ``(C, D, H, W)`` or ``(1, C, D, H, W)`` volume, or a ``(C, H, W)`` or ``(1, C, H, W)`` image (the rank is
    that of the change's ``permutation`` / ``shift_voxels``): orient, move the content, blur. Keys it does not
    know are ignored; a change without ``orientation`` and ``shift_voxels`` leaves the volume as it is."""
    nd = _change_dims(change, volume)
    single = volume.dim() == nd + 1
    v = volume.float().unsqueeze(0) if single else volume.float()
    if "orientation" in change:
        v = orient(v, orientations(nd)[int(change["orientation"])])
    if "shift_voxels" in change:
        v = translate(v, -torch.tensor([list(change["shift_voxels"])], dtype=torch.float32))
    if float(change.get("blur_sigma", 0.0)) > 0:
        v = smooth(v, float(change["blur_sigma"]))
    return v[0] if single else v


@functools.cache
def _inverse(index: int, spatial_dims: int = 3) -> int:
    """Index of the orientation that undoes orientation ``index`` of :func:`orientations` (of ``spatial_dims``)."""
    table = orientations(spatial_dims)
    x = torch.arange(float(3 ** spatial_dims)).reshape((3,) * spatial_dims)
    y = orient(x, table[index])
    return next(r for r, o in enumerate(table) if torch.equal(orient(y, o), x))


def _alignment(corr: float, base_index: int, query_orientation: int, t: torch.Tensor, blur: float) -> Alignment:
    """The :class:`Alignment` of a match found as ``orient(query, O)(y) ~= base(y + t)``: the base is turned
    by ``R = O^-1`` and, for ``R(v)(y) = v(A y + c)`` with ``A`` a signed permutation, moved by ``-A^-1 t``
    (``t`` has one entry per spatial axis: 3 for volumes, 2 for images)."""
    nd = len(t)
    r = _inverse(query_orientation, nd)
    o = orientations(nd)[r]
    shift = tuple(0.0 - (-1.0 if o.flips[k] else 1.0) * float(t[o.perm[k]]) for k in range(nd))
    return Alignment(float(corr), int(base_index), r, shift, float(blur))


def _blurred(base: torch.Tensor, index: int, sigma: float, kept: dict[tuple[int, float], torch.Tensor] | None) -> torch.Tensor:
    """Base volume ``index`` as ``(1, C, ...)``, smoothed with ``sigma``; kept in ``kept`` (by index and sigma)
    when given, since the same training volume is the best candidate of many queries."""
    if kept is None:
        return smooth(base[index:index + 1], sigma)
    if (index, sigma) not in kept:
        kept[(index, sigma)] = smooth(base[index:index + 1], sigma)
    return kept[(index, sigma)]


def _align_one(query_s: torch.Tensor, base: torch.Tensor, cand: torch.Tensor, cand_s: torch.Tensor,
               cfg: AlignConfig, blurred: dict[tuple[int, float], torch.Tensor] | None = None) -> Alignment:
    """The best alignment of one smoothed query ``(C, D, H, W)`` (or image ``(C, H, W)``) with the candidates
    ``cand`` (indices) of ``base``, given smoothed as ``cand_s`` ``(len(cand), C, D, H, W)``, as described in
    the module docstring; ``blurred`` keeps the blurred base volumes of the coarse-to-fine refinement across
    calls."""
    m, nd = cfg.max_shift, cand_s.dim() - 2
    kept = shape_preserving(query_s.shape, nd)
    kernels = _kernels(query_s, m, nd)
    size = tuple(2 * m + 1 for _ in range(nd))
    if cfg.fine_pairs and cfg.fine_pairs < len(cand_s) * len(kept):
        # coarse to fine: the best pairs on the coarse grid, each searched in full
        coarse = coarse_scores(query_s, cand_s, m, kept)  # (candidates, orientations)
        top = coarse.flatten().topk(cfg.fine_pairs).indices
        best_val, c, o, pos_best = -float("inf"), 0, 0, 0
        for ci in torch.unique(top // len(kept)).tolist():
            os_ = [int(f) % len(kept) for f in top if int(f) // len(kept) == ci]
            r = _ncc(cand_s[ci:ci + 1], kernels[os_]).flatten(2)[0]  # (picked orientations, positions)
            val, where = r.max(1)
            j = int(val.argmax())
            if float(val[j]) > best_val:
                best_val, c, o, pos_best = float(val[j]), ci, os_[j], int(where[j])
        window = 1
    else:
        r = _ncc(cand_s, kernels)  # (candidates, orientations, 2m+1, 2m+1[, 2m+1])
        per, pos = r.flatten(2).max(2)
        flat = int(per.argmax())
        c, o = flat // per.shape[1], flat % per.shape[1]
        best_val, pos_best, window = float(per.max()), int(pos[c, o]), None
    best = int(cand[c])
    at = _unravel(pos_best, size)
    t = torch.tensor(at, dtype=torch.float32) - m
    offsets = torch.tensor(list(itertools.product(cfg.subvoxel, repeat=nd)), dtype=torch.float32)
    if window is None:  # moved, then blurred
        moved = _resampled(base[best:best + 1].float(), cfg.subvoxel)
        variants = torch.cat([smooth(moved, (cfg.sigma ** 2 + b ** 2) ** 0.5) for b in cfg.blurs])
    else:  # blurred once per base volume (kept in ``blurred``), then moved: the two commute up to the borders
        variants = torch.cat([_resampled(_blurred(base, best, (cfg.sigma ** 2 + b ** 2) ** 0.5, blurred), cfg.subvoxel)
                              for b in cfg.blurs])
    if window is None:  # the variants at every shift
        lo, grid = (0,) * nd, size
    else:  # only within ``window`` voxels of the best shift: crop the variants to the windows those shifts cover
        lo = tuple(max(0, a - window) for a in at)
        hi = tuple(min(n - 1, a + window) for a, n in zip(at, size))
        grid = tuple(h - a + 1 for a, h in zip(lo, hi))
        k_size = kernels.shape[-nd:]
        variants = variants[(..., *(slice(a, a + g + k - 1) for a, g, k in zip(lo, grid, k_size)))]
    refined = _ncc(variants, kernels[o:o + 1]).flatten(1)  # (blurs x offsets, positions)
    v_pos = int(refined.argmax())
    v, p = v_pos // refined.shape[1], v_pos % refined.shape[1]
    if float(refined.max()) > best_val:  # else the integer shift of the first search, unblurred
        t_ref = torch.tensor([a + b for a, b in zip(lo, _unravel(p, grid))], dtype=torch.float32) - m \
            + offsets[v % len(offsets)]
        return _alignment(float(refined.max()), best, kept[o], t_ref, cfg.blurs[v // len(offsets)])
    return _alignment(best_val, best, kept[o], t, 0.0)


def _unravel(i: int, size: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """The (D, H, W) (or (H, W)) position of flat index ``i`` in a grid of ``size``."""
    out = []
    for n in reversed(tuple(size)):
        out.append(i % n)
        i //= n
    return tuple(reversed(out))


def aligned_search(query: torch.Tensor, base: torch.Tensor, shortlist: torch.Tensor, cfg: AlignConfig = AlignConfig(),
                   progress: bool = False) -> tuple[Nearest, list[Alignment]]:
    """For each query volume, its best-aligned shortlisted base volume, their correlation, and the change
    that aligns them.

    Args:
        query: (Nq, C, D, H, W) volumes, or (Nq, C, H, W) images.
        base: (Nb, C, ...) volumes of the same shape.
        shortlist: (Nq, M) base indices to try per query (e.g. from :func:`candidates`).
        cfg: the alignment settings.
        progress: show a progress bar over the queries.

    Returns:
        ``(nearest, alignments)``: :class:`~memostudy.detect.similarity.Nearest` with ``values`` (Nq,) the
        highest normalised cross-correlation over candidates, orientations, shifts, sub-voxel offsets and
        blurs (higher = more similar, at most 1) and ``indices`` (Nq,) the base volume it belongs to; and
        per query the :class:`Alignment` (orientation, shift, blur) that maps that base volume onto it.

    Cost per query: one ``conv3d`` of (orientations) kernels of the cropped query over the unique
    candidates, then one over the (``len(subvoxel) ** 3 * len(blurs)``) variants of the best one.
    """
    if query.shape[1:] != base.shape[1:]:
        raise ValueError(f"aligned correlation needs volumes of one shape, got {tuple(query.shape[1:])} and {tuple(base.shape[1:])}")
    if len(shortlist) != len(query):
        raise ValueError(f"shortlist has {len(shortlist)} rows for {len(query)} query volumes")
    cfg.validate(query.shape)
    from tqdm.auto import tqdm

    q_s, b_s = smooth(query, cfg.sigma), smooth(base, cfg.sigma)
    found: list[Alignment] = []
    blurred: dict[tuple[int, float], torch.Tensor] = {}
    with torch.no_grad():
        for i in tqdm(range(len(query)), desc="aligned correlation", disable=not progress):
            cand = torch.unique(shortlist[i])
            found.append(_align_one(q_s[i], base, cand, b_s[cand], cfg, blurred))
    values = torch.tensor([a.correlation for a in found], dtype=torch.float32)
    indices = torch.tensor([a.base_index for a in found], dtype=torch.int64)
    return Nearest(values, indices), found


def aligned_nearest(query: torch.Tensor, base: torch.Tensor, shortlist: torch.Tensor,
                    cfg: AlignConfig = AlignConfig(), progress: bool = False) -> Nearest:
    """The :class:`~memostudy.detect.similarity.Nearest` of :func:`aligned_search` (best-aligned
    shortlisted base volume per query and their correlation, higher = more similar)."""
    return aligned_search(query, base, shortlist, cfg, progress)[0]


def align_pairs(query: torch.Tensor, base: torch.Tensor, pairs: list[tuple[int, int]],
                cfg: AlignConfig = AlignConfig(), progress: bool = False) -> list[Alignment]:
    """The :class:`Alignment` of given (query index, base index) pairs, e.g. flagged copies and the training
    volume a detector matched them to: the aligned search with a shortlist of that one base volume.

    Args:
        query: (Nq, C, D, H, W); base: (Nb, C, D, H, W) of the same shape.
        pairs: (query index, base index) per pair.
        cfg: the alignment settings.
        progress: a progress bar (with ETA) over the pairs, shown once aligning has taken 2 s.
    """
    from tqdm.auto import tqdm

    if not pairs:
        return []
    if query.shape[1:] != base.shape[1:]:
        raise ValueError(f"aligned correlation needs volumes of one shape, got {tuple(query.shape[1:])} and {tuple(base.shape[1:])}")
    cfg.validate(query.shape)
    # smoothed one volume at a time, each query once (pairs in query order) and each base volume once: smoothing
    # every flagged volume in one batch took several copies of them (gigabytes at 256 x 256 x 32)
    order = sorted(range(len(pairs)), key=lambda k: pairs[k])
    found: list[Alignment | None] = [None] * len(pairs)
    smoothed_base: dict[int, torch.Tensor] = {}
    current: tuple[int, torch.Tensor] | None = None
    with torch.no_grad():
        for k in tqdm(order, desc=f"aligning {len(pairs)} flagged pairs (evidence)", delay=2, disable=not progress):
            q, b = pairs[k]
            if current is None or current[0] != q:
                current = (q, smooth(query[q:q + 1], cfg.sigma)[0])
            if b not in smoothed_base:
                smoothed_base[b] = smooth(base[b:b + 1], cfg.sigma)[0]
            found[k] = _align_one(current[1], base, torch.tensor([b]), smoothed_base[b][None], cfg)
    return found  # type: ignore[return-value]
