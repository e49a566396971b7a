"""Making a sharded catalogue, and changing its number of shards, without a moment when readers
see a partial catalogue.

Both work the same way: a new generation of shard catalogues is filled beside what readers use
(references copied as stored, never decoded again), each shard's index is built and published,
and only then is the manifest replaced (one atomic rename, see
:func:`~tunetrace.index.shard_layout.write_manifest`). Readers keep searching the old shards
until they next look at the manifest. A crash before the rename leaves the old catalogue as it
was and a half-made generation that the next run deletes; a crash after it leaves old shard
directories that the next run (or :func:`sweep_generations`) deletes. Writers to the sharded
catalogue hold its directory's writer lock, so no reference is added to shards that are being
copied.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import DATABASE_NAME, Catalogue
from tunetrace.index.shard_layout import (
    GENERATION_MARK,
    MANIFEST_NAME,
    ShardManifest,
    fsync_directory,
    generation_dir_name,
    is_sharded,
    new_manifest,
    read_manifest,
    shard_of,
    write_manifest,
)
from tunetrace.index.shared_training import train_shared
from tunetrace.index.vector_index import IndexSpec
from tunetrace.index.writer_lock import LOCK_NAME, WriterLock

from tunetrace.errors import CatalogueError, NotShardableError

logger = logging.getLogger(__name__)

#: References copied per read from a source catalogue.
COPY_BATCH = 200

#: Test hook: called with the number of references copied so far, after each one.
Progress = Callable[[int], None]


def init_sharded(
    directory: str | Path,
    shards: int,
    *,
    params: FingerprintParams | None = None,
    progress: Progress | None = None,
) -> ShardManifest:
    """Make ``directory`` a sharded catalogue of ``shards`` shards.

    An empty or missing directory gets empty shards; a directory holding an (unsharded)
    catalogue has its references moved into the shards, and its own files are removed once
    the manifest is in place.

    Parameters
    ----------
    directory : str or Path
    shards : int
        1 to :data:`~tunetrace.index.shard_layout.MAX_SHARDS`.
    params : FingerprintParams, optional
        Fingerprint parameters of a new catalogue (an existing one keeps its own).
    progress : callable, optional
        Called with the count of references copied, after each one.

    Returns
    -------
    manifest : ShardManifest

    Raises
    ------
    NotShardableError
        If the directory is already sharded, is a file, or holds other files.
    CatalogueError
        If the shards cannot be written.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotShardableError(f"{directory} exists and is not a directory")
    with _storage_errors(directory, "shard"):
        directory.mkdir(parents=True, exist_ok=True)
        return _init_locked(directory, shards, params, progress)


def _init_locked(
    directory: Path, shards: int, params: FingerprintParams | None, progress: Progress | None
) -> ShardManifest:
    with WriterLock(directory):
        if is_sharded(directory):
            raise NotShardableError(
                f"{directory} is already a sharded catalogue; 'tunetrace shards split' changes "
                "its number of shards"
            )
        _check_only_a_catalogue(directory)
        source = None
        if (directory / DATABASE_NAME).exists():
            source = Catalogue(directory, read_only=True)
            params = source.params
        try:
            manifest = new_manifest(
                1, shards, params or FingerprintParams(), converted=source is not None
            )
            _fill_generation(directory, manifest, [source] if source else [], progress)
        finally:
            if source is not None:
                source.close()
        write_manifest(directory, manifest)
        sweep_generations(directory, manifest)
    logger.info("%s: sharded catalogue of %d shards", directory, shards)
    return manifest


def reshard(
    directory: str | Path, shards: int, *, progress: Progress | None = None
) -> ShardManifest:
    """Move a sharded catalogue's references into ``shards`` new shards.

    Readers keep answering from the old shards while the new ones are filled and indexed;
    the switch is one atomic rename of the manifest. Crash-safe: rerun after a crash and it
    starts again from the old shards, which are untouched until the switch.

    Parameters
    ----------
    directory : str or Path
    shards : int
    progress : callable, optional
        Called with the count of references copied, after each one.

    Returns
    -------
    manifest : ShardManifest
        The new manifest.
    """
    directory = Path(directory)
    with _storage_errors(directory, "reshard"), WriterLock(directory):
        old = read_manifest(directory)
        sweep_generations(directory, old)
        manifest = new_manifest(old.generation + 1, shards, old.params, converted=old.converted)
        sources = []
        try:
            for shard_dir in old.shard_dirs(directory):
                sources.append(Catalogue(shard_dir, read_only=True))
            _fill_generation(directory, manifest, sources, progress)
        finally:
            for source in sources:
                source.close()
        write_manifest(directory, manifest)
        sweep_generations(directory, manifest)
    logger.info("%s: %d shards -> %d", directory, old.count, shards)
    return manifest


@contextlib.contextmanager
def _storage_errors(directory: Path, verb: str) -> Iterator[None]:
    """A failing disk (an I/O error, no space left) as a :class:`CatalogueError`: the old
    catalogue is whole, and running the command again carries on."""
    try:
        yield
    except OSError as exc:
        raise CatalogueError(
            f"could not {verb} {directory}: {exc.strerror or exc}; the catalogue is as it was "
            "before (or already done): run the command again"
        ) from exc


def sweep_generations(directory: Path, manifest: ShardManifest) -> list[str]:
    """Delete shard generations that are neither the manifest's nor the one before it (the
    previous one stays, so that queries under way when a reshard switched can finish), and
    leftovers of a crashed reshard; call with the writer lock held.

    Only folders marked as shard generations are deleted. The files of the unsharded
    catalogue the directory held are deleted if the manifest says its references were moved
    into the shards (a kill can leave them); other unsharded files are an error.

    Raises
    ------
    CatalogueError
        If an unsharded catalogue sits beside the shards that was never moved into them.
    """
    if (directory / DATABASE_NAME).exists():
        if not manifest.converted:
            raise CatalogueError(
                f"{directory} holds an unsharded catalogue beside its shards (made while the "
                f"shard manifest was missing?); move {DATABASE_NAME} away, then add its "
                "references to the sharded catalogue"
            )
        _remove_unsharded_files(directory)
    keep = {Path(shard).parts[0] for shard in manifest.shards}
    keep.add(generation_dir_name(manifest.generation - 1))
    removed = []
    for entry in sorted(directory.glob("g[0-9]*")):
        marked = (entry / GENERATION_MARK).is_file()
        if entry.is_dir() and marked and entry.name not in keep and entry.name[1:].isdigit():
            shutil.rmtree(entry)
            removed.append(entry.name)
    if removed:
        fsync_directory(directory)
        logger.info("%s: removed unused shard generations %s", directory, ", ".join(removed))
    return removed


def _fill_generation(
    directory: Path,
    manifest: ShardManifest,
    sources: list[Catalogue],
    progress: Progress | None,
) -> None:
    """Create the manifest's shard catalogues and copy every source reference into its shard,
    then build and publish each shard's index like the sources'."""
    folder = directory / generation_dir_name(manifest.generation)
    if folder.exists():  # a crashed attempt's leftovers
        if not (folder / GENERATION_MARK).is_file():
            raise CatalogueError(f"{folder} exists and is not a generation of shards")
        shutil.rmtree(folder)
    folder.mkdir()
    (folder / GENERATION_MARK).write_text("shard catalogues of one generation\n")
    targets = [
        Catalogue(d, params=manifest.params, create=True) for d in manifest.shard_dirs(directory)
    ]
    try:
        if sources:  # the sources' packing stays the catalogue's
            packing = sources[0].spectrum_codec
            for target in targets:
                target.choose_spectrum_codec(packing)
        for copied, (record, data) in enumerate(_all_references(sources), start=1):
            target = targets[shard_of(record.reference_id, manifest.count)]
            target.add(
                record.reference_id,
                data,
                title=record.title,
                artist=record.artist,
                isrc=record.isrc,
                source_path=record.source_path,
                save_index=False,
                added_at=record.added_at,
            )
            if progress is not None:
                progress(copied)
        largest = max(sources, key=lambda source: source.count(), default=None)
        spec = largest.index_spec if largest is not None else IndexSpec()
        # the sources' kind and settings, IVF lists sized for the whole catalogue and
        # trained once for all the new shards
        trained = train_shared(targets, replace(spec, nlist=0))  # none for untrained kinds
        for target in targets:
            if trained is not None:
                target.rebuild_index(replace(spec, nlist=0), trained=trained)
            elif spec == IndexSpec() or target.count() == 0:
                target.save_index()  # the default index, built as the references went in
            else:  # a kind without training (HNSW), or too few vectors to decide on one
                target.rebuild_index(replace(spec, nlist=0))
    finally:
        for target in targets:
            target.close()
    fsync_directory(folder)
    fsync_directory(directory)


def _all_references(sources: list[Catalogue]) -> Iterator[tuple]:
    for source in sources:
        after = 0
        while batch := source.stored_references(after_key=after, limit=COPY_BATCH):
            yield from batch
            after = batch[-1][0].key


def _check_only_a_catalogue(directory: Path) -> None:
    """Refuse to shard a directory holding anything but an unsharded catalogue's files."""
    others = [
        entry.name
        for entry in directory.iterdir()
        if not (
            entry.name.startswith(DATABASE_NAME)
            or entry.name.startswith("vectors-")
            or entry.name in (LOCK_NAME, f".{MANIFEST_NAME}.tmp")
            or (entry / GENERATION_MARK).is_file()  # a killed attempt's shards
        )
    ]
    if others:
        raise NotShardableError(
            f"{directory} holds other files ({', '.join(sorted(others)[:3])}"
            f"{' ...' if len(others) > 3 else ''}); shard an empty directory or a catalogue's"
        )


def _remove_unsharded_files(directory: Path) -> None:
    """Delete an unsharded catalogue's files from a directory that is now sharded."""
    for entry in directory.iterdir():
        if entry.name == MANIFEST_NAME or entry.is_dir():
            continue
        if entry.name.startswith(DATABASE_NAME) or entry.name.startswith("vectors-"):
            entry.unlink()
    fsync_directory(directory)
