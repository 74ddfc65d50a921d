"""Memorization metrics: calibrated threshold, copy decisions, fractions with bootstrap CIs, and the
detector's sensitivity / specificity / ROC AUC. Pure functions on arrays of similarities.

Convention everywhere: a similarity is "higher = more similar" (see :mod:`memostudy.detect.similarity`);
a volume is a copy when its similarity is **strictly greater** than the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from memostudy.seeds import Stream, numpy_rng


def _arr(x) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64).ravel()
    return a


@dataclass(frozen=True)
class Threshold:
    """A copy threshold calibrated on real reference volumes.

    Attributes:
        value: similarity above which a volume counts as a copy.
        percentile: percentile (0-100) of the reference similarities it was taken at.
        n_reference: number of reference similarities it was computed from.
    """

    value: float
    percentile: float
    n_reference: int


def calibrate_threshold(reference_nearest, percentile: float = 95.0) -> Threshold:
    """The ``percentile``-th percentile (linear interpolation, numpy's default) of the reference
    volumes' nearest-training similarities.

    Real held-out volumes are by definition not copies, so with the 95th percentile about 5 % of
    novel real volumes would be called copies (the false-positive rate the threshold allows).

    Args:
        reference_nearest: (Nr,) each reference volume's similarity to its nearest training volume.
        percentile: in [0, 100].
    """
    ref = _arr(reference_nearest)
    if ref.size == 0:
        raise ValueError("no reference similarities: the threshold needs at least one reference volume")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return Threshold(float(np.percentile(ref, percentile)), float(percentile), int(ref.size))


def is_copy(similarities, threshold: Threshold | float) -> np.ndarray:
    """Boolean (N,): ``similarity > threshold``."""
    t = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    return _arr(similarities) > t


@dataclass(frozen=True)
class Fraction:
    """A fraction with a bootstrap confidence interval.

    Attributes:
        value: the observed fraction in [0, 1].
        lo: lower end of the CI.
        hi: upper end of the CI.
        n: number of volumes it is a fraction of.
        confidence: e.g. 0.95.
    """

    value: float
    lo: float
    hi: float
    n: int
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 1) -> str:
        """The fraction and its interval as percentages, e.g. ``"12.5% [4.2%, 25.0%]"``."""
        return f"{self.value:.{digits}%} [{self.lo:.{digits}%}, {self.hi:.{digits}%}]"


def bootstrap_fraction(similarities, reference_nearest, percentile: float = 95.0, n_boot: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> Fraction:
    """Fraction of ``similarities`` above the threshold calibrated on ``reference_nearest``, with a
    percentile-bootstrap CI that resamples **both** the volumes and the reference set (so the
    threshold's own uncertainty is in the interval).

    Args:
        similarities: (N,) nearest similarities of the volumes being counted.
        reference_nearest: (Nr,) nearest-training similarities of the reference volumes.
        percentile: threshold percentile (0-100).
        n_boot: bootstrap replicates.
        confidence: CI level in (0, 1).
        seed: seed of the resampling.
    """
    sims, ref = _arr(similarities), _arr(reference_nearest)
    if sims.size == 0:
        raise ValueError("no similarities to count")
    value = float(is_copy(sims, calibrate_threshold(ref, percentile)).mean())
    rng = numpy_rng(Stream.BOOTSTRAP, seed)
    ref_b = ref[rng.integers(0, ref.size, size=(n_boot, ref.size))]
    thr_b = np.percentile(ref_b, percentile, axis=1)
    sims_b = sims[rng.integers(0, sims.size, size=(n_boot, sims.size))]
    frac_b = (sims_b > thr_b[:, None]).mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(frac_b, [alpha, 1 - alpha])
    return Fraction(value, float(lo), float(hi), int(sims.size), float(confidence))


def memorized_fraction(train_nearest_synthetic, reference_nearest, **kw) -> Fraction:
    """Fraction of training volumes whose nearest synthetic volume (the copy candidate) is a copy.

    Args:
        train_nearest_synthetic: (Ntrain,) similarity of each training volume to its nearest synthetic.
        reference_nearest: (Nr,) similarity of each reference volume to its nearest training volume.
        **kw: passed to :func:`bootstrap_fraction` (percentile, n_boot, confidence, seed).
    """
    return bootstrap_fraction(train_nearest_synthetic, reference_nearest, **kw)


def copy_fraction(synthetic_nearest_train, reference_nearest, **kw) -> Fraction:
    """Fraction of synthetic volumes that are copies of some training volume.

    Args:
        synthetic_nearest_train: (Nsyn,) similarity of each synthetic volume to its nearest training volume.
        reference_nearest: (Nr,) similarity of each reference volume to its nearest training volume.
        **kw: passed to :func:`bootstrap_fraction`.
    """
    return bootstrap_fraction(synthetic_nearest_train, reference_nearest, **kw)


def reference_rank(reference, scores, leave_one_out: bool = False) -> np.ndarray:
    """Each score's place in the reference distribution: the fraction of reference similarities that
    are <= it, in [0, 1]. Puts detectors whose similarities live on different scales on one scale, in
    units of the false-positive rate their threshold would allow.

    With ``leave_one_out`` the scores are the reference similarities themselves (same order) and each is
    ranked against the *other* reference volumes (the fraction strictly below it): ranked in-sample, the
    most similar reference volume of each detector would get 1.0, the rank of a copy beyond every
    reference volume, and a threshold taken on those in-sample ranks could never be exceeded."""
    ref = np.sort(_arr(reference))
    if ref.size == 0:
        raise ValueError("no reference similarities to rank against")
    return np.searchsorted(ref, _arr(scores), side="left" if leave_one_out else "right") / ref.size


def combined_score(references, scores, leave_one_out: bool = False) -> np.ndarray:
    """Score of "a copy for any of several detectors": the highest :func:`reference_rank` of the
    volume across detectors. ``references[i]`` and ``scores[i]`` are detector i's reference and query
    similarities (queries in the same order for every detector). Calibrate its threshold on the
    reference volumes' own combined scores, computed with ``leave_one_out`` (each reference volume
    ranked against the others, see :func:`reference_rank`), like any similarity here."""
    if len(references) != len(scores) or not scores:
        raise ValueError("combined_score needs one reference array per score array, at least one of each")
    return np.max([reference_rank(r, s, leave_one_out) for r, s in zip(references, scores)], axis=0)


def combine_nearest(references, queries, same_scale: bool = False):
    """The "copy for either detector" result of two detectors on the same queries.

    Args:
        references: (first, second) :class:`~memostudy.detect.similarity.Nearest` of the reference volumes
            under each detector (what each detector's threshold is calibrated on).
        queries: (first, second) :class:`~memostudy.detect.similarity.Nearest` of the query volumes, same
            order under both detectors. When they are the references themselves (equal values under both
            detectors), the reference volumes are ranked leave-one-out (:func:`reference_rank`).

        same_scale: the two detectors score on one scale (e.g. the block correlation plain and oriented): on equal
            ranks (both above every reference volume, say) the nearest volume is the one of the higher score.

    Returns:
        :class:`~memostudy.detect.similarity.Nearest`: values = :func:`combined_score` (float32 reference
        ranks in [0, 1]), indices = the nearest volume of whichever detector ranks the query higher
        (on ties the first, or with ``same_scale`` the higher scoring).
    """
    import torch

    from memostudy.detect.similarity import Nearest

    refs = [_arr(r.values) for r in references]
    qs = [_arr(q.values) for q in queries]
    loo = all(r.shape == q.shape and np.array_equal(r, q) for r, q in zip(refs, qs))
    ranks = [reference_rank(r, q, loo) for r, q in zip(refs, qs)]
    second = ranks[1] > ranks[0]
    if same_scale:
        second |= (ranks[1] == ranks[0]) & (qs[1] > qs[0])
    second = torch.from_numpy(second)
    values = combined_score(refs, qs, loo)
    return Nearest(torch.from_numpy(values).float(), torch.where(second, queries[1].indices, queries[0].indices))


@dataclass(frozen=True)
class Detection:
    """How well a threshold separates known copies (positives) from novel volumes (negatives).

    Attributes:
        sensitivity: fraction of copies with similarity > threshold.
        specificity: fraction of novel volumes with similarity <= threshold.
        auc: ROC AUC of the similarity as a copy score (threshold-free; 1 = perfect, 0.5 = chance).
        threshold: the threshold used.
        n_copies: number of positives.
        n_novel: number of negatives.
        sensitivity_at_spec: sensitivity at the ROC point where specificity first reaches
            ``target_specificity`` (threshold = the smallest novel score with that many novel volumes at
            or below it): what the detector can do when its threshold is right, apart from how well the
            reference set calibrates it.
        target_specificity: see ``sensitivity_at_spec``.
    """

    sensitivity: float
    specificity: float
    auc: float
    threshold: float
    n_copies: int
    n_novel: int
    sensitivity_at_spec: float = float("nan")
    target_specificity: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def detection(copy_scores, novel_scores, threshold: Threshold | float, target_specificity: float = 0.95) -> Detection:
    """Sensitivity, specificity and ROC AUC of "similarity > threshold" as a copy detector, and the
    sensitivity at ``target_specificity`` on the ROC curve.

    Args:
        copy_scores: (Np,) nearest-training similarities of known copies.
        novel_scores: (Nn,) nearest-training similarities of novel real volumes.
        threshold: the calibrated threshold.
        target_specificity: in (0, 1].
    """
    from sklearn.metrics import roc_auc_score

    pos, neg = _arr(copy_scores), _arr(novel_scores)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("detection needs at least one copy and one novel volume")
    t = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    auc = float(roc_auc_score(labels, np.r_[pos, neg]))
    if not 0 < target_specificity <= 1:
        raise ValueError(f"target_specificity must be in (0, 1], got {target_specificity}")
    at_target = np.sort(neg)[max(0, int(np.ceil(target_specificity * neg.size)) - 1)]
    return Detection(float((pos > t).mean()), float((neg <= t).mean()), auc, t, int(pos.size), int(neg.size),
                     float((pos > at_target).mean()), float(target_specificity))


@dataclass(frozen=True)
class Agreement:
    """How detector decisions agree with manual labels (e.g. a radiologist's copy/novel reading).

    Attributes:
        sensitivity: of the volumes labelled copy, the fraction the detector calls a copy (nan if none).
        specificity: of the volumes labelled novel, the fraction the detector calls novel (nan if none).
        true_positive, false_negative, true_negative, false_positive: counts.
    """

    sensitivity: float
    specificity: float
    true_positive: int
    false_negative: int
    true_negative: int
    false_positive: int

    def as_dict(self) -> dict:
        return asdict(self)


def sensitivity_specificity(decisions, labels) -> Agreement:
    """Sensitivity and specificity of detector ``decisions`` against manual ``labels``.

    Args:
        decisions: (N,) detector calls, truthy = copy (e.g. the ``is_copy`` column of synthetic.csv).
        labels: (N,) manual labels, truthy = copy; the strings "copy"/"novel" are accepted too.
    """
    def _bool(x) -> np.ndarray:
        a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x).ravel()
        if a.dtype.kind in "OUS":
            bad = sorted({str(v) for v in a} - {"copy", "novel"})
            if bad:
                raise ValueError(f"labels must be 'copy' or 'novel' (or 1/0), got {', '.join(bad[:3])}")
            return a.astype(str) == "copy"
        return a.astype(bool)

    d, y = _bool(decisions), _bool(labels)
    if d.shape != y.shape:
        raise ValueError(f"{d.size} decisions but {y.size} labels")
    tp, fn = int((d & y).sum()), int((~d & y).sum())
    tn, fp = int((~d & ~y).sum()), int((d & ~y).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return Agreement(sens, spec, tp, fn, tn, fp)
