"""Sample quality for the over-training experiment: diversity (MS-SSIM) and a Fréchet distance;
:func:`sample_quality` gives both for one checkpoint of a study run.

Pretrained FID networks cannot be downloaded here, so the Fréchet distance is computed on the
copy detector's embeddings (MONAI's ``FIDMetric`` takes feature vectors); it is comparable
between settings that use the same detector, not with published FID values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from memostudy.seeds import Stream, generator

if TYPE_CHECKING:
    from memostudy.study.memorization import MemorizationResult

_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # the standard 5-scale weights


def ms_ssim_scales(size: int, kernel_size: int = 4) -> tuple[float, ...]:
    """The standard MS-SSIM weights truncated to the scales a volume of edge ``size`` supports.

    Uses MONAI's own admissibility rule (``size // (n_scales - 1) ** 2 > kernel_size - 1``), so
    32^3 supports 3 scales and 64^3 (or a 64 x 64 image) all 5.
    """
    n = 5
    while n > 1 and size // max(1, n - 1) ** 2 <= kernel_size - 1:
        n -= 1
    w = torch.tensor(_MS_SSIM_WEIGHTS[:n])
    return tuple(float(x) for x in w / w.sum())


def ms_ssim_diversity(volumes: torch.Tensor, n_pairs: int = 64, seed: int = 0, kernel_size: int = 4) -> float:
    """Mean MS-SSIM over random pairs of distinct volumes: lower means more diverse samples.

    Args:
        volumes: (N, 1, D, H, W) float32 in [-1, 1], N >= 2; or images (N, 1, H, W) (2D MS-SSIM).
        n_pairs: number of random pairs (seeded).

    Returns:
        Mean MS-SSIM in [0, 1] (1 = identical pairs).
    """
    from monai.metrics import MultiScaleSSIMMetric

    n = volumes.shape[0]
    if n < 2:
        raise ValueError("ms_ssim_diversity needs at least two volumes")
    g = generator(Stream.QUALITY, seed)
    i = torch.randint(0, n, (n_pairs,), generator=g)
    j = (i + torch.randint(1, n, (n_pairs,), generator=g)) % n  # j != i
    metric = MultiScaleSSIMMetric(spatial_dims=volumes.ndim - 2, data_range=2.0, kernel_size=kernel_size,
                                  weights=ms_ssim_scales(min(volumes.shape[2:]), kernel_size))
    with torch.no_grad():
        vals = metric(volumes[i].float(), volumes[j].float())
    return float(vals.mean())


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between two sets of feature vectors (N, F) and (M, F); 0 = same Gaussian."""
    from monai.metrics import FIDMetric

    return float(FIDMetric()(features_a.double(), features_b.double()))


def reference_quality(result: MemorizationResult, n_pairs: int = 64) -> dict[str, Any]:
    """What :func:`sample_quality` compares every checkpoint with, computed once per run: the detector
    embeddings of the reference volumes (``"embedding"``) and their MS-SSIM diversity (``"ms_ssim_reference"``).

    Embedding the reference with orientation pooling costs about 0.6 s per 32^3 volume on one CPU core, so
    redoing it for each of an over-training run's snapshots cost minutes per snapshot.
    """
    from memostudy.detect.detector import embed

    pool = result.config.assessment.compare.orientation_pooling
    return {"embedding": embed(result.detector, result.reference.volumes, orientation_pooling=pool),
            "ms_ssim_reference": ms_ssim_diversity(result.reference.volumes, n_pairs=n_pairs, seed=0)}


def sample_quality(result: MemorizationResult, checkpoint: str | int, n_pairs: int = 64,
                   reference: dict[str, Any] | None = None) -> dict[str, float]:
    """Sample quality of one checkpoint of a study run: MS-SSIM diversity of the samples (lower = more
    diverse; the real reference's value beside it) and the Fréchet distance between detector embeddings
    of samples and reference volumes (an FID stand-in: pretrained FID networks cannot be downloaded).

    Args:
        reference: :func:`reference_quality` of ``result`` (computed here when None); pass it when scoring
            several checkpoints of one run.

    Returns:
        ``{"ms_ssim", "ms_ssim_reference"}`` in [0, 1] and ``"frechet_embedding"`` >= 0.
    """
    from memostudy.detect.detector import embed

    ref = reference if reference is not None else reference_quality(result, n_pairs)
    s = result.samples[str(checkpoint)]
    pool = result.config.assessment.compare.orientation_pooling
    e_s = embed(result.detector, s.volumes, orientation_pooling=pool)
    return {"ms_ssim": ms_ssim_diversity(s.volumes, n_pairs=n_pairs, seed=result.config.seed),
            "ms_ssim_reference": ref["ms_ssim_reference"],
            "frechet_embedding": frechet_distance(e_s, ref["embedding"])}
