"""The one builder of the project's self-contained HTML pages (audit report, detector validation,
reports index, sweep summary) and of their figures: each figure is a ``<div>`` and its JSON, and plotly.js
is inlined once, gzip-compressed (about 2 MB instead of 4.8 MB; the browser inflates it with its built-in
``DecompressionStream``), so every page opens offline. Notebook reports (:mod:`memostudy.report.export`)
draw their figures the same way."""

from __future__ import annotations

import base64
import gzip
import html
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from memostudy.report.format import fmt

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         ".tbl{border-collapse:collapse;font-size:13px}.tbl td,.tbl th{padding:3px 10px;"
         "border-bottom:1px solid #ddd;text-align:left}.scroll{overflow-x:auto;max-width:100%}")


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


class RawHtml(str):
    """Page content that is already HTML (inserted as it is, not escaped)."""


def html_page(title: str, sections: Sequence[tuple[str | None, Any]], style: str = STYLE) -> str:
    """A self-contained HTML page.

    Args:
        title: page title (also the ``<h1>``).
        sections: (heading, content) pairs; heading None = no ``<h2>``. Content is a plotly figure
            (plotly.js inlined, compressed, with the first one), a DataFrame (in a box that scrolls sideways),
            a mapping (a two-column table, values through :func:`~memostudy.report.format.fmt`),
            :class:`RawHtml`, or anything else as an escaped paragraph.
        style: the page's CSS.
    """
    parts, n_figures = [], 0
    for heading, content in sections:
        if heading is not None:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, go.Figure):
            figure = json.loads(content.to_json()) | {"config": {"responsive": True}}
            parts.append((plotlyjs_loader() if n_figures == 0 else "") + figure_html(figure, f"figure-{n_figures}"))
            n_figures += 1
        elif isinstance(content, pd.DataFrame):
            # in a box that scrolls sideways: a table of many columns (a sweep's aggregate) keeps the page's width
            parts.append("<div class='scroll'>" + content.to_html(index=False, float_format=lambda x: f"{x:.4g}",
                                                                  border=0, classes="tbl") + "</div>")
        elif isinstance(content, Mapping):
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(fmt(v))}</td></tr>"
                           for k, v in content.items())
            parts.append(f"<table class='tbl'>{rows}</table>")
        elif isinstance(content, RawHtml):
            parts.append(str(content))
        else:
            parts.append(f"<p>{html.escape(str(content))}</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
