"""One process at a time on a shared resource (a data set being prepared, an LDM being trained), with ``filelock``.

A second process that wants the resource says once that it is waiting and then waits, instead of failing or doing
the same work beside the first; after the wait it finds the first one's result and reuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


@contextmanager
def waiting_lock(lock_file: Path, announce: Callable[[str], None], waiting: str) -> Iterator[None]:
    """Hold the lock ``lock_file`` (its folder is made); when another process holds it, call ``announce(waiting)``
    once and wait for it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        announce(waiting)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
