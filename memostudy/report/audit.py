"""The files of ``memostudy audit``: summary.json, the three tables and report.html, written from an
:class:`~memostudy.detect.assessment.Assessment` (the detection layer only returns typed results).

``summary.json`` is :meth:`memostudy.detect.assessment.AssessmentSummary.as_dict` plus what the command
adds (inputs, intensity rule, timings) and provenance; the tables' columns are listed in
:mod:`memostudy.detect.assessment`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memostudy.config import provenance
from memostudy.detect.assessment import Assessment
from memostudy.errors import DataError, RunExistsError
from memostudy.report.figures import assessment_figures
from memostudy.report.format import json_default
from memostudy.report.page import html_page

AUDIT_FILES = ("summary.json", "synthetic.csv", "train.csv", "reference.csv", "report.html")


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


def headline(assessment: Assessment) -> dict[str, str | int]:
    """The report's summary table: counts, threshold, and each detector's fractions with their CIs."""
    s, cfg = assessment.summary, assessment.config
    c = s.contrastive
    ci = f"{cfg.confidence:.0%} CI"
    rows: dict[str, str | int] = {
        "training volumes": s.n_train, "reference volumes": s.n_reference, "synthetic volumes": s.n_synthetic,
        f"threshold ({cfg.metric}, {cfg.percentile:g}th percentile of reference)": f"{c.threshold:.6g}",
        f"memorized fraction of training volumes ({ci})": c.memorized.text(),
        f"copy fraction of synthetic volumes ({ci})": c.copies.text(),
    }
    for name in ("combined", "aligned"):
        if name in s.detectors:
            rows[f"{name}: copy fraction"] = s.detectors[name].copies.text()
            rows[f"{name}: memorized fraction"] = s.detectors[name].memorized.text()
    if "pixel" in s.detectors:
        px = s.detectors["pixel"]
        rows["pixel baseline: threshold (max voxel correlation)"] = f"{px.threshold:.6g}"
        rows["pixel baseline: copy fraction"] = px.copies.text()
        rows["pixel baseline: memorized fraction"] = f"{px.memorized.value:.1%}"
    return rows


def write_audit(assessment: Assessment, out_dir: str | Path, extra: dict[str, Any] | None = None,
                force: bool = False) -> dict[str, Path]:
    """Write summary.json, synthetic.csv, train.csv, reference.csv and report.html into ``out_dir``.

    Args:
        assessment: the result of :func:`memostudy.detect.assessment.assess`.
        out_dir: output folder (created).
        extra: more entries for summary.json (inputs, intensity rule, timings, provenance ...).
        force: replace earlier results (else :class:`RunExistsError` when any are there).

    Returns:
        file name -> path of every file written.
    """
    out = check_out_dir(out_dir, force)
    summary = {**assessment.summary.as_dict(), **(extra or {})}
    summary.setdefault("provenance", provenance())
    paths = {name: out / name for name in AUDIT_FILES}
    paths["summary.json"].write_text(json.dumps(summary, indent=2, default=json_default))
    assessment.synthetic_table.to_csv(paths["synthetic.csv"], index=False)
    assessment.train_table.to_csv(paths["train.csv"], index=False)
    assessment.reference_table.to_csv(paths["reference.csv"], index=False)
    top = assessment.synthetic_table.sort_values("similarity", ascending=False).head(20)
    sections: list[tuple[str | None, Any]] = [
        ("Summary", headline(assessment)),
        ("How to read this", "Similarities are 'higher = more similar'. The threshold is the given percentile of the "
                             "similarities of real reference volumes (never trained on) to their nearest training "
                             "volume; a synthetic volume above it is called a copy of its nearest training volume. "
                             "The pixel baseline (Akbar et al.) cannot see flipped or rotated copies."),
        *[(f"Similarity distributions: {name}", fig) for name, fig in assessment_figures(assessment).items()],
        ("Most similar synthetic volumes (contrastive)", top),
    ]
    paths["report.html"].write_text(html_page("memostudy audit", sections))
    return paths
