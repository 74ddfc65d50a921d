"""Reports: plotly figures that survive HTML export, offline HTML export, and the reports index.

Under papermill, plotly's default mimetype output is dropped by nbconvert's HTML export, and its
``notebook`` renderer links MathJax from a CDN. :func:`show` instead emits both the plotly
mimetype (interactive in JupyterLab) and a ``text/html`` rendering with plotly.js inlined once per
kernel (used by the HTML export). :func:`export_html` uses a template with every CDN reference
removed, so a report opens with no network.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

TEMPLATES = Path(__file__).resolve().parent / "templates"
_state = {"plotlyjs_sent": False}


def show(fig: go.Figure) -> None:
    """Display a plotly figure so it is interactive in JupyterLab *and* in the exported HTML."""
    from IPython.display import display

    include = not _state["plotlyjs_sent"]
    _state["plotlyjs_sent"] = True
    bundle = {
        "application/vnd.plotly.v1+json": fig.to_plotly_json() | {"config": {"responsive": True}},
        "text/html": fig.to_html(full_html=False, include_plotlyjs=include, include_mathjax=False,
                                 config={"responsive": True}),
        "text/plain": f"<plotly figure: {fig.layout.title.text or 'untitled'}>",
    }
    display(json.loads(json.dumps(bundle, default=_json_default)), raw=True)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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
        figs_txt = "; ".join(f"{html.escape(str(k))}: {html.escape(_fmt(v))}" for k, v in figs.items())
        link = f'<a href="{html.escape(r["_dir"])}/report.html">{html.escape(r["_dir"])}</a>'
        status = html.escape(r.get("status", "?"))
        rows.append(f"<tr class='{status}'><td>{link}</td><td>{html.escape(r.get('notebook', ''))}</td>"
                    f"<td>{status}</td><td>{html.escape(r.get('started', ''))}</td>"
                    f"<td>{html.escape(_fmt(r.get('seconds')))}</td><td>{figs_txt}</td></tr>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>memostudy reports</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}tr.failed{{background:#fee}}</style>
</head><body><h1>memostudy reports</h1>
<p>{len(runs)} run(s). Each link opens a self-contained report (works offline).</p>
<table><tr><th>run</th><th>notebook</th><th>status</th><th>started (UTC)</th><th>seconds</th><th>key figures</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    out = reports_dir / "index.html"
    reports_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)
