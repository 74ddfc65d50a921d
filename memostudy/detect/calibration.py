"""Calibrated copy decisions: conformal p-values, Benjamini-Hochberg false-discovery control, and a
reference degraded to the synthetic set's smoothness.

Scores here are *nearest-training scores*: for a volume, its similarity to the most similar training
volume, higher = more similar (as every score of :mod:`memostudy.detect.similarity`). The *reference*
volumes are real volumes never in training, so their nearest-training scores show what a novel volume
scores; a synthetic volume is a copy candidate when it scores higher than novel volumes do.

- **Conformal p-value** (Vovk et al., *Algorithmic Learning in a Random World*, 2005; Bates et al.,
  "Testing for outliers with conformal p-values", Ann. Statist. 2023): for a synthetic volume with score
  ``s`` and reference scores ``r_1..r_n``, ``p = (1 + #{i: r_i >= s}) / (1 + n)``. Under the null "this
  synthetic volume is novel, exchangeable with the reference", ``P(p <= a) <= a`` for every ``a``: p is
  (super-)uniform. The 95th-percentile rule flags about the volumes with ``p <= 0.05``, one volume at a time.
- **Benjamini-Hochberg** (Benjamini & Hochberg, JRSS-B 1995): over m p-values, flag the k smallest where
  k is the largest index with ``p_(k) <= k q / m``; the expected share of novel volumes among the flagged
  ones is at most q. Conformal p-values sharing one reference are positively dependent (PRDS), for which
  BH keeps its guarantee (Bates et al. 2023).
- **Matched smoothness**: generated volumes are smoother than real ones, and a smoother volume scores
  differently against sharp training volumes, so a threshold calibrated on sharp reference volumes is not
  calibrated for generated ones. :func:`matched_smoothness` blurs the reference until its noise-corrected
  roughness is that of the synthetic set and adds noise to its noise level, so the reference's scores are
  again those of novel volumes *as generated*.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


def conformal_p_values(synthetic_scores, reference_scores) -> np.ndarray:
    """Conformal p-value of each synthetic volume: ``(1 + #{reference >= its score}) / (1 + n_ref)``.

    Args:
        synthetic_scores: (M,) nearest-training score of each synthetic volume (higher = more similar).
        reference_scores: (n_ref,) nearest-training score of each reference volume (n_ref >= 1).

    Returns:
        (M,) float64 in [1 / (1 + n_ref), 1]; small = scores higher than the novel reference volumes do.
        On exchangeable (novel) volumes it is uniform on {1, ..., n_ref + 1} / (n_ref + 1) (ties count
        against a copy, so with ties it is only more conservative).
    """
    s = _scores(synthetic_scores, "synthetic_scores")
    r = np.sort(_scores(reference_scores, "reference_scores"))
    if len(r) == 0:
        raise ValueError("need at least one reference score")
    at_least = len(r) - np.searchsorted(r, s, side="left")  # #{r_i >= s}
    return (1.0 + at_least) / (1.0 + len(r))


def bh_decisions(p_values, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg decisions at false-discovery rate ``q``.

    Args:
        p_values: (M,) p-values in [0, 1].
        q: target false-discovery rate, in (0, 1).

    Returns:
        ``(flagged, adjusted)``: (M,) bool, True for the volumes BH flags (step-up: the k smallest
        p-values, k the largest index with ``p_(k) <= k q / M``); (M,) the BH-adjusted p-values (q-values,
        ``scipy.stats.false_discovery_control``), so ``flagged == adjusted <= q``.
    """
    from scipy.stats import false_discovery_control

    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    p = _scores(p_values, "p_values")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p_values must lie in [0, 1]")
    if len(p) == 0:
        return np.zeros(0, bool), np.zeros(0)
    adjusted = np.asarray(false_discovery_control(p, method="bh"), dtype=np.float64)
    return adjusted <= q, adjusted


@dataclass(frozen=True)
class CopyDecisions:
    """Per synthetic volume: conformal p-value and BH decision.

    Attributes:
        p_values: (M,) conformal p-values (small = more copy-like than the reference).
        q_values: (M,) BH-adjusted p-values.
        flagged: (M,) bool, flagged as copies at false-discovery rate ``q``.
        q: the false-discovery rate.
        n_reference: reference volumes the p-values rest on (the smallest possible p is 1 / (1 + n_reference)).
    """

    p_values: np.ndarray
    q_values: np.ndarray
    flagged: np.ndarray
    q: float
    n_reference: int

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())


def copy_decisions(synthetic_scores, reference_scores, q: float = 0.05) -> CopyDecisions:
    """Conformal p-values of the synthetic volumes against the reference, and BH decisions at ``q``.

    Args:
        synthetic_scores: (M,) nearest-training scores of the synthetic volumes (higher = more similar).
        reference_scores: (n_ref,) nearest-training scores of the reference volumes.
        q: false-discovery rate, in (0, 1).

    The smallest p-value is ``1 / (1 + n_ref)``, so flagging k of M volumes needs
    ``1 / (1 + n_ref) <= k q / M``: with n_ref = 250 and M = 4,000 at q = 0.05 at least 64 volumes must
    stand out together before any is flagged. A small reference limits what a large synthetic set can show.
    """
    p = conformal_p_values(synthetic_scores, reference_scores)
    flagged, adjusted = bh_decisions(p, q)
    return CopyDecisions(p, adjusted, flagged, float(q), len(_scores(reference_scores, "reference_scores")))


def noise_std(volumes: torch.Tensor, progress: str | None = None) -> torch.Tensor:
    """Per volume, the standard deviation of additive white noise, estimated robustly (Donoho &
    Johnstone, "Ideal spatial adaptation by wavelet shrinkage", Biometrika 1994): the median absolute
    finest Haar detail coefficient (a difference along every spatial axis, ``/ sqrt(2^dims)`` so white
    noise keeps its variance) over 0.6745. Smooth anatomy leaves these coefficients near zero and edges
    are few, so the median reads the noise alone (on demo-ct patches: 0.001 without noise, 0.0496 and
    0.0300 with noise of std 0.05 and 0.03 added).

    Args:
        volumes: (N, 1, D, H, W) or (N, 1, H, W).
        progress: the description of a progress bar over the chunks (:func:`per_volume_chunks`); None: none.

    Returns:
        (N,) float32 >= 0, in intensity units.
    """
    def one_chunk(h: torch.Tensor) -> torch.Tensor:
        nd = h.dim() - 2
        for a in range(nd):
            h = torch.diff(h, dim=2 + a)
        return h.flatten(1).abs().median(1).values / (0.6745 * 2 ** (nd / 2))

    return per_volume_chunks(one_chunk, volumes, progress=progress)


def volumes_per_chunk(volumes: torch.Tensor, chunk_mb: float = 256.0) -> int:
    """How many of ``volumes`` (N, C, ...) make about ``chunk_mb`` of float32 (at least 1): the chunk size of
    every whole-set pass that would otherwise hold gigabytes of temporaries."""
    return max(1, int(chunk_mb * 2**20 // (4 * max(1, math.prod(volumes.shape[1:])))))


def per_volume_chunks(fn: Callable[[torch.Tensor], torch.Tensor], volumes: torch.Tensor,
                      chunk_mb: float = 256.0, progress: str | None = None) -> torch.Tensor:
    """``fn`` (a per-volume statistic of an (n, 1, ...) batch -> (n,)) over chunks of about ``chunk_mb`` of float32
    volumes, concatenated: the same values as one call, with the temporaries of one chunk instead of several copies
    of the whole set (800 volumes of 256 x 256 x 32 are 6.7 GB). ``progress``: the description of a progress bar
    (with ETA) over the chunks, shown once it has taken 2 s; None: no bar."""
    from tqdm.auto import tqdm

    if len(volumes) == 0:
        return torch.zeros(0)
    per = volumes_per_chunk(volumes, chunk_mb)
    starts = tqdm(range(0, len(volumes), per), desc=progress, delay=2, disable=progress is None)
    return torch.cat([fn(volumes[i:i + per].float()) for i in starts])


def roughness(volumes: torch.Tensor, progress: str | None = None) -> torch.Tensor:
    """Per volume, the squared gradient over the variance of the signal, with the white noise of
    :func:`noise_std` taken out of both: ``(D1 - 2 s^2) / (Var - s^2)``, where ``D1`` is the mean squared
    one-voxel difference (averaged over the axes) and ``s`` the noise std. Lower = smoother.

    Why: by Parseval ``D1 / Var`` is the power spectrum's mean of ``2 (1 - cos k)`` (about ``|k|^2``), the
    mean squared spatial frequency, which is what a blur lowers (it multiplies the spectrum by
    ``exp(-sigma^2 k^2)``); white noise of std s would add ``2 s^2`` to ``D1`` and ``s^2`` to ``Var`` and
    read as sharpness, so it is removed. On demo-ct: 0.090 for real patches, 0.028 after a blur of sigma 1,
    0.027 for the same blur plus noise of std 0.05 (0.112 before the noise is taken out). Intensity scale
    and offset cancel.

    Args:
        volumes: (N, 1, D, H, W) or (N, 1, H, W).
        progress: the description of a progress bar over the chunks (:func:`per_volume_chunks`); None: none.

    Returns:
        (N,) float32 >= 0 (0 for a constant volume).
    """
    def one_chunk(x: torch.Tensor) -> torch.Tensor:
        nd = x.dim() - 2
        d1 = sum(torch.diff(x, dim=2 + a).pow(2).flatten(1).mean(1) for a in range(nd)) / nd
        s2 = noise_std(x).pow(2)
        var = x.flatten(1).var(1, unbiased=False) - s2
        return torch.where(var > 1e-12, (d1 - 2 * s2).clamp_min(0) / var.clamp_min(1e-12), torch.zeros_like(var))

    return per_volume_chunks(one_chunk, volumes, progress=progress)


def blur(volumes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``sigma`` voxels on every spatial axis of ``(N, C, D, H, W)`` volumes or ``(N, C, H, W)``
    images (MONAI ``GaussianFilter``, separable); sigma 0 = a copy. In chunks of about 32 MB of volumes
    (:func:`per_volume_chunks`): the filter's temporaries are about 30 times its input, 15 GB for 4,000 volumes
    of 32^3 in one call (the papers'-scale audit's peak)."""
    from monai.networks.layers import GaussianFilter

    if sigma <= 0 or len(volumes) == 0:
        return volumes.float().clone()
    with torch.no_grad():
        return per_volume_chunks(GaussianFilter(volumes.dim() - 2, float(sigma)), volumes, chunk_mb=32)


@dataclass(frozen=True)
class MatchedReference:
    """Result of :func:`matched_smoothness`; the statistics are set medians of :func:`roughness` and
    :func:`noise_std`.

    Attributes:
        reference: (N, 1, ...) the reference blurred by ``sigma``, with white noise of std ``noise`` added,
            clipped to [-1, 1].
        sigma: Gaussian sigma in voxels (0 when the synthetic set is no smoother than the reference).
        noise: std of the added noise (0 = none).
        reference_roughness, synthetic_roughness, matched_roughness: before, target, after.
        reference_noise, synthetic_noise, matched_noise: the same for the noise std.
    """

    reference: torch.Tensor
    sigma: float
    noise: float
    reference_roughness: float
    synthetic_roughness: float
    matched_roughness: float
    reference_noise: float
    synthetic_noise: float
    matched_noise: float


def matched_smoothness(reference: torch.Tensor, synthetic: torch.Tensor, match_noise: bool = True, seed: int = 0,
                       max_sigma: float = 4.0, steps: int = 16) -> MatchedReference:
    """The reference degraded to look like the synthetic set: blurred to its smoothness, then noised to its
    noise level, so that the reference's nearest-training scores are those of novel volumes *as the
    generator renders them*, and a threshold or p-value calibrated on them holds for the synthetic set.

    Estimator: the set median of :func:`roughness` (mean squared spatial frequency with the white noise
    taken out). A Gaussian blur of sigma multiplies the power spectrum by ``exp(-sigma^2 |k|^2)``, which
    lowers it monotonically in sigma, so the sigma at which the blurred reference reaches the synthetic
    set's median is found by bisection. Noise is matched apart: white noise is added so the reference's
    median :func:`noise_std` reaches the synthetic set's (variances add). Medians keep a few odd volumes
    from moving either. Separating the two matters because generated volumes are smooth *and* noisy: a
    plain gradient-energy ratio reads their noise as sharpness and would not blur the reference at all.
    Why calibrate on degraded volumes: a correlation or an encoder response of a smoother volume loses the
    fine detail it shares with a sharp training volume, so novel generated volumes score differently from
    novel sharp ones (issue 17: false positives were mostly blurred or noised real novel volumes).

    Caveat: the synthetic set holds copies as well as novel volumes; the medians are over all of it,
    which is right when copies are rendered like every other sample.

    Args:
        reference: (N, 1, D, H, W) or (N, 1, H, W) real novel volumes in [-1, 1] (the calibration set).
        synthetic: (M, 1, ...) the volumes to be assessed (same spatial rank).
        match_noise: also match the noise level (else blur only).
        seed: seed of the added noise.
        max_sigma: largest blur searched, in voxels.
        steps: bisection steps (16 resolve sigma to max_sigma / 2^16).

    Returns:
        :class:`MatchedReference`.
    """
    if reference.dim() != synthetic.dim() or reference.dim() not in (4, 5):
        raise ValueError(f"reference and synthetic must both be (N, 1, D, H, W) or (N, 1, H, W), "
                         f"got {tuple(reference.shape)} and {tuple(synthetic.shape)}")

    def med(x: torch.Tensor) -> float:
        return float(x.median())

    target, start = med(roughness(synthetic)), med(roughness(reference))
    lo = hi = 0.0
    if target < start:
        hi = float(max_sigma)
        if med(roughness(blur(reference, hi))) > target:  # smoother than the largest blur searched
            lo = hi
        for _ in range(steps if lo < hi else 0):
            mid = (lo + hi) / 2
            if med(roughness(blur(reference, mid))) > target:
                lo = mid
            else:
                hi = mid
    sigma = (lo + hi) / 2
    out = blur(reference, sigma)
    target_noise, start_noise = med(noise_std(synthetic)), med(noise_std(reference))
    added = 0.0
    if match_noise:
        added = max(target_noise**2 - med(noise_std(out)) ** 2, 0.0) ** 0.5
        if added > 0:
            out = out + added * torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    out = out.clamp(-1, 1)
    return MatchedReference(out, sigma, added, start, target, med(roughness(out)), start_noise, target_noise,
                            med(noise_std(out)))
