"""Memorization assessment: which synthetic volumes are copies of which training volumes.

:func:`assess` composes the pieces — the detector's vectors and their search (:mod:`memostudy.detect.matching`,
:mod:`memostudy.detect.similarity`), the calibrated threshold and fractions
(:mod:`memostudy.detect.metrics`) and the pixel baseline (:mod:`memostudy.detect.baseline`) — and owns no maths
of its own. :func:`write_audit` writes the files of ``memostudy audit``.

Decisions (for each detector: contrastive, pixel, and with ``aligned`` the aligned pixel correlation of
:mod:`memostudy.detect.alignment` and "combined", a copy for either the contrastive or the aligned detector):
- threshold = ``percentile`` of the reference volumes' nearest-training similarities;
- a training volume is *memorized* when its nearest synthetic volume (its copy candidate) is
  more similar than the threshold;
- a synthetic volume is a *copy* when its nearest training volume is more similar than the threshold.
The copy fraction is calibrated like for like (synthetic->train and reference->train are both a max
over the training set); the memorized fraction is a max over the synthetic set, so it grows with the
number of synthetic volumes even without copies (as in the papers).

Output columns (``synthetic.csv``): synthetic_id (file name), nearest_train_id, similarity (contrastive,
higher = more similar), is_copy (0/1), pixel_nearest_train_id, pixel_similarity (max voxel Pearson
correlation), pixel_is_copy (0/1). ``train.csv``: train_id, nearest_synthetic_id, similarity,
memorized (0/1), and the same three pixel_* columns. ``reference.csv``: reference_id,
nearest_train_id, similarity, pixel_nearest_train_id, pixel_similarity. With ``aligned``, the same
columns again with the prefixes ``aligned_`` (best normalised cross-correlation after alignment) and
``combined_`` (the higher of the two detectors' reference percentile ranks, in [0, 1]).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from memostudy.config import provenance, to_dict
from memostudy.detect.alignment import AlignConfig, aligned_nearest, candidates
from memostudy.detect.baseline import pixel_nearest
from memostudy.detect.detector import Detector, embed
from memostudy.detect.matching import base_vectors, query_vectors
from memostudy.detect.metrics import calibrate_threshold, combine_nearest, copy_fraction, is_copy, memorized_fraction
from memostudy.detect.similarity import METRICS, Nearest, set_nearest
from memostudy.errors import ConfigError, DataError, RunExistsError

AUDIT_FILES = ("summary.json", "synthetic.csv", "train.csv", "reference.csv", "report.html")
INTENSITY_RULES = ("auto", "as-stored", "joint")


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
        batch_size: volumes per detector forward pass.
        aligned: also run the aligned pixel correlation and its combination with the contrastive
            detector (the best of the validated detectors; about 0.2 s per volume of 32^3 on 2 cores,
            for train, reference and synthetic volumes alike).
        align: settings of the aligned correlation.
    """

    percentile: float = 95.0
    metric: str = "pearson"
    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0
    pixel_baseline: bool = True
    batch_size: int = 64
    aligned: bool = False
    align: AlignConfig = field(default_factory=AlignConfig)

    def validate(self) -> AssessConfig:
        if not 0 <= self.percentile <= 100:
            raise ConfigError(f"percentile must be in [0, 100], got {self.percentile}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.n_boot < 1:
            raise ConfigError(f"n_boot must be >= 1, got {self.n_boot}")
        self.align.validate()
        return self


@dataclass
class Assessment:
    """Result of :func:`assess`.

    Attributes:
        summary: JSON-ready figures (see :func:`assess`).
        train_table: one row per training volume (columns in the module docstring).
        synthetic_table: one row per synthetic volume.
        reference_table: one row per reference volume.
        distributions: detector ("contrastive", "pixel") -> {"candidates", "synthetic", "reference"}
            -> (N,) float64 nearest similarities, for histograms.
        thresholds: detector -> threshold value.
        config: the :class:`AssessConfig` used.
    """

    summary: dict[str, Any]
    train_table: pd.DataFrame
    synthetic_table: pd.DataFrame
    reference_table: pd.DataFrame
    distributions: dict[str, dict[str, np.ndarray]]
    thresholds: dict[str, float]
    config: AssessConfig = field(default_factory=AssessConfig)


def _figures(name: str, t2s: Nearest, s2t: Nearest, r2t: Nearest, cfg: AssessConfig) -> dict[str, Any]:
    kw = {"percentile": cfg.percentile, "n_boot": cfg.n_boot, "confidence": cfg.confidence, "seed": cfg.seed}
    thr = calibrate_threshold(r2t.values, cfg.percentile)
    mem = memorized_fraction(t2s.values, r2t.values, **kw)
    cop = copy_fraction(s2t.values, r2t.values, **kw)
    return {"threshold": thr.value, "memorized_fraction": mem.value, "memorized_fraction_ci": [mem.lo, mem.hi],
            "copy_fraction": cop.value, "copy_fraction_ci": [cop.lo, cop.hi],
            "n_memorized": int(round(mem.value * mem.n)), "n_copies": int(round(cop.value * cop.n)),
            "synthetic_similarity_median": float(s2t.values.median()),
            "reference_similarity_median": float(r2t.values.median())}


def assess(train: torch.Tensor, reference: torch.Tensor, synthetic: torch.Tensor, detector: Detector,
           train_ids: list[str], reference_ids: list[str], synthetic_ids: list[str],
           percentile: float = 95.0, metric: str = "pearson", pixel_baseline: bool = True,
           cfg: AssessConfig | None = None) -> Assessment:
    """Find the copies of training volumes among synthetic volumes.

    Args:
        train: (Nt, 1, D, H, W) float32 training volumes (what the generator was trained on), in the
            detector's range ([-1, 1]; see :func:`scale_intensities` for a user's folders).
        reference: (Nr, 1, D, H, W) real volumes never in train (calibrate the threshold).
        synthetic: (Ns, 1, D, H, W) generated volumes.
        detector: trained contrastive detector.
        train_ids, reference_ids, synthetic_ids: names of the volumes (file names in the audit).
        percentile: threshold percentile (0-100) of the reference's nearest-training similarities.
        metric: embedding similarity, "pearson" (journal) or "msd" (conference, negated: higher = more similar).
        pixel_baseline: also run the pixel-correlation baseline.
        cfg: all settings at once (bootstrap size, CI level, seed ...); when given, it replaces
            ``percentile``, ``metric`` and ``pixel_baseline``.

    Returns:
        :class:`Assessment`. ``summary`` holds n_train, n_reference, n_synthetic, metric, percentile,
        confidence, threshold, memorized_fraction (+ ``_ci`` [lo, hi]), copy_fraction (+ ``_ci``),
        n_memorized, n_copies, medians of the similarity distributions, ``pixel_baseline`` (the same
        figures for the pixel detector, or None), ``detector`` (config and best epoch).
    """
    cfg = (cfg or AssessConfig(percentile=percentile, metric=metric, pixel_baseline=pixel_baseline)).validate()
    for name, vols, ids in (("train", train, train_ids), ("reference", reference, reference_ids),
                            ("synthetic", synthetic, synthetic_ids)):
        if len(vols) == 0:
            raise DataError(f"no {name} volumes: the assessment needs at least one of each")
        if len(vols) != len(ids):
            raise ValueError(f"{name}: {len(vols)} volumes but {len(ids)} ids")
        if vols.shape[1:] != train.shape[1:]:
            raise DataError(f"{name} volumes have shape {tuple(vols.shape[2:])} but train volumes {tuple(train.shape[2:])}; "
                            "crop or resample every folder to one shape")
    b_t = base_vectors(detector, train, cfg.batch_size)
    s2t, t2s = set_nearest(query_vectors(detector, synthetic, cfg.batch_size), b_t, cfg.metric)
    results = {"contrastive": (t2s, s2t, set_nearest(query_vectors(detector, reference, cfg.batch_size), b_t, cfg.metric)[0])}
    if cfg.pixel_baseline:
        results["pixel"] = (pixel_nearest(train, synthetic), pixel_nearest(synthetic, train), pixel_nearest(reference, train))
    if cfg.aligned:
        e_t, e_r, e_s = (embed(detector, v, cfg.batch_size) for v in (train, reference, synthetic))

        def align(q: torch.Tensor, e_q: torch.Tensor, b: torch.Tensor, e_b: torch.Tensor) -> Nearest:
            return aligned_nearest(q, b, candidates(q, b, cfg.align, e_q, e_b), cfg.align, progress=True)

        results["aligned"] = al = (align(train, e_t, synthetic, e_s), align(synthetic, e_s, train, e_t),
                                   align(reference, e_r, train, e_t))
        co = results["contrastive"]
        results["combined"] = tuple(combine_nearest((co[2], al[2]), pair) for pair in zip(co, al))  # type: ignore[assignment]
    tid, sid, rid = np.asarray(train_ids, dtype=object), np.asarray(synthetic_ids, dtype=object), np.asarray(reference_ids, dtype=object)
    tables: dict[str, dict[str, Any]] = {"train": {"train_id": tid}, "synthetic": {"synthetic_id": sid},
                                         "reference": {"reference_id": rid}}
    figures, distributions, thresholds = {}, {}, {}
    for det, (t2s, s2t, r2t) in results.items():
        figures[det] = f = _figures(det, t2s, s2t, r2t, cfg)
        thresholds[det] = f["threshold"]
        p = "" if det == "contrastive" else f"{det}_"
        tables["train"].update({f"{p}nearest_synthetic_id": sid[t2s.indices.numpy()], f"{p}similarity": t2s.values.numpy(),
                                f"{p}memorized": is_copy(t2s.values, f["threshold"]).astype(int)})
        tables["synthetic"].update({f"{p}nearest_train_id": tid[s2t.indices.numpy()], f"{p}similarity": s2t.values.numpy(),
                                    f"{p}is_copy": is_copy(s2t.values, f["threshold"]).astype(int)})
        tables["reference"].update({f"{p}nearest_train_id": tid[r2t.indices.numpy()], f"{p}similarity": r2t.values.numpy()})
        distributions[det] = {"candidates": t2s.values.double().numpy(), "synthetic": s2t.values.double().numpy(),
                              "reference": r2t.values.double().numpy()}
    summary: dict[str, Any] = {"n_train": len(train), "n_reference": len(reference), "n_synthetic": len(synthetic),
                               "metric": cfg.metric, "percentile": cfg.percentile, "confidence": cfg.confidence,
                               **figures["contrastive"], "pixel_baseline": figures.get("pixel"),
                               "aligned": figures.get("aligned"), "combined": figures.get("combined"),
                               "detector": {"config": to_dict(detector.config), "best_epoch": detector.best_epoch},
                               "assess_config": asdict(cfg)}
    return Assessment(summary, pd.DataFrame(tables["train"]), pd.DataFrame(tables["synthetic"]),
                      pd.DataFrame(tables["reference"]), distributions, thresholds, cfg)


def check_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """Refuse to overwrite a folder holding audit results unless ``force`` (then the old result files
    go; a ``detector.pt`` stays, so ``--detector OUT/detector.pt --force`` can reuse it).

    Raises:
        RunExistsError: ``out_dir`` holds any of :data:`AUDIT_FILES` and ``force`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; pass a folder path to --out")
    found = [f for f in AUDIT_FILES if (out / f).exists()]
    if found and not force:
        raise RunExistsError(f"{out}: already holds audit results ({', '.join(found)}); "
                             "pass --force to replace them or choose another --out")
    if found:
        for f in AUDIT_FILES:
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def scale_intensities(train: torch.Tensor, reference: torch.Tensor, synthetic: torch.Tensor,
                      rule: str = "auto") -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, Any]]:
    """Bring the three sets of volumes to the detector's [-1, 1] range by ONE shared linear map.

    Rules:
        "as-stored": no change.
        "joint": map the training volumes' [0.5th, 99.5th] percentile to [-1, 1] and apply that same
            map to all three sets, clipped to [-1, 1] — so intensities stay comparable between sets
            (the volumes must already share units, e.g. HU, or the same [-1, 1] scaling).
        "auto": "as-stored" when every training and reference voxel is within [-1, 1] (the demo
            patches; synthetic volumes of a generator trained on them may overshoot a little and
            are not checked), else "joint".

    Returns:
        ((train, reference, synthetic), info) with info = {"rule", "lo", "hi"} (lo/hi of the map, or None).
    """
    if rule not in INTENSITY_RULES:
        raise ConfigError(f"intensity rule must be one of {', '.join(INTENSITY_RULES)}, got {rule!r}")
    if rule == "auto":
        inside = all(float(v.abs().max()) <= 1.0 + 1e-4 for v in (train, reference))
        rule = "as-stored" if inside else "joint"
    if rule == "as-stored":
        return (train, reference, synthetic), {"rule": rule, "lo": None, "hi": None}
    flat = train.flatten()
    sample = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:2_000_000]]
    lo, hi = (float(x) for x in torch.quantile(sample, torch.tensor([0.005, 0.995])))
    if hi <= lo:
        raise DataError(f"training volumes are constant (value {lo}); cannot scale intensities — check the --train folder")

    def f(v: torch.Tensor) -> torch.Tensor:
        return ((v - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)

    return (f(train), f(reference), f(synthetic)), {"rule": "joint", "lo": lo, "hi": hi}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_audit(assessment: Assessment, out_dir: str | Path, extra: dict[str, Any] | None = None,
                force: bool = False) -> dict[str, Path]:
    """Write summary.json, synthetic.csv, train.csv, reference.csv and report.html into ``out_dir``.

    Args:
        assessment: the result of :func:`assess`.
        out_dir: output folder (created).
        extra: more entries for summary.json (inputs, intensity rule, timings, provenance ...).
        force: replace earlier results (else :class:`RunExistsError` when any are there).

    Returns:
        file name -> path of every file written.
    """
    from memostudy.report.figures import assessment_figures, html_page

    out = check_out_dir(out_dir, force)
    summary = {**assessment.summary, **(extra or {})}
    summary.setdefault("provenance", provenance())
    paths = {name: out / name for name in AUDIT_FILES}
    paths["summary.json"].write_text(json.dumps(summary, indent=2, default=_json_default))
    assessment.synthetic_table.to_csv(paths["synthetic.csv"], index=False)
    assessment.train_table.to_csv(paths["train.csv"], index=False)
    assessment.reference_table.to_csv(paths["reference.csv"], index=False)
    s, px = assessment.summary, assessment.summary.get("pixel_baseline")
    ci = f"{assessment.config.confidence:.0%} CI"
    headline = {
        "training volumes": s["n_train"], "reference volumes": s["n_reference"], "synthetic volumes": s["n_synthetic"],
        f"threshold ({s['metric']}, {s['percentile']:g}th percentile of reference)": f"{s['threshold']:.6g}",
        f"memorized fraction of training volumes ({ci})":
            f"{s['memorized_fraction']:.1%} [{s['memorized_fraction_ci'][0]:.1%}, {s['memorized_fraction_ci'][1]:.1%}]",
        f"copy fraction of synthetic volumes ({ci})":
            f"{s['copy_fraction']:.1%} [{s['copy_fraction_ci'][0]:.1%}, {s['copy_fraction_ci'][1]:.1%}]",
    }
    for name in ("combined", "aligned"):
        if s.get(name):
            f = s[name]
            headline[f"{name}: copy fraction"] = f"{f['copy_fraction']:.1%} [{f['copy_fraction_ci'][0]:.1%}, {f['copy_fraction_ci'][1]:.1%}]"
            headline[f"{name}: memorized fraction"] = (f"{f['memorized_fraction']:.1%} [{f['memorized_fraction_ci'][0]:.1%}, "
                                                       f"{f['memorized_fraction_ci'][1]:.1%}]")
    if px:
        headline["pixel baseline: threshold (max voxel correlation)"] = f"{px['threshold']:.6g}"
        headline["pixel baseline: copy fraction"] = f"{px['copy_fraction']:.1%} [{px['copy_fraction_ci'][0]:.1%}, {px['copy_fraction_ci'][1]:.1%}]"
        headline["pixel baseline: memorized fraction"] = f"{px['memorized_fraction']:.1%}"
    figs = assessment_figures(assessment)
    top = assessment.synthetic_table.sort_values("similarity", ascending=False).head(20)
    sections: list[tuple[str, Any]] = [
        ("Summary", headline),
        ("How to read this", "Similarities are 'higher = more similar'. The threshold is the given percentile of the "
                             "similarities of real reference volumes (never trained on) to their nearest training "
                             "volume; a synthetic volume above it is called a copy of its nearest training volume. "
                             "The pixel baseline (Akbar et al.) cannot see flipped or rotated copies."),
        *[(f"Similarity distributions: {name}", fig) for name, fig in figs.items()],
        ("Most similar synthetic volumes (contrastive)", top),
    ]
    paths["report.html"].write_text(html_page("memostudy audit", sections))
    return paths
