"""Reports: plotly figures that survive HTML export, offline HTML export, and the reports index.

:func:`show` puts a figure in the notebook as plotly's own mimetype only (JupyterLab draws it with its
plotly extension; numpy data travel as base64 typed arrays), so an executed notebook carries no copy of
plotly.js and no second rendering of each figure. :func:`export_html` turns those outputs into the
report's HTML: every figure is a ``<div>`` and its JSON, and plotly.js is inlined once, gzip-compressed
(1.5 MB instead of 4.8 MB; the browser inflates it with its built-in ``DecompressionStream``) and then
draws every figure. The template has every CDN reference removed, so a report opens with no network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from memostudy.report.format import fmt
from memostudy.report.page import RawHtml, figure_html, html_page, plotlyjs_loader

TEMPLATES = Path(__file__).resolve().parent / "templates"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
INDEX_STYLE = ("body{font-family:sans-serif;margin:2em}.tbl{border-collapse:collapse}"
               ".tbl td,.tbl th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
               "tr.failed{background:#fee}")


def show(fig: go.Figure) -> None:
    """Display a plotly figure: interactive in JupyterLab, and drawn in the exported HTML (:func:`export_html`)."""
    import plotly.io as pio
    from IPython.display import display

    bundle = {
        PLOTLY_MIME: json.loads(pio.to_json(fig)) | {"config": {"responsive": True}},
        "text/plain": f"<plotly figure: {fig.layout.title.text or 'untitled'}>",
    }
    display(bundle, raw=True)


def _render_figures(nb: Any) -> None:
    """Replace every plotly output of ``nb`` (in place) by :func:`figure_html`; plotly.js goes with the first."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            figure = out.get("data", {}).get(PLOTLY_MIME)
            if figure is None:
                continue
            out["data"] = {"text/html": (plotlyjs_loader() if n == 0 else "") + figure_html(figure, f"figure-{n}")}
            n += 1


def export_html(notebook: str | Path, out: str | Path, title: str | None = None, hide_code: bool = True) -> Path:
    """Export an executed notebook as a self-contained HTML file that opens offline.

    Args:
        notebook: the executed ``.ipynb``.
        out: HTML path to write.
        title: page title (default: the notebook's file name).
        hide_code: hide input cells (collaborators see prose, figures and tables).
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    _render_figures(nb)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input=hide_code, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": Path(notebook).stem}})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def write_index(reports_dir: str | Path) -> Path:
    """Write ``reports/index.html``: one row per run folder holding a ``run.json``, newest first.

    ``run.json`` is written by :func:`memostudy.study.runner.run_notebook`: notebook, status, parameters and
    the key figures of the notebook's record (``summary.json``, read by :func:`memostudy.study.records.read_record`).
    """
    reports_dir = Path(reports_dir)
    runs = []
    for f in sorted(reports_dir.glob("*/run.json")):
        try:
            runs.append(json.loads(f.read_text()) | {"_dir": f.parent.name})
        except json.JSONDecodeError:
            continue
    runs.sort(key=lambda r: r.get("started", ""), reverse=True)
    rows = []
    for r in runs:
        figs = r.get("key_figures") or {}
        figs_txt = "; ".join(f"{html.escape(str(k))}: {html.escape(fmt(v, 3))}" for k, v in figs.items())
        link = f'<a href="{html.escape(r["_dir"])}/report.html">{html.escape(r["_dir"])}</a>'
        status = html.escape(r.get("status", "?"))
        rows.append(f"<tr class='{status}'><td>{link}</td><td>{html.escape(r.get('notebook', ''))}</td>"
                    f"<td>{status}</td><td>{html.escape(r.get('started', ''))}</td>"
                    f"<td>{html.escape(fmt(r.get('seconds'), 3))}</td><td>{figs_txt}</td></tr>")
    table = ("<table class='tbl'><tr><th>run</th><th>notebook</th><th>status</th><th>started (UTC)</th>"
             f"<th>seconds</th><th>key figures</th></tr>{chr(10).join(rows)}</table>")
    page = html_page("memostudy reports", [
        (None, f"{len(runs)} run(s). Each link opens a self-contained report (works offline)."),
        (None, RawHtml(table))], style=INDEX_STYLE)
    out = reports_dir / "index.html"
    reports_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
