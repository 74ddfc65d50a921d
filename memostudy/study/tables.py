"""Result tables the study notebooks show (fractions with their intervals written by
:meth:`memostudy.detect.metrics.Fraction.text`, the one place that formats them)."""

from __future__ import annotations

import pandas as pd

from memostudy.detect.assessment import Assessment


def detector_table(assessment: Assessment) -> pd.DataFrame:
    """The headline of one assessment: threshold, memorized % and copy % (95% bootstrap CIs) of the
    contrastive detector, the pixel-correlation baseline and the block correlations, plain and plain-or-oriented
    (when run), one row per detector, with the number of
    synthetic volumes Benjamini-Hochberg flags at the assessment's false-discovery rate (conformal p-values)."""
    rows = []
    for name, key in (("contrastive (this study)", "contrastive"), ("pixel correlation (Akbar et al.)", "pixel"),
                      ("block correlation (best half of 8^3 blocks)", "blocks"),
                      ("block correlation, plain or oriented (flips, 90-degree rotations)", "blocks-either")):
        f = assessment.summary.detectors.get(key)
        if f is None:
            continue
        rows.append({"detector": name, "threshold": f.threshold, "training volumes memorized": f.memorized.text(),
                     "synthetic volumes that are copies": f.copies.text(),
                     f"copies by BH at FDR {assessment.config.fdr:g}": f"{f.n_bh_copies} of {f.copies.n}"})
    return pd.DataFrame(rows).set_index("detector")
