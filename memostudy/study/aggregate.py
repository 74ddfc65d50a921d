"""Aggregating a sweep's per-seed results: mean and confidence interval per setting, the paired difference
of each setting to a reference setting, and a trend test across the settings.

Every setting of a sweep is run with the same seeds (a cell runs all settings of one seed; the seed fixes
the initial weights, batch order, noise and sampling draws of every setting), so the settings' results
are paired by seed (common random numbers): a seed that memorizes more under one setting tends to do so
under the others, and differences within a seed are less noisy than differences of means. The paired
difference (:func:`paired_differences`) and the trend test (:func:`trend_test`, settings permuted within
each seed) use that pairing.

Pure functions on pandas tables, so the trend tables of the experiments are easy to test with
numbers worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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


def setting_order(table: pd.DataFrame, column: str) -> list[Any]:
    """The settings of ``column`` in the order a trend is read: ascending for numbers and booleans
    (training patches, epochs, augmentation off -> on), else their order of first appearance (the
    notebook's order, e.g. model ``small`` then ``base``)."""
    values = list(dict.fromkeys(table[column].tolist()))
    if all(isinstance(v, (bool, np.bool_, int, float, np.integer, np.floating)) for v in values):
        return sorted(values)
    return values


def _per_seed(table: pd.DataFrame, column: str, metric: str, seed: str, order: list[Any]) -> pd.DataFrame:
    """(seeds x settings) table of ``metric``, seeds that have every setting only (mean of duplicates)."""
    wide = table.pivot_table(index=seed, columns=column, values=metric, aggfunc="mean", dropna=False)
    return wide.reindex(columns=order).dropna()


def paired_differences(table: pd.DataFrame, column: str, metrics: list[str], reference: Any = None,
                       seed: str = "seed", level: float = 0.95) -> pd.DataFrame:
    """Per setting, the mean over seeds of (its value - the reference setting's value of the same seed),
    with a Student-t interval of those per-seed differences.

    Args:
        table: one row per (setting, seed).
        column: the column naming a setting (e.g. ``train_patches``).
        metrics: metric columns.
        reference: the setting the others are compared with; None = the first of :func:`setting_order`.
        seed: the seed column (the pairing).

    Returns:
        Columns ``[column, "n_pairs"] + [f"{m}_diff_mean", f"{m}_diff_ci_low", f"{m}_diff_ci_high"]``, one row
        per setting (the reference's differences are 0). Seeds missing a setting are left out of that metric.
    """
    order = setting_order(table, column)
    ref = order[0] if reference is None else reference
    if ref not in order:
        raise ValueError(f"reference setting {ref!r} is not among the settings {order}")
    rows = [{column: v} for v in order]
    for m in metrics:
        wide = _per_seed(table, column, m, seed, order)
        for row, v in zip(rows, order):
            d = (wide[v] - wide[ref]).to_numpy(float)
            mean, lo, hi = mean_ci(d, level)
            row["n_pairs"] = max(row.get("n_pairs", 0), int(d.size))
            row |= {f"{m}_diff_mean": mean, f"{m}_diff_ci_low": lo, f"{m}_diff_ci_high": hi}
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TrendTest:
    """A permutation test of a monotone trend of a metric across ordered settings.

    Attributes:
        rho: mean over seeds of Spearman's rank correlation between setting order and metric (in [-1, 1];
            a seed whose values are all equal counts 0).
        p: two-sided permutation p-value (settings permuted within each seed).
        n_seeds: seeds that have every setting.
        n_settings: settings compared.
        exact: True when every permutation was enumerated.
    """

    rho: float
    p: float
    n_seeds: int
    n_settings: int
    exact: bool


def _mean_spearman(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over seeds of the rank correlation between setting index and value; ``samples`` are the settings
    in order, each (..., n_seeds)."""
    from scipy.stats import rankdata

    x = np.stack([np.moveaxis(s, axis, -1) for s in samples], axis=-2)  # (..., settings, seeds)
    r = rankdata(x, axis=-2)
    r = r - r.mean(axis=-2, keepdims=True)
    k = np.arange(x.shape[-2], dtype=float)
    k = (k - k.mean())[:, None]
    denom = np.sqrt((r ** 2).sum(axis=-2) * (k ** 2).sum())
    rho = np.divide((r * k).sum(axis=-2), denom, out=np.zeros_like(denom), where=denom > 0)
    return rho.mean(axis=-1)


def trend_test(table: pd.DataFrame, column: str, metric: str, seed: str = "seed", n_resamples: int = 9999,
               random_seed: int = 0) -> TrendTest:
    """Is there a monotone trend of ``metric`` along the settings of ``column`` (in :func:`setting_order`)?

    The statistic is the mean over seeds of Spearman's rho between the setting's rank and the metric (a
    per-seed rank correlation, like Page's L test of ordered alternatives, so seeds that memorize more
    overall do not mask the trend). Under the null hypothesis "the setting does not matter", the values of
    one seed are exchangeable across its settings, so the p-value comes from permuting the settings within
    each seed (scipy's ``permutation_test`` with ``permutation_type="samples"``): exact when
    (settings!)^seeds <= ``n_resamples`` (e.g. 2 settings x 5 seeds: 32 permutations, smallest two-sided
    p-value 2/32), else Monte Carlo.

    Returns:
        :class:`TrendTest`; rho and p NaN with fewer than 2 settings or 2 seeds.
    """
    from scipy.stats import permutation_test

    order = setting_order(table, column)
    wide = _per_seed(table, column, metric, seed, order)
    n_seeds, n_set = len(wide), len(order)
    if n_set < 2 or n_seeds < 2:
        return TrendTest(float("nan"), float("nan"), n_seeds, n_set, False)
    data = tuple(wide[v].to_numpy(float) for v in order)
    res = permutation_test(data, _mean_spearman, permutation_type="samples", vectorized=True,
                           n_resamples=n_resamples, alternative="two-sided",
                           random_state=np.random.default_rng(random_seed))
    exact = math.factorial(n_set) ** n_seeds <= n_resamples
    return TrendTest(float(res.statistic), float(min(1.0, res.pvalue)), n_seeds, n_set, exact)


#: metrics whose value grows with memorization (+1) or shrinks with it (-1): C_T is negative for copying and
#: authenticity is low for copies; metrics not listed (losses, sample quality) get no verdict
MEMORIZATION_SIGN = {"memorized_fraction": 1, "copy_fraction": 1, "pixel_memorized_fraction": 1,
                     "pixel_copy_fraction": 1, "blocks_memorized_fraction": 1, "blocks_copy_fraction": 1,
                     "blocks_either_memorized_fraction": 1, "blocks_either_copy_fraction": 1,
                     "similarity_delta": 1, "c_t": -1, "authenticity": -1}


def verdict(expected: str, metric: str, test: TrendTest, alpha: float = 0.05) -> str:
    """The seeds' expectation checked against a trend test: "seen", "opposite", "not seen" (or "" for a
    metric that does not measure memorization).

    Args:
        expected: how memorization should move along the settings' order: "rises" or "falls".
        metric: the metric tested (its direction from :data:`MEMORIZATION_SIGN`).
        test: the trend test of that metric.
        alpha: significance level of the two-sided test.
    """
    if expected not in ("rises", "falls"):
        raise ValueError(f"expected must be 'rises' or 'falls', got {expected!r}")
    sign = MEMORIZATION_SIGN.get(metric)
    if sign is None:
        return ""
    if not (np.isfinite(test.p) and test.p < alpha and test.rho != 0):
        return "not seen"
    memorization_rises = (test.rho > 0) == (sign > 0)
    return "seen" if memorization_rises == (expected == "rises") else "opposite"
