"""The readers-writer lock that lets threads search a vector index while one changes it."""

from __future__ import annotations

import copy
import pickle
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import pytest
from tunetrace.index.readers_writer import ReadersWriterLock
from tunetrace.index.vector_index import IndexSpec, VectorIndex

#: Long enough for a thread that could go on to have done so.
SETTLE_S = 0.2


def _started(target: object) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    time.sleep(SETTLE_S)
    return thread


def _under(
    hold: Callable[[], AbstractContextManager[None]], action: Callable[[], object]
) -> Callable[[], None]:
    """A thread's work: ``action`` with the lock held as ``hold`` holds it."""

    def run() -> None:
        with hold():
            action()

    return run


def test_readers_share_the_lock_and_a_writer_waits_for_them() -> None:
    lock = ReadersWriterLock()
    events: list[str] = []
    release = threading.Event()

    def read(name: str) -> None:
        with lock.reading():
            events.append(f"{name} in")
            release.wait()
        events.append(f"{name} out")

    write = _under(lock.writing, lambda: events.append("writer in"))
    readers = [_started(lambda name=name: read(name)) for name in "ab"]
    assert sorted(events) == ["a in", "b in"]  # both read at once
    writer = _started(write)
    assert "writer in" not in events  # the writer waits for them
    release.set()
    for thread in [*readers, writer]:
        thread.join(5)
    assert events[-1] == "writer in"


def test_a_waiting_writer_goes_before_readers_that_come_after_it() -> None:
    lock = ReadersWriterLock()
    events: list[str] = []
    release = threading.Event()

    first_reader = _under(lock.reading, release.wait)
    write = _under(lock.writing, lambda: events.append("writer"))
    late_reader = _under(lock.reading, lambda: events.append("late reader"))
    threads = [_started(first_reader), _started(write), _started(late_reader)]
    assert events == []  # the late reader waits behind the waiting writer
    release.set()
    for thread in threads:
        thread.join(5)
    assert events == ["writer", "late reader"]


def test_a_writer_interrupted_while_waiting_leaves_the_lock_usable() -> None:
    lock = ReadersWriterLock()
    release = threading.Event()
    late_read = threading.Event()

    holder = _started(_under(lock.reading, release.wait))

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # while the writer below waits (for the reader), a reader comes and waits behind it ...
    comer = threading.Timer(SETTLE_S / 2, _under(lock.reading, late_read.set))
    comer.daemon = True
    comer.start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, SETTLE_S)
        with pytest.raises(KeyboardInterrupt), lock.writing():
            pytest.fail("the writer got the lock while a reader held it")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # ... and goes on once the writer is interrupted (the first reader still reading)
    assert late_read.wait(5)
    release.set()
    holder.join(5)
    wrote = threading.Event()
    _started(_under(lock.writing, wrote.set)).join(5)
    assert wrote.is_set()


def test_an_index_pickled_or_copied_searches_as_the_original() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.build(32, IndexSpec(kind="ivfflat", nlist=16, nprobe=4), vectors,
                              np.arange(2_000, dtype=np.int64))  # fmt: skip
    expected = index.search(vectors[:20], 5)  # the original has list views now
    for twin in (pickle.loads(pickle.dumps(index)), copy.deepcopy(index)):
        assert twin._access is not index._access
        assert twin._views is None  # views of its own lists are made when it searches
        found = twin.search(vectors[:20], 5)
        np.testing.assert_array_equal(found[1], expected[1])
        np.testing.assert_allclose(found[0], expected[0], atol=1e-6)
        twin.add(vectors[:10], np.arange(5_000, 5_010, dtype=np.int64))  # a lock of its own
        assert twin.size == index.size + 10
