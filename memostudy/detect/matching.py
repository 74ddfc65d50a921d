"""How the contrastive detector compares volumes: the vectors it puts side by side, and the search.

The settings are a :class:`CompareConfig`, apart from the detector's own config: they change how a
trained detector compares volumes, never its weights, so the assessment and the validation choose them
for any detector, loaded or trained.

With ``CompareConfig.representation = "latent"`` (the default) a volume is described by the
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

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from memostudy.config import apply_overrides
from memostudy.detect.detector import Detector, DetectorConfig, embed
from memostudy.detect.views import orient, orientations, shape_preserving, translate
from memostudy.errors import ConfigError

#: what the detector compares: see :attr:`CompareConfig.representation`
REPRESENTATIONS = ("latent", "embedding")


@dataclass
class CompareConfig:
    """How a trained contrastive detector compares two volumes (not part of its checkpoint).

    Attributes:
        representation: ``"latent"`` (default): the encoder's latent map (``latent_channels x
            latent_size^3`` = 8 x 4 x 4 x 4, the papers' "4 x 4 x 4 x 8"), with each query volume searched
            over its orientations and each training volume over shifts of ``search_shift`` voxels;
            ``"embedding"``: the 32-d output of the dense head, one vector per volume, as in the papers.
            The contrastive head is trained to ignore the differences between views, and loses detail
            that tells a novel volume from a copy: on demo-ct's validation the latent search reaches a
            higher sensitivity at specificity 0.95 (README, "Detector validation").
        search_shift: with ``"latent"``, training (base) volumes are also encoded shifted by every
            combination of {-s, 0, +s} voxels per axis (27 shifts; 9 for 2D images), and the best match
            counts; 0 = no shift search.
        orientation_pooling: wherever the 32-d embedding is used (``"embedding"``, the aligned
            detector's shortlist, "contrastive-32d"): average the normalised embeddings over every
            orientation that keeps the volume shape (48 for a cube), so it is exactly invariant to
            flips and 90-degree rotations; costs 48 forward passes per volume.
    """

    representation: str = "latent"
    search_shift: float = 2.0
    orientation_pooling: bool = True

    def validate(self) -> CompareConfig:
        """Raise :class:`ConfigError` naming the first bad field; return self."""
        if self.representation not in REPRESENTATIONS:
            raise ConfigError(f"compare.representation must be one of {', '.join(REPRESENTATIONS)}, "
                              f"got {self.representation!r}")
        if self.search_shift < 0:
            raise ConfigError(f"compare.search_shift must be >= 0 voxels, got {self.search_shift}")
        return self


def configs_from_overrides(overrides: dict[str, Any] | None,
                           detector: DetectorConfig | None = None,
                           compare: CompareConfig | None = None) -> tuple[DetectorConfig, CompareConfig]:
    """Apply ``KEY=VALUE`` overrides (``--set`` of ``memostudy audit`` / ``validate-detector``, or a
    notebook's ``detector`` parameter) to the config each key belongs to.

    Args:
        overrides: field name -> value (strings are coerced); a field of :class:`CompareConfig`
            (``representation``, ``search_shift``, ``orientation_pooling``) goes to the comparison
            config, any other to the :class:`~memostudy.detect.detector.DetectorConfig`.
        detector, compare: the configs to start from (defaults when None).

    Returns:
        ``(detector_config, compare_config)``, both validated.

    Raises:
        ConfigError: a key of neither config, or a bad value.
    """
    compare_keys = {f.name for f in dataclasses.fields(CompareConfig)}
    items = dict(overrides or {})
    det = apply_overrides(detector or DetectorConfig(), {k: v for k, v in items.items() if k not in compare_keys})
    cmp = apply_overrides(compare or CompareConfig(), {k: v for k, v in items.items() if k in compare_keys})
    return det.validate(), cmp.validate()


def shift_grid(step: float, spatial_dims: int = 3) -> list[tuple[float, ...]]:
    """The shifts a base volume is encoded at: every (d, h, w) in {-step, 0, step}^3 (27; for 2D images
    every (h, w) in {-step, 0, step}^2, 9), no shift first; just the zero shift when ``step`` is 0."""
    if step == 0:
        return [(0.0,) * spatial_dims]
    s = float(step)
    return list(itertools.product((0.0, -s, s), repeat=spatial_dims))


def latent_vectors(detector: Detector, volumes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 1, D, H, W) -> (N, F): the encoder's latent map of each volume (pooled to ``latent_size^3``),
    flattened; F = latent_channels x latent_size^3 (2D: (N, 1, H, W), F = latent_channels x latent_size^2)."""
    net = detector.net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(volumes), batch_size):
            out.append(net.latent(volumes[i:i + batch_size].float()).flatten(1))
    cfg = detector.config
    return torch.cat(out) if out else torch.empty(0, cfg.latent_channels * cfg.latent_size**cfg.spatial_dims)


def query_vectors(detector: Detector, volumes: torch.Tensor, compare: CompareConfig | None = None,
                  batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """The vectors of volumes (``(N, 1, D, H, W)``, or images ``(N, 1, H, W)``) that are looked up
    (synthetic, reference, copies): (K, N, F), one slice per shape-preserving orientation (identity first;
    K = 48 for cubes, 8 for squares) with ``"latent"``; (1, N, 32) with ``"embedding"`` (``compare`` default:
    :class:`CompareConfig`). ``progress``: a progress bar over the orientations."""
    from tqdm.auto import tqdm

    compare = compare or CompareConfig()
    if compare.representation == "embedding":
        return embed(detector, volumes, batch_size, compare.orientation_pooling, progress).unsqueeze(0)
    nd = volumes.dim() - 2
    table = orientations(nd)
    return torch.stack([latent_vectors(detector, orient(volumes, table[k]).contiguous(), batch_size)
                        for k in tqdm(shape_preserving(volumes.shape, nd), desc=f"encoding {len(volumes)} volumes x orientations",
                                      disable=not progress)])


def base_vectors(detector: Detector, volumes: torch.Tensor, compare: CompareConfig | None = None,
                 batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """The vectors of the volumes searched (training, ``(N, 1, D, H, W)`` or images ``(N, 1, H, W)``):
    (J, N, F), one slice per shift of :func:`shift_grid` (no shift first; J = 27 in 3D, 9 in 2D) with
    ``"latent"``; (1, N, 32) with ``"embedding"`` (``compare`` default: :class:`CompareConfig`); ``progress``: a
    progress bar over the shifts.

    Raises:
        ConfigError: ``search_shift`` is not smaller than half the smallest volume side.
    """
    from tqdm.auto import tqdm

    cfg = compare or CompareConfig()
    if cfg.representation == "embedding":
        return embed(detector, volumes, batch_size, cfg.orientation_pooling, progress).unsqueeze(0)
    nd = volumes.dim() - 2
    if 2 * cfg.search_shift >= min(volumes.shape[2:]):
        raise ConfigError(f"compare.search_shift {cfg.search_shift} is too large for volumes of "
                          f"{tuple(volumes.shape[2:])}; use less than half the smallest side")
    out = []
    for s in tqdm(shift_grid(cfg.search_shift, nd), desc=f"encoding {len(volumes)} training volumes x shifts", disable=not progress):
        moved = volumes if not any(s) else translate(volumes.float(), torch.tensor([s] * len(volumes)))
        out.append(latent_vectors(detector, moved, batch_size))
    return torch.stack(out)

