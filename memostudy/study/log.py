"""One-line progress messages of a study run.

A study runs in a papermill kernel, where progress bars do not reach the terminal; a timestamped line
printed and flushed does (the runner forwards the kernel's output as it happens).
"""

from __future__ import annotations

import time


def say(message: str) -> None:
    """Print ``[memostudy HH:MM:SS] message`` and flush."""
    print(f"[memostudy {time.strftime('%H:%M:%S')}] {message}", flush=True)
