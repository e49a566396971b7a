"""The FAISS index of patch vectors: build, search, crash-safe save and load.

The index is derived data: SQLite holds every reference's spectrum, the vectors follow from
it, and a stale or missing index file is rebuilt from it. The catalogue records which file
reflects which generation.

Four kinds (:class:`IndexSpec`): ``flat`` (exact inner product; two bytes per dimension on
disk, or one, see :mod:`tunetrace.index.compact_vectors`), ``ivfflat`` (the same full vectors in
inverted lists: only the ``nprobe`` lists nearest a query are searched, so it is approximate
and many times faster, no smaller), ``ivfpq`` (OPQ
rotation, inverted lists and product-quantised codes: ``pq_m`` bytes per vector, approximate,
compact) and ``hnsw`` (graph over full vectors: fast, approximate, no cheaper in memory). An
``ivfpq`` index can also keep scalar-quantised copies of the vectors (``refine_bits``) to
re-rank ``refine_factor`` times more neighbours than asked for: fewer neighbours lost to the
codes, for about ``refine_bits * dim / 8`` more bytes per vector (docs/scaling.md has the
measured effect). The inverted-list kinds are trained on the catalogue's own vectors. Readers can
memory-map the file (``mmap=True``) so that several processes share one copy of the index in
the page cache. FAISS searches a mapped inverted-list index through ``OnDiskInvertedLists``,
slower than the same lists in memory, so the catalogue maps only files big enough for sharing
to matter.

An index can be searched by many threads at once while another adds or removes vectors: a
change waits for the searches under way and holds new ones back until it is done (a
readers-writer lock per index, :mod:`tunetrace.index.readers_writer`). FAISS itself gives no
such guarantee: an add may move a list's memory under a search reading it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tunetrace.index.compact_vectors import (
    COMPACT_KINDS,
    VectorGrid,
    from_disk_form,
    rounded,
    to_disk_form,
)
from tunetrace.index.list_assignment import (
    ListViews,
    flat_list_centroids,
    nearest_lists,
    preassigned_search,
    require_neighbours,
    search_lists,
)
from tunetrace.index.projection import (
    discriminant_projection,
    packaged_noise,
    projection_transforms,
)
from tunetrace.index.readers_writer import ReadersWriterLock
from tunetrace.index.training_sample import training_rows

logger = logging.getLogger(__name__)

#: Index files are readable by other processes (API workers) like the SQLite file beside them.
FILE_MODE = 0o644
#: Name prefix of the temporary files index writes go through (swept after a crash).
TEMPORARY_PREFIX = ".vectors-"


INDEX_KINDS = ("flat", "ivfflat", "ivfpq", "hnsw")
#: ``auto`` picks flat search below this many vectors (about 2 h of audio), where a flat search
#: costs a query tens of milliseconds ...
AUTO_IVF_FLAT_VECTORS = 10_000
#: ... IVF over full vectors up to this many (about 115 h, 380 MB), and IVF-PQ above, where
#: the projected IVF-PQ index searches far faster than IVF-Flat and loses no candidates.
AUTO_IVF_VECTORS = 500_000
#: Training sample for IVF-PQ: enough points per list, capped to keep training quick.
TRAINING_POINTS_PER_LIST = 40
MAX_TRAINING_POINTS = 300_000
#: Degree of the HNSW graph that finds an IVF-PQ index's nearest lists.
HNSW_QUANTISER_M = 32
#: Bits per PQ code: 4 is searched with FAISS's fast-scan kernels.
PQ_BITS = (4, 8)
#: Bits per dimension of the vectors flat and IVF-Flat files keep.
VECTOR_BITS = (8, 16)
#: Bits per dimension of the re-ranking copies an IVF-PQ index may keep (0: none).
REFINE_BITS = (0, 4, 6, 8)
#: Dimensions an IVF-PQ index projects the patch vectors onto before quantising them (see
#: :mod:`tunetrace.index.projection`; docs/scaling.md has the measured effect).
DEFAULT_PROJECTION_DIMS = 64


@dataclass(frozen=True)
class IndexSpec:
    """What kind of FAISS index a catalogue uses, and its parameters.

    Attributes
    ----------
    kind : str
        ``flat``, ``ivfflat``, ``ivfpq``, ``hnsw`` or ``auto`` (flat below
        :data:`AUTO_IVF_FLAT_VECTORS` vectors, ivfflat below :data:`AUTO_IVF_VECTORS`, else
        ivfpq).
    nlist : int
        IVF lists; 0 chooses ``4 * sqrt(n_vectors)`` (16 to 65,536).
    pq_m : int
        Product-quantiser sub-vectors (bytes per vector with 8-bit codes). Without a projection
        the vectors are rotated by OPQ (and padded to a multiple of ``pq_m``) before
        quantisation; with one, ``pq_m`` must divide ``projection_dims``.
    pq_bits : int
        Bits per sub-vector code: 4 (16 centroids each, searched by FAISS's SIMD fast-scan
        kernels) or 8 (256 centroids, scanned code by code).
    nprobe : int
        IVF lists visited per search.
    hnsw_m : int
        HNSW graph degree.
    ef_search : int
        HNSW search breadth.
    refine_bits : int
        ``ivfpq`` only: 0 (no re-ranking) or 4, 6, 8: bits per dimension of the scalar-quantised
        vector copies that re-rank the neighbours the codes find.
    refine_factor : float
        Neighbours fetched by the codes per neighbour returned, before re-ranking.
    vector_bits : int
        ``flat`` and ``ivfflat`` files: 8 (one byte per dimension on the packaged grid,
        :mod:`tunetrace.index.compact_vectors`) or 16 (float16: twice the bytes, 99.8% of a
        query's nearest neighbours kept against about 97%). Searched as float32 either way.
    projection_dims : int
        ``ivfpq`` only: project the vectors onto this many alteration-discriminant directions
        (trained on the catalogue's own vectors and the packaged alteration-noise model, see
        :mod:`tunetrace.index.projection`) before the lists and codes; 0 keeps all dimensions
        and rotates them by OPQ instead.
    """

    kind: str = "flat"
    nlist: int = 0
    pq_m: int = 64
    pq_bits: int = 4
    nprobe: int = 32
    hnsw_m: int = 32
    ef_search: int = 128
    refine_bits: int = 0
    refine_factor: float = 3.2
    projection_dims: int = DEFAULT_PROJECTION_DIMS
    vector_bits: int = 8

    def __post_init__(self) -> None:
        if self.kind not in (*INDEX_KINDS, "auto"):
            raise ValueError(f"index kind must be one of {', '.join(INDEX_KINDS)} or auto")
        if self.vector_bits not in VECTOR_BITS:
            raise ValueError(f"vector bits must be one of {', '.join(map(str, VECTOR_BITS))}")
        if self.refine_bits not in REFINE_BITS:
            raise ValueError(f"re-ranking bits must be one of {', '.join(map(str, REFINE_BITS))}")
        if self.refine_bits and self.kind not in ("ivfpq", "auto"):
            raise ValueError("only an ivfpq index re-ranks (the other kinds hold full vectors)")
        if self.refine_factor < 1:
            raise ValueError("the re-ranking factor must be at least 1")
        if self.pq_bits not in PQ_BITS:
            raise ValueError(f"PQ bits must be one of {', '.join(map(str, PQ_BITS))}")
        if self.projection_dims < 0:
            raise ValueError("projection dimensions must be 0 (none) or more")
        if self.projection_dims and self.kind in ("ivfpq", "auto"):
            if self.projection_dims % self.pq_m:
                raise ValueError(
                    f"PQ bytes per vector ({self.pq_m}) must divide the projection "
                    f"dimensions ({self.projection_dims})"
                )
            if self.refine_bits:
                raise ValueError(
                    "re-ranking copies work only without a projection (projection dimensions 0)"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexSpec:
        """Inverse of :meth:`to_dict` (unknown keys are an error).

        Specs written before projections existed have none.
        """
        return cls(**{"projection_dims": 0, **data})

    def resolved(self, n_vectors: int) -> IndexSpec:
        """This spec with ``auto`` and ``nlist=0`` decided for ``n_vectors`` vectors."""
        kind = self.kind
        if kind == "auto":
            if n_vectors >= AUTO_IVF_VECTORS:
                kind = "ivfpq"
            elif n_vectors >= AUTO_IVF_FLAT_VECTORS:
                kind = "ivfflat"
            else:
                kind = "flat"
        nlist = self.nlist or int(min(65_536, max(16, 4 * np.sqrt(max(n_vectors, 1)))))
        refine_bits = self.refine_bits if kind == "ivfpq" else 0
        projection_dims = self.projection_dims if kind == "ivfpq" else 0
        return replace(
            self, kind=kind, nlist=nlist, refine_bits=refine_bits, projection_dims=projection_dims
        )

    @property
    def needs_training(self) -> bool:
        """Whether vectors are needed to build the index (IVF centroids, PQ codebooks)."""
        return self.kind in ("ivfflat", "ivfpq")


@dataclass(frozen=True)
class ListAssignment:
    """A query's vectors as an inverted-list index's lists see them, and the lists chosen
    for each: made once by one copy of a training (:meth:`VectorIndex.assign`), searched by
    every index built on it (:meth:`VectorIndex.search_assigned`), so that the shards of a
    catalogue do not each run the same coarse quantiser.

    Attributes
    ----------
    digest : str
        The training's :attr:`VectorIndex.lists_digest`: an index built on another searches
        as usual instead.
    vectors : np.ndarray [shape=(n, d'), dtype=float32]
        The query vectors after the index's transform (projection, rotation), if any.
    lists : np.ndarray [shape=(n, probes), dtype=int64]
        Each vector's lists (``-1``: none).
    similarities : np.ndarray [shape=(n, probes), dtype=float32]
        Their centroids' similarities to it.
    """

    digest: str
    vectors: np.ndarray
    lists: np.ndarray
    similarities: np.ndarray


class VectorIndex:
    """Inner-product search over patch vectors with 64-bit ids.

    Parameters
    ----------
    dim : int
        Vector length.
    spec : IndexSpec, optional
        Index kind (default exact search). Kinds that need training must be made with
        :meth:`build`.
    grid : VectorGrid, optional
        ``flat`` and ``ivfflat``: the grid vectors are rounded to and stored on (none:
        float16; see :mod:`tunetrace.index.compact_vectors`).
    in_memory_only : bool
        The index is never saved: its vectors keep full precision instead of being rounded
        as a file would keep them.
    """

    #: Whether the index was loaded memory-mapped (read-only, shared with other processes).
    memory_mapped: bool = False
    #: The grid a compact file stores the vectors on (``None``: float16).
    grid: VectorGrid | None = None
    #: Never saved: vectors are kept at full precision.
    in_memory_only: bool = False
    #: The views of an IVF-Flat index's lists that searches use (:meth:`_list_views`), in a
    #: tuple (``(None,)``: its lists cannot be viewed); ``None`` until the first search after
    #: a change makes them.
    _views: tuple[ListViews | None] | None = None
    #: Searches and saves share it; adds and removals take it alone (see the module text).
    _access: ReadersWriterLock
    #: Adds and removals made in this process since the index was read or built (what a
    #: copy of its lists is checked against).
    changes: int = 0

    def __new__(cls, *args: Any, **kwargs: Any) -> VectorIndex:
        # Every way of making an index (the constructor, build, read) passes through here.
        index = super().__new__(cls)
        index._access = ReadersWriterLock()
        return index

    def __getstate__(self) -> dict[str, Any]:
        # A copy (pickled, deep-copied) gets a lock of its own, and makes its own list views
        # of its own lists (these views are of this index's memory).
        with self._access.reading():
            return {
                name: value
                for name, value in self.__dict__.items()
                if name not in ("_access", "_views")
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._access = ReadersWriterLock()

    def __init__(
        self,
        dim: int,
        spec: IndexSpec | None = None,
        grid: VectorGrid | None = None,
        *,
        in_memory_only: bool = False,
    ) -> None:
        self.dim = dim
        self.grid = grid
        self.in_memory_only = in_memory_only
        self.spec = (spec or IndexSpec()).resolved(0)
        if self.spec.needs_training:
            raise ValueError(f"a {self.spec.kind} index needs training: use VectorIndex.build")
        self._index = _new_faiss_index(dim, self.spec)
        self._configure()

    @classmethod
    def build(
        cls,
        dim: int,
        spec: IndexSpec,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        seed: int = 0,
        grid: VectorGrid | None = None,
        trained: VectorIndex | None = None,
    ) -> VectorIndex:
        """Make an index of ``spec``'s kind from ``vectors``, training it on them if needed
        (``grid``: see the class).

        Parameters
        ----------
        dim : int
            Vector length.
        spec : IndexSpec
            The kind wanted (``auto`` and ``nlist=0`` decided for ``len(vectors)``).
        vectors : np.ndarray [shape=(n, dim)]
        ids : np.ndarray [shape=(n,), dtype=int64]
        seed : int
            Picks another training sample.
        grid : VectorGrid, optional
            See the class.
        trained : VectorIndex, optional
            An empty index already trained (:meth:`trained`; a sharded catalogue trains one
            for all its shards): its kind, lists and codes are used, ``spec`` is not, and
            nothing is trained here.

        Returns
        -------
        index : VectorIndex

        Raises
        ------
        ValueError
            If a trained kind gets fewer vectors than its training needs, or ``trained``
            holds vectors or has another dimension.
        """
        if trained is not None:
            if trained.size or trained.dim != dim:
                raise ValueError("a shared training must be an empty index of the same dimension")
            index = cls.from_training_bytes(dim, trained.spec, trained.training_bytes())
        else:
            spec = spec.resolved(len(vectors))
            sample = None
            if spec.needs_training:
                # chosen by content: the same works added in any order train the same index
                as_float32 = np.asarray(vectors, dtype=np.float32)
                count = training_count(spec, len(vectors))
                sample = as_float32[training_rows(as_float32, count, seed)]
            index = cls.trained(dim, spec, sample)
        index.grid = grid
        index.add(vectors, ids)
        index.changes = 0  # (changes count from here: the index as built)
        return index

    @classmethod
    def trained(cls, dim: int, spec: IndexSpec, sample: np.ndarray | None) -> VectorIndex:
        """An empty index of ``spec``'s kind (resolved), trained on ``sample`` if its kind
        needs training (:func:`training_count` rows, chosen as
        :func:`~tunetrace.index.training_sample.training_rows` chooses them).

        Parameters
        ----------
        dim : int
            Vector length.
        spec : IndexSpec
            Resolved (kind and lists decided: :meth:`IndexSpec.resolved`).
        sample : np.ndarray [shape=(n, dim)] or None
            The training vectors, in training order (``None`` for kinds without training).

        Returns
        -------
        trained : VectorIndex
            Holding no vectors.

        Raises
        ------
        ValueError
            If ``spec`` is not resolved, or its kind needs training and ``sample`` has fewer
            rows than the training needs (or none).
        """
        if spec.kind == "auto" or (spec.needs_training and not spec.nlist):
            raise ValueError("a trained index needs a resolved spec (kind and lists decided)")
        index = cls.__new__(cls)
        index.dim, index.spec, index.grid = dim, spec, None
        if not spec.needs_training:
            index._index = _new_faiss_index(dim, spec)
        else:
            needed = _vectors_needed(spec)
            if sample is None or len(sample) < needed:
                found = 0 if sample is None else len(sample)
                raise ValueError(
                    f"an {spec.kind} index with {spec.nlist} lists needs at least {needed} "
                    f"vectors to train; the catalogue has {found}"
                )
            sample = np.ascontiguousarray(sample, dtype=np.float32)
            index._index = _new_faiss_index(dim, spec, sample)
            index._index.train(sample)
        index._configure()
        return index

    def training_bytes(self) -> bytes:
        """The index's FAISS form as bytes (for an empty trained index: its training, which
        :meth:`from_training_bytes` reads back).

        Returns
        -------
        data : bytes
        """
        with self._access.reading():
            return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_training_bytes(cls, dim: int, spec: IndexSpec, data: bytes) -> VectorIndex:
        """Inverse of :meth:`training_bytes`: an empty trained index of ``spec``'s kind.

        Parameters
        ----------
        dim : int
            Vector length the training must have.
        spec : IndexSpec
            The kind it was trained as (resolved).
        data : bytes

        Returns
        -------
        trained : VectorIndex

        Raises
        ------
        ValueError
            If ``data`` is not an empty, trained FAISS index of ``spec``'s kind, lists and
            ``dim`` dimensions.
        """
        index = cls.__new__(cls)
        index.dim, index.spec, index.grid = dim, spec, None
        try:
            index._index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, MemoryError) as exc:  # FAISS's reports of a damaged file
            raise ValueError(f"unreadable index training: {exc}") from exc
        found = index._index
        if found.d != dim:
            raise ValueError(f"an index training of {found.d}-d vectors, not {dim}")
        if found.ntotal or not found.is_trained:
            raise ValueError("an index training must be trained and hold no vectors")
        if spec.needs_training:
            try:
                _, ivf = _ivf_parts(found)
            except TypeError as exc:
                raise ValueError(f"an index training of another kind than {spec.kind}") from exc
            if ivf.nlist != spec.nlist:
                raise ValueError(f"an index training of {ivf.nlist} lists, not {spec.nlist}")
        index._configure()
        return index

    def _configure(self) -> None:
        """Search-time parameters (not all are kept in the FAISS file)."""
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = self.spec.nprobe
        if isinstance(self._index, faiss.IndexIDMap2):
            inner = faiss.downcast_index(self._index.index)
            if isinstance(inner, faiss.IndexHNSW):
                inner.hnsw.efSearch = self.spec.ef_search
            if isinstance(inner, faiss.IndexRefine):
                inner.k_factor = self.spec.refine_factor

    def _flat_list_centroids(self) -> np.ndarray | None:
        """The list centroids :mod:`~tunetrace.index.list_assignment` searches with, for an
        IVF-Flat index (found once: training is the only thing that changes them)."""
        try:
            return self._centroids
        except AttributeError:
            self._centroids: np.ndarray | None = flat_list_centroids(self._index)
            return self._centroids

    def _list_views(self) -> ListViews | None:
        """Views of an IVF-Flat index's lists for :func:`preassigned_search` (call under the
        read lock). Every change drops them under the write lock (an add or a removal may
        move a list's memory), so the first search after it makes them anew; two searches
        that both do make the same views."""
        made = self._views
        if made is None:
            made = self._views = (ListViews.of(self._index),)
        return made[0]

    @property
    def supports_removal(self) -> bool:
        """Whether vectors can be removed in place (HNSW graphs and re-ranking copies cannot:
        rebuild instead)."""
        return self.spec.kind != "hnsw" and not self.spec.refine_bits

    @property
    def size(self) -> int:
        """Number of indexed vectors."""
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``vectors`` (n, dim) under ``ids`` (n,)."""
        if len(vectors):
            if self.spec.kind in COMPACT_KINDS and not self.in_memory_only:
                vectors = rounded(vectors, self.grid)  # what the file keeps
            with self._access.writing():
                self._views = None
                self.changes += 1
                self._index.add_with_ids(
                    np.ascontiguousarray(vectors, dtype=np.float32),
                    np.asarray(ids, dtype=np.int64),
                )

    def remove(self, ids: np.ndarray) -> None:
        """Remove the vectors with these ids (missing ids are ignored).

        Raises
        ------
        NotImplementedError
            For kinds that cannot remove (see :attr:`supports_removal`).
        """
        if len(ids):
            self._remove(np.asarray(ids, dtype=np.int64))

    def remove_range(self, first: int, stop: int) -> None:
        """Remove the vectors whose ids lie in ``[first, stop)`` (all of one reference's,
        however many it has).

        Raises
        ------
        NotImplementedError
            For kinds that cannot remove (see :attr:`supports_removal`).
        """
        self._remove(faiss.IDSelectorRange(first, stop))

    def _remove(self, selection: np.ndarray | faiss.IDSelector) -> None:
        if not self.supports_removal:
            raise NotImplementedError(f"a {self.spec.kind} index cannot remove vectors")
        with self._access.writing():
            self._views = None
            self.changes += 1
            self._index.remove_ids(selection)
            lists = _inverted_lists(self._index)
            if isinstance(lists, faiss.BlockInvertedLists):
                # FAISS's fast-scan lists drop the vectors but leave the index's count as it
                # was (faiss 1.13): count what the lists hold.
                remaining = sum(lists.list_size(n) for n in range(lists.nlist))
                faiss.extract_index_ivf(self._index).ntotal = self._index.ntotal = remaining

    def search(
        self, vectors: np.ndarray, k: int, *, effort: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar vectors of each query vector.

        Parameters
        ----------
        vectors : np.ndarray [shape=(n, dim)]
        k : int
        effort : float in (0, 1]
            Share of the ``nprobe`` inverted lists an IVF index searches (at least one; also
            behind an OPQ transform or a re-ranking stage); other kinds search as always.

        Returns
        -------
        similarities : np.ndarray [shape=(n, k), dtype=float32]
        ids : np.ndarray [shape=(n, k), dtype=int64]
            -1 where fewer than ``k`` vectors exist.

        Raises
        ------
        ValueError
            If ``k`` is less than 1.
        """
        require_neighbours(k)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._access.reading():
            return self._search(vectors, k, effort)

    def _search(self, vectors: np.ndarray, k: int, effort: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` (its read lock held)."""
        if self.size == 0 or len(vectors) == 0:
            return _no_neighbours(len(vectors), k)
        ivf = faiss.try_extract_index_ivf(self._index)
        centroids = self._flat_list_centroids()
        if centroids is not None:  # an IVF-Flat index: its lists chosen outside FAISS
            probes = _probes(ivf, effort)
            return preassigned_search(
                self._index, vectors, k, centroids, probes, self._list_views()
            )
        if effort < 1.0 and ivf is not None:
            probes = _probes(ivf, effort)
            inner = self._index.index if isinstance(self._index, faiss.IndexIDMap2) else self._index
            parameters = _probing(faiss.downcast_index(inner), probes)
            if parameters is not None:
                return self._index.search(vectors, k, params=parameters[0])
        return self._index.search(vectors, k)

    @property
    def lists_digest(self) -> str | None:
        """A digest of what chooses, probes and scores the lists (transform, coarse
        quantiser, ``nprobe``, PQ codebooks) of an inverted-list index: equal for indexes
        built on one training, and for that training itself. ``None`` for other kinds (and
        re-ranking indexes)."""
        try:
            return self._digest
        except AttributeError:
            with self._access.reading():
                self._digest: str | None = _lists_digest(self._index)
            return self._digest

    def assign(self, vectors: np.ndarray, *, effort: float = 1.0) -> ListAssignment | None:
        """The lists :meth:`search` would probe for ``vectors`` with this ``effort``, for
        :meth:`search_assigned` of any index built on the same training; ``None`` for kinds
        without lists.

        Parameters
        ----------
        vectors : np.ndarray [shape=(n, dim)]
        effort : float in (0, 1]
            As for :meth:`search`.

        Returns
        -------
        assignment : ListAssignment or None
        """
        digest = self.lists_digest
        if digest is None:
            return None
        transforms, ivf = _ivf_parts(self._index)
        seen = np.ascontiguousarray(vectors, dtype=np.float32)
        for transform in transforms:
            seen = np.ascontiguousarray(transform.apply(seen), dtype=np.float32)
        probes = _probes(ivf, effort)
        centroids = self._flat_list_centroids()
        if len(seen) == 0:
            lists = np.empty((0, probes), dtype=np.int64)
            similarities = np.empty((0, probes), dtype=np.float32)
        elif centroids is not None:  # as preassigned_search chooses them
            lists, similarities = nearest_lists(seen, centroids, probes)
        else:  # as FAISS's own search asks its quantiser
            similarities, lists = ivf.quantizer.search(seen, probes)
        return ListAssignment(
            digest,
            seen,
            np.ascontiguousarray(lists, dtype=np.int64),
            np.ascontiguousarray(similarities, dtype=np.float32),
        )

    def search_assigned(
        self, assignment: ListAssignment, k: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`search` in the lists ``assignment`` chose: the same answer as searching its
        query vectors here with its effort, without running the quantiser.

        Parameters
        ----------
        assignment : ListAssignment
            Made by :meth:`assign` of this index's training (or of this index).
        k : int
            Neighbours per query vector.

        Returns
        -------
        similarities, ids : np.ndarray or None
            As :meth:`search`'s; ``None`` if this index was not built on the assignment's
            training (or the assignment does not fit it): search as usual instead.

        Raises
        ------
        ValueError
            If ``k`` is less than 1.
        """
        require_neighbours(k)
        if self.lists_digest is None or assignment.digest != self.lists_digest:
            return None
        vectors, lists = assignment.vectors, assignment.lists
        with self._access.reading():
            _, ivf = _ivf_parts(self._index)
            if not _fits(assignment, ivf):
                return None
            if self.size == 0 or len(vectors) == 0:
                return _no_neighbours(len(vectors), k)
            views = self._list_views() if self._flat_list_centroids() is not None else None
            return search_lists(ivf, vectors, k, lists, assignment.similarities, views)

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically: a temporary file beside it, fsync, rename,
        fsync of the directory. A crash at any point leaves either no file at ``path`` or the
        whole one (and at most a temporary file, which catalogue writers sweep)."""
        if isinstance(_inverted_lists(self._index), faiss.OnDiskInvertedLists):
            raise RuntimeError("a memory-mapped index is read-only and is never saved")
        if self.in_memory_only:
            raise RuntimeError("an in-memory-only index keeps full vectors and is never saved")
        path = Path(path)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX, suffix=".tmp")
        os.close(fd)
        os.chmod(temporary, FILE_MODE)
        try:
            try:
                self._write_disk_form(temporary)
            except RuntimeError as exc:  # FAISS reports a full disk or an I/O error this way
                raise OSError(f"could not write the index file ({exc})") from exc
            _fsync_file(temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        _fsync_directory(path.parent)

    def _write_disk_form(self, path: str) -> None:
        """Write the index's file form: a compact twin is a copy, made under the read lock and
        written after it (searches do not wait behind a change waiting for the write); other
        kinds are their own file form, written under it."""
        with self._access.reading():
            disk_form = to_disk_form(self._index, self.grid)
            if disk_form is self._index:
                faiss.write_index(disk_form, path)
                return
        faiss.write_index(disk_form, path)

    @classmethod
    def read(cls, path: Path, *, dim: int, spec: IndexSpec, mmap: bool = False) -> VectorIndex:
        """Read an index file written by :meth:`save`.

        Parameters
        ----------
        path : Path
        dim : int
            Vector length the file must have.
        spec : IndexSpec
            The kind the file was built as (resolved).
        mmap : bool
            Memory-map the file read-only (shared between processes; no adds or removals).

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        ValueError
            If the file is not a FAISS index of ``dim`` dimensions.
        """
        path = Path(path)
        index = cls.__new__(cls)
        index.dim, index.spec = dim, spec
        # Opened first and read through the descriptor: a writer may replace and delete the
        # file at any moment, and what is open stays readable.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            pinned = f"/proc/self/fd/{fd}"
            source = pinned if os.path.exists(pinned) else str(path)
            # Compact files are widened in memory (see tunetrace.index.compact_vectors).
            mmap = mmap and spec.kind not in COMPACT_KINDS
            index._index, index.grid = from_disk_form(
                faiss.read_index(source, _mmap_flags(spec) if mmap else 0)
            )
        except RuntimeError as exc:
            raise ValueError(f"vector index file {path} is unreadable: {exc}") from exc
        finally:
            os.close(fd)
        if index._index.d != dim:
            raise ValueError(f"vector index file {path} holds {index._index.d}-d vectors")
        lists = _inverted_lists(index._index)
        # FAISS maps array inverted lists; fast-scan block lists it reads into memory.
        index.memory_mapped = mmap and (
            lists is None or isinstance(lists, faiss.OnDiskInvertedLists)
        )
        index._configure()
        return index

    @classmethod
    def load_stamped(
        cls, path: Path, *, dim: int, generation: int, mmap: bool = False
    ) -> VectorIndex | None:
        """Read an index file of the earlier layout, whose generation sat in a JSON stamp
        beside it; ``None`` if it is missing, unreadable or stamped with another generation."""
        path = Path(path)
        stamp = path.with_suffix(path.suffix + ".json")
        try:
            saved = json.loads(stamp.read_text())
            if saved["generation"] != generation:
                return None
            return cls.read(path, dim=dim, spec=IndexSpec.from_dict(saved.get("spec", {})),
                            mmap=mmap)  # fmt: skip
        except (ValueError, KeyError, TypeError, OSError):
            return None


def _probes(ivf: faiss.IndexIVF, effort: float) -> int:
    """Lists an IVF index probes per vector at ``effort`` (its share of ``nprobe``, at least
    one)."""
    return max(1, round(min(ivf.nprobe, ivf.nlist) * min(effort, 1.0)))


def _no_neighbours(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The answer for ``n`` query vectors when nothing is indexed."""
    return np.zeros((n, k), dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def _ivf_parts(index: faiss.Index) -> tuple[list[faiss.VectorTransform], faiss.IndexIVF]:
    """The transforms in front of an inverted-list index and the index itself.

    Raises
    ------
    TypeError
        For other kinds (flat, HNSW, re-ranking or id-mapped indexes).
    """
    transforms = []
    inner = index
    if isinstance(index, faiss.IndexPreTransform):
        transforms = [faiss.downcast_VectorTransform(index.chain.at(n))
                      for n in range(index.chain.size())]  # fmt: skip
        inner = faiss.downcast_index(index.index)
    if not isinstance(inner, faiss.IndexIVF):
        raise TypeError(f"not an inverted-list index: {type(inner).__name__}")
    return transforms, inner


def _lists_digest(index: faiss.Index) -> str | None:
    """See :attr:`VectorIndex.lists_digest`."""
    try:
        transforms, ivf = _ivf_parts(index)
    except TypeError:
        return None
    # the lists probed are part of it: a rebuild that changes only nprobe must not be
    # searched with lists chosen for the earlier number
    described = f"{type(ivf).__name__} {ivf.d} {ivf.nlist} nprobe={ivf.nprobe}"
    digest = hashlib.sha256(described.encode())
    for transform in transforms:
        writer = faiss.VectorIOWriter()
        faiss.write_VectorTransform(transform, writer)
        digest.update(faiss.vector_to_array(writer.data).tobytes())
    digest.update(faiss.serialize_index(ivf.quantizer).tobytes())
    if hasattr(ivf, "pq"):
        digest.update(faiss.vector_to_array(ivf.pq.centroids).tobytes())
    return digest.hexdigest()


def _fits(assignment: ListAssignment, ivf: faiss.IndexIVF) -> bool:
    """Whether an assignment's arrays have the shapes and list numbers ``ivf`` can search
    (a digest match makes this so; checked anyway, as FAISS does not check list numbers)."""
    vectors, lists = assignment.vectors, assignment.lists
    shaped = (
        vectors.ndim == 2
        and vectors.shape[1] == ivf.d
        and vectors.dtype == np.float32
        and lists.ndim == 2
        and lists.shape[0] == len(vectors)
        and 1 <= lists.shape[1] <= ivf.nlist
        and lists.dtype == np.int64
        and assignment.similarities.shape == lists.shape
    )
    if not shaped or lists.size == 0:
        return shaped
    if int(lists.min()) < -1 or int(lists.max()) >= ivf.nlist:
        return False
    ordered = np.sort(lists, axis=1)  # a list twice in a row would give its vectors twice
    return not bool(np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)))


def _vectors_needed(spec: IndexSpec) -> int:
    """Fewest vectors a trained kind can be trained on (OPQ trains 256-centroid codebooks
    whatever ``pq_bits``)."""
    needed = spec.nlist
    if spec.kind == "ivfpq":
        needed = max(needed, 2**spec.pq_bits if spec.projection_dims else 256)
    return needed


def training_count(spec: IndexSpec, n_vectors: int) -> int:
    """How many of ``n_vectors`` vectors an index of ``spec``'s kind (resolved) trains on:
    :data:`TRAINING_POINTS_PER_LIST` per centroid, at most :data:`MAX_TRAINING_POINTS`
    (0 for kinds that need no training).

    Parameters
    ----------
    spec : IndexSpec
    n_vectors : int

    Returns
    -------
    count : int
    """
    if not spec.needs_training:
        return 0
    centroids = max(spec.nlist, 2**spec.pq_bits) if spec.kind == "ivfpq" else spec.nlist
    return min(n_vectors, MAX_TRAINING_POINTS, centroids * TRAINING_POINTS_PER_LIST)


def _probing(index: faiss.Index, probes: int) -> tuple[faiss.SearchParameters, list] | None:
    """FAISS search parameters that probe ``probes`` inverted lists of ``index`` (an IVF
    index, or one behind a transform or a re-ranking stage), or ``None`` for other kinds.

    Returns
    -------
    parameters : faiss.SearchParameters
    kept : list
        The nested parameter objects, kept alive as long as ``parameters`` is used (FAISS
        holds plain pointers to them).
    """
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=probes), []
    if isinstance(index, faiss.IndexPreTransform):
        inner = _probing(faiss.downcast_index(index.index), probes)
        if inner is None:
            return None
        return faiss.SearchParametersPreTransform(index_params=inner[0]), [inner, *inner[1]]
    if isinstance(index, faiss.IndexRefine):
        inner = _probing(faiss.downcast_index(index.base_index), probes)
        if inner is None:
            return None
        parameters = faiss.IndexRefineSearchParameters(
            k_factor=index.k_factor, base_index_params=inner[0]
        )
        return parameters, [inner, *inner[1]]
    return None


class LayeredIndex:
    """A published index plus, in memory, the references added since it was written.

    Readers never rebuild or write an index file: while a writer is part-way through a batch
    (or was killed in one), they search the last published file and an exact index of the
    newer references, and merge the two answers. Hits on references removed since the file
    was written are left for the matcher to skip.

    Parameters
    ----------
    base : VectorIndex or None
        The published index (``None``: none yet).
    delta : VectorIndex or None
        Exact index of the vectors of references newer than ``base``.
    """

    def __init__(self, base: VectorIndex | None, delta: VectorIndex | None = None) -> None:
        self.base = base
        self.delta = delta

    @property
    def spec(self) -> IndexSpec:
        """The kind of the published index (exact search when there is none)."""
        return self.base.spec if self.base is not None else IndexSpec()

    @property
    def size(self) -> int:
        """Vectors searched."""
        return sum(part.size for part in (self.base, self.delta) if part is not None)

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        effort: float = 1.0,
        assignment: ListAssignment | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar vectors over both layers (see :meth:`VectorIndex.search`;
        ``effort`` applies to the published index, the exact layer is searched whole). With
        an ``assignment`` of these vectors, the published index searches the lists it chose
        if it is built on its training (:meth:`VectorIndex.search_assigned`; the assignment's
        own effort then applies), else as without one."""
        if assignment is not None and len(assignment.vectors) != len(vectors):
            assignment = None  # made for other vectors
        parts = []
        for part in (self.base, self.delta):
            if part is None or not part.size:
                continue
            found = None
            if part is self.base and assignment is not None:
                found = part.search_assigned(assignment, k)
            if found is None:
                found = part.search(vectors, k, effort=effort if part is self.base else 1.0)
            parts.append(found)
        if not parts:
            return _no_neighbours(len(vectors), k)
        return best_of(parts, k)


def best_of(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar of several searches' answers for the same query vectors.

    Parameters
    ----------
    parts : list of (np.ndarray, np.ndarray)
        ``(similarities, ids)`` per search, best first in each row (id ``-1``: none).
    k : int

    Returns
    -------
    similarities, ids : np.ndarray [shape=(n, k)]
        Best first (earlier parts first among equals); ``-1`` and 0 where all parts
        together hold fewer than ``k``.
    """
    if len(parts) == 1:
        return parts[0]
    similarities = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    similarities = np.where(ids >= 0, similarities, -np.inf)
    best = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(similarities, best, axis=1)
    return (
        np.where(np.isfinite(chosen), chosen, 0.0).astype(np.float32),
        np.take_along_axis(ids, best, axis=1),
    )


def _new_faiss_index(dim: int, spec: IndexSpec, sample: np.ndarray | None = None) -> faiss.Index:
    """An empty FAISS index of ``spec``'s kind (``sample``: training vectors, for kinds that
    derive their structure from the catalogue before FAISS trains them)."""
    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if spec.kind == "hnsw":
        return faiss.IndexIDMap2(faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT))
    if spec.kind == "ivfflat":
        return faiss.index_factory(dim, f"IVF{spec.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    # The lists nearest a query are found through an HNSW graph over the list centroids: with
    # 10,000 lists and more, comparing each of a query's ~400 patch vectors with every
    # centroid costs more than scanning the probed lists.
    codes = f"PQ{spec.pq_m}x4fs" if spec.pq_bits == 4 else f"PQ{spec.pq_m}x{spec.pq_bits}"
    lists_and_codes = f"IVF{spec.nlist}_HNSW{HNSW_QUANTISER_M},{codes}"
    if spec.projection_dims:
        if sample is None:
            raise ValueError("a projected ivfpq index needs training vectors")
        matrix, bias = discriminant_projection(sample, packaged_noise(), spec.projection_dims)
        inner = faiss.index_factory(
            spec.projection_dims, lists_and_codes, faiss.METRIC_INNER_PRODUCT
        )
        index = faiss.IndexPreTransform(inner)
        for transform in reversed(projection_transforms(matrix, bias)):
            index.prepend_transform(transform)
        return index
    # Without a projection, OPQ rotates (and pads to a multiple of pq_m) so that each code
    # byte carries as much of the vector as it can; plain PQ on these patch vectors loses far
    # more neighbours. Re-ranking copies live in a FAISS IndexRefine, which takes no ids of
    # its own: an id map goes around it.
    rotated_dim = -(-dim // spec.pq_m) * spec.pq_m
    description = f"OPQ{spec.pq_m}_{rotated_dim},{lists_and_codes}"
    if spec.refine_bits:
        description = f"IDMap2,{description},Refine(SQ{spec.refine_bits})"
    return faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)


def _inverted_lists(index: faiss.Index) -> faiss.InvertedLists | None:
    """The inverted lists of an IVF index (as their concrete class), ``None`` for other kinds."""
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_InvertedLists(ivf.invlists)


def _mmap_flags(spec: IndexSpec) -> int:
    if spec.kind in ("ivfflat", "ivfpq"):
        return faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    return faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def _fsync_file(path: str | Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
