"""Registered correlation: verify a shortlist of training volumes by real image registration (SimpleITK).

The broad copy definition (:mod:`memostudy.detect.families`, issue 17) calls a synthetic volume a copy of a
training volume when at least half of its voxels show that training volume's anatomy after rigid motion at
any angle, shifts up to a quarter of the side, smooth deformation, contrast curves, bias fields, blur, noise
and partial overlap. The searches of :mod:`memostudy.detect.alignment` only try the 48 axis orientations and
shifts of a few voxels; this module registers each query to its shortlisted training volumes instead:

1. **Coarse start** (torch, one batched ``grid_sample``): the query, mirrored or not, is turned by each
   rotation of a fixed set (the 24 proper rotations of the cube plus ``extra_rotations`` drawn uniformly
   from SO(3) with a fixed seed) and shifted by 0 or +-t along each axis (``t`` = ``coarse_shift`` x side),
   at ``coarse_size``^3 after smoothing; its best Pearson correlation with *every* training volume (one
   matrix product) gives each its best start. The shortlist is the ``shortlist`` best of this search plus
   the cheap searches' candidates (:func:`memostudy.detect.alignment.candidates`: oriented pixel correlation
   and the 32-d embedding), which cannot find copies turned by arbitrary angles.
2. **Rigid** (``Euler3DTransform``, regular-step gradient descent) for the ``starts`` best shortlisted
   training volumes, each from its best coarse start; then **affine** (``AffineTransform``) and optionally a
   coarse **B-spline** (``BSplineTransform`` on a ``bspline_mesh``^3 grid, L-BFGS-B) for the best rigid match
   only. Each stage runs the resolution levels ``shrink`` / ``smoothing`` (default one level at full
   resolution: on 8 demo-ct copies per family a 2-level pyramid at 32^3 was no better and cost more) with the
   correlation metric (normalised cross-correlation: blind to intensity scale and offset) or Mattes mutual
   information (``metric="mattes"``: blind to any monotone contrast curve) on a fixed random ``sampling``
   fraction of the voxels, as in the ITK v4 registration framework (Avants et al. 2014, Front. Neuroinform.;
   Mattes et al. 2003, IEEE TMI). The synthetic volume is the fixed image; the training volume moves onto
   its grid.
3. **Score** (:func:`local_ncc_score`): the median over the synthetic volume's informative voxels of the local
   normalised cross-correlation (``window``^3 boxes) between the synthetic volume and the registered training
   volume, voxels outside the overlap counting 0. Why this score: the definition asks whether *half of the
   synthetic voxels* show the training anatomy, and the median of a per-voxel agreement map is exactly the
   level that half the voxels reach, so a copy that keeps 55 % of its source scores like a whole copy while
   the replaced 45 % cannot pull it down (a global correlation would); a local correlation is blind to
   slowly varying bias fields and contrast curves (locally affine in intensity), which a global correlation
   is not; and voxels the registered training volume does not cover (large shifts) count as not matching,
   so an overlap smaller than half cannot score high. ``score="blocks"`` scores the registered pair by the block
   correlation of :mod:`memostudy.detect.blocks` instead (blocks not fully covered count 0); on demo-ct it found
   fewer copies than the unregistered block correlation (README, "Block correlation"), so it is not the default.

The score is higher = more similar, at most 1; like every detector here its threshold is calibrated on real
reference volumes scored the same way. :func:`register_pair` returns the score with the :class:`Change` found
(mirror, rotation angle, shift, affine scales, B-spline displacement), which the audit shows as evidence.

3D only: 2D images ``(N, 1, H, W)`` raise a :class:`~memostudy.errors.ConfigError` (a 2D version would need
its own rotation set, ``Euler2DTransform`` stages and a measured threshold). Limits (README, "Audit synthetic
data from any model"): smooth CT texture correlates locally between unrelated
patches, so after a registration that may turn and stretch freely, novel volumes also reach high local
correlations; and the coarse search samples SO(3) at ~600 rotations, so an arbitrary angle starts up to ~20-30
degrees off, which the rigid stage does not always recover from. Cost: about 0.5-1 s per registered pair at
32^3 on one thread (contended), so this detector is for a shortlist, not a whole set, and is not in
:data:`memostudy.detect.registry.DETECTORS` by default.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from memostudy.detect.similarity import Nearest, standardise
from memostudy.errors import ConfigError

#: registration stages, in the order they run
STAGES = ("rigid", "affine", "bspline")
#: metrics of the registration
METRICS = ("correlation", "mattes")
#: scores of a registered pair: :func:`local_ncc_score` or :func:`memostudy.detect.blocks.block_score`
SCORES = ("local-ncc", "blocks")


@dataclass(frozen=True)
class RegisterConfig:
    """Settings of the registered correlation (:func:`registered_nearest`).

    Attributes:
        shortlist: training volumes per query from each cheap ranking (oriented pixel correlation, and the
            32-d embedding when given, :func:`memostudy.detect.alignment.candidates`).
        starts: coarse (training volume, orientation, shift) combinations registered per query; the best
            registered one counts.
        extra_rotations: rotations drawn from SO(3) (fixed seed) added to the 24 of the cube for the coarse
            start, so that the start is near any angle.
        coarse_size: side of the volumes in the coarse search (after smoothing and resampling).
        coarse_shift: shift of the coarse search, as a fraction of the side (none, and +-t along each axis).
        stages: registration stages from :data:`STAGES`, run in that order ("rigid" must be first).
        iterations: optimiser iterations per resolution level and stage.
        shrink: shrink factor per resolution level (coarse to fine).
        smoothing: Gaussian smoothing sigma (voxels) per resolution level.
        metric: "correlation" (normalised cross-correlation) or "mattes" (Mattes mutual information).
        sampling: fraction of the fixed image's voxels the metric samples (random, fixed seed).
        bspline_mesh: B-spline control grid (mesh cells per axis) of the "bspline" stage.
        sigma: Gaussian smoothing (voxels) of both volumes before the local correlation (damps noise).
        window: side of the local correlation's boxes (voxels, odd).
        flat: local standard deviation below which a box counts as flat (no anatomy to compare; scores 0).
        threads: SimpleITK threads (the cores are shared; 1 keeps one registration per core).
        score: how a registered pair is scored: "local-ncc" (:func:`local_ncc_score`) or "blocks" (the block
            correlation of :mod:`memostudy.detect.blocks` with its default blocks, blocks the registered training
            volume does not fully cover scoring 0).
    """

    shortlist: int = 5
    starts: int = 2
    extra_rotations: int = 600
    coarse_size: int = 10
    coarse_shift: float = 0.125
    stages: tuple[str, ...] = ("rigid", "affine")
    iterations: int = 40
    shrink: tuple[int, ...] = (1,)
    smoothing: tuple[float, ...] = (0.0,)
    metric: str = "correlation"
    sampling: float = 0.25
    bspline_mesh: int = 2
    sigma: float = 0.75
    window: int = 5
    flat: float = 0.01
    threads: int = 1
    score: str = "local-ncc"

    def validate(self) -> RegisterConfig:
        """Check the settings; raises :class:`~memostudy.errors.ConfigError` naming the bad one."""
        if not self.stages or self.stages[0] != "rigid" or any(s not in STAGES for s in self.stages) \
                or list(self.stages) != sorted(self.stages, key=STAGES.index):
            raise ConfigError(f"registration stages must start with 'rigid' and follow {STAGES}, got {self.stages}")
        if self.score not in SCORES:
            raise ConfigError(f"registration score must be one of {SCORES}, got {self.score!r}")
        if self.metric not in METRICS:
            raise ConfigError(f"registration metric must be one of {METRICS}, got {self.metric!r}")
        if len(self.shrink) != len(self.smoothing) or not self.shrink or min(self.shrink) < 1:
            raise ConfigError(f"registration shrink and smoothing need one value per level (shrink >= 1), "
                              f"got {self.shrink} and {self.smoothing}")
        if min(self.shortlist, self.starts, self.iterations, self.threads, self.bspline_mesh) < 1:
            raise ConfigError("registration shortlist, starts, iterations, threads and bspline_mesh must be >= 1")
        if not 0 < self.sampling <= 1:
            raise ConfigError(f"registration sampling must be in (0, 1], got {self.sampling}")
        if self.window < 3 or self.window % 2 == 0:
            raise ConfigError(f"registration window must be odd and >= 3, got {self.window}")
        if self.coarse_size < 4 or not 0 <= self.coarse_shift < 0.5:
            raise ConfigError(f"registration coarse_size must be >= 4 and coarse_shift in [0, 0.5), "
                              f"got {self.coarse_size} and {self.coarse_shift}")
        return self


@dataclass(frozen=True)
class Change:
    """The change that maps a training volume onto a synthetic one, as registration found it.

    The synthetic volume (mirrored along W first when ``mirrored``) equals the training volume turned by
    ``rotation_deg`` about ``rotation_axis`` through the centre and moved by ``shift_voxels``; the affine
    stage adds ``scales`` (1 = none) and the B-spline stage a smooth displacement of RMS ``deformation_voxels``.

    Attributes:
        mirrored: the synthetic volume is a mirror image (W axis) of the training volume.
        rotation_deg: rotation angle in degrees, in [0, 180].
        rotation_axis: unit rotation axis in (D, H, W) order.
        shift_voxels: displacement of the training volume's centre in the synthetic one, (D, H, W) voxels.
        scales: the affine part's principal scales (sorted, 1.0 each for a rigid result).
        deformation_voxels: RMS B-spline displacement in voxels (None when that stage did not run).
        stage: the last registration stage of the result ("rigid", "affine" or "bspline").
    """

    mirrored: bool
    rotation_deg: float
    rotation_axis: tuple[float, float, float]
    shift_voxels: tuple[float, float, float]
    scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
    deformation_voxels: float | None = None
    stage: str = "rigid"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, rounded for display."""
        d = asdict(self)
        d["rotation_deg"] = round(self.rotation_deg, 1)
        d["rotation_axis"] = [round(v, 3) for v in self.rotation_axis]
        d["shift_voxels"] = [round(v, 2) for v in self.shift_voxels]
        d["scales"] = [round(v, 3) for v in self.scales]
        if self.deformation_voxels is not None:
            d["deformation_voxels"] = round(self.deformation_voxels, 2)
        return d


@dataclass(frozen=True)
class Registered:
    """Result of :func:`registered_nearest`: the nearest training volume per query, with its change.

    Attributes:
        nearest: ``values`` (Nq,) the registered score (higher = more similar, at most 1), ``indices``
            (Nq,) the training volume.
        changes: the :class:`Change` per query, for its nearest training volume.
        shortlists: per query, the base indices considered (a source missing here cannot be found).
        seconds_per_pair: mean wall time per rigidly registered (query, training volume) pair, the later
            stages of the best pair included.
    """

    nearest: Nearest
    changes: list[Change]
    shortlists: list[torch.Tensor]
    seconds_per_pair: float


# --------------------------------------------------------------------------------------------- geometry

def _rotations(extra: int) -> np.ndarray:
    """(24 + extra, 3, 3) proper rotations, in (x, y, z) = (W, H, D) order: the cube's, then fixed random ones."""
    from scipy.spatial.transform import Rotation

    rots = Rotation.create_group("O").as_matrix()
    if extra:
        rots = np.concatenate([rots, Rotation.random(extra, random_state=0).as_matrix()])
    return rots


def _mirror(volume: torch.Tensor) -> torch.Tensor:
    return torch.flip(volume, dims=(-1,))


def _coarse(volumes: torch.Tensor, cfg: RegisterConfig) -> torch.Tensor:
    """(N, 1, D, H, W) -> smoothed and resampled to ``coarse_size``^3 (corners kept: align_corners)."""
    from memostudy.detect.alignment import smooth

    sigma = max(cfg.sigma, 0.5 * max(volumes.shape[-3:]) / cfg.coarse_size)
    s = cfg.coarse_size
    return F.interpolate(smooth(volumes.float(), sigma), size=(s, s, s), mode="trilinear", align_corners=True)


def _half_extent(shape: tuple[int, ...]) -> np.ndarray:
    """(x, y, z) = (W, H, D) half-extents ``(n - 1) / 2`` of a (..., D, H, W) shape: the centre in voxels."""
    return np.array([(n - 1) / 2 for n in shape[-3:][::-1]], dtype=np.float64)


@dataclass(frozen=True)
class _Start:
    """The best coarse start of one training volume: ``p_train = r (p_query - c) + c + t`` (voxels, (x, y, z)
    = (W, H, D) order, about the centre ``c``) onto the query, mirrored along W first when ``mirrored``."""

    value: float
    mirrored: bool
    r: np.ndarray
    t: np.ndarray


class _CoarseSearch:
    """The coarse rotation-and-shift search of one volume shape (:func:`registered_nearest`, step 1).

    Holds the transforms (mirror x rotations x shifts) and the sampling grid, so each query costs one
    ``grid_sample`` and one matrix product with the coarse training volumes.
    """

    def __init__(self, shape: tuple[int, ...], cfg: RegisterConfig) -> None:
        self.cfg = cfg
        self.rots = _rotations(cfg.extra_rotations)
        side = np.array(shape[-3:][::-1], dtype=np.float64)
        f = cfg.coarse_shift
        # no shift and +-f along each axis (7): the rotations need the budget more than the shifts, which the
        # smoothing makes forgiving and the rigid stage refines
        self.shifts = np.concatenate([np.zeros((1, 3)), np.eye(3) * f, -np.eye(3) * f]) * side
        s = _half_extent(shape)
        # the query is moved into the training volume's frame: p_query = R^T (p_train - c - t) + c; in normalised
        # coordinates u = (p - c) / s: u_query = S^-1 R^T S u_train - S^-1 R^T t
        inv = np.einsum("rji->rij", self.rots)  # R^T
        lin = np.einsum("i,rij,j->rij", 1 / s, inv, s)
        off = -np.einsum("i,rij,sj->rsi", 1 / s, inv, self.shifts).reshape(-1, 3, 1)
        theta = torch.as_tensor(np.concatenate([np.repeat(lin, len(self.shifts), 0), off], axis=2), dtype=torch.float32)
        n = cfg.coarse_size
        self.grid = F.affine_grid(theta, [len(theta), 1, n, n, n], align_corners=True)

    def base(self, volumes: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """(N, coarse_size^3) standardised coarse training volumes."""
        return torch.cat([standardise(_coarse(volumes[i:i + chunk], self.cfg).flatten(1))
                          for i in range(0, len(volumes), chunk)])

    def scores(self, query: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best coarse Pearson correlation of one (1, D, H, W) query with each coarse base volume (N, V) over
        the transforms, and the flat index (mirror, rotation, shift) of the best: two (N,) tensors."""
        q = _coarse(query[None], self.cfg)
        best_v, best_i = None, None
        for mirrored in (False, True):
            qm = _mirror(q) if mirrored else q
            moved = F.grid_sample(qm.expand(len(self.grid), -1, -1, -1, -1), self.grid, padding_mode="border",
                                  align_corners=True)
            v, i = (standardise(moved.flatten(1)) @ base.T).max(0)  # over transforms
            i = i + mirrored * len(self.grid)
            best_v = v if best_v is None else torch.maximum(best_v, v)
            best_i = i if best_i is None else torch.where(v >= best_v, i, best_i)
        assert best_v is not None and best_i is not None
        return best_v, best_i

    def start(self, value: float, flat: int) -> _Start:
        m, tr = divmod(int(flat), len(self.grid))
        r, sh = divmod(tr, len(self.shifts))
        return _Start(float(value), bool(m), self.rots[r], self.shifts[sh])


# --------------------------------------------------------------------------------------------- SimpleITK

def _image(volume: torch.Tensor) -> Any:
    """(1, D, H, W) tensor -> SimpleITK image, spacing 1, origin 0, so physical (x, y, z) = voxel (W, H, D)."""
    import SimpleITK as sitk

    return sitk.GetImageFromArray(volume[0].detach().cpu().numpy().astype(np.float32))


def _method(cfg: RegisterConfig, iterations: int) -> Any:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns on every sample-less step of a far start
    reg = sitk.ImageRegistrationMethod()
    if cfg.metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    else:
        reg.SetMetricAsCorrelation()
    # a fixed random quarter of the voxels: ~4x cheaper per iteration, deterministic (seeded)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(cfg.sampling, 1)  # seed 0 would be sitkWallClock: not repeatable
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(cfg.shrink))
    reg.SetSmoothingSigmasPerLevel(list(cfg.smoothing))
    reg.SetNumberOfThreads(cfg.threads)
    return reg


def _register(fixed: Any, moving: Any, transform: Any, cfg: RegisterConfig, stage: str) -> Any:
    """Optimise ``transform`` (fixed -> moving points) in place and return it."""
    reg = _method(cfg, cfg.iterations)
    if stage == "bspline":
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=cfg.iterations,
                                 maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * cfg.iterations)
        reg.SetInitialTransform(transform, inPlace=True)
    else:
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=0.25, minStep=1e-3, numberOfIterations=cfg.iterations,
                                                     relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(transform, inPlace=True)
    start = transform.GetParameters()
    try:
        reg.Execute(fixed, moving)
        ok = bool(np.isfinite(transform.GetParameters()).all())
    except RuntimeError:  # e.g. every sample mapped outside the moving image
        ok = False
    if not ok:  # a diverged optimisation keeps its start
        transform.SetParameters(start)
    return transform


def _warp(moving: Any, fixed: Any, transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The moving volume and its coverage on the fixed grid: two (D, H, W) tensors (coverage in [0, 1])."""
    import SimpleITK as sitk

    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ones = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(moving)
    cover = sitk.Resample(ones, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return torch.from_numpy(sitk.GetArrayFromImage(warped)), torch.from_numpy(sitk.GetArrayFromImage(cover))


def local_ncc_score(query: torch.Tensor, warped: torch.Tensor, cover: torch.Tensor, cfg: RegisterConfig) -> float:
    """Median over the query's voxels of the local normalised cross-correlation with ``warped``.

    Args:
        query: (D, H, W) the synthetic volume.
        warped: (D, H, W) the training volume registered onto the query's grid.
        cover: (D, H, W) in [0, 1], where the registered training volume covers the query's grid.
        cfg: ``sigma`` (smoothing first), ``window`` (box side) and ``flat`` (boxes with a standard deviation
            below it carry no anatomy).

    Returns:
        The median of the map over the query's informative voxels (whose box is not flat in the query: uniform
        air or background cannot tell one patient from another, and would make every pair of mostly-empty
        volumes a match or none), in [-1, 1]; informative voxels outside the overlap (``cover`` < 0.99), whose
        box is less than half covered, or where the registered training volume is flat score 0. 0 when the
        query is flat everywhere. Higher = more similar.
    """
    from memostudy.detect.alignment import smooth

    x = smooth(query[None, None].float(), cfg.sigma)
    y = smooth(warped[None, None].float(), cfg.sigma)
    m = (cover[None, None] >= 0.99).float()
    w = cfg.window

    def box(v: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(v, w, stride=1, padding=w // 2, count_include_pad=True)

    n = box(m).clamp_min(1e-6)
    mx, my = box(m * x) / n, box(m * y) / n
    vx = (box(m * x * x) / n - mx * mx).clamp_min(0)
    vy = (box(m * y * y) / n - my * my).clamp_min(0)
    cov = box(m * x * y) / n - mx * my
    ok = (m > 0) & (n >= 0.5) & (vx > cfg.flat ** 2) & (vy > cfg.flat ** 2)
    ncc = torch.where(ok, cov / (vx * vy).clamp_min(1e-12).sqrt(), torch.zeros_like(cov)).clamp(-1, 1)
    # the query's own boxes, whatever the overlap: a flat box (air, background) shows no anatomy
    qm = box(x)
    informative = (box(x * x) - qm * qm) > cfg.flat ** 2
    if not informative.any():
        return 0.0
    return float(ncc[informative].median())


def _rigid_from_start(shape: tuple[int, ...], r: np.ndarray, t: np.ndarray) -> Any:
    """Euler3DTransform about the volume's centre from a start ``p_train = r (p_query - c) + c + t`` (voxels)."""
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    tr = sitk.Euler3DTransform()
    tr.SetCenter(tuple(float(v) for v in _half_extent(shape)))
    # ITK's Euler3D (ComputeZYX off) is Rz Rx Ry: scipy's extrinsic "yxz" angles. SetMatrix would take asin of
    # entries that rounding puts a hair past 1 for the cube's rotations, giving NaN angles
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gimbal lock at 90 degrees: the matrix is still exact
        ay, ax, az = Rotation.from_matrix(np.asarray(r, dtype=np.float64)).as_euler("yxz")
    tr.SetRotation(float(ax), float(ay), float(az))
    tr.SetTranslation(tuple(float(v) for v in t))
    return tr


def _change(transform: Any, mirrored: bool, stage: str, shape: tuple[int, int, int],
            deformation: float | None) -> Change:
    """The :class:`Change` of a rigid or affine transform (fixed = synthetic -> moving = training points)."""
    from scipy.linalg import polar
    from scipy.spatial.transform import Rotation

    a = np.array(transform.GetMatrix()).reshape(3, 3)
    t = np.array(transform.GetTranslation())
    rot, stretch = polar(a)  # a = rot @ stretch
    if np.linalg.det(rot) < 0:  # cannot happen from a proper start; keep the numbers sane if it does
        rot = -rot
    # the synthetic is the training volume moved by rot^T about the centre; its centre goes to c - a^-1 t
    rv = Rotation.from_matrix(rot.T).as_rotvec()
    angle = float(np.linalg.norm(rv))
    axis = rv / angle if angle > 1e-9 else np.zeros(3)
    shift = -np.linalg.solve(a, t)
    return Change(mirrored=mirrored, rotation_deg=math.degrees(angle),
                  rotation_axis=tuple(float(v) for v in axis[::-1]),  # type: ignore[arg-type]
                  shift_voxels=tuple(float(v) for v in shift[::-1]),  # type: ignore[arg-type]
                  scales=tuple(float(v) for v in np.sort(np.linalg.eigvalsh(stretch))),  # type: ignore[arg-type]
                  deformation_voxels=deformation, stage=stage)


def _score(q: torch.Tensor, moving: Any, fixed: Any, transform: Any, cfg: RegisterConfig) -> float:
    if cfg.score == "blocks":
        from memostudy.detect.blocks import block_score

        return block_score(q[0], *_warp(moving, fixed, transform))
    return local_ncc_score(q[0], *_warp(moving, fixed, transform), cfg)


def register_pair(query: torch.Tensor, train: torch.Tensor, start: _Start, cfg: RegisterConfig,
                  stages: tuple[str, ...] | None = None) -> tuple[float, Change, Any]:
    """Register one training volume onto one synthetic volume from a coarse start, through the stages.

    Args:
        query: (1, D, H, W) the synthetic volume (fixed).
        train: (1, D, H, W) the training volume (moving).
        start: the coarse start (mirror, rotation, shift).
        cfg: the settings.
        stages: the stages to run (default ``cfg.stages``).

    Returns:
        (score, change, transform): the best :func:`local_ncc_score` over the stages run, its :class:`Change`,
        and the SimpleITK transform (fixed -> moving points) it was found with.
    """
    import SimpleITK as sitk

    stages = cfg.stages if stages is None else stages
    q = _mirror(query) if start.mirrored else query
    shape = tuple(query.shape[-3:])
    fixed, moving = _image(q), _image(train)
    rigid = _register(fixed, moving, _rigid_from_start(shape, start.r, start.t), cfg, "rigid")
    best = (_score(q, moving, fixed, rigid, cfg), _change(rigid, start.mirrored, "rigid", shape, None), rigid)
    linear = rigid
    if "affine" in stages:
        affine = sitk.AffineTransform(3)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        _register(fixed, moving, affine, cfg, "affine")
        score = _score(q, moving, fixed, affine, cfg)
        if score > best[0]:
            best, linear = (score, _change(affine, start.mirrored, "affine", shape, None), affine), affine
    if "bspline" in stages:
        # the B-spline grid sits on the fixed image; the linear result is applied after it (composite)
        bs = sitk.BSplineTransformInitializer(fixed, [cfg.bspline_mesh] * 3, order=3)
        composite = sitk.CompositeTransform([linear, bs])
        _register(fixed, moving, composite, cfg, "bspline")
        score = _score(q, moving, fixed, composite, cfg)
        if score > best[0]:
            field = sitk.TransformToDisplacementField(composite.GetNthTransform(1), sitk.sitkVectorFloat64,
                                                      fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
                                                      fixed.GetDirection())
            rms = float(np.sqrt((sitk.GetArrayFromImage(field) ** 2).sum(-1).mean()))
            best = (score, _change(composite.GetNthTransform(0), start.mirrored, "bspline", shape, rms), composite)
    return best


def registered_nearest(query: torch.Tensor, base: torch.Tensor, shortlist: torch.Tensor | None = None,
                       cfg: RegisterConfig = RegisterConfig(), progress: bool = False,
                       score_on: str = "query") -> Registered:
    """For each query volume, its best-registered base volume, the score and the change.

    Per query: the coarse search (module docstring, step 1) scores every base volume; the shortlist is the
    given one (e.g. :func:`memostudy.detect.alignment.candidates`) plus the ``cfg.shortlist`` best by the coarse
    search; its ``cfg.starts`` best by the coarse search are registered rigidly, each from its best coarse
    start, and the best of those (by score) goes on through the remaining stages.

    Args:
        query: (Nq, 1, D, H, W) volumes searched from (synthetic, reference, or copies).
        base: (Nb, 1, D, H, W) volumes of the same shape searched in (usually the training set).
        shortlist: (Nq, M) base indices to consider per query besides the coarse search's (repeats ignored).
        cfg: the settings.
        progress: a progress bar over the queries.
        score_on: "query": the query volume is the fixed image whose voxels the score counts (synthetic ->
            training searches); "base": the base volume is (training -> synthetic searches), so the score
            always counts the synthetic volume's voxels.

    Returns:
        :class:`Registered`.
    """
    import time

    import SimpleITK as sitk
    from tqdm.auto import tqdm

    cfg.validate()
    if query.dim() == 4 or base.dim() == 4:
        # the coarse search samples SO(3) and the stages are Euler3D / 3D affine / 3D B-spline: a 2D version
        # needs its own rotation set, transforms and a measured threshold, not done yet
        raise ConfigError("the registered detector is 3D only: 2D images (N, 1, H, W) are not supported; "
                          "use the other detectors (contrastive, pixel, aligned) for 2D data")
    if query.shape[1:] != base.shape[1:] or query.dim() != 5 or query.shape[1] != 1:
        raise ValueError(f"registration needs (N, 1, D, H, W) volumes of one shape, got {tuple(query.shape)} "
                         f"and {tuple(base.shape)}")
    if score_on not in ("query", "base"):
        raise ValueError(f"score_on must be 'query' or 'base', got {score_on!r}")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(cfg.threads)  # Resample and the filters
    search = _CoarseSearch(tuple(query.shape), cfg)
    coarse_base = search.base(base)
    values = torch.empty(len(query))
    indices = torch.empty(len(query), dtype=torch.int64)
    changes: list[Change] = []
    lists: list[torch.Tensor] = []
    pairs, seconds = 0, 0.0
    for i in tqdm(range(len(query)), desc="registered correlation", disable=not progress):
        v, flat = search.scores(query[i], coarse_base)
        own = v.topk(min(cfg.shortlist, len(base))).indices
        cand = torch.unique(own if shortlist is None else torch.cat([own, shortlist[i]]))
        lists.append(cand)
        order = cand[v[cand].argsort(descending=True)][:cfg.starts]
        best: tuple[float, int, Change, _Start] | None = None
        t0 = time.perf_counter()
        for c in order.tolist():
            start = search.start(float(v[c]), int(flat[c]))
            fixed, moving = query[i], base[c]
            if score_on == "base":  # the start maps query -> base; invert it (mirror M about the centre)
                mm = np.diag([-1.0, 1.0, 1.0]) if start.mirrored else np.eye(3)
                start = _Start(start.value, start.mirrored, mm @ start.r.T @ mm, -mm @ start.r.T @ start.t)
                fixed, moving = base[c], query[i]
            score, change, _ = register_pair(fixed, moving, start, cfg, stages=("rigid",))
            pairs += 1
            if best is None or score > best[0]:
                best = (score, c, change, start)
        assert best is not None
        if len(cfg.stages) > 1:  # the later stages only for the best rigid match
            c, start = best[1], best[3]
            fixed, moving = (query[i], base[c]) if score_on == "query" else (base[c], query[i])
            score, change, _ = register_pair(fixed, moving, start, cfg)
            if score > best[0]:
                best = (score, c, change, start)
        seconds += time.perf_counter() - t0
        values[i], indices[i] = best[0], best[1]
        changes.append(best[2])
    return Registered(Nearest(values, indices), changes, lists, seconds / max(1, pairs))
