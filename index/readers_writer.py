"""Many readers or one writer, within one process: how a vector index is shared by threads.

FAISS gives no guarantee for an index searched while it changes (an add may move a list's
memory under a search reading it), so every search reads under this lock and every add or
removal writes under it. A waiting writer holds back readers that come after it, so a stream
of searches never starves a change.

Written here rather than taken from a package: the one tried (fasteners 0.20) leaves a writer
that is interrupted while it waits (``KeyboardInterrupt`` in a notebook, an exception from a
signal handler) in its queue, and every later reader and writer of the index then waits for
ever. Here an interrupted wait leaves the lock as it found it. Neither side is re-entrant: a
thread that holds the lock must not take it again (a reader that did, with a writer waiting,
would wait for that writer, which waits for it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadersWriterLock:
    """Shared reading, exclusive writing; waiting writers go before new readers."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the lock shared: waits while a writer holds it or waits for it."""
        with self._condition:
            while self._writing or self._waiting_writers:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the lock alone: waits for the readers and the writer that hold it."""
        with self._condition:
            self._waiting_writers += 1
            try:
                while self._writing or self._readers:
                    self._condition.wait()
            except BaseException:
                # interrupted while waiting: readers held back for this writer may go on
                self._condition.notify_all()
                raise
            finally:
                self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()
