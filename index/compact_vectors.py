"""Full-vector indexes kept on disk as 8-bit codes (or float16) and searched in float32.

A ``flat`` or ``ivfflat`` index holds every patch vector whole. FAISS searches float32
vectors with its fastest kernels (BLAS for exact search); its scalar-quantised twins search
several times slower. So vectors are rounded when they are added (to a fixed grid of 256
values per dimension, :class:`VectorGrid`, or with ``vector_bits=16`` to float16), written
to disk as the scalar-quantised twin of the index and widened back to float32 when the file
is read: a quarter (a half) of the bytes on disk, the same search, and a file read back
searches exactly as the index that wrote it.

The grid's steps are powers of two, so every grid value and every step of the round trip is
exact in float32. The packaged grid (``vector_grid.npz``, fitted by
``benchmarks/vector_grid.py`` on the dev corpus' reference vectors with a margin) has steps
of 5-22% of the standard deviation that alterations add to each dimension; it keeps about
97% of a query's 32 nearest neighbours (float16: 99.8%); no benchmark told the two apart
beyond its noise. Catalogues with other fingerprint parameters than the grid's keep float16
vectors.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

#: Index kinds whose files hold compact vectors.
COMPACT_KINDS = ("flat", "ivfflat")
GRID_FILE = Path(__file__).with_name("vector_grid.npz")
#: Values per dimension.
LEVELS = 256


@dataclass(frozen=True)
class VectorGrid:
    """256 equally spaced values per dimension: ``lowest + code * step``.

    Attributes
    ----------
    lowest : np.ndarray [shape=(dim,), dtype=float32]
        A whole multiple of ``step``.
    step : np.ndarray [shape=(dim,), dtype=float32]
        Powers of two.
    params_digest : str
        Digest of the fingerprint parameters the grid was fitted for.
    """

    lowest: np.ndarray
    step: np.ndarray
    params_digest: str

    @property
    def dim(self) -> int:
        """Vector length."""
        return int(self.lowest.shape[0])

    @classmethod
    def fit(cls, vectors: np.ndarray, *, params_digest: str, margin: float = 0.25) -> VectorGrid:
        """The grid covering ``vectors``' range in every dimension, widened by ``margin`` of
        it on each side, with the smallest power-of-two step that spans it in 256 values.

        Parameters
        ----------
        vectors : np.ndarray [shape=(n, dim)]
        params_digest : str
            Digest of the fingerprint parameters the vectors were made with.
        margin : float
            Share of each dimension's range added below and above it.

        Returns
        -------
        grid : VectorGrid
        """
        low, high = vectors.min(axis=0).astype(np.float64), vectors.max(axis=0).astype(np.float64)
        span = np.maximum(high - low, 1e-6)
        low, high = low - margin * span, high + margin * span
        step = 2.0 ** np.ceil(np.log2((high - low) / (LEVELS - 1)))
        lowest = np.floor(low / step) * step
        step = np.where(lowest + (LEVELS - 1) * step < high, 2 * step, step)
        lowest = np.floor(low / step) * step
        return cls(lowest.astype(np.float32), step.astype(np.float32), params_digest)

    @classmethod
    def load(cls, path: Path = GRID_FILE) -> VectorGrid:
        """Read a grid written by :meth:`save`."""
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls(data["lowest"], data["step"], meta["params_digest"])

    def save(self, path: Path = GRID_FILE) -> None:
        """Write the grid and the parameters it was fitted for."""
        with open(path, "wb") as handle:
            np.savez(
                handle,
                lowest=self.lowest,
                step=self.step,
                meta=json.dumps({"params_digest": self.params_digest}),
            )

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """Each value's nearest grid code (values outside the grid take its edge).

        Parameters
        ----------
        vectors : np.ndarray [shape=(n, dim)]

        Returns
        -------
        codes : np.ndarray [shape=(n, dim), dtype=uint8]
        """
        scaled = (np.asarray(vectors, dtype=np.float32) - self.lowest) / self.step
        return np.clip(np.rint(scaled), 0, LEVELS - 1).astype(np.uint8)

    def values(self, codes: np.ndarray) -> np.ndarray:
        """The grid values of ``codes`` (exact in float32).

        Parameters
        ----------
        codes : np.ndarray [shape=(n, dim), dtype=uint8]

        Returns
        -------
        vectors : np.ndarray [shape=(n, dim), dtype=float32]
        """
        return (self.lowest + codes.astype(np.float32) * self.step).astype(np.float32)

    def rounded(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` moved to their nearest grid values (what the file keeps).

        Parameters
        ----------
        vectors : np.ndarray [shape=(n, dim)]

        Returns
        -------
        rounded : np.ndarray [shape=(n, dim), dtype=float32]
        """
        return self.values(self.codes(vectors))

    def faiss_ranges(self) -> np.ndarray:
        """The grid as FAISS's 8-bit scalar quantiser describes it (``vmin``, then ``vdiff``;
        FAISS decodes code ``c`` to ``vmin + (c + 0.5) / 255 * vdiff``, the grid's value)."""
        vmin = self.lowest - np.float32(0.5) * self.step
        return np.concatenate([vmin, self.step * np.float32(LEVELS - 1)]).astype(np.float32)

    @classmethod
    def from_faiss_ranges(cls, ranges: np.ndarray) -> VectorGrid:
        """Inverse of :meth:`faiss_ranges` (exact for power-of-two steps)."""
        dim = len(ranges) // 2
        step = (ranges[dim:] / np.float32(LEVELS - 1)).astype(np.float32)
        lowest = (ranges[:dim] + np.float32(0.5) * step).astype(np.float32)
        return cls(lowest, step, params_digest="")


@functools.cache
def packaged_grid() -> VectorGrid | None:
    """The grid shipped with the package, read once per process.

    Returns
    -------
    grid : VectorGrid or None
        ``None`` if the file is missing.
    """
    return VectorGrid.load() if GRID_FILE.exists() else None


def rounded(vectors: np.ndarray, grid: VectorGrid | None) -> np.ndarray:
    """``vectors`` as a compact file keeps them.

    Parameters
    ----------
    vectors : np.ndarray [shape=(n, dim)]
    grid : VectorGrid or None
        The grid; ``None``: float16.

    Returns
    -------
    rounded : np.ndarray [shape=(n, dim), dtype=float32]
    """
    if grid is not None:
        return grid.rounded(vectors)
    return np.asarray(vectors, dtype=np.float16).astype(np.float32)


def to_disk_form(index: faiss.Index, grid: VectorGrid | None) -> faiss.Index:
    """The compact twin of a ``flat`` (id map around ``IndexFlatIP``) or ``ivfflat`` index.

    Parameters
    ----------
    index : faiss.Index
        Its vectors must already be rounded (:func:`rounded`) for the round trip to be exact.
    grid : VectorGrid or None
        8-bit codes on this grid; ``None``: float16.

    Returns
    -------
    twin : faiss.Index
        Scalar-quantised; other kinds of index are returned as they are.
    """
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexFlat):
            return index
        vectors = inner.reconstruct_n(0, inner.ntotal)
        twin = _scalar_quantiser(inner.d, grid)
        mapped = faiss.IndexIDMap2(twin)
        mapped.own_fields = True
        twin.this.disown()
        if grid is None:
            twin.add(vectors)
        else:
            _fill_codes(twin, grid.codes(vectors))
        faiss.copy_array_to_vector(faiss.vector_to_array(index.id_map), mapped.id_map)
        mapped.ntotal = index.ntotal
        mapped.construct_rev_map()
        return mapped
    source = faiss.downcast_index(index)
    if not isinstance(source, faiss.IndexIVFFlat):
        return index
    quantiser = faiss.clone_index(source.quantizer)
    twin = faiss.IndexIVFScalarQuantizer(
        quantiser,
        source.d,
        source.nlist,
        faiss.ScalarQuantizer.QT_fp16 if grid is None else faiss.ScalarQuantizer.QT_8bit,
        faiss.METRIC_INNER_PRODUCT,
        False,  # the vectors themselves, not their residuals from the list centroid
    )
    twin.own_fields = True  # the clone is the index's to delete
    quantiser.this.disown()
    if grid is not None:
        faiss.copy_array_to_vector(grid.faiss_ranges(), twin.sq.trained)
    twin.is_trained = True

    def convert(codes: np.ndarray) -> np.ndarray:
        vectors = codes.view(np.float32)
        if grid is None:
            return vectors.astype(np.float16)
        return grid.codes(vectors.reshape(-1, twin.d))

    _copy_lists(source, twin, convert)
    return twin


def from_disk_form(index: faiss.Index) -> tuple[faiss.Index, VectorGrid | None]:
    """Inverse of :func:`to_disk_form`.

    Parameters
    ----------
    index : faiss.Index
        As read from a file.

    Returns
    -------
    wide : faiss.Index
        Float32 vectors; other kinds of index are returned as they are.
    grid : VectorGrid or None
        The grid the file was written on (``None`` for float16 files and other kinds).
    """
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        kind = _compact_kind(inner)
        if kind is None:
            return index, None
        grid = _grid_of(inner) if kind == "8bit" else None
        if grid is None:
            vectors = inner.reconstruct_n(0, inner.ntotal)
        else:
            codes = faiss.vector_to_array(inner.codes).reshape(inner.ntotal, inner.d)
            vectors = grid.values(codes)
        flat = faiss.IndexFlatIP(inner.d)
        mapped = faiss.IndexIDMap2(flat)
        mapped.own_fields = True
        flat.this.disown()
        mapped.add_with_ids(vectors, faiss.vector_to_array(index.id_map))
        return mapped, grid
    source = faiss.downcast_index(index)
    if not isinstance(source, faiss.IndexIVFScalarQuantizer):
        return index, None
    kind = _compact_kind(source)
    if kind is None:
        return index, None
    grid = _grid_of(source) if kind == "8bit" else None
    quantiser = faiss.clone_index(source.quantizer)
    wide = faiss.IndexIVFFlat(quantiser, source.d, source.nlist, faiss.METRIC_INNER_PRODUCT)
    wide.own_fields = True
    quantiser.this.disown()
    wide.is_trained = True

    def convert(codes: np.ndarray) -> np.ndarray:
        if grid is None:
            return codes.view(np.float16).astype(np.float32)
        return grid.values(codes.reshape(-1, source.d))

    _copy_lists(source, wide, convert)
    return wide, grid


def _scalar_quantiser(dim: int, grid: VectorGrid | None) -> faiss.IndexScalarQuantizer:
    if grid is None:
        return faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
    quantiser = faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    faiss.copy_array_to_vector(grid.faiss_ranges(), quantiser.sq.trained)
    quantiser.is_trained = True
    return quantiser


def _fill_codes(index: faiss.IndexScalarQuantizer, codes: np.ndarray) -> None:
    """Give an empty 8-bit scalar-quantised index these codes (one row per vector)."""
    faiss.copy_array_to_vector(np.ascontiguousarray(codes).ravel(), index.codes)
    index.ntotal = len(codes)


def _compact_kind(index: faiss.Index) -> str | None:
    quantiser = getattr(index, "sq", None)
    if quantiser is None:
        return None
    if quantiser.qtype == faiss.ScalarQuantizer.QT_fp16:
        return "fp16"
    if quantiser.qtype == faiss.ScalarQuantizer.QT_8bit:
        return "8bit"
    return None


def _grid_of(index: faiss.Index) -> VectorGrid:
    return VectorGrid.from_faiss_ranges(faiss.vector_to_array(index.sq.trained))


def _copy_lists(
    source: faiss.IndexIVF,
    target: faiss.IndexIVF,
    convert: Callable[[np.ndarray], np.ndarray],
) -> None:
    """Every inverted list of ``source`` into ``target``, codes converted by ``convert``."""
    lists, into = source.invlists, target.invlists
    for number in range(source.nlist):
        size = lists.list_size(number)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy()
        converted = np.ascontiguousarray(convert(codes)).view(np.uint8)
        into.add_entries(number, size, faiss.swig_ptr(ids), faiss.swig_ptr(converted))
    target.ntotal = source.ntotal
