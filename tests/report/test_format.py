"""Report formatting: table cells, JSON values, and the one HTML page builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from memostudy.report.format import fmt, json_default
from memostudy.report.page import RawHtml, html_page


def test_fmt():
    assert fmt(0.123456) == "0.1235" and fmt(0.123456, 3) == "0.123"
    assert fmt([0.5, (1.23456, "a")], 2) == "[0.5, [1.2, a]]"
    assert fmt(None) == "" and fmt(7) == "7"


def test_json_default():
    text = json.dumps({"a": np.float32(0.5), "b": np.arange(3), "c": Path("x/y"), "d": np.int64(2)}, default=json_default)
    assert json.loads(text) == {"a": 0.5, "b": [0, 1, 2], "c": "x/y", "d": 2}


def test_html_page_renders_each_kind_of_section():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    page = html_page("T <1>", [("Table", pd.DataFrame({"x": [0.123456]})), ("Pairs", {"k": 0.5, "l": [1.0, 2.0]}),
                               ("F1", fig), ("F2", fig), (None, RawHtml("<p class='raw'>r</p>")), ("Text", "a < b")])
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;1&gt;</title>" in page
    assert "<div class='scroll'><table" in page  # wide tables scroll inside the page's width
    assert "<td>0.1235</td>" in page and "<tr><th>k</th><td>0.5</td></tr><tr><th>l</th><td>[1, 2]</td></tr>" in page
    assert page.count('id="memostudy-plotlyjs"') == 1  # plotly.js inlined (compressed) with the first figure only
    assert page.count('class="memostudy-figure"') == 2
    assert "<p class='raw'>r</p>" in page and "<p>a &lt; b</p>" in page
    assert page.index("<h2>F1</h2>") < page.index("<h2>F2</h2>") < page.index("<h2>Text</h2>")
