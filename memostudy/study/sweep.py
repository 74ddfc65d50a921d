"""Sweeps: a grid of notebook parameters x seeds, each cell one papermill run, then one table.

A sweep file (YAML, see ``notebooks/sweeps/``)::

    name: augmentation                 # folder reports/sweeps/<name>/
    notebook: 02_augmentation          # the experiment's notebook
    seeds: [0, 1, 2]                   # passed as the notebook parameter `seed`
    fixed: {data: demo-ct, preset: cpu-tiny}   # parameters common to every cell
    grid: {augment: [false, true]}     # parameters to vary (Cartesian product)
    by: [augment]                      # columns of the notebook's result rows that name a setting
    metrics: [memorized_fraction, copy_fraction, similarity_delta, c_t, authenticity]
    question: Does memorization fall with data augmentation?
    expected: falls                    # the seeds' trend of memorization along the settings' order
    reference: false                   # the setting paired differences are taken against (default: first)

Every cell is an independent run folder ``reports/sweeps/<name>/<cell-id>/``; a cell whose
``run.json`` says ``ok`` is skipped, so an interrupted sweep resumes where it stopped. Cells run in this
process one after the other, or each as one submitit job on this machine or on Slurm (``executor:`` in the
file, ``--executor local|slurm``; see :mod:`memostudy.study.executors`), or can be spread over machines by
hand (``--only i/N``) and aggregated afterwards (``--aggregate-only``). Each
notebook writes its result rows (one per setting it evaluated) to ``summary.json["rows"]``; the
sweep concatenates them with the cell's parameters and seed into ``table.csv`` and summarises them
across seeds into ``aggregate.csv``, ``summary.html`` and ``summary.md`` (the tables in Markdown).

Every cell of one seed runs every setting with that seed, so settings are paired by seed (common random
numbers). With one ``by`` column, ``aggregate.csv`` also holds per setting the paired difference to the
reference setting (``<metric>_diff_mean`` / ``_diff_ci_low`` / ``_diff_ci_high``) and, on every row, the
sweep's trend test (``<metric>_trend_rho``, ``<metric>_trend_p``: a permutation test of the per-seed rank
correlation between setting and metric, :func:`memostudy.study.aggregate.trend_test`); ``trend.csv`` has one
row per metric with the verdict on ``expected`` (seen / not seen / opposite), which ``summary.html`` states
in words.

A cell's results also depend on defaults that are not among its parameters: the LDM preset's settings and
the default detector and assessment configs. Each finished cell records their hash in ``defaults.json``
(:func:`defaults_fingerprint`). A finished cell whose hash differs from today's (a preset or a default changed
since) is not reused: its folder is moved aside to ``<cell-id>.stale-<time>`` and the cell runs again.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import yaml

from memostudy.errors import ConfigError
from memostudy.report.page import RawHtml, html_page
from memostudy.study.aggregate import (
    MEMORIZATION_SIGN,
    aggregate,
    paired_differences,
    setting_order,
    trend,
    trend_test,
    verdict,
)
from memostudy.study.executors import Cell, ExecutorConfig, run_cells


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    name: str
    notebook: str
    seeds: list[int]
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    by: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["memorized_fraction", "copy_fraction"])
    description: str = ""
    executor: dict[str, Any] = field(default_factory=dict)  # see memostudy.study.executors.ExecutorConfig
    question: str = ""  # the question the sweep answers, in words
    expected: str | None = None  # the seeds' trend of memorization along the settings: "rises" or "falls"
    reference: Any = None  # the setting paired differences are taken against; None = the first in order
    n_permutations: int = 9999  # Monte Carlo permutations of the trend test when exact enumeration is larger

    def cells(self) -> list[dict[str, Any]]:
        """Every (grid point, seed) as notebook parameters, in a stable order."""
        keys = list(self.grid)
        points = [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))] or [{}]
        return [self.fixed | p | {"seed": s} for p in points for s in self.seeds]


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read a sweep file; ``overrides`` replace top-level keys (e.g. a smaller grid for tests)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    raw = (yaml.safe_load(path.read_text()) or {}) | (overrides or {})
    for key in ("name", "notebook", "seeds"):
        if key not in raw:
            raise ConfigError(f"{path}: sweep file lacks `{key}`; see notebooks/sweeps/*.yaml")
    known = {f for f in SweepSpec.__dataclass_fields__}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    if raw.get("expected") not in (None, "rises", "falls"):
        raise ConfigError(f"{path}: expected must be 'rises' or 'falls' (how memorization should move along the "
                          f"settings), got {raw['expected']!r}")
    return SweepSpec(**raw)


def cell_id(params: dict[str, Any]) -> str:
    """A readable, stable folder name for one cell: varied values plus a short hash of all of them."""
    text = json.dumps(params, sort_keys=True, default=str)
    short = "-".join(f"{k}={v}" for k, v in sorted(params.items()) if not isinstance(v, (dict, list)))[:80]
    safe = "".join(c if c.isalnum() or c in "=-_." else "_" for c in short)
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def defaults_fingerprint(params: dict[str, Any]) -> str:
    """Hash of what a cell's results depend on besides its parameters: the resolved LDM preset named by
    ``params["preset"]`` (default cpu-tiny) and the default detector and assessment configs."""
    from memostudy.config import to_dict
    from memostudy.detect.assessment import AssessConfig
    from memostudy.detect.detector import DetectorConfig
    from memostudy.ldm.config import preset
    from memostudy.study.cache import config_hash

    name = str(params.get("preset", "cpu-tiny"))
    try:
        ldm: Any = to_dict(preset(name))
    except ConfigError:  # an unknown preset fails in the notebook, with its own message
        ldm = name
    return config_hash({"preset": ldm, "detector": to_dict(DetectorConfig()), "assessment": to_dict(AssessConfig())})


def run_sweep(spec: SweepSpec, reports_dir: str | Path = "reports", only: tuple[int, int] | None = None,
              aggregate_only: bool = False, progress: bool = True,
              executor: ExecutorConfig | None = None) -> dict[str, Path]:
    """Run the cells not yet done (all, or every N-th from i with ``only=(i, N)``), wait for them, then aggregate.

    Args:
        executor: where the cells run; default the sweep file's ``executor`` mapping (in process if absent).

    Returns:
        Paths of ``table.csv``, ``aggregate.csv`` and ``summary.html``.

    Raises:
        ConfigError: a cell failed (after the finished ones are aggregated).
    """
    from memostudy.study.runner import find_notebook

    executor = executor or ExecutorConfig.from_dict(spec.executor)
    root = Path(reports_dir).resolve() / "sweeps" / spec.name
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.yaml").write_text(yaml.safe_dump(spec.__dict__, sort_keys=False))
    failed = []
    if not aggregate_only:
        cells = spec.cells()
        todo = []
        for i, params in enumerate(cells):
            if only is not None and i % only[1] != only[0]:
                continue
            cid = cell_id(params)
            fingerprint = defaults_fingerprint(params)
            status = _status(root / cid)
            if status == "ok":
                if _recorded_fingerprint(root / cid) == fingerprint:
                    print(f"[{i + 1}/{len(cells)}] {cid}: done, skipped")
                    continue
                stale = root / f"{cid}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
                (root / cid).rename(stale)
                print(f"[{i + 1}/{len(cells)}] {cid}: done with other preset/detector/assessment defaults; "
                      f"moved to {stale.name}")
                status = None
            todo.append(Cell(i, len(cells), cid, params, fingerprint, force=status is not None))
        # a job runs elsewhere: it gets the notebook's absolute path
        notebook = spec.notebook if executor.kind == "inprocess" else str(find_notebook(spec.notebook).resolve())
        failed = run_cells(todo, notebook, root, executor, progress=progress)
    out = write_aggregate(spec, root)
    if failed:
        raise ConfigError(f"{len(failed)} sweep cell(s) failed (see their report.html): {failed[0]}")
    return out


def _recorded_fingerprint(run_dir: Path) -> str | None:
    f = run_dir / "defaults.json"
    try:
        return json.loads(f.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def _status(run_dir: Path) -> str | None:
    f = run_dir / "run.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text()).get("status")
    except json.JSONDecodeError:
        return "broken"


def collect_rows(spec: SweepSpec, root: Path) -> pd.DataFrame:
    """Concatenate the result rows of every finished cell, with the cell's varied parameters and seed.

    Raises:
        DataError: a finished cell's record (``summary.json``) is missing or malformed (e.g. written by an
            older memostudy); the message names it (delete that cell's folder to run it again).
    """
    from memostudy.study.records import read_record

    frames = []
    for params in spec.cells():
        d = root / cell_id(params)
        if _status(d) != "ok":
            continue
        rows = read_record(d).rows
        if not rows:
            continue
        df = pd.DataFrame(rows)
        for k in list(spec.grid) + ["seed"]:
            if k not in df.columns:
                v = params[k]
                df[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
        df["cell"] = d.name
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_aggregate(spec: SweepSpec, root: Path) -> dict[str, Path]:
    """Write ``table.csv`` (every row), ``aggregate.csv`` (mean and CI per setting; with one ``by`` column also
    the paired differences and trend test), ``trend.csv`` (one row per metric) and ``summary.html``."""
    table = collect_rows(spec, root)
    by = spec.by or list(spec.grid)
    table.to_csv(root / "table.csv", index=False)
    trends = pd.DataFrame()
    if table.empty:
        agg = pd.DataFrame()
    else:
        missing = [c for c in by + spec.metrics if c not in table.columns]
        if missing:
            raise ConfigError(f"sweep {spec.name}: result rows lack column(s) {', '.join(missing)}; "
                              f"columns are {', '.join(table.columns)}")
        agg = aggregate(table, by, spec.metrics)
        if len(by) == 1:
            agg, trends = _paired_and_trend(spec, table, agg, by[0])
    agg.to_csv(root / "aggregate.csv", index=False)
    trends.to_csv(root / "trend.csv", index=False)
    html = root / "summary.html"
    html.write_text(summary_html(spec, table, agg, trends), encoding="utf-8")
    markdown = root / "summary.md"
    markdown.write_text(summary_markdown(spec, table, agg, trends), encoding="utf-8")
    return {"table": root / "table.csv", "aggregate": root / "aggregate.csv", "trend": root / "trend.csv",
            "summary": html, "markdown": markdown}


def _paired_and_trend(spec: SweepSpec, table: pd.DataFrame, agg: pd.DataFrame,
                      column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``agg`` in the settings' order with the paired differences and the trend test's columns, and the
    trend table (metric, rho, p, seeds, settings, exact, verdict)."""
    order = setting_order(table, column)
    agg = agg.set_index(column).reindex(pd.Index(order, dtype=object)).rename_axis(column).reset_index()
    if spec.reference is not None and spec.reference not in order:
        raise ConfigError(f"sweep {spec.name}: reference setting {spec.reference!r} is not among the settings "
                          f"{order}; set `reference` to one of them (then --aggregate-only)")
    diffs = paired_differences(table, column, spec.metrics, reference=spec.reference)
    agg = agg.merge(diffs, on=column, how="left")
    rows = []
    for m in spec.metrics:
        t = trend_test(table, column, m, n_resamples=spec.n_permutations)
        agg[f"{m}_trend_rho"], agg[f"{m}_trend_p"] = t.rho, t.p
        rows.append({"metric": m, "rho": t.rho, "p": t.p, "n_seeds": t.n_seeds, "n_settings": t.n_settings,
                     "exact": t.exact, "verdict": verdict(spec.expected, m, t) if spec.expected else ""})
    return agg, pd.DataFrame(rows)


def trend_figure(agg: pd.DataFrame, by: list[str], metric: str, title: str) -> go.Figure:
    """Mean of ``metric`` per setting with its across-seed CI as error bars (fractions in %)."""
    x = [" / ".join(str(r[b]) for b in by) for _, r in agg.iterrows()]
    scale = 100 if metric.endswith("_fraction") else 1
    mean = agg[f"{metric}_mean"] * scale
    fig = go.Figure(go.Scatter(
        x=x, y=mean, mode="lines+markers", name=metric,
        error_y={"type": "data", "symmetric": False, "array": agg[f"{metric}_ci_high"] * scale - mean,
                 "arrayminus": mean - agg[f"{metric}_ci_low"] * scale}))
    fig.update_layout(title=title, xaxis_title=" / ".join(by), yaxis_title=f"{metric}{' (%)' if scale == 100 else ''}",
                      height=420)
    fig.update_xaxes(type="category")
    return fig


#: what each metric of a sweep measures, for the summary's verdict table
METRIC_WORDS = {
    "memorized_fraction": "training volumes memorized (above the threshold)",
    "copy_fraction": "synthetic volumes that are copies (above the threshold)",
    "pixel_memorized_fraction": "training volumes memorized, pixel-correlation baseline",
    "pixel_copy_fraction": "synthetic volumes that are copies, pixel-correlation baseline",
    "blocks_memorized_fraction": "training volumes memorized, block correlation (best half of 8^3 blocks)",
    "blocks_copy_fraction": "synthetic volumes that are copies, block correlation (best half of 8^3 blocks)",
    "blocks_either_memorized_fraction": "training volumes memorized, block correlation plain or oriented",
    "blocks_either_copy_fraction": "synthetic volumes that are copies, block correlation plain or oriented",
    "similarity_delta": "Cliff's delta, synthetic vs reference nearest-training similarity (> 0: closer to training)",
    "c_t": "data-copying statistic C_T (Meehan et al. 2020; < 0: copying)",
    "authenticity": "authenticity (Alaa et al. 2022; low: copies)",
    "val_loss": "diffusion validation loss",
    "ms_ssim": "MS-SSIM between samples (lower = more diverse)",
    "frechet_embedding": "Fréchet distance of detector embeddings to the reference",
}


def verdict_sections(spec: SweepSpec, agg: pd.DataFrame, trends: pd.DataFrame,
                     column: str) -> list[tuple[str | None, object]]:
    """The answer to the sweep's question in words: the seeds' trend, and per metric what was measured (the
    last setting's paired difference to the reference with its CI, the trend test's rho and p) and the verdict."""
    if trends.empty or agg.empty:
        return []
    order = list(agg[column])
    ref = order[0] if spec.reference is None else spec.reference
    last = order[-1] if order[-1] != ref else order[0]
    rows, lines = [], []
    for _, t in trends.iterrows():
        m = t["metric"]
        r_ref = agg[agg[column] == ref].iloc[0]
        r_last = agg[agg[column] == last].iloc[0]
        rows.append({"metric": METRIC_WORDS.get(m, m),
                     f"mean at {column}={ref}": round(float(r_ref[f"{m}_mean"]), 4),
                     f"mean at {column}={last}": round(float(r_last[f"{m}_mean"]), 4),
                     f"paired difference ({last} - {ref}) [95% CI]":
                         f"{r_last[f'{m}_diff_mean']:+.4f} [{r_last[f'{m}_diff_ci_low']:+.4f}, "
                         f"{r_last[f'{m}_diff_ci_high']:+.4f}]",
                     "trend: mean per-seed Spearman rho": round(float(t["rho"]), 3),
                     "permutation p (two-sided)": round(float(t["p"]), 4), "seeds": int(t["n_seeds"]),
                     "verdict": t["verdict"] or "(not a memorization measure)"})
        if t["verdict"]:
            lines.append(f"{METRIC_WORDS.get(m, m)}: rho {t['rho']:+.2f}, p = {t['p']:.3g} over {int(t['n_seeds'])} "
                         f"seeds: {t['verdict']}")
    expected = spec.expected or "?"
    headline = trends[trends["metric"].isin(MEMORIZATION_SIGN)]
    head = (f"{spec.question or 'Question'} The seeds report that memorization {expected} along {column} "
            f"({' → '.join(map(str, order))}). Here, across {int(trends['n_seeds'].max())} paired seeds, the trend "
            f"test (settings permuted within each seed; significant at p < 0.05) gives: "
            + ("; ".join(lines) if lines else "no memorization measure") + ". " + in_short(headline))
    return [("Verdict", head), (None, pd.DataFrame(rows))]


def in_short(headline: pd.DataFrame) -> str:
    """One sentence over the memorization measures' verdicts (``trend.csv`` rows with a verdict): how many of them
    saw the seeds' trend, how many saw the opposite, and which did not, e.g. "In short: the seeds' trend is seen by 4
    of 5 memorization measures; not seen by authenticity." (empty without verdicts)."""
    rows = headline[headline["verdict"].fillna("") != ""]
    if rows.empty:
        return ""
    words = {v: [METRIC_WORDS.get(m, m).split(" (")[0] for m in rows.loc[rows["verdict"] == v, "metric"]]
             for v in ("seen", "opposite", "not seen")}
    n = len(rows)
    parts = [f"the seeds' trend is seen by {len(words['seen'])} of {n} memorization measures"]
    if words["opposite"]:
        parts.append(f"the opposite by {', '.join(words['opposite'])}")
    if words["not seen"] and words["seen"]:
        parts.append(f"not seen by {', '.join(words['not seen'])}")
    return "In short: " + "; ".join(parts) + "."


#: result columns shown beside a sweep's metrics in ``summary.md`` (mean per setting): the pixel and block baselines'
#: thresholded fractions, and the reference volumes' own authenticity, which the synthetic volumes' authenticity
#: is read against (real volumes never trained on do not score 1 either, and their score depends on the
#: training set, so it may differ between settings that change the training set)
BESIDE_METRICS = ("pixel_memorized_fraction", "pixel_copy_fraction", "blocks_memorized_fraction", "blocks_copy_fraction",
                  "blocks_either_memorized_fraction", "blocks_either_copy_fraction", "authenticity_reference")


def _interval(mean: float, low: float, high: float, scale: float, signed: bool = False) -> str:
    """``mean [low, high]`` with one decimal for percentages (scale 100), two otherwise."""
    digits = 1 if scale == 100 else 2
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{f.format(mean * scale)} [{f.format(low * scale)}, {f.format(high * scale)}]"


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    """Lines of a GitHub-flavoured Markdown table of ``frame`` (cells as they are)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return lines


def summary_markdown(spec: SweepSpec, table: pd.DataFrame, agg: pd.DataFrame,
                     trends: pd.DataFrame | None = None) -> str:
    """The sweep's results as Markdown tables (``summary.md``), for a README or a closing note, so that every
    number quoted there is one this file holds: per setting the mean with its 95 % CI over seeds of every metric
    (fractions in %), the diffusion steps and the paired differences of the thresholded fractions to the
    reference setting; the trend test per metric with its verdict; per seed the thresholded fractions."""
    by = spec.by or list(spec.grid)
    lines = [f"# Sweep {spec.name}", "", spec.question or "", ""]
    if agg.empty:
        return "\n".join(lines + ["No finished cell yet.", ""])
    trends = pd.DataFrame() if trends is None else trends
    col = by[0]
    steps = (table.groupby(col)["steps"].agg(lambda s: "/".join(str(int(v)) for v in sorted(set(s.dropna()))))
             if "steps" in table.columns and len(by) == 1 else None)
    fractions = [m for m in spec.metrics if m.endswith("_fraction")]
    rows = []
    for _, r in agg.iterrows():
        row: dict[str, Any] = {" / ".join(by): " / ".join(str(r[b]) for b in by), "seeds": int(r["n_seeds"])}
        if steps is not None:
            row["diffusion steps"] = steps.get(r[col], "")
        for m in spec.metrics:
            scale = 100 if m.endswith("_fraction") else 1
            row[m + (" %" if scale == 100 else "") + " [95 % CI]"] = _interval(
                r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"], scale)
        for m in fractions:
            if f"{m}_diff_mean" in agg.columns:
                row[f"{m}: paired difference (pp) [CI]"] = _interval(
                    r[f"{m}_diff_mean"], r[f"{m}_diff_ci_low"], r[f"{m}_diff_ci_high"], 100, signed=True)
        for m in BESIDE_METRICS:
            if m in table.columns and m not in spec.metrics and len(by) == 1:
                value = table.loc[table[col] == r[col], m].mean()
                row[f"{m} % (mean)" if m.endswith("_fraction") else f"{m} (mean)"] = (
                    f"{100 * value:.1f}" if m.endswith("_fraction") else f"{value:.2f}")
        rows.append(row)
    lines += ["Mean over seeds with its 95 % t-interval; paired differences to the reference setting "
              f"({spec.reference if spec.reference is not None else 'the first'}), seed by seed (`aggregate.csv`).",
              "", *_markdown_table(pd.DataFrame(rows)), ""]
    if not trends.empty:
        t = pd.DataFrame({"statistic": trends["metric"],
                          "mean Spearman rho (setting vs statistic, per seed)": [f"{v:+.2f}" for v in trends["rho"]],
                          "permutation p": [f"{v:.4f}" for v in trends["p"]],
                          "seeds": trends["n_seeds"].astype(int),
                          "verdict": trends["verdict"].fillna("").replace("", "(not a memorization measure)")})
        lines += [f"Trend test per statistic (`trend.csv`; expected: memorization {spec.expected or '?'} along "
                  f"{col}).", "", *_markdown_table(t), "",
                  in_short(trends[trends["metric"].isin(MEMORIZATION_SIGN)]), ""]
    if fractions and "seed" in table.columns and len(by) == 1:
        for m in fractions:
            wide = table.pivot_table(index="seed", columns=col, values=m, aggfunc="mean")
            wide = wide.reindex(columns=list(agg[col])).map(lambda v: f"{100 * v:.1f}")
            lines += [f"Per seed, {m} % (`table.csv`).", "",
                      *_markdown_table(wide.rename_axis(None, axis=1).reset_index()), ""]
    return "\n".join(lines)


def summary_html(spec: SweepSpec, table: pd.DataFrame, agg: pd.DataFrame, trends: pd.DataFrame | None = None) -> str:
    """A self-contained page: the question and its verdict, the sweep, the detector rule, trend plots with CIs,
    and the tables."""
    by = spec.by or list(spec.grid)
    trends = pd.DataFrame() if trends is None else trends
    sections: list[tuple[str | None, object]] = [
        *(verdict_sections(spec, agg, trends, by[0]) if len(by) == 1 else []),
        (None, spec.description),
        (None, RawHtml(f"<p>Notebook <code>{html.escape(spec.notebook)}</code>; seeds {spec.seeds}; "
                       f"fixed {html.escape(json.dumps(spec.fixed))}; grid {html.escape(json.dumps(spec.grid))}.</p>"))]
    if not table.empty and "detector" in table.columns:
        sections.append((None, f"Memorization measured with: {', '.join(sorted(set(map(str, table['detector']))))}."))
    if not table.empty and "percentile" in table.columns:
        rules = ", ".join(f"{p:g}th percentile" for p in sorted(set(table["percentile"])))
        sections.append((None, f"Threshold rule: a copy when its similarity exceeds the {rules} of the real "
                               "reference volumes' similarity to their nearest training volume."))
    if "steps" in table.columns and not table.empty:
        steps = sorted(set(int(s) for s in table["steps"].dropna()))
        sections.append((None, f"Diffusion optimizer steps per setting: {', '.join(map(str, steps))}."))
    if not agg.empty:
        for m in spec.metrics:
            sections.append((None, trend_figure(agg, by, m, f"{m}: mean and 95% CI over seeds ({trend(agg, m)})")))
        sections.append(("Per setting (mean, 95% CI over seeds; paired differences to the reference setting; "
                         "trend test)", agg))
    sections.append(("Every run", table if not table.empty else "no finished cell yet"))
    return html_page(f"Sweep {spec.name}", sections)
