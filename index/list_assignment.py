"""Searching an IVF-Flat index with its lists chosen by one NumPy matrix product.

FAISS's flat coarse quantiser picks each query vector's nearest lists with a matrix product
and a heap per vector; for a long upload's ~10,000 patch vectors against ~900 list
centroids, NumPy's product and a compiled pass keeping each row's few best
(``argpartition`` for many) do the same in about a third of the time (see the design
notes). Where the index keeps its lists in memory, the lists so chosen are searched here:
the query vectors sent to each list are multiplied with its vectors in one matrix product,
and a compiled pass keeps each vector's best (:class:`ListViews`). FAISS takes the lists one
query vector at a time; a long upload sends ~40 vectors to each list, and one product per
list does their work in about half the time (see the design notes). Other lists are searched
by FAISS itself (``search_preassigned``). Only an inner-product IVF-Flat index with a flat
quantiser qualifies (the kind a catalogue of about 10,000 to 500,000 vectors uses); larger
indexes find their lists through an HNSW graph.
"""

from __future__ import annotations

import faiss
import numpy as np
from tunetrace.index._kernels import keep_best, largest_per_row

#: Lists per vector up to which each row's best are kept in one compiled pass (a long query
#: searches a few lists); for more, ``argpartition`` is the faster.
MOST_PROBES_KEPT_IN_ONE_PASS = 16


def flat_list_centroids(index: faiss.Index) -> np.ndarray | None:
    """The list centroids of an inner-product IVF-Flat index with a flat quantiser.

    Parameters
    ----------
    index : faiss.Index
        As searched (not wrapped in an id map or a transform).

    Returns
    -------
    centroids : np.ndarray [shape=(nlist, d), dtype=float32] or None
        A read-only copy; ``None`` for any other kind of index, or one not trained.
    """
    if not isinstance(index, faiss.IndexIVFFlat) or not index.is_trained:
        return None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    quantiser = faiss.downcast_index(index.quantizer)
    if (
        not isinstance(quantiser, faiss.IndexFlat)
        or quantiser.metric_type != faiss.METRIC_INNER_PRODUCT
        or quantiser.ntotal != index.nlist
    ):
        return None
    centroids = np.ascontiguousarray(quantiser.reconstruct_n(0, index.nlist), dtype=np.float32)
    centroids.flags.writeable = False
    return centroids


def nearest_lists(
    vectors: np.ndarray, centroids: np.ndarray, probes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's ``probes`` most similar centroids (inner product), in no set order.

    Parameters
    ----------
    vectors : np.ndarray [shape=(n, d), dtype=float32]
    centroids : np.ndarray [shape=(nlist, d), dtype=float32]
    probes : int
        At least one; more than ``nlist`` takes every list.

    Returns
    -------
    lists : np.ndarray [shape=(n, min(probes, nlist)), dtype=int64]
    similarities : np.ndarray [shape=(n, min(probes, nlist)), dtype=float32]
    """
    similarities = vectors @ centroids.T
    n_lists = centroids.shape[0]
    if probes >= n_lists:
        lists = np.broadcast_to(np.arange(n_lists, dtype=np.int64), similarities.shape)
        return np.ascontiguousarray(lists), np.ascontiguousarray(similarities)
    if probes <= MOST_PROBES_KEPT_IN_ONE_PASS:
        return largest_per_row(np.ascontiguousarray(similarities, dtype=np.float32), probes)
    lists = np.argpartition(-similarities, probes - 1, axis=1)[:, :probes].astype(np.int64)
    chosen = np.take_along_axis(similarities, lists, axis=1)
    return np.ascontiguousarray(lists), np.ascontiguousarray(chosen, dtype=np.float32)


def preassigned_search(
    index: faiss.IndexIVFFlat,
    vectors: np.ndarray,
    k: int,
    centroids: np.ndarray,
    probes: int,
    views: ListViews | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``index`` for the ``k`` most similar vectors, in the lists
    :func:`nearest_lists` chooses.

    Parameters
    ----------
    index : faiss.IndexIVFFlat
        One :func:`flat_list_centroids` accepts.
    vectors : np.ndarray [shape=(n, d)]
    k : int
    centroids : np.ndarray
        From :func:`flat_list_centroids` of ``index``.
    probes : int
        Lists searched per vector (at least one).
    views : ListViews, optional
        ``index``'s lists, made since it last changed: the lists are then searched by
        :meth:`ListViews.search`, else by FAISS.

    Returns
    -------
    similarities : np.ndarray [shape=(n, k), dtype=float32]
        Best first.
    ids : np.ndarray [shape=(n, k), dtype=int64]
        -1 where the lists hold fewer than ``k`` vectors.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    lists, list_similarities = nearest_lists(vectors, centroids, probes)
    return search_lists(index, vectors, k, lists, list_similarities, views)


def search_lists(
    index: faiss.IndexIVF,
    vectors: np.ndarray,
    k: int,
    lists: np.ndarray,
    list_similarities: np.ndarray,
    views: ListViews | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``index`` for the ``k`` most similar vectors in the lists given for each
    vector (chosen by :func:`nearest_lists`, or elsewhere by the same quantiser).

    Parameters
    ----------
    index : faiss.IndexIVF
        Any inverted-list index (``views`` only for one :func:`flat_list_centroids` accepts).
    vectors : np.ndarray [shape=(n, d)]
        As the index's lists see them (after any transform in front of the index).
    k : int
    lists, list_similarities : np.ndarray [shape=(n, probes)]
        Each vector's lists (``-1``: none) and their centroids' similarities to it.
    views : ListViews, optional
        See :func:`preassigned_search`.

    Returns
    -------
    similarities, ids : np.ndarray
        As :func:`preassigned_search`'s.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    list_similarities = np.ascontiguousarray(list_similarities, dtype=np.float32)
    if views is not None:
        return views.search(vectors, k, lists)
    n = len(vectors)
    similarities = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    # The parameters carry the number of lists per vector, so that concurrent searches of one
    # index with other numbers do not share a setting (FAISS's Python wrapper takes none).
    parameters = faiss.SearchParametersIVF(nprobe=lists.shape[1])
    index.search_preassigned_c(
        n,
        faiss.swig_ptr(vectors),
        k,
        faiss.swig_ptr(lists),
        faiss.swig_ptr(list_similarities),
        faiss.swig_ptr(similarities),
        faiss.swig_ptr(ids),
        False,
        parameters,
    )
    return similarities, ids


#: The similarity FAISS reports where a query has fewer than ``k`` neighbours (inner product).
NO_NEIGHBOUR = -np.finfo(np.float32).max
#: Most similarities one matrix product makes (query vectors times list vectors): a list
#: that many query vectors probe, a large one (silence, say), is taken in parts.
MOST_PRODUCTS_AT_ONCE = 1 << 22


def require_neighbours(k: int) -> None:
    """Refuse a search for fewer than one neighbour per vector (FAISS raises its own error
    for it, and :meth:`ListViews.search`'s compiled merge would write past its arrays).

    Raises
    ------
    ValueError
        If ``k`` is less than 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")


class ListViews:
    """The vectors and ids of an IVF-Flat index's inverted lists, as NumPy arrays that share
    the index's memory (nothing is copied).

    The views are valid only while the index is alive and unchanged: the owner makes new
    ones after every add or removal (:class:`~tunetrace.index.vector_index.VectorIndex` does).

    Parameters
    ----------
    index : faiss.IndexIVFFlat
        One whose lists are held in memory (:meth:`of` says which qualify).

    Attributes
    ----------
    vectors : list of np.ndarray [shape=(size, d), dtype=float32]
        Each list's vectors.
    ids : list of np.ndarray [shape=(size,), dtype=int64]
        Each list's vector ids.
    """

    def __init__(self, index: faiss.IndexIVFFlat) -> None:
        self._index = index  # keeps the memory the views share alive
        lists = faiss.downcast_InvertedLists(index.invlists)
        dim = index.d
        self.vectors: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        for number in range(index.nlist):
            size = lists.list_size(number)
            if size == 0:
                self.vectors.append(np.zeros((0, dim), dtype=np.float32))
                self.ids.append(np.zeros(0, dtype=np.int64))
                continue
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * index.code_size)
            self.vectors.append(codes.view(np.float32).reshape(size, dim))
            self.ids.append(faiss.rev_swig_ptr(lists.get_ids(number), size))

    @classmethod
    def of(cls, index: faiss.Index) -> ListViews | None:
        """Views of an index's lists, where they can be searched here.

        Parameters
        ----------
        index : faiss.Index

        Returns
        -------
        views : ListViews or None
            ``None`` unless ``index`` is an inner-product IVF-Flat index whose lists are
            kept in one in-memory array each (not on disk, not in blocks).
        """
        if type(index) is not faiss.IndexIVFFlat:
            return None
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            return None
        lists = faiss.downcast_InvertedLists(index.invlists)
        if type(lists) is not faiss.ArrayInvertedLists:
            return None
        return cls(index)

    def search(
        self, vectors: np.ndarray, k: int, lists: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar vectors of each query vector within its chosen lists.

        Parameters
        ----------
        vectors : np.ndarray [shape=(n, d), dtype=float32]
        k : int
        lists : np.ndarray [shape=(n, probes), dtype=int64]
            The lists each vector searches (:func:`nearest_lists`); each at most once, and
            none where the number is negative (as FAISS skips them).

        Returns
        -------
        similarities : np.ndarray [shape=(n, k), dtype=float32]
            Best first; :data:`NO_NEIGHBOUR` where the lists hold fewer than ``k`` vectors.
        ids : np.ndarray [shape=(n, k), dtype=int64]
            -1 there.

        Raises
        ------
        ValueError
            If ``k`` is less than 1.
        """
        require_neighbours(k)
        n, probes = lists.shape
        similarities = np.full((n, k), NO_NEIGHBOUR, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        pairs = lists.ravel()
        if len(pairs) == 0:
            return similarities, ids
        order = np.argsort(pairs, kind="stable")
        rows = order // probes  # the query vector of each (vector, list) pair, by list
        chosen = pairs[order]
        edges = np.flatnonzero(np.diff(chosen)) + 1
        for first, stop in zip(
            np.concatenate(([0], edges)), np.concatenate((edges, [len(chosen)])), strict=True
        ):
            number = int(chosen[first])
            if number < 0 or len(self.ids[number]) == 0:
                continue
            step = max(1, MOST_PRODUCTS_AT_ONCE // len(self.ids[number]))
            for part in range(first, stop, step):
                group = rows[part : min(part + step, stop)]
                products = vectors[group] @ self.vectors[number].T
                keep_best(similarities, ids, group, products, self.ids[number])
        return similarities, ids
