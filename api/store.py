"""Catalogue access from the event loop: serialised writes and consistent reads.

Writes (add, replace, delete) run one at a time on a single writer thread through the same
:class:`Catalogue` code as the CLI, so they are crash-safe the same way and interleave safely
with CLI writes. Reads use a connection of their own; SQLite's WAL gives them a consistent
snapshot while a write is under way.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tunetrace.index.catalogue import ReferenceData, ReferenceRecord

from tunetrace.opening import open_catalogue

T = TypeVar("T")


class CatalogueService:
    """Asynchronous front of one catalogue directory.

    Parameters
    ----------
    directory : Path
        Created (empty) if it holds no catalogue yet; a sharded catalogue's directory opens
        as one (its writes and reads open the shards in this process).
    """

    def __init__(self, directory: Path) -> None:
        self._writer = open_catalogue(directory, create=True)
        self._reader = open_catalogue(directory, read_only=True)
        self._read_lock = threading.Lock()
        self._write_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="catalogue-writer"
        )
        self._read_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalogue-reader")

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_thread, partial(self._locked, function, *args))

    def _locked(self, function: Callable[..., T], *args: Any) -> T:
        with self._read_lock:
            return function(*args)

    async def _write(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._write_thread, partial(function, *args, **kwargs))

    async def add(self, reference_id: str, data: ReferenceData, **fields: Any) -> ReferenceRecord:
        """Add (or with ``replace=True`` replace) a reference; see :meth:`Catalogue.add`."""
        return await self._write(self._writer.add, reference_id, data, **fields)

    async def remove(self, reference_id: str) -> None:
        """Delete a reference; see :meth:`Catalogue.remove`."""
        await self._write(self._writer.remove, reference_id)

    async def get(self, reference_id: str) -> ReferenceRecord:
        """One reference's metadata; see :meth:`Catalogue.get`."""
        return await self._read(self._reader.get, reference_id)

    async def contains(self, reference_id: str) -> bool:
        """Whether the id exists."""
        return await self._read(self._reader.contains, reference_id)

    async def page(self, offset: int, limit: int) -> tuple[int, list[ReferenceRecord]]:
        """Total count and one page of references, from the same snapshot."""
        return await self._read(self._page, offset, limit)

    def _page(self, offset: int, limit: int) -> tuple[int, list[ReferenceRecord]]:
        return self._reader.snapshot(lambda c: (c.count(), c.list(offset=offset, limit=limit)))

    def count(self) -> int:
        """Number of references (blocking; fast, for metrics scrapes)."""
        with self._read_lock:
            return self._reader.count()

    def close(self) -> None:
        """Finish pending writes and close both connections."""
        self._write_thread.shutdown(wait=True)
        self._read_thread.shutdown(wait=True)
        self._writer.close()
        self._reader.close()
