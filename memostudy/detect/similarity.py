"""Nearest-neighbour search: the one similarity search of the project (embeddings and voxels alike).

Every score here means **higher = more similar**:

- ``"pearson"``: Pearson correlation of two vectors (each row centred and scaled to unit norm, then a
  dot product), in [-1, 1]. The journal version of the study uses it on embeddings; Akbar et al.
  use it on voxels (:mod:`memostudy.detect.baseline`).
- ``"msd"``: the *negative* mean squared distance ``-mean((q - b) ** 2)`` over the vector's entries,
  in (-inf, 0]; 0 means identical. The conference version of the study reports MSD (lower = closer);
  negate a value to read it as MSD.

The search is a loop over blocks of ``chunk`` query rows x ``base_chunk`` base rows, each block one
matrix product (GEMM) followed by a running max; no Python loop over pairs, and the extra memory is
one ``chunk x base_chunk`` block plus the prepared (centred) copies of the two blocks' rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

METRICS = ("pearson", "msd")


class Nearest(NamedTuple):
    """Result of :func:`nearest`.

    Attributes:
        values: (Nq,) float32 similarity of each query row to its nearest base row (higher = more similar).
        indices: (Nq,) int64 index of that base row.
    """

    values: torch.Tensor
    indices: torch.Tensor


def normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows scaled to unit L2 norm. ``x``: (N, F) -> (N, F); an all-zero row stays zero."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def standardise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows centred and scaled to unit L2 norm, so ``a @ b.T`` is the Pearson correlation of rows.

    ``x``: (N, F) -> (N, F) float32, a new tensor (``x`` is not changed). A constant row becomes all
    zeros (correlation 0 with anything). One allocation: the centred copy is scaled in place.
    """
    x = x.float()
    centred = x - x.mean(dim=1, keepdim=True)
    return centred.div_(torch.linalg.vector_norm(centred, dim=1, keepdim=True).clamp_min(eps))


def _check(query: torch.Tensor, base: torch.Tensor, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if query.dim() != 2 or base.dim() != 2 or query.shape[1] != base.shape[1]:
        raise ValueError(f"query and base must be (N, F) with the same F, got {tuple(query.shape)} and {tuple(base.shape)}")
    if len(base) == 0:
        raise ValueError("base is empty: nothing to search")


def nearest(query: torch.Tensor, base: torch.Tensor, metric: str = "pearson",
            chunk: int = 1024, base_chunk: int = 2048, progress: str | None = None) -> Nearest:
    """For every query row, the most similar base row.

    Args:
        query: (Nq, F) vectors (embeddings, or flattened volumes).
        base: (Nb, F) vectors.
        metric: "pearson" (correlation in [-1, 1]) or "msd" (negative mean squared distance, <= 0);
            higher = more similar for both.
        chunk: query rows per block.
        base_chunk: base rows per block; a block's score matrix is ``chunk x base_chunk`` float32
            (the default 1024 x 2048 = 8 MiB).
        progress: the description of a progress bar (with ETA) over the query blocks, shown once the search has
            taken 2 s; None: no bar.

    Returns:
        :class:`Nearest` with ``values`` (Nq,) and ``indices`` (Nq,). Ties go to the lowest index.

    Cost: one GEMM per block plus one pass over each side per preparation. The base rows are
    prepared (centred and scaled, for Pearson) once when they fit one block, else once per query
    block; the query rows are only centred, and their norm is divided out after the max (it is a
    constant per row), which saves a pass over the query data.
    """
    _check(query, base, metric)
    nq, f = query.shape
    values = torch.empty(nq, dtype=torch.float32)
    indices = torch.empty(nq, dtype=torch.int64)
    single = len(base) <= base_chunk
    prepared = _prepare_base(base, metric) if single else None
    from tqdm.auto import tqdm

    with torch.no_grad():
        for q0 in tqdm(range(0, nq, chunk), desc=progress, delay=2, disable=progress is None):
            q, qscale = _prepare_query(query[q0:q0 + chunk], metric)
            best = torch.full((len(q),), -float("inf"))
            arg = torch.zeros(len(q), dtype=torch.int64)
            for b0 in range(0, len(base), base_chunk):
                b, bsq = prepared if single else _prepare_base(base[b0:b0 + base_chunk], metric)  # type: ignore[misc]
                if metric == "pearson":
                    block = q @ b.T
                else:
                    # -(|q|^2 + |b|^2 - 2 q.b): the |q|^2 term is constant per row, added after the max
                    block = torch.addmm(-bsq.unsqueeze(0), q, b.T, alpha=2.0)  # type: ignore[union-attr]
                m, i = block.max(dim=1)
                better = m > best
                best = torch.where(better, m, best)
                arg = torch.where(better, i + b0, arg)
            best = best / qscale if metric == "pearson" else (best - qscale) / f
            values[q0:q0 + len(q)] = best
            indices[q0:q0 + len(q)] = arg
    return Nearest(values, indices)


def set_nearest(query: torch.Tensor, base: torch.Tensor, metric: str = "pearson",
                block: int = 2**23) -> tuple[Nearest, Nearest]:
    """Nearest neighbours between two sets of items that are each given by several vectors.

    The similarity of query item ``a`` and base item ``b`` is the highest similarity between any of
    ``a``'s ``K`` vectors and any of ``b``'s ``J`` vectors. The contrastive detector uses it with a
    query volume's orientations as its ``K`` vectors and a training volume's small shifts as its ``J``
    (:mod:`memostudy.detect.matching`), so a flipped, rotated or shifted copy meets its source as it was.
    With ``K = J = 1`` it is :func:`nearest` in both directions.

    Args:
        query: (K, Nq, F) vectors.
        base: (J, Nb, F) vectors.
        metric: "pearson" or "msd", as in :func:`nearest` (higher = more similar).
        block: float32 entries of one block of scores (``chunk x J x Nb``; default 2^23 = 32 MiB),
            which bounds the extra memory besides the prepared base (``J x Nb x F``).

    Returns:
        ``(query_to_base, base_to_query)``: for each query item its most similar base item, and for
        each base item its most similar query item (:class:`Nearest`; ties go to the lowest index).
    """
    if query.dim() != 3 or base.dim() != 3 or query.shape[2] != base.shape[2]:
        raise ValueError(f"query and base must be (K, N, F) with the same F, got {tuple(query.shape)} and {tuple(base.shape)}")
    _check(query[0], base[0], metric)
    k_q, nq, f = query.shape
    j_b, nb, _ = base.shape
    b, bsq = _prepare_base(base.reshape(j_b * nb, f), metric)
    chunk = max(1, block // max(1, j_b * nb))
    q2b = Nearest(torch.empty(nq), torch.empty(nq, dtype=torch.int64))
    b2q = Nearest(torch.full((nb,), -float("inf")), torch.zeros(nb, dtype=torch.int64))
    with torch.no_grad():
        for q0 in range(0, nq, chunk):
            n = min(chunk, nq - q0)
            pair = torch.full((n, nb), -float("inf"))
            for k in range(k_q):
                q, qsq = _prepare_base(query[k, q0:q0 + n], metric)
                scores = q @ b.T if metric == "pearson" else \
                    torch.addmm(bsq.unsqueeze(0) + qsq.unsqueeze(1), q, b.T, alpha=-2.0).div_(-f)  # type: ignore[union-attr]
                torch.maximum(pair, scores.view(n, j_b, nb).amax(dim=1), out=pair)
            m, i = pair.max(dim=1)
            q2b.values[q0:q0 + n], q2b.indices[q0:q0 + n] = m, i
            m, i = pair.max(dim=0)
            better = m > b2q.values
            b2q.values[better], b2q.indices[better] = m[better], i[better] + q0
    return q2b, b2q


def _prepare_query(x: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson: (centred rows, their norms, clamped so a constant row scores 0); MSD: (rows, |row|^2)."""
    x = x.float()
    if metric == "pearson":
        centred = x - x.mean(dim=1, keepdim=True)
        return centred, torch.linalg.vector_norm(centred, dim=1).clamp_min(1e-12)
    return x, x.pow(2).sum(1)


def _prepare_base(x: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pearson: (rows standardised as in :func:`standardise`, None); MSD: (rows, |row|^2)."""
    x = x.float()
    if metric == "pearson":
        return standardise(x), None
    return x, x.pow(2).sum(1)


def similarity_matrix(query: torch.Tensor, base: torch.Tensor, metric: str = "pearson") -> torch.Tensor:
    """The full (Nq, Nb) similarity matrix (higher = more similar); for small sets, figures and tests."""
    _check(query, base, metric)
    q, _ = _prepare_base(query, metric)
    b, bsq = _prepare_base(base, metric)
    if metric == "pearson":
        return q @ b.T
    return -(q.pow(2).sum(1, keepdim=True) + bsq.unsqueeze(0) - 2 * q @ b.T) / query.shape[1]  # type: ignore[union-attr]
