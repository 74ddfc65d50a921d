"""The one builder of the project's self-contained HTML pages (audit report, detector validation,
reports index, sweep summary): plotly.js inlined once, so every page opens offline."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from memostudy.report.format import fmt

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         ".tbl{border-collapse:collapse;font-size:13px}.tbl td,.tbl th{padding:3px 10px;"
         "border-bottom:1px solid #ddd;text-align:left}")


class RawHtml(str):
    """Page content that is already HTML (inserted as it is, not escaped)."""


def html_page(title: str, sections: Sequence[tuple[str | None, Any]], style: str = STYLE) -> str:
    """A self-contained HTML page.

    Args:
        title: page title (also the ``<h1>``).
        sections: (heading, content) pairs; heading None = no ``<h2>``. Content is a plotly figure
            (plotly.js inlined with the first one), a DataFrame, a mapping (a two-column table, values
            through :func:`~memostudy.report.format.fmt`), :class:`RawHtml`, or anything else as an
            escaped paragraph.
        style: the page's CSS.
    """
    parts, first_fig = [], True
    for heading, content in sections:
        if heading is not None:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, go.Figure):
            parts.append(content.to_html(full_html=False, include_plotlyjs=first_fig))
            first_fig = False
        elif isinstance(content, pd.DataFrame):
            parts.append(content.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="tbl"))
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
