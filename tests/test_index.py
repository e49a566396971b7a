"""Vector index kinds (exact, IVF-PQ, HNSW), memory-mapped readers, and index rebuilds."""

from __future__ import annotations

import gc
import itertools
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import librosa
import numpy as np
import pytest
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.compact_vectors import VectorGrid
from tunetrace.index.training_sample import content_keys, sample_positions, training_rows
from tunetrace.index.vector_index import IndexSpec, LayeredIndex, VectorIndex, training_count

from tests.conftest import SAMPLE_RATE, write_audio
from tunetrace.errors import CatalogueError
from tunetrace.matcher import Matcher

DIM = 190


def _clustered_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 200 centres: structured like real patch vectors, not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIM))
    vectors = centres[rng.integers(0, 200, n)] + 0.5 * rng.normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _clustered_vectors(3_000)


#: Small codes and few lists keep training quick in tests. These clustered random vectors are
#: not patch vectors, so the alteration-discriminant projection (measured on real ones) is left
#: out here and tested on fixture audio below.
SMALL_IVFPQ = IndexSpec(kind="ivfpq", nlist=16, pq_m=10, pq_bits=8, nprobe=8, projection_dims=0)


@pytest.fixture(scope="module")
def ivfpq_index(vectors: np.ndarray) -> VectorIndex:
    return VectorIndex.build(DIM, SMALL_IVFPQ, vectors, np.arange(len(vectors), dtype=np.int64))


def _noisy_copies(vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    sources = rng.choice(len(vectors), n, replace=False)
    return sources, vectors[sources] + 0.02 * rng.normal(size=(n, DIM)).astype(np.float32)


def test_approximate_kinds_find_the_indexed_original_of_a_noisy_copy(
    vectors: np.ndarray, ivfpq_index: VectorIndex
) -> None:
    # what candidate search needs: a query patch finds the reference patch it was copied from
    ids = np.arange(len(vectors), dtype=np.int64) * 7  # ids are kept, not positions
    hnsw = VectorIndex.build(DIM, IndexSpec(kind="hnsw"), vectors, ids)
    sources, copies = _noisy_copies(vectors, 300)
    _, found = hnsw.search(copies, 10)
    assert np.mean([ids[s] in row for s, row in zip(sources, found, strict=True)]) >= 0.95
    # the coarse codes of the small test index lose more; the benchmark measures the default
    _, found = ivfpq_index.search(copies, 10)
    assert np.mean([s in row for s, row in zip(sources, found, strict=True)]) >= 0.5


@pytest.mark.parametrize("kind", ["flat", "ivfflat", "ivfpq", "hnsw"])
def test_memory_mapped_index_answers_like_the_loaded_one(
    tmp_path: Path, vectors: np.ndarray, ivfpq_index: VectorIndex, kind: str
) -> None:
    ids = np.arange(len(vectors), dtype=np.int64)
    index = (
        ivfpq_index
        if kind == "ivfpq"
        else VectorIndex.build(DIM, IndexSpec(kind=kind, nlist=32, nprobe=8), vectors, ids)
    )
    index.save(tmp_path / "v.faiss")
    mapped = VectorIndex.read(tmp_path / "v.faiss", dim=DIM, spec=index.spec, mmap=True)
    assert mapped.spec.kind == kind
    queries = vectors[:50]
    np.testing.assert_array_equal(mapped.search(queries, 5)[1], index.search(queries, 5)[1])


def test_ivfpq_is_compact_and_removes_in_place(
    vectors: np.ndarray, ivfpq_index: VectorIndex, tmp_path: Path
) -> None:
    ids = np.arange(len(vectors), dtype=np.int64)
    ivfpq_index.save(tmp_path / "ivfpq.faiss")
    assert (tmp_path / "ivfpq.faiss").stat().st_size < vectors.size * 4 / 5  # float32 / 5
    reloaded = VectorIndex.read(tmp_path / "ivfpq.faiss", dim=DIM, spec=ivfpq_index.spec)
    reloaded.remove(ids[:100])
    assert reloaded.size == len(vectors) - 100
    assert not set(reloaded.search(vectors[:100], 5)[1].ravel()) & set(ids[:100])


@pytest.mark.parametrize("kind", ["flat", "ivfflat"])
@pytest.mark.parametrize("stored_as", ["8-bit", "float16"])
def test_full_vector_files_are_compact_and_read_back_exactly(
    vectors: np.ndarray, kind: str, stored_as: str, tmp_path: Path
) -> None:
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 1
    grid = VectorGrid.fit(vectors, params_digest="test") if stored_as == "8-bit" else None
    spec = IndexSpec(kind=kind, nlist=32, nprobe=8)
    index = VectorIndex.build(DIM, spec, vectors, ids, grid=grid)
    index.save(tmp_path / "index.faiss")
    bytes_per_value = 1 if grid is not None else 2
    # the codes and the 8-byte id of each vector, plus the lists' centroids and the grid
    size = (tmp_path / "index.faiss").stat().st_size
    assert size < len(vectors) * (bytes_per_value * DIM + 8) + 32 * DIM * 4 + 8192
    reloaded = VectorIndex.read(tmp_path / "index.faiss", dim=DIM, spec=index.spec)
    queries = vectors[:300] + np.float32(0.05)
    expected, got = index.search(queries, 10), reloaded.search(queries, 10)
    np.testing.assert_array_equal(expected[1], got[1])
    np.testing.assert_array_equal(expected[0], got[0])
    # a reloaded index keeps rounding new vectors as the file does, and saves the same file
    reloaded.remove(ids[:10])
    reloaded.add(vectors[:10], ids[:10])
    assert reloaded.size == len(vectors)
    reloaded.save(tmp_path / "again.faiss")
    again = VectorIndex.read(tmp_path / "again.faiss", dim=DIM, spec=index.spec)
    # (the same values, in another order in memory: float sums may round differently)
    np.testing.assert_allclose(again.search(queries, 10)[0], expected[0], rtol=1e-5)


def test_vector_grid_steps_are_powers_of_two_and_round_trips_are_exact(
    vectors: np.ndarray,
) -> None:
    grid = VectorGrid.fit(vectors, params_digest="test")
    exponents = np.log2(grid.step)
    np.testing.assert_array_equal(exponents, np.round(exponents))
    assert np.all(grid.lowest <= vectors.min(axis=0))
    assert np.all(grid.lowest + 255 * grid.step >= vectors.max(axis=0))
    rounded = grid.rounded(vectors)
    np.testing.assert_array_equal(grid.rounded(rounded), rounded)  # idempotent
    assert np.all(np.abs(rounded - vectors) <= grid.step * (0.5 + 1e-4))  # float32 midpoints
    back = VectorGrid.from_faiss_ranges(grid.faiss_ranges())
    np.testing.assert_array_equal(back.lowest, grid.lowest)
    np.testing.assert_array_equal(back.step, grid.step)
    # values past the grid take its edge instead of wrapping around
    far = np.vstack([grid.lowest - 100 * grid.step, grid.lowest + 400 * grid.step])
    np.testing.assert_array_equal(grid.codes(far), [[0] * DIM, [255] * DIM])


def test_ivfflat_finds_exact_copies_and_removes_in_place(vectors: np.ndarray) -> None:
    ids = np.arange(len(vectors), dtype=np.int64)
    index = VectorIndex.build(DIM, IndexSpec(kind="ivfflat", nlist=32, nprobe=8), vectors, ids)
    similarities, found = index.search(vectors[:200], 1)
    # Full vectors: a stored vector is its own nearest neighbour (its list is always probed).
    np.testing.assert_array_equal(found[:, 0], ids[:200])
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-4)
    index.remove(ids[:100])
    assert index.size == len(vectors) - 100
    assert not set(index.search(vectors[:100], 5)[1].ravel()) & set(ids[:100])


def test_ivf_search_effort_probes_fewer_lists(vectors: np.ndarray) -> None:
    ids = np.arange(len(vectors), dtype=np.int64)
    index = VectorIndex.build(DIM, IndexSpec(kind="ivfflat", nlist=32, nprobe=8), vectors, ids)
    queries = _clustered_vectors(300, seed=5)
    exact = VectorIndex.build(DIM, IndexSpec(kind="flat"), vectors, ids).search(queries, 10)[1]

    def recall(found: np.ndarray) -> float:
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])

    full = recall(index.search(queries, 10)[1])
    assert recall(index.search(queries, 10, effort=1.0)[1]) == full
    # one list of eight: still each stored vector's own, but fewer of the true neighbours
    assert recall(index.search(queries, 10, effort=0.125)[1]) < full
    np.testing.assert_array_equal(index.search(vectors[:50], 1, effort=0.125)[1][:, 0], ids[:50])
    # lists behind a transform (OPQ) or a re-ranking stage are probed fewer times too
    for spec in (SMALL_IVFPQ, replace(SMALL_IVFPQ, refine_bits=8)):
        wrapped = VectorIndex.build(DIM, spec, vectors, ids)
        assert recall(wrapped.search(queries, 10, effort=0.125)[1]) < recall(
            wrapped.search(queries, 10)[1]
        )
    # kinds with no inverted lists search as always
    hnsw = VectorIndex.build(DIM, IndexSpec(kind="hnsw"), vectors, ids)
    np.testing.assert_array_equal(
        hnsw.search(queries, 10, effort=0.125)[1], hnsw.search(queries, 10)[1]
    )


def test_hnsw_cannot_remove_in_place(vectors: np.ndarray) -> None:
    index = VectorIndex.build(DIM, IndexSpec(kind="hnsw"), vectors[:1000], np.arange(1000))
    assert not index.supports_removal
    with pytest.raises(NotImplementedError):
        index.remove(np.arange(3))


def test_ivfpq_re_ranking_with_quantised_copies_finds_more_originals(
    vectors: np.ndarray, ivfpq_index: VectorIndex, tmp_path: Path
) -> None:
    ids = np.arange(len(vectors), dtype=np.int64) * 7 + (3 << 24)
    spec = replace(SMALL_IVFPQ, refine_bits=8, refine_factor=4)
    refined = VectorIndex.build(DIM, spec, vectors, ids)
    sources, copies = _noisy_copies(vectors, 300)
    plain_hits = np.mean(
        [s in row for s, row in zip(sources, ivfpq_index.search(copies, 10)[1], strict=True)]
    )
    _, found = refined.search(copies, 10)
    refined_hits = np.mean([ids[s] in row for s, row in zip(sources, found, strict=True)])
    assert refined_hits >= 0.9 and refined_hits > plain_hits
    assert not refined.supports_removal  # the copies cannot drop vectors: rebuild instead
    with pytest.raises(NotImplementedError):
        refined.remove(ids[:3])
    refined.save(tmp_path / "v.faiss")
    mapped = VectorIndex.read(tmp_path / "v.faiss", dim=DIM, spec=refined.spec, mmap=True)
    assert mapped.spec == refined.spec
    np.testing.assert_array_equal(mapped.search(copies[:50], 10)[1], found[:50])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "hnsw", "refine_bits": 4}, "only an ivfpq index"),
        ({"kind": "ivfpq", "refine_bits": 3}, "bits must be one of"),
        ({"kind": "ivfpq", "refine_bits": 4, "refine_factor": 0.5}, "at least 1"),
        ({"kind": "ivfpq", "refine_bits": 4}, "only without a projection"),
        ({"kind": "ivfpq", "pq_m": 48}, "must divide the projection"),
        ({"kind": "ivfpq", "pq_bits": 6}, "PQ bits must be one of"),
        ({"kind": "ivfpq", "projection_dims": -1}, "0 \\(none\\) or more"),
    ],
)
def test_index_settings_are_checked(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IndexSpec(**settings)


def test_auto_kind_keeps_re_ranking_and_projection_only_for_ivfpq() -> None:
    spec = IndexSpec(kind="auto", refine_bits=4, projection_dims=0)
    assert spec.resolved(5_000_000).refine_bits == 4
    assert spec.resolved(50_000).refine_bits == 0  # ivfflat holds full vectors already
    projected = IndexSpec(kind="auto")
    assert projected.resolved(5_000_000).projection_dims == 64
    assert projected.resolved(50_000).projection_dims == 0


def test_index_stamps_written_before_projections_read_as_unprojected() -> None:
    old = {k: v for k, v in IndexSpec(kind="ivfpq", pq_m=48, projection_dims=0).to_dict().items()
           if k != "projection_dims"}  # fmt: skip
    assert IndexSpec.from_dict(old).projection_dims == 0
    assert IndexSpec.from_dict(IndexSpec(kind="ivfpq").to_dict()).projection_dims == 64


@pytest.mark.parametrize(
    "spec",
    [IndexSpec(kind="ivfflat", nlist=32, nprobe=2), replace(SMALL_IVFPQ, pq_m=2, nprobe=2)],
    ids=["ivfflat", "ivfpq"],
)
def test_the_same_vectors_in_another_order_train_the_same_index(
    vectors: np.ndarray, spec: IndexSpec
) -> None:
    # works added in another order (several ingest workers) reach the index in another order:
    # the answers must not change. ivfflat trains on a subset of these vectors, ivfpq on all.
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 5
    order = np.random.default_rng(4).permutation(len(vectors))
    _, queries = _noisy_copies(vectors, 200)
    in_order = VectorIndex.build(DIM, spec, vectors, ids).search(queries, 10)
    shuffled = VectorIndex.build(DIM, spec, vectors[order], ids[order]).search(queries, 10)
    # (similarities are summed in another order when the lists hold vectors in another order)
    np.testing.assert_allclose(in_order[0], shuffled[0], atol=1e-5)
    if spec.kind == "ivfflat":  # product-quantised codes tie, and list order breaks the ties
        assert [set(row) for row in in_order[1]] == [set(row) for row in shuffled[1]]
    # another seed trains another index (the sample is not every vector in a fixed order)
    if spec.kind == "ivfflat":
        reseeded = VectorIndex.build(DIM, spec, vectors, ids, seed=1).search(queries, 10)
        assert np.abs(in_order[0] - reseeded[0]).max() > 1e-3


def test_training_sample_follows_the_vectors_contents_alone(vectors: np.ndarray) -> None:
    order = np.random.default_rng(5).permutation(len(vectors))
    keys = content_keys(vectors)
    assert np.array_equal(content_keys(vectors[order]), keys[order])
    assert len(np.unique(keys)) == len(vectors)
    nudged = vectors.copy()
    nudged[7, 100] = np.nextafter(nudged[7, 100], np.float32(2))  # one bit of one word
    changed = np.flatnonzero(content_keys(nudged) != keys)
    assert changed.tolist() == [7]
    assert not np.array_equal(content_keys(vectors, seed=1), keys)
    swapped = vectors.copy()
    swapped[7, [3, 4]] = swapped[7, [4, 3]]  # the same values in other columns
    assert content_keys(swapped)[7] != keys[7]
    chosen = training_rows(vectors, 300)
    assert np.array_equal(order[training_rows(vectors[order], 300)], chosen)
    assert len(set(chosen.tolist())) == 300
    assert len(training_rows(vectors, 0)) == 0
    with pytest.raises(ValueError, match="cannot train on -1 rows"):
        training_rows(vectors, -1)


def test_copies_of_one_vector_enter_the_training_sample_like_any_other(
    vectors: np.ndarray,
) -> None:
    # silence gives many all-zero patch vectors: they must not come all together or not at all
    with_silence = np.concatenate([vectors, np.zeros((300, DIM), dtype=np.float32)])
    order = np.random.default_rng(6).permutation(len(with_silence))
    for seed in range(6):
        chosen = training_rows(with_silence, 1100, seed)
        silent = int((chosen >= len(vectors)).sum())
        assert 60 <= silent <= 140, f"seed {seed}: {silent} of 1100 silent (100 expected)"
        again = order[training_rows(with_silence[order], 1100, seed)]
        assert np.array_equal(with_silence[again], with_silence[chosen])


def test_a_training_shared_by_parts_is_the_whole_ones(vectors: np.ndarray) -> None:
    # the vectors of several catalogues (shards), silence in each: keyed apart and joined in
    # any order, they choose the sample, and train the index, one catalogue of all would
    with_silence = np.concatenate([vectors, np.zeros((300, DIM), dtype=np.float32)])
    order = np.random.default_rng(8).permutation(len(with_silence))
    parts = np.array_split(with_silence[order], 3)
    keys = np.concatenate([content_keys(part) for part in parts[::-1]])
    joined = np.concatenate(parts[::-1])
    sample = joined[sample_positions(keys, 1100)]
    assert np.array_equal(sample, with_silence[training_rows(with_silence, 1100)])
    spec = IndexSpec(kind="ivfflat", nlist=16, nprobe=2).resolved(len(with_silence))
    count = training_count(spec, len(with_silence))
    shared = VectorIndex.trained(DIM, spec, joined[sample_positions(keys, count)])
    ids = np.arange(len(with_silence))
    whole = VectorIndex.build(DIM, spec, with_silence, ids)
    pieces = [  # each part's index built on the shared training, none trained on its own
        VectorIndex.build(DIM, IndexSpec(kind="flat"), with_silence[part], ids[part],
                          trained=shared)
        for part in np.array_split(np.arange(len(with_silence)), 2)
    ]  # fmt: skip
    assert shared.size == 0 and all(piece.spec == whole.spec for piece in pieces)
    queries = vectors[:50] + 0.05
    expected = whole.search(queries, 5)
    found = [piece.search(queries, 5) for piece in pieces]
    for row in range(len(queries)):
        merged = sorted(
            (float(s), int(i)) for sims, ids_ in found
            for s, i in zip(sims[row], ids_[row], strict=True)
        )[::-1][:5]  # fmt: skip
        np.testing.assert_allclose([s for s, _ in merged], expected[0][row], rtol=1e-6)
    again = VectorIndex.from_training_bytes(DIM, spec, shared.training_bytes())
    assert again.training_bytes() == shared.training_bytes()
    with pytest.raises(ValueError, match="empty index of the same dimension"):
        VectorIndex.build(DIM, spec, vectors[:10], ids[:10], trained=whole)
    with pytest.raises(ValueError, match="unreadable index training"):
        VectorIndex.from_training_bytes(DIM, spec, b"not an index")
    with pytest.raises(ValueError, match="resolved spec"):
        VectorIndex.trained(DIM, IndexSpec(kind="auto"), sample)


@pytest.mark.parametrize(
    "spec",
    [IndexSpec(kind="ivfflat", nlist=32, nprobe=6), SMALL_IVFPQ, replace(SMALL_IVFPQ, pq_bits=4)],
    ids=["ivfflat", "ivfpq", "ivfpq-fast-scan"],
)
def test_lists_assigned_by_a_training_are_searched_as_its_indexes_would_choose(
    vectors: np.ndarray, spec: IndexSpec
) -> None:
    # a sharded catalogue's client chooses a query's lists once with its copy of the shards'
    # training; each shard then searches those lists without running the quantiser
    ids = np.arange(len(vectors), dtype=np.int64)
    spec = spec.resolved(len(vectors))
    sample = vectors[training_rows(vectors, training_count(spec, len(vectors)))]
    training = VectorIndex.trained(DIM, spec, sample)
    half = len(vectors) // 2
    pieces = [VectorIndex.build(DIM, spec, vectors[part], ids[part], trained=training)
              for part in (slice(0, half), slice(half, None))]  # fmt: skip
    apart = VectorIndex.build(DIM, spec, vectors[:half], ids[:half])  # its own training
    assert {piece.lists_digest for piece in pieces} == {training.lists_digest}
    assert apart.lists_digest not in (None, training.lists_digest)
    assert VectorIndex(DIM).lists_digest is None and VectorIndex(DIM).assign(vectors) is None
    _, queries = _noisy_copies(vectors, 200)
    for effort in (1.0, 0.5):
        assignment = training.assign(queries, effort=effort)
        assert assignment.lists.shape == (200, max(1, round(spec.nprobe * effort)))
        for piece in pieces:
            found = piece.search_assigned(assignment, 10)
            expected = piece.search(queries, 10, effort=effort)
            assert found is not None
            np.testing.assert_array_equal(found[1], expected[1])
            np.testing.assert_allclose(found[0], expected[0], rtol=1e-6)
        assert apart.search_assigned(assignment, 10) is None  # built on another training
    # an assignment that does not fit is searched as usual, never handed to FAISS
    assignment = training.assign(queries)
    repeated = assignment.lists.copy()
    repeated[5, 1] = repeated[5, 0]  # one list twice: its vectors would come back twice
    for odd in (
        replace(assignment, lists=assignment.lists + spec.nlist),
        replace(assignment, lists=assignment.lists.astype(np.int32)),
        replace(assignment, vectors=assignment.vectors[:, :3]),
        replace(assignment, lists=assignment.lists[:, :0],
                similarities=assignment.similarities[:, :0]),
        replace(assignment, lists=repeated),
    ):  # fmt: skip
        assert pieces[0].search_assigned(odd, 10) is None
    with pytest.raises(ValueError):
        pieces[0].search_assigned(assignment, 0)
    layered = LayeredIndex(pieces[0])  # an assignment made for other vectors is not used
    np.testing.assert_array_equal(
        layered.search(queries[:50], 10, assignment=assignment)[1],
        pieces[0].search(queries[:50], 10)[1],
    )
    # another nprobe probes other lists: another digest, whatever the training
    other = VectorIndex.from_training_bytes(
        DIM, replace(spec, nprobe=spec.nprobe + 1), training.training_bytes()
    )
    assert other.lists_digest != training.lists_digest
    # a training record that is not an empty trained index of its kind is refused
    with pytest.raises(ValueError, match="hold no vectors"):
        VectorIndex.from_training_bytes(DIM, spec, pieces[0].training_bytes())
    with pytest.raises(ValueError, match="lists"):
        VectorIndex.from_training_bytes(DIM, replace(spec, nlist=spec.nlist + 1),
                                        training.training_bytes())  # fmt: skip
    with pytest.raises(ValueError, match="unreadable"):
        VectorIndex.from_training_bytes(DIM, spec, training.training_bytes()[:100])


def test_training_needs_enough_vectors(vectors: np.ndarray) -> None:
    with pytest.raises(ValueError, match="needs at least"):
        VectorIndex.build(DIM, SMALL_IVFPQ, vectors[:100], np.arange(100))
    assert IndexSpec(kind="auto").resolved(10).kind == "flat"
    assert IndexSpec(kind="auto").resolved(100_000).kind == "ivfflat"
    assert IndexSpec(kind="auto").resolved(600_000).kind == "ivfpq"
    with pytest.raises(ValueError):
        IndexSpec(kind="lsh")


@pytest.fixture()
def catalogue_copy(tmp_path: Path, built_catalogue: Path) -> Path:
    directory = tmp_path / "catalogue"
    shutil.copytree(built_catalogue, directory)
    return directory


@pytest.fixture(scope="module")
def stretched_song4(tmp_path_factory: pytest.TempPathFactory, songs: dict) -> Path:
    audio = librosa.effects.time_stretch(songs["song4"][: 20 * SAMPLE_RATE], rate=1.2)
    return write_audio(tmp_path_factory.mktemp("q") / "q.wav", audio)


@pytest.mark.parametrize(
    "spec",
    [IndexSpec(kind="hnsw"), IndexSpec(kind="flat")],
)
def test_catalogue_rebuilt_as_another_kind_still_matches_and_removes(
    catalogue_copy: Path, stretched_song4: Path, spec: IndexSpec
) -> None:
    with Catalogue(catalogue_copy) as catalogue:
        before = catalogue.generation
        catalogue.rebuild_index(spec)
        assert catalogue.generation == before + 1
    with Catalogue(catalogue_copy, read_only=True) as reader:  # a new process's view
        assert reader.info()["index_kind"] == spec.kind
        report = Matcher(reader).match_path(stretched_song4)
        assert report.matches[0].reference_id == "song4"
        with Catalogue(catalogue_copy) as writer:
            writer.remove("song4")
        assert reader.info()["index_kind"] == spec.kind
        report = Matcher(reader).match_path(stretched_song4)
        assert all(m.reference_id != "song4" for m in report.matches)


def test_read_only_catalogue_refuses_writes_and_sees_new_generations(
    catalogue_copy: Path, stretched_song4: Path
) -> None:
    reader = Catalogue(catalogue_copy, read_only=True)
    assert Matcher(reader).match_path(stretched_song4).matches[0].reference_id == "song4"
    with pytest.raises(CatalogueError, match="read-only"):
        reader.remove("song1")
    with Catalogue(catalogue_copy) as writer:
        writer.remove("song4")
    assert all(
        m.reference_id != "song4" for m in Matcher(reader).match_path(stretched_song4).matches
    )
    reader.close()


def test_index_build_command(catalogue_copy: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tunetrace.cli", "index", "build", "-c", str(catalogue_copy),
             *args], capture_output=True, text=True, check=False,
        )  # fmt: skip

    built = run("--type", "hnsw")
    assert built.returncode == 0, built.stderr
    assert "built a hnsw index" in built.stdout and "MB per hour of audio" in built.stdout
    too_small = run("--type", "ivfpq", "--pq-bits", "8")  # 256 codes need 256 vectors
    assert too_small.returncode == 2
    assert "needs at least" in too_small.stderr
    unknown = run("--type", "lsh")
    assert unknown.returncode == 2
    bad_refine = run("--type", "hnsw", "--refine-bits", "4")
    assert bad_refine.returncode == 2
    assert "only an ivfpq index" in bad_refine.stderr


def test_read_only_catalogues_map_only_index_files_big_enough_to_share(
    catalogue_copy: Path, stretched_song4: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tunetrace.index.catalogue.SHARED_INDEX_MIN_BYTES", 0)
    with Catalogue(catalogue_copy, read_only=True) as reader:  # half precision: widened in
        assert reader.index_spec.kind == "flat"
        assert not reader._layered_index().base.memory_mapped
    with Catalogue(catalogue_copy) as writer:
        writer.rebuild_index(IndexSpec(kind="hnsw"))  # full float32 vectors: mappable
    monkeypatch.undo()
    with Catalogue(catalogue_copy, read_only=True) as reader:  # a small file: read in
        assert not reader._layered_index().base.memory_mapped
        assert Matcher(reader).match_path(stretched_song4).matches[0].reference_id == "song4"
    monkeypatch.setattr("tunetrace.index.catalogue.SHARED_INDEX_MIN_BYTES", 0)
    with Catalogue(catalogue_copy, read_only=True) as reader:  # as a big one would be: mapped
        assert reader._layered_index().base.memory_mapped
        assert Matcher(reader).match_path(stretched_song4).matches[0].reference_id == "song4"
    with Catalogue(catalogue_copy) as writer:  # writers never map
        assert not writer._layered_index().base.memory_mapped


def test_projected_ivfpq_index_of_real_patch_vectors_finds_a_stretched_copy(
    built_catalogue: Path, stretched_song4: Path, tmp_path: Path
) -> None:
    # The default IVF-PQ recipe: patch vectors projected onto alteration-discriminant
    # directions (catalogue statistics + the packaged noise model), then lists and 4-bit
    # fast-scan codes. Fewer dimensions, codes and lists than the default: the five fixture
    # songs give only ~170 vectors to train on.
    with Catalogue(built_catalogue, read_only=True) as catalogue:
        vectors, ids = catalogue._all_vectors()
        spec = IndexSpec(kind="ivfpq", nlist=4, pq_m=16, pq_bits=4, nprobe=4, projection_dims=32)
        projected = VectorIndex.build(catalogue.params.embedding_dim, spec, vectors, ids)
        projected.save(tmp_path / "p.faiss")
        mapped = VectorIndex.read(
            tmp_path / "p.faiss",
            dim=catalogue.params.embedding_dim,
            spec=spec.resolved(0),
            mmap=True,
        )
        assert mapped.spec.projection_dims == 32
        matcher = Matcher(catalogue)
        query = matcher.load_query(stretched_song4)
        song4 = catalogue.get("song4").key
        for searcher in (projected, mapped):
            candidates = matcher.candidates(query, searcher)
            assert candidates[0].reference_key == song4
            assert abs(candidates[0].tempo_ratio - 1.2) < 0.05
        # FAISS reads fast-scan (4-bit) lists into memory even when asked to map them
        assert not mapped.memory_mapped
        # the stored vectors pass through the projection: each finds itself first
        _, found = projected.search(vectors[:40], 1)
        assert np.mean(found[:, 0] == ids[:40]) >= 0.9
        # removal in place, with the index's count kept true
        song4_ids = ids[(ids >> 24) == song4]
        before = projected.size
        projected.remove(song4_ids)
        assert projected.size == before - len(song4_ids) > 0
        _, found = projected.search(vectors, 5)
        assert not np.isin(found, song4_ids).any()
        assert all(c.reference_key != song4 for c in matcher.candidates(query, projected))


def test_projection_needs_a_noise_model_of_the_catalogues_fingerprint(
    catalogue_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunetrace.index import catalogue as catalogue_module
    from tunetrace.index.projection import AlterationNoise, packaged_noise

    other = AlterationNoise(packaged_noise().covariance, "another-digest", 10, 1)
    monkeypatch.setattr(catalogue_module, "packaged_noise", lambda: other)
    spec = IndexSpec(kind="ivfpq", nlist=4, pq_m=16, nprobe=4, projection_dims=32)
    with Catalogue(catalogue_copy) as catalogue:
        with pytest.raises(ValueError, match="other fingerprint parameters"):
            catalogue.rebuild_index(spec)
        assert catalogue.info()["index_kind"] == "flat"  # nothing changed
        # kinds without a projection do not need the model
        assert catalogue.rebuild_index(IndexSpec(kind="hnsw")).spec.kind == "hnsw"


def _pieces(
    spec: IndexSpec, training: VectorIndex, vectors: np.ndarray, ids: np.ndarray, cuts: list
) -> list[VectorIndex]:
    """Indexes of ``vectors`` between successive ``cuts``, all built on ``training``."""
    return [VectorIndex.build(DIM, spec, vectors[a:b], ids[a:b], trained=training)
            for a, b in itertools.pairwise(cuts)]  # fmt: skip


def _join_once_made(cache: object, training: VectorIndex, parts: list) -> object:
    """``cache``'s join of ``parts``, asked for until it is made in the background (up to
    10 s; ``None`` if it is not)."""
    for _ in range(200):
        joined = cache.get(training, parts)  # type: ignore[attr-defined]
        if joined is not None:
            return joined
        time.sleep(0.05)
    return None


def test_indexes_on_one_training_are_searched_as_one_through_their_joined_lists(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a worker holding several shards searches their fast-scan lists in one pass: the same
    # neighbours as each searched on its own, each hit handed back to its own part
    from tunetrace.index import joined_lists
    from tunetrace.index.joined_lists import PART_SHIFT, JoinedLists, JoinedListsCache, joinable
    from tunetrace.index.vector_index import best_of

    spec = replace(SMALL_IVFPQ, pq_bits=4).resolved(len(vectors))
    sample = vectors[training_rows(vectors, training_count(spec, len(vectors)))]
    training = VectorIndex.trained(DIM, spec, sample)
    ids = np.arange(len(vectors), dtype=np.int64) + 7  # ids unlike positions
    cuts = [0, 400, 1900, 2000, len(vectors)]
    parts = _pieces(spec, training, vectors, ids, cuts)
    _, queries = _noisy_copies(vectors, 150)
    assignment = training.assign(queries)
    expected = best_of([part.search_assigned(assignment, 10) for part in parts], 10)
    for repacked in (False, True):  # lists appended part by part, or packed anew
        if repacked:  # (as FAISS's appending cannot do at some lengths of a list)
            monkeypatch.setattr(joined_lists, "_part_order", lambda sizes, block: None)
        joined = JoinedLists(training, parts)
        assert joined.size == len(vectors)
        found = joined.search_assigned(assignment, 10)
        assert found is not None and len(found) == len(parts)
        for (_, part_ids), (a, b) in zip(found, itertools.pairwise(cuts), strict=True):
            hits = part_ids[part_ids >= 0]
            assert np.all((hits >= a + 7) & (hits < b + 7))  # its own ids, its own vectors
        merged = best_of(found, 10)
        np.testing.assert_allclose(merged[0], expected[0], rtol=1e-5)
        for row in range(len(queries)):  # the same hits, but for ties at the k-th place
            above = expected[0][row] > expected[0][row, -1]
            assert set(merged[1][row][above]) == set(expected[1][row][above])
    monkeypatch.undo()
    # FAISS appends whole blocks at a length that is a multiple of the block's bytes: never
    assert joined_lists._part_order([160, 3, 157], 160) == [1, 0, 2]
    assert joined_lists._part_order([160, 160], 160) is None
    assert joined_lists._part_order([0, 160, 0], 160) == [1]
    # what cannot be joined, or searched through a join
    apart = VectorIndex.build(DIM, spec, vectors[:2000], ids[:2000])  # its own training
    flat_lists = VectorIndex.build(DIM, IndexSpec(kind="ivfflat", nlist=8), vectors, ids)
    assert not joinable(apart, training.lists_digest)
    assert not joinable(flat_lists, flat_lists.lists_digest)
    with pytest.raises(ValueError, match="only fast-scan"):
        JoinedLists(training, [parts[0], apart])
    wide = VectorIndex.build(DIM, spec, vectors[:50], np.arange(50) + (1 << PART_SHIFT),
                             trained=training)  # fmt: skip
    with pytest.raises(ValueError, match="do not fit"):
        JoinedLists(training, [parts[0], wide])
    other = apart.assign(queries)
    assert joined.search_assigned(other, 10) is None
    assert joined.search_assigned(replace(assignment, lists=assignment.lists + 99), 10) is None
    # a process's join is made once; an index this process changes is a writer's, and is
    # not joined (the join made before is not searched again)
    cache = JoinedListsCache()
    made = cache.get(training, parts)
    assert made is not None and cache.get(training, parts) is made
    assert made.holds(parts) and not made.holds(parts[:2])
    parts[1].remove(ids[400:410])
    assert not made.holds(parts) and not joinable(parts[1], training.lists_digest)
    others = cache.get(training, [parts[0], parts[2]])  # (any ask drops the stale join)
    assert others is not None and len(cache) == 1
    assert cache.get(training, parts) is None and len(cache) == 1
    del others
    # a join that cannot be made is not tried again for the same parts
    tried = []

    def counted(*args: object, **kwargs: object) -> JoinedLists:
        tried.append(args)
        return JoinedLists(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(joined_lists, "JoinedLists", counted)
    assert cache.get(training, [parts[0], apart]) is None
    assert cache.get(training, [parts[0], apart]) is None and len(tried) == 1
    # large joins are made in the background, one at a time, and used once made
    monkeypatch.setattr(joined_lists, "JOIN_AT_ONCE_VECTORS", 0)
    fresh = _pieces(spec, training, vectors, ids, cuts)
    assert cache.get(training, fresh) is None  # (being made)
    found_join = _join_once_made(cache, training, fresh)
    assert found_join is not None and found_join.holds(fresh) and len(tried) == 2
    # once its parts are let go (an index published again, shards closed), it goes too
    assert len(cache) == 2
    del fresh, found_join
    tried.clear()  # (it held them)
    gc.collect()
    assert len(cache) == 1  # (the other group's join stays while its parts are held)


@pytest.mark.parametrize(
    "sizes", [(160, 5, 160), (160, 160), (320, 3, 1, 160)], ids=["reordered", "repacked", "mixed"]
)
def test_joined_lists_never_append_at_a_length_faiss_copies_wrongly(
    vectors: np.ndarray, sizes: tuple[int, ...]
) -> None:
    # FAISS copies the codes appended to a non-empty fast-scan list as whole blocks, too
    # many of them, when its length is a multiple of a block's bytes (160 here: 32 codes of
    # 5 bytes); one list, parts of such lengths
    from tunetrace.index.joined_lists import JoinedLists
    from tunetrace.index.vector_index import best_of

    spec = replace(SMALL_IVFPQ, pq_bits=4, nlist=1, nprobe=1).resolved(len(vectors))
    training = VectorIndex.trained(DIM, spec, vectors[training_rows(vectors, 1000)])
    cuts = np.cumsum((0, *sizes))
    ids = np.arange(len(vectors), dtype=np.int64)
    parts = _pieces(spec, training, vectors, ids, list(cuts))
    joined = JoinedLists(training, parts)
    assert joined.size == sum(sizes)
    assignment = training.assign(vectors[:300] + 0.01)
    found = joined.search_assigned(assignment, 50)
    expected = best_of([part.search_assigned(assignment, 50) for part in parts], 50)
    np.testing.assert_allclose(best_of(found, 50)[0], expected[0], rtol=1e-5)
    for (_, part_ids), (a, b) in zip(found, itertools.pairwise(cuts), strict=True):
        hits = part_ids[part_ids >= 0]
        assert len(hits) and np.all((hits >= a) & (hits < b))


def test_a_background_join_stops_once_its_shards_are_published_again(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a worker's shards published again while their lists are being joined: the old join is
    # dropped part-way, and the new parts' is made next; another group only waits its turn
    from tunetrace.index import joined_lists
    from tunetrace.index.joined_lists import JoinedListsCache

    spec = replace(SMALL_IVFPQ, pq_bits=4).resolved(len(vectors))
    training = VectorIndex.trained(DIM, spec, vectors[training_rows(vectors, 1000)])
    ids = np.arange(len(vectors), dtype=np.int64)

    def built(a: int, b: int) -> VectorIndex:
        return VectorIndex.build(DIM, spec, vectors[a:b], ids[a:b], trained=training)

    old = [built(0, 1000), built(1000, 2000)]
    new = [old[0], built(1000, 2000)]  # the second shard published again
    others = [built(2000, 2500), built(2500, 3000)]
    copy_list = joined_lists._copy_list
    copied: list[int] = []

    def slowly(sources: list, into: object, list_number: int) -> int:
        copied.append(len(sources))
        time.sleep(0.05)
        return copy_list(sources, into, list_number)

    monkeypatch.setattr(joined_lists, "_copy_list", slowly)
    monkeypatch.setattr(joined_lists, "JOIN_AT_ONCE_VECTORS", 0)
    raised: list[object] = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    cache = JoinedListsCache()
    assert cache.get(training, old) is None  # being made, in the background
    time.sleep(0.12)
    assert cache.get(training, others) is None  # another group: waits, takes nothing over
    assert cache.get(training, new) is None  # some of its parts replaced: the old join stops
    made = _join_once_made(cache, training, new)
    assert made is not None and made.holds(new) and len(cache) == 1
    assert len(copied) < 2 * spec.nlist  # the old join stopped part-way
    assert raised == []  # (nothing escaped the joining thread)
