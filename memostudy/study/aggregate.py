"""Aggregating a sweep's per-seed results: mean and confidence interval per setting.

Pure functions on pandas tables, so the trend tables of the experiments are easy to test with
numbers worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values: np.ndarray | list[float], level: float = 0.95,
            bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of independent per-seed values.

    Args:
        values: one value per seed (non-finite values are dropped).
        level: confidence level.
        bounds: the range the quantity can take (e.g. (0, 1) for a fraction); the interval is clipped
            to it, since the symmetric t-interval of a few small fractions can reach below 0.

    Returns:
        ``(mean, low, high)``; with one value the interval is that value (no spread is known).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if x.size == 1:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return m, lo, hi


def aggregate(table: pd.DataFrame, by: list[str], metrics: list[str], level: float = 0.95) -> pd.DataFrame:
    """One row per setting (``by`` columns): number of seeds, and mean / CI low / CI high per metric.

    Args:
        table: one row per (setting, seed) with the metric columns.
        by: columns that identify a setting (e.g. ``["augment"]``).
        metrics: metric columns to summarise (e.g. ``["memorized_fraction"]``); the intervals of
            columns named ``*_fraction`` are clipped to [0, 1].

    Returns:
        Columns ``by + ["n_seeds"] + [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high" for m in metrics]``,
        settings in their order of first appearance.
    """
    rows = []
    for key, g in table.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n_seeds"] = int(len(g))
        for m in metrics:
            mean, lo, hi = mean_ci(g[m].to_numpy(), level, (0.0, 1.0) if m.endswith("_fraction") else None)
            row |= {f"{m}_mean": mean, f"{m}_ci_low": lo, f"{m}_ci_high": hi}
        rows.append(row)
    return pd.DataFrame(rows)


def trend(agg: pd.DataFrame, metric: str) -> str:
    """Describe the direction of ``metric`` across settings, in the table's order.

    Returns ``"rises"``, ``"falls"``, or ``"no clear trend"`` when the confidence intervals of the
    first and last settings overlap (or the means are not monotone).
    """
    if len(agg) < 2:
        return "no clear trend"
    means = agg[f"{metric}_mean"].to_numpy()
    lo, hi = agg[f"{metric}_ci_low"].to_numpy(), agg[f"{metric}_ci_high"].to_numpy()
    diffs = np.diff(means)
    if np.all(diffs >= 0) and lo[-1] > hi[0]:
        return "rises"
    if np.all(diffs <= 0) and hi[-1] < lo[0]:
        return "falls"
    return "no clear trend"
