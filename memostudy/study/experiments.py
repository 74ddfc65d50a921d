"""The seeds' experiments as calls: one memorization assessment per setting (augmentation on/off,
training-set size, model size) or per training epoch (over-training), and their comparison tables
and figures. The notebooks ``02``-``04`` and ``06`` are thin wrappers around these functions.

Every setting of one experiment is assessed with the same detector (trained once on the data set's
training split, or the one given by ``detector_path``) and the same threshold rule, so differences
between settings come from the generative model, not from the instrument.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from memostudy.study.config import MemorizationConfig
from memostudy.study.memorization import MemorizationResult, run_memorization
from memostudy.study.quality import reference_quality, sample_quality


def run_settings(base: MemorizationConfig, settings: dict[str, dict[str, Any]]) -> dict[str, MemorizationResult]:
    """Run :func:`~memostudy.study.memorization.run_memorization` once per setting.

    Args:
        base: the common config (preset, data, seed, detector ...).
        settings: label -> LDM overrides of that setting (added to ``base.ldm``), e.g.
            ``{"off": {"augment": False}, "on": {"augment": True}}``.

    Returns:
        label -> result, in the order of ``settings``.
    """
    out: dict[str, MemorizationResult] = {}
    for label, overrides in settings.items():
        print(f"--- setting {label}: {overrides}", flush=True)
        out[label] = run_memorization(replace(base, ldm=dict(base.ldm or {}) | dict(overrides)))
    return out


def settings_rows(results: dict[str, MemorizationResult], column: str,
                  values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Result rows of every setting (see :meth:`MemorizationResult.rows`) with the setting in ``column``
    (its label, or ``values[label]`` when given: e.g. the number of training patches)."""
    rows: list[dict[str, Any]] = []
    for label, res in results.items():
        rows += res.rows(**{column: (values or {}).get(label, label)})
    return rows


def _loss_at(losses: pd.DataFrame, epoch: int, column: str) -> float:
    """The last recorded ``column`` at or before ``epoch`` (validation is not computed every epoch)."""
    seen = losses[(losses["epoch"] <= epoch) & losses[column].notna()]
    return float(seen[column].iloc[-1]) if len(seen) else float("nan")


def overtraining_rows(result: MemorizationResult, n_pairs: int = 64) -> list[dict[str, Any]]:
    """One row per assessed checkpoint of one run: memorization figures, the diffusion model's
    train / validation loss at that epoch, MS-SSIM diversity of the samples and the Fréchet distance
    of their detector embeddings to the reference volumes."""
    losses = result.losses("diffusion")
    reference = reference_quality(result, n_pairs=n_pairs)
    rows = []
    for row in result.rows():
        ck = row["checkpoint"]
        epoch = int(row["epoch"])
        quality = sample_quality(result, ck, n_pairs=n_pairs, reference=reference)
        rows.append(row | {"train_loss": _loss_at(losses, epoch, "train_loss"),
                           "val_loss": _loss_at(losses, epoch, "val_loss")} | quality)
    return sorted(rows, key=lambda r: r["epoch"])


def comparison_figure(rows: list[dict[str, Any]] | pd.DataFrame, x: str, title: str = "") -> go.Figure:
    """Memorized % and copy % (with their bootstrap CIs as error bars) against ``x``."""
    df = pd.DataFrame(rows)
    fig = go.Figure()
    for metric, lo, hi, name in (("memorized_fraction", "memorized_lo", "memorized_hi", "training volumes memorized"),
                                 ("copy_fraction", "copy_lo", "copy_hi", "synthetic volumes that are copies")):
        y = 100 * df[metric].to_numpy(float)
        fig.add_trace(go.Scatter(
            x=df[x].astype(str) if df[x].dtype == object or df[x].dtype == bool else df[x], y=y, name=name,
            mode="lines+markers",
            error_y={"type": "data", "symmetric": False, "array": 100 * df[hi].to_numpy(float) - y,
                     "arrayminus": y - 100 * df[lo].to_numpy(float)}))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title="% (95% bootstrap CI)", template="plotly_white",
                      height=420, legend={"orientation": "h", "y": -0.25})
    return fig


def quality_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Over-training: validation loss, MS-SSIM diversity and embedding Fréchet distance per epoch,
    each on its own y axis, against the epoch."""
    from plotly.subplots import make_subplots

    df = pd.DataFrame(rows).sort_values("epoch")
    cols = [("val_loss", "diffusion validation loss"), ("ms_ssim", "MS-SSIM between samples (lower = more diverse)"),
            ("frechet_embedding", "Fréchet distance of embeddings to reference")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in cols])
    for i, (c, t) in enumerate(cols, start=1):
        fig.add_trace(go.Scatter(x=df["epoch"], y=df[c].to_numpy(float), mode="lines+markers", name=t), row=1, col=i)
        if c == "ms_ssim" and "ms_ssim_reference" in df:
            ref = float(np.nanmean(df["ms_ssim_reference"].to_numpy(float)))
            fig.add_hline(y=ref, line_dash="dot", annotation_text="real reference", row=1, col=i)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(showlegend=False, template="plotly_white", height=380)
    return fig
