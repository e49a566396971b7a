"""An IVF-Flat index's lists chosen by NumPy, then searched by FAISS or by one matrix product
per list: FAISS's own answers."""

from __future__ import annotations

import threading
import time

import faiss
import numpy as np
import pytest
from tunetrace.index import list_assignment
from tunetrace.index._kernels import keep_best, largest_per_row
from tunetrace.index.list_assignment import (
    NO_NEIGHBOUR,
    ListViews,
    flat_list_centroids,
    nearest_lists,
)
from tunetrace.index.vector_index import IndexSpec, VectorIndex

DIM = 24


def _unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    vectors = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _small_ivfflat(n: int, *, nlist: int, nprobe: int, seed: int) -> tuple[VectorIndex, np.ndarray]:
    """An IVF-Flat index of ``n`` vectors with ids ``0..n-1``, and the vectors."""
    vectors = _unit_vectors(n, seed=seed)
    spec = IndexSpec(kind="ivfflat", nlist=nlist, nprobe=nprobe, vector_bits=16)
    return VectorIndex.build(DIM, spec, vectors, np.arange(n, dtype=np.int64)), vectors


@pytest.fixture(scope="module")
def ivfflat() -> tuple[VectorIndex, np.ndarray]:
    vectors = _unit_vectors(4_000, seed=0)
    ids = np.arange(len(vectors), dtype=np.int64) * 5 + 11  # ids are kept, not positions
    spec = IndexSpec(kind="ivfflat", nlist=40, nprobe=8, vector_bits=16)
    return VectorIndex.build(DIM, spec, vectors, ids), vectors


def test_nearest_lists_are_the_quantisers_own(ivfflat: tuple[VectorIndex, np.ndarray]) -> None:
    index, _ = ivfflat
    faiss_index = index._index
    centroids = flat_list_centroids(faiss_index)
    queries = _unit_vectors(500, seed=1)
    for probes in (1, 3, 8, 40, 100):
        lists, similarities = nearest_lists(queries, centroids, probes)
        expected_similarities, expected = faiss_index.quantizer.search(queries, min(probes, 40))
        assert lists.shape == expected.shape
        np.testing.assert_array_equal(np.sort(lists, axis=1), np.sort(expected, axis=1))
        np.testing.assert_allclose(
            np.sort(similarities, axis=1), np.sort(expected_similarities, axis=1), atol=1e-5
        )


def test_each_rows_largest_are_kept_in_one_pass_as_argpartition_finds_them() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(size=(300, 57)).astype(np.float32)
    values[:, 0] = 9.0  # the first column best in every row, and one row falling throughout
    values[7] = -np.arange(57, dtype=np.float32)
    for count in (1, 2, 5, 16, 56, 57):
        columns, largest = largest_per_row(values, count)
        expected = np.argpartition(-values, count - 1, axis=1)[:, :count]
        np.testing.assert_array_equal(np.sort(columns, axis=1), np.sort(expected, axis=1))
        np.testing.assert_array_equal(largest, np.take_along_axis(values, columns, axis=1))


@pytest.mark.parametrize("effort", [1.0, 0.5, 0.125])
def test_search_answers_as_faiss_does_and_takes_the_numpy_lists(
    ivfflat: tuple[VectorIndex, np.ndarray], effort: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, _ = ivfflat
    queries = _unit_vectors(300, seed=2)
    probes = max(1, round(8 * effort))
    expected_similarities, expected = index._index.search(
        queries, 10, params=faiss.SearchParametersIVF(nprobe=probes)
    )
    calls = []
    original = list_assignment.nearest_lists

    def counted(*args: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(args[2])
        return original(*args)

    monkeypatch.setattr(list_assignment, "nearest_lists", counted)
    similarities, found = index.search(queries, 10, effort=effort)

    assert calls == [probes]  # the lists were chosen outside FAISS, as many as asked
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    assert index._index.nprobe == 8  # the index's own setting is untouched


def test_too_few_vectors_in_the_probed_lists_leave_ids_missing() -> None:
    index, vectors = _small_ivfflat(200, nlist=20, nprobe=1, seed=3)
    similarities, found = index.search(vectors[:5], 150)
    assert (found == -1).any()  # one list holds fewer than 150
    np.testing.assert_array_equal(found[:, 0], np.arange(5))  # each its own list's first
    assert np.isfinite(similarities[found >= 0]).all()


def test_other_kinds_are_searched_by_faiss_alone() -> None:
    vectors = _unit_vectors(2_000, seed=4)
    ids = np.arange(len(vectors), dtype=np.int64)
    for spec in (IndexSpec(kind="flat"), IndexSpec(kind="hnsw")):
        built = VectorIndex.build(DIM, spec, vectors, ids)
        assert flat_list_centroids(built._index) is None, spec.kind
    # large catalogues' lists are found through an HNSW graph over their centroids
    for description in ("IVF16_HNSW32,PQ8x4fs", "IVF16_HNSW32,Flat"):
        graph = faiss.index_factory(DIM, description, faiss.METRIC_INNER_PRODUCT)
        graph.train(vectors)
        assert flat_list_centroids(graph) is None, description
    l2 = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, 8, faiss.METRIC_L2)
    l2.train(vectors)
    assert flat_list_centroids(l2) is None
    untrained = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, 8, faiss.METRIC_INNER_PRODUCT)
    assert flat_list_centroids(untrained) is None


def _faiss_preassigned(
    index: faiss.IndexIVFFlat, queries: np.ndarray, k: int, lists: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's own search of the given lists."""
    similarities = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    index.search_preassigned_c(
        len(queries),
        faiss.swig_ptr(queries),
        k,
        faiss.swig_ptr(lists),
        faiss.swig_ptr(np.zeros(lists.shape, dtype=np.float32)),
        faiss.swig_ptr(similarities),
        faiss.swig_ptr(ids),
        False,
        faiss.SearchParametersIVF(nprobe=lists.shape[1]),
    )
    return similarities, ids


@pytest.mark.parametrize(("probes", "k"), [(1, 10), (3, 20), (8, 5), (40, 1)])
def test_each_lists_product_finds_what_faiss_finds_in_the_same_lists(
    ivfflat: tuple[VectorIndex, np.ndarray], probes: int, k: int
) -> None:
    index, _ = ivfflat
    faiss_index = index._index
    views = ListViews.of(faiss_index)
    assert views is not None
    queries = _unit_vectors(400, seed=6)
    lists, _ = nearest_lists(queries, flat_list_centroids(faiss_index), probes)
    expected_similarities, expected = _faiss_preassigned(faiss_index, queries, k, lists)

    similarities, found = views.search(queries, k, lists)

    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    # the same neighbours, best first, wherever the similarities tell them apart
    gaps = np.abs(np.diff(expected_similarities, axis=1))
    distinct = (gaps > 1e-5).all(axis=1)
    assert distinct.mean() > 0.9
    np.testing.assert_array_equal(found[distinct], expected[distinct])


def test_lists_too_small_or_empty_leave_neighbours_missing_as_faiss_does() -> None:
    index, vectors = _small_ivfflat(60, nlist=20, nprobe=2, seed=7)
    faiss_index = index._index
    queries = vectors[:6]
    lists, _ = nearest_lists(queries, flat_list_centroids(faiss_index), 2)
    # one list emptied, and one query sent to it too
    empty = next(n for n in range(20) if n not in lists[0] and faiss_index.invlists.list_size(n))
    index.remove(ListViews.of(faiss_index).ids[empty].copy())
    assert faiss_index.invlists.list_size(empty) == 0
    lists[0, 1] = empty
    expected_similarities, expected = _faiss_preassigned(faiss_index, queries, 40, lists)

    similarities, found = ListViews.of(faiss_index).search(queries, 40, lists)

    np.testing.assert_array_equal(found == -1, expected == -1)
    assert (found == -1).any()
    assert (similarities[found == -1] == NO_NEIGHBOUR).all()
    np.testing.assert_array_equal(similarities[found == -1], expected_similarities[found == -1])
    kept = found >= 0
    np.testing.assert_allclose(similarities[kept], expected_similarities[kept], atol=1e-5)
    empty_result = ListViews.of(faiss_index).search(queries[:0], 40, lists[:0])
    assert empty_result[0].shape == (0, 40) and empty_result[1].shape == (0, 40)


def test_the_lists_are_read_anew_after_vectors_are_added_or_removed() -> None:
    vectors = _unit_vectors(3_000, seed=8)
    spec = IndexSpec(kind="ivfflat", nlist=16, nprobe=16, vector_bits=16)
    index = VectorIndex.build(DIM, spec, vectors[:500], np.arange(500, dtype=np.int64))
    queries = vectors[2_500:2_600]
    index.search(queries, 5)  # the lists' views made
    # enough vectors that every list's memory moves
    index.add(vectors[500:], np.arange(500, 3_000, dtype=np.int64))
    similarities, found = index.search(queries, 5)
    np.testing.assert_array_equal(found[:, 0], np.arange(2_500, 2_600))  # each finds itself
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-3)  # kept at 16 bits

    index.remove_range(2_500, 2_600)
    similarities, found = index.search(queries, 5)
    assert not np.isin(found, np.arange(2_500, 2_600)).any()
    expected_similarities, _ = index._index.search(queries, 5)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


def test_only_in_memory_ivf_flat_lists_are_viewed(ivfflat: tuple[VectorIndex, np.ndarray]) -> None:
    index, vectors = ivfflat
    assert ListViews.of(index._index) is not None
    ids = np.arange(len(vectors), dtype=np.int64)
    for spec in (IndexSpec(kind="flat"), IndexSpec(kind="hnsw")):
        assert ListViews.of(VectorIndex.build(DIM, spec, vectors, ids)._index) is None
    fast_scan = faiss.index_factory(DIM, "IVF16,PQ8x4fs", faiss.METRIC_INNER_PRODUCT)
    fast_scan.train(vectors)
    assert ListViews.of(fast_scan) is None
    l2 = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, 8, faiss.METRIC_L2)
    l2.train(vectors)
    l2.add(vectors)
    assert ListViews.of(l2) is None  # its answers would be inner products


def test_keeping_each_rows_best_merges_lists_as_sorting_them_together_would() -> None:
    rng = np.random.default_rng(9)
    n, k = 50, 7
    best = np.full((n, k), NO_NEIGHBOUR, dtype=np.float32)
    best_ids = np.full((n, k), -1, dtype=np.int64)
    seen: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    next_id = 0
    for size in (3, 20, 1, 12):
        rows = np.sort(rng.choice(n, 30, replace=False)).astype(np.int64)
        # coarse values, so that ties between lists and within a list occur
        similarities = rng.integers(-5, 6, size=(30, size)).astype(np.float32) / 4
        ids = np.arange(next_id, next_id + size, dtype=np.int64)
        next_id += size
        keep_best(best, best_ids, rows, similarities, ids)
        for i, row in enumerate(rows):
            seen[row] += list(zip(similarities[i].tolist(), ids.tolist(), strict=True))
    for row in range(n):
        # best first; of equal values, the one met first
        expected = sorted(seen[row], key=lambda pair: -pair[0])[:k]
        expected += [(float(NO_NEIGHBOUR), -1)] * (k - len(expected))
        assert best[row].tolist() == [value for value, _ in expected]
        assert best_ids[row].tolist() == [found for _, found in expected]


def test_the_catalogues_ivf_flat_index_is_searched_through_its_lists_views(
    ivfflat: tuple[VectorIndex, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, _ = ivfflat
    searched = []
    original = ListViews.search

    def spied(self: ListViews, *args: object) -> tuple[np.ndarray, np.ndarray]:
        searched.append(self)
        return original(self, *args)

    monkeypatch.setattr(ListViews, "search", spied)
    index.search(_unit_vectors(20, seed=11), 5)
    index.search(_unit_vectors(20, seed=12), 5)
    assert len(searched) == 2
    assert searched[0] is searched[1]  # made once, kept while the index is unchanged


def test_an_add_waits_for_a_search_reading_the_lists_and_drops_its_views(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index, vectors = _small_ivfflat(500, nlist=16, nprobe=16, seed=13)
    more = _unit_vectors(3_000, seed=14)
    original = ListViews.of

    adders: list[threading.Thread] = []

    def with_an_add_meanwhile(faiss_index: faiss.Index) -> ListViews | None:
        views = original(faiss_index)  # of the lists as they were
        # another thread's add, while a search makes and uses the views ...
        adder = threading.Thread(
            target=index.add, args=(more, np.arange(10_000, 13_000, dtype=np.int64))
        )
        adder.start()
        adders.append(adder)
        time.sleep(0.2)
        assert adder.is_alive(), "an add ran while a search was reading the lists"
        return views

    monkeypatch.setattr(ListViews, "of", with_an_add_meanwhile)
    index.search(vectors[:5], 5)  # ... waits for this search, then changes the lists
    monkeypatch.setattr(ListViews, "of", original)
    adders[0].join()

    similarities, found = index.search(more[:50], 5)
    np.testing.assert_array_equal(found[:, 0], np.arange(10_000, 10_050))  # each finds itself
    expected_similarities, _ = index._index.search(more[:50], 5)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


def test_views_made_before_a_removal_are_not_used_after_it() -> None:
    index, vectors = _small_ivfflat(3_000, nlist=16, nprobe=16, seed=18)
    index.search(vectors[:5], 5)  # views of the lists as they are
    index.remove(np.arange(100, dtype=np.int64))  # moves most lists' vectors

    similarities, found = index.search(vectors[:200], 5)
    assert not np.isin(found, np.arange(100)).any()  # nothing removed is found ...
    np.testing.assert_array_equal(found[100:, 0], np.arange(100, 200))  # ... the rest are
    expected_similarities, _ = index._index.search(vectors[:200], 5)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


def test_a_list_many_vectors_probe_is_multiplied_in_parts(
    ivfflat: tuple[VectorIndex, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, _ = ivfflat
    faiss_index = index._index
    queries = _unit_vectors(300, seed=15)
    lists, _ = nearest_lists(queries, flat_list_centroids(faiss_index), 4)
    expected_similarities, expected = _faiss_preassigned(faiss_index, queries, 10, lists)
    products = []
    original = list_assignment.keep_best

    def counted(*args: np.ndarray) -> None:
        products.append(args[3].size)
        original(*args)

    monkeypatch.setattr(list_assignment, "keep_best", counted)
    monkeypatch.setattr(list_assignment, "MOST_PRODUCTS_AT_ONCE", 2_000)
    similarities, found = ListViews.of(faiss_index).search(queries, 10, lists)

    longest = max(faiss_index.invlists.list_size(n) for n in range(40))
    assert max(products) <= max(2_000, longest)  # a part is one query vector at least
    assert len(products) > 40  # lists were split
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    distinct = (np.abs(np.diff(expected_similarities, axis=1)) > 1e-5).all(axis=1)
    np.testing.assert_array_equal(found[distinct], expected[distinct])


def test_no_neighbours_asked_for_is_an_error_not_a_write_past_the_arrays(
    ivfflat: tuple[VectorIndex, np.ndarray],
) -> None:
    index, _ = ivfflat
    queries = _unit_vectors(3, seed=16)
    with pytest.raises(ValueError, match="at least 1"):
        index.search(queries, 0)
    lists, _ = nearest_lists(queries, flat_list_centroids(index._index), 2)
    with pytest.raises(ValueError, match="at least 1"):
        ListViews.of(index._index).search(queries, 0, lists)


def test_lists_numbered_negative_are_skipped_as_faiss_skips_them(
    ivfflat: tuple[VectorIndex, np.ndarray],
) -> None:
    index, _ = ivfflat
    queries = _unit_vectors(20, seed=17)
    lists, _ = nearest_lists(queries, flat_list_centroids(index._index), 3)
    lists[:, 1] = -1
    expected_similarities, expected = _faiss_preassigned(index._index, queries, 5, lists)
    similarities, found = ListViews.of(index._index).search(queries, 5, lists)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
