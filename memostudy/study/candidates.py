"""The copy candidates a reader inspects in the study notebook: the training volumes with the most
similar synthetic volume, their volumes by id, and how the detector's calls agree with manual labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from memostudy.detect.assessment import Assessment


def top_candidates(assessment: Assessment, k: int = 4) -> pd.DataFrame:
    """The ``k`` training volumes with the most similar synthetic volume (copy candidates), most similar first."""
    return assessment.train_table.sort_values("similarity", ascending=False).head(k).reset_index(drop=True)


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
