"""Faults in `memostudy data prepare`, with the real command in a subprocess: two runs at once, runs
killed (SIGINT, SIGKILL) at several points, a killed ``--force``. Each ends with the data set an
uninterrupted run gives, file for file.

Kill points come from the test hook ``MEMOSTUDY_PAUSE_AT`` (see ``memostudy.data.prepare.pause_point``):
the command announces the point on stderr and waits there, so the test kills it at a known step.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memostudy.data.manifest import manifest_from_folder
from memostudy.data.prepare import prepare
from tests.conftest import default_sigint

REPO = Path(__file__).resolve().parents[2]
CMD = [sys.executable, "-c", "import sys; from memostudy.cli import main; sys.exit(main())"]

pytestmark = pytest.mark.slow


def _tree(d: Path) -> dict[str, str]:
    """sha256 of every file under a data set folder, by relative path."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture()
def setup(cohort: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """(manifest, cache, files of the data set an uninterrupted run writes)."""
    m = manifest_from_folder(cohort, tmp_path / "m.yaml", name="toy", modality="CT", patch_size=8)
    reference = _tree(prepare(m, cache=tmp_path / "reference", progress=False).path)
    return m, tmp_path / "cache", reference


def _start(m: Path, cache: Path, *extra: str, pause: str | None = None, until: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("MEMOSTUDY_PAUSE_AT", None)
    if pause:
        env["MEMOSTUDY_PAUSE_AT"] = pause
    if until:
        env["MEMOSTUDY_PAUSE_UNTIL"] = str(until)
    return subprocess.Popen([*CMD, "data", "prepare", str(m), "--cache", str(cache), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def _wait_for(proc: subprocess.Popen, text: str) -> None:
    """Read the process's stderr until a line holding ``text`` (fails if it exits first)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"process ended (rc {proc.wait()}) before printing {text!r}: {''.join(seen)}")


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name not in ("toy", ".locks"))


def test_two_prepares_at_once_give_one_complete_data_set(setup) -> None:
    m, cache, reference = setup
    procs = [_start(m, cache), _start(m, cache)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("[already prepared]" in out for out, _ in outs) == 1  # one built, the other reused it
    assert not any("Traceback" in err for _, err in outs)
    assert _tree(cache / "toy") == reference and _leftovers(cache) == []


def test_second_prepare_waits_for_the_first(setup, tmp_path: Path) -> None:
    m, cache, reference = setup
    go = tmp_path / "go"
    first = _start(m, cache, pause="volume-1", until=go)
    _wait_for(first, "paused at volume-1")
    second = _start(m, cache)
    _wait_for(second, "waiting for another `data prepare` of toy")
    assert not (cache / "toy").exists()
    go.touch()
    out1, _ = first.communicate(timeout=600)
    out2, _ = second.communicate(timeout=600)
    assert (first.returncode, second.returncode) == (0, 0)
    assert "[already prepared]" not in out1 and "[already prepared]" in out2
    assert _tree(cache / "toy") == reference and _leftovers(cache) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("point", ["volume-2", "before-rename"])
def test_killed_prepare_reruns_to_the_same_data_set(setup, sig: signal.Signals, point: str) -> None:
    m, cache, reference = setup
    proc = _start(m, cache, pause=point)
    _wait_for(proc, f"paused at {point}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert not (cache / "toy").exists()  # never a half-written data set under its name
    if sig == signal.SIGINT:
        assert "memostudy: interrupted" in err and _leftovers(cache) == []  # cleaned up on the way out
    else:
        assert [n.split("~")[0] for n in _leftovers(cache)] == [".building-toy"]
    s = prepare(m, cache=cache, progress=False)
    assert not s.reused and _tree(s.path) == reference and _leftovers(cache) == []


def test_killed_force_keeps_the_old_data_set(setup) -> None:
    m, cache, reference = setup
    prepare(m, cache=cache, progress=False)
    proc = _start(m, cache, "--force", pause="before-rename")
    _wait_for(proc, "paused at before-rename")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    assert _tree(cache / "toy") == reference  # the old one, untouched, until a new one is complete
    s = prepare(m, cache=cache, progress=False)
    assert s.reused and _leftovers(cache) == []


def test_force_killed_between_renames_puts_the_old_one_back(setup) -> None:
    m, cache, reference = setup
    prepare(m, cache=cache, progress=False)
    proc = _start(m, cache, "--force", pause="between-renames")
    _wait_for(proc, "paused at between-renames")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=600)
    assert not (cache / "toy").exists()
    assert sorted(n.split("~")[0] for n in _leftovers(cache)) == [".building-toy", ".replaced-toy"]
    s = prepare(m, cache=cache, progress=False)
    assert s.reused and _tree(s.path) == reference and _leftovers(cache) == []
