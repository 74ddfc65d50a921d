"""waiting_lock: a second holder announces once, waits for the first, then gets the lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from memostudy.locks import waiting_lock


def test_a_second_holder_announces_once_and_waits_for_the_first(tmp_path: Path) -> None:
    lock_file = tmp_path / "locks" / "x.lock"
    holding, order, said = threading.Event(), [], []

    def first() -> None:
        with waiting_lock(lock_file, said.append, "first waits"):
            holding.set()
            time.sleep(0.3)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    holding.wait()
    with waiting_lock(lock_file, said.append, "second waits"):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"] and said == ["second waits"]
    with waiting_lock(lock_file, said.append, "free"):  # a free lock is taken without a word
        pass
    assert said == ["second waits"]
