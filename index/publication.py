"""Which index file reflects the catalogue: one row of state committed with the change.

A write builds its new index in memory, saves it under a fresh name (``vectors-G-TOKEN.faiss``:
temporary file, fsync, rename) and records that name in SQLite *in the same transaction* as
the rows it reflects. The commit is the one moment the new state becomes visible; a kill
before it leaves an unnamed file (swept by the next writer) and the old file still named, a
kill after it leaves the old file unnamed. No counter or stamp outside SQLite is trusted, so
nothing a rolled-back transaction wrote can ever be mistaken for current.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tunetrace.index.vector_index import TEMPORARY_PREFIX, IndexSpec

logger = logging.getLogger(__name__)

#: Names of published index files.
INDEX_FILE_PATTERN = re.compile(r"^vectors-\d+-[0-9a-f]{16}\.faiss$")
#: Files of the earlier layout (one fixed name and a generation stamp), swept once replaced.
LEGACY_INDEX_NAME = "vectors.faiss"
_LEGACY_FILES = (LEGACY_INDEX_NAME, LEGACY_INDEX_NAME + ".json")
_LEGACY_TEMPORARY_PREFIX = ".stamp-"


@dataclass(frozen=True)
class Publication:
    """The published index file and what it reflects.

    Attributes
    ----------
    file : str
        Its name in the catalogue directory.
    generation : int
        The catalogue generation it reflects exactly.
    max_key : int
        Every reference it holds has a key at most this; references added later have larger
        keys (keys are never reused).
    spec : IndexSpec
        The kind it was built as (resolved).
    """

    file: str
    generation: int
    max_key: int
    spec: IndexSpec


def new_index_file_name(generation: int) -> str:
    """A fresh, unguessable file name for the index of ``generation``."""
    return f"vectors-{generation}-{secrets.token_hex(8)}.faiss"


def read_publication(db: sqlite3.Connection) -> Publication | None:
    """The publication recorded in the catalogue's ``meta`` table (``None``: none yet)."""
    row = db.execute("SELECT value FROM meta WHERE key = 'index_publication'").fetchone()
    if row is None:
        return None
    try:
        data = json.loads(row[0])
        publication = Publication(
            file=str(data["file"]),
            generation=int(data["generation"]),
            max_key=int(data["max_key"]),
            spec=IndexSpec.from_dict(data["spec"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring an unreadable index publication record: %s", exc)
        return None
    if not INDEX_FILE_PATTERN.match(publication.file):
        logger.warning("ignoring an index publication naming %r", publication.file)
        return None
    return publication


def write_publication(db: sqlite3.Connection, publication: Publication) -> None:
    """Record ``publication`` (call inside the write transaction that it reflects)."""
    value = json.dumps(
        {
            "file": publication.file,
            "generation": publication.generation,
            "max_key": publication.max_key,
            "spec": publication.spec.to_dict(),
        }
    )
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('index_publication', ?)", (value,)
    )


def sweep_stale_files(directory: Path, keep: str | None) -> list[str]:
    """Delete index files other than ``keep`` and temporary files left by killed writes.

    Call only while holding the catalogue's writer lock (no other write is under way).
    Readers that still have a removed file open or mapped keep reading it.

    Returns
    -------
    removed : list of str
        The names deleted.
    """
    removed = []
    for path in Path(directory).iterdir():
        name = path.name
        stale = (
            (INDEX_FILE_PATTERN.match(name) and name != keep)
            or name.startswith((TEMPORARY_PREFIX, _LEGACY_TEMPORARY_PREFIX))
            or (keep is not None and name in _LEGACY_FILES)
        )
        if stale and path.is_file():
            try:
                path.unlink()
                removed.append(name)
            except FileNotFoundError:
                pass
    if removed:
        logger.debug("swept %s from %s", ", ".join(removed), directory)
    return removed
