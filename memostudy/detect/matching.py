"""How the contrastive detector compares volumes: the vectors it puts side by side, and the search.

With ``DetectorConfig.representation = "latent"`` (the default) a volume is described by the
encoder's latent map (8 x 4 x 4 x 4 = 512 values for the default detector), flattened. That map keeps
the spatial layout, so it is not invariant to flips, rotations or shifts; the search makes up for it:

- a *query* volume (synthetic, reference, or a known copy) is encoded in each of its shape-preserving
  orientations (48 for a cube): ``K`` vectors;
- a *base* (training) volume is encoded at each shift of :func:`shift_grid` (``{-s, 0, s}^3`` voxels,
  27 shifts): ``J`` vectors;
- the similarity of a pair is the best Pearson correlation (or negative MSD) over the ``K x J``
  vector pairs (:func:`memostudy.detect.similarity.set_nearest`, chunked GEMMs).

With ``representation = "embedding"`` each volume is one vector, the 32-d head output averaged over
orientations (:func:`memostudy.detect.detector.embed`), as in the papers; ``K = J = 1``.

Why the latent map: the dense head is trained to map all views of a volume to one point, and in doing
so discards the detail that tells a novel volume from a shifted or blurred copy; on demo-ct's detector
validation the same trained encoder found 0.69 of the known copies at specificity 0.975 through its 32-d
embedding and 0.97 at specificity 0.93 through the latent search (README, "Detector validation"). This is the usual finding for contrastive learning (SimCLR: the
representation before the projection head transfers better).
"""

from __future__ import annotations

import itertools

import torch

from memostudy.detect.detector import Detector, embed
from memostudy.detect.views import orient, orientations, shape_preserving, translate
from memostudy.errors import ConfigError


def shift_grid(step: float) -> list[tuple[float, float, float]]:
    """The shifts a base volume is encoded at: every (d, h, w) in {-step, 0, step}^3, no shift first;
    just ``[(0, 0, 0)]`` when ``step`` is 0."""
    if step == 0:
        return [(0.0, 0.0, 0.0)]
    s = float(step)
    return list(itertools.product((0.0, -s, s), repeat=3))  # type: ignore[arg-type]


def latent_vectors(detector: Detector, volumes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 1, D, H, W) -> (N, F): the encoder's latent map of each volume (pooled to ``latent_size^3``),
    flattened; F = latent_channels x latent_size^3."""
    net = detector.net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(volumes), batch_size):
            out.append(net.latent(volumes[i:i + batch_size].float()).flatten(1))
    return torch.cat(out) if out else torch.empty(0, detector.config.latent_channels * detector.config.latent_size**3)


def query_vectors(detector: Detector, volumes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The vectors of volumes that are looked up (synthetic, reference, copies): (K, N, F), one slice
    per shape-preserving orientation (identity first) with ``"latent"``; (1, N, 32) with ``"embedding"``."""
    if detector.config.representation == "embedding":
        return embed(detector, volumes, batch_size).unsqueeze(0)
    table = orientations()
    return torch.stack([latent_vectors(detector, orient(volumes, table[k]).contiguous(), batch_size)
                        for k in shape_preserving(volumes.shape)])


def base_vectors(detector: Detector, volumes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The vectors of the volumes searched (training): (J, N, F), one slice per shift of
    :func:`shift_grid` (no shift first) with ``"latent"``; (1, N, 32) with ``"embedding"``.

    Raises:
        ConfigError: ``search_shift`` is not smaller than half the smallest volume side.
    """
    cfg = detector.config
    if cfg.representation == "embedding":
        return embed(detector, volumes, batch_size).unsqueeze(0)
    if volumes.dim() == 5 and 2 * cfg.search_shift >= min(volumes.shape[2:]):
        raise ConfigError(f"detector.search_shift {cfg.search_shift} is too large for volumes of "
                          f"{tuple(volumes.shape[2:])}; use less than half the smallest side")
    out = []
    for s in shift_grid(cfg.search_shift):
        moved = volumes if s == (0.0, 0.0, 0.0) else translate(volumes.float(), torch.tensor([s] * len(volumes)))
        out.append(latent_vectors(detector, moved, batch_size))
    return torch.stack(out)

