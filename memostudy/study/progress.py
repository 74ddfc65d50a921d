"""Progress of a notebook run in the terminal, kept out of the executed notebook.

A study notebook runs in a papermill kernel: the package's tqdm bars (training, sampling, the aligned
search) would land in the notebook's outputs, so the notebooks turn them off, and the terminal that ran
``make study`` showed only papermill's "Executing 1/16 cells" for the whole LDM training. Instead:

- :func:`terminal_progress` (used by :func:`memostudy.study.runner.run_notebook`) names a side-channel
  file, ``<run_dir>/progress.log``, in the environment variable :data:`ENV` that the kernel inherits, and
  copies each line written to it to the terminal's stderr while the notebook runs;
- in the kernel, ``import memostudy`` sees :data:`ENV` and calls :func:`install`: every bar the package
  creates (``from tqdm.auto import tqdm``) is then a :class:`ChannelBar`, which writes one plain line per
  update, at most every :data:`INTERVAL_S` seconds, to that file, whether the caller asked for a bar
  (``progress=True``) or not. Nothing of it reaches the notebook's outputs.

A line reads ``diffusion:  42% 252/600 [04:37<06:23, 0.91it/s, epoch=21, loss=0.1234]``: stage, share
done, steps, elapsed < remaining (the ETA), rate and the loop's own figures. The file stays in the run
folder (on Slurm, the cell's job log holds the same lines).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import tqdm.auto
import tqdm.std

ENV = "MEMOSTUDY_PROGRESS"
INTERVAL_S = 10.0  # at most one line per bar this often (tqdm's mininterval)
BAR_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _LineFile:
    """A file-like object for tqdm: each redraw (``\\r`` + bar) becomes one line appended to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, s: str) -> None:
        lines = [ln.rstrip() for ln in _ANSI.sub("", s).replace("\r", "\n").split("\n")]
        text = "".join(ln + "\n" for ln in lines if ln)
        if text:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)

    def flush(self) -> None:
        pass


class ChannelBar(tqdm.std.tqdm):
    """A tqdm bar that reports to the progress file named by :data:`ENV` (always on; see the module docstring).

    At most one line per :data:`INTERVAL_S` seconds, plus the first and the last: a training loop that
    refreshes its figures every step (``set_postfix``) still writes a line every few seconds only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._channel = os.environ.get(ENV)
        self._last_line, self._last_n = -float("inf"), -1
        self._closing = False
        if self._channel:
            kwargs |= {"disable": False, "file": _LineFile(self._channel), "mininterval": INTERVAL_S,
                       "ascii": True, "dynamic_ncols": False, "ncols": None, "bar_format": BAR_FORMAT,
                       "position": None}
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        """Draw the bar (one line of the file), unless the last line is less than :data:`INTERVAL_S` old."""
        if self._channel:
            now = self._time()
            last = self.total is not None and self.n >= self.total
            if self._closing and self.n == self._last_n:  # the last state is already written
                return True
            if not (self._closing or last) and now - self._last_line < INTERVAL_S:
                return True
            self._last_line, self._last_n = now, self.n
        return super().display(msg, pos)

    def close(self) -> None:
        """Close the bar; its last state is always written."""
        self._closing = True
        super().close()


def install() -> None:
    """In a kernel started by :func:`terminal_progress`: make the package's ``tqdm.auto`` bars :class:`ChannelBar`.

    Called by ``import memostudy`` when :data:`ENV` is set, before any module of the package binds
    ``tqdm``; does nothing otherwise.
    """
    if os.environ.get(ENV):
        tqdm.auto.tqdm = ChannelBar


@contextlib.contextmanager
def terminal_progress(run_dir: str | Path, enabled: bool = True, out: TextIO | None = None,
                      poll_s: float = 0.5) -> Iterator[Path | None]:
    """While the block runs (papermill executing a notebook), copy the kernel's progress lines to ``out``.

    Args:
        run_dir: the run folder; the side channel is ``run_dir/progress.log`` (appended to).
        enabled: False does nothing (no variable, no file).
        out: where lines go (default: ``sys.stderr`` at the time of each line).
        poll_s: how often the file is read.

    Yields:
        The progress file, or None when not enabled.
    """
    if not enabled:
        yield None
        return
    path = Path(run_dir) / "progress.log"
    path.touch()
    before = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    stop = threading.Event()

    def follow() -> None:
        with open(path, encoding="utf-8") as f:
            pending = ""
            while True:
                finished = stop.is_set()  # read once more after the notebook ended
                pending += f.read()
                *lines, pending = pending.split("\n")
                for ln in lines:  # tqdm.write: above papermill's own bar, not inside it
                    tqdm.std.tqdm.write(f"  {ln}", file=out or sys.stderr)
                if finished:
                    return
                stop.wait(poll_s)

    thread = threading.Thread(target=follow, name="memostudy-progress", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
