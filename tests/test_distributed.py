"""Training under torchrun (2 processes, gloo on the CPU) equals one process with the doubled batch, and resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from memostudy.training import LoopConfig, fit

pytestmark = pytest.mark.slow

SCRIPT = '''
import os, sys, torch
from memostudy import distributed
from memostudy.training import LoopConfig, fit

class Regress:
    """A loss that depends only on the batch: the same numbers however the batch is shared."""
    def __init__(self, kill_after):
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv3d(4, 1, 3, padding=1))
        self.calls, self.kill_after = 0, kill_after
    def modules(self):
        return {"net": self.net}
    def loss(self, batch, generator):
        self.calls += torch.is_grad_enabled()
        if self.kill_after and self.calls > self.kill_after:
            sys.exit(3)  # stands in for a killed job
        return (self.net(batch) - batch.flip(-1)).pow(2).mean()

torch.set_num_threads(1)
distributed.setup()
g = torch.Generator().manual_seed(1)
vols = torch.rand(16, 1, 6, 6, 6, generator=g)
cfg = LoopConfig(epochs=3, batch_size=int(sys.argv[2]), lr=1e-2, checkpoint_every=2, seed=0, amp="off")
fit(Regress(int(os.environ.get("KILL_AFTER", "0"))), vols, vols[:4], cfg, sys.argv[1], progress=False)
distributed.teardown()
'''


def _run(script: Path, out: Path, batch: int, nproc: int, env_extra: dict | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if nproc == 1:
        cmd = [sys.executable, str(script), str(out), str(batch)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), str(out), str(batch)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300).returncode


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ddp") / "train_toy.py"
    p.write_text(SCRIPT)
    return p


def test_two_processes_of_batch_b_train_like_one_of_batch_2b(script, tmp_path):
    assert _run(script, tmp_path / "one", batch=4, nproc=1) == 0
    assert _run(script, tmp_path / "two", batch=2, nproc=2) == 0
    one = pd.read_csv(tmp_path / "one" / "losses.csv")
    two = pd.read_csv(tmp_path / "two" / "losses.csv")
    assert one["step"].tolist() == two["step"].tolist() == [4, 8, 12]
    for col in ("train_loss", "val_loss"):
        assert two[col].tolist() == pytest.approx(one[col].tolist(), rel=1e-5)
    w1 = torch.load(tmp_path / "one" / "final.pt", weights_only=False)["modules"]["net"]
    w2 = torch.load(tmp_path / "two" / "final.pt", weights_only=False)["modules"]["net"]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    assert one["train_loss"].iloc[-1] < one["train_loss"].iloc[0]  # it learns


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_losses(script, tmp_path):
    assert _run(script, tmp_path / "full", batch=2, nproc=2) == 0
    assert _run(script, tmp_path / "killed", batch=2, nproc=2, env_extra={"KILL_AFTER": "5"}) != 0
    assert (tmp_path / "killed" / "last.pt").exists() and not (tmp_path / "killed" / "DONE").exists()
    assert _run(script, tmp_path / "killed", batch=2, nproc=2) == 0
    full = pd.read_csv(tmp_path / "full" / "losses.csv").drop(columns="seconds")
    resumed = pd.read_csv(tmp_path / "killed" / "losses.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(full, resumed, rtol=1e-6)


def test_memostudy_train_runs_under_torchrun(tmp_path):
    from memostudy.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "ph", n_train=8, n_validation=4, size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "memostudy",
         "train", "--preset", "test-16", "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("trained ") == 1  # rank 0 alone reports
    losses = pd.read_csv(tmp_path / "run" / "diffusion" / "losses.csv")
    # 8 patches, batch 4 per rank: one global batch of 8 per epoch
    assert losses["step"].tolist() == [1, 2, 3]
    assert (tmp_path / "run" / "diffusion" / "DONE").exists() and (tmp_path / "run" / "latent_scale.json").exists()


def test_a_single_process_is_unchanged_by_the_distributed_code(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1)

    class T:
        def modules(self):
            return {"net": net}

        def loss(self, batch, generator):
            return (net(batch) - batch).pow(2).mean()

    df = fit(T(), torch.rand(5, 1, 4, 4, 4), None, LoopConfig(epochs=1, batch_size=2, seed=0), tmp_path, progress=False)
    assert df["step"].tolist() == [3]  # ceil(5 / 2): the partial last batch is kept with one process
