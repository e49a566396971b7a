"""Spreading a query's work over threads: order, errors, and one thread after use_one_thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tunetrace import threads


def test_map_in_threads_keeps_the_order_of_the_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "thread_count", lambda: 3)
    seen: set[str] = set()

    def slow_square(value: int) -> int:
        seen.add(threading.current_thread().name)
        time.sleep(0.01 * (5 - value))  # the first items finish last
        return value * value

    assert threads.map_in_threads(slow_square, range(5)) == [0, 1, 4, 9, 16]
    assert len(seen) > 1  # the work was spread


def test_map_in_threads_passes_an_error_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "thread_count", lambda: 2)

    def fails_on_two(value: int) -> int:
        if value == 2:
            raise ValueError("two")
        return value

    with pytest.raises(ValueError, match="two"):
        threads.map_in_threads(fails_on_two, range(4))


def test_map_in_threads_lets_running_items_finish_before_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the caller may close what the other threads use (a database) as soon as it sees the error
    monkeypatch.setattr(threads, "thread_count", lambda: 2)
    finished: list[int] = []

    def first_fails_fast(value: int) -> int:
        if value == 0:
            raise ValueError("zero")
        time.sleep(0.3)
        finished.append(value)
        return value

    with pytest.raises(ValueError, match="zero"):
        threads.map_in_threads(first_fails_fast, range(2))
    assert finished == [1]  # the other thread was done when the error reached the caller


def test_map_in_threads_runs_in_the_caller_with_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threads, "thread_count", lambda: 1)
    names = threads.map_in_threads(lambda _: threading.current_thread().name, range(3))
    assert names == [threading.current_thread().name] * 3


def test_thread_count_is_one_once_a_worker_limits_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_limits", object())  # as use_one_thread leaves it
    assert threads.thread_count() == 1


def test_a_matcher_keeps_blas_on_one_thread(tmp_path: Path) -> None:
    # in a fresh process: other tests limit this one's threads
    script = f"""
import json
from threadpoolctl import threadpool_info
from tunetrace.index.catalogue import Catalogue
from tunetrace.matcher import Matcher
def blas():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
before = blas()
with Catalogue({str(tmp_path / "cat")!r}, create=True) as catalogue:
    Matcher(catalogue)
print(json.dumps([before, blas()]))
"""
    # two BLAS threads to start with, whatever this process's environment says (a Dask
    # cluster started by another test sets these variables to 1)
    environment = {
        **os.environ,
        **{name: "2" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=environment,
    )
    before, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert after and all(threads == 1 for threads in after)
    if (os.cpu_count() or 1) > 1:
        assert max(before) > 1  # the limit came from the matcher, not from the start
