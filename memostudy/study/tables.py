"""Result tables the study notebooks show, and the one way the study writes a fraction with its
confidence interval ("x [lo, hi]" in %)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from memostudy.detect.assessment import Assessment


def percent_ci(fraction: float, ci: Sequence[float], digits: int = 1) -> str:
    """A fraction and its CI as percentages: ``percent_ci(0.271, (0.2, 0.35))`` -> ``"27.1 [20.0, 35.0]"``."""
    lo, hi = ci
    return f"{100 * fraction:.{digits}f} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def detector_table(assessment: Assessment) -> pd.DataFrame:
    """The headline of one assessment: threshold, memorized % and copy % (95% bootstrap CIs) of the
    contrastive detector and of the pixel-correlation baseline, one row per detector."""
    rows = []
    for name, s in (("contrastive (this study)", assessment.summary),
                    ("pixel correlation (Akbar et al.)", assessment.summary["pixel_baseline"])):
        rows.append({"detector": name, "threshold": s["threshold"],
                     "training volumes memorized %": percent_ci(s["memorized_fraction"], s["memorized_fraction_ci"]),
                     "synthetic volumes that are copies %": percent_ci(s["copy_fraction"], s["copy_fraction_ci"])})
    return pd.DataFrame(rows).set_index("detector")
