"""Positive views for the copy detector: the ways a generator can return a training volume.

A *view* of a volume is the volume after a change that should not make it "a different patient":
one of the 48 axis-aligned orientations of a cube (every axis permutation times every set of axis
flips; for a 2D image the 8 of a square, the dihedral group D4: 4 rotations by 90 degrees, each mirrored or
not), or a change a generator makes to a copy — a small shift, blur, intensity scaling/offset,
noise. The detector is trained so that views of one volume embed close together. These are the
*classic* views (the default); a detector can instead draw its views from the broad copy definition
(``DetectorConfig.view_families``, :func:`memostudy.detect.families.random_family_view`). The detector
validation (:mod:`memostudy.detect.validation`) makes its copies with the broad families, so the classic
views are scored on changes they were not trained on; :func:`apply_family` (these families as copies)
remains for the audit benchmark and the tests.

Everything works on batches ``(N, 1, D, H, W)`` or ``(N, 1, H, W)`` (2D images: the spatial rank is
``batch.dim() - 2``, no global switch) float32 in [-1, 1] with an explicit
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

import functools
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
    """One axis-aligned orientation: of a cube (48, 3D) or of a square (8, 2D: the dihedral group D4).

    Attributes:
        perm: permutation of the spatial axes: (0, 1, 2) = (D, H, W) in 3D, (0, 1) = (H, W) in 2D.
        flips: which of the (permuted) axes are reversed.
    """

    perm: tuple[int, ...]
    flips: tuple[bool, ...]

    @property
    def spatial_dims(self) -> int:
        return len(self.perm)

    @property
    def det(self) -> int:
        """+1 for a proper rotation, -1 for a reflection."""
        n = len(self.perm)
        inversions = sum(1 for i in range(n) for j in range(i + 1, n) if self.perm[i] > self.perm[j])
        return (-1) ** (inversions + sum(self.flips))

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(len(self.perm))) and not any(self.flips)


@functools.cache
def _table(spatial_dims: int) -> tuple[Orientation, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"orientations exist for 2 or 3 spatial dimensions, got {spatial_dims}")
    return tuple(Orientation(tuple(p), tuple(f)) for p in itertools.permutations(range(spatial_dims))
                 for f in itertools.product([False, True], repeat=spatial_dims))


def orientations(spatial_dims: int = 3) -> list[Orientation]:
    """The axis-aligned orientations in a fixed order; index 0 is the identity. 48 for a cube
    (``spatial_dims=3``), 8 for a square (``spatial_dims=2``: the 4 rotations by multiples of 90 degrees and
    their mirror images, the dihedral group D4).

    Order: permutations of the axes in ``itertools.permutations`` order, and for each the flip patterns in
    ``itertools.product([False, True], repeat=spatial_dims)`` order (the 3D order, and so every stored 3D
    orientation index, is that of before 2D existed).
    """
    return list(_table(spatial_dims))


def flip_indices(spatial_dims: int = 3) -> list[int]:
    """Indices (into :func:`orientations`) of the pure flips: axes kept in order, >= 1 axis reversed
    (7 in 3D, 3 in 2D)."""
    ident = tuple(range(spatial_dims))
    return [i for i, o in enumerate(orientations(spatial_dims)) if o.perm == ident and any(o.flips)]


def rotation_indices(spatial_dims: int = 3) -> list[int]:
    """Indices of the non-identity proper rotations by multiples of 90 degrees (23 in 3D, 3 in 2D)."""
    return [i for i, o in enumerate(orientations(spatial_dims)) if o.det == 1 and not o.is_identity]


def orient(volume: torch.Tensor, o: Orientation) -> torch.Tensor:
    """Apply one orientation to the last ``o.spatial_dims`` axes of ``(..., D, H, W)`` or ``(..., H, W)``;
    non-cubic (non-square) volumes change shape under a permutation."""
    lead = volume.dim() - len(o.perm)
    out = volume.permute(*range(lead), *(lead + p for p in o.perm))
    dims = [lead + i for i, f in enumerate(o.flips) if f]
    return out.flip(dims) if dims else out


def orient_batch(volumes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Apply orientation ``index[i]`` (into :func:`orientations` of the batch's rank) to volume ``i`` of
    ``(N, C, D, H, W)`` or ``(N, C, H, W)``.

    Every index must keep the volume shape (see :func:`shape_preserving`). Samples sharing an orientation are done in
    one call, so the Python loop is over at most 48 orientations, not over samples.
    """
    table = orientations(volumes.dim() - 2)
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
    """Translate each volume (or image) by its own random sub-voxel shift (border values repeated)."""
    n, nd = volumes.shape[0], volumes.dim() - 2
    vox = (torch.rand(n, nd, generator=g) * 2 - 1) * p.max_shift
    # make the largest component at least min_shift so every view really moves
    big = vox.abs().argmax(1)
    rows = torch.arange(n)
    vox[rows, big] = vox[rows, big].sign() * vox[rows, big].abs().clamp(min=p.min_shift)
    return translate(volumes, vox)


def translate(volumes: torch.Tensor, vox: torch.Tensor) -> torch.Tensor:
    """Volume ``i`` of ``(N, C, D, H, W)`` (or image ``i`` of ``(N, C, H, W)``) sampled at its voxel coordinates
    plus ``vox[i]`` (``(N, 3)`` per (D, H, W) axis, or ``(N, 2)`` per (H, W) axis; sub-voxel allowed):
    trilinear (bilinear), border values repeated, one batched call."""
    n, sizes = volumes.shape[0], volumes.shape[2:]
    nd = len(sizes)
    if vox.shape != (n, nd):
        raise ValueError(f"shifts must be (N, {nd}) for volumes {tuple(volumes.shape)}, got {tuple(vox.shape)}")
    theta = torch.zeros(n, nd, nd + 1)
    for a in range(nd):
        theta[:, a, a] = 1.0
    # affine_grid's coordinates run last axis first, (x, y, z) = (W, H, D); one voxel is 2/size in normalised units
    for c, axis in enumerate(reversed(range(nd))):
        theta[:, c, nd] = vox[:, axis] * 2.0 / sizes[axis]
    grid = F.affine_grid(theta, list(volumes.shape), align_corners=False)
    return F.grid_sample(volumes, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _per_volume(values: torch.Tensor, volumes: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast over ``(N, C, ...)``."""
    return values.view(len(values), *([1] * (volumes.dim() - 1)))


def blur(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """Gaussian smoothing with a per-volume sigma drawn from ``p.blur_sigma`` (4 distinct sigmas per call)."""
    from monai.networks.layers import GaussianFilter

    levels = torch.linspace(p.blur_sigma[0], p.blur_sigma[1], 4)
    pick = torch.randint(0, len(levels), (volumes.shape[0],), generator=g)
    out = torch.empty_like(volumes)
    for k in torch.unique(pick).tolist():
        sel = (pick == k).nonzero().flatten()
        out[sel] = GaussianFilter(volumes.dim() - 2, float(levels[k]))(volumes[sel])
    return out


def intensity(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """``v * a + b`` with per-volume a in ``p.scale`` and b in ``p.offset``, clipped to [-1, 1]."""
    n = volumes.shape[0]
    a = _per_volume(_uniform(n, *p.scale, g), volumes)
    b = _per_volume(_uniform(n, *p.offset, g), volumes)
    return (volumes * a + b).clamp(-1, 1)


def noise(volumes: torch.Tensor, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """Add Gaussian noise with a per-volume standard deviation drawn from ``p.noise_std``."""
    n = volumes.shape[0]
    std = _per_volume(_uniform(n, *p.noise_std, g), volumes)
    return volumes + std * torch.randn(volumes.shape, generator=g)


def shape_preserving(shape: tuple[int, ...] | torch.Size, spatial_dims: int = 3) -> list[int]:
    """Indices of the orientations (:func:`orientations` of ``spatial_dims``) that keep the shape of the last
    ``spatial_dims`` axes of ``shape``: all 48 for a cube (8 for a square); for a non-cubic volume only those
    permuting axes of equal length (16 for 256 x 256 x 32; 4 for a non-square image). Pass ``spatial_dims``
    as ``batch.dim() - 2`` for a batch: ``(N, 1, H, W)`` and a volume ``(1, D, H, W)`` have the same rank."""
    sizes = tuple(shape[-spatial_dims:])
    return [i for i, o in enumerate(orientations(spatial_dims)) if tuple(sizes[a] for a in o.perm) == sizes]


def random_orientation(volumes: torch.Tensor, g: torch.Generator | None, choices: list[int] | None = None) -> torch.Tensor:
    """Each volume of ``(N, C, D, H, W)`` (or image of ``(N, C, H, W)``) in one orientation drawn from
    ``choices`` (indices into :func:`orientations` of its rank; default all 48, or 8 in 2D), keeping only
    those that preserve the shape (:func:`shape_preserving`)."""
    nd = volumes.dim() - 2
    keep = set(shape_preserving(volumes.shape, nd))
    pool = torch.tensor([i for i in (choices if choices is not None else range(len(orientations(nd)))) if i in keep] or [0])
    return orient_batch(volumes, pool[torch.randint(0, len(pool), (volumes.shape[0],), generator=g)])


def apply_family(volumes: torch.Tensor, family: str, g: torch.Generator | None, p: ViewParams = ViewParams()) -> torch.Tensor:
    """Apply one transform family to every volume of a batch (parameters drawn per volume).

    Args:
        volumes: (N, 1, D, H, W) or (N, 1, H, W) float32 in [-1, 1]; cubic (square) for
            "flip"/"rot90"/"mixed" permutations.
        family: one of :data:`FAMILIES`. "flip" = one of the pure flips (7 in 3D, 3 in 2D); "rot90" = one of
            the non-identity 90-degree rotations (23 in 3D, 3 in 2D); "orientation" = any non-identity
            orientation (47 in 3D, 7 in 2D: flips, rotations and rotation-reflections); "mixed" = an
            orientation as for "orientation", then shift, blur, intensity and noise each with probability 1/2
            at half strength.
        g: random generator (fixes every drawn parameter).

    Returns:
        float32 of the input's shape (roughly in [-1, 1]; noise can leave it slightly).
    """
    nd = volumes.dim() - 2
    if family == "identity":
        return volumes.clone()
    if family == "flip":
        return random_orientation(volumes, g, flip_indices(nd))
    if family == "rot90":
        return random_orientation(volumes, g, rotation_indices(nd))
    if family == "orientation":
        return random_orientation(volumes, g, list(range(1, len(orientations(nd)))))
    if family == "shift":
        return shift(volumes, g, p)
    if family == "blur":
        return blur(volumes, g, p)
    if family == "intensity":
        return intensity(volumes, g, p)
    if family == "noise":
        return noise(volumes, g, p)
    if family == "mixed":
        return _random_changes(random_orientation(volumes, g, list(range(1, len(orientations(nd))))), g, p.scaled(0.5))
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
    """A training view: a random one of the orientations (48 of a cube, 8 of a square), then each
    generator-like change (shift, blur, intensity, noise) with probability 1/2 at the strength of ``p``
    (no changes when ``p`` is ``ViewParams().scaled(0)``).

    Args:
        volumes: (N, 1, D, H, W) or (N, 1, H, W) float32 in [-1, 1].

    Returns:
        float32 of the input's shape.
    """
    out = random_orientation(volumes, g)
    return out if p.max_shift == 0 and p.noise_std[1] == 0 else _random_changes(out, g, p)
