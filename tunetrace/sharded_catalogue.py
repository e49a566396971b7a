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
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from tunetrace.audio_files import AudioFiles
from tunetrace.errors import CatalogueError, ReferenceNotFoundError
from tunetrace.fingerprint.features import Features
from tunetrace.index.catalogue import ReferenceData, ReferenceRecord, validate_reference_id
from tunetrace.index.resharding import sweep_generations
from tunetrace.index.shard_layout import (
    GENERATION_MODULUS,
    ShardManifest,
    global_key,
    read_manifest,
    shard_of,
    split_key,
)
from tunetrace.index.shared_training import train_shared
from tunetrace.index.spectrum_codec import COMPACT_CODEC, SpectrumCodec
from tunetrace.index.writer_lock import WriterLock
from tunetrace.shard_access import LocalShards, OpenShard, ShardAccess, shard_name

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Shard generations kept open after a reshard for queries that started before it (the
#: previous generation's directories stay on disk until the next reshard).
KEEP_RETIRED = 1
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
        self._refresh_lock = threading.Lock()
        self._retired: list[ShardAccess] = []
        manifest = read_manifest(self.directory)
        self.view = ShardView(manifest, self._open_shards(manifest))

    # --------------------------------------------------------------------- shards

    def _open_shards(self, manifest: ShardManifest) -> ShardAccess:
        directories = manifest.shard_dirs(self.directory)
        if self.scheduler is not None:
            from tunetrace.shard_access import DaskShards

            return DaskShards(directories, self.scheduler, params=manifest.params)
        return LocalShards(directories, read_only=self.read_only, params=manifest.params)

    @property
    def manifest(self) -> ShardManifest:
        """The manifest as of the last :meth:`refresh`."""
        return self.view.manifest

    @property
    def shards(self) -> ShardAccess:
        """The shards as of the last :meth:`refresh`."""
        return self.view.access

    @property
    def params(self) -> Any:
        """The fingerprint parameters every shard was made with."""
        return self.view.manifest.params

    @property
    def shard_count(self) -> int:
        """Number of shards."""
        return self.view.manifest.count

    def shard_of(self, reference_id: str) -> int:
        """The shard that holds (or would hold) ``reference_id``."""
        return shard_of(reference_id, self.view.manifest.count)

    def refresh(self) -> bool:
        """Follow a reshard made by another process (re-read the manifest); whether it
        changed. Keys given before a reshard name no reference after it.

        Work under way keeps the :class:`ShardView` it started with (its shards stay open
        until :meth:`close`).
        """
        manifest = read_manifest(self.directory)
        with self._refresh_lock:
            # a slower thread's older read never takes the view back
            if manifest.generation <= self.view.manifest.generation:
                return False
            self._retired.append(self.view.access)
            while len(self._retired) > KEEP_RETIRED:  # no query is still on those
                self._retired.pop(0).close()
            self.view = ShardView(manifest, self._open_shards(manifest))
        logger.info("%s: now %d shards (generation %d)", self.directory, manifest.count,
                    manifest.generation)  # fmt: skip
        return True

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
        with self._write() as view:
            shard = view.shard_of(reference_id)
            record = _opened(view, shard).catalogue.add(
                reference_id, data, title=title, artist=artist, isrc=isrc,
                source_path=source_path, replace=replace, save_index=save_index,
            )  # fmt: skip
            return view.globally(shard, record)

    def remove(self, reference_id: str) -> None:
        """Delete a reference from its shard.

        Raises
        ------
        ReferenceNotFoundError
        """
        validate_reference_id(reference_id)
        with self._write() as view:
            _opened(view, view.shard_of(reference_id)).catalogue.remove(reference_id)

    def save_index(self) -> None:
        """Publish every opened shard's index (after batch adds)."""
        with self._write() as view:
            assert isinstance(view.access, LocalShards)
            for shard in view.access.opened():  # only shards written to have anything new
                shard.catalogue.save_index()

    def rebuild_index(self, spec: Any = None) -> list[Any]:
        """Rebuild every shard's vector index (see
        :meth:`tunetrace.index.catalogue.Catalogue.rebuild_index`); one index per shard.

        Kinds that need training (IVF) are trained once, for all shards, as one catalogue of
        all the references would be (:func:`~tunetrace.index.shared_training.train_shared`;
        ``auto`` and a list count left to choose follow the whole catalogue's size): every
        shard's index is then a piece of that one index, and a query's nearest patches
        merged over the shards are its. Empty shards get the new index too, for the
        references added to them later; with no references at all, nothing is built.

        Raises
        ------
        ValueError
            If the kind cannot be made for the catalogue's vectors.
        """
        with self._write() as view:
            shards = [_opened(view, shard).catalogue for shard in range(view.manifest.count)]
            if spec is None:  # the kind the largest shard records
                spec = max(shards, key=lambda shard: shard.count()).index_spec
            trained = train_shared(shards, spec)
            if trained is not None:
                return [shard.rebuild_index(spec, trained=trained) for shard in shards]
            if not any(shard.count() for shard in shards):
                return []  # nothing to build an index of (nor to train one on)
            # a kind without training: empty shards too, or they would keep an earlier index
            # (and its training) for the references added to them later
            return [shard.rebuild_index(spec) for shard in shards]

    def legacy_count(self, codec: SpectrumCodec = COMPACT_CODEC) -> int:
        """References stored with another codec than ``codec``, over all shards.

        Parameters
        ----------
        codec : SpectrumCodec
            See :meth:`tunetrace.index.catalogue.Catalogue.legacy_count`.

        Returns
        -------
        count : int
        """
        view = self.view
        return sum(
            _opened(view, s).catalogue.legacy_count(codec) for s in range(view.manifest.count)
        )

    def migrate(self, **options: Any) -> int:
        """Rewrite every shard in the compact format (see
        :meth:`tunetrace.index.catalogue.Catalogue.migrate`); references rewritten."""
        with self._write() as view:
            return sum(
                _opened(view, shard).catalogue.migrate(**options)
                for shard in range(view.manifest.count)
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[ShardView]:
        """Hold the sharded directory's writer lock, with the manifest re-read under it (a
        reshard may have finished since); yields the view to write to."""
        if self.read_only:
            raise CatalogueError(f"catalogue {self.directory} was opened read-only")
        with self._writer_lock:
            self.refresh()
            if not self._swept:  # what a crashed reshard left behind
                sweep_generations(self.directory, self.manifest)
                self._swept = True
            yield self.view

    # --------------------------------------------------------------------- reads

    def get(self, reference_id: str) -> ReferenceRecord:
        """Metadata of one reference (its ``key`` is unique across shards).

        Raises
        ------
        ReferenceNotFoundError
        """
        validate_reference_id(reference_id)
        self.refresh()
        view = self.view
        shard = view.shard_of(reference_id)
        return view.globally(shard, view.access.call(shard, _get, reference_id))

    def contains(self, reference_id: str) -> bool:
        """Whether a reference with this id exists."""
        validate_reference_id(reference_id)
        self.refresh()
        view = self.view
        return bool(view.access.call(view.shard_of(reference_id), _contains, reference_id))

    def record_by_key(self, key: int) -> ReferenceRecord:
        """Metadata of the reference with (global) ``key``."""
        view = self.view
        shard, local = view.split_key(key)
        return view.globally(shard, view.access.call(shard, _record_by_key, local))

    def features(self, key: int, *, whole: bool = True) -> Features:
        """Stored features of the reference with (global) ``key`` (``whole``: see
        :meth:`~tunetrace.index.catalogue.Catalogue.features`; features sent from another
        process arrive whole)."""
        view = self.view
        shard, local = view.split_key(key)
        return view.access.call(shard, _features, local, whole)

    def count(self) -> int:
        """Number of references in all shards."""
        self.refresh()
        view = self.view
        return sum(view.access.call_all(_count, [()] * view.manifest.count))

    def list(self, *, offset: int = 0, limit: int = 100) -> list[ReferenceRecord]:
        """References of all shards ordered by id (a merge of each shard's order).

        As SQLite does: a negative ``offset`` counts as 0, a negative ``limit`` as no limit.
        """
        offset = max(0, offset)
        if limit < 0:
            limit = 2**62
        self.refresh()
        view = self.view
        merged = heapq.merge(
            *(_listed(view, shard) for shard in range(view.manifest.count)),
            key=lambda record: record.reference_id,
        )
        out = []
        for number, record in enumerate(merged):
            if number >= offset + limit:
                break
            if number >= offset:
                out.append(record)
        return out

    def snapshot(self, read: Callable[[ShardedCatalogue], T]) -> T:
        """Run ``read(self)``. Each shard answers from its own consistent state; a write to
        another shard between two of ``read``'s calls may show (shards share no snapshot)."""
        return read(self)

    def info(self) -> dict[str, object]:
        """Totals over the shards and one entry per shard (``shards``)."""
        self.refresh()
        view = self.view
        parts: list[dict[str, Any]] = view.access.call_all(_info, [()] * view.manifest.count)
        per_shard = [
            {
                "shard": shard_name(directory),
                "references": part["references"],
                "audio_hours": part["audio_hours"],
                "vectors": part["vectors"],
                "index_kind": part["index_kind"],
                "size_on_disk_bytes": part["size_on_disk_bytes"],
            }
            for directory, part in zip(view.manifest.shard_dirs(self.directory), parts, strict=True)
        ]
        hours = sum(float(p["audio_hours"]) for p in parts)
        size = sum(int(p["size_on_disk_bytes"]) for p in parts)
        return {
            "catalogue": str(self.directory),
            "sharded": True,
            "shard_count": view.manifest.count,
            "shard_generation": view.manifest.generation,
            "references": sum(int(p["references"]) for p in parts),
            "audio_hours": round(hours, 3),
            "vectors": sum(int(p["vectors"]) for p in parts),
            "size_on_disk_bytes": size,
            "mb_per_audio_hour": round(size / 1e6 / hours, 3) if hours else None,
            "params_digest": self.params.digest(),
            "damaged_references": sorted(
                {str(i) for part in parts for i in part["damaged_references"]}
            ),
            "shards": per_shard,
            "params": self.params.to_dict(),
        }

    def close(self) -> None:
        """Close the shards (and the cluster connection this catalogue made)."""
        for access in [*self._retired, self.view.access]:
            access.close()
        self._retired.clear()

    def __enter__(self) -> ShardedCatalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ShardView:
    """One generation of a sharded catalogue: its manifest and its opened shards. A query
    takes the view once and uses it throughout, whatever a concurrent refresh does."""

    manifest: ShardManifest
    access: ShardAccess

    def shard_of(self, reference_id: str) -> int:
        """The shard that holds (or would hold) ``reference_id``."""
        return shard_of(reference_id, self.manifest.count)

    def global_key(self, shard: int, local_key: int) -> int:
        """A key unique across this generation's shards
        (:func:`~tunetrace.index.shard_layout.global_key`)."""
        return global_key(shard, local_key, self.manifest.generation)

    def split_key(self, key: int) -> tuple[int, int]:
        """``(shard, the shard's own key)`` of a key this view gave.

        Raises
        ------
        ReferenceNotFoundError
            If the key names no shard, or was given by another generation (before a reshard).
        """
        shard, local, generation = split_key(key)
        if (
            shard >= self.manifest.count
            or generation != self.manifest.generation % GENERATION_MODULUS
        ):
            raise ReferenceNotFoundError(
                f"no reference with key {key} (the catalogue may have been resharded since)"
            )
        return shard, local

    def globally(self, shard: int, record: ReferenceRecord) -> ReferenceRecord:
        """A shard's record with its global key."""
        return replace(record, key=self.global_key(shard, record.key))


def _opened(view: ShardView, shard: int) -> OpenShard:
    if not isinstance(view.access, LocalShards):
        raise CatalogueError("shards on a Dask cluster are not opened in this process")
    return view.access.shard(shard)


def _listed(view: ShardView, shard: int) -> Iterator[ReferenceRecord]:
    start = 0
    while page := view.access.call(shard, _list, start, LIST_PAGE):
        for record in page:
            yield view.globally(shard, record)
        start += len(page)
        if len(page) < LIST_PAGE:
            return


# Functions run where a shard is open (in this process or on a Dask worker).


def _get(shard: OpenShard, reference_id: str) -> ReferenceRecord:
    return shard.catalogue.get(reference_id)


def _contains(shard: OpenShard, reference_id: str) -> bool:
    return shard.catalogue.contains(reference_id)


def _record_by_key(shard: OpenShard, key: int) -> ReferenceRecord:
    return shard.catalogue.record_by_key(key)


def _features(shard: OpenShard, key: int, whole: bool) -> Features:
    return shard.catalogue.features(key, whole=whole)


def _count(shard: OpenShard) -> int:
    return shard.catalogue.count()


def _list(shard: OpenShard, offset: int, limit: int) -> list[ReferenceRecord]:
    return shard.catalogue.list(offset=offset, limit=limit)


def _info(shard: OpenShard) -> dict[str, object]:
    return shard.catalogue.info()
