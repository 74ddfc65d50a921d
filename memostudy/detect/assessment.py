"""Memorization assessment: which synthetic volumes are copies of which training volumes.

:func:`assess` composes the pieces — the detector's vectors and their search (:mod:`memostudy.detect.matching`,
:mod:`memostudy.detect.similarity`), the calibrated threshold and fractions
(:mod:`memostudy.detect.metrics`) and the pixel baseline (:mod:`memostudy.detect.baseline`) — and owns no maths
of its own; it returns typed results (:class:`Assessment`, :class:`AssessmentSummary`), and
:mod:`memostudy.report.audit` writes the files of ``memostudy audit``.

Decisions (for each detector: contrastive, pixel, blocks, blocks-either, and with ``aligned`` the aligned pixel correlation of
:mod:`memostudy.detect.alignment` and "combined", a copy for either the contrastive or the aligned detector):
- threshold = ``percentile`` of the reference volumes' nearest-training similarities;
- a training volume is *memorized* when its nearest synthetic volume (its copy candidate) is
  more similar than the threshold;
- a synthetic volume is a *copy* when its nearest training volume is more similar than the threshold;
- beside that rule, each synthetic volume gets a conformal p-value (the share of reference volumes that
  score at least as high, :func:`memostudy.detect.calibration.conformal_p_values`) and a Benjamini-Hochberg
  decision at false-discovery rate ``fdr`` over the synthetic set (:func:`~memostudy.detect.calibration.bh_decisions`):
  the percentile rule controls the share of novel volumes called copies, BH the share of copies called that
  are novel;
- with ``reference_smoothness="matched"`` the reference is first degraded to the synthetic set's smoothness
  and noise (:func:`~memostudy.detect.calibration.matched_smoothness`), so the threshold and p-values are
  those of novel volumes as a generator renders them; the smoothness of every set is measured either way;
- every volume flagged by either rule gets a :class:`~memostudy.detect.evidence.CopyEvidence`: its training
  volume, score, p-value and the change (orientation, shift, blur) that aligns the two.
The copy fraction is calibrated like for like (synthetic->train and reference->train are both a max
over the training set); the memorized fraction is a max over the synthetic set, so it grows with the
number of synthetic volumes even without copies (as in the papers).

Output columns (``synthetic.csv``): synthetic_id (file name), nearest_train_id, similarity (contrastive,
higher = more similar), is_copy (0/1), pixel_nearest_train_id, pixel_similarity (max voxel Pearson
correlation), pixel_is_copy (0/1). ``train.csv``: train_id, nearest_synthetic_id, similarity,
memorized (0/1), and the same three pixel_* columns. ``reference.csv``: reference_id,
nearest_train_id, similarity, pixel_nearest_train_id, pixel_similarity. The same columns again with the
prefixes ``blocks_`` (the block correlation, on by default), ``blocks_either_`` (plain or oriented block
correlation, the higher reference rank in [0, 1]; on by default) and, with ``aligned``, ``aligned_`` (best normalised
cross-correlation after alignment) and ``combined_`` (the higher of the two detectors' reference percentile ranks,
in [0, 1]); without the contrastive detector (``contrastive=False``) the unprefixed columns are absent
(:func:`column_prefix`). ``synthetic.csv`` also
has, per detector prefix, ``p_value`` (conformal, in [1 / (1 + n_reference), 1], small = copy-like),
``q_value`` (BH-adjusted) and ``bh_copy`` (0/1, ``q_value <= fdr``). ``evidence.csv``: see
:func:`memostudy.detect.evidence.evidence_table`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from memostudy.config import to_dict
from memostudy.detect.alignment import AlignConfig, Alignment, align_pairs
from memostudy.detect.calibration import copy_decisions, matched_smoothness, noise_std, roughness
from memostudy.detect.detector import Detector, DetectorConfig
from memostudy.detect.evidence import CopyEvidence
from memostudy.detect.matching import CompareConfig
from memostudy.detect.metrics import Fraction, calibrate_threshold, copy_fraction, is_copy, memorized_fraction
from memostudy.detect.registry import Searches
from memostudy.detect.similarity import METRICS, Nearest
from memostudy.errors import ConfigError, DataError
from memostudy.seeds import Stream, generator

INTENSITY_RULES = ("auto", "as-stored", "joint")
#: how the reference is treated before it is scored: as it is, or degraded to the synthetic set's smoothness
REFERENCE_SMOOTHNESS = ("as-is", "matched")


@dataclass
class AssessConfig:
    """Settings of an assessment.

    Attributes:
        percentile: threshold percentile (0-100) of the reference's nearest-training similarities.
        metric: embedding similarity, "pearson" (journal) or "msd" (conference; stored negated so
            higher = more similar).
        n_boot: bootstrap replicates of the CIs.
        confidence: CI level.
        seed: bootstrap seed.
        pixel_baseline: also run the pixel-correlation baseline.
        contrastive: run the contrastive detector (it needs a trained detector). False runs the training-free
            detectors only (``pixel_baseline`` and ``blocks``; the headline is then the block correlation, or the
            pixel baseline without it): no detector training and no encoding, the fast path for large sets
            (README, "Audit at the papers' scale"). The aligned detector's shortlist is the contrastive
            embedding, so ``aligned`` needs it.
        blocks: also run the block correlation (:mod:`memostudy.detect.blocks`: the best half of 8^3 blocks,
            a few times the pixel baseline's cost; it finds partial copies and locally changed ones).
        blocks_oriented: with ``blocks`` (else ignored), also run "blocks-either" (:mod:`memostudy.detect.registry`): a copy for
            the plain block correlation or for the block correlation of the query in its best flip or 90-degree
            rotation on a shortlist of pairs, by the higher reference rank; it finds flipped and rotated copies,
            which the plain block correlation misses.
        batch_size: volumes per detector forward pass.
        aligned: also run the aligned pixel correlation and its combination with the contrastive
            detector (the best of the validated detectors; about 0.2 s per volume of 32^3 on 2 cores,
            for train, reference and synthetic volumes alike).
        align: settings of the aligned correlation.
        compare: how the contrastive detector compares volumes (representation, shift search,
            orientation pooling); applies to any detector, loaded or trained.
        fdr: false-discovery rate of the Benjamini-Hochberg decisions, in (0, 1).
        reference_smoothness: "as-is" (the reference scored as it is) or "matched" (blurred and noised
            to the synthetic set's measured smoothness and noise first, :func:`matched_smoothness`).
        evidence: align each flagged copy with its training volume to report the change (one aligned
            search per flagged pair).
    """

    percentile: float = 95.0
    metric: str = "pearson"
    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0
    pixel_baseline: bool = True
    contrastive: bool = True
    blocks: bool = True
    blocks_oriented: bool = True
    batch_size: int = 64
    aligned: bool = False
    align: AlignConfig = field(default_factory=AlignConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    fdr: float = 0.05
    reference_smoothness: str = "as-is"
    evidence: bool = True

    def validate(self) -> AssessConfig:
        if not 0 <= self.percentile <= 100:
            raise ConfigError(f"percentile must be in [0, 100], got {self.percentile}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.n_boot < 1:
            raise ConfigError(f"n_boot must be >= 1, got {self.n_boot}")
        if not 0 < self.fdr < 1:
            raise ConfigError(f"fdr must be in (0, 1), e.g. 0.05, got {self.fdr}")
        if not self.contrastive and self.aligned:
            raise ConfigError("the aligned detector needs the contrastive one (its shortlist is the contrastive "
                              "embedding): run both, or neither")
        if not (self.contrastive or self.pixel_baseline or self.blocks):
            raise ConfigError("no detector to run: keep the contrastive detector, the block correlation or the "
                              "pixel baseline")
        if self.reference_smoothness not in REFERENCE_SMOOTHNESS:
            raise ConfigError(f"reference_smoothness must be one of {', '.join(REFERENCE_SMOOTHNESS)}, "
                              f"got {self.reference_smoothness!r}")
        self.align.validate()
        self.compare.validate()
        return self


@dataclass(frozen=True)
class DetectorFigures:
    """One detector's result in an assessment (similarities are "higher = more similar").

    Attributes:
        threshold: similarity above which a volume is a copy (the ``percentile`` of the reference
            volumes' nearest-training similarities).
        memorized: fraction of training volumes whose nearest synthetic volume is above the threshold.
        copies: fraction of synthetic volumes whose nearest training volume is above the threshold.
        synthetic_similarity_median: median nearest-training similarity of the synthetic volumes.
        reference_similarity_median: the same for the reference volumes.
        n_bh_copies: synthetic volumes flagged by Benjamini-Hochberg at the assessment's ``fdr`` (None
            when not computed).
        min_p_value: the smallest conformal p-value of a synthetic volume (None when not computed); it
            cannot be below ``1 / (1 + n_reference)``.
    """

    threshold: float
    memorized: Fraction
    copies: Fraction
    synthetic_similarity_median: float
    reference_similarity_median: float
    n_bh_copies: int | None = None
    min_p_value: float | None = None

    @property
    def n_memorized(self) -> int:
        """Number of memorized training volumes."""
        return int(round(self.memorized.value * self.memorized.n))

    @property
    def n_copies(self) -> int:
        """Number of synthetic volumes that are copies."""
        return int(round(self.copies.value * self.copies.n))

    def as_dict(self) -> dict[str, Any]:
        """The JSON layout of ``summary.json`` (fractions with ``_ci`` = [lo, hi])."""
        return {"threshold": self.threshold, "memorized_fraction": self.memorized.value,
                "memorized_fraction_ci": [self.memorized.lo, self.memorized.hi],
                "copy_fraction": self.copies.value, "copy_fraction_ci": [self.copies.lo, self.copies.hi],
                "n_memorized": self.n_memorized, "n_copies": self.n_copies,
                "synthetic_similarity_median": self.synthetic_similarity_median,
                "reference_similarity_median": self.reference_similarity_median,
                "n_bh_copies": self.n_bh_copies, "min_p_value": self.min_p_value}


#: names of the optional detectors in ``summary.json`` (``pixel`` is written as ``pixel_baseline``)
_SUMMARY_KEYS = {"pixel": "pixel_baseline", "blocks": "blocks", "blocks-either": "blocks_either", "aligned": "aligned",
                 "combined": "combined"}
#: the headline detector: the first of these that ran (the contrastive detector unless it was switched off)
HEADLINE_ORDER = ("contrastive", "blocks-either", "blocks", "pixel")


def column_prefix(detector: str) -> str:
    """The prefix of a detector's columns in the assessment's tables: none for the contrastive detector
    (``similarity``, ``is_copy`` ...), ``<name>_`` for the others with ``-`` as ``_`` (``blocks_similarity``,
    ``blocks_either_similarity`` ...)."""
    return "" if detector == "contrastive" else f"{detector.replace('-', '_')}_"


@dataclass(frozen=True)
class AssessmentSummary:
    """The figures of an assessment (what ``summary.json`` holds, see :meth:`as_dict`).

    Attributes:
        n_train, n_reference, n_synthetic: numbers of volumes.
        detectors: detector name ("contrastive", "pixel", "blocks", "aligned", "combined", those that ran) -> its
            figures.
        detector_config: the contrastive detector's architecture and training config (None when it did not run).
        best_epoch: the detector's kept epoch (0 = untrained; None when it did not run).
        config: the :class:`AssessConfig` used (metric, percentile, confidence, comparison ...).
        smoothness: the measured smoothness of each set and how the reference was treated (see
            :func:`measure_smoothness`); empty when not measured.
    """

    n_train: int
    n_reference: int
    n_synthetic: int
    detectors: dict[str, DetectorFigures]
    detector_config: DetectorConfig | None
    best_epoch: int | None
    config: AssessConfig
    smoothness: dict[str, Any] = field(default_factory=dict)

    @property
    def contrastive(self) -> DetectorFigures:
        """The contrastive detector's figures (the study's headline; KeyError when it did not run)."""
        return self.detectors["contrastive"]

    @property
    def headline_detector(self) -> str:
        """The name of the headline detector: the first of :data:`HEADLINE_ORDER` that ran."""
        return next(name for name in HEADLINE_ORDER if name in self.detectors)

    @property
    def headline(self) -> DetectorFigures:
        """The headline detector's figures (:attr:`headline_detector`)."""
        return self.detectors[self.headline_detector]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, in the layout of the audit's ``summary.json``: n_train, n_reference, n_synthetic,
        metric, percentile, confidence, ``headline`` (the headline detector's name) and its figures
        (:meth:`DetectorFigures.as_dict`) at the top level, ``pixel_baseline`` / ``blocks`` / ``blocks_either`` /
        ``aligned`` / ``combined``
        (the same figures, or None when not run), ``detector`` (config and best epoch; None without the contrastive
        detector), ``assess_config``, then ``fdr`` and ``smoothness``."""
        cfg = self.config
        detector = None if self.detector_config is None else {"config": to_dict(self.detector_config),
                                                              "best_epoch": self.best_epoch}
        return {"n_train": self.n_train, "n_reference": self.n_reference, "n_synthetic": self.n_synthetic,
                "metric": cfg.metric, "percentile": cfg.percentile, "confidence": cfg.confidence,
                "headline": self.headline_detector, **self.headline.as_dict(),
                **{key: (self.detectors[name].as_dict() if name in self.detectors else None)
                   for name, key in _SUMMARY_KEYS.items()},
                "detector": detector, "assess_config": asdict(cfg), "fdr": cfg.fdr, "smoothness": self.smoothness}


@dataclass
class Assessment:
    """Result of :func:`assess`.

    Attributes:
        summary: the figures (:class:`AssessmentSummary`).
        train_table: one row per training volume (columns in the module docstring).
        synthetic_table: one row per synthetic volume.
        reference_table: one row per reference volume.
        distributions: detector ("contrastive", "pixel", ...) -> {"candidates", "synthetic", "reference"}
            -> (N,) float64 nearest similarities, for histograms.
        evidence: one :class:`~memostudy.detect.evidence.CopyEvidence` per (detector, synthetic volume
            flagged by the percentile rule or by BH), detectors in order, smallest p-value first.
    """

    summary: AssessmentSummary
    train_table: pd.DataFrame
    synthetic_table: pd.DataFrame
    reference_table: pd.DataFrame
    distributions: dict[str, dict[str, np.ndarray]]
    evidence: list[CopyEvidence] = field(default_factory=list)

    @property
    def config(self) -> AssessConfig:
        """The :class:`AssessConfig` used."""
        return self.summary.config

    @property
    def thresholds(self) -> dict[str, float]:
        """Detector -> its threshold."""
        return {name: f.threshold for name, f in self.summary.detectors.items()}


def _figures(t2s: Nearest, s2t: Nearest, r2t: Nearest, cfg: AssessConfig, n_bh: int, min_p: float) -> DetectorFigures:
    kw = {"percentile": cfg.percentile, "n_boot": cfg.n_boot, "confidence": cfg.confidence, "seed": cfg.seed}
    return DetectorFigures(threshold=calibrate_threshold(r2t.values, cfg.percentile).value,
                           memorized=memorized_fraction(t2s.values, r2t.values, **kw),
                           copies=copy_fraction(s2t.values, r2t.values, **kw),
                           synthetic_similarity_median=float(s2t.values.median()),
                           reference_similarity_median=float(r2t.values.median()),
                           n_bh_copies=n_bh, min_p_value=min_p)


def measure_smoothness(sets: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Set medians of :func:`~memostudy.detect.calibration.roughness` (mean squared spatial frequency with
    the noise taken out; lower = smoother) and :func:`~memostudy.detect.calibration.noise_std` per named
    set of ``(N, 1, D, H, W)`` volumes: ``{"roughness": {name: value}, "noise_std": {name: value}}``."""
    return {"roughness": {k: float(roughness(v, f"roughness of {k}").median()) for k, v in sets.items()},
            "noise_std": {k: float(noise_std(v, f"noise of {k}").median()) for k, v in sets.items()}}


def treat_reference(reference: torch.Tensor, synthetic: torch.Tensor, rule: str,
                    seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """The reference as it will be scored, and what was measured and done (for ``summary.json``).

    Args:
        reference: (Nr, 1, D, H, W) real novel volumes.
        synthetic: (Ns, 1, D, H, W) the volumes assessed.
        rule: "as-is" or "matched" (:data:`REFERENCE_SMOOTHNESS`).
        seed: seed of the noise a "matched" reference gets.

    Returns:
        ``(reference to score, info)``: info has ``reference_smoothness`` (the rule), ``roughness`` and
        ``noise_std`` (set medians for "reference", "synthetic" and, when matched, "reference_matched"),
        and for "matched" the ``blur_sigma`` and ``added_noise_std`` applied.
    """
    if rule not in REFERENCE_SMOOTHNESS:
        raise ConfigError(f"reference_smoothness must be one of {', '.join(REFERENCE_SMOOTHNESS)}, got {rule!r}")
    sets = {"reference": reference, "synthetic": synthetic}
    if rule == "as-is":
        return reference, {"reference_smoothness": rule, **measure_smoothness(sets)}
    m = matched_smoothness(reference, synthetic, seed=seed)
    return m.reference, {"reference_smoothness": rule, **measure_smoothness(sets | {"reference_matched": m.reference}),
                         "blur_sigma": m.sigma, "added_noise_std": m.noise}


def assess(train: torch.Tensor, reference: torch.Tensor, synthetic: torch.Tensor, detector: Detector | None,
           train_ids: list[str], reference_ids: list[str], synthetic_ids: list[str],
           percentile: float = 95.0, metric: str = "pearson", pixel_baseline: bool = True,
           cfg: AssessConfig | None = None) -> Assessment:
    """Find the copies of training volumes among synthetic volumes.

    Args:
        train: (Nt, 1, D, H, W) float32 training volumes (what the generator was trained on), in the
            detector's range ([-1, 1]; see :func:`scale_intensities` for a user's folders).
        reference: (Nr, 1, D, H, W) real volumes never in train (calibrate the threshold).
        synthetic: (Ns, 1, D, H, W) generated volumes.
        detector: trained contrastive detector (compared as ``cfg.compare`` says); None with ``cfg.contrastive``
            False (the training-free detectors only).
        train_ids, reference_ids, synthetic_ids: names of the volumes (file names in the audit).
        percentile: threshold percentile (0-100) of the reference's nearest-training similarities.
        metric: embedding similarity, "pearson" (journal) or "msd" (conference, negated: higher = more similar).
        pixel_baseline: also run the pixel-correlation baseline.
        cfg: all settings at once (bootstrap size, CI level, seed, comparison ...); when given, it replaces
            ``percentile``, ``metric`` and ``pixel_baseline``.

    Returns:
        :class:`Assessment` with an :class:`AssessmentSummary` per detector of
        :mod:`memostudy.detect.registry` run: "contrastive" (with ``cfg.contrastive``), "pixel" (with
        ``pixel_baseline``), "blocks" (with ``cfg.blocks``), "blocks-either" (with ``cfg.blocks_oriented`` too),
        "aligned" and "combined" (with ``aligned``).
    """
    cfg = (cfg or AssessConfig(percentile=percentile, metric=metric, pixel_baseline=pixel_baseline)).validate()
    if cfg.contrastive and detector is None:
        raise ConfigError("the contrastive detector needs a trained detector: pass one, or switch the contrastive "
                          "detector off (AssessConfig.contrastive=False)")
    for name, vols, ids in (("train", train, train_ids), ("reference", reference, reference_ids),
                            ("synthetic", synthetic, synthetic_ids)):
        if len(vols) == 0:
            raise DataError(f"no {name} volumes: the assessment needs at least one of each")
        if len(vols) != len(ids):
            raise ValueError(f"{name}: {len(vols)} volumes but {len(ids)} ids")
        if vols.shape[1:] != train.shape[1:]:
            raise DataError(f"{name} volumes have shape {tuple(vols.shape[2:])} but train volumes {tuple(train.shape[2:])}; "
                            "crop or resample every folder to one shape")
    names = [*(["contrastive"] if cfg.contrastive else []), *(["pixel"] if cfg.pixel_baseline else []), *(["blocks"] if cfg.blocks else []),
             *(["blocks-either"] if cfg.blocks and cfg.blocks_oriented else []),
             *(["aligned", "combined"] if cfg.aligned else [])]
    scored_reference, smoothness = treat_reference(reference, synthetic, cfg.reference_smoothness, cfg.seed)
    search = Searches(detector, train, {"synthetic": synthetic, "reference": scored_reference}, cfg.compare, cfg.metric,
                      cfg.align, batch_size=cfg.batch_size, progress=True)
    tid, sid, rid = np.asarray(train_ids, dtype=object), np.asarray(synthetic_ids, dtype=object), np.asarray(reference_ids, dtype=object)
    tables: dict[str, dict[str, Any]] = {"train": {"train_id": tid}, "synthetic": {"synthetic_id": sid},
                                         "reference": {"reference_id": rid}}
    figures, distributions, flagged = {}, {}, {}
    for det in names:
        t2s, s2t, r2t = search.reverse(det, "synthetic"), search.nearest(det, "synthetic"), search.nearest(det, "reference")
        d = copy_decisions(s2t.values, r2t.values, cfg.fdr)
        figures[det] = f = _figures(t2s, s2t, r2t, cfg, d.n_flagged, float(d.p_values.min()))
        p = column_prefix(det)
        pct = is_copy(s2t.values, f.threshold)
        flagged[det] = (s2t, d, pct)
        tables["train"].update({f"{p}nearest_synthetic_id": sid[t2s.indices.numpy()], f"{p}similarity": t2s.values.numpy(),
                                f"{p}memorized": is_copy(t2s.values, f.threshold).astype(int)})
        tables["synthetic"].update({f"{p}nearest_train_id": tid[s2t.indices.numpy()], f"{p}similarity": s2t.values.numpy(),
                                    f"{p}is_copy": pct.astype(int), f"{p}p_value": d.p_values,
                                    f"{p}q_value": d.q_values, f"{p}bh_copy": d.flagged.astype(int)})
        tables["reference"].update({f"{p}nearest_train_id": tid[r2t.indices.numpy()], f"{p}similarity": r2t.values.numpy()})
        distributions[det] = {"candidates": t2s.values.double().numpy(), "synthetic": s2t.values.double().numpy(),
                              "reference": r2t.values.double().numpy()}
    det_config, best_epoch = (detector.config, detector.best_epoch) if cfg.contrastive else (None, None)
    summary = AssessmentSummary(len(train), len(reference), len(synthetic), figures, det_config, best_epoch, cfg,
                                smoothness)
    evidence = copy_evidence(flagged, train, synthetic, train_ids, synthetic_ids, cfg.align if cfg.evidence else None,
                             known=search.alignments("synthetic"))
    return Assessment(summary, pd.DataFrame(tables["train"]), pd.DataFrame(tables["synthetic"]),
                      pd.DataFrame(tables["reference"]), distributions, evidence)


def copy_evidence(flagged: dict[str, tuple[Nearest, Any, np.ndarray]], train: torch.Tensor, synthetic: torch.Tensor,
                  train_ids: list[str], synthetic_ids: list[str], align: AlignConfig | None,
                  known: dict[tuple[int, int], Alignment] | None = None) -> list[CopyEvidence]:
    """One :class:`CopyEvidence` per (detector, synthetic volume flagged by the percentile rule or BH).

    Args:
        flagged: detector -> (its synthetic -> nearest training search, its
            :class:`~memostudy.detect.calibration.CopyDecisions`, (Ns,) bool percentile-rule decisions).
        train, synthetic: (N, 1, D, H, W) volumes as assessed.
        train_ids, synthetic_ids: their names.
        align: settings of the aligned search that measures each change (each distinct flagged pair is
            aligned once); None = report no change.
        known: alignments already found with these settings by (synthetic index, training index), e.g. by the
            aligned detector's search (:meth:`memostudy.detect.registry.Searches.alignments`); those pairs are
            not aligned again.

    Returns:
        detectors in the order given, each's flagged volumes by p-value then score (highest first).
    """
    todo = []
    for det, (s2t, d, pct) in flagged.items():
        picked = np.flatnonzero(pct | d.flagged)
        order = np.lexsort((-s2t.values.numpy()[picked], d.p_values[picked]))
        todo += [(det, int(i), int(s2t.indices[i])) for i in picked[order]]
    pairs = sorted({(i, j) for _, i, j in todo})
    changes = {}
    if align is not None and pairs:
        known = known or {}
        todo_pairs = [pair for pair in pairs if pair not in known]
        found = dict(zip(todo_pairs, align_pairs(synthetic, train, todo_pairs, align, progress=True))) | {
            pair: known[pair] for pair in pairs if pair in known}
        for pair, a in found.items():
            changes[pair] = a.change() | {"aligned_correlation": round(a.correlation, 6)}
    out = []
    for det, i, j in todo:
        s2t, d, pct = flagged[det]
        out.append(CopyEvidence(str(synthetic_ids[i]), str(train_ids[j]), det, float(s2t.values[i]), float(d.p_values[i]),
                                float(d.q_values[i]), bool(pct[i]), bool(d.flagged[i]), changes.get((i, j), {})))
    return out


def scale_intensities(train: torch.Tensor, reference: torch.Tensor, synthetic: torch.Tensor, rule: str = "auto",
                      in_place: bool = False) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, Any]]:
    """Bring the three sets of volumes to the detector's [-1, 1] range by ONE shared linear map.

    Rules:
        "as-stored": no change.
        "joint": map the training volumes' [0.5th, 99.5th] percentile to [-1, 1] and apply that same
            map to all three sets, clipped to [-1, 1] — so intensities stay comparable between sets
            (the volumes must already share units, e.g. HU, or the same [-1, 1] scaling).
        "auto": "as-stored" when every training and reference voxel is within [-1, 1] (the demo
            patches; synthetic volumes of a generator trained on them may overshoot a little and
            are not checked), else "joint".

    Args:
        in_place: write the mapped values into the given (float) tensors instead of new ones: for a caller
            that owns them (the audit's volumes as read), so that 800 volumes of 256 x 256 x 32 are held
            once (6.7 GB), not twice. Either way the map runs in chunks of volumes, without whole-set
            temporaries.

    Returns:
        ((train, reference, synthetic), info) with info = {"rule", "lo", "hi"} (lo/hi of the map, or None).
    """
    if rule not in INTENSITY_RULES:
        raise ConfigError(f"intensity rule must be one of {', '.join(INTENSITY_RULES)}, got {rule!r}")
    if rule == "auto":
        inside = all(max(float(v.max()), -float(v.min())) <= 1.0 + 1e-4 for v in (train, reference))
        rule = "as-stored" if inside else "joint"
    if rule == "as-stored":
        return (train, reference, synthetic), {"rule": rule, "lo": None, "hi": None}
    flat, n_sample = train.flatten(), 2_000_000
    if len(flat) <= n_sample:
        sample = flat
    else:  # indices drawn with replacement: a permutation of every voxel would be 8 bytes per voxel
        sample = flat[torch.randint(len(flat), (n_sample,), generator=generator(Stream.INTENSITY_SUBSAMPLE, 0))]
    lo, hi = (float(x) for x in torch.quantile(sample.float(), torch.tensor([0.005, 0.995])))
    if hi <= lo:
        raise DataError(f"training volumes are constant (value {lo}); cannot scale intensities — check the --train folder")

    if in_place and len({v.untyped_storage().data_ptr() for v in (train, reference, synthetic)}) < 3:
        in_place = False  # one tensor passed twice would be mapped twice

    from memostudy.detect.calibration import volumes_per_chunk

    def f(v: torch.Tensor) -> torch.Tensor:
        out = v if in_place and v.dtype == torch.float32 else torch.empty_like(v, dtype=torch.float32)
        per = volumes_per_chunk(v)
        for i in range(0, len(v), per):
            out[i:i + per] = ((v[i:i + per].float() - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)
        return out

    return (f(train), f(reference), f(synthetic)), {"rule": "joint", "lo": lo, "hi": hi}


#: a volume whose largest |value| exceeds this many times the typical scale of the training and reference
#: volumes (median over volumes of their 0.5-99.5th percentile range and magnitude) is refused: one such
#: volume would set the shared intensity map (1e30 in one file turned every volume into -1 and 0 % copies)
ABSURD_FACTOR = 1e3


def check_intensities(folders: dict[str, tuple[torch.Tensor, list[str], str]]) -> None:
    """Refuse volumes whose values would corrupt the assessment, naming the file.

    Args:
        folders: name ("train", "reference", "synthetic") -> (volumes (N, 1, D, H, W), file names, folder).

    Raises:
        DataError: a volume holds NaN or infinite values, or values more than :data:`ABSURD_FACTOR` times
            the typical scale of the training and reference volumes (a unit or export error); one line
            naming the file.
    """
    from memostudy.detect.calibration import per_volume_chunks

    scales = []
    for name in ("train", "reference"):
        if name in folders:
            flat = folders[name][0].flatten(1)
            sample = flat[:, :: max(1, flat.shape[1] // 100_000)].double()  # subsample first: no copy of the whole set
            q = torch.quantile(sample, torch.tensor([0.005, 0.995], dtype=sample.dtype), dim=1)
            scales.append(torch.maximum(q[1] - q[0], q.abs().amax(0)))
    typical = float(torch.cat(scales).median()) if scales else 0.0
    for name, (vols, ids, folder) in folders.items():
        # one pass per volume, in chunks (a whole-set |x| of 800 volumes of 256 x 256 x 32 is 6.7 GB): the largest
        # |value|, NaN or infinite when the volume holds one (amax propagates NaN)
        peak = per_volume_chunks(lambda v: v.flatten(1).abs().amax(dim=1), vols).double()
        for i in torch.nonzero(~torch.isfinite(peak)).flatten().tolist():
            raise DataError(f"{folder}/{ids[i]}: holds NaN or infinite values; fix or remove this {name} volume")
        if typical > 0:
            for i in torch.nonzero(peak > ABSURD_FACTOR * typical).flatten().tolist():
                raise DataError(f"{folder}/{ids[i]}: values up to {float(peak[i]):.3g}, over {ABSURD_FACTOR:g} times the "
                                f"typical range of the training and reference volumes ({typical:.3g}); check this {name} "
                                "volume's units or export, or remove it")
