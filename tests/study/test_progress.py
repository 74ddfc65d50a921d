"""Progress of a notebook run: the package's bars reach the terminal (stderr), not the executed notebook."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from memostudy.study.progress import ENV, ChannelBar, terminal_progress
from memostudy.study.runner import run_notebook

TRAIN_CELL = """
import torch
from memostudy.training import LoopConfig, fit

class Tiny:  # a 1x1x1 convolution learning the identity: 30 epochs of 4 steps
    def __init__(self):
        self.net = torch.nn.Conv3d(1, 1, 1)
    def modules(self):
        return {"net": self.net}
    def loss(self, batch, generator=None):
        return ((self.net(batch) - batch) ** 2).mean()

vols = torch.randn(8, 1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
fit(Tiny(), vols, None, LoopConfig(epochs=30, batch_size=2, lr=0.01, seed=0), run_dir + "/fit", desc="diffusion",
    progress=False, device="cpu")  # as the notebooks do: no bar in the notebook
print("trained")
from memostudy.study.records import StudyRecord, write_record
_ = write_record(run_dir, StudyRecord(rows=[], key_figures={}, train_data=None))  # what every study notebook ends with
"""


def _notebook(path: Path) -> Path:
    nb = new_notebook(cells=[new_code_cell("run_dir = '.'", metadata={"tags": ["parameters"]}),
                             new_code_cell(TRAIN_CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
def test_training_progress_reaches_stderr_and_not_the_notebook(tmp_path: Path, capsys) -> None:
    res = run_notebook(_notebook(tmp_path / "t.ipynb"), {}, reports_dir=tmp_path / "r", run_id="p",
                       check_browser=False, progress=True)
    assert res.status == "ok", res.error
    err = capsys.readouterr().err
    stage = [ln for ln in err.splitlines() if "diffusion:" in ln]
    assert stage, err[-2000:]
    assert "120/120" in stage[-1] and "<00:00" in stage[-1] and "loss=" in stage[-1]  # steps, ETA, the loop's figures
    assert (res.run_dir / "progress.log").read_text().count("diffusion:") == len(stage)
    assert len(stage) <= 3  # 120 steps each refreshing the loss: the first line, the last, and one per 10 s
    outputs = [o for c in json.loads((res.run_dir / "notebook.ipynb").read_text())["cells"] for o in c.get("outputs", [])]
    assert [o.get("text") for o in outputs] == [["trained\n"]]  # the notebook holds its own print only
    assert ENV not in os.environ  # restored after the run


def test_channel_bar_writes_one_line_per_redraw_even_when_disabled(tmp_path: Path) -> None:
    out = io.StringIO()
    with terminal_progress(tmp_path, out=out, poll_s=0.05) as path:
        for _ in ChannelBar(range(5), desc="sampling ddim", disable=True):
            pass
    lines = path.read_text().splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["sampling ddim:   0% 0/5", "sampling ddim: 100% 5/5"]
    assert out.getvalue().splitlines() == [f"  {ln}" for ln in lines]
    assert "\r" not in path.read_text()
    with terminal_progress(tmp_path / "nowhere", enabled=False) as nothing:
        assert nothing is None and ENV not in os.environ


def test_a_bar_refreshed_every_step_writes_its_last_state_once(tmp_path: Path) -> None:
    with terminal_progress(tmp_path, out=io.StringIO()) as path:
        bar = ChannelBar(total=50, desc="diffusion", disable=True)
        for step in range(50):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")  # what training.fit does every step
        bar.close()
    lines = path.read_text().splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["diffusion:   0% 0/50", "diffusion: 100% 50/50"]
    assert lines[-1].endswith("loss=0.0200]")
