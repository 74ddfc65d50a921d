"""The copy candidates a reader inspects in the study notebook: the training volumes with the most
similar synthetic volume, their volumes by id, and how the detector's calls agree with manual labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from memostudy.detect.assessment import Assessment, column_prefix


def top_candidates(assessment: Assessment, k: int = 4) -> pd.DataFrame:
    """The ``k`` training volumes with the most similar synthetic volume (copy candidates), most similar first."""
    return assessment.train_table.sort_values("similarity", ascending=False).head(k).reset_index(drop=True)


#: share-safe margin: a synthetic volume more similar to its nearest training volume than this percentile of
#: the real reference volumes' similarities (under any detector run) is withheld. 80, well below the copy
#: threshold (95th): the threshold is itself an estimate (a percentile of some tens to hundreds of reference
#: volumes, whose bootstrap interval spans several percentiles), and a copy a generator changed a little
#: scores just under it; above the 80th percentile a synthetic volume is as close to a training patient as
#: only the closest fifth of real other patients are, which a report for outsiders need not show.
SHARE_SAFE_PERCENTILE = 80.0


@dataclass(frozen=True)
class Shareable:
    """Which synthetic volumes a share-safe report may show (:func:`shareable_synthetic`).

    Attributes:
        shown: synthetic_id, nearest_train_id, similarity of the volumes whose images may be shown, most similar
            first.
        withheld: synthetic_id, detector, similarity, margin (the reference percentile it exceeds) of every
            volume that is a copy or near the copy threshold: listed by id and score only, never shown.
    """

    shown: pd.DataFrame
    withheld: pd.DataFrame


def shareable_synthetic(assessment: Assessment, k: int = 4, percentile: float = SHARE_SAFE_PERCENTILE) -> Shareable:
    """The share-safe rule, the one place every notebook asks which synthetic volumes it may show.

    A synthetic volume is withheld when, under any detector of the assessment (contrastive, pixel, aligned,
    combined), its similarity to its nearest training volume exceeds the ``percentile`` of the real reference
    volumes' similarities under that detector, or it is called a copy. The ``k`` most similar of the others
    may be shown.

    Args:
        assessment: the assessment whose synthetic volumes are shown.
        k: at most this many volumes to show.
        percentile: the margin (default :data:`SHARE_SAFE_PERCENTILE`), in [0, 100].
    """
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    syn, ref = assessment.synthetic_table, assessment.reference_table
    withheld = []
    flagged = pd.Series(False, index=syn.index)
    for name in assessment.summary.detectors:
        p = column_prefix(name)
        margin = float(np.percentile(ref[f"{p}similarity"].to_numpy(dtype=float), percentile))
        over = (syn[f"{p}similarity"] > margin) | (syn[f"{p}is_copy"] == 1)
        flagged |= over
        withheld.append(pd.DataFrame({"synthetic_id": syn.loc[over, "synthetic_id"], "detector": name,
                                      "similarity": syn.loc[over, f"{p}similarity"], "margin": margin}))
    table = pd.concat(withheld, ignore_index=True) if withheld else pd.DataFrame(
        columns=["synthetic_id", "detector", "similarity", "margin"])
    shown = syn.loc[~flagged, ["synthetic_id", "nearest_train_id", "similarity"]]
    return Shareable(shown.sort_values("similarity", ascending=False).head(k).reset_index(drop=True),
                     table.sort_values(["synthetic_id", "detector"]).reset_index(drop=True))


def volume_of(ids: list[str], volumes: torch.Tensor, name: str) -> torch.Tensor:
    """The volume of id ``name`` in an (ids, volumes) pair: ``volumes`` (N, 1, D, H, W) -> (1, D, H, W)."""
    return volumes[ids.index(name)]


def label_agreement(assessment: Assessment, labels_path: str | Path) -> dict[str, Any] | None:
    """Sensitivity / specificity of the detector's memorized calls against manual labels (the CSV of
    :class:`~memostudy.report.viewer.LabellingWidget`: train_id, synthetic_id, label), as the seeds did with
    their manual annotation. Pairs labelled "unsure" and pairs no longer the detector's candidates are
    left out. None when no usable label exists."""
    from memostudy.detect.metrics import sensitivity_specificity
    from memostudy.report.viewer import load_labels

    labels = {k: v for k, v in load_labels(labels_path).items() if v in ("copy", "novel")}
    t = assessment.train_table
    keyed = t.assign(key=list(zip(t["train_id"].astype(str), t["nearest_synthetic_id"].astype(str))))
    rows = keyed[keyed["key"].isin(labels)]
    if rows.empty:
        return None
    agreement = sensitivity_specificity(rows["memorized"].to_numpy(), [labels[k] for k in rows["key"]])
    return agreement.as_dict() | {"n_labelled": len(rows)}
