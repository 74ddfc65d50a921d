"""Validate copy detectors on copies made in ways they were never trained on (generalisation, not fit).

Ground truth from real data:
- **copies**: training volumes put through each family of the broad copy definition
  (:data:`memostudy.detect.families.FAMILY_TABLE`: rigid motion at any angle, elastic deformation, lower
  resolution, contrast curves, bias field, blur, noise, partial overlap, combinations) at each strength;
  strengths marked ``inside`` are copies under the definition, strength 3 goes past it to show where
  detection falls off;
- **reference**: a deterministic half of the held-out volumes, used only to calibrate each threshold
  (and for a detector trained here, its validation loss);
- **novel**: the other half: real volumes never in train or reference, known non-copies; they also give
  the new content of "partial" copies;
- **generator-like**: the novel volumes made smoother, noisier or coarser the way generated volumes are
  (:func:`memostudy.detect.families.generator_like`, each novel volume under one kind, kinds in turn):
  non-copies on which a threshold calibrated on sharp real volumes fails.

**Held out.** A family the contrastive detector's training views are drawn from
(:attr:`~memostudy.detect.detector.DetectorConfig.view_families`) is also scored *held out*: by a detector
with the same config trained without that family's fold in its views. Folds (``ValidationConfig.folds``):
``"kind"`` (default) groups the families by the kind of change, :data:`KIND_FOLDS` (4 trainings instead of
9; similar changes held out together, a stricter test than leaving out blur while lowres, which also blurs,
stays in); ``"family"`` leaves one family out per training; ``"none"`` trains nothing more and reports seen
figures only. A family the views never contain (every family for the classic views of
:mod:`memostudy.detect.views`, which however overlap blur, noise, small shifts and intensity scaling) is
held out by construction: the detector itself scores it in both columns.

Each detector of :mod:`memostudy.detect.registry` (all of :data:`~memostudy.detect.registry.DETECTORS` but
those switched off here) scores every copy, reference, novel and generator-like volume by its nearest-
training similarity, once with the validated detector ("seen") and once per fold with that fold's
detector (the detectors without training views score the same in both columns; any detector may use the
contrastive one, e.g. for a shortlist, so each is re-run). The threshold of each (detector, contrastive
detector) pair is the ``percentile`` of its reference volumes' nearest-training similarities.

2D images ``(N, 1, H, W)`` (a prepared 2D data set) are validated the same way, with the same families,
strengths, folds and scoring: every step takes its spatial rank from the tensors (the detector's encoder is
2D, orientations are the 8 of a square, shifts are per (H, W)). "registered" is 3D only and not in the
line-up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from memostudy.detect.alignment import AlignConfig
from memostudy.detect.detector import Detector, DetectorConfig
from memostudy.detect.families import COPY_FAMILIES, FAMILY_TABLE, GENERATOR_KINDS, generator_like, make_copies
from memostudy.detect.matching import CompareConfig
from memostudy.detect.metrics import calibrate_threshold, detection
from memostudy.detect.registry import DETECTORS, Searches
from memostudy.detect.similarity import METRICS
from memostudy.errors import ConfigError, DataError
from memostudy.seeds import Stream, numpy_rng

#: families held out together under ``folds="kind"``: one fold per kind of change
KIND_FOLDS: dict[str, tuple[str, ...]] = {
    "geometry": ("rigid", "elastic", "partial"),
    "resolution": ("lowres", "blur", "noise"),
    "intensity": ("contrast", "bias"),
    "combined": ("combined",),
}
FOLD_SCHEMES = ("kind", "family", "none")
#: the fold name of the validated detector itself (every copy, and the families its views never contain)
SEEN = "all"


@dataclass
class ValidationConfig:
    """Settings of the detector validation.

    Attributes:
        families: copy families (:data:`memostudy.detect.families.COPY_FAMILIES`).
        strengths: strengths of each family (keys of ``FAMILY_TABLE[f].levels``).
        copies_per_family: training volumes copied per family and strength (all when larger than the
            training set).
        folds: how families are held out of the training views, one of :data:`FOLD_SCHEMES`.
        reference_fraction: share of the held-out volumes used as reference; the rest are novel.
        percentile: threshold percentile of the reference's nearest-training similarities.
        metric: embedding similarity, "pearson" or "msd" (the pixel baseline is always Pearson).
        seed: seed of the split, the copied volumes and the transform parameters.
        pixel_orientations: also validate the pixel correlation searched over the query's orientations
            ("pixel-oriented"; 48 times the cost of the plain baseline), when the pixel baseline runs.
        aligned: also validate the aligned pixel correlation ("aligned") and its combination with the
            contrastive detector ("combined"); about 0.2 s per volume on 2 CPU cores for 32^3, per fold.
        align: settings of the aligned correlation.
        compare: how the contrastive detector compares volumes (applies to any detector, loaded or trained).
    """

    families: tuple[str, ...] = COPY_FAMILIES
    strengths: tuple[int, ...] = (1, 2, 3)
    copies_per_family: int = 40
    folds: str = "kind"
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
        bad_s = [s for s in self.strengths if any(s not in FAMILY_TABLE[f].levels for f in self.families)]
        if bad_s or not self.strengths:
            raise ConfigError(f"validation.strengths must be among 1, 2, 3, got {list(self.strengths)}")
        if self.folds not in FOLD_SCHEMES:
            raise ConfigError(f"validation.folds must be one of {', '.join(FOLD_SCHEMES)}, got {self.folds!r}")
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
    """The volumes of a detector validation (shapes ``(N, 1, D, H, W)``, or ``(N, 1, H, W)`` for 2D images;
    float32 in [-1, 1]).

    Attributes:
        reference: (Nr, ...) held-out volumes for the threshold.
        novel: (Nn, ...) held-out volumes that are known non-copies.
        generator: (Nn, ...) the novel volumes made generator-like, one kind each.
        generator_kind: (Nn,) the kind of each (:data:`memostudy.detect.families.GENERATOR_KINDS`).
        copies: (Nc, ...) changed training volumes.
        copy_family, copy_strength, copy_inside: (Nc,) family, strength and "a copy under the
            definition" of each copy.
        copy_source: (Nc,) index into the training volumes of each copy's source.
        reference_index, novel_index: indices of ``reference`` and ``novel`` in the held-out volumes.
    """

    reference: torch.Tensor
    novel: torch.Tensor
    generator: torch.Tensor
    generator_kind: list[str]
    copies: torch.Tensor
    copy_family: list[str]
    copy_strength: np.ndarray
    copy_inside: np.ndarray
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
    """Copies of training volumes under each family and strength, the reference/novel split of
    ``held_out``, and the novel volumes made generator-like.

    Args:
        train: (N, 1, D, H, W) training volumes.
        held_out: (M, 1, D, H, W) real volumes never in train (M >= 2).
        cfg: the validation config.
    """
    cfg.validate()
    ref_idx, nov_idx = split_held_out(len(held_out), cfg.reference_fraction, cfg.seed)
    novel = held_out[torch.from_numpy(nov_idx)]
    rng = numpy_rng(Stream.VALIDATION_COPIES, cfg.seed)
    copies, fams, strengths, sources = [], [], [], []
    for fam in cfg.families:
        for s in cfg.strengths:
            src = np.sort(rng.choice(len(train), size=min(cfg.copies_per_family, len(train)), replace=False))
            copies.append(make_copies(train[torch.from_numpy(src)], fam, s, seed=int(rng.integers(2**31 - 1)),
                                      others=novel))
            fams += [fam] * len(src)
            strengths += [s] * len(src)
            sources.append(src)
    kinds = [GENERATOR_KINDS[i % len(GENERATOR_KINDS)] for i in range(len(novel))]
    generator = torch.empty_like(novel, dtype=torch.float32)
    for k in GENERATOR_KINDS:
        sel = torch.tensor([i for i, kk in enumerate(kinds) if kk == k], dtype=torch.long)
        if len(sel):
            generator[sel] = generator_like(novel[sel], k, seed=int(rng.integers(2**31 - 1)))
    strength = np.array(strengths, dtype=int)
    inside = np.array([FAMILY_TABLE[f].levels[s].inside for f, s in zip(fams, strengths)], dtype=bool)
    return GroundTruth(held_out[torch.from_numpy(ref_idx)], novel, generator, kinds, torch.cat(copies), fams,
                       strength, inside, np.concatenate(sources), ref_idx, nov_idx)


def fold_plan(view_families: tuple[str, ...], families: tuple[str, ...], scheme: str) -> dict[str, tuple[str, ...]]:
    """Fold name -> the validated ``families`` held out of the training views in that fold.

    Only families the views contain need a fold (the others are held out already); an empty plan means
    the validated detector scores every family held out. ``scheme`` is one of :data:`FOLD_SCHEMES`.
    """
    need = [f for f in families if f in view_families]
    if scheme == "none" or not need:
        return {}
    if scheme == "family":
        return {f: (f,) for f in need}
    if scheme == "kind":
        plan = {name: tuple(f for f in group if f in need) for name, group in KIND_FOLDS.items()}
        return {k: v for k, v in plan.items() if v}
    raise ConfigError(f"validation.folds must be one of {', '.join(FOLD_SCHEMES)}, got {scheme!r}")


def held_out_config(cfg: DetectorConfig, fold: tuple[str, ...]) -> DetectorConfig:
    """``cfg`` with the families of ``fold`` left out of its training views (the detector that scores
    them held out)."""
    keep = tuple(f for f in cfg.view_families if f not in fold)
    if not keep or keep == ("combined",):
        raise ConfigError(f"holding {', '.join(fold)} out of detector.view_families {tuple(cfg.view_families)} "
                          "leaves no family to train on; add families to the views or choose other folds")
    return dataclasses.replace(cfg, view_families=keep).validate()


def detector_names(cfg: ValidationConfig, pixel: bool = True) -> list[str]:
    """The registry's detectors this validation runs, in the registry's order: every one of
    :data:`~memostudy.detect.registry.DETECTORS` but those switched off by ``cfg`` or ``pixel``."""
    off = set()
    if cfg.compare.representation == "embedding":
        off.add("contrastive-32d")  # the 32-d embedding is then the contrastive detector itself
    if not pixel:
        off |= {"pixel", "pixel-oriented"}
    if not cfg.pixel_orientations:
        off.add("pixel-oriented")
    if not cfg.aligned:
        off |= {"aligned", "combined"}
    return [d for d in DETECTORS if d not in off]


@dataclass
class DetectorValidation:
    """Result of :func:`validate_detector`.

    Attributes:
        table: one row per (detector, scored, family, strength): ``scored`` is "seen" (the validated
            detector) or "held-out" (the detector of the family's fold); family "all" = every copy,
            "all-inside" = every copy inside the definition, and strength 0 = every strength of the
            family. Columns: sensitivity, source_match, n_copies, specificity (plain novel volumes),
            specificity_generator (generator-like novel volumes), auc and sensitivity_at_spec (copies vs
            plain novel; NaN where the row pools several fold detectors), threshold (NaN likewise), fold,
            inside. Sensitivity is the fraction of copies above their detector's threshold; for a row
            pooling folds, each copy counts against its own fold's threshold, and the specificities are the
            mean over those folds.
        specificity: one row per (detector, fold, novel set): fold, novel ("plain", "generator-like" or a
            generator kind), specificity, n, threshold.
        scores: one row per volume, detector and fold: detector, fold (:data:`SEEN` or a fold name), kind
            ("copy"/"novel"/"generator"/"reference"), family, strength, inside, generator_kind,
            similarity (nearest-training, higher = more similar), nearest_train, source (-1 for real volumes).
        folds: fold name -> (held-out families, the detector config that scored them).
        summary: counts, config and thresholds, JSON-ready.
    """

    table: pd.DataFrame
    specificity: pd.DataFrame
    scores: pd.DataFrame
    folds: dict[str, tuple[tuple[str, ...], DetectorConfig]] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


#: how a held-out detector is obtained: (fold name, its config) -> a trained detector
HeldOutTrainer = Callable[[str, DetectorConfig], Detector]


def _score_rows(name: str, fold: str, search: Searches, gt: GroundTruth, copy_sel: np.ndarray) -> list[dict]:
    """Score rows of detector ``name`` under one contrastive detector (``fold``)."""
    rows: list[dict] = []
    idx = np.flatnonzero(copy_sel)
    sets = [("reference", None), ("novel", None), ("generator", None), ("copies", idx)]
    for query, sel in sets:
        res = search.nearest(name, query)
        for j, (v, i) in enumerate(zip(res.values.tolist(), res.indices.tolist())):
            row = {"detector": name, "fold": fold, "kind": "copy" if query == "copies" else query, "family": "",
                   "strength": 0, "inside": False, "generator_kind": "", "similarity": v, "nearest_train": i,
                   "source": -1}
            if query == "copies":
                c = int(sel[j])
                row.update(family=gt.copy_family[c], strength=int(gt.copy_strength[c]),
                           inside=bool(gt.copy_inside[c]), source=int(gt.copy_source[c]))
            elif query == "generator":
                row["generator_kind"] = gt.generator_kind[j]
            rows.append(row)
    return rows


def summarise(scores: pd.DataFrame, family_fold: dict[str, str], percentile: float = 95.0
              ) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], float]]:
    """The tables of a validation from its score rows (pure: no detector runs here).

    Args:
        scores: as :attr:`DetectorValidation.scores`.
        family_fold: family -> the fold whose detector scores it held out (:data:`SEEN` for a family the
            validated detector's views never contain); a family missing here gets no held-out rows.
        percentile: threshold percentile of each (detector, fold)'s reference similarities.

    Returns:
        ``(table, specificity, thresholds)`` as in :class:`DetectorValidation`; thresholds keyed by
        (detector, fold).
    """
    thresholds = {(d, f): calibrate_threshold(g["similarity"].to_numpy(), percentile).value
                  for (d, f), g in scores[scores["kind"] == "reference"].groupby(["detector", "fold"], sort=False)}
    sc = scores.assign(flag=[s > thresholds[(d, f)] for d, f, s in
                             zip(scores["detector"], scores["fold"], scores["similarity"])])
    spec_rows = []
    for (d, f), g in sc.groupby(["detector", "fold"], sort=False):
        nov, gen = g[g["kind"] == "novel"], g[g["kind"] == "generator"]
        sets = {"plain": nov, "generator-like": gen, **{k: gen[gen["generator_kind"] == k]
                                                        for k in dict.fromkeys(gen["generator_kind"])}}
        for label, rows in sets.items():
            spec_rows.append({"detector": d, "fold": f, "novel": label, "n": len(rows), "threshold": thresholds[(d, f)],
                              "specificity": float((~rows["flag"]).mean()) if len(rows) else float("nan")})
    spec = pd.DataFrame(spec_rows)
    spec_of = {(r.detector, r.fold, r.novel): r.specificity for r in spec.itertuples()}
    copies = sc[sc["kind"] == "copy"]
    target = percentile / 100
    table = []
    for d in dict.fromkeys(scores["detector"]):
        for scored in ("seen", "held-out"):
            mine = copies[copies["detector"] == d]
            if scored == "seen":
                mine = mine[mine["fold"] == SEEN]
            else:
                mine = mine[np.array([family_fold.get(fam) == f for fam, f in zip(mine["family"], mine["fold"])],
                                     dtype=bool)]
            groups: list[tuple[str, int, pd.DataFrame]] = [("all", 0, mine), ("all-inside", 0, mine[mine["inside"]])]
            for fam in dict.fromkeys(mine["family"]):
                fm = mine[mine["family"] == fam]
                groups.append((fam, 0, fm))
                groups += [(fam, int(s), fm[fm["strength"] == s]) for s in sorted(set(fm["strength"]))]
            for fam, s, g in groups:
                if not len(g):
                    continue
                folds = list(dict.fromkeys(g["fold"]))
                row = {"detector": d, "scored": scored, "family": fam, "strength": s,
                       "inside": bool(g["inside"].all()), "fold": folds[0] if len(folds) == 1 else "+".join(folds),
                       "sensitivity": float(g["flag"].mean()),
                       "source_match": float((g["nearest_train"] == g["source"]).mean()), "n_copies": len(g),
                       "specificity": float(np.mean([spec_of[(d, f, "plain")] for f in folds])),
                       "specificity_generator": float(np.mean([spec_of[(d, f, "generator-like")] for f in folds])),
                       "auc": float("nan"), "sensitivity_at_spec": float("nan"), "threshold": float("nan")}
                if len(folds) == 1:
                    nov = sc[(sc["detector"] == d) & (sc["fold"] == folds[0]) & (sc["kind"] == "novel")]["similarity"]
                    det = detection(g["similarity"].to_numpy(), nov.to_numpy(), thresholds[(d, folds[0])], target)
                    row.update(auc=det.auc, sensitivity_at_spec=det.sensitivity_at_spec, threshold=det.threshold)
                table.append(row)
    return pd.DataFrame(table), spec, thresholds


def validate_detector(detector: Detector, train: torch.Tensor, held_out: torch.Tensor,
                      cfg: ValidationConfig | None = None, pixel: bool = True,
                      held_out_detector: HeldOutTrainer | None = None, progress: bool = False) -> DetectorValidation:
    """Sensitivity (seen and held out) and specificity (plain and generator-like novel volumes) of every
    registry detector on copies of ``train`` under the broad copy definition.

    Args:
        detector: the trained contrastive detector being validated.
        train: (N, 1, D, H, W) the volumes the copies are made of (the detector's training set), or 2D images
            (N, 1, H, W) with a 2D detector.
        held_out: (M, 1, ...) real volumes of the same shape never in train (split into reference and novel).
        cfg: validation settings.
        pixel: also validate the pixel-correlation baseline ("pixel", and "pixel-oriented" when
            ``cfg.pixel_orientations``).
        held_out_detector: gives the detector of a fold from its name and config (e.g. trains it once and
            caches it); default: :func:`~memostudy.detect.detector.train_detector` on ``train`` with the
            reference volumes for its validation loss, in a temporary folder.
        progress: progress bars over folds, detectors and the aligned correlation.
    """
    from tqdm.auto import tqdm

    from memostudy.detect.detector import train_detector

    cfg = (cfg or ValidationConfig()).validate()
    gt = build_ground_truth(train, held_out, cfg)
    names = detector_names(cfg, pixel)
    plan = fold_plan(tuple(detector.config.view_families), tuple(cfg.families), cfg.folds)
    if held_out_detector is None:
        def held_out_detector(_name: str, c: DetectorConfig) -> Detector:
            return train_detector(train, gt.reference, c)
    # a family the views never contain is held out for the validated detector itself; one they contain is held
    # out only by its fold's detector (none with folds="none": then it has no held-out figure)
    views = set(detector.config.view_families)
    family_fold = ({f: SEEN for f in cfg.families if f not in views}
                   | {f: name for name, fams in plan.items() for f in fams})
    fam = np.array(gt.copy_family)
    runs: list[tuple[str, Detector, np.ndarray]] = [(SEEN, detector, np.ones(len(fam), bool))]
    folds: dict[str, tuple[tuple[str, ...], DetectorConfig]] = {}
    for name, fams in plan.items():
        c = held_out_config(detector.config, fams)
        folds[name] = (fams, c)
        runs.append((name, held_out_detector(name, c), np.isin(fam, fams)))
    scores: list[dict] = []
    bar = tqdm(total=len(runs) * len(names), desc="validation", disable=not progress, dynamic_ncols=True)
    for fold, det, sel in runs:
        queries = {"reference": gt.reference, "novel": gt.novel, "generator": gt.generator,
                   "copies": gt.copies[torch.from_numpy(np.flatnonzero(sel))]}
        search = Searches(det, train, queries, cfg.compare, cfg.metric, cfg.align, progress=progress)
        for name in names:
            bar.set_postfix_str(f"{fold}: {name}")
            scores += _score_rows(name, fold, search, gt, sel)
            bar.update()
    bar.close()
    score_frame = pd.DataFrame(scores)
    table, spec, thresholds = summarise(score_frame, family_fold, cfg.percentile)
    summary = {"n_train": len(train), "n_reference": len(gt.reference), "n_novel": len(gt.novel),
               "n_generator": len(gt.generator), "n_copies": len(gt.copies), "config": asdict(cfg),
               "folds": {k: {"held_out": list(v[0]), "view_families": list(v[1].view_families)}
                         for k, v in folds.items()},
               "view_families": list(detector.config.view_families),
               "family_fold": family_fold,
               "thresholds": {f"{d}/{f}": v for (d, f), v in thresholds.items()},
               "results": headline(table, spec).to_dict(orient="records")}
    summary["config"]["families"] = list(cfg.families)
    summary["config"]["strengths"] = list(cfg.strengths)
    return DetectorValidation(table, spec, score_frame, folds, summary)


def headline(table: pd.DataFrame, specificity: pd.DataFrame) -> pd.DataFrame:
    """One row per detector: seen and held-out sensitivity over every copy inside the definition, and
    specificity on plain and generator-like novel volumes (held out: mean over the fold detectors). Columns
    detector, sensitivity_seen, specificity_seen, specificity_generator_seen and the same ``_held_out``."""
    rows = []
    for d, g in table[table["family"] == "all-inside"].groupby("detector", sort=False):
        by = g.set_index("scored")
        row = {"detector": d}
        for scored in ("seen", "held-out"):
            if scored in by.index:
                r, s = by.loc[scored], scored.replace("-", "_")
                row |= {f"sensitivity_{s}": r["sensitivity"], f"specificity_{s}": r["specificity"],
                        f"specificity_generator_{s}": r["specificity_generator"]}
        rows.append(row)
    return pd.DataFrame(rows)


def sensitivity_grid(table: pd.DataFrame) -> pd.DataFrame:
    """Seen / held-out sensitivity per (family, strength), one column per (detector, scored): the table
    README shows. Rows: every (family, strength >= 1), then "all-inside"."""
    t = table[(table["strength"] > 0) | (table["family"] == "all-inside")]
    wide = t.pivot_table(index=["family", "strength", "inside"], columns=["detector", "scored"],
                         values="sensitivity", sort=False)
    return wide


def markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A frame as a GitHub markdown table (index levels become columns; floats rounded)."""
    f = frame.reset_index() if not isinstance(frame.index, pd.RangeIndex) else frame
    cols = [" ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c) for c in f.columns]

    def cell(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in f.itertuples(index=False)]
    return "\n".join(lines)


def run_validation(data: str, det_cfg: DetectorConfig | None = None, cfg: ValidationConfig | None = None,
                   detector_path: str | None = None, out_dir: str | None = None, cache: str | None = None,
                   limit: int | None = None, progress: bool = True) -> tuple[DetectorValidation, Detector, dict]:
    """The whole detector benchmark on a prepared data set, as ``memostudy validate-detector`` and
    ``05_detector_validation.ipynb`` run it: load the train and validation splits, train the detector
    on train (the reference half of the held-out split gives its validation loss; the novel half is
    never seen) or load ``detector_path``, then :func:`validate_detector`, whose held-out detectors are
    trained once each into ``out_dir/held_out/<fold>/`` (keyed on their config, so a rerun reuses them).

    Args:
        data: prepared data set name or folder (3D patches, or 2D images: the same layout, loaded as (N, 1, H, W)).
        det_cfg: the :class:`~memostudy.detect.detector.DetectorConfig` to train with (default settings
            when None); unused with ``detector_path`` (whose config the held-out detectors then take).
        cfg: validation settings (with how the detector compares volumes, ``cfg.compare``).
        detector_path: a trained detector to validate instead of training one.
        out_dir: where the trained detectors (and their resumable training folders) go; None = not kept.
        cache: data cache root.
        limit: use only the first ``limit`` patches of each split (quick checks).
        progress: progress bars.

    Returns:
        ``(validation, detector, record)`` where ``record`` holds the data set, detector config, best
        epoch, history, checkpoint, the held-out detectors and the seconds spent training and validating.
    """
    import time

    from memostudy.data.patches import load_patches
    from memostudy.detect.detector import load_or_train_detector, train_detector

    cfg = (cfg or ValidationConfig()).validate()
    train = load_patches(data, "train", cache=cache, limit=limit)
    held = load_patches(data, "validation", cache=cache, limit=limit)
    t0 = time.perf_counter()
    ref_idx, _ = split_held_out(len(held), cfg.reference_fraction, cfg.seed)
    reference = held.subset(ref_idx).volumes
    detector = load_or_train_detector(train.volumes, reference, det_cfg, checkpoint=detector_path or None,
                                      out_dir=out_dir, progress=progress)
    t_train = time.perf_counter() - t0
    trained: dict[str, dict] = {}

    def held_out_detector(name: str, c: DetectorConfig) -> Detector:
        t = time.perf_counter()
        folder = f"{out_dir}/held_out/{name}" if out_dir else None
        det = train_detector(train.volumes, reference, c, out_dir=folder, progress=progress)
        trained[name] = {"config": asdict(c), "best_epoch": det.best_epoch, "seconds": round(time.perf_counter() - t, 1),
                         "checkpoint": f"{folder}/detector.pt" if folder else None}
        return det

    t1 = time.perf_counter()
    res = validate_detector(detector, train.volumes, held.volumes, cfg, held_out_detector=held_out_detector,
                            progress=progress)
    t_held = sum(v["seconds"] for v in trained.values())
    record = {"data": str(data), "n_train_patches": len(train), "n_held_out_patches": len(held),
              "detector": {"config": asdict(detector.config), "best_epoch": detector.best_epoch,
                           "history": detector.history,
                           "checkpoint": detector_path or (f"{out_dir}/detector.pt" if out_dir else None)},
              "held_out_detectors": trained,
              "seconds": {"detector": round(t_train, 1), "held_out_detectors": round(t_held, 1),
                          "validation": round(time.perf_counter() - t1 - t_held, 1)}}
    return res, detector, record
