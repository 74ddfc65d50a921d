"""Plotly figures of the copy detection (reused by the audit report and the study notebooks).

Every similarity axis reads "higher = more similar" (see :mod:`memostudy.detect.similarity`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

if TYPE_CHECKING:
    from memostudy.detect.assessment import Assessment

_LABELS = {
    "candidates": "copy candidates (train -> nearest synthetic)",
    "synthetic": "synthetic -> nearest train",
    "reference": "real reference -> nearest train",
}


def similarity_histogram(distributions: Mapping[str, Sequence[float] | np.ndarray], threshold: float | None = None,
                         title: str = "", xaxis: str = "similarity (higher = more similar)") -> go.Figure:
    """Overlaid, normalised histograms of similarity distributions with the copy threshold marked.

    Args:
        distributions: name -> 1-D similarities (e.g. "candidates", "reference"); known names get long labels.
        threshold: drawn as a dashed vertical line when given.
        title: figure title.
        xaxis: x-axis label.
    """
    fig = go.Figure()
    for name, values in distributions.items():
        v = np.asarray(values, dtype=float).ravel()
        if v.size:
            fig.add_trace(go.Histogram(x=v, name=_LABELS.get(name, name), opacity=0.6, histnorm="probability",
                                       nbinsx=min(60, max(10, v.size // 3))))
    if threshold is not None:
        fig.add_vline(x=float(threshold), line_dash="dash", line_color="black",
                      annotation_text=f"threshold {threshold:.4g}", annotation_position="top left")
    fig.update_layout(barmode="overlay", title=title, xaxis_title=xaxis, yaxis_title="fraction of volumes",
                      legend={"orientation": "h", "y": -0.25}, template="plotly_white", height=420)
    return fig


def assessment_figures(assessment: Assessment) -> dict[str, go.Figure]:
    """One histogram per detector ("contrastive", "pixel", "blocks", "blocks-either", and "aligned"/"combined" when run): candidates, synthetic and reference
    similarity distributions with that detector's threshold."""
    titles = {"contrastive": f"Contrastive detector ({assessment.config.metric} of embeddings)",
              "pixel": "Pixel baseline (max voxel Pearson correlation, Akbar et al.)",
              "blocks": "Block correlation (mean of the best half of 8^3 block correlations)",
              "blocks-either": "Block correlation, plain or oriented (higher reference percentile rank)",
              "aligned": "Aligned pixel correlation (orientations, shifts, sub-voxel offsets, blur)",
              "combined": "Combined: contrastive or aligned (higher reference percentile rank)"}
    return {name: similarity_histogram(dist, assessment.thresholds.get(name), titles.get(name, name))
            for name, dist in assessment.distributions.items()}


def validation_figure(table: pd.DataFrame, metric: str = "sensitivity") -> go.Figure:
    """Grouped bars of ``metric`` per transform family, one bar group per detector
    (``table`` as returned by :func:`memostudy.detect.validation.validate_detector`)."""
    fig = go.Figure()
    for det, rows in table.groupby("detector", sort=False):
        fig.add_trace(go.Bar(x=rows["family"], y=rows[metric], name=str(det)))
    fig.update_layout(barmode="group", yaxis_range=[0, 1.02], yaxis_title=metric, xaxis_title="transform family",
                      title=f"Detector validation: {metric} per family", template="plotly_white", height=420)
    return fig


def roc_figure(scores: pd.DataFrame, family: str | None = None) -> go.Figure:
    """ROC curves of "nearest-training similarity" as a copy score, one curve per detector: known copies
    (positives) versus novel real volumes (negatives).

    Args:
        scores: :attr:`memostudy.detect.validation.DetectorValidation.scores` (columns detector, kind,
            family, similarity).
        family: only the copies of this transform family (default: every copy).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = go.Figure()
    for det, rows in scores.groupby("detector", sort=False):
        pos = rows[(rows["kind"] == "copy") & ((rows["family"] == family) if family else True)]["similarity"]
        neg = rows[rows["kind"] == "novel"]["similarity"]
        if len(pos) == 0 or len(neg) == 0:
            continue
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        x = np.r_[pos.to_numpy(), neg.to_numpy()]
        fpr, tpr, _ = roc_curve(y, x)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{det} (AUC {roc_auc_score(y, x):.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance"))
    fig.update_layout(title=f"ROC: copies{f' ({family})' if family else ''} vs novel real volumes",
                      xaxis_title="false-positive rate (1 - specificity)", yaxis_title="sensitivity",
                      template="plotly_white", height=420, xaxis_range=[0, 1], yaxis_range=[0, 1.02])
    return fig
