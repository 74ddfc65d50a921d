"""Offline HTML export of a papermill-run notebook, index page, and the check in a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from memostudy.report.browser import check_html, find_chromium
from memostudy.report.export import export_html, write_index
from memostudy.study.runner import run_notebook

PLOT_CELL = """
import plotly.graph_objects as go
from memostudy.report.export import show
from memostudy.study.records import StudyRecord, write_record
show(go.Figure(go.Bar(y=[1, 2, height]), layout={"title": "first"}))
show(go.Figure(go.Scatter(y=[3, 1, height]), layout={"title": "second"}))
write_record(run_dir, StudyRecord(rows=[], key_figures={"height": height}, train_data=None, provenance={"test": 1}))
if fail:
    raise RuntimeError("stopped on purpose")
"""


def _notebook(path: Path) -> Path:
    nb = new_notebook(cells=[
        new_code_cell("height = 1\nfail = False\nrun_dir = '.'", metadata={"tags": ["parameters"]}),
        new_markdown_cell("# A tiny report"),
        new_code_cell(PLOT_CELL),
        new_markdown_cell("after the figures"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
def test_run_exports_html_without_network_references(tmp_path: Path) -> None:
    res = run_notebook(_notebook(tmp_path / "t.ipynb"), {"height": 7}, reports_dir=tmp_path / "reports",
                       run_id="r1", check_browser=False, progress=False)
    assert res.status == "ok" and res.key_figures == {"height": 7}
    text = res.report.read_text()
    assert text.count('class="plotly-graph-div"') == 2
    assert text.count('id="memostudy-plotlyjs"') == 1  # plotly.js inlined once (compressed)
    # the executed notebook holds each figure once, as plotly's mimetype, and no plotly.js
    nb = (res.run_dir / "notebook.ipynb").read_text()
    assert nb.count("application/vnd.plotly.v1+json") == 2 and "text/html" not in nb and "window.Plotly" not in nb
    assert not re.findall(r'<script[^>]+src="https?://', text), "the report must not load scripts from the network"
    assert "A tiny report" in text and "PLOT_CELL" not in text
    index = (tmp_path / "reports" / "index.html").read_text()
    assert 'href="r1/report.html"' in index and "height: 7" in index
    run = json.loads((res.run_dir / "run.json").read_text())
    assert run["parameters"]["height"] == 7 and run["status"] == "ok"


@pytest.mark.slow
def test_failed_notebook_keeps_partial_outputs_and_report(tmp_path: Path) -> None:
    res = run_notebook(_notebook(tmp_path / "t.ipynb"), {"fail": True}, reports_dir=tmp_path / "reports",
                       run_id="bad", check_browser=False, progress=False)
    assert res.status == "failed" and "stopped on purpose" in res.error
    assert (res.run_dir / "notebook.ipynb").exists()
    html = res.report.read_text()
    assert "stopped on purpose" in html and html.count('class="plotly-graph-div"') == 2
    assert "failed" in (tmp_path / "reports" / "index.html").read_text()


@pytest.mark.slow
def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    from memostudy.errors import RunExistsError

    nb = _notebook(tmp_path / "t.ipynb")
    run_notebook(nb, {}, reports_dir=tmp_path / "r", run_id="x", check_browser=False, progress=False)
    with pytest.raises(RunExistsError, match="--force"):
        run_notebook(nb, {}, reports_dir=tmp_path / "r", run_id="x", check_browser=False, progress=False)


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    res = run_notebook(_notebook(tmp_path / "t.ipynb"), {"height": 3}, reports_dir=tmp_path / "reports",
                       run_id="b", check_browser=True, progress=False)
    check = json.loads((res.run_dir / "run.json").read_text())["browser"]
    assert check["checked"] and check["console_errors"] == []
    assert check["plots_total"] == 2 and check["plots_drawn"] == 2
    assert (res.run_dir / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_browser_check_sees_errors_and_network_use(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<html><body><script>console.error("boom")</script>'
                    '<script src="https://cdn.example.org/x.js"></script></body></html>')
    r = check_html(page)
    assert not r.ok
    assert "boom" in r.console_errors and any("cdn.example.org" in e for e in r.console_errors)


def test_export_html_hides_code(tmp_path: Path) -> None:
    nb = new_notebook(cells=[new_code_cell("secret_code = 1", outputs=[])])
    nbformat.write(nb, str(tmp_path / "n.ipynb"))
    out = export_html(tmp_path / "n.ipynb", tmp_path / "n.html")
    assert "secret_code" not in out.read_text()
    assert write_index(tmp_path / "empty").read_text().count("<tr") == 1
