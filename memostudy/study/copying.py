"""Continuous statistics of copying, beside the thresholded fractions of :mod:`memostudy.detect`.

The memorized and copy fractions count volumes above one threshold (the 95th percentile of the reference
volumes' similarity), so with a few dozen volumes they move in steps of a few percent and most settings of a
quick sweep read 0 or a handful: the seed-to-seed spread swamps any difference. The statistics here use
every volume, so a shift of the whole distribution towards the training set shows before volumes cross the
threshold:

- :func:`cliffs_delta` -- an effect size of the shift of the synthetic volumes' nearest-training similarity
  against the reference volumes' (Cliff 1993), with a bootstrap CI. In (-1, 1); > 0: synthetic volumes
  are closer to their nearest training volume than real unseen volumes are.
- :func:`data_copying_ct` -- the data-copying test statistic C_T of Meehan, Chaudhuri & Dasgupta,
  "A Non-Parametric Test to Detect Data-Copying in Generative Models" (AISTATS 2020). Roughly a z-score;
  << 0: data copying, ~ 0: generated volumes are as far from the training set as held-out ones,
  >> 0: under-fitting.
- :func:`authenticity` -- the authenticity fraction of Alaa, van Breugel, Saveliev & van der Schaar,
  "How Faithful is your Synthetic Data? Sample-level Metrics for Evaluating and Auditing Generative
  Models" (ICML 2022). In [0, 1]; low: many synthetic volumes sit closer to a training volume than
  that training volume's own nearest real neighbour (copies).

No maintained light package computes C_T or authenticity (``synthcity`` does the latter but is a heavy
framework), so they are written here on scipy's Mann-Whitney U and scikit-learn's k-means and nearest
neighbours. :func:`copying_statistics` computes all three for one checkpoint of a study run: Cliff's delta
on the detector's own nearest similarities (the ones its threshold uses), C_T and authenticity on the
detector's 32-d embeddings (Euclidean distance between L2-normalised rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from memostudy.detect.assessment import Assessment
from memostudy.detect.detector import Detector
from memostudy.seeds import Stream, numpy_rng

__all__ = ["CopyingTest", "Effect", "authenticity", "cliffs_delta", "copying_statistics", "data_copying_ct"]


@dataclass(frozen=True)
class Effect:
    """An effect size with its bootstrap confidence interval."""

    value: float
    lo: float
    hi: float


def _delta(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cliff's delta from the Mann-Whitney U of ``x`` (the number of pairs x > y, ties counted half):
    delta = P(X > Y) - P(X < Y) = 2 U / (n m) - 1."""
    u = stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic
    return 2.0 * u / (x.shape[axis] * y.shape[axis]) - 1.0


def cliffs_delta(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Effect:
    """Cliff's delta of ``x`` against ``y`` with a percentile bootstrap CI (both samples resampled).

    Cliff, "Dominance statistics: Ordinal analyses to answer ordinal questions", Psychological Bulletin
    114 (1993): delta = P(X > Y) - P(X < Y), estimated over all pairs. Here ``x`` are the synthetic volumes'
    nearest-training similarities and ``y`` the reference volumes' (higher = more similar), so delta > 0
    means the synthetic volumes sit closer to the training set than real unseen volumes do; 1 = every
    synthetic volume closer than every reference volume.

    Args:
        x: (n,) values; y: (m,) values (non-finite values are dropped).
        n_boot: bootstrap replicates of the interval.
        confidence: interval level.
        seed: bootstrap seed.

    Returns:
        :class:`Effect` in [-1, 1]; NaN when a sample is empty.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        return Effect(float("nan"), float("nan"), float("nan"))
    value = float(_delta(x, y))
    if x.size < 2 or y.size < 2 or np.ptp(np.concatenate([x, y])) == 0:
        return Effect(value, value, value)
    res = stats.bootstrap((x, y), _delta, n_resamples=n_boot, confidence_level=confidence, method="percentile",
                          vectorized=True, random_state=numpy_rng(Stream.BOOTSTRAP, seed))
    return Effect(value, float(res.confidence_interval.low), float(res.confidence_interval.high))


@dataclass(frozen=True)
class CopyingTest:
    """The data-copying test of Meehan et al. (2020).

    Attributes:
        c_t: the statistic (test-share-weighted mean of the cells' Z_U); NaN when no cell qualifies.
        z: (k,) Z_U per cell (NaN where a cell has no test or no generated volume).
        test_share: (k,) share of the test volumes in each cell (the weights).
        used: (k,) bool, the cells that entered C_T (enough generated volumes).
    """

    c_t: float
    z: np.ndarray
    test_share: np.ndarray
    used: np.ndarray


def _nearest(points: np.ndarray, base: np.ndarray, k: int = 1) -> np.ndarray:
    """(len(points), k) Euclidean distances to the ``k`` nearest rows of ``base``."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(base).kneighbors(points)[0]


def _z_u(test_dist: np.ndarray, gen_dist: np.ndarray) -> float:
    """Z-scored Mann-Whitney U of the generated volumes' distances against the test volumes' (Meehan et al.,
    eq. for Z_U): U counts pairs where the generated volume is farther from the training set; under H0
    (equal distributions) U has mean nm/2 and variance nm(n+m+1)/12; 0.5 is the continuity correction of the
    authors' code. Z_U << 0: generated volumes are closer to the training set than test volumes."""
    n, m = len(test_dist), len(gen_dist)
    u = stats.mannwhitneyu(gen_dist, test_dist, method="asymptotic").statistic
    return float((u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12))


def data_copying_ct(train: np.ndarray, test: np.ndarray, generated: np.ndarray, n_cells: int | None = None,
                    min_generated: int = 20, seed: int = 0) -> CopyingTest:
    """The data-copying statistic C_T of Meehan, Chaudhuri & Dasgupta (AISTATS 2020).

    The space is cut into cells by k-means on the training points; in each cell, the distances of the
    test points and of the generated points to their nearest training point *of that cell* are compared
    by a Z-scored Mann-Whitney U (:func:`_z_u`); C_T is the mean of the cells' Z_U weighted by the share of
    test points in each cell, over the cells holding at least ``min_generated`` generated points (the
    paper's tau = min_generated / m; the authors' code uses 20 / m).

    Reading it: C_T << 0 (e.g. < -3) means data copying, ~0 no detectable difference from held-out data,
    >> 0 under-fitting (generated points farther from the training set than held-out ones).

    Args:
        train: (l, d) training points (e.g. detector embeddings of the training volumes).
        test: (n, d) held-out real points never trained on (the reference volumes).
        generated: (m, d) generated points.
        n_cells: k of k-means; None = ``max(1, min(n, m) // 40)`` (a few dozen volumes per cell: the
            small sets of a quick sweep mostly give one cell, i.e. one global Mann-Whitney test).
        min_generated: generated points a cell needs to count (capped at m, so one cell always counts).
        seed: k-means seed.

    Returns:
        :class:`CopyingTest`.
    """
    from sklearn.cluster import KMeans

    train, test, generated = (np.asarray(a, dtype=np.float64) for a in (train, test, generated))
    n, m = len(test), len(generated)
    k = max(1, min(n, m) // 40) if n_cells is None else int(n_cells)
    k = min(k, len(train))
    if k == 1:
        cells_t, cells_p, cells_q = (np.zeros(len(a), dtype=int) for a in (train, test, generated))
    else:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(train)
        cells_t, cells_p, cells_q = km.labels_, km.predict(test), km.predict(generated)
    z = np.full(k, np.nan)
    share = np.bincount(cells_p, minlength=k) / max(n, 1)
    counts_q = np.bincount(cells_q, minlength=k)
    for c in range(k):
        p, q, t = test[cells_p == c], generated[cells_q == c], train[cells_t == c]
        if len(p) and len(q) and len(t):
            z[c] = _z_u(_nearest(p, t)[:, 0], _nearest(q, t)[:, 0])
    used = (counts_q >= min(min_generated, m)) & np.isfinite(z) & (share > 0)
    c_t = float(np.sum(share[used] * z[used]) / np.sum(share[used])) if used.any() else float("nan")
    return CopyingTest(c_t=c_t, z=z, test_share=share, used=used)


def authenticity(real: np.ndarray, generated: np.ndarray) -> float:
    """The authenticity fraction of Alaa et al. (ICML 2022, section 3.3): the share of generated points that
    are *not* closer to their nearest real (training) point than that real point is to its own nearest
    other real point.

    For generated point g_j with nearest real point r_i*, the paper's authenticity indicator is
    A_j = 1{d(g_j, r_i*) > d(r_i*, nearest other real point)}; a copy (distance 0) is unauthentic.
    Real points from the training distribution that were never trained on do not score 1 either (a held-out
    point is often nearer a training point than that point's own nearest neighbour), so read it against the
    same fraction of the reference volumes.

    Args:
        real: (l, d) training points, l >= 2.
        generated: (m, d) generated points.

    Returns:
        Fraction in [0, 1].
    """
    real = np.asarray(real, dtype=np.float64)
    generated = np.asarray(generated, dtype=np.float64)
    if len(real) < 2:
        raise ValueError("authenticity needs at least two real points")
    from sklearn.neighbors import NearestNeighbors

    real_nn = _nearest(real, real, k=2)[:, 1]  # column 0 is the point itself
    d, idx = NearestNeighbors(n_neighbors=1).fit(real).kneighbors(generated)
    return float(np.mean(d[:, 0] > real_nn[idx[:, 0]]))


def copying_statistics(assessment: Assessment, detector: Detector, train: torch.Tensor, reference: torch.Tensor,
                       synthetic: torch.Tensor) -> dict[str, float]:
    """The three continuous statistics of one assessment (e.g. one checkpoint of a study run).

    Cliff's delta uses the contrastive detector's nearest similarities of the assessment (synthetic vs
    reference, the numbers its threshold is set on). C_T and authenticity use the detector's 32-d embeddings
    without orientation pooling (pooling costs 48 forward passes per volume, 0.60 s instead of 0.012 s per
    32^3 volume measured on a shared CPU core, too slow for every training volume of every setting).

    Args:
        assessment: the assessment of ``synthetic`` against ``train`` (its bootstrap settings are reused).
        detector: the detector that made it.
        train, reference, synthetic: (N, 1, D, H, W) volumes in [-1, 1], as assessed.

    Returns:
        ``similarity_delta`` with ``similarity_delta_lo`` / ``_hi`` (Cliff's delta, 95 % bootstrap CI),
        ``c_t`` (Meehan et al.), ``authenticity`` (synthetic) and ``authenticity_reference`` (the reference
        volumes scored the same way: what a model that does not copy would get).
    """
    from memostudy.detect.detector import embed

    dist = assessment.distributions["contrastive"]
    cfg = assessment.config
    eff = cliffs_delta(dist["synthetic"], dist["reference"], n_boot=cfg.n_boot, confidence=cfg.confidence, seed=cfg.seed)
    e_t, e_r, e_s = (embed(detector, v, orientation_pooling=False).double().numpy()
                     for v in (train, reference, synthetic))
    return {"similarity_delta": eff.value, "similarity_delta_lo": eff.lo, "similarity_delta_hi": eff.hi,
            "c_t": data_copying_ct(e_t, e_r, e_s, seed=cfg.seed).c_t,
            "authenticity": authenticity(e_t, e_s), "authenticity_reference": authenticity(e_t, e_r)}
