"""The files of ``memostudy audit``: summary.json, the three tables and report.html, written from an
:class:`~memostudy.detect.assessment.Assessment` (the detection layer only returns typed results).

``summary.json`` is :meth:`memostudy.detect.assessment.AssessmentSummary.as_dict` plus what the command
adds (inputs, intensity rule, timings) and provenance; the tables' columns are listed in
:mod:`memostudy.detect.assessment`.

Nothing the user relies on is ever half-written or lost:

- results are written into a build folder ``OUT/.building-<time>-<pid>/`` (:func:`new_build`), which gets
  a ``COMPLETE`` marker last; only then are they moved into ``OUT``, ``summary.json`` last, so
  ``OUT/summary.json`` means "complete results" (:func:`has_results`). A ``detector.pt`` trained by the
  audit is built there too;
- ``--force`` replaces: the old results stay in place until the new ones are complete;
- a killed run's build folder is removed by the next run (:func:`tidy`), or, when it was complete and
  only the move was interrupted, moved into place (rolled forward);
- one audit per ``OUT`` at a time (:func:`locked`, ``filelock``): a second one refuses in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch
from filelock import FileLock, Timeout

from memostudy.config import provenance
from memostudy.data.prepare import pause_point  # the test hook of the fault tests
from memostudy.detect.assessment import Assessment, column_prefix
from memostudy.detect.evidence import evidence_table
from memostudy.errors import DataError, RunExistsError
from memostudy.report.figures import assessment_figures
from memostudy.report.format import json_default
from memostudy.report.page import html_page

AUDIT_FILES = ("summary.json", "synthetic.csv", "train.csv", "reference.csv", "report.html", "evidence.csv")
#: the files whose presence means "complete results" (what every version wrote; older ones had no evidence.csv,
#: and their results must still not be replaced without --force)
RESULT_FILES = AUDIT_FILES[:5]
#: flagged pairs shown aligned in report.html (each a three-row slice viewer of about 150 kB at 32^3; in 2D three
#: images side by side)
MAX_ALIGNED_PAIRS = 6
#: the aligned pairs' viewers show planes with a side over this many voxels averaged to at most this many pixels,
#: with at most ``VIEW_MAX_STEPS`` slider positions (:func:`memostudy.report.viewer.slice_viewer`): six pairs of
#: 256 x 256 x 32 volumes at every voxel made a 67 MB report (18 MB now); the volumes are in the user's folders
VIEW_MAX_SIDE = 128
VIEW_MAX_STEPS = 32


BUILDING_PREFIX = ".building-"
COMPLETE_MARKER = "COMPLETE"
LOCK_FILE = ".audit.lock"


def has_results(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds complete audit results: every file of :data:`RESULT_FILES` (``summary.json``
    is moved in last; an older version's killed run could leave it without ``report.html``)."""
    return all((Path(out_dir) / f).is_file() for f in RESULT_FILES)


def check_out_dir(out_dir: str | Path, force: bool = False, create: bool = True) -> Path:
    """Refuse to overwrite a folder holding complete audit results unless ``force``. Nothing is removed
    here: with ``force`` the old results stay until :func:`write_audit` moves complete new ones in.
    Files of a killed run (result files without ``summary.json``) are not results and do not refuse.

    Args:
        out_dir: the output folder.
        force: the results will be replaced.
        create: create the folder (call once the inputs are known to be good).

    Raises:
        DataError: ``out_dir`` exists and is not a folder.
        RunExistsError: ``out_dir`` holds complete results and ``force`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; pass a folder path to --out")
    if has_results(out) and not force:
        found = [f for f in RESULT_FILES if (out / f).exists()]
        raise RunExistsError(f"{out}: already holds audit results ({', '.join(found)}); "
                             "pass --force to replace them or choose another --out")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def locked(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``OUT/.audit.lock`` (``filelock``) for one audit; tidy a killed run's leftovers first.

    Raises:
        RunExistsError: another audit into the same folder is running.
    """
    out = Path(out_dir)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunExistsError(f"{out}: another `memostudy audit` is writing into this folder (lock {lock.lock_file}); "
                             "wait for it to finish or choose another --out") from None
    try:
        tidy(out)
        yield out
    finally:
        lock.release()


def tidy(out_dir: str | Path) -> list[str]:
    """Finish or remove what a killed audit left in ``out_dir`` (call with the lock held): a complete
    build whose move was interrupted is moved into place; an incomplete build is removed.

    Returns:
        one line per thing done (empty when there was nothing to do).
    """
    out, done = Path(out_dir), []
    for build in sorted(out.glob(f"{BUILDING_PREFIX}*")):
        if (build / COMPLETE_MARKER).exists():
            _move_into_place(build, out)
            done.append(f"finished moving the complete results of an interrupted audit from {build.name}")
        else:
            shutil.rmtree(build, ignore_errors=True)
            done.append(f"removed {build.name}, the unfinished results of an interrupted audit")
    return done


def new_build(out_dir: str | Path) -> Path:
    """A fresh build folder in ``out_dir`` for results written aside (see the module docstring)."""
    build = Path(out_dir) / f"{BUILDING_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    build.mkdir(parents=True)
    return build


def _move_into_place(build: Path, out: Path) -> None:
    """Move the files of a complete build into ``out``: ``summary.json`` of ``out`` goes first (so a kill
    here never leaves old summary beside new tables), ``summary.json`` of the build comes last."""
    (out / "summary.json").unlink(missing_ok=True)
    for f in sorted(build.iterdir()):
        if f.name not in ("summary.json", COMPLETE_MARKER):
            os.replace(f, out / f.name)
            pause_point("audit-moving")
    if (build / "summary.json").exists():
        os.replace(build / "summary.json", out / "summary.json")
    shutil.rmtree(build, ignore_errors=True)


def headline(assessment: Assessment) -> dict[str, str | int]:
    """The report's summary table: counts, the headline detector's threshold and fractions with their CIs, then
    each other detector's."""
    s, cfg = assessment.summary, assessment.config
    c, name = s.headline, s.headline_detector
    ci = f"{cfg.confidence:.0%} CI"
    score = {"contrastive": cfg.metric, "blocks-either": "reference rank of the plain or oriented block correlation",
             "blocks": "block correlation", "pixel": "max voxel correlation"}[name]
    rows: dict[str, str | int] = {
        "training volumes": s.n_train, "reference volumes": s.n_reference, "synthetic volumes": s.n_synthetic,
        "headline detector": name if name == "contrastive" else f"{name} (the contrastive detector was not run)",
        f"threshold ({score}, {cfg.percentile:g}th percentile of reference)": f"{c.threshold:.6g}",
        f"memorized fraction of training volumes ({ci})": c.memorized.text(),
        f"copy fraction of synthetic volumes ({ci})": c.copies.text(),
    }
    if c.n_bh_copies is not None:
        rows[f"copies by Benjamini-Hochberg at FDR {cfg.fdr:g} (smallest p-value)"] = _bh_text(c, s.n_synthetic)
    for name in ("combined", "aligned", "blocks-either", "blocks"):
        if name in s.detectors and name != s.headline_detector:
            rows[f"{name}: copy fraction"] = s.detectors[name].copies.text()
            rows[f"{name}: memorized fraction"] = s.detectors[name].memorized.text()
            if s.detectors[name].n_bh_copies is not None:
                rows[f"{name}: copies by BH at FDR {cfg.fdr:g}"] = _bh_text(s.detectors[name], s.n_synthetic)
    if "pixel" in s.detectors and s.headline_detector != "pixel":
        px = s.detectors["pixel"]
        rows["pixel baseline: threshold (max voxel correlation)"] = f"{px.threshold:.6g}"
        rows["pixel baseline: copy fraction"] = px.copies.text()
        rows["pixel baseline: memorized fraction"] = f"{px.memorized.value:.1%}"
        if px.n_bh_copies is not None:
            rows[f"pixel baseline: copies by BH at FDR {cfg.fdr:g}"] = _bh_text(px, s.n_synthetic)
    sm = s.smoothness
    if sm:
        rough = ", ".join(f"{k} {v:.3g}" for k, v in sm["roughness"].items())
        rows["reference as scored"] = sm["reference_smoothness"] + (
            f" (blurred by sigma {sm['blur_sigma']:.2f} voxels, noise of std {sm['added_noise_std']:.3g} added)"
            if sm["reference_smoothness"] == "matched" else "")
        rows["median roughness (lower = smoother)"] = rough
    return rows


def _bh_text(f: Any, n: int) -> str:
    return f"{f.n_bh_copies} of {n} (smallest p-value {f.min_p_value:.3g})"


def aligned_pairs(assessment: Assessment, train: torch.Tensor, synthetic: torch.Tensor, train_ids: list[str],
                  synthetic_ids: list[str], limit: int = MAX_ALIGNED_PAIRS) -> list[tuple[str, go.Figure]]:
    """Slice viewers of the first ``limit`` distinct flagged pairs of the evidence (BH-flagged first, then by
    p-value): the synthetic volume, the training volume moved by the change found
    (:func:`memostudy.detect.alignment.apply_change`), and the training volume as stored, one window. For 2D
    images the three are side by side (:func:`memostudy.report.viewer.image_row`).

    Args:
        assessment: with its :attr:`~memostudy.detect.assessment.Assessment.evidence`.
        train, synthetic: (N, 1, D, H, W) volumes or (N, 1, H, W) images as assessed; ids their names.
    """
    from memostudy.detect.alignment import apply_change
    from memostudy.report.viewer import slice_viewer

    t_at, s_at = {k: i for i, k in enumerate(train_ids)}, {k: i for i, k in enumerate(synthetic_ids)}
    seen, out = set(), []
    for e in sorted(assessment.evidence, key=lambda e: (not e.bh_copy, e.p_value, -e.score)):
        if (e.synthetic_id, e.train_id) in seen or len(out) >= limit:
            continue
        seen.add((e.synthetic_id, e.train_id))
        tv, sv = train[t_at[e.train_id]], synthetic[s_at[e.synthetic_id]]
        moved = apply_change(tv, e.change) if e.change else tv
        what = _change_text(e.change)
        titles = [f"synthetic {e.synthetic_id}", f"train {e.train_id} aligned", f"train {e.train_id} as stored"]
        if sv.ndim == 4:  # a volume's rows are wide enough to name the change too (2D: it is in the section title)
            titles[1] += f" ({what})"
        fig = slice_viewer([sv, moved, tv], titles, height_per_row=220, max_side=VIEW_MAX_SIDE, max_steps=VIEW_MAX_STEPS)
        out.append((f"{e.synthetic_id} vs {e.train_id}: {e.detector} score {e.score:.4g}, p = {e.p_value:.3g}, "
                    f"q = {e.q_value:.3g}; change: {what}", fig))
    return out


def _change_text(change: dict[str, Any]) -> str:
    """A change of :class:`~memostudy.detect.evidence.CopyEvidence` in a few words."""
    if not change:
        return "not measured"
    parts = []
    if "permutation" in change:
        flips = change.get("flips", [])
        flips = [ax for ax, f in zip("DHW"[-len(flips):] if flips else "", flips) if f]  # (H, W) for a 2D image
        parts.append(f"axes {tuple(change['permutation'])}" + (f", flipped {''.join(flips)}" if flips else ""))
    if "shift_voxels" in change:
        parts.append("shift " + ", ".join(f"{v:+.1f}" for v in change["shift_voxels"]) + " voxels")
    if change.get("blur_sigma"):
        parts.append(f"blur {change['blur_sigma']:g}")
    if "aligned_correlation" in change:
        parts.append(f"r {change['aligned_correlation']:.3f}")
    parts += [f"{k} {v}" for k, v in change.items() if k not in {"kind", "orientation", "permutation", "flips", "shift_voxels",
                                                                 "blur_sigma", "aligned_correlation"}]
    return "; ".join(parts)


def write_audit(assessment: Assessment, out_dir: str | Path, extra: dict[str, Any] | None = None,
                force: bool = False, build: Path | None = None,
                volumes: dict[str, tuple[torch.Tensor, list[str]]] | None = None) -> dict[str, Path]:
    """Write summary.json, synthetic.csv, train.csv, reference.csv, evidence.csv and report.html into
    ``out_dir``, aside first and moved in only when complete (see the module docstring).

    Args:
        assessment: the result of :func:`memostudy.detect.assessment.assess`.
        out_dir: output folder (created).
        extra: more entries for summary.json (inputs, intensity rule, timings, provenance ...).
        force: replace earlier results (else :class:`RunExistsError` when complete ones are there).
        build: a build folder from :func:`new_build` that already holds files to move in with the results
            (e.g. the ``detector.pt`` trained by the audit); default a new one.
        volumes: "train" and "synthetic" -> ((N, 1, D, H, W) volumes or (N, 1, H, W) images as assessed, names):
            when given, the report shows the first flagged pairs aligned (:func:`aligned_pairs`).

    Returns:
        file name -> path of every result file written (in ``out_dir``).
    """
    out = check_out_dir(out_dir, force)
    build = build if build is not None else new_build(out)
    summary = {**assessment.summary.as_dict(), **(extra or {})}
    summary.setdefault("provenance", provenance())
    paths = {name: build / name for name in AUDIT_FILES}
    assessment.synthetic_table.to_csv(paths["synthetic.csv"], index=False)
    assessment.train_table.to_csv(paths["train.csv"], index=False)
    assessment.reference_table.to_csv(paths["reference.csv"], index=False)
    evidence = evidence_table(assessment.evidence)
    evidence.to_csv(paths["evidence.csv"], index=False)
    pause_point("audit-writing")
    lead = assessment.summary.headline_detector
    top = assessment.synthetic_table.sort_values(f"{column_prefix(lead)}similarity", ascending=False).head(20)
    pairs = aligned_pairs(assessment, volumes["train"][0], volumes["synthetic"][0], volumes["train"][1],
                          volumes["synthetic"][1]) if volumes else []
    sections: list[tuple[str | None, Any]] = [
        ("Summary", headline(assessment)),
        ("How to read this", "Similarities are 'higher = more similar'. The threshold is the given percentile of the "
                             "similarities of real reference volumes (never trained on) to their nearest training "
                             "volume; a synthetic volume above it is called a copy of its nearest training volume. "
                             "The pixel baseline (Akbar et al.) cannot see flipped or rotated copies. "
                             "Beside that rule, each synthetic volume's p-value is the share of reference volumes "
                             "scoring at least as high (+1 correction: it cannot be below 1 / (1 + number of "
                             "reference volumes)); Benjamini-Hochberg flags volumes so that the expected share of "
                             "novel volumes among those flagged is at most the FDR (columns p_value, q_value, bh_copy "
                             "of synthetic.csv)."),
        *[(f"Similarity distributions: {name}", fig) for name, fig in assessment_figures(assessment).items()],
        (f"Most similar synthetic volumes ({lead})", top),
        (f"Evidence: flagged copies ({len(evidence)} rows in evidence.csv, first 50)",
         evidence.head(50) if len(evidence) else "No synthetic volume was flagged by any detector."),
        *[(f"Flagged pair aligned: {title}", fig) for title, fig in pairs],
    ]
    paths["report.html"].write_text(html_page("memostudy audit", sections))
    paths["summary.json"].write_text(json.dumps(summary, indent=2, default=json_default))
    (build / COMPLETE_MARKER).write_text("complete\n")
    _move_into_place(build, out)
    return {name: out / name for name in AUDIT_FILES}
