"""Evidence for each flagged copy: which training volume, how similar, how significant, and what change
maps the training volume onto the synthetic one.

A flagged copy is only useful to a reader who can check it. :class:`CopyEvidence` holds, per detector and
flagged synthetic volume, its nearest training volume (as that detector found it), the score, the
conformal p-value and BH q-value (:mod:`memostudy.detect.calibration`), the two decisions, and ``change``:
what turns the training volume into the synthetic one, as measured. Here the change comes from the aligned
search of :mod:`memostudy.detect.alignment` (:meth:`~memostudy.detect.alignment.Alignment.change`: the
orientation, the content shift in voxels, the extra blur, and the correlation after alignment); a detector
that measures more (a registration: rotation angle, translation, deformation size) fills ``change`` with its
own keys, which :func:`evidence_table` writes as ``change_<key>`` columns whatever they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class CopyEvidence:
    """Why one synthetic volume was flagged as a copy by one detector.

    Attributes:
        synthetic_id: the synthetic volume (file name in the audit).
        train_id: the training volume the detector matched it to.
        detector: the detector's name (:data:`memostudy.detect.registry.DETECTORS`).
        score: its nearest-training score under that detector (higher = more similar).
        p_value: conformal p-value against the reference (small = more copy-like than real novel volumes).
        q_value: Benjamini-Hochberg adjusted p-value over the synthetic set.
        is_copy: flagged by the percentile rule (score above the reference percentile).
        bh_copy: flagged by BH at the assessment's false-discovery rate.
        change: what maps the training volume onto the synthetic one, as measured (JSON values), e.g.
            ``{"kind": "orientation+shift", "orientation": 4, "permutation": [0, 1, 2], "flips": [True, False,
            False], "shift_voxels": [2.0, 0.0, -1.0], "blur_sigma": 0.0, "aligned_correlation": 0.98}``;
            empty when nothing was measured.
    """

    synthetic_id: str
    train_id: str
    detector: str
    score: float
    p_value: float
    q_value: float
    is_copy: bool
    bh_copy: bool
    change: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """One flat row of ``evidence.csv``: the fields, and each ``change`` entry as ``change_<key>``
        (lists as JSON text)."""
        base = {k: getattr(self, k) for k in ("synthetic_id", "detector", "train_id", "score", "p_value", "q_value")}
        base |= {"is_copy": int(self.is_copy), "bh_copy": int(self.bh_copy)}
        return base | {f"change_{k}": (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
                       for k, v in self.change.items()}


#: the columns of ``evidence.csv`` before the ``change_*`` ones
EVIDENCE_COLUMNS = ("synthetic_id", "detector", "train_id", "score", "p_value", "q_value", "is_copy", "bh_copy")


def evidence_table(evidence: list[CopyEvidence]) -> pd.DataFrame:
    """``evidence.csv``: one row per (detector, flagged synthetic volume), columns :data:`EVIDENCE_COLUMNS`
    then ``change_<key>`` for every key any change holds (empty where a change lacks it)."""
    rows = [e.row() for e in evidence]
    df = pd.DataFrame(rows, columns=list(EVIDENCE_COLUMNS) + sorted({k for r in rows for k in r} - set(EVIDENCE_COLUMNS)))
    return df
