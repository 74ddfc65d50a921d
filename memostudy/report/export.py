"""Reports: plotly figures that survive HTML export, offline HTML export, and the reports index.

:func:`show` puts a figure in the notebook as plotly's own mimetype only (JupyterLab draws it with its
plotly extension; numpy data travel as base64 typed arrays), so an executed notebook carries no copy of
plotly.js and no second rendering of each figure. :func:`export_html` turns those outputs into the
report's HTML: every figure is a ``<div>`` and its JSON, and plotly.js is inlined once, gzip-compressed
(1.5 MB instead of 4.8 MB; the browser inflates it with its built-in ``DecompressionStream``) and then
draws every figure. The template has every CDN reference removed, so a report opens with no network.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

TEMPLATES = Path(__file__).resolve().parent / "templates"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def show(fig: go.Figure) -> None:
    """Display a plotly figure: interactive in JupyterLab, and drawn in the exported HTML (:func:`export_html`)."""
    import plotly.io as pio
    from IPython.display import display

    bundle = {
        PLOTLY_MIME: json.loads(pio.to_json(fig)) | {"config": {"responsive": True}},
        "text/plain": f"<plotly figure: {fig.layout.title.text or 'untitled'}>",
    }
    display(bundle, raw=True)


def figure_html(figure: dict[str, Any], div_id: str) -> str:
    """A figure of the report: an empty ``<div>`` and the figure's JSON, drawn by :func:`plotlyjs_loader`."""
    text = json.dumps(figure, separators=(",", ":")).replace("</", "<\\/")  # cannot close the <script>
    return (f'<div id="{div_id}" class="plotly-graph-div"></div>'
            f'<script type="application/json" class="memostudy-figure" data-div="{div_id}">{text}</script>')


@lru_cache(maxsize=1)
def plotlyjs_loader() -> str:
    """plotly.js gzip-compressed and base64-encoded, plus the script that inflates it and draws every figure
    of :func:`figure_html` on the page (once the page is parsed, whatever the order of the two)."""
    from plotly.offline import get_plotlyjs

    packed = base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 9, mtime=0)).decode("ascii")
    return f"""<script type="application/octet-stream" id="memostudy-plotlyjs">{packed}</script>
<script>(function () {{
  var parsed = new Promise(function (r) {{
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", r); else r(); }});
  var packed = document.getElementById("memostudy-plotlyjs").textContent;
  var bytes = Uint8Array.from(atob(packed), function (c) {{ return c.charCodeAt(0); }});
  var inflated = new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  Promise.all([inflated, parsed]).then(function (r) {{
    window.PlotlyConfig = {{MathJaxConfig: "local"}};
    var s = document.createElement("script");
    s.textContent = r[0];
    document.head.appendChild(s);
    document.querySelectorAll("script.memostudy-figure").forEach(function (el) {{
      var f = JSON.parse(el.textContent);
      Plotly.newPlot(el.dataset.div, f.data, f.layout || {{}}, f.config || {{responsive: true}});
    }});
  }});
}})();</script>"""


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
