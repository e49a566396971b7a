"""An IVF-Flat index's lists chosen by NumPy, then searched by FAISS: FAISS's own answers."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from tunetrace.index import list_assignment
from tunetrace.index._kernels import largest_per_row
from tunetrace.index.list_assignment import flat_list_centroids, nearest_lists
from tunetrace.index.vector_index import IndexSpec, VectorIndex

DIM = 24


def _unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    vectors = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


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
    vectors = _unit_vectors(200, seed=3)
    index = VectorIndex.build(
        DIM,
        IndexSpec(kind="ivfflat", nlist=20, nprobe=1, vector_bits=16),
        vectors,
        np.arange(200, dtype=np.int64),
    )
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
