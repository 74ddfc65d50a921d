"""Faults in `memostudy audit` and `memostudy train`, with the real command in a subprocess (issue 18):
runs killed (SIGINT, SIGKILL) during detector training, while results are written and while they are
moved into place over older ones (``--force``); each rerun ends with the results of an uninterrupted run,
and no kill leaves ``--out`` without complete results (old or new) when it had some.

Kill points: during training, once the detector's ``losses.csv`` (or the LDM's ``diffusion/last.pt``)
appears; while writing, from the test hook ``MEMOSTUDY_PAUSE_AT`` (``audit-writing``, ``audit-moving``;
see :func:`memostudy.data.prepare.pause_point`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from memostudy.data.phantom import phantom_volumes, write_phantom_dataset
from memostudy.report.audit import AUDIT_FILES, BUILDING_PREFIX, COMPLETE_MARKER, has_results
from tests.conftest import default_sigint
from tests.conftest import write_volume_folder as _folder

REPO = Path(__file__).resolve().parents[2]
CMD = [sys.executable, "-c", "import sys; from memostudy.cli import main; sys.exit(main())"]
DETECTOR = ["--no-aligned", "--set", "channels=8,16", "--set", "input_pool=2", "--set", "batch_size=4"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    train = phantom_volumes(6, 16, seed=0)
    return {"train": _folder(root / "train", train, "t"),
            "reference": _folder(root / "ref", phantom_volumes(5, 16, seed=3), "r"),
            "synthetic": _folder(root / "syn", torch.cat([train[:2].flip(2), phantom_volumes(2, 16, seed=7)]), "s")}


def _env(pause: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("MEMOSTUDY_PAUSE_AT", None)
    env.pop("MEMOSTUDY_PAUSE_UNTIL", None)
    if pause:
        env["MEMOSTUDY_PAUSE_AT"] = pause
    return env


def _audit_args(folders: dict[str, Path], out: Path, epochs: int, *extra: str) -> list[str]:
    return [*CMD, "audit", "--train", str(folders["train"]), "--reference", str(folders["reference"]),
            "--synthetic", str(folders["synthetic"]), "--out", str(out), *DETECTOR, "--set", f"epochs={epochs}", *extra]


def _run(args: list[str]) -> None:
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def _results(out: Path) -> dict[str, str]:
    """Checksums of the result tables and detector.pt's weights; summary.json without timings, provenance, paths."""
    files = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in AUDIT_FILES if f.endswith(".csv")}
    summary = json.loads((out / "summary.json").read_text())
    for k in ("seconds", "provenance", "inputs"):
        summary.pop(k)
    weights = torch.load(out / "detector.pt", weights_only=True)["state_dict"]
    return files | {"summary.json": json.dumps(summary, sort_keys=True),
                    "detector.pt": hashlib.sha256(b"".join(v.numpy().tobytes() for v in weights.values())).hexdigest()}


def _kill_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 300) -> None:
    """Send ``sig`` to ``proc`` once ``ready()`` holds (fails if the process ends first), then wait for it."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"ended (rc {proc.returncode}) before the kill point: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=120)


def _losses_rows(path: Path, n: int):
    def ready() -> bool:
        try:
            return len(pd.read_csv(path)) >= n
        except (FileNotFoundError, pd.errors.EmptyDataError):
            return False
    return ready


def _paused(proc: subprocess.Popen, point: str):
    def ready() -> bool:
        line = proc.stderr.readline()
        return f"paused at {point}" in line
    return ready


@pytest.fixture(scope="module")
def uninterrupted(folders, tmp_path_factory) -> dict[int, dict[str, str]]:
    """The results of uninterrupted audits, by detector epochs."""
    root = tmp_path_factory.mktemp("uninterrupted")
    out = {}
    for epochs in (1, 16):
        _run(_audit_args(folders, root / f"e{epochs}", epochs))
        out[epochs] = _results(root / f"e{epochs}")
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_audit_killed_during_detector_training_resumes_to_the_same_results(folders, uninterrupted, tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen(_audit_args(folders, out, 16), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    _kill_when(proc, _losses_rows(out / "detector_training" / "losses.csv", 3), sig)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert not has_results(out) and not (out / "detector.pt").exists()  # nothing that looks finished
    assert 3 <= len(pd.read_csv(out / "detector_training" / "losses.csv")) < 16
    _run(_audit_args(folders, out, 16))
    assert _results(out) == uninterrupted[16]
    assert not list(out.glob(f"{BUILDING_PREFIX}*"))


@pytest.mark.parametrize(("point", "sig"), [("audit-writing", signal.SIGKILL), ("audit-moving", signal.SIGINT),
                                             ("audit-moving", signal.SIGKILL)])
def test_force_killed_while_writing_keeps_old_or_new_results_and_the_rerun_finishes(folders, uninterrupted, tmp_path,
                                                                                    point, sig):
    out = tmp_path / "out"
    _run(_audit_args(folders, out, 1))
    assert _results(out) == uninterrupted[1]
    proc = subprocess.Popen(_audit_args(folders, out, 16, "--force"), env=_env(point), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    _kill_when(proc, _paused(proc, point), sig)
    builds = list(out.glob(f"{BUILDING_PREFIX}*"))
    if point == "audit-writing":  # the new results are not complete: the old ones are untouched
        assert _results(out) == uninterrupted[1]
        assert builds and not any((b / COMPLETE_MARKER).exists() for b in builds)
    else:  # being moved in: a complete build holds them until the next run finishes the move
        assert [(b / COMPLETE_MARKER).exists() for b in builds] == [True]
    _run(_audit_args(folders, out, 16, "--force"))
    assert _results(out) == uninterrupted[16]
    assert not list(out.glob(f"{BUILDING_PREFIX}*")) and not list(out.glob("detector_training.aside-*"))


def test_train_killed_mid_run_resumes_with_the_same_losses(tmp_path):
    data = write_phantom_dataset(tmp_path / "phantoms", n_train=8, n_validation=4, size=16)
    args = [*CMD, "train", "--preset", "test-16", "--data", str(data), "--epochs", "12", "--no-progress", "--out"]
    _run([*args, str(tmp_path / "whole")])
    run = tmp_path / "killed"
    proc = subprocess.Popen([*args, str(run)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    _kill_when(proc, _losses_rows(run / "diffusion" / "losses.csv", 2), signal.SIGKILL)
    assert not (run / "diffusion" / "DONE").exists()
    _run([*args, str(run)])
    for stage in ("autoencoder", "diffusion"):
        a = pd.read_csv(tmp_path / "whole" / stage / "losses.csv").drop(columns="seconds")
        b = pd.read_csv(run / stage / "losses.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(a, b)
