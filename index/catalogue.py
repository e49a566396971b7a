"""A catalogue directory: SQLite (source of truth) plus a derived FAISS index.

Layout of ``DIR``::

    catalogue.sqlite          references, their metadata, stored spectra and patch vectors
    vectors-G-TOKEN.faiss     FAISS index of all patch vectors, as of generation G
    catalogue.lock            held by the one process writing at a time

Every change is one SQLite transaction (WAL mode, synchronous) that bumps the catalogue
*generation* and, in the same transaction, names the index file that reflects it (see
:mod:`tunetrace.index.publication`): the file is written and renamed into place first, so the
commit publishes rows and index together. A write that fails or is killed anywhere leaves the
previous state whole; files it left unnamed are swept by the next writer. A write that fails
in this process also drops everything it changed in memory.

Readers (API and scan workers) never build or write an index: they search the published file
and, while a batch add is under way, an in-memory exact index of the references added since.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FEATURE_VERSION, FingerprintParams
from tunetrace.index.compact_vectors import VectorGrid, packaged_grid
from tunetrace.index.ids import PATCH_BITS, vector_ids
from tunetrace.index.projection import packaged_noise
from tunetrace.index.publication import (
    LEGACY_INDEX_NAME,
    Publication,
    new_index_file_name,
    read_publication,
    sweep_stale_files,
    write_publication,
)
from tunetrace.index.shard_layout import GENERATION_MARK, MANIFEST_NAME, is_sharded
from tunetrace.index.spectrum_codec import (
    COMPACT_CODEC,
    LEGACY_CODEC,
    SpectrumCodec,
    codec_named,
)
from tunetrace.index.storage import (
    patch_count,
    stored_features,
    stored_reference_vectors,
    vectors_from_bytes,
    vectors_to_bytes,
)
from tunetrace.index.training_sample import content_keys
from tunetrace.index.vector_index import IndexSpec, LayeredIndex, ListAssignment, VectorIndex
from tunetrace.index.writer_lock import WriterLock

from tunetrace.errors import (
    CatalogueError,
    CatalogueNotFoundError,
    DamagedReferenceError,
    DuplicateReferenceError,
    IncompatibleCatalogueError,
    InvalidReferenceIdError,
    ReferenceNotFoundError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: Reference ids: no C0/C1 control characters, 1-200 of anything else.
REFERENCE_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1,200}$"
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: Version of the on-disk layout (tables, blobs). Bump on incompatible change.
FORMAT_VERSION = 2
#: Earlier layouts this tunetrace still reads (opened for writing, they are upgraded).
READABLE_FORMAT_VERSIONS = (1, FORMAT_VERSION)
DATABASE_NAME = "catalogue.sqlite"
MAX_ID_LENGTH = 200
#: Read-only catalogues memory-map index files at least this big (one copy shared by all
#: worker processes) and read smaller ones into memory, where they search faster. Flat and
#: IVF-Flat files are always read in: their compact vectors are widened in memory.
SHARED_INDEX_MIN_BYTES = 256 * 2**20
#: References :meth:`Catalogue.migrate` rewrites per transaction.
MIGRATION_BATCH = 64


def _checked_pack(codec: SpectrumCodec, codes: np.ndarray, reference_id: str) -> bytes:
    """``codes`` packed by ``codec``, read back before a row's earlier blob is replaced."""
    n_bins, n_frames = codes.shape
    try:
        packed = codec.pack(codes)
        same = np.array_equal(codec.codes(packed, n_bins, n_frames), codes)
    except ValueError as exc:
        raise CatalogueError(
            f"reference {reference_id!r} cannot be stored as {codec.name} ({exc}); it is left "
            "as it was"
        ) from exc
    if not same:
        raise CatalogueError(
            f"reference {reference_id!r} does not read back as stored by {codec.name}; it is "
            "left as it was"
        )
    return packed


def _another_codec(name: object, codec: SpectrumCodec) -> bool:
    """Whether a row's codec name is a readable codec other than ``codec`` (a damaged name
    is no format: reading that row says so)."""
    if name == codec.name:
        return False
    try:
        codec_named(name)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


#: Frame counts of more than this many seconds (a day) are damage, not a reference.
MAX_STORED_S = 24 * 3600

#: A process creating a catalogue leaves its database empty for an instant (between opening
#: and its first write); a creator finding one empty for longer takes it for damage.
EMPTY_DATABASE_GRACE_S = 10.0

#: Default budget of a catalogue's cache of reference features.
FEATURES_CACHE_BYTES = 2**30

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refs (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT,
    artist TEXT,
    isrc TEXT,
    source_path TEXT,
    duration_s REAL NOT NULL,
    n_frames INTEGER NOT NULL,
    added_at TEXT NOT NULL,
    spectrum BLOB NOT NULL,
    spectrum_scale REAL NOT NULL,
    vectors BLOB NOT NULL,
    spectrum_codec TEXT NOT NULL DEFAULT 'u8'
);
"""
#: Format 1 had no codec column (every spectrum was ``u8``, every row kept its vectors).
_UPGRADE_FROM_FORMAT_1 = """
ALTER TABLE refs ADD COLUMN spectrum_codec TEXT NOT NULL DEFAULT 'u8';
"""
_CODEC_INDEX = "CREATE INDEX IF NOT EXISTS refs_by_codec ON refs (spectrum_codec)"


@dataclass(frozen=True)
class ReferenceRecord:
    """What a reference is, without its feature data."""

    key: int
    reference_id: str
    title: str | None
    artist: str | None
    isrc: str | None
    source_path: str | None
    duration_s: float
    added_at: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "id": self.reference_id,
            "title": self.title,
            "artist": self.artist,
            "isrc": self.isrc,
            "source_path": self.source_path,
            "duration_s": round(self.duration_s, 2),
            "added_at": self.added_at,
        }


@dataclass(frozen=True)
class ReferenceData:
    """A fingerprinted reference ready to be stored (computed in any process).

    Attributes
    ----------
    spectrum_codes : bytes
        The spectrum as ``spectrum_codec`` stores it.
    spectrum_scale : float
    n_frames : int
    duration_s : float
    vectors : np.ndarray [shape=(n_patches, embedding_dim), dtype=float32]
        The patch vectors of the *stored* spectrum
        (:func:`~tunetrace.index.storage.stored_reference_vectors`).
    spectrum_codec : str
        Name of the :class:`~tunetrace.index.spectrum_codec.SpectrumCodec`.
    """

    spectrum_codes: bytes
    spectrum_scale: float
    n_frames: int
    duration_s: float
    vectors: np.ndarray
    spectrum_codec: str = COMPACT_CODEC.name


def validate_reference_id(reference_id: str) -> str:
    """Check the id rules: 1-200 characters, none of them a control character (``/`` allowed).

    The same rule is :data:`REFERENCE_ID_PATTERN`, for schemas.

    Raises
    ------
    InvalidReferenceIdError
    """
    if not isinstance(reference_id, str) or not 1 <= len(reference_id) <= MAX_ID_LENGTH:
        raise InvalidReferenceIdError(
            f"reference id must be 1-{MAX_ID_LENGTH} characters, got {len(str(reference_id))}"
        )
    if _CONTROL_CHARACTER.search(reference_id):
        raise InvalidReferenceIdError(f"reference id {reference_id!r} contains control characters")
    try:
        reference_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidReferenceIdError(
            f"reference id {reference_id!r} is not valid text (undecodable bytes)"
        ) from None
    return reference_id


class Catalogue:
    """Open (or create) the catalogue in ``directory``.

    Parameters
    ----------
    directory : str or Path
    params : FingerprintParams, optional
        Parameters for a new catalogue; an existing one must have been made with equal
        parameters if given (``None``: use the stored ones).
    create : bool
        Create the catalogue if it does not exist.
    read_only : bool
        For processes that only match (API and scan workers): writes are refused, and a
        vector index file of at least ``SHARED_INDEX_MIN_BYTES`` is memory-mapped, so all
        such processes share one copy of it (smaller ones, and flat and IVF-Flat files,
        which are widened to float32, are read into memory).
    features_cache_bytes : int
        Most bytes of reference features kept decoded between matches (least recently used
        dropped first). Rebuilding a reference's features from its stored spectrum costs
        about a millisecond for a 3-min track; a reference takes about 73 MB per hour of
        audio, so the default 1 GiB holds about 14 hours.

    Raises
    ------
    CatalogueError
        If the directory holds no catalogue and ``create`` is false.
    IncompatibleCatalogueError
        If the catalogue has another format version or other parameters.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        params: FingerprintParams | None = None,
        create: bool = False,
        read_only: bool = False,
        features_cache_bytes: int = FEATURES_CACHE_BYTES,
    ) -> None:
        self.directory = Path(directory)
        database = self.directory / DATABASE_NAME
        if is_sharded(self.directory):
            raise CatalogueError(
                f"{self.directory} is a sharded catalogue: open it with tunetrace.Catalogue "
                "or tunetrace.opening.open_catalogue"
            )
        if not database.exists() and any(self.directory.glob(f"g*/{GENERATION_MARK}")):
            raise CatalogueError(
                f"{self.directory} holds shards but no shard manifest ({MANIFEST_NAME}): "
                "restore it from a backup; nothing was created"
            )
        if not database.exists():
            if not create:
                raise CatalogueNotFoundError(
                    f"no catalogue at {self.directory} (add references first to create one)"
                )
            if self.directory.exists() and not self.directory.is_dir():
                raise CatalogueError(f"{self.directory} exists and is not a directory")
            self.directory.mkdir(parents=True, exist_ok=True)
        elif _empty_and_settled(database, create=create):
            # what a crash before the first write of a new catalogue, or a damaged copy,
            # leaves: no one may turn it into a new, empty catalogue that answers "no copy"
            raise CatalogueError(
                f"{database} is empty, not a catalogue: restore it from a backup, or remove "
                "it and add the references again"
            )
        self._lock = threading.RLock()
        try:
            self._db = self._connect(database, read_only=read_only)
        except sqlite3.DatabaseError as exc:
            raise CatalogueError(f"{database} is not a readable catalogue: {exc}") from exc
        self.read_only = read_only
        # Whether the refs table has its codec column (format 1 had none: every row was u8).
        self._has_codec_column = True
        try:
            self.params = self._check_or_store_params(params)
            self._warn_if_legacy_rows()
        except sqlite3.Error as exc:  # an I/O error or a full disk while creating it
            raise CatalogueError(f"could not open {database}: {exc}") from exc

        self._features_cache: OrderedDict[int, Features] = OrderedDict()
        self._features_cache_bytes = 0
        self.features_cache_bytes = features_cache_bytes
        self._writer_lock = WriterLock(self.directory)
        # A writer's exact index of what SQLite holds at ``_index_generation``.
        self._index: VectorIndex | None = None
        self._index_generation = -1
        # What searches use, as of ``_searcher_generation``, and the published file under it.
        self._searcher: LayeredIndex | None = None
        # the shared training the published index is built on, as last read: (that index,
        # held weakly, and the training or None)
        self._training_read: tuple[weakref.ref[VectorIndex], VectorIndex | None] | None = None
        self._searcher_generation = -1
        self._searcher_file: str | None = None
        self._searcher_delta_key = 0

    def _connect(self, database: Path, *, read_only: bool) -> sqlite3.Connection:
        """Open the database (WAL, full sync) and make sure its tables exist.

        A reader of a catalogue on a read-only file system cannot make SQLite's shared-memory
        and log files beside it; there it opens the database as immutable, which reads it
        without them (nothing can write there, so nothing changes under it), unless a log
        file holds changes the database does not have yet. A folder this user merely may not
        write is refused with the reason: another user may be writing the catalogue, and an
        immutable reader would not see it.

        Raises
        ------
        sqlite3.DatabaseError
            If the database cannot be opened (or, on a read-only file system, its log holds
            changes that only a writer can bring into it).
        """
        try:
            db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            db.executescript(_SCHEMA)
            return db
        except sqlite3.OperationalError as exc:
            if not read_only or os.access(database.parent, os.W_OK):
                raise
            if not _on_read_only_file_system(database):
                raise sqlite3.OperationalError(
                    f"{exc}: this user cannot write the folder {database.parent}, where "
                    "SQLite keeps its lock and log files; give it write access, or mount the "
                    "folder read-only"
                ) from exc
            log = database.with_name(database.name + "-wal")
            if log.exists() and log.stat().st_size > 0:
                raise sqlite3.OperationalError(
                    f"{log} holds changes not yet in the database, and this read-only file "
                    "system lets no one write them in; open the catalogue once where it can "
                    "be written"
                ) from exc
        logger.info("%s is read-only: reading the catalogue as it is", database.parent)
        uri = f"{database.resolve().as_uri()}?mode=ro&immutable=1"
        return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)

    # ----------------------------------------------------------------- metadata
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _check_or_store_params(self, params: FingerprintParams | None) -> FingerprintParams:
        stored_version = self._meta("format_version")
        if stored_version is None:
            chosen = params or FingerprintParams()
            with self._transaction():
                # Another process may have created the catalogue (and written to it) since.
                stored_version = self._meta("format_version")
                if stored_version is None:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("format_version", str(FORMAT_VERSION)),
                            ("feature_version", str(FEATURE_VERSION)),
                            ("params", json.dumps(chosen.to_dict(), sort_keys=True)),
                            ("generation", "0"),
                            ("created_at", _now()),
                        ],
                    )
                    self._db.execute(_CODEC_INDEX)
            if stored_version is None:
                return chosen
        if (
            int(stored_version) not in READABLE_FORMAT_VERSIONS
            or int(self._meta("feature_version") or -1) != FEATURE_VERSION
        ):
            raise IncompatibleCatalogueError(
                f"catalogue {self.directory} has format {stored_version} / features "
                f"{self._meta('feature_version')}; this tunetrace reads format {FORMAT_VERSION} / "
                f"features {FEATURE_VERSION}. Rebuild it from the original audio."
            )
        try:
            stored = FingerprintParams.from_dict(json.loads(self._meta("params") or "{}"))
        except (TypeError, ValueError) as exc:
            raise IncompatibleCatalogueError(
                f"catalogue {self.directory} was made by another version of tunetrace ({exc}); "
                "rebuild it from the original audio"
            ) from exc
        if params is not None and params != stored:
            raise IncompatibleCatalogueError(
                f"catalogue {self.directory} was made with other fingerprint parameters "
                f"(digest {stored.digest()}, asked for {params.digest()})"
            )
        if int(stored_version) < FORMAT_VERSION:
            self._upgrade_layout()
        return stored

    def _upgrade_layout(self) -> None:
        """Give a format-1 catalogue its codec column (one transaction; its rows keep their
        ``u8`` spectra and stored vectors until :meth:`migrate`). Read-only, it is read as
        it is."""
        if self.read_only:
            self._has_codec_column = False  # until a writer upgrades it (see _codec_column)
            return
        try:
            with self._transaction():
                if int(self._meta("format_version") or 0) < FORMAT_VERSION:
                    if not self._table_has_codec_column():
                        self._db.execute(_UPGRADE_FROM_FORMAT_1)
                    self._db.execute(_CODEC_INDEX)
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('format_version', ?)",
                        (str(FORMAT_VERSION),),
                    )
        except sqlite3.Error as exc:
            raise CatalogueError(
                f"could not upgrade {self.directory} to format {FORMAT_VERSION}: {exc}"
            ) from exc
        logger.info("catalogue %s upgraded to format %d", self.directory, FORMAT_VERSION)

    @property
    def _codec_column(self) -> str:
        """SQL for a row's codec name: its column, or ``'u8'`` in a format-1 catalogue read
        as it is (checked again on every use until a writer adds the column)."""
        if not self._has_codec_column:
            self._has_codec_column = self._table_has_codec_column()
        return "spectrum_codec" if self._has_codec_column else f"'{LEGACY_CODEC.name}'"

    def _table_has_codec_column(self) -> bool:
        return "spectrum_codec" in {row[1] for row in self._db.execute("PRAGMA table_info(refs)")}

    @property
    def _stored_vector_columns(self) -> str:
        """SQL for what :meth:`_stored_vectors` reads of a row (the spectrum only when the
        row keeps no vectors)."""
        return (
            "vectors, CASE WHEN length(vectors) = 0 THEN spectrum END, spectrum_scale,"
            f" {self._codec_column}, n_frames"
        )

    def legacy_count(self, codec: SpectrumCodec = COMPACT_CODEC) -> int:
        """Number of references stored with a readable codec other than ``codec``: those
        :meth:`migrate` to ``codec`` rewrites.

        Parameters
        ----------
        codec : SpectrumCodec
            Default: the compact codec new references get.

        Returns
        -------
        count : int
        """
        return sum(
            count for name, count in self._rows_by_codec().items() if _another_codec(name, codec)
        )

    def _rows_by_codec(self) -> dict[str, int]:
        """Number of references stored by each codec name (as the rows name them)."""
        counts = self._db.execute(
            f"SELECT {self._codec_column}, count(*) FROM refs GROUP BY 1"
        ).fetchall()
        return {name: int(count) for name, count in counts}

    def _warn_if_legacy_rows(self) -> None:
        if self._meta("index_outdated") is not None:
            logger.warning(
                "the vector index of %s was made before its spectra were rewritten (a "
                "migration stopped early): 'tunetrace index migrate -c %s' finishes it",
                self.directory, self.directory,
            )  # fmt: skip
        # rows of another compact packing are a choice (index migrate --codec): no warning
        legacy = self._rows_by_codec().get(LEGACY_CODEC.name, 0)
        if legacy:
            logger.warning(
                "catalogue %s keeps %d reference(s) in the earlier format, about 5 times "
                "larger: 'tunetrace index migrate -c %s' rewrites them compactly",
                self.directory, legacy, self.directory,
            )  # fmt: skip

    @property
    def generation(self) -> int:
        """Counter bumped by every change; readers use it to notice changes."""
        return int(self._meta("generation") or 0)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write: the writer lock, ``BEGIN IMMEDIATE`` ... ``COMMIT``, then a sweep.

        On any failure (the write's own, or its COMMIT) the transaction is rolled back and
        everything the write changed in memory is dropped, to be re-read from SQLite.
        """
        self._writable()
        with self._lock, self._writer_lock:
            if is_sharded(self.directory):  # sharded since this process opened it
                raise CatalogueError(
                    f"{self.directory} was made a sharded catalogue after this process opened "
                    "it; open it again (nothing was written)"
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except (OSError, sqlite3.Error) as exc:  # disk full, I/O error
                self._abandon_write()
                raise CatalogueError(f"could not write to {self.directory}: {exc}") from exc
            except BaseException:
                self._abandon_write()
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._abandon_write()
                raise CatalogueError(
                    f"could not commit the change to {self.directory}: {exc}"
                ) from exc
            publication = read_publication(self._db)
            try:
                sweep_stale_files(self.directory, publication.file if publication else None)
            except OSError as exc:  # the change is committed; leftovers go next time
                logger.warning("could not sweep old index files in %s: %s", self.directory, exc)

    def _abandon_write(self) -> None:
        """Roll back the open transaction and forget the in-memory state it touched."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                logger.error("rollback failed in %s: %s", self.directory, exc)
        self._index, self._index_generation = None, -1
        self._searcher, self._searcher_generation, self._searcher_file = None, -1, None
        self._forget_features()

    @property
    def spectrum_codec(self) -> SpectrumCodec:
        """The codec this catalogue packs new references' spectra with: the one its last
        :meth:`migrate` chose, else :data:`~tunetrace.index.spectrum_codec.COMPACT_CODEC`.
        A reference fingerprinted with another packing of the same codes is repacked as it
        is added."""
        name = self._meta("spectrum_codec")
        if name is None:
            return COMPACT_CODEC
        try:
            chosen = codec_named(name)
        except ValueError:
            chosen = None
        if chosen is None or not chosen.same_codes(COMPACT_CODEC):
            # named by a later tunetrace, or damaged: rows name their own codec anyway
            logger.warning("%s: packing %r is not one this tunetrace packs; using %s",
                           self.directory, name, COMPACT_CODEC.name)  # fmt: skip
            return COMPACT_CODEC
        return chosen

    def choose_spectrum_codec(self, codec: SpectrumCodec) -> None:
        """Record the codec references added from now on are packed with (one transaction;
        the stored rows stay as they are: :meth:`migrate` rewrites them).

        Parameters
        ----------
        codec : SpectrumCodec
            A packing of the codes new references get (``b5e0.7t``, ``b5e0.7j`` or
            ``b5e0.7z``).

        Raises
        ------
        ValueError
            If ``codec`` stores other codes (it would quantise new references otherwise).
        """
        if not codec.same_codes(COMPACT_CODEC):
            raise ValueError(
                f"{codec.name} is not a packing of the {COMPACT_CODEC.bits}-bit codes new "
                f"references get ({COMPACT_CODEC.name}, or the same codes packed otherwise)"
            )
        self._writable()
        with self._write():
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('spectrum_codec', ?)",
                (codec.name,),
            )

    # ----------------------------------------------------------------- writes
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
        added_at: str | None = None,
    ) -> ReferenceRecord:
        """Store a reference (one transaction) and index its vectors.

        Parameters
        ----------
        reference_id : str
        data : ReferenceData
        title, artist, isrc, source_path : str, optional
        replace : bool
            Replace an existing reference with this id instead of failing.
        save_index : bool
            Publish the index with this change. Batch adds publish once at the end
            (:meth:`save_index`); until then readers search the last published index plus
            the references added since.
        added_at : str, optional
            When the reference was first added (ISO 8601; default: now), for a reference
            moved from another catalogue.

        Raises
        ------
        DuplicateReferenceError
            If the id exists and ``replace`` is false.
        """
        validate_reference_id(reference_id)
        codec = codec_named(data.spectrum_codec)
        expected = patch_count(data.n_frames, self.params)
        if data.vectors.shape != (expected, self.params.embedding_dim):
            raise ValueError(
                f"{data.n_frames} frames make {expected} patch vectors of "
                f"{self.params.embedding_dim} values, not {data.vectors.shape}"
            )
        try:
            codes = codec.codes(data.spectrum_codes, self.params.n_bins, data.n_frames)
        except ValueError as exc:
            raise ValueError(f"the spectrum is not one {codec.name} stores: {exc}") from exc
        spectrum_blob = data.spectrum_codes
        chosen = self.spectrum_codec
        if codec != chosen and codec.compressed and codec.same_codes(chosen):
            spectrum_blob, codec = chosen.pack(codes), chosen  # packed as this catalogue packs
        # Compact rows derive their vectors from the stored spectrum; only the earlier
        # format keeps them (as float16) beside it.
        vector_blob = vectors_to_bytes(data.vectors) if codec == LEGACY_CODEC else b""
        with self._write():
            index = self._index_for_write()
            old = self._db.execute(
                "SELECT key, n_frames FROM refs WHERE id = ?", (reference_id,)
            ).fetchone()
            if old is not None and not replace:
                raise DuplicateReferenceError(
                    f"reference {reference_id!r} already exists (use replace to overwrite it)"
                )
            if old is not None:
                self._db.execute("DELETE FROM refs WHERE key = ?", (old[0],))
                index = self._forget(index, int(old[0]), old[1])
            cursor = self._db.execute(
                "INSERT INTO refs (id, title, artist, isrc, source_path, duration_s, n_frames,"
                " added_at, spectrum, spectrum_scale, vectors, spectrum_codec)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    reference_id,
                    title,
                    artist,
                    isrc,
                    source_path,
                    data.duration_s,
                    data.n_frames,
                    added_at or _now(),
                    spectrum_blob,
                    data.spectrum_scale,
                    vector_blob,
                    codec.name,
                ),
            )
            key = int(cursor.lastrowid or 0)
            self._no_longer_damaged(reference_id)
            # Index exactly what a rebuild from SQLite gives.
            stored = (
                vectors_from_bytes(vector_blob, self.params.embedding_dim)
                if vector_blob
                else np.asarray(data.vectors, dtype=np.float32)
            )
            index.add(stored, vector_ids(key, len(stored)))
            self._changed(index, publish=save_index)
        return self.get(reference_id)

    def remove(self, reference_id: str) -> None:
        """Delete a reference.

        Raises
        ------
        ReferenceNotFoundError
        """
        with self._write():
            index = self._index_for_write()
            row = self._db.execute(
                "SELECT key, n_frames FROM refs WHERE id = ?", (reference_id,)
            ).fetchone()
            if row is None:
                raise ReferenceNotFoundError(f"no reference {reference_id!r} in the catalogue")
            self._db.execute("DELETE FROM refs WHERE key = ?", (row[0],))
            index = self._forget(index, int(row[0]), row[1])
            self._changed(index, publish=True)

    def _forget(self, index: VectorIndex, key: int, n_frames: object) -> VectorIndex:
        """Drop a deleted reference from the index and caches (call after its DELETE).

        Graph indexes cannot remove vectors: they are built anew from what SQLite now holds.
        A damaged frame count (``n_frames`` as its row holds it) removes every id the
        reference could have. Returns the index to use from here on.
        """
        self._forget_features(key)
        if index.supports_removal:
            if self._plausible_frames(n_frames):
                index.remove(vector_ids(key, patch_count(int(n_frames), self.params)))
            else:
                index.remove_range(key << PATCH_BITS, (key + 1) << PATCH_BITS)
            return index
        return VectorIndex.build(
            self.params.embedding_dim,
            index.spec,
            *self._all_rows_vectors(),
            grid=self._grid_for(index.spec),
            trained=self._recorded_training(),
        )

    def _changed(self, index: VectorIndex, *, publish: bool) -> None:
        """Bump the generation for a change made in this transaction to ``index``'s state,
        and publish ``index`` with it if asked."""
        generation = self._bump_generation()
        self._index, self._index_generation = index, generation
        if publish:
            self._publish(index, generation)

    def _publish(self, index: VectorIndex, generation: int) -> None:
        """Save ``index`` under a fresh name and record it (inside the write transaction)."""
        name = new_index_file_name(generation)
        index.save(self.directory / name)
        # AUTOINCREMENT's counter: at least every key ever given, so later keys are larger
        sequence = self._db.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'refs'"
        ).fetchone()
        max_key = int(sequence[0]) if sequence else 0
        write_publication(self._db, Publication(name, generation, max_key, index.spec))
        self._searcher = LayeredIndex(index)
        self._searcher_generation, self._searcher_file = generation, name
        self._searcher_delta_key = max_key

    def _bump_generation(self) -> int:
        generation = self.generation + 1
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?)", (str(generation),)
        )
        return generation

    def save_index(self) -> None:
        """Publish the index of the current generation (after batch adds).

        Nothing is written if the published index already reflects it, or if another process
        changed the catalogue since this one's index was brought up to date (its next write
        publishes).
        """
        with self._write():
            publication = read_publication(self._db)
            generation = self.generation
            if publication is not None and publication.generation == generation:
                return
            if self._index is not None and self._index_generation == generation:
                self._publish(self._index, generation)

    def _writable(self) -> None:
        if self.read_only:
            raise CatalogueError(f"catalogue {self.directory} was opened read-only")

    def _index_for_write(self) -> VectorIndex:
        """An exact in-memory index of what SQLite holds now (call inside :meth:`_write`).

        Another process (the CLI next to a running server, say) may have committed changes
        since this catalogue's index was made: then the published file is read if it is
        current, else the index is rebuilt from SQLite.
        """
        generation = self.generation
        if self._index is not None and self._index_generation == generation:
            return self._index
        self._index = None
        publication = read_publication(self._db)
        index = None
        if publication is not None and publication.generation == generation:
            with contextlib.suppress(FileNotFoundError, ValueError):
                index = VectorIndex.read(
                    self.directory / publication.file,
                    dim=self.params.embedding_dim,
                    spec=publication.spec,
                )
        if index is None:
            index = self._build_index(self.index_spec)
        self._index, self._index_generation = index, generation
        return index

    # ----------------------------------------------------------------- reads
    def refresh(self) -> bool:
        """Pick up changes made by another process; returns True if anything changed."""
        with self._lock:
            changed = self._searcher is not None and self.generation != self._searcher_generation
            self._layered_index()
            return changed

    def _layered_index(self) -> LayeredIndex:
        """What searches use: the published index plus references newer than it."""
        with self._lock:
            generation = self.generation
            if self._searcher is not None and self._searcher_generation == generation:
                return self._searcher
            if self._index is not None and self._index_generation == generation:
                self._searcher = LayeredIndex(self._index)  # this process's own exact index
                self._searcher_file, self._searcher_delta_key = None, 0
                self._searcher_generation = generation
                return self._searcher
            for _ in range(20):  # a writer may replace the file between naming and opening it
                try:
                    self._searcher = self._load_layers(generation)
                    break
                except FileNotFoundError:
                    generation = self.generation
            else:
                raise CatalogueError(f"the index files of {self.directory} keep disappearing")
            self._searcher_generation = generation
            return self._searcher

    def _load_layers(self, generation: int) -> LayeredIndex:
        publication = read_publication(self._db)
        previous = self._searcher
        if publication is None:
            legacy = self._legacy_index(generation)
            if legacy is not None:
                self._searcher_file, self._searcher_delta_key = None, 0
                return LayeredIndex(legacy)
            if previous is not None and previous.base is not None:
                previous = None  # it searched a legacy file that is now stale
            base, covered = None, 0
            self._searcher_file = None
        elif previous is not None and self._searcher_file == publication.file:
            base = previous.base
            covered = publication.max_key if base is not None else 0
        else:
            path = self.directory / publication.file
            try:
                base = VectorIndex.read(
                    path,
                    dim=self.params.embedding_dim,
                    spec=publication.spec,
                    mmap=self._maps(path),
                )
            except FileNotFoundError:
                if read_publication(self._db) != publication:
                    raise  # a writer replaced it meanwhile: read the new one
                logger.warning(
                    "index file %s is missing: searching the stored vectors exactly "
                    "(a write or 'tunetrace index build' makes it anew)",
                    path,
                )
                base = None
            except ValueError as exc:
                logger.warning("%s: searching the stored vectors exactly instead", exc)
                base = None
            covered = publication.max_key if base is not None else 0
            self._searcher_file = publication.file
            previous = None
        if base is not None and publication is not None and publication.generation == generation:
            self._searcher_delta_key = covered
            return LayeredIndex(base)
        # References newer than the published file, added to what an earlier call found.
        delta = previous.delta if previous is not None else None
        since = max(covered, self._searcher_delta_key if previous is not None else 0)
        vectors, ids = self._all_vectors(after_key=since)
        if delta is None and len(vectors):
            # rounded as the published file keeps its vectors
            delta = VectorIndex(self.params.embedding_dim, grid=self._grid_for(self.index_spec))
        if len(vectors):
            delta.add(vectors, ids)
            since = int(ids.max() >> PATCH_BITS)
        self._searcher_delta_key = since
        if base is None and publication is None and delta is not None and delta.size > 1_000_000:
            logger.warning("catalogue %s has no published index: searching %d vectors exactly "
                           "(run 'tunetrace index build')", self.directory, delta.size)  # fmt: skip
        return LayeredIndex(base, delta)

    def _legacy_index(self, generation: int) -> VectorIndex | None:
        """The index file of the earlier layout, if it is stamped with this generation."""
        path = self.directory / LEGACY_INDEX_NAME
        return VectorIndex.load_stamped(
            path, dim=self.params.embedding_dim, generation=generation, mmap=self._maps(path)
        )

    def _maps(self, path: Path) -> bool:
        """Whether this catalogue memory-maps the index file at ``path`` (see
        :data:`SHARED_INDEX_MIN_BYTES`)."""
        try:
            return self.read_only and path.stat().st_size >= SHARED_INDEX_MIN_BYTES
        except OSError:
            return False

    @property
    def index_path(self) -> Path | None:
        """The published index file (``None`` before the first write publishes one)."""
        publication = read_publication(self._db)
        return None if publication is None else self.directory / publication.file

    @property
    def index_spec(self) -> IndexSpec:
        """The kind of vector index this catalogue uses (set by :meth:`rebuild_index`)."""
        stored = self._meta("index_spec")
        return IndexSpec.from_dict(json.loads(stored)) if stored else IndexSpec()

    def _all_rows_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored reference's vectors for a whole rebuild (inside a write), with the
        references left out as damaged recorded, so that readers can say which they are."""
        damaged: list[str] = []
        vectors, ids = self._all_vectors(damaged=damaged)
        self._record_damaged(damaged)
        return vectors, ids

    def _recorded_damaged(self) -> list[str]:
        """The ids the last rebuild recorded as damaged (none if the record is unreadable)."""
        try:
            recorded = json.loads(self._meta("damaged_references") or "[]")
        except ValueError:
            return []
        return [str(item) for item in recorded] if isinstance(recorded, list) else []

    def _record_damaged(self, reference_ids: list[str]) -> None:
        """Record the damaged references (inside a write)."""
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('damaged_references', ?)",
            (json.dumps(reference_ids),),
        )

    def _no_longer_damaged(self, reference_id: str) -> None:
        """Drop a reference added afresh from the recorded damaged ones (inside a write)."""
        recorded = self._recorded_damaged()
        if reference_id in recorded:
            self._record_damaged([item for item in recorded if item != reference_id])

    def damaged_references(self) -> list[str]:
        """Ids of the references the last index rebuild left out because their rows could not
        be read (they cannot be found until removed and added again).

        Returns
        -------
        ids : list of str
            Those still in the catalogue, sorted.
        """
        recorded = self._recorded_damaged()
        if not recorded:
            return []
        rows = self._db.execute(
            "SELECT id FROM refs WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(recorded),),
        )
        return [str(row[0]) for row in rows]

    def _plausible_frames(self, n_frames: object) -> bool:
        """Whether a row's frame count can be a reference's (not damage: text, negative,
        more than :data:`MAX_STORED_S` of frames)."""
        return (
            isinstance(n_frames, int)
            and 0 < n_frames <= MAX_STORED_S * self.params.frame_rate_hz
        )

    def _patch_counts(self, after_key: int = 0) -> dict[int, int]:
        """Each stored reference's patch vector count (keys above ``after_key``, in key
        order), from its frame count alone; 0 for a damaged frame count."""
        return {
            int(key): patch_count(int(n_frames), self.params)
            if self._plausible_frames(n_frames)
            else 0  # a damaged frame count: the row is left out of every index
            for key, n_frames in self._db.execute(
                "SELECT key, n_frames FROM refs WHERE key > ? ORDER BY key", (after_key,)
            )
        }

    def _all_vectors(
        self, after_key: int = 0, *, damaged: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every stored reference's patch vectors (keys above ``after_key``) and their ids;
        the ids of references left out because their rows are damaged go to ``damaged``.

        The result is allocated once from the rows' frame counts and filled a reference at a
        time: at 100,000 works the vectors alone take 5.5 GB, and gathering blocks before
        joining them would need twice that.
        """
        dim = self.params.embedding_dim
        counts = self._patch_counts(after_key)
        vectors = np.empty((sum(counts.values()), dim), dtype=np.float32)
        ids = np.empty(len(vectors), dtype=np.int64)
        filled = 0
        rows = self._db.execute(
            f"SELECT key, id, {self._stored_vector_columns} FROM refs WHERE key > ?"
            " ORDER BY key",
            (after_key,),
        )
        for key, reference_id, *stored in rows:
            if int(key) not in counts:  # added by another process since the count
                continue
            try:
                block = self._stored_vectors(int(key), *stored)
                if len(block) != counts[int(key)]:
                    raise CatalogueError(f"{len(block)} patch vectors for {stored[-1]} frames")
            except CatalogueError as exc:
                # one damaged row must not stop every rebuild, removal or reader (matching
                # leaves it out too; see Matcher)
                logger.warning(
                    "reference %r in %s is damaged (%s); it is left out of the index: remove "
                    "it and add it again", reference_id, self.directory, exc,
                )  # fmt: skip
                if damaged is not None:
                    damaged.append(str(reference_id))
                continue
            vectors[filled : filled + len(block)] = block
            ids[filled : filled + len(block)] = vector_ids(int(key), len(block))
            filled += len(block)
        # references removed by another process since the count, or damaged, leave the end
        # unfilled
        return vectors[:filled], ids[:filled]

    def _build_index(self, spec: IndexSpec) -> VectorIndex:
        """An index of ``spec``'s kind over every stored vector (exact search when the
        catalogue is too small to train it)."""
        dim = self.params.embedding_dim
        vectors, ids = self._all_rows_vectors()
        trained = self._recorded_training()
        if trained is not None:  # one training shared with the other shards of a catalogue
            try:
                index = VectorIndex.build(
                    dim, spec, vectors, ids, grid=self._grid_for(trained.spec), trained=trained
                )
            except ValueError as exc:
                logger.warning("the recorded index training of %s does not fit (%s): the "
                               "index trains on its own vectors", self.directory, exc)  # fmt: skip
            else:
                logger.info("built %s vector index from its recorded training: %d vectors",
                            index.spec.kind, index.size)  # fmt: skip
                return index
        if spec.resolved(len(vectors)).needs_training and len(vectors) < 10_000:
            logger.warning("too few vectors (%d) to train a %s index: exact search used",
                           len(vectors), spec.kind)  # fmt: skip
            spec = IndexSpec()
        if self._projection_unfit(spec, len(vectors)):
            logger.warning("the packaged alteration-noise model was measured with other "
                           "fingerprint parameters: IVF-PQ without projection used")  # fmt: skip
            spec = replace(spec, projection_dims=0)
        index = VectorIndex.build(dim, spec, vectors, ids, grid=self._grid_for(spec))
        logger.info("built %s vector index: %d vectors", index.spec.kind, index.size)
        return index

    def _grid_for(self, spec: IndexSpec) -> VectorGrid | None:
        """The grid ``spec``'s file keeps vectors on: the packaged one for 8-bit vectors, if
        it was fitted for this catalogue's parameters (else, and for 16 bits, float16)."""
        grid = packaged_grid() if spec.vector_bits == 8 else None
        if grid is not None and grid.params_digest != self.params.digest():
            logger.warning("the packaged vector grid was fitted for other fingerprint "
                           "parameters: the index keeps float16 vectors")  # fmt: skip
            return None
        return grid

    def _projection_unfit(self, spec: IndexSpec, n_vectors: int) -> bool:
        """Whether ``spec`` projects with the packaged alteration-noise model although that
        model was measured with other fingerprint parameters than this catalogue's."""
        return bool(spec.resolved(n_vectors).projection_dims) and (
            packaged_noise().params_digest != self.params.digest()
        )

    def rebuild_index(
        self, spec: IndexSpec | None = None, *, trained: VectorIndex | None = None
    ) -> VectorIndex:
        """Rebuild the vector index from the stored vectors, optionally as another kind.

        The new kind is recorded, so later rebuilds (and ``auto`` decisions) follow it. Other
        processes pick the new index up by the generation counter.

        Parameters
        ----------
        spec : IndexSpec, optional
            The kind asked for (default: the recorded one).
        trained : VectorIndex, optional
            An empty index trained for several catalogues (a sharded catalogue's shards, see
            :mod:`tunetrace.index.shared_training`): the index is built on it instead of a
            training of this catalogue's own vectors, and it is recorded with the kind, so
            every later rebuild (after a crash, a removal from a graph index, a migration)
            builds on it too. Without it, any recorded training is dropped.

        Raises
        ------
        ValueError
            If ``spec`` needs more vectors to train than the catalogue holds, or a projection
            the packaged alteration-noise model does not fit.
        """
        spec = spec or self.index_spec
        dim = self.params.embedding_dim
        if trained is None:
            self.check_index_spec(spec, 0)
        with self._write():
            vectors, ids = self._all_rows_vectors()
            if trained is None:
                self.check_index_spec(spec, len(vectors))
            index = VectorIndex.build(
                dim,
                spec,
                vectors,
                ids,
                grid=self._grid_for(trained.spec if trained else spec),
                trained=trained,
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('index_spec', ?)",
                (json.dumps(spec.to_dict()),),
            )
            self._record_training(trained)
            self._db.execute("DELETE FROM meta WHERE key = 'index_outdated'")
            self._changed(index, publish=True)
        return index

    def check_index_spec(self, spec: IndexSpec, n_vectors: int) -> None:
        """Check that an index of ``spec``'s kind can be made for this catalogue's vectors.

        Parameters
        ----------
        spec : IndexSpec
        n_vectors : int
            How many vectors it is for (they decide ``auto``).

        Raises
        ------
        ValueError
            If the projection asks for more dimensions than the vectors have, or the packaged
            alteration-noise model was measured with other fingerprint parameters.
        """
        dim = self.params.embedding_dim
        if spec.projection_dims > dim:
            raise ValueError(
                f"a projection keeps at most the vectors' {dim} dimensions, not "
                f"{spec.projection_dims}"
            )
        if self._projection_unfit(spec, n_vectors):
            raise ValueError(
                "the packaged alteration-noise model was measured with other fingerprint "
                "parameters than this catalogue's: use projection dimensions 0"
            )

    def _record_training(self, trained: VectorIndex | None) -> None:
        """Record ``trained`` (or that there is none) inside the write transaction that
        publishes the index built on it."""
        if trained is None:
            self._db.execute(
                "DELETE FROM meta WHERE key IN ('index_training', 'index_training_spec')"
            )
            return
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('index_training', ?)",
            (trained.training_bytes(),),
        )
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('index_training_spec', ?)",
            (json.dumps(trained.spec.to_dict()),),
        )

    def _recorded_training(self) -> VectorIndex | None:
        """The shared training recorded by the last :meth:`rebuild_index` (``None``: the
        index trains on this catalogue's own vectors; also, with a warning, when the record
        cannot be read)."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = 'index_training'"
        ).fetchone()
        described = self._meta("index_training_spec")
        if row is None or described is None:
            return None
        try:
            spec = IndexSpec.from_dict(json.loads(described))
            if not isinstance(row[0], bytes):
                raise ValueError("not stored as bytes")
            return VectorIndex.from_training_bytes(self.params.embedding_dim, spec, row[0])
        except (ValueError, TypeError) as exc:
            logger.warning(
                "the recorded index training of %s is unreadable (%s): the index trains on "
                "this catalogue's own vectors", self.directory, exc,
            )  # fmt: skip
            return None

    def vector_count(self) -> int:
        """How many patch vectors the stored references give (from their frame counts alone,
        without deriving any; a damaged count counts none).

        Returns
        -------
        count : int
        """
        with self._lock:
            return sum(self._patch_counts().values())

    def training_keys(self, seed: int = 0) -> tuple[np.ndarray, int]:
        """The content key of every stored patch vector, in the order :meth:`vectors_at`
        counts them (:func:`~tunetrace.index.training_sample.content_keys`): what a training
        shared by several catalogues chooses its sample from.

        Parameters
        ----------
        seed : int
            As for :func:`~tunetrace.index.training_sample.content_keys`.

        Returns
        -------
        keys : np.ndarray [dtype=uint64]
        generation : int
            The catalogue's generation when they were read (:meth:`vectors_at` checks it).
        """
        with self._lock:
            generation = self.generation
            vectors = self._all_vectors()[0]
        return content_keys(vectors, seed), generation

    def vectors_at(self, positions: np.ndarray, generation: int) -> np.ndarray:
        """The stored patch vectors at ``positions`` of all (in :meth:`training_keys` order).

        Parameters
        ----------
        positions : np.ndarray
            Positions among all stored vectors.
        generation : int
            The generation :meth:`training_keys` read them at.

        Returns
        -------
        vectors : np.ndarray [shape=(len(positions), dim), dtype=float32]

        Raises
        ------
        CatalogueError
            If the catalogue changed since (another generation).
        """
        with self._lock:
            if self.generation != generation:
                raise CatalogueError(
                    f"{self.directory} changed while its vectors were sampled: try again"
                )
            vectors = self._all_vectors()[0]
        return vectors[np.asarray(positions, dtype=np.int64)]

    def migrate(
        self,
        *,
        batch_size: int = MIGRATION_BATCH,
        codec: SpectrumCodec | None = None,
        vacuum: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Rewrite the references stored in another format with ``codec``, in place.

        Rows whose codec stores the same codes (same bits and exponent, another packing,
        such as ``b5e0.7z`` for ``b5e0.7j``) are repacked without loss: their vectors and
        the index stay as they are. Others (the 8-bit ``u8`` rows of the first catalogues)
        are quantised again; the vector index is then rebuilt from the vectors of the
        rewritten spectra and published. Each batch of references is one transaction; at
        the end the freed pages are given back to the file system (``VACUUM``, which needs
        free space for a copy of the database). Killed anywhere, the catalogue stays whole
        and a rerun carries on. Matching goes on meanwhile (a reader may keep a reference's
        earlier spectrum until its feature cache drops it: the two differ by quantisation
        only).

        Parameters
        ----------
        batch_size : int
            References rewritten per transaction.
        codec : SpectrumCodec, optional
            The compact codec to store them with (default: the catalogue's
            :attr:`spectrum_codec`); when it packs the codes new references get, references
            added later are packed so too.
        vacuum : bool
            Give the freed space back at the end.
        progress : callable, optional
            Called with the number of references rewritten by each batch.

        Returns
        -------
        rewritten : int
            References rewritten by this call.
        """
        self._writable()
        codec = self.spectrum_codec if codec is None else codec
        if not codec.compressed:  # the earlier format's codec is not
            raise ValueError(f"{codec.name} is not a compact codec")
        if codec.same_codes(COMPACT_CODEC):
            self.choose_spectrum_codec(codec)  # references added from now on are packed so too
        rewritten = 0
        n_bins = self.params.n_bins
        while True:
            with self._write():
                rows = self._db.execute(
                    "SELECT key, id, spectrum, spectrum_scale, n_frames, spectrum_codec"
                    " FROM refs WHERE spectrum_codec != ? ORDER BY key LIMIT ?",
                    (codec.name, max(1, batch_size)),
                ).fetchall()
                requantised = False
                for key, reference_id, blob, scale, n_frames, stored_as in rows:
                    try:
                        earlier = codec_named(stored_as)
                        if earlier.same_codes(codec):  # the same codes, packed anew
                            codes = earlier.codes(blob, n_bins, n_frames)
                            packed = _checked_pack(codec, codes, reference_id)
                            self._db.execute(
                                "UPDATE refs SET spectrum = ?, spectrum_codec = ? WHERE key = ?",
                                (packed, codec.name, key),
                            )
                            continue
                        spectrum = earlier.decode(blob, scale, n_bins, n_frames)
                    except (ValueError, TypeError) as exc:
                        raise CatalogueError(
                            f"reference {reference_id!r} cannot be read ({exc}): remove it or "
                            "add it again from its audio, then migrate again"
                        ) from exc
                    codes, compact_scale = codec.quantise(spectrum)
                    compact = _checked_pack(codec, codes, reference_id)
                    self._db.execute(
                        "UPDATE refs SET spectrum = ?, spectrum_scale = ?, spectrum_codec = ?,"
                        " vectors = x'' WHERE key = ?",
                        (compact, compact_scale, codec.name, key),
                    )
                    self._forget_features(int(key))
                    requantised = True
                if requantised:
                    # the published index still holds the earlier vectors of these rows
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('index_outdated', '1')"
                    )
            if not rows:
                break
            rewritten += len(rows)
            if progress is not None:
                progress(len(rows))
        if self._meta("index_outdated") is not None:
            with self._write():
                index = self._build_index(self.index_spec)
                self._db.execute("DELETE FROM meta WHERE key = 'index_outdated'")
                self._changed(index, publish=True)
            logger.info("rebuilt the vector index of %s from the rewritten spectra",
                        self.directory)  # fmt: skip
        if vacuum and (rewritten or self._mostly_free()):
            self.vacuum()
        return rewritten

    def _mostly_free(self) -> bool:
        """Whether over a quarter of the database's pages are free (a migration killed
        before its VACUUM leaves them so)."""
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        return free > pages / 4

    def vacuum(self) -> None:
        """Give the database's free pages back to the file system (``VACUUM``; needs free
        space for a copy of the database while it runs).

        Raises
        ------
        CatalogueError
            If SQLite could not vacuum (disk full, say); the catalogue is unchanged.
        """
        self._writable()
        with self._lock, self._writer_lock:
            try:
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise CatalogueError(f"could not vacuum {self.directory}: {exc}") from exc

    def reference_index(self, key: int) -> VectorIndex:
        """An exact index of one reference's stored patch vectors (to align a query with that
        reference alone).

        Raises
        ------
        ReferenceNotFoundError
        DamagedReferenceError
            If its stored row cannot be read.
        """
        row = self._db.execute(
            f"SELECT id, {self._stored_vector_columns} FROM refs WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            raise ReferenceNotFoundError(f"no reference with key {key}")
        try:
            vectors = self._stored_vectors(key, *row[1:])
        except CatalogueError as exc:
            raise self._damaged(row[0], exc.__cause__ or exc) from exc
        # searched for one query's places in this reference alone, never saved: full vectors
        index = VectorIndex(self.params.embedding_dim, in_memory_only=True)
        index.add(vectors, vector_ids(key, len(vectors)))
        return index

    def _damaged(self, reference_id: object, reason: BaseException) -> DamagedReferenceError:
        """The error for a reference whose stored row cannot be read, saying what to do."""
        return DamagedReferenceError(
            f"reference {reference_id!r} in {self.directory} is damaged ({reason}); remove it"
            " and add it again",
            str(reference_id),
        )

    def _stored_vectors(
        self,
        key: int,
        vector_blob: bytes,
        spectrum: bytes | None,
        scale: float,
        codec: str,
        n_frames: int,
    ) -> np.ndarray:
        """A row's patch vectors: stored (earlier format) or derived from its spectrum."""
        try:
            if vector_blob:
                return vectors_from_bytes(vector_blob, self.params.embedding_dim)
            return stored_reference_vectors(
                spectrum or b"", scale, codec_named(codec), self.params, n_frames
            )
        except (ValueError, TypeError) as exc:  # a damaged row
            raise CatalogueError(f"reference with key {key} in {self.directory}: {exc}") from exc

    def stored_references(
        self, *, after_key: int = 0, limit: int = 100
    ) -> list[tuple[ReferenceRecord, ReferenceData]]:
        """References exactly as stored, by key, to copy into another catalogue.

        Parameters
        ----------
        after_key : int
            Only references with a greater key (page through with the last key returned).
        limit : int

        Returns
        -------
        references : list of (ReferenceRecord, ReferenceData)
            Each reference's metadata and its stored spectrum (the codes as stored, not
            decoded and coded again) with its patch vectors.
        """
        rows = self._db.execute(
            f"SELECT {_RECORD_COLUMNS}, spectrum, spectrum_scale, {self._codec_column},"
            " n_frames, vectors FROM refs WHERE key > ? ORDER BY key LIMIT ?",
            (after_key, limit),
        ).fetchall()
        out = []
        for row in rows:
            record = ReferenceRecord(*row[:8])
            spectrum, scale, codec, n_frames, vector_blob = row[8:]
            vectors = self._stored_vectors(
                record.key, vector_blob, spectrum, scale, codec, n_frames
            )
            data = ReferenceData(
                spectrum_codes=spectrum,
                spectrum_scale=scale,
                n_frames=n_frames,
                duration_s=record.duration_s,
                vectors=vectors,
                spectrum_codec=codec,
            )
            out.append((record, data))
        return out

    def inverted_lists(self) -> tuple[int, int] | None:
        """The published index's inverted lists and vectors, ``(lists, vectors)``, when it is
        an inverted-list kind (``ivfflat``, ``ivfpq``); ``None`` for the others and before an
        index is published."""
        base = self._layered_index().base
        if base is None or base.spec.kind not in ("ivfflat", "ivfpq"):
            return None
        return base.spec.nlist, base.size

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        effort: float = 1.0,
        assignment: ListAssignment | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest indexed patch vectors (see :class:`VectorIndex.search`, also for ``effort``).

        While a batch add is under way the ids may include references removed since the
        published index was written: callers skip keys :meth:`features` no longer finds.
        ``assignment``: the lists of these vectors chosen elsewhere by a copy of the
        training the published index is built on (:meth:`index_training`); ignored if it
        is not.
        """
        return self._layered_index().search(vectors, k, effort=effort, assignment=assignment)

    def search_layers(self) -> LayeredIndex:
        """What :meth:`search` searches now (for searching several catalogues' published
        indexes together, :mod:`~tunetrace.index.joined_lists`).

        Returns
        -------
        layers : LayeredIndex
            The published index (``base``) and an exact index of the references newer
            than it (``delta``).
        """
        return self._layered_index()

    def lists_digest(self) -> str | None:
        """:attr:`VectorIndex.lists_digest` of the published index (``None``: none, or not
        an inverted-list kind)."""
        base = self._layered_index().base
        return None if base is None else base.lists_digest

    def index_training(self) -> VectorIndex | None:
        """The shared training recorded with the index (:meth:`rebuild_index`), if the
        published index is built on it: a copy that chooses a query's lists once for every
        shard (:meth:`VectorIndex.assign`).

        Returns
        -------
        trained : VectorIndex or None
            ``None`` when there is none, it cannot be read, or the published index is not
            built on it.
        """
        base = self._layered_index().base
        digest = None if base is None else base.lists_digest
        if base is None or digest is None:
            return None
        with self._lock:
            read = self._training_read
            if read is not None and read[0]() is base:
                return read[1]  # read once per published index (a rebuild publishes anew)
            trained = self._recorded_training()
            if trained is not None and trained.lists_digest != digest:
                trained = None
            self._training_read = (weakref.ref(base), trained)
        return trained

    def features(self, key: int, *, whole: bool = True) -> Features:
        """Stored feature sequences of the reference with internal ``key`` (cached).

        Parameters
        ----------
        key : int
        whole : bool
            Whether every frame is derived before they are returned (a damaged row is then
            found here). Verification, which says which frames it reads
            (:meth:`~tunetrace.fingerprint.features.Features.frames_read`), reads a reference
            stored in tiles a part at a time: its damaged tiles raise
            :class:`~tunetrace.errors.DamagedReferenceError` where they are read.

        Raises
        ------
        ReferenceNotFoundError
        DamagedReferenceError
        """
        with self._lock:
            cached = self._features_cache.get(key)
            if cached is not None:
                self._features_cache.move_to_end(key)
        if cached is not None:
            return self._derived(cached, whole)
        with self._lock:
            row = self._db.execute(
                f"SELECT spectrum, spectrum_scale, {self._codec_column}, n_frames, id FROM refs"
                " WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            raise ReferenceNotFoundError(f"no reference with key {key}")
        # Derived outside the lock, so that a query's threads derive their references side by
        # side (two threads that miss the same reference both derive it; the first is kept).
        # With what verification reads of a reference, so the cache counts it.
        reference_id = row[4]

        def damaged(exc: ValueError) -> DamagedReferenceError:
            return self._damaged(reference_id, exc)

        try:
            if not self._plausible_frames(row[3]):  # before anything is allocated for it
                raise ValueError(f"its frame count {row[3]!r} is no reference's")
            features = self._derived(
                stored_features(row[0], row[1], codec_named(row[2]), self.params, row[3],
                                on_damage=damaged),
                whole,
            )  # fmt: skip
        except (ValueError, TypeError, OverflowError) as exc:  # a damaged row
            raise self._damaged(reference_id, exc) from exc
        with self._lock:
            cached = self._features_cache.get(key)
            if cached is None:
                self._cache_features(key, features)
        return features if cached is None else self._derived(cached, whole)

    @staticmethod
    def _derived(features: Features, whole: bool) -> Features:
        """``features``, every frame derived first when ``whole`` (a reference stored in tiles
        and read in part so far derives the rest)."""
        if whole:
            features.frames_read(0, features.n_frames)
        return features

    def clear_features_cache(self) -> None:
        """Drop every cached reference's features (the next reads derive them afresh)."""
        with self._lock:
            self._forget_features()

    def _forget_features(self, key: int | None = None) -> None:
        """Drop one reference's cached features, or all of them when ``key`` is ``None``."""
        if key is None:
            self._features_cache.clear()
            self._features_cache_bytes = 0
        elif (dropped := self._features_cache.pop(key, None)) is not None:
            self._features_cache_bytes -= dropped.nbytes

    def _cache_features(self, key: int, features: Features) -> None:
        """Keep ``features`` and drop the least recently used beyond the byte budget."""
        self._features_cache[key] = features
        self._features_cache_bytes += features.nbytes
        while self._features_cache_bytes > self.features_cache_bytes and self._features_cache:
            _, dropped = self._features_cache.popitem(last=False)
            self._features_cache_bytes -= dropped.nbytes

    def record_by_key(self, key: int) -> ReferenceRecord:
        """Metadata of the reference with internal ``key``."""
        row = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM refs WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            raise ReferenceNotFoundError(f"no reference with key {key}")
        return ReferenceRecord(*row)

    def get(self, reference_id: str) -> ReferenceRecord:
        """Metadata of one reference.

        Raises
        ------
        ReferenceNotFoundError
        """
        row = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM refs WHERE id = ?", (reference_id,)
        ).fetchone()
        if row is None:
            raise ReferenceNotFoundError(f"no reference {reference_id!r} in the catalogue")
        return ReferenceRecord(*row)

    def contains(self, reference_id: str) -> bool:
        """Whether a reference with this id exists."""
        row = self._db.execute("SELECT 1 FROM refs WHERE id = ?", (reference_id,)).fetchone()
        return row is not None

    def list(self, *, offset: int = 0, limit: int = 100) -> list[ReferenceRecord]:
        """References ordered by id."""
        rows = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM refs ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
        ).fetchall()
        return [ReferenceRecord(*row) for row in rows]

    def snapshot(self, read: Callable[[Catalogue], T]) -> T:
        """Run ``read(self)`` in one read transaction, so all its queries see the same state."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                return read(self)
            finally:
                self._db.execute("COMMIT")

    def count(self) -> int:
        """Number of references."""
        return int(self._db.execute("SELECT count(*) FROM refs").fetchone()[0])

    def info(self) -> dict[str, object]:
        """Counts, durations, sizes on disk and parameters."""
        n_refs, total_s = self._db.execute(
            "SELECT count(*), coalesce(sum(duration_s), 0) FROM refs"
        ).fetchone()
        index = self._layered_index()
        index_path = self.index_path
        index_bytes = _file_size(index_path) if index_path is not None else 0
        hours = float(total_s) / 3600
        spectra_bytes, vectors_bytes = self._db.execute(
            "SELECT coalesce(sum(length(spectrum)), 0), coalesce(sum(length(vectors)), 0) FROM refs"
        ).fetchone()
        database_bytes = sum(
            _file_size(self.directory / (DATABASE_NAME + suffix)) for suffix in ("", "-wal")
        )
        parts = {
            "spectra": int(spectra_bytes),
            "stored_vectors": int(vectors_bytes),
            "index": index_bytes,
            # tables, metadata, SQLite's pages and free space
            "database_rest": max(0, database_bytes - int(spectra_bytes) - int(vectors_bytes)),
        }
        return {
            "catalogue": str(self.directory),
            "references": int(n_refs),
            "damaged_references": self.damaged_references(),
            "audio_hours": round(hours, 3),
            "vectors": index.size,
            "index_kind": index.spec.kind,
            "index_spec": index.spec.to_dict(),
            "index_bytes": index_bytes,
            "index_mb_per_audio_hour": round(index_bytes / 1e6 / hours, 3) if hours else None,
            "size_on_disk_bytes": sum(map(_file_size, self.directory.iterdir())),
            "bytes_by_part": parts,
            "mb_per_audio_hour_by_part": {
                part: round(size / 1e6 / hours, 3) if hours else None
                for part, size in parts.items()
            },
            "earlier_format_references": self.legacy_count(self.spectrum_codec),
            "format_version": int(self._meta("format_version") or FORMAT_VERSION),
            "index_outdated": self._meta("index_outdated") is not None,
            "feature_version": FEATURE_VERSION,
            "generation": self.generation,
            "params_digest": self.params.digest(),
            "params": self.params.to_dict(),
        }

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_RECORD_COLUMNS = "key, id, title, artist, isrc, source_path, duration_s, added_at"


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) under a thread lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _file_size(path: Path) -> int:
    """Bytes of a regular file; 0 for anything else, or for a file a writer's sweep (in
    another process) removed since it was listed."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _empty_and_settled(database: Path, *, create: bool) -> bool:
    """Whether ``database`` is an empty file that is not another process's catalogue in the
    making (readers: any empty file; creators: one empty for more than
    :data:`EMPTY_DATABASE_GRACE_S`)."""
    try:
        status = database.stat()
    except OSError:
        return False
    if status.st_size != 0:
        return False
    return not create or time.time() - status.st_mtime > EMPTY_DATABASE_GRACE_S


def _on_read_only_file_system(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
