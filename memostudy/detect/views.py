"""Positive views for the copy detector: the ways a generator can return a training volume.

A *view* of a volume is the volume after a change that should not make it "a different patient":
one of the 48 axis-aligned orientations of a cube (every axis permutation times every set of axis
flips), or a change a generator makes to a copy — a small shift, blur, intensity scaling/offset,
noise. The detector is trained so that views of one volume embed close together. These are the
*classic* views (the default); a detector can instead draw its views from the broad copy definition
(``DetectorConfig.view_families``, :func:`memostudy.detect.families.random_family_view`). The detector
validation (:mod:`memostudy.detect.validation`) makes its copies with the broad families, so the classic
views are scored on changes they were not trained on; :func:`apply_family` (these families as copies)
remains for the audit benchmark and the tests.

Everything works on batches ``(N, 1, D, H, W)`` float32 in [-1, 1] with an explicit
``torch.Generator``, so a seed fixes every view. Plain batched torch ops are used instead of MONAI's
``RandAffine``/``RandGaussianSmooth``: those draw their parameters per sample with numpy inside a
Python loop over the batch and cost more than the detector's own step on 2 CPU cores; the batched
``affine_grid``/``grid_sample`` does one call for the whole batch. Blur uses MONAI's
``GaussianFilter`` (separable, one call per distinct sigma).

Two orientation augmentations live here: :func:`random_orientation` (uniform over the orientations,
drawn from an explicit generator: the detector's views) and :class:`FlipRotate` (MONAI's per-axis
random flips and 90-degree rotations, drawn from torch's global RNG so the training loop can replay
them on resume: the LDM's augmentation, kept as it is because cached LDM runs depend on its draws).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: transform families, as accepted by :func:`apply_family`
FAMILIES = ("identity", "flip", "rot90", "orientation", "shift", "blur", "intensity", "noise", "mixed")
#: the families of a copy (every family but the identity)
COPY_FAMILIES = FAMILIES[1:]


@dataclass(frozen=True)
class Orientation:
    """One of the 48 axis-aligned orientations of a cube.

    Attributes:
        perm: permutation of the three spatial axes (0, 1, 2) = (D, H, W).
        flips: which of the (permuted) axes are reversed.
    """

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def det(self) -> int:
        """+1 for a proper rotation, -1 for a reflection."""
        inversions = sum(1 for i in range(3) for j in range(i + 1, 3) if self.perm[i] > self.perm[j])
        return (-1) ** (inversions + sum(self.flips))

    @property
    def is_identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)


def orientations() -> list[Orientation]:
    """The 48 cube orientations in a fixed order; index 0 is the identity.

    Order: permutations of (0, 1, 2) in ``itertools.permutations`` order, and for each the 8 flip
    patterns in ``itertools.product([False, True], repeat=3)`` order.
    """
    return [Orientation(tuple(p), tuple(f))  # type: ignore[arg-type]
            for p in itertools.permutations(range(3)) for f in itertools.product([False, True], repeat=3)]


def flip_indices() -> list[int]:
    """Indices (into :func:`orientations`) of the 7 pure flips: axes kept in order, >= 1 axis reversed."""
    return [i for i, o in enumerate(orientations()) if o.perm == (0, 1, 2) and any(o.flips)]


def rotation_indices() -> list[int]:
    """Indices of the 23 non-identity proper rotations (multiples of 90 degrees about the axes)."""
    return [i for i, o in enumerate(orientations()) if o.det == 1 and not o.is_identity]


def orient(volume: torch.Tensor, o: Orientation) -> torch.Tensor:
    """Apply one orientation to ``(..., D, H, W)``; non-cubic volumes change shape under a permutation."""
    lead = volume.dim() - 3
    out = volume.permute(*range(lead), *(lead + p for p in o.perm))
    dims = [lead + i for i, f in enumerate(o.flips) if f]
    return out.flip(dims) if dims else out


def orient_batch(volumes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Apply orientation ``index[i]`` (into :func:`orientations`) to volume ``i`` of ``(N, C, D, H, W)``.

    Every index must keep the volume shape (see :func:`shape_preserving`). Samples sharing an orientation are done in
    one call, so the Python loop is over at most 48 orientations, not over samples.
    """
    table = orientations()
    out = torch.empty_like(volumes)
    for k in torch.unique(index).tolist():
        sel = (index == k).nonzero().flatten()
        out[sel] = orient(volumes[sel], table[k])
    return out


@dataclass(frozen=True)
class ViewParams:
    """Strength of the generator-like changes (voxels for shift and blur; intensity units of [-1, 1]).

    Attributes:
        max_shift: shifts are drawn per axis in [-max_shift, max_shift] voxels (sub-voxel, trilinear,
            border values repeated), with at least ``min_shift`` on the largest axis.
        min_shift: see ``max_shift``.
        blur_sigma: Gaussian blur sigma range in voxels.
        scale: intensity scale range (multiplies the volume).
        offset: intensity offset range (added).
        noise_std: Gaussian noise standard deviation range.
    """

    max_shift: float = 3.0
    min_shift: float = 1.0
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    scale: tuple[float, float] = (0.8, 1.2)
    offset: tuple[float, float] = (-0.15, 0.15)
    noise_std: tuple[float, float] = (0.02, 0.08)

    def scaled(self, f: float) -> ViewParams:
        """The same changes at strength ``f`` (0 = none, 1 = these ranges)."""
        return ViewParams(max_shift=self.max_shift * f, min_shift=self.min_shift * f,
                          blur_sigma=(self.blur_sigma[0] * f, self.blur_sigma[1] * f),
                          scale=(1 - (1 - self.scale[0]) * f, 1 + (self.scale[1] - 1) * f),
                          offset=(self.offset[0] * f, self.offset[1] * f),
                          noise_std=(self.noise_std[0] * f, self.noise_std[1] * f))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def shift(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """Translate each volume by its own random sub-voxel shift (border values repeated)."""
    n = volumes.shape[0]
    vox = (torch.rand(n, 3, generator=g) * 2 - 1) * p.max_shift
    # make the largest component at least min_shift so every view really moves
    big = vox.abs().argmax(1)
    rows = torch.arange(n)
    vox[rows, big] = vox[rows, big].sign() * vox[rows, big].abs().clamp(min=p.min_shift)
    return translate(volumes, vox)


def translate(volumes: torch.Tensor, vox: torch.Tensor) -> torch.Tensor:
    """Volume ``i`` of ``(N, C, D, H, W)`` sampled at its voxel coordinates plus ``vox[i]`` (``(N, 3)``,
    per (D, H, W) axis, sub-voxel allowed): trilinear, border values repeated, one batched call."""
    n, sizes = volumes.shape[0], volumes.shape[2:]
    theta = torch.zeros(n, 3, 4)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = 1.0
    # affine_grid's coordinates are (x, y, z) = (W, H, D); one voxel is 2/size in normalised units
    for c, axis in enumerate((2, 1, 0)):
        theta[:, c, 3] = vox[:, axis] * 2.0 / sizes[axis]
    grid = F.affine_grid(theta, list(volumes.shape), align_corners=False)
    return F.grid_sample(volumes, grid, mode="bilinear", padding_mode="border", align_corners=False)


def blur(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """Gaussian smoothing with a per-volume sigma drawn from ``p.blur_sigma`` (4 distinct sigmas per call)."""
    from monai.networks.layers import GaussianFilter

    levels = torch.linspace(p.blur_sigma[0], p.blur_sigma[1], 4)
    pick = torch.randint(0, len(levels), (volumes.shape[0],), generator=g)
    out = torch.empty_like(volumes)
    for k in torch.unique(pick).tolist():
        sel = (pick == k).nonzero().flatten()
        out[sel] = GaussianFilter(3, float(levels[k]))(volumes[sel])
    return out


def intensity(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """``v * a + b`` with per-volume a in ``p.scale`` and b in ``p.offset``, clipped to [-1, 1]."""
    n = volumes.shape[0]
    a = _uniform(n, *p.scale, g).view(n, 1, 1, 1, 1)
    b = _uniform(n, *p.offset, g).view(n, 1, 1, 1, 1)
    return (volumes * a + b).clamp(-1, 1)


def noise(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """Add Gaussian noise with a per-volume standard deviation drawn from ``p.noise_std``."""
    n = volumes.shape[0]
    std = _uniform(n, *p.noise_std, g).view(n, 1, 1, 1, 1)
    return volumes + std * torch.randn(volumes.shape, generator=g)


def shape_preserving(shape: tuple[int, ...] | torch.Size) -> list[int]:
    """Indices of the orientations that keep a ``(..., D, H, W)`` shape: all 48 for a cube; for a
    non-cubic volume only those permuting axes of equal length (16 for 256 x 256 x 32)."""
    sizes = tuple(shape[-3:])
    return [i for i, o in enumerate(orientations()) if tuple(sizes[a] for a in o.perm) == sizes]


def random_orientation(volumes: torch.Tensor, g: torch.Generator | None, choices: list[int] | None = None) -> torch.Tensor:
    """Each volume in one orientation drawn from ``choices`` (indices; default all 48), keeping only
    those that preserve the volume shape (:func:`shape_preserving`)."""
    keep = set(shape_preserving(volumes.shape))
    pool = torch.tensor([i for i in (choices if choices is not None else range(48)) if i in keep] or [0])
    return orient_batch(volumes, pool[torch.randint(0, len(pool), (volumes.shape[0],), generator=g)])


def apply_family(volumes: torch.Tensor, family: str, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """Apply one transform family to every volume of a batch (parameters drawn per volume).

    Args:
        volumes: (N, 1, D, H, W) float32 in [-1, 1]; cubic for "flip"/"rot90"/"mixed" permutations.
        family: one of :data:`FAMILIES`. "flip" = one of the 7 pure flips; "rot90" = one of the 23
            non-identity 90-degree rotations; "orientation" = any of the 47 non-identity orientations
            (flips, rotations and rotation-reflections); "mixed" = an orientation as for "orientation", then
            shift, blur, intensity and noise each with probability 1/2 at half strength.
        g: random generator (fixes every drawn parameter).

    Returns:
        (N, 1, D, H, W) float32 (roughly in [-1, 1]; noise can leave it slightly).
    """
    if family == "identity":
        return volumes.clone()
    if family == "flip":
        return random_orientation(volumes, g, flip_indices())
    if family == "rot90":
        return random_orientation(volumes, g, rotation_indices())
    if family == "orientation":
        return random_orientation(volumes, g, list(range(1, 48)))
    if family == "shift":
        return shift(volumes, g, p)
    if family == "blur":
        return blur(volumes, g, p)
    if family == "intensity":
        return intensity(volumes, g, p)
    if family == "noise":
        return noise(volumes, g, p)
    if family == "mixed":
        return _random_changes(random_orientation(volumes, g, list(range(1, 48))), g, p.scaled(0.5))
    raise ValueError(f"unknown transform family {family!r}; choose one of {', '.join(FAMILIES)}")


def _random_changes(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams, prob: float = 0.5) -> torch.Tensor:
    """Shift, blur, intensity and noise, each applied to a random subset (probability ``prob``)."""
    out = volumes
    for fn in (shift, blur, intensity, noise):
        sel = (torch.rand(out.shape[0], generator=g) < prob).nonzero().flatten()
        if len(sel):
            out = out.clone()
            out[sel] = fn(out[sel], g, p)
    return out


def random_view(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """A training view: a random one of the 48 orientations, then each generator-like change
    (shift, blur, intensity, noise) with probability 1/2 at the strength of ``p``
    (no changes when ``p`` is ``ViewParams().scaled(0)``).

    Args:
        volumes: (N, 1, D, H, W) float32 in [-1, 1], cubic.

    Returns:
        (N, 1, D, H, W) float32.
    """
    out = random_orientation(volumes, g)
    return out if p.max_shift == 0 and p.noise_std[1] == 0 else _random_changes(out, g, p)
