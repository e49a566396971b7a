"""The FAISS index of patch vectors: build, search, crash-safe save and load.

The index is derived data: SQLite holds every vector, and a stale or missing index file is
rebuilt from it. The file records the catalogue generation it reflects.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

#: Index files are readable by other processes (API workers) like the SQLite file beside them.
FILE_MODE = 0o644


class VectorIndex:
    """Exact inner-product search over patch vectors with 64-bit ids.

    Parameters
    ----------
    dim : int
        Vector length.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def size(self) -> int:
        """Number of indexed vectors."""
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``vectors`` (n, dim) under ``ids`` (n,)."""
        if len(vectors):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors with these ids (missing ids are ignored)."""
        if len(ids):
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar vectors of each query vector.

        Returns
        -------
        similarities : np.ndarray [shape=(n, k), dtype=float32]
        ids : np.ndarray [shape=(n, k), dtype=int64]
            -1 where fewer than ``k`` vectors exist.
        """
        if self.size == 0 or len(vectors) == 0:
            return (
                np.zeros((len(vectors), k), dtype=np.float32),
                np.full((len(vectors), k), -1, dtype=np.int64),
            )
        return self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def save(self, path: Path, *, generation: int) -> None:
        """Write the index atomically (temporary file, fsync, rename) with its generation."""
        path = Path(path)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".vectors-", suffix=".tmp")
        os.close(fd)
        os.chmod(temporary, FILE_MODE)
        try:
            faiss.write_index(self._index, temporary)
            _fsync_file(temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        _atomic_write_text(_stamp_path(path), json.dumps({"generation": generation}))
        _fsync_directory(path.parent)

    @classmethod
    def load(cls, path: Path, *, dim: int, generation: int) -> VectorIndex | None:
        """Load an index file if it exists and reflects ``generation``; else ``None``."""
        path = Path(path)
        stamp = _stamp_path(path)
        if not path.exists() or not stamp.exists():
            return None
        try:
            saved_generation = json.loads(stamp.read_text())["generation"]
        except (ValueError, KeyError, OSError):
            return None
        if saved_generation != generation:
            logger.info(
                "vector index is at generation %s, catalogue at %s: rebuilding",
                saved_generation,
                generation,
            )
            return None
        index = cls(dim)
        try:
            index._index = faiss.read_index(str(path))
        except RuntimeError:
            logger.warning("vector index file %s is unreadable: rebuilding", path)
            return None
        if index._index.d != dim:
            return None
        return index


def _stamp_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def _fsync_file(path: str | Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".stamp-", suffix=".tmp")
    os.chmod(temporary, FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
