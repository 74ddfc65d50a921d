"""Size of a study report and its executed notebook, with the figures notebook 01 shows, on real patches.

Builds the figures of ``notebooks/01_memorization.ipynb`` from prepared ``demo-ct`` patches (32^3) without
training anything: the similarity histograms (one per detector), ``--pairs`` copy-candidate pair viewers
(a training patch above a validation patch standing in for its synthetic candidate, one slider over 32
slice positions) and the two loss curves. They run through ``memostudy.study.runner.run_notebook``
(papermill, then the offline HTML export), as ``memostudy study`` does. Prints the sizes of the executed
notebook and of ``report.html``, what plotly.js and the viewers take of them, and the share-safe scan's
verdict on the report (it must find the training rows of the pair viewers).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_report_size.py [--data demo-ct] [--pairs 4]

Measured with 4 pairs (as notebook 01 shows): before 8-bit viewer frames and the compressed plotly.js,
notebook 49.4 MB and report 19.8 MB (3.8 MB per pair viewer: float32 values written out as text);
after, notebook 1.5 MB and report 3.5 MB (plotly.js 2.0 MB gzip + base64, 0.30 MB per pair viewer).
The share-safe scan finds the same 387 training slices in both.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

BODY = """
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from memostudy.data.patches import load_patches
from memostudy.report.export import show
from memostudy.report.figures import similarity_histogram
from memostudy.report.viewer import pair_viewer

train, val = load_patches(data, "train"), load_patches(data, "validation")
rng = np.random.default_rng(0)
n_syn = 4 * len(train.ids)
for name in ("contrastive", "pixel"):
    show(similarity_histogram({"candidates": rng.normal(0.8, 0.05, len(train.ids)),
                               "synthetic": rng.normal(0.75, 0.05, n_syn),
                               "reference": rng.normal(0.7, 0.05, len(val.ids))}, 0.85, name))
display(pd.DataFrame({"train_id": train.ids[:pairs], "nearest_synthetic_id": val.ids[:pairs]}))
for k in range(pairs):
    show(pair_viewer(train.volumes[k], val.volumes[k], train.ids[k], val.ids[k], 0.9 - 0.01 * k))
for stage in ("autoencoder", "diffusion"):
    epochs = np.arange(1, 301)
    show(go.Figure([go.Scatter(x=epochs, y=np.exp(-epochs / 80) + rng.normal(0, 0.01, 300), name="train")],
                   layout={"title": f"{stage} loss", "height": 320}))
import json, pathlib
pathlib.Path(run_dir, "summary.json").write_text(json.dumps(
    {"train_data": {"data": data, "ids": list(train.ids[:pairs])}, "key_figures": {}}))
"""


def _notebook(path: Path) -> Path:
    nb = new_notebook(cells=[new_code_cell('data = "demo-ct"\npairs = 4\nrun_dir = "."',
                                           metadata={"tags": ["parameters"]}),
                             new_code_cell(BODY)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="demo-ct", help="prepared data set (memostudy data prepare NAME)")
    ap.add_argument("--pairs", type=int, default=4, help="pair viewers, as n_candidates of notebook 01")
    ap.add_argument("--work", default=None, help="folder for the run (default: a temporary one)")
    args = ap.parse_args()

    from memostudy.data.patches import load_patches
    from memostudy.report.leaks import describe, find_volume_leaks
    from memostudy.study.runner import run_notebook

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_report_size-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run_notebook(_notebook(work / "figures.ipynb"), {"data": args.data, "pairs": args.pairs},
                       reports_dir=work / "reports", run_id="run", force=True, check_browser=False, progress=False)
    if res.status != "ok":
        raise SystemExit(f"the figure notebook failed: {res.error}")
    seconds = time.perf_counter() - t0
    nb_text = (res.run_dir / "notebook.ipynb").read_text()
    html = res.report.read_text(encoding="utf-8")
    figures = [o["data"]["application/vnd.plotly.v1+json"] for c in json.loads(nb_text)["cells"]
               for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    viewers = [json.dumps(f) for f in figures if f["layout"].get("sliders")]
    plotlyjs = re.search(r'<script[^>]*id="memostudy-plotlyjs"[^>]*>([^<]*)</script>', html)
    print(f"{args.data}: {len(figures)} figures ({len(viewers)} pair viewers of 32 slice positions), {seconds:.0f} s")
    print(f"executed notebook   {_mb(len(nb_text.encode()))}")
    print(f"report.html         {_mb(len(html.encode()))}")
    print(f"  plotly.js (gzip)  {_mb(len(plotlyjs.group(1)) if plotlyjs else 0)}")
    print(f"  pair viewers      {_mb(sum(len(v) for v in viewers))} "
          f"({_mb(sum(len(v) for v in viewers) // max(len(viewers), 1))} each)")
    train = load_patches(args.data, "train").volumes[: args.pairs]
    t0 = time.perf_counter()
    leaks = find_volume_leaks(html, train)
    print(f"share-safe scan     {time.perf_counter() - t0:.1f} s: {describe(leaks)}")
    print(f"run folder          {res.run_dir}")


if __name__ == "__main__":
    main()
