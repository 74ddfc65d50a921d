"""Validate copy detectors on a ground truth built from real data.

Ground truth:
- **copies**: training volumes put through each transform family of :mod:`memostudy.detect.views`
  (flip, rot90, shift, blur, intensity, noise, mixed) — known copies, with their source volume;
- **reference**: a deterministic half of the held-out volumes, used only to calibrate the threshold
  (and, when the detector is trained here, for its validation loss);
- **novel**: the other half of the held-out volumes — real volumes from subjects or regions never in
  train or reference, so they are known non-copies.

Each detector of :mod:`memostudy.detect.registry` (the contrastive one, compared as
``ValidationConfig.compare`` says; with the latent representation also the papers' 32-d embedding,
"contrastive-32d"; the pixel-correlation baseline, "pixel"; unless ``pixel_orientations`` is off,
"pixel-oriented"; unless ``aligned`` is off, "aligned" and "combined") scores every copy and novel
volume by its nearest-training similarity; the threshold is the ``percentile`` of the reference
volumes' nearest-training similarities. Reported per detector, overall ("all") and per family:
sensitivity, specificity, ROC AUC, ``sensitivity_at_spec`` (sensitivity where the ROC curve reaches
specificity ``percentile``/100 on the novel volumes, i.e. with a threshold that needs no reference),
and ``source_match`` — the fraction of copies whose nearest
training volume is their true source.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from memostudy.detect.alignment import AlignConfig
from memostudy.detect.detector import Detector, DetectorConfig
from memostudy.detect.matching import CompareConfig
from memostudy.detect.metrics import calibrate_threshold, detection
from memostudy.detect.registry import Searches
from memostudy.detect.similarity import METRICS, Nearest
from memostudy.detect.views import COPY_FAMILIES, apply_family
from memostudy.errors import ConfigError, DataError
from memostudy.seeds import Stream, generator, numpy_rng


@dataclass
class ValidationConfig:
    """Settings of the detector validation.

    Attributes:
        families: transform families of the copies.
        copies_per_family: training volumes copied per family (all when larger than the training set).
        reference_fraction: share of the held-out volumes used as reference; the rest are novel.
        percentile: threshold percentile of the reference's nearest-training similarities.
        metric: embedding similarity, "pearson" or "msd" (the pixel baseline is always Pearson).
        seed: seed of the split, the copied volumes and the transform parameters.
        pixel_orientations: also validate the pixel correlation searched over the query's orientations
            ("pixel-oriented"; 48 times the cost of the plain baseline), when the pixel baseline runs.
        aligned: also validate the aligned pixel correlation ("aligned") and its combination with the
            contrastive detector ("combined"); about 0.2 s per volume on 2 CPU cores for 32^3.
        align: settings of the aligned correlation.
        compare: how the contrastive detector compares volumes (applies to any detector, loaded or trained).
    """

    families: tuple[str, ...] = COPY_FAMILIES
    copies_per_family: int = 100
    reference_fraction: float = 0.5
    percentile: float = 95.0
    metric: str = "pearson"
    seed: int = 0
    pixel_orientations: bool = True
    aligned: bool = True
    align: AlignConfig = field(default_factory=AlignConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def validate(self) -> ValidationConfig:
        bad = [f for f in self.families if f not in COPY_FAMILIES]
        if bad or not self.families:
            raise ConfigError(f"validation.families must be among {', '.join(COPY_FAMILIES)}, got {bad or 'none'}")
        if self.copies_per_family < 1:
            raise ConfigError(f"validation.copies_per_family must be >= 1, got {self.copies_per_family}")
        if not 0 < self.reference_fraction < 1:
            raise ConfigError(f"validation.reference_fraction must be in (0, 1), got {self.reference_fraction}")
        if self.metric not in METRICS:
            raise ConfigError(f"validation.metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        self.align.validate()
        self.compare.validate()
        return self


@dataclass
class GroundTruth:
    """The volumes of a detector validation.

    Attributes:
        reference: (Nr, 1, D, H, W) held-out volumes for the threshold.
        novel: (Nn, 1, D, H, W) held-out volumes that are known non-copies.
        copies: (Nc, 1, D, H, W) transformed training volumes.
        copy_family: (Nc,) family name of each copy.
        copy_source: (Nc,) index into the training volumes of each copy's source.
        reference_index: indices of ``reference`` in the held-out volumes.
        novel_index: indices of ``novel`` in the held-out volumes.
    """

    reference: torch.Tensor
    novel: torch.Tensor
    copies: torch.Tensor
    copy_family: list[str]
    copy_source: np.ndarray
    reference_index: np.ndarray
    novel_index: np.ndarray


def split_held_out(n: int, reference_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic split of ``n`` held-out volumes into (reference, novel) index arrays, both sorted."""
    if n < 2:
        raise DataError(f"need at least 2 held-out volumes (reference and novel), got {n}")
    perm = numpy_rng(Stream.HELD_OUT_SPLIT, seed).permutation(n)
    k = min(max(1, int(round(n * reference_fraction))), n - 1)
    return np.sort(perm[:k]), np.sort(perm[k:])


def build_ground_truth(train: torch.Tensor, held_out: torch.Tensor, cfg: ValidationConfig) -> GroundTruth:
    """Copies of training volumes under each family, and the reference/novel split of ``held_out``.

    Args:
        train: (N, 1, D, H, W) training volumes, cubic (flips/rotations must keep the shape).
        held_out: (M, 1, D, H, W) real volumes never in train.
        cfg: the validation config.
    """
    cfg.validate()
    ref_idx, nov_idx = split_held_out(len(held_out), cfg.reference_fraction, cfg.seed)
    rng = numpy_rng(Stream.VALIDATION_COPIES, cfg.seed)
    g = generator(Stream.VALIDATION_VIEWS, cfg.seed)
    copies, fams, sources = [], [], []
    for fam in cfg.families:
        src = np.sort(rng.choice(len(train), size=min(cfg.copies_per_family, len(train)), replace=False))
        copies.append(apply_family(train[torch.from_numpy(src)], fam, g))
        fams += [fam] * len(src)
        sources.append(src)
    return GroundTruth(held_out[torch.from_numpy(ref_idx)], held_out[torch.from_numpy(nov_idx)], torch.cat(copies),
                       fams, np.concatenate(sources), ref_idx, nov_idx)


@dataclass
class DetectorValidation:
    """Result of :func:`validate_detector`.

    Attributes:
        table: one row per (detector, family) with family "all" for every copy; columns detector,
            family, sensitivity, specificity, auc, source_match, threshold, n_copies, n_novel.
        scores: one row per copy or novel volume and detector: detector, kind ("copy"/"novel"/"reference"),
            family ("" for real volumes), similarity (nearest-training, higher = more similar),
            nearest_train (index), source (index of the copy's source, -1 for real volumes).
        summary: counts, config and thresholds, JSON-ready.
    """

    table: pd.DataFrame
    scores: pd.DataFrame
    summary: dict = field(default_factory=dict)


def _rows(name: str, gt: GroundTruth, ref: Nearest, cop: Nearest, nov: Nearest,
          percentile: float) -> tuple[list[dict], list[dict], float]:
    """One detector's table rows (overall and per family), score rows, and threshold."""
    thr = calibrate_threshold(ref.values, percentile)
    fam = np.array(gt.copy_family)
    match = cop.indices.numpy() == gt.copy_source
    table = []
    for f in ["all", *dict.fromkeys(gt.copy_family)]:
        sel = np.ones(len(fam), bool) if f == "all" else fam == f
        d = detection(cop.values.numpy()[sel], nov.values, thr, percentile / 100)
        table.append({"detector": name, "family": f,
                      **{k: v for k, v in asdict(d).items() if k not in ("n_copies", "n_novel", "target_specificity")},
                      "source_match": float(match[sel].mean()), "n_copies": d.n_copies, "n_novel": d.n_novel})
    scores = []
    for kind, res, fams, srcs in (("copy", cop, list(fam), gt.copy_source),
                                  ("novel", nov, [""] * len(nov.values), np.full(len(nov.values), -1)),
                                  ("reference", ref, [""] * len(ref.values), np.full(len(ref.values), -1))):
        for v, i, f, s in zip(res.values.tolist(), res.indices.tolist(), fams, srcs.tolist()):
            scores.append({"detector": name, "kind": kind, "family": f, "similarity": v, "nearest_train": i, "source": s})
    return table, scores, thr.value


def validate_detector(detector: Detector, train: torch.Tensor, held_out: torch.Tensor,
                      cfg: ValidationConfig | None = None, pixel: bool = True) -> DetectorValidation:
    """Sensitivity, specificity and ROC AUC of the contrastive detector (and the pixel baseline, plain
    and searched over orientations; the aligned correlation and its combination with the contrastive
    detector) on known copies of ``train`` versus novel held-out volumes, overall and per family.

    Args:
        detector: the trained contrastive detector.
        train: (N, 1, D, H, W) the volumes the copies are made of (the detector's training set).
        held_out: (M, 1, D, H, W) real volumes never in train (split into reference and novel).
        cfg: validation settings.
        pixel: also validate the pixel-correlation baseline ("pixel", and "pixel-oriented" when
            ``cfg.pixel_orientations``).
    """
    cfg = (cfg or ValidationConfig()).validate()
    gt = build_ground_truth(train, held_out, cfg)
    names = ["contrastive",
             *(["contrastive-32d"] if cfg.compare.representation != "embedding" else []),  # the papers' 32-d beside it
             *(["pixel"] if pixel else []), *(["pixel-oriented"] if pixel and cfg.pixel_orientations else []),
             *(["aligned", "combined"] if cfg.aligned else [])]
    search = Searches(detector, train, {"reference": gt.reference, "copies": gt.copies, "novel": gt.novel},
                      cfg.compare, cfg.metric, cfg.align)
    table: list[dict] = []
    scores: list[dict] = []
    thresholds: dict[str, float] = {}
    for name in names:
        rows, rows_scores, thresholds[name] = _rows(name, gt, search.nearest(name, "reference"),
                                                    search.nearest(name, "copies"), search.nearest(name, "novel"),
                                                    cfg.percentile)
        table += rows
        scores += rows_scores
    tab = pd.DataFrame(table)
    summary = {"n_train": len(train), "n_reference": len(gt.reference), "n_novel": len(gt.novel),
               "n_copies": len(gt.copies), "config": asdict(cfg), "thresholds": thresholds,
               "results": tab.to_dict(orient="records")}
    summary["config"]["families"] = list(cfg.families)
    return DetectorValidation(tab, pd.DataFrame(scores), summary)


def run_validation(data: str, det_cfg: DetectorConfig | None = None, cfg: ValidationConfig | None = None,
                   detector_path: str | None = None, out_dir: str | None = None, cache: str | None = None,
                   limit: int | None = None, progress: bool = True) -> tuple[DetectorValidation, Detector, dict]:
    """The whole detector benchmark on a prepared data set, as ``memostudy validate-detector`` and
    ``05_detector_validation.ipynb`` run it: load the train and validation splits, train the detector
    on train (the reference half of the held-out split gives its validation loss; the novel half is
    never seen) or load ``detector_path``, then :func:`validate_detector`.

    Args:
        data: prepared data set name or folder.
        det_cfg: the :class:`~memostudy.detect.detector.DetectorConfig` to train with (default settings
            when None); unused with ``detector_path``.
        cfg: validation settings (with how the detector compares volumes, ``cfg.compare``).
        detector_path: a trained detector to validate instead of training one.
        out_dir: where the trained detector (and its resumable training folder) go; None = not kept.
        cache: data cache root.
        limit: use only the first ``limit`` patches of each split (quick checks).
        progress: progress bar while training.

    Returns:
        ``(validation, detector, record)`` where ``record`` holds the data set, detector config, best
        epoch, history, checkpoint and the seconds spent training and validating.
    """
    import time

    from memostudy.data.patches import load_patches
    from memostudy.detect.detector import load_or_train_detector

    cfg = (cfg or ValidationConfig()).validate()
    train = load_patches(data, "train", cache=cache, limit=limit)
    held = load_patches(data, "validation", cache=cache, limit=limit)
    t0 = time.perf_counter()
    ref_idx, _ = split_held_out(len(held), cfg.reference_fraction, cfg.seed)
    detector = load_or_train_detector(train.volumes, held.subset(ref_idx).volumes, det_cfg, checkpoint=detector_path or None,
                                      out_dir=out_dir, progress=progress)
    t_train = time.perf_counter() - t0
    res = validate_detector(detector, train.volumes, held.volumes, cfg)
    record = {"data": str(data), "n_train_patches": len(train), "n_held_out_patches": len(held),
              "detector": {"config": asdict(detector.config), "best_epoch": detector.best_epoch,
                           "history": detector.history,
                           "checkpoint": detector_path or (f"{out_dir}/detector.pt" if out_dir else None)},
              "seconds": {"detector": round(t_train, 1), "validation": round(time.perf_counter() - t0 - t_train, 1)}}
    return res, detector, record
