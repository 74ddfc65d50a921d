"""Copy families of the broad copy definition, each at several strengths, and generator-like novel volumes.

The definition (issue 17, after seed 000 section 1.2): a synthetic volume is a *copy* of a training volume
when most of it (at least half of its voxels) shows that training volume's anatomy after any of: rigid
motion at any angle and translations up to a quarter of the volume; smooth non-rigid deformation;
resampling and loss of resolution; contrast curves (gamma, window changes); blur; noise; slowly varying
intensity bias; partial overlap with new content in the rest; and combinations of these. A volume that
shares less than that with every training volume is novel.

:data:`FAMILY_TABLE` lists one family per kind of change, each at strengths 1, 2, 3 with the parameters
used. Strengths marked ``inside=True`` are copies under the definition (the strongest inside one sits at
the definition's limit where it names one); a strength marked ``inside=False`` goes past it, to show where
detection falls off, and is not a copy a detector must find. Where the definition names no limit (blur,
noise, resolution, bias, deformation) the limit chosen here is stated in the table's ``summary``.

The changes are MONAI's random transforms (``RandAffine``, ``Rand3DElastic``, ``RandSimulateLowResolution``,
``RandAdjustContrast``, ``RandBiasField``, ``RandGaussianSmooth``, ``RandGaussianNoise``) applied per volume,
each seeded with ``set_random_state`` from one ``numpy.random.RandomState(seed)``, so ``seed`` fixes every
copy. The window change (``ScaleIntensityRange`` with a drawn window) and ``partial`` (a random planar cut)
are the only parameters drawn here. Every output is clipped to [-1, 1], the range of the inputs and of
generated volumes.

Shapes: ``(N, 1, D, H, W)`` volumes or ``(N, 1, H, W)`` 2D images; the spatial rank comes from the shape, and
every family works in both at the same strengths (rigid: one rotation angle in 2D, drawn in the same range;
elastic: ``Rand2DElastic`` calibrated to the 3D family's RMS displacement in pixels, see its entry; the others
are MONAI transforms that take either rank).

Cost per 32^3 volume, one thread (OMP_NUM_THREADS=1) on a shared 2-core machine, measured on 40 demo-ct
patches per family and strength: rigid 5-8 ms, elastic 21-31 ms (the Gaussian smoothing of the
displacement field dominates; it grows with sigma), lowres 1-2 ms, contrast 1-3 ms, bias 1-5 ms, blur
2-12 ms (grows with sigma), noise 2-4 ms, partial 2-5 ms, combined 12-31 ms; generator_like 2-7 ms. The
first call pays MONAI's imports (~0.1-0.3 s). 27 x 40 = 1,080 copies took 12-21 s in all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

#: what one family's change does to one volume: (1, *spatial) volume, (1, *spatial) other content -> changed
VolumeFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Level:
    """One strength of a family.

    Attributes:
        params: the parameters passed to the MONAI transform(s) (ranges are drawn uniformly per volume;
            translations in units of the volume side, converted to voxels per shape).
        inside: True when every copy at this strength is a copy under the definition.
        summary: the change in words, with the limit of the definition where it applies.
    """

    params: Mapping[str, Any]
    inside: bool
    summary: str


@dataclass(frozen=True)
class Family:
    """A kind of change with its strengths (see :data:`FAMILY_TABLE`)."""

    description: str
    levels: Mapping[int, Level] = field(default_factory=dict)


def _lv(params: dict[str, Any], inside: bool, summary: str) -> Level:
    return Level(MappingProxyType(params), inside, summary)


#: the copy families, each at strengths 1, 2, 3 (see the module docstring for "inside")
FAMILY_TABLE: Mapping[str, Family] = MappingProxyType({
    "rigid": Family(
        "RandAffine: rotation about every axis drawn in [-a, a], translation per axis in [-t, t] x side "
        "(trilinear, border values repeated)",
        {1: _lv({"angle_deg": 30.0, "translate": 1 / 16}, True, "rotation <= 30 deg, shift <= 1/16 side"),
         2: _lv({"angle_deg": 180.0, "translate": 1 / 4}, True,
                "any angle, shift <= 1/4 side per axis (the definition's limit)"),
         3: _lv({"angle_deg": 180.0, "translate": 3 / 8}, False, "any angle, shift <= 3/8 side: past the limit")}),
    "elastic": Family(
        "Rand3DElastic: a random displacement field smoothed by a Gaussian of sigma 3-4 voxels, times a "
        "magnitude; RMS displacement per axis measured on 32^3. 2D images: Rand2DElastic, random offsets on a "
        "grid of control points 8 pixels apart, interpolated, times ``magnitude_2d``, calibrated to the same RMS "
        "displacement in pixels (measured on 64^2: 1.1, 1.9 and 3.8)",
        {1: _lv({"sigma": (3.0, 4.0), "magnitude": (60.0, 100.0), "spacing_2d": 8, "magnitude_2d": (1.0, 2.0)},
                True, "RMS displacement ~1 voxel"),
         2: _lv({"sigma": (3.0, 4.0), "magnitude": (140.0, 180.0), "spacing_2d": 8, "magnitude_2d": (2.0, 3.0)},
                True, "RMS displacement ~2 voxels (limit chosen here for 'slight' deformation of a 32^3 patch)"),
         3: _lv({"sigma": (3.0, 4.0), "magnitude": (280.0, 360.0), "spacing_2d": 8, "magnitude_2d": (4.0, 6.0)},
                False, "RMS displacement ~4 voxels, up to ~14: past the limit")}),
    "lowres": Family(
        "RandSimulateLowResolution: nearest-neighbour downsampling by a zoom factor, then linear upsampling",
        {1: _lv({"zoom": (0.7, 0.85)}, True, "70-85 % of the resolution"),
         2: _lv({"zoom": (0.5, 0.7)}, True, "50-70 % of the resolution (limit chosen here: half)"),
         3: _lv({"zoom": (0.3, 0.4)}, False, "30-40 % of the resolution: past the limit")}),
    "contrast": Family(
        "RandAdjustContrast (gamma curve over the volume's range), then a window change: [lo, hi] mapped to "
        "[-1, 1] and clipped, lo = -1 + U(-w, w), hi = 1 + U(-w, w)",
        {1: _lv({"gamma": (0.8, 1.25), "window": 0.1}, True, "gamma 0.8-1.25, window edges moved <= 0.1"),
         2: _lv({"gamma": (0.6, 1.6), "window": 0.25}, True, "gamma 0.6-1.6, window edges moved <= 0.25"),
         3: _lv({"gamma": (0.35, 2.8), "window": 0.6}, False,
                "gamma 0.35-2.8, window edges moved <= 0.6 (up to 60 % of the range clipped): past the limit")}),
    "bias": Family(
        "RandBiasField (degree 2) multiplying the volume's intensities shifted to [0, 1]; median max/min of the "
        "field measured on 32^3",
        {1: _lv({"degree": 2, "coeff": (0.01, 0.03)}, True, "field max/min ~1.2"),
         2: _lv({"degree": 2, "coeff": (0.03, 0.05)}, True, "field max/min ~1.6 (limit chosen here)"),
         3: _lv({"degree": 2, "coeff": (0.08, 0.12)}, False, "field max/min ~3: past the limit")}),
    "blur": Family(
        "RandGaussianSmooth: Gaussian blur with a sigma drawn per axis",
        {1: _lv({"sigma": (0.5, 1.0)}, True, "sigma 0.5-1 voxel"),
         2: _lv({"sigma": (1.0, 2.0)}, True, "sigma 1-2 voxels (limit chosen here: 2 voxels)"),
         3: _lv({"sigma": (2.5, 3.5)}, False, "sigma 2.5-3.5 voxels: past the limit")}),
    "noise": Family(
        "RandGaussianNoise: additive Gaussian noise of a fixed standard deviation (intensities in [-1, 1])",
        {1: _lv({"std": 0.05}, True, "std 0.05"),
         2: _lv({"std": 0.1}, True, "std 0.1 (limit chosen here)"),
         3: _lv({"std": 0.25}, False, "std 0.25: past the limit")}),
    "partial": Family(
        "a random planar cut: the voxels on one side (a drawn fraction of the volume) keep the training "
        "volume, the rest is another volume's content (``others``)",
        {1: _lv({"keep": (0.8, 0.9)}, True, "keeps 80-90 % of the voxels"),
         2: _lv({"keep": (0.5, 0.6)}, True, "keeps 50-60 % of the voxels (the definition's limit: half)"),
         3: _lv({"keep": (0.3, 0.4)}, False, "keeps 30-40 % of the voxels: past the limit")}),
    "combined": Family(
        "three distinct families drawn per volume among the others, each at the same strength, applied in the "
        "order partial, rigid, elastic, lowres, blur, contrast, bias, noise",
        {1: _lv({"k": 3}, True, "three changes at strength 1"),
         2: _lv({"k": 3}, True, "three changes at strength 2 (each at the limit)"),
         3: _lv({"k": 3}, False, "three changes at strength 3: past the limit")}),
})

#: every copy family, in table order
COPY_FAMILIES: tuple[str, ...] = tuple(FAMILY_TABLE)
#: the order in which "combined" applies its changes (content first, spatial, resolution, intensity, noise last)
_COMBINE_ORDER = ("partial", "rigid", "elastic", "lowres", "blur", "contrast", "bias", "noise")
#: kinds of :func:`generator_like`
GENERATOR_KINDS: tuple[str, ...] = ("smooth", "noisy", "lowres", "mixed")


def _spatial_dims(volumes: torch.Tensor) -> int:
    if volumes.dim() not in (4, 5) or volumes.shape[1] != 1:
        raise ValueError(f"volumes must be (N, 1, D, H, W) or (N, 1, H, W), got {tuple(volumes.shape)}")
    return volumes.dim() - 2


def _plain(x: Any) -> torch.Tensor:
    """A MONAI output (MetaTensor or ndarray) as a plain float32 tensor."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(x, dtype=torch.float32)


def _seeded(transform: Any, rng: np.random.RandomState) -> Any:
    transform.set_random_state(seed=int(rng.randint(2**31 - 1)))
    return transform


def _linear_mode(nd: int) -> str:
    return "trilinear" if nd == 3 else "bilinear"


def _volume_fn(family: str, strength: int, spatial: tuple[int, ...], rng: np.random.RandomState,
               pool: tuple[str, ...] | None = None) -> VolumeFn:
    """The change of ``family`` at ``strength`` for volumes of shape ``(1, *spatial)``, seeded from ``rng``;
    "combined" draws its changes from ``pool`` (default: every other family)."""
    from monai.transforms import (
        Rand2DElastic,
        Rand3DElastic,
        RandAdjustContrast,
        RandAffine,
        RandBiasField,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandSimulateLowResolution,
        ScaleIntensityRange,
    )

    p = FAMILY_TABLE[family].levels[strength].params
    nd = len(spatial)
    if family == "rigid":
        angle = float(np.deg2rad(p["angle_deg"]))
        t = _seeded(RandAffine(prob=1.0, rotate_range=(angle,) * (3 if nd == 3 else 1),
                               translate_range=tuple(p["translate"] * s for s in spatial), padding_mode="border"), rng)
        return lambda x, _o: _plain(t(x))
    if family == "elastic":
        if nd == 2:
            # Rand2DElastic's magnitude multiplies offsets at control points: calibrated to the 3D RMS displacement
            t2 = _seeded(Rand2DElastic(spacing=(p["spacing_2d"],) * 2, magnitude_range=p["magnitude_2d"], prob=1.0,
                                       padding_mode="border"), rng)
            return lambda x, _o: _plain(t2(x))
        t = _seeded(Rand3DElastic(sigma_range=p["sigma"], magnitude_range=p["magnitude"], prob=1.0,
                                  padding_mode="border"), rng)
        return lambda x, _o: _plain(t(x))
    if family == "lowres":
        t = _seeded(RandSimulateLowResolution(prob=1.0, zoom_range=p["zoom"], upsample_mode=_linear_mode(nd)), rng)
        return lambda x, _o: _plain(t(x))
    if family == "contrast":
        gamma = _seeded(RandAdjustContrast(prob=1.0, gamma=p["gamma"]), rng)
        w = p["window"]

        def contrast(x: torch.Tensor, _o: torch.Tensor | None) -> torch.Tensor:
            lo, hi = -1.0 + rng.uniform(-w, w), 1.0 + rng.uniform(-w, w)
            return _plain(ScaleIntensityRange(a_min=lo, a_max=hi, b_min=-1.0, b_max=1.0, clip=True)(gamma(x)))
        return contrast
    if family == "bias":
        t = _seeded(RandBiasField(degree=p["degree"], coeff_range=p["coeff"], prob=1.0), rng)
        # a bias field multiplies intensities; on [-1, 1] data that would flip its effect at 0, so it acts on [0, 1]
        return lambda x, _o: _plain(t((x + 1) / 2)) * 2 - 1
    if family == "blur":
        sig = p["sigma"]
        t = _seeded(RandGaussianSmooth(sigma_x=sig, sigma_y=sig, sigma_z=sig, prob=1.0), rng)
        return lambda x, _o: _plain(t(x))
    if family == "noise":
        t = _seeded(RandGaussianNoise(prob=1.0, std=p["std"], sample_std=False), rng)
        return lambda x, _o: _plain(t(x))
    if family == "partial":
        return lambda x, o: _partial(x, o, p["keep"], rng)
    if family == "combined":
        allowed = _COMBINE_ORDER if pool is None else pool
        pool = [f for f in _COMBINE_ORDER if f in allowed]
        if not pool:
            raise ValueError(f"family 'combined' needs other families to combine, got pool {tuple(allowed)}")
        fns = {f: _volume_fn(f, strength, spatial, rng) for f in pool}

        def combined(x: torch.Tensor, o: torch.Tensor | None) -> torch.Tensor:
            chosen = set(rng.choice(len(pool), size=min(p["k"], len(pool)), replace=False).tolist())
            for i, f in enumerate(pool):
                if i in chosen:
                    x = fns[f](x, o).clamp(-1, 1)
            return x
        return combined
    raise ValueError(f"unknown copy family {family!r}; choose one of {', '.join(COPY_FAMILIES)}")


def keep_mask(spatial: tuple[int, ...], keep: float, direction: np.ndarray) -> torch.Tensor:
    """The voxels on one side of a plane with normal ``direction`` holding a fraction ``keep`` of the
    volume: bool ``(*spatial)``, True where the source is kept (``round(keep * numel)`` voxels)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in spatial],
                                        indexing="ij"), dim=-1)
    proj = (coords @ torch.as_tensor(direction, dtype=torch.float32)).flatten()
    n_keep = int(round(keep * proj.numel()))
    mask = torch.zeros(proj.numel(), dtype=torch.bool)
    mask[torch.argsort(proj, stable=True)[:n_keep]] = True
    return mask.view(spatial)


def _partial(x: torch.Tensor, other: torch.Tensor | None, keep: tuple[float, float],
             rng: np.random.RandomState) -> torch.Tensor:
    if other is None:
        raise ValueError("family 'partial' needs other volumes for the new content")
    spatial = tuple(x.shape[1:])
    mask = keep_mask(spatial, rng.uniform(*keep), rng.normal(size=len(spatial)))
    return torch.where(mask, x, other)


def make_copies(volumes: torch.Tensor, family: str, strength: int, seed: int = 0,
                others: torch.Tensor | None = None) -> torch.Tensor:
    """Copies of ``volumes`` under one family of the definition at one strength (see :data:`FAMILY_TABLE`).

    Args:
        volumes: (N, 1, D, H, W) or (N, 1, H, W) float32 in [-1, 1], the training volumes to copy.
        family: one of :data:`COPY_FAMILIES`.
        strength: a key of ``FAMILY_TABLE[family].levels`` (1, 2 or 3).
        seed: fixes every drawn parameter and noise (same seed, same copies).
        others: (M, 1, ...) volumes of the same shape giving the new content of "partial" (and of
            "combined" when it draws partial), one drawn per copy; pass held-out volumes so that content is
            novel. When None, another volume of ``volumes`` is used (N >= 2).

    Returns:
        (N, 1, ...) float32 in [-1, 1]: copy ``i`` is made from volume ``i``.
    """
    _spatial_dims(volumes)
    if family not in FAMILY_TABLE:
        raise ValueError(f"unknown copy family {family!r}; choose one of {', '.join(COPY_FAMILIES)}")
    if strength not in FAMILY_TABLE[family].levels:
        raise ValueError(f"strength of {family!r} must be one of {sorted(FAMILY_TABLE[family].levels)}, got {strength}")
    if others is not None and tuple(others.shape[1:]) != tuple(volumes.shape[1:]):
        raise ValueError(f"others must have the shape of volumes, got {tuple(others.shape[1:])} and {tuple(volumes.shape[1:])}")
    n = len(volumes)
    needs_other = family in ("partial", "combined")
    if needs_other and others is None and n < 2:
        raise ValueError(f"family {family!r} needs others, or at least 2 volumes to take new content from")
    rng = np.random.RandomState(seed)
    fn = _volume_fn(family, strength, tuple(volumes.shape[2:]), rng)
    pick = np.random.RandomState(seed + 1)  # which other volume, apart from the change's own stream
    out = torch.empty(volumes.shape, dtype=torch.float32)
    for i in range(n):
        other = None
        if needs_other:
            other = others[pick.randint(len(others))] if others is not None else volumes[(i + 1 + pick.randint(n - 1)) % n]
            other = other.float()
        out[i] = fn(volumes[i].float(), other).clamp(-1, 1)
    return out


def generator_like(volumes: torch.Tensor, kind: str = "mixed", seed: int = 0) -> torch.Tensor:
    """Real (novel) volumes made to look generated: smoother, noisier or at lower resolution, as LDM samples
    are. They are not copies of anything, so a detector should not flag them; they measure specificity where
    a threshold calibrated on sharp real volumes fails.

    Kinds: "smooth" (RandGaussianSmooth, sigma 0.75-1.5 voxels per axis); "noisy" (sigma 0.5-1 blur, then
    Gaussian noise of std 0.05); "lowres" (RandSimulateLowResolution, zoom 0.5-0.75); "mixed" (lowres at
    zoom 0.6-0.85, sigma 0.5-1 blur, noise of std 0.03).

    Args:
        volumes: (N, 1, D, H, W) or (N, 1, H, W) float32 in [-1, 1].
        kind: one of :data:`GENERATOR_KINDS`.
        seed: fixes every drawn parameter and noise.

    Returns:
        (N, 1, ...) float32 in [-1, 1].
    """
    from monai.transforms import Compose, RandGaussianNoise, RandGaussianSmooth, RandSimulateLowResolution

    nd = _spatial_dims(volumes)

    def smooth(lo: float, hi: float) -> RandGaussianSmooth:
        return RandGaussianSmooth(sigma_x=(lo, hi), sigma_y=(lo, hi), sigma_z=(lo, hi), prob=1.0)

    def lowres(lo: float, hi: float) -> RandSimulateLowResolution:
        return RandSimulateLowResolution(prob=1.0, zoom_range=(lo, hi), upsample_mode=_linear_mode(nd))

    chains = {
        "smooth": lambda: [smooth(0.75, 1.5)],
        "noisy": lambda: [smooth(0.5, 1.0), RandGaussianNoise(prob=1.0, std=0.05, sample_std=False)],
        "lowres": lambda: [lowres(0.5, 0.75)],
        "mixed": lambda: [lowres(0.6, 0.85), smooth(0.5, 1.0), RandGaussianNoise(prob=1.0, std=0.03, sample_std=False)],
    }
    if kind not in chains:
        raise ValueError(f"unknown generator-like kind {kind!r}; choose one of {', '.join(GENERATOR_KINDS)}")
    t = Compose(chains[kind]())
    t.set_random_state(seed=seed)
    out = torch.empty(volumes.shape, dtype=torch.float32)
    for i in range(len(volumes)):
        out[i] = _plain(t(volumes[i].float())).clamp(-1, 1)
    return out


#: strengths a training view is drawn at: those inside the definition (1 and 2 for every family)
VIEW_STRENGTHS: tuple[int, ...] = (1, 2)


def random_family_view(volumes: torch.Tensor, g: torch.Generator | None, families: tuple[str, ...]) -> torch.Tensor:
    """A contrastive training view drawn from the broad copy definition: per volume one family of
    ``families`` (uniform) at one strength inside the definition (:data:`VIEW_STRENGTHS`, uniform), applied
    as :func:`make_copies` applies it; "combined" composes up to 3 of the *other* ``families`` only, so a view
    never shows a family left out of ``families``. "partial" takes its new content from another volume of the
    batch.

    Per volume this is MONAI's transforms on one volume (1-30 ms at 32^3 on one thread, see the module
    docstring), so a training step costs more than with :func:`memostudy.detect.views.random_view`.

    Args:
        volumes: (N, 1, D, H, W) or (N, 1, H, W) float32 in [-1, 1] (N >= 2 when ``families`` holds "partial"
            or "combined").
        g: draws one seed per volume (torch's global RNG when None, as the training loop replays on resume).
        families: names of :data:`COPY_FAMILIES`, non-empty.

    Returns:
        float32 in [-1, 1], the input's shape.
    """
    bad = [f for f in families if f not in FAMILY_TABLE]
    if bad or not families:
        raise ValueError(f"view families must be among {', '.join(COPY_FAMILIES)}, got {bad or 'none'}")
    spatial = tuple(volumes.shape[2:])
    n = len(volumes)
    pool = tuple(f for f in families if f != "combined")
    names = tuple(f for f in families if f != "combined" or pool)
    if not names:
        raise ValueError("view family 'combined' needs at least one other family to combine")
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=g).tolist()
    out = torch.empty(volumes.shape, dtype=torch.float32)
    for i, seed in enumerate(seeds):
        rng = np.random.RandomState(seed)
        fam = names[rng.randint(len(names))]
        strength = VIEW_STRENGTHS[rng.randint(len(VIEW_STRENGTHS))]
        other = volumes[(i + 1 + rng.randint(n - 1)) % n].float() if n > 1 else None
        if other is None and fam in ("partial", "combined"):
            out[i] = volumes[i].float()  # a lone volume has no other content: left as it is
            continue
        out[i] = _volume_fn(fam, strength, spatial, rng, pool)(volumes[i].float(), other).clamp(-1, 1)
    return out
