"""One writer at a time per catalogue directory, across processes.

SQLite's ``BEGIN IMMEDIATE`` already serialises the database, but a write also publishes an
index file and sweeps old ones, and a rebuild can train for minutes: the whole write holds an
advisory ``flock`` on ``DIR/catalogue.lock``. The kernel drops the lock when its process dies,
so a killed writer never leaves the catalogue locked.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = "catalogue.lock"


class WriterLock:
    """Exclusive advisory lock on a catalogue directory (re-entrant within one holder).

    Parameters
    ----------
    directory : Path
        The catalogue directory; the lock file is created there on first use.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> WriterLock:
        if self._depth == 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    logger.info("waiting for another process writing to %s", self.path.parent)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
