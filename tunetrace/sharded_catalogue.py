"""A sharded catalogue: several shard catalogues that behave as one.

Each reference lives in the shard its id hashes to
(:func:`~tunetrace.index.shard_layout.shard_of`). Reads (``get``, ``list``, ``count``,
``info``, features for verification) go to the shards through a
:class:`~tunetrace.shard_access.ShardAccess`: shards opened in this process, or on Dask workers.
Writes (``add``, ``remove``) always go to shards opened here, under the sharded directory's
writer lock, which a reshard holds too. Reference keys are made unique across shards
(:func:`~tunetrace.index.shard_layout.global_key`), so a
:class:`~tunetrace.index.catalogue.ReferenceRecord`'s ``key`` names its shard.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from tunetrace.audio_files import AudioFiles
from tunetrace.errors import CatalogueError
from tunetrace.fingerprint.features import Features
from tunetrace.index.catalogue import ReferenceData, ReferenceRecord, validate_reference_id
from tunetrace.index.resharding import sweep_generations
from tunetrace.index.shard_layout import (
    ShardManifest,
    global_key,
    read_manifest,
    shard_of,
    split_key,
)
from tunetrace.index.writer_lock import WriterLock
from tunetrace.shard_access import LocalShards, OpenShard, ShardAccess, shard_name

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: References read from each shard at a time when listing across shards.
LIST_PAGE = 500


class ShardedCatalogue(AudioFiles):
    """Open the sharded catalogue in ``directory`` (made by ``tunetrace shards init``).

    Offers what :class:`tunetrace.Catalogue` offers (add, remove, get, list, count, info,
    ``add_file``/``add_files``) and goes wherever one is expected (``tunetrace.Matcher``,
    scans, the HTTP API). ``tunetrace.Catalogue(directory)`` opens a sharded directory as this.

    Parameters
    ----------
    directory : str or Path
    read_only : bool
        Refuse writes (for processes that only match).
    scheduler : str or distributed.Client, optional
        Open and search the shards on this Dask cluster's workers instead of in this process
        (read-only).

    Raises
    ------
    CatalogueError
        If ``directory`` holds no shard manifest or the cluster cannot be reached.
    """

    def __init__(
        self, directory: str | Path, *, read_only: bool = False, scheduler: Any = None
    ) -> None:
        self.directory = Path(directory)
        self.read_only = read_only or scheduler is not None
        self.scheduler = scheduler
        self._writer_lock = WriterLock(self.directory)
        self._swept = False
        self.manifest = read_manifest(self.directory)
        self.shards: ShardAccess = self._open_shards(self.manifest)

    # --------------------------------------------------------------------- shards

    def _open_shards(self, manifest: ShardManifest) -> ShardAccess:
        directories = manifest.shard_dirs(self.directory)
        if self.scheduler is not None:
            from tunetrace.shard_access import DaskShards

            return DaskShards(directories, self.scheduler, read_only=True)
        return LocalShards(directories, read_only=self.read_only)

    @property
    def params(self) -> Any:
        """The fingerprint parameters every shard was made with."""
        return self.manifest.params

    @property
    def shard_count(self) -> int:
        """Number of shards."""
        return self.manifest.count

    def shard_of(self, reference_id: str) -> int:
        """The shard that holds (or would hold) ``reference_id``."""
        return shard_of(reference_id, self.manifest.count)

    def refresh(self) -> bool:
        """Follow a reshard made by another process (re-read the manifest); whether it
        changed."""
        manifest = read_manifest(self.directory)
        if manifest == self.manifest:
            return False
        old, self.manifest = self.shards, manifest
        self.shards = self._open_shards(manifest)
        old.close()
        logger.info("%s: now %d shards (generation %d)", self.directory, manifest.count,
                    manifest.generation)  # fmt: skip
        return True

    def open_shard(self, shard: int) -> OpenShard:
        """Shard number ``shard`` opened in this process (writes; local reads only)."""
        if not isinstance(self.shards, LocalShards):
            raise CatalogueError("shards on a Dask cluster are not opened in this process")
        return self.shards.shard(shard)

    # --------------------------------------------------------------------- writes

    def add(
        self,
        reference_id: str,
        data: ReferenceData,
        *,
        title: str | None = None,
        artist: str | None = None,
        isrc: str | None = None,
        source_path: str | None = None,
        replace: bool = False,
        save_index: bool = True,
    ) -> ReferenceRecord:
        """Store a reference in its shard; see :meth:`tunetrace.index.catalogue.Catalogue.add`."""
        validate_reference_id(reference_id)
        with self._write():
            shard = self.shard_of(reference_id)
            record = self.open_shard(shard).catalogue.add(
                reference_id, data, title=title, artist=artist, isrc=isrc,
                source_path=source_path, replace=replace, save_index=save_index,
            )  # fmt: skip
            return _globally(shard, record)

    def remove(self, reference_id: str) -> None:
        """Delete a reference from its shard.

        Raises
        ------
        ReferenceNotFoundError
        """
        validate_reference_id(reference_id)
        with self._write():
            self.open_shard(self.shard_of(reference_id)).catalogue.remove(reference_id)

    def save_index(self) -> None:
        """Publish every opened shard's index (after batch adds)."""
        with self._write():
            assert isinstance(self.shards, LocalShards)
            for shard in range(self.shard_count):
                self.shards.shard(shard).catalogue.save_index()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """Hold the sharded directory's writer lock, with the manifest re-read under it (a
        reshard may have finished since)."""
        if self.read_only:
            raise CatalogueError(f"catalogue {self.directory} was opened read-only")
        with self._writer_lock:
            self.refresh()
            if not self._swept:  # what a crashed reshard left behind
                sweep_generations(self.directory, self.manifest)
                self._swept = True
            yield

    # --------------------------------------------------------------------- reads

    def get(self, reference_id: str) -> ReferenceRecord:
        """Metadata of one reference (its ``key`` is unique across shards).

        Raises
        ------
        ReferenceNotFoundError
        """
        validate_reference_id(reference_id)
        shard = self.shard_of(reference_id)
        return _globally(shard, self.shards.call(shard, _get, reference_id))

    def contains(self, reference_id: str) -> bool:
        """Whether a reference with this id exists."""
        validate_reference_id(reference_id)
        shard = self.shard_of(reference_id)
        return bool(self.shards.call(shard, _contains, reference_id))

    def record_by_key(self, key: int) -> ReferenceRecord:
        """Metadata of the reference with (global) ``key``."""
        shard, local = self._split(key)
        return _globally(shard, self.shards.call(shard, _record_by_key, local))

    def features(self, key: int) -> Features:
        """Stored features of the reference with (global) ``key``."""
        shard, local = self._split(key)
        return self.shards.call(shard, _features, local)

    def count(self) -> int:
        """Number of references in all shards."""
        return sum(self.shards.call_all(_count, [()] * self.shard_count))

    def list(self, *, offset: int = 0, limit: int = 100) -> list[ReferenceRecord]:
        """References of all shards ordered by id (a merge of each shard's order)."""
        merged = heapq.merge(
            *(self._listed(shard) for shard in range(self.shard_count)),
            key=lambda record: record.reference_id,
        )
        out = []
        for number, record in enumerate(merged):
            if number >= offset + limit:
                break
            if number >= offset:
                out.append(record)
        return out

    def _listed(self, shard: int) -> Iterator[ReferenceRecord]:
        start = 0
        while page := self.shards.call(shard, _list, start, LIST_PAGE):
            for record in page:
                yield _globally(shard, record)
            start += len(page)
            if len(page) < LIST_PAGE:
                return

    def snapshot(self, read: Callable[[ShardedCatalogue], T]) -> T:
        """Run ``read(self)``. Each shard answers from its own consistent state; a write to
        another shard between two of ``read``'s calls may show (shards share no snapshot)."""
        return read(self)

    def info(self) -> dict[str, object]:
        """Totals over the shards and one entry per shard (``shards``)."""
        parts = self.shards.call_all(_info, [()] * self.shard_count)
        per_shard = [
            {
                "shard": shard_name(directory),
                "references": part["references"],
                "audio_hours": part["audio_hours"],
                "vectors": part["vectors"],
                "index_kind": part["index_kind"],
                "size_on_disk_bytes": part["size_on_disk_bytes"],
            }
            for directory, part in zip(self.manifest.shard_dirs(self.directory), parts, strict=True)
        ]
        hours = sum(float(p["audio_hours"]) for p in parts)
        size = sum(int(p["size_on_disk_bytes"]) for p in parts)
        return {
            "catalogue": str(self.directory),
            "sharded": True,
            "shard_count": self.shard_count,
            "shard_generation": self.manifest.generation,
            "references": sum(int(p["references"]) for p in parts),
            "audio_hours": round(hours, 3),
            "vectors": sum(int(p["vectors"]) for p in parts),
            "size_on_disk_bytes": size,
            "mb_per_audio_hour": round(size / 1e6 / hours, 3) if hours else None,
            "params_digest": self.params.digest(),
            "shards": per_shard,
            "params": self.params.to_dict(),
        }

    def _split(self, key: int) -> tuple[int, int]:
        shard, local = split_key(key)
        if shard >= self.shard_count:
            from tunetrace.errors import ReferenceNotFoundError

            raise ReferenceNotFoundError(f"no reference with key {key}")
        return shard, local

    def close(self) -> None:
        """Close the shards (and the cluster connection this catalogue made)."""
        self.shards.close()

    def __enter__(self) -> ShardedCatalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _globally(shard: int, record: ReferenceRecord) -> ReferenceRecord:
    return replace(record, key=global_key(shard, record.key))


# Functions run where a shard is open (in this process or on a Dask worker).


def _get(shard: OpenShard, reference_id: str) -> ReferenceRecord:
    return shard.catalogue.get(reference_id)


def _contains(shard: OpenShard, reference_id: str) -> bool:
    return shard.catalogue.contains(reference_id)


def _record_by_key(shard: OpenShard, key: int) -> ReferenceRecord:
    return shard.catalogue.record_by_key(key)


def _features(shard: OpenShard, key: int) -> Features:
    return shard.catalogue.features(key)


def _count(shard: OpenShard) -> int:
    return shard.catalogue.count()


def _list(shard: OpenShard, offset: int, limit: int) -> list[ReferenceRecord]:
    return shard.catalogue.list(offset=offset, limit=limit)


def _info(shard: OpenShard) -> dict[str, object]:
    return shard.catalogue.info()
