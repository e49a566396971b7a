"""Sharded catalogues behave as one catalogue: same commands, same routes, same reports.

Reports of a sharded catalogue are compared with those of the unsharded catalogue holding the
same references, in this process, on a real ``LocalCluster`` and on separate ``dask scheduler``
/ ``dask worker`` processes on loopback; a worker killed mid-scan and a missing shard are
tried on each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import librosa
import numpy as np
import pytest
import soxr
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.ids import PATCH_BITS, split_vector_ids
from tunetrace.index.resharding import init_sharded, reshard
from tunetrace.index.shard_layout import (
    MANIFEST_NAME,
    global_key,
    read_manifest,
    shard_of,
    split_key,
)
from tunetrace.index.vector_index import IndexSpec, VectorIndex

import tunetrace
from tests.conftest import SAMPLE_RATE, synth_song, write_audio
from tests.live_server import free_port, running_server
from tunetrace.errors import (
    BadInputError,
    CatalogueError,
    DuplicateReferenceError,
    ReferenceNotFoundError,
    ShardUnavailableError,
)
from tunetrace.ingest import fingerprint_reference
from tunetrace.matcher import MatchSettings
from tunetrace.query import VerifySettings
from tunetrace.report import report_to_dict
from tunetrace.scan import read_report
from tunetrace.scoring import ScoreModel
from tunetrace.shard_access import ASSIGNMENT_TTL_S, OpenShard, assign_shards
from tunetrace.sharded_catalogue import ShardedCatalogue
from tunetrace.sharded_matcher import (
    ShardedMatcher,
    merge_neighbours,
    probe_share,
)

CLI = [sys.executable, "-m", "tunetrace.cli"]


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _part(song: np.ndarray, start_s: float, length_s: float) -> np.ndarray:
    return song[int(start_s * SAMPLE_RATE) : int((start_s + length_s) * SAMPLE_RATE)]


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory, songs: dict) -> Path:
    """Altered copies of catalogue songs (stretched, pitched, sped up), a medley of two, and
    unknown music."""
    folder = tmp_path_factory.mktemp("shard-queries")
    stretch = librosa.effects.time_stretch
    write_audio(folder / "stretched.wav", stretch(_part(songs["song1"], 4, 16), rate=1.15))
    write_audio(
        folder / "pitched.flac",
        librosa.effects.pitch_shift(_part(songs["song2"], 6, 14), sr=SAMPLE_RATE, n_steps=-2),
    )
    write_audio(
        folder / "fast.wav",
        soxr.resample(_part(songs["song3"], 2, 16), SAMPLE_RATE, SAMPLE_RATE / 1.2),
    )
    medley = np.concatenate([_part(songs["song4"], 2, 12), _part(songs["song5"], 10, 12)])
    write_audio(folder / "medley.wav", medley)
    write_audio(folder / "unknown.wav", synth_song(777, duration_s=14))
    return folder


def _comparable(report: dict) -> dict:
    """A report without its timing (the only field that may differ between two runs)."""
    return {key: value for key, value in report.items() if key != "elapsed_s"}


def assert_same_verdicts(sharded: dict[str, dict], unsharded: dict[str, dict]) -> None:
    """The verdicts of an unsharded catalogue: the same references matched, in the same order,
    the best one's score within 0.01, every match's estimates close.

    For catalogues whose shards differ in more than the sharding (another number of shards
    with an approximate index, whose neighbours each shard's own graph or quantiser ranks),
    the reports need not be identical; these verdicts must be.
    """
    assert sharded.keys() == unsharded.keys()
    for name, report in sharded.items():
        expected = unsharded[name]
        found = [m["reference_id"] for m in report["matches"]]
        assert found == [m["reference_id"] for m in expected["matches"]], name
        assert report["duration_s"] == expected["duration_s"]
        pairs = zip(report["matches"], expected["matches"], strict=True)
        for rank, (match, wanted) in enumerate(pairs):
            assert abs(match["score"] - wanted["score"]) <= (0.01 if rank == 0 else 0.03), name
            assert abs(match["tempo_ratio"] - wanted["tempo_ratio"]) <= 0.01, name
            assert abs(match["pitch_shift_semitones"] - wanted["pitch_shift_semitones"]) <= 0.1
            assert match["alteration"] == wanted["alteration"], name
            assert abs(match["coverage"] - wanted["coverage"]) <= 0.02, name


@pytest.fixture(scope="module")
def unsharded_reports(built_catalogue: Path, queries: Path) -> dict[str, dict]:
    return _reports_of(built_catalogue, queries)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, built_catalogue: Path) -> Path:
    """The five songs moved from a copy of the unsharded catalogue into three shards."""
    directory = tmp_path_factory.mktemp("sharded") / "catalogue"
    shutil.copytree(built_catalogue, directory)
    result = _cli("shards", "init", "-c", str(directory), "--shards", "3")
    assert "sharded catalogue of 3 shards" in result.stdout
    return directory


def _reports(directory: Path, queries: Path, **open_args: object) -> dict[str, dict]:
    with ShardedCatalogue(directory, read_only=True, **open_args) as catalogue:
        matcher = tunetrace.Matcher(catalogue)
        assert isinstance(matcher, ShardedMatcher)
        return {
            path.name: _comparable(report_to_dict(matcher.match_path(path, query_name=path.name)))
            for path in sorted(queries.iterdir())
        }


def test_ids_go_to_shards_by_a_stable_hash() -> None:
    # fixed values: the routing must never change between versions, processes or machines
    assert shard_of("album1/track03", 1000) == 513
    assert shard_of("ÿ/é", 16) == 2
    counts = np.bincount([shard_of(f"id-{i}", 8) for i in range(8000)], minlength=8)
    assert counts.min() > 900, counts  # spread evenly
    assert split_key(global_key(5, 123456, generation=1027)) == (5, 123456, 3)


def test_shards_are_spread_evenly_over_workers_and_few_move_when_one_leaves() -> None:
    shards = [f"/data/g1/shard-{i:03d}" for i in range(12)]
    workers = [f"tcp://10.0.0.{i}:4000" for i in range(4)]
    assigned = assign_shards(shards, workers)
    assert sorted(Counter(assigned).values()) == [3, 3, 3, 3]
    assert assign_shards(shards, list(reversed(workers))) == assigned  # order does not matter
    left = assign_shards(shards, workers[:3])
    assert sorted(Counter(left).values()) == [4, 4, 4]
    kept = sum(a == b for a, b in zip(assigned, left, strict=True) if a != workers[3])
    assert kept >= 6, (assigned, left)  # most shards of the workers that stayed stay put
    assert assign_shards(shards, []) == [None] * 12


def test_shards_probe_the_share_of_lists_one_index_of_the_whole_would() -> None:
    auto = IndexSpec(kind="auto")
    # four shards of 1M vectors have 4,000 lists each; one index of 4M would have 8,000
    assert probe_share((4_000, 1_000_000), auto, 4) == pytest.approx(0.5)
    assert probe_share((4_000, 1_000_000), auto, 1) == 1.0
    # ten shards of 7.2M: 10,733 lists against 33,941
    assert probe_share((10_733, 7_200_000), auto, 10) == pytest.approx(10_733 / 33_941)
    # a set number of lists: one index's would be as many, each as long as all shards' together
    assert probe_share((1_024, 1_000_000), IndexSpec(kind="ivfpq", nlist=1_024), 10) == 1.0
    assert probe_share(None, auto, 10) == 1.0  # exact and graph indexes search as always


def test_sharded_search_probes_each_shards_share_of_its_lists(
    sharded: Path, queries: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "catalogue"
    shutil.copytree(sharded, directory)
    for shard_dir in read_manifest(directory).shard_dirs(directory):
        with Catalogue(shard_dir) as catalogue:
            if catalogue.count():  # (an empty shard keeps its exact index)
                catalogue.rebuild_index(IndexSpec(kind="ivfflat", nprobe=8))
    asked: list[float] = []
    search = Catalogue.search

    def recorded(self: Catalogue, vectors: np.ndarray, k: int, *, effort: float = 1.0,
                 assignment: object = None):  # fmt: skip
        assert assignment is None  # shards trained apart: each chooses its own lists
        asked.append(effort)
        return search(self, vectors, k, effort=effort)

    monkeypatch.setattr(Catalogue, "search", recorded)
    with ShardedCatalogue(directory, read_only=True) as catalogue:
        matcher = tunetrace.Matcher(catalogue)
        features = matcher.load_query(queries / "stretched.wav")
        effort = matcher.search_effort(features)
        matcher.match_features(features)
        assert asked == [effort] * 3  # by default each shard probes as its own index would
        asked.clear()
        sharing = tunetrace.Matcher(catalogue, settings=MatchSettings(shard_probe_share=True))
        sharing.match_features(features)
        shard_lists = [
            catalogue.shards.shard(s).catalogue.inverted_lists() for s in range(3)
        ]
    spec = IndexSpec(kind="ivfflat", nprobe=8)
    expected = [
        effort if lists is None else effort * lists[0] / spec.resolved(3 * lists[1]).nlist
        for lists in shard_lists
    ]
    assert sum(lists is not None for lists in shard_lists) == 2
    assert asked == pytest.approx(expected) and min(expected) < effort


def _named(ids: np.ndarray, reference_of) -> list[set[tuple[str, int]]]:
    """Each row's vector ids as (reference id, patch number); ``reference_of`` names a key."""
    named = []
    for row in ids:
        keys, patches = split_vector_ids(row[row >= 0])
        pairs = zip(keys.tolist(), patches.tolist(), strict=True)
        named.append({(reference_of(key), patch) for key, patch in pairs})
    return named


def _nearest(catalogue: Catalogue, vectors: np.ndarray, k: int) -> list[set[tuple[str, int]]]:
    """Each row's nearest patches in one catalogue, as (reference id, patch number)."""
    return _named(
        catalogue.search(vectors, k)[1], lambda key: catalogue.record_by_key(key).reference_id
    )


def _merged_nearest(
    catalogue: ShardedCatalogue, vectors: np.ndarray, k: int
) -> list[set[tuple[str, int]]]:
    """Each row's nearest patches over a sharded catalogue's shards, merged."""
    shards = [catalogue.shards.shard(s).catalogue for s in range(catalogue.shard_count)]
    merged = merge_neighbours([shard.search(vectors, k) for shard in shards], k)

    def reference_of(key: int) -> str:
        shard, local = merged.places[key]
        return shards[shard].record_by_key(local).reference_id

    return _named(merged.ids, reference_of)


def test_shards_share_one_training_and_search_as_one_ivf_index(
    sharded: Path,
    built_catalogue: Path,
    queries: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # few lists, fewer probed: lists trained apart would show in the neighbours at once
    spec = IndexSpec(kind="ivfflat", nlist=16, nprobe=2)
    whole, apart, shared = tmp_path / "whole", tmp_path / "apart", tmp_path / "shared"
    shutil.copytree(built_catalogue, whole)
    shutil.copytree(sharded, apart)
    shutil.copytree(sharded, shared)
    with Catalogue(whole) as catalogue:
        catalogue.rebuild_index(spec)
    for shard_dir in read_manifest(apart).shard_dirs(apart):
        with Catalogue(shard_dir) as catalogue:
            if catalogue.count():  # each shard trained on its own vectors
                catalogue.rebuild_index(spec)
    with ShardedCatalogue(shared) as catalogue:
        built = catalogue.rebuild_index(spec)
    assert len(built) == 3 and all(index.spec.kind == "ivfflat" for index in built)
    with tunetrace.Catalogue(whole, read_only=True) as catalogue:
        matcher = tunetrace.Matcher(catalogue)
        vectors = matcher.query_patches(
            matcher.load_query(queries / "stretched.wav"), catalogue.params
        )[0]
        one_index = _nearest(catalogue, vectors, 10)
    with ShardedCatalogue(apart, read_only=True) as catalogue:
        trained_apart = _merged_nearest(catalogue, vectors, 10)
    with ShardedCatalogue(shared, read_only=True) as catalogue:
        trained_once = _merged_nearest(catalogue, vectors, 10)
    assert trained_once == one_index
    assert trained_apart != one_index  # (what the shared training changes)
    # so the reports are one catalogue's too; each query's lists are chosen once, at the
    # gather, and every shard searches them
    used: list[bool] = []
    search_assigned = VectorIndex.search_assigned

    def recorded(self: VectorIndex, assignment: object, k: int) -> object:
        found = search_assigned(self, assignment, k)
        used.append(found is not None)
        return found

    monkeypatch.setattr(VectorIndex, "search_assigned", recorded)
    assert _reports(shared, queries) == _reports_of(whole, queries)
    assert len(used) == 2 * 5 and all(used)  # (the third shard is empty)
    # every shard, the empty one too, records the training; a rebuild after a lost index
    # file (a crash) builds on it again
    trainings = set()
    for shard_dir in read_manifest(shared).shard_dirs(shared):
        with sqlite3.connect(shard_dir / "catalogue.sqlite") as db:
            trainings.add(bytes(db.execute(
                "SELECT value FROM meta WHERE key = 'index_training'").fetchone()[0]))  # fmt: skip
    assert len(trainings) == 1
    _write_after_losing_index_files(shared, queries)
    with ShardedCatalogue(shared, read_only=True) as catalogue:
        assert _merged_nearest(catalogue, vectors, 10) == one_index
        # built again on another training while a matcher holds the earlier one: the shards
        # search their own lists until the matcher has fetched the new training
        matcher = tunetrace.Matcher(catalogue)
        features = matcher.load_query(queries / "stretched.wav")
        first = matcher.match_features(features)
        for changed in (replace(spec, nlist=8), replace(spec, nlist=8, nprobe=3)):
            # (the second only probes more lists: the same lists, another search)
            with ShardedCatalogue(shared) as writer:
                writer.rebuild_index(changed)
            used.clear()
            again = matcher.match_features(features)
            assert used == [False] * 2, changed
            assert again == tunetrace.Matcher(catalogue).match_features(features)
            used.clear()
            assert matcher.match_features(features) == again and used == [True] * 2
            assert [m.reference_id for m in first] == [m.reference_id for m in again] == ["song1"]
        # a matcher that found no shared training (exact indexes) takes one up once built
        with ShardedCatalogue(shared) as writer:
            writer.rebuild_index(IndexSpec(kind="flat"))
        matcher.match_features(features)  # (its earlier training is dropped here)
        used.clear()
        matcher.match_features(features)
        assert used == []  # no training to choose lists with
        with ShardedCatalogue(shared) as writer:
            writer.rebuild_index(spec)
        matcher.match_features(features)
        used.clear()
        assert matcher.match_features(features) == first and used == [True] * 2


def test_shards_held_by_one_process_search_their_joined_lists_as_one_index(
    sharded: Path,
    built_catalogue: Path,
    queries: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fast-scan lists on one training: a process holding several shards searches them in one
    # pass over their lists joined, and the reports are still one catalogue's
    from tunetrace.index.joined_lists import JoinedLists

    spec = IndexSpec(kind="ivfpq", nlist=4, pq_m=16, pq_bits=4, nprobe=2, projection_dims=32)
    whole = tmp_path / "whole"
    shutil.copytree(built_catalogue, whole)
    with Catalogue(whole) as catalogue:
        catalogue.rebuild_index(spec)
    shared = _with_shared_ivf(sharded, tmp_path / "shared", spec)
    joined: list[int] = []
    search_assigned = JoinedLists.search_assigned

    def recorded(self: JoinedLists, assignment: object, k: int) -> object:
        found = search_assigned(self, assignment, k)
        joined.append(0 if found is None else len(found))
        return found

    monkeypatch.setattr(JoinedLists, "search_assigned", recorded)
    read_training = Catalogue._recorded_training
    trainings_read: list[Path] = []

    def counted(self: Catalogue) -> object:
        trainings_read.append(self.directory)
        return read_training(self)

    monkeypatch.setattr(Catalogue, "_recorded_training", counted)
    reports = _reports(shared, queries)
    assert reports == _reports_of(whole, queries)
    assert joined == [3] * 5  # every query: one search for the three shards (one empty)
    # each shard's training is read once for its published index, not once a query
    assert len(trainings_read) == len(set(trainings_read)) <= 3
    # a reference added since the index was published (a batch not yet published) is found
    # beside the joined lists
    with ShardedCatalogue(shared) as writer:
        writer.add("probe", fingerprint_reference(queries / "unknown.wav", params=writer.params),
                   save_index=False)  # fmt: skip
    joined.clear()
    again = _reports(shared, queries)
    assert len(joined) == 5 and all(joined)
    assert [m["reference_id"] for m in again["unknown.wav"]["matches"]][:1] == ["probe"]
    # and the answers are those of each shard searched on its own
    import tunetrace.sharded_matcher as sharded_matcher_module

    monkeypatch.setattr(sharded_matcher_module, "joinable", lambda *args: False)
    joined.clear()
    assert _reports(shared, queries) == again and joined == []


def _write_after_losing_index_files(directory: Path, queries: Path) -> None:
    """Delete every shard's published index file (as a crash can lose one), then write to
    each shard: its writer rebuilds the index from SQLite."""
    for shard_dir in read_manifest(directory).shard_dirs(directory):
        for published in shard_dir.glob("vectors-*.faiss"):
            published.unlink()
        with Catalogue(shard_dir) as catalogue:
            probe = fingerprint_reference(queries / "unknown.wav", params=catalogue.params)
            catalogue.add("probe", probe)
            catalogue.remove("probe")


#: A small IVF index for the five fixture songs' shards.
SMALL_IVF = IndexSpec(kind="ivfflat", nlist=16, nprobe=2)


def _with_shared_ivf(sharded: Path, directory: Path, spec: IndexSpec = SMALL_IVF) -> Path:
    """A copy of ``sharded`` at ``directory`` whose shards share one small IVF index
    (``spec``)."""
    shutil.copytree(sharded, directory)
    with ShardedCatalogue(directory) as catalogue:
        catalogue.rebuild_index(spec)
    return directory


def test_a_damaged_training_record_leaves_shards_searching_their_own_lists(
    sharded: Path, queries: Path, tmp_path: Path
) -> None:
    directory = _with_shared_ivf(sharded, tmp_path / "catalogue")
    expected = _reports(directory, queries)
    shard_dirs = read_manifest(directory).shard_dirs(directory)
    for shard_dir in shard_dirs:
        with sqlite3.connect(shard_dir / "catalogue.sqlite") as db:
            (blob,) = db.execute("SELECT value FROM meta WHERE key = 'index_training'").fetchone()
            damaged = bytearray(blob)
            lists = damaged.find(b"ilar") + 4  # the inverted lists' count, which FAISS
            damaged[lists : lists + 8] = (1 << 40).to_bytes(8, "little")  # would allocate
            db.execute("UPDATE meta SET value = ? WHERE key = 'index_training'", (bytes(damaged),))
    with ShardedCatalogue(directory, read_only=True) as catalogue:
        assert catalogue.shards.shard(0).catalogue.index_training() is None
    assert _reports(directory, queries) == expected  # each shard's own lists: the same ones
    _write_after_losing_index_files(directory, queries)  # rebuilds: still works


def test_an_empty_sharded_catalogue_builds_and_splits_with_an_ivf_kind(tmp_path: Path) -> None:
    directory = tmp_path / "catalogue"
    init_sharded(directory, 2)
    with ShardedCatalogue(directory) as catalogue:
        assert catalogue.rebuild_index(IndexSpec(kind="ivfflat")) == []
    for shard_dir in read_manifest(directory).shard_dirs(directory):
        with Catalogue(shard_dir) as shard:
            shard.rebuild_index(IndexSpec(kind="flat"))
            shard._db.execute(  # as an IVF kind chosen before the references were removed
                "UPDATE meta SET value = ? WHERE key = 'index_spec'",
                (json.dumps(IndexSpec(kind="ivfflat").to_dict()),),
            )
    reshard(directory, 3)
    assert read_manifest(directory).count == 3


def _reports_of(directory: Path, queries: Path) -> dict[str, dict]:
    """Every query's comparable report from the (unsharded) catalogue at ``directory``."""
    with tunetrace.Catalogue(directory, read_only=True) as catalogue:
        matcher = tunetrace.Matcher(catalogue)
        return {
            path.name: _comparable(report_to_dict(matcher.match_path(path, query_name=path.name)))
            for path in sorted(queries.iterdir())
        }


def test_shards_nearest_patches_merge_into_one_catalogues() -> None:
    from tunetrace.index.ids import vector_ids

    ids_0 = np.stack([vector_ids(7, 3), [vector_ids(7, 1)[0], -1, -1]])
    ids_1 = np.stack([vector_ids(7, 3), vector_ids(9, 3)])  # shard 1's key 7 is another work
    sims_0 = np.array([[0.9, 0.5, 0.1], [0.8, -1.0, -1.0]], dtype=np.float32)
    sims_1 = np.array([[0.7, 0.6, 0.2], [0.95, 0.3, 0.2]], dtype=np.float32)
    merged = merge_neighbours([(sims_0, ids_0), (sims_1, ids_1)], 3)
    np.testing.assert_allclose(merged.similarities, [[0.9, 0.7, 0.6], [0.95, 0.8, 0.3]])
    assert merged.places == [(0, 7), (1, 7), (1, 9)]
    found = [[merged.places[int(i) >> PATCH_BITS] for i in row] for row in merged.ids]
    assert found == [[(0, 7), (1, 7), (1, 7)], [(1, 9), (0, 7), (1, 9)]]
    assert [int(i) & 0xFF for i in merged.ids[0]] == [0, 0, 1]  # patch numbers kept


def test_merged_patches_are_each_rows_best_over_shards_for_any_key() -> None:
    rng = np.random.default_rng(5)
    n, k, shards = 40, 6, 12
    largest_key = (1 << (63 - PATCH_BITS)) - 1  # the largest a vector id can carry
    per_shard = []
    for _ in range(shards):
        keys = rng.choice([1, 2, 1000, largest_key], size=(n, k))
        ids = (keys.astype(np.int64) << PATCH_BITS) | rng.integers(0, 50, (n, k))
        ids[rng.random((n, k)) < 0.2] = -1
        similarities = rng.integers(-50, 50, (n, k)).astype(np.float32) / 50  # with ties
        per_shard.append((similarities, ids))
    merged = merge_neighbours(per_shard, k)
    assert merged.places == sorted(set(merged.places))  # in (shard, key) order
    for row in range(n):
        entries = [
            (-float(sims[row, j]), shard, int(ids[row, j]))
            for shard, (sims, ids) in enumerate(per_shard)
            for j in range(k)
            if ids[row, j] >= 0
        ]
        best = sorted(entries, key=lambda e: e[0])[:k]  # stable: ties keep shard order
        found = [
            (-float(s), *merged.places[int(i) >> PATCH_BITS], int(i) & ((1 << PATCH_BITS) - 1))
            for s, i in zip(merged.similarities[row], merged.ids[row], strict=True)
        ]
        expected = [
            (s, shard, int(i) >> PATCH_BITS, int(i) & ((1 << PATCH_BITS) - 1))
            for s, shard, i in best
        ]
        assert found == expected, row


def test_sharding_moves_every_reference_once(sharded: Path, built_catalogue: Path) -> None:
    manifest = read_manifest(sharded)
    assert manifest.count == 3
    assert not (sharded / "catalogue.sqlite").exists()  # the unsharded files are gone
    with Catalogue(built_catalogue, read_only=True) as plain:
        expected = plain.list(limit=100)
    held: dict[str, int] = {}
    for shard, shard_dir in enumerate(manifest.shard_dirs(sharded)):
        with Catalogue(shard_dir, read_only=True) as part:
            for record in part.list(limit=100):
                assert shard_of(record.reference_id, 3) == shard, record.reference_id
                held[record.reference_id] = shard
    assert sorted(held) == [r.reference_id for r in expected]
    with tunetrace.Catalogue(sharded) as catalogue:  # the Python API opens it the same way
        assert isinstance(catalogue, ShardedCatalogue)
        listed = catalogue.list(limit=100)
        assert [r.reference_id for r in listed] == [r.reference_id for r in expected]
        assert [(r.title, r.duration_s, r.added_at) for r in listed] == [
            (r.title, r.duration_s, r.added_at) for r in expected
        ]
        assert [r.reference_id for r in catalogue.list(offset=1, limit=2)] == [
            r.reference_id for r in expected[1:3]
        ]
        assert catalogue.count() == len(expected)
        record = catalogue.get("album/song5")
        assert catalogue.record_by_key(record.key).reference_id == "album/song5"
        assert split_key(record.key)[0] == held["album/song5"]
        with pytest.raises(ReferenceNotFoundError):
            catalogue.get("no/such/song")
        info = catalogue.info()
        assert info["references"] == len(expected) and info["shard_count"] == 3
        assert sum(s["references"] for s in info["shards"]) == len(expected)


@pytest.fixture(scope="module")
def sharded_reports(sharded: Path, queries: Path) -> dict[str, dict]:
    """Reports of the three-shard catalogue, its shards opened in this process: every other
    way of reaching the same shards (CLI, Dask, HTTP) must give exactly these."""
    return _reports(sharded, queries)


def test_sharded_reports_equal_the_unsharded_ones(
    sharded_reports: dict, unsharded_reports: dict
) -> None:
    # exact (flat) indexes: the merged nearest patches are one catalogue's, and the places
    # verified are chosen among all shards' as one catalogue chooses, so the reports are its
    # own, a medley whose works lie in two shards included
    reports = sharded_reports
    assert reports == unsharded_reports
    # the queries do exercise the matcher: copies found, the medley's two works, no false match
    tops = {name: [m["reference_id"] for m in r["matches"]] for name, r in reports.items()}
    assert tops["stretched.wav"] == ["song1"] and tops["pitched.flac"] == ["song2"]
    assert tops["fast.wav"] == ["song3"] and tops["unknown.wav"] == []
    assert sorted(tops["medley.wav"]) == ["album/song5", "song4"]


def test_shards_verify_and_score_as_the_matcher_is_configured(
    sharded: Path, built_catalogue: Path, queries: Path, unsharded_reports: dict
) -> None:
    """A sharded matcher's own settings and score model (not the defaults) reach the shards:
    reports equal an unsharded catalogue's under the same configuration, and differ from the
    default configuration's."""
    shipped = ScoreModel.load()
    stricter = dataclasses.replace(shipped, bias=shipped.bias - 2.0, threshold=0.5)
    # fewer places verified: chosen among all shards' places, not each shard's best
    configuration = {
        "settings": MatchSettings(
            n_neighbours=24, verify_top=1, max_extra_verifications=1, screen_top=6
        ),
        "verify_settings": VerifySettings(min_segment_s=4.0),
        "score_model": stricter,
    }

    def reports(directory: Path) -> dict[str, dict]:
        with tunetrace.Catalogue(directory, read_only=True) as catalogue:
            matcher = tunetrace.Matcher(catalogue, **configuration)
            return {
                path.name: _comparable(
                    report_to_dict(matcher.match_path(path, query_name=path.name))
                )
                for path in sorted(queries.iterdir())
            }

    configured = reports(sharded)
    assert configured == reports(built_catalogue)
    assert configured != unsharded_reports
    scores = [m["score"] for r in configured.values() for m in r["matches"]]
    shipped_scores = [m["score"] for r in unsharded_reports.values() for m in r["matches"]]
    assert scores and sum(scores) < sum(shipped_scores)  # strong copies saturate at 1.0


def test_places_verified_ahead_are_used_only_when_they_are_the_chosen_ones(
    sharded: Path, queries: Path, unsharded_reports: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shard holding the best-voted candidate verifies its own best places while it
    screens; a query whose chosen places are all its own needs no round verifying them, the
    others get one; both give one catalogue's reports."""
    from tunetrace import sharded_matcher

    rounds: list[str] = []
    verify_round = sharded_matcher._shard_verified

    def counted(shard: object, *args: object) -> object:
        rounds.append(current)
        return verify_round(shard, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sharded_matcher, "_shard_verified", counted)
    reports = {}
    with ShardedCatalogue(sharded, read_only=True) as catalogue:
        matcher = tunetrace.Matcher(catalogue)
        for path in sorted(queries.iterdir()):
            current = path.name
            report = matcher.match_path(path, query_name=path.name)
            reports[path.name] = _comparable(report_to_dict(report))
    assert reports == unsharded_reports
    assert 0 < len(set(rounds)) < len(reports), rounds  # both ways taken


def test_further_places_are_chosen_across_shards_and_verified_by_theirs(
    sharded: Path,
    built_catalogue: Path,
    songs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one place verified first, a long medley's other works are found only as further
    places: chosen at the gather from every shard's screened places, verified in a last round
    by the shards holding them, with the same report as one catalogue's."""
    from tunetrace import sharded_matcher

    rounds: list[int] = []
    last_round = sharded_matcher._shard_finished

    def counted(shard: object, *args: object) -> object:
        rounds.append(1)
        return last_round(shard, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sharded_matcher, "_shard_finished", counted)
    filler = synth_song(4242, duration_s=40)
    medley = tmp_path / "long-medley.wav"
    write_audio(medley, np.concatenate([
        _part(filler, 0, 12), _part(songs["song1"], 4, 14), _part(filler, 12, 12),
        _part(songs["song4"], 2, 14), _part(filler, 24, 12), _part(songs["song5"], 10, 14),
    ]))  # fmt: skip
    settings = MatchSettings(verify_top=1)

    def report(catalogue: tunetrace.Catalogue) -> dict:
        matcher = tunetrace.Matcher(catalogue, settings=settings)
        return _comparable(report_to_dict(matcher.match_path(medley)))

    with tunetrace.Catalogue(built_catalogue, read_only=True) as catalogue:
        expected = report(catalogue)
    with ShardedCatalogue(sharded, read_only=True) as catalogue:
        found = report(catalogue)
    assert found == expected
    assert sorted(m["reference_id"] for m in found["matches"]) == ["album/song5", "song1", "song4"]
    assert rounds  # two of them were further places, verified in the last round


def test_cli_on_a_sharded_catalogue(
    sharded: Path, queries: Path, sharded_reports: dict, tmp_path: Path
) -> None:
    info = _cli("info", "-c", str(sharded)).stdout
    assert "shard_count: 3" in info and info.count("g1/shard-") == 3
    listed = [
        json.loads(line)["id"]
        for line in _cli("list", "-c", str(sharded), "--json").stdout.splitlines()
    ]
    assert listed == sorted(listed) and len(listed) == 5
    matched = _cli("match", "-c", str(sharded), "--json", str(queries / "pitched.flac")).stdout
    assert _comparable(json.loads(matched)) == {
        **sharded_reports["pitched.flac"],
        "query": str(queries / "pitched.flac"),
    }
    out = tmp_path / "evidence.json"
    _cli("explain", "-c", str(sharded), str(queries / "stretched.wav"), "--out", str(out))
    assert json.loads(out.read_text())["reference_id"] == "song1"
    report = tmp_path / "self.jsonl"
    _cli("scan", "--self", "-c", str(sharded), "--out", str(report), "--workers", "2")
    assert sorted(line["query"] for line in read_report(report)) == listed


def test_writes_go_to_the_right_shard_and_reshard_keeps_every_reference(
    tmp_path: Path, song_folder: Path, queries: Path, unsharded_reports: dict
) -> None:
    directory = tmp_path / "catalogue"
    init_sharded(directory, 2)
    with tunetrace.Catalogue(directory) as catalogue:
        summary = catalogue.add_files([song_folder], workers=2)
        assert summary.added == 5
        with pytest.raises(DuplicateReferenceError):
            catalogue.add_file(song_folder / "song1.flac", "song1")
        catalogue.add_file(song_folder / "song1.flac", "extra/copy-of-song1")
        catalogue.remove("extra/copy-of-song1")
        with pytest.raises(ReferenceNotFoundError):
            catalogue.remove("extra/copy-of-song1")
    # a reader that stays open while the catalogue is resharded
    reader = ShardedCatalogue(directory, read_only=True)
    matcher = tunetrace.Matcher(reader)
    old_key = reader.get("song3").key
    before = _comparable(
        report_to_dict(matcher.match_path(queries / "fast.wav", query_name="fast.wav"))
    )
    reshard(directory, 4)
    # the previous generation stays for queries under way; the one before goes
    assert sorted(p.name for p in directory.iterdir()) == [
        "catalogue.lock",
        "g1",
        "g2",
        MANIFEST_NAME,
    ]
    after = _comparable(
        report_to_dict(matcher.match_path(queries / "fast.wav", query_name="fast.wav"))
    )
    assert reader.shard_count == 4  # it followed the reshard
    with pytest.raises(ReferenceNotFoundError, match="resharded"):
        reader.record_by_key(old_key)  # a key from before names nothing (not another work)
    assert reader.record_by_key(reader.get("song3").key).reference_id == "song3"
    assert_same_verdicts({"fast.wav": before}, {"fast.wav": unsharded_reports["fast.wav"]})
    assert_same_verdicts({"fast.wav": after}, {"fast.wav": unsharded_reports["fast.wav"]})
    reader.close()
    built = _cli("index", "build", "-c", str(directory), "--type", "hnsw").stdout
    assert "hnsw shard indexes of" in built
    assert_same_verdicts(_reports(directory, queries), unsharded_reports)
    reshard(directory, 3)  # keeps the index kind
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == ["g2", "g3"]
    with ShardedCatalogue(directory, read_only=True) as catalogue:
        kinds = {s["index_kind"] for s in catalogue.info()["shards"] if s["references"]}
    assert kinds == {"hnsw"}


def test_misuse_is_refused_and_loses_nothing(
    sharded: Path, built_catalogue: Path, song_folder: Path, tmp_path: Path
) -> None:
    # a folder that is not empty is not taken over (its g-folders are not deleted)
    folder = tmp_path / "mine"
    (folder / "g1").mkdir(parents=True)
    (folder / "g1" / "photo.jpg").write_text("precious")
    refused = _cli("shards", "init", "-c", str(folder), "--shards", "2", check=False)
    assert refused.returncode == 2 and "holds other files" in refused.stderr
    assert (folder / "g1" / "photo.jpg").read_text() == "precious"
    # a process that opened the unsharded catalogue before it was sharded cannot write to it
    plain = tmp_path / "plain"
    shutil.copytree(built_catalogue, plain)
    stale = Catalogue(plain)
    init_sharded(plain, 2)
    with pytest.raises(CatalogueError, match="made a sharded catalogue"):
        stale.remove("song1")
    stale.close()
    with ShardedCatalogue(plain) as catalogue:
        assert catalogue.count() == 5
    # without its manifest, a sharded directory is not mistaken for an empty catalogue
    lost = tmp_path / "lost"
    shutil.copytree(sharded, lost)
    (lost / MANIFEST_NAME).unlink()
    added = _cli("add", "-c", str(lost), str(song_folder / "song1.flac"), "--id", "x", check=False)
    assert added.returncode == 1 and "no shard manifest" in added.stderr
    assert not (lost / "catalogue.sqlite").exists()
    # one shard's folder is not a catalogue of its own
    shard_dir = read_manifest(sharded).shard_dirs(sharded)[0]
    direct = _cli("add", "-c", str(shard_dir), str(song_folder / "song1.flac"), "--id", "y",
                  check=False)  # fmt: skip
    assert direct.returncode == 2 and "one shard of" in direct.stderr
    # a manifest whose parameters are not the shards' is refused, not used
    other = tmp_path / "other"
    shutil.copytree(sharded, other)
    text = (other / MANIFEST_NAME).read_text()
    (other / MANIFEST_NAME).write_text(
        text.replace('"sample_rate_hz": 8000', '"sample_rate_hz": 16000')
    )
    listed = _cli("list", "-c", str(other), check=False)
    assert listed.returncode == 1 and "other fingerprint parameters" in listed.stderr
    assert "Traceback" not in listed.stderr
    # a scheduler address that is none: exit 2 at once
    bad = _cli("match", "-c", str(sharded), "--scheduler", "foo", "x.wav", check=False)
    assert bad.returncode == 2 and "not a Dask scheduler address" in bad.stderr
    # a self-scan's exclusion by a key from before a reshard is an error, not ignored
    moved = tmp_path / "moved"
    shutil.copytree(sharded, moved)
    with ShardedCatalogue(moved, read_only=True) as catalogue:
        record = catalogue.get("song3")
        features = catalogue.features(record.key)
        reshard(moved, 2)
        with pytest.raises(ReferenceNotFoundError, match="resharded"):
            tunetrace.Matcher(catalogue).match_features(
                features, exclude_keys=frozenset({record.key})
            )


def test_a_missing_shard_is_an_error_never_a_partial_answer(
    sharded: Path, queries: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    shutil.copytree(sharded, directory)
    shutil.rmtree(read_manifest(directory).shard_dirs(directory)[1])
    with (
        ShardedCatalogue(directory, read_only=True) as catalogue,
        pytest.raises(ShardUnavailableError, match="1 of 3 shard"),
    ):
        tunetrace.Matcher(catalogue).match_path(queries / "stretched.wav")
    result = _cli(
        "match", "-c", str(directory), "--json", str(queries / "stretched.wav"), check=False
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = json.loads(result.stdout)
    assert line["error"]["code"] == "ShardUnavailableError" and "matches" not in line
    report = tmp_path / "scan.jsonl"
    _cli(
        "scan",
        "-c",
        str(directory),
        str(queries),
        "--out",
        str(report),
        "--workers",
        "1",
        check=False,
    )
    lines = read_report(report)
    assert len(lines) == 5 and all(
        line["error"]["code"] == "ShardUnavailableError" for line in lines
    )


def _copy_with_song2_damaged(sharded: Path, directory: Path) -> None:
    """Copy the sharded catalogue to ``directory`` with song2's stored spectrum damaged."""
    shutil.copytree(sharded, directory)
    manifest = read_manifest(directory)
    shard = manifest.shard_dirs(directory)[shard_of("song2", manifest.count)]
    with sqlite3.connect(shard / "catalogue.sqlite") as db:
        db.execute("UPDATE refs SET spectrum = ? WHERE id = 'song2'", (b"\x01" * 64,))


def test_sharded_reports_name_damaged_rows_as_one_catalogues_do(
    sharded: Path, queries: Path, song_folder: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    _copy_with_song2_damaged(sharded, directory)
    with ShardedCatalogue(directory) as catalogue:
        matcher = tunetrace.Matcher(catalogue)
        assert matcher.damaged_references() == ()  # nothing known before a shard answers
        copy_of_it = matcher.match_path(queries / "pitched.flac")  # its candidate cannot be read
        assert (copy_of_it.matches, copy_of_it.damaged_references) == ([], ("song2",))
        other = matcher.match_path(queries / "stretched.wav")  # still named, others still found
        assert [m.reference_id for m in other.matches] == ["song1"]
        assert other.damaged_references == ("song2",)
        catalogue.add("song2", fingerprint_reference(song_folder / "song2.flac",
                      params=catalogue.params), replace=True)  # fmt: skip
        again = matcher.match_path(queries / "pitched.flac")
        assert [m.reference_id for m in again.matches] == ["song2"]
        assert again.damaged_references == ()
    # a new process learns it from the shard that holds the row, and the JSON report says so
    shutil.rmtree(directory)
    _copy_with_song2_damaged(sharded, directory)
    result = _cli("match", "-c", str(directory), "--json", str(queries / "pitched.flac"))
    assert json.loads(result.stdout)["damaged_references"] == ["song2"], result.stdout
    assert "Traceback" not in result.stderr
    # explain against it names the reference, as one catalogue does (not a shard's fault)
    explained = _cli("explain", "-c", str(directory), str(queries / "pitched.flac"),
                     "--reference", "song2", "--out", str(tmp_path / "e.json"),
                     check=False)  # fmt: skip
    assert explained.returncode == 1 and "Traceback" not in explained.stderr
    assert "reference 'song2'" in explained.stderr and "damaged" in explained.stderr
    assert "unavailable" not in explained.stderr, explained.stderr
    # a rebuild records it, and info lists it over all shards
    _cli("index", "build", "-c", str(directory))
    info = json.loads(_cli("info", "-c", str(directory), "--json").stdout)
    assert info["damaged_references"] == ["song2"], info


def test_late_or_foreign_shard_answers_change_no_report(sharded: Path) -> None:
    with ShardedCatalogue(sharded, read_only=True) as catalogue:
        matcher = tunetrace.Matcher(catalogue)
        assert isinstance(matcher, ShardedMatcher)
        view = catalogue.view

        def of_generation(generation: int) -> object:
            manifest = dataclasses.replace(view.manifest, generation=generation)
            return dataclasses.replace(view, manifest=manifest)

        now = view.manifest.generation
        matcher._answers(view, {0: ("answer", ("current",))})
        # a query begun before a reshard answers late: the newer shards' word stands
        assert matcher._answers(of_generation(now - 1), {1: ("late", ("gone",))}) == {1: "late"}
        assert matcher.damaged_references() == ("current",)
        matcher._answers(of_generation(now + 1), {2: ("answer", ())})  # a reshard since
        assert matcher.damaged_references() == ()
        # a worker running another tunetrace answers neighbours as (similarities, ids)
        with pytest.raises(ShardUnavailableError, match="same tunetrace version"):
            matcher._answers(view, {0: (np.zeros((1, 2)), np.zeros((1, 2), dtype=np.int64))})


def test_an_unavailable_shard_is_a_503_over_http() -> None:
    from tunetrace.api.errors import status_for

    error = status_for(ShardUnavailableError("1 of 3 shard(s) unavailable"))
    assert (error.status, error.code) == (503, "shard_unavailable")


def test_bad_shard_requests_get_clear_errors(sharded: Path, tmp_path: Path) -> None:
    again = _cli("shards", "init", "-c", str(sharded), "--shards", "2", check=False)
    assert again.returncode == 2 and "already a sharded catalogue" in again.stderr
    plain = tmp_path / "plain"
    Catalogue(plain, create=True).close()
    split = _cli("shards", "split", "-c", str(plain), "--shards", "2", check=False)
    assert split.returncode == 2 and "not sharded" in split.stderr
    too_many = _cli("shards", "init", "-c", str(tmp_path / "x"), "--shards", "5000", check=False)
    assert too_many.returncode == 2 and "Traceback" not in too_many.stderr
    scheduler = _cli(
        "match", "-c", str(plain), "--scheduler", "tcp://127.0.0.1:1", "x.wav", check=False
    )
    assert scheduler.returncode == 2 and "not a sharded catalogue" in scheduler.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(sharded, damaged)
    escaping = (
        '{"kind": "tunetrace-shards", "format": 1, "generation": 1, "params": {},'
        ' "shards": ["../../etc"]}'
    )
    for text in (escaping, "not json", '{"kind": "tunetrace-shards", "format": 9}'):
        (damaged / MANIFEST_NAME).write_text(text)
        with pytest.raises(CatalogueError):
            ShardedCatalogue(damaged)
        result = _cli("info", "-c", str(damaged), check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr


# ----------------------------------------------------------------- on Dask


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as local:  # fmt: skip
        yield local


@contextlib.contextmanager
def _on_cluster(cluster, directory: Path) -> Iterator[tuple[object, ShardedCatalogue]]:
    """A client of ``cluster`` and the sharded catalogue at ``directory`` searched on it."""
    from distributed import Client

    with (
        Client(cluster) as client,
        ShardedCatalogue(directory, read_only=True, scheduler=client) as catalogue,
    ):
        yield client, catalogue


def _opened_shards() -> list[str]:
    from tunetrace.shard_access import opened_shards

    return opened_shards()


@pytest.mark.slow
def test_local_cluster_gives_the_unsharded_reports_and_keeps_shards_where_assigned(
    cluster, sharded: Path, queries: Path, sharded_reports: dict
) -> None:
    from distributed import Client

    with Client(cluster) as client:
        reports = _reports(sharded, queries, scheduler=client)
        opened = client.run(_opened_shards)
    assert reports == sharded_reports
    # each shard was opened on one worker only, and both workers hold shards
    everywhere = [shard for shards in opened.values() for shard in shards]
    assert sorted(everywhere) == sorted(set(everywhere)) and len(everywhere) == 3
    assert all(opened.values()), opened


def test_shards_on_dask_search_the_lists_chosen_at_the_gather(
    cluster, sharded: Path, queries: Path, tmp_path: Path
) -> None:
    from distributed import Client

    directory = _with_shared_ivf(sharded, tmp_path / "catalogue")
    in_process = _reports(directory, queries)
    with Client(cluster) as client:
        client.run(_count_assigned_searches)
        try:
            reports = _reports(directory, queries, scheduler=client)
        finally:
            counted = client.run(_count_assigned_searches, True)
    assert reports == in_process
    # the assignment crossed to the workers, and their shards searched its lists
    assert sum(counted.values()) == 2 * len(in_process)  # (the third shard is empty)


def _count_assigned_searches(stop: bool = False) -> int:
    """Searches of assigned lists on this worker since the last call (counting from the
    first call on; ``stop``: and no longer)."""
    if not hasattr(VectorIndex, "counted_assigned"):
        search_assigned = VectorIndex.search_assigned

        def counting(self: VectorIndex, assignment: object, k: int) -> object:
            found = search_assigned(self, assignment, k)
            VectorIndex.counted_assigned += found is not None
            return found

        counting.original = search_assigned  # type: ignore[attr-defined]
        VectorIndex.search_assigned = counting  # type: ignore[method-assign]
        VectorIndex.counted_assigned = 0
    counted = VectorIndex.counted_assigned
    VectorIndex.counted_assigned = 0
    if stop:
        VectorIndex.search_assigned = VectorIndex.search_assigned.original  # type: ignore[attr-defined]
        del VectorIndex.counted_assigned
    return counted


@pytest.mark.slow
def test_workers_are_asked_of_the_scheduler_not_the_clients_cache(
    cluster, sharded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's cached scheduler information lists no workers between its periodic
    updates; the shards' assignment must not read it."""
    from distributed import Client

    with Client(cluster) as client:
        # the cache as the client's periodic update leaves it: totals, no workers
        monkeypatch.setattr(client, "scheduler_info", lambda *args, **kwargs: {"workers": {}})
        with ShardedCatalogue(sharded, read_only=True, scheduler=client) as catalogue:
            assigned = catalogue.shards.assignment()
            assert len(assigned) == 3 and all(assigned), assigned
            client.close()  # a query after the client is gone: a clear error, no traceback
            catalogue.shards._assigned = None  # as when the assignment is next renewed
            with pytest.raises(ShardUnavailableError, match="Dask client"):
                catalogue.shards.assignment()


@pytest.mark.slow
def test_shards_on_dask_workers_name_their_damaged_rows(
    cluster, sharded: Path, queries: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    _copy_with_song2_damaged(sharded, directory)
    with _on_cluster(cluster, directory) as (_, catalogue):
        report = tunetrace.Matcher(catalogue).match_path(queries / "pitched.flac")
    assert (report.matches, report.damaged_references) == ([], ("song2",))


def _count_after_one_failure(shard: OpenShard, marker: str) -> int:
    """The shard's reference count, after an ``OSError`` the first time ``marker`` is seen."""
    if not os.path.exists(marker):
        Path(marker).write_text("failed once\n")
        raise OSError("a read failed for a moment")
    return shard.catalogue.count()


def _count_or_fail(shard: OpenShard, failing: str, error: str) -> int:
    """The shard's reference count, or the error ``error`` raised by the shard ``failing``."""
    if shard.directory.name == failing:
        raise {"os": OSError("the disk is gone"), "bad": BadInputError("a bad request")}[error]
    return shard.catalogue.count()


def test_one_shards_failure_in_a_workers_batch_leaves_the_others_answered(sharded: Path) -> None:
    from tunetrace.shard_access import run_on_shards

    directories = [str(d) for d in read_manifest(sharded).shard_dirs(sharded)]
    params = read_manifest(sharded).params
    outcomes = run_on_shards(
        directories, True, params, _count_or_fail, [(Path(directories[1]).name, "os")] * 3
    )
    assert [answered for answered, _ in outcomes] == [True, False, True]
    assert isinstance(outcomes[1][1], OSError)
    for shard in (0, 2):
        with Catalogue(Path(directories[shard]), read_only=True) as catalogue:
            assert outcomes[shard][1] == catalogue.count()


@pytest.mark.slow
def test_shard_calls_go_to_one_host_per_worker_and_retry_a_shard_that_failed(
    cluster, sharded: Path, tmp_path: Path
) -> None:
    from distributed import get_task_stream

    with _on_cluster(cluster, sharded) as (client, catalogue):
        access = catalogue.shards
        workers = set(access.assignment())
        assert len(workers) == 2  # three shards on two workers
        markers = [(str(tmp_path / f"marker-{i}"),) for i in range(3)]
        with get_task_stream(client) as stream:
            counts = access.call_all(_count_after_one_failure, markers)  # each fails once
            again = access.call_all(_count_after_one_failure, markers)
        assert sum(counts) == sum(again) == 5
        assert all((tmp_path / f"marker-{i}").exists() for i in range(3))
        # one shard host made on each worker, once; the calls themselves are no tasks
        keys = [str(task["key"]) for task in stream.data]
        assert sum("ShardHost" in key for key in keys) == len(workers) == len(keys), keys
        failing = read_manifest(sharded).shard_dirs(sharded)[2].name
        with pytest.raises(ShardUnavailableError, match=r"1 of 3 shard.*the disk is gone"):
            access.call_all(_count_or_fail, [(failing, "os")] * 3)
        with pytest.raises(BadInputError, match="a bad request"):  # the request's own fault
            access.call_all(_count_or_fail, [(failing, "bad")] * 3)


def _worker_address(shard: OpenShard) -> str:
    from distributed import get_worker

    return get_worker().address


class _UnreadableError(Exception):
    """An exception that cannot be rebuilt from its pickle (its constructor wants two)."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


def _odd_answer(shard: OpenShard, kind: str, seconds: float = 0.0) -> object:
    """The shard's count; or an answer that cannot be pickled, an exception that cannot be
    rebuilt, or the count after ``seconds`` of sleep."""
    if kind == "unpicklable":
        return threading.Lock()
    if kind == "unreadable":
        raise _UnreadableError("cannot", "rebuild")
    time.sleep(seconds)
    return shard.catalogue.count()


@pytest.mark.slow
def test_dask_shard_calls_fail_fast_and_clearly_and_serve_many_threads(
    cluster, sharded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client

    monkeypatch.setenv("TUNETRACE_SHARD_TIMEOUT_S", "30")
    with Client(cluster.scheduler_address, set_as_default=False) as other:
        # another client is the process's default: the catalogue's own must be the one used
        with Client(cluster), ShardedCatalogue(
            sharded, read_only=True, scheduler=cluster.scheduler_address
        ) as catalogue:  # fmt: skip
            access = catalogue.shards
            assert sum(access.call_all(_odd_answer, [("count",)] * 3)) == 5
            # shard functions see their worker, as in a task
            assert access.call_all(_worker_address, [()] * 3) == access.assignment()
            for kind, message in [("unpicklable", "could not be sent back"),
                                  ("unreadable", "could not be read")]:  # fmt: skip
                started = time.monotonic()
                with pytest.raises(ShardUnavailableError, match=message):
                    access.call_all(_odd_answer, [(kind,)] * 3)
                assert time.monotonic() - started < 15  # an answer, not the timeout
            with ThreadPoolExecutor(8) as threads:  # an HTTP server's threads at once
                counts = list(threads.map(
                    lambda _: sum(access.call_all(_odd_answer, [("count",)] * 3)), range(16)
                ))  # fmt: skip
            assert counts == [5] * 16
            # a worker that does not answer in time: an error naming the timeout; the next
            # query (given longer) is answered once the worker is free again
            monkeypatch.setenv("TUNETRACE_SHARD_TIMEOUT_S", "1")
            with pytest.raises(ShardUnavailableError, match="within 1 s"):
                access.call_all(_odd_answer, [("count", 4.0)] * 3)
            monkeypatch.setenv("TUNETRACE_SHARD_TIMEOUT_S", "60")
            assert sum(access.call_all(_odd_answer, [("count",)] * 3)) == 5
        assert other.status == "running"


def _count_after_dying_once(shard: OpenShard, marker: str) -> int:
    """The shard's reference count; the first call of all (``marker`` not yet written) kills
    its worker process mid-call instead."""
    try:
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return shard.catalogue.count()
    os.close(descriptor)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_a_worker_killed_during_a_query_costs_no_answer(
    cluster, sharded: Path, tmp_path: Path
) -> None:
    with _on_cluster(cluster, sharded) as (client, catalogue):
        marker = str(tmp_path / "died")
        counts = catalogue.shards.call_all(_count_after_dying_once, [(marker,)] * 3)
        assert os.path.exists(marker) and sum(counts) == 5
        client.wait_for_workers(2, timeout=60)  # the nanny restarts the worker for later tests


@pytest.mark.slow
def test_dask_scan_of_a_sharded_catalogue_survives_a_killed_worker(
    cluster, sharded: Path, queries: Path, sharded_reports: dict, tmp_path: Path
) -> None:
    from distributed import Client
    from distributed.comm.core import CommClosedError

    from tunetrace.scan import ScanJob
    from tunetrace.scan_backends import run_dask

    jobs = [ScanJob(path.name, str(path)) for path in sorted(queries.iterdir())] * 3
    with Client(cluster) as client:
        victim = sorted(client.scheduler_info()["workers"])[0]
        lines = []
        for number, (_, line) in enumerate(
            run_dask(sharded, jobs, scheduler=cluster.scheduler_address, top=5, min_score=None)
        ):
            lines.append(line)
            if number == 2:  # mid-scan: a worker holding shards dies (its nanny restarts it)
                assert client.run(_opened_shards, workers=[victim])[victim]
                with contextlib.suppress(CommClosedError):  # it died answering
                    client.run(_die, workers=[victim])
        assert len(lines) == len(jobs)
    assert all("error" not in line for line in lines), [line.get("error") for line in lines]
    for line in lines:
        assert _comparable(line) == sharded_reports[line["query"]]


@pytest.mark.slow
def test_a_worker_joining_takes_a_share_of_the_shards(
    sharded: Path, queries: Path, sharded_reports: dict
) -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, Client(cluster) as client:  # fmt: skip
        reports = _reports(sharded, queries, scheduler=client)
        assert reports == sharded_reports
        assert [len(s) for s in client.run(_opened_shards).values()] == [3]
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        time.sleep(ASSIGNMENT_TTL_S + 0.5)  # the next query asks the cluster again
        assert _reports(sharded, queries, scheduler=client) == sharded_reports
        opened = client.run(_opened_shards)
    assert sorted(len(s) for s in opened.values())[0] >= 1, opened  # the new one holds some


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
def test_dask_processes_on_loopback_match_scan_and_report_a_missing_shard(
    sharded: Path, queries: Path, sharded_reports: dict, tmp_path: Path
) -> None:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--name",
                f"w{i}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    try:
        _wait_for_workers(address, 2)
        matched = _cli("match", "-c", str(sharded), "--json", "--scheduler", address,
                       *(str(p) for p in sorted(queries.iterdir()))).stdout  # fmt: skip
        for line in matched.splitlines():
            report = json.loads(line)
            name = Path(report["query"]).name
            assert _comparable({**report, "query": name}) == sharded_reports[name]
        out = tmp_path / "scan.jsonl"
        _cli("scan", "-c", str(sharded), str(queries), "--out", str(out), "--scheduler", address)
        for line in read_report(out):
            name = Path(line["query"]).name
            assert _comparable({**line, "query": name}) == sharded_reports[name]
        # the HTTP API's workers search the shards on the cluster too
        with running_server(
            sharded, api_keys="dask-reader:read", workers=1,
            extra_env={"TUNETRACE_SCHEDULER": address},
        ) as url, open(queries / "medley.wav", "rb") as handle:  # fmt: skip
            response = httpx.post(
                f"{url}/v1/match", files={"file": ("medley.wav", handle)},
                headers={"Authorization": "Bearer dask-reader"}, timeout=120,
            )  # fmt: skip
        assert response.status_code == 200, response.text
        assert _comparable(response.json()) == sharded_reports["medley.wav"]
        # a shard missing on the workers' disk: an error line, not a partial answer
        broken = tmp_path / "broken"
        shutil.copytree(sharded, broken)
        shutil.rmtree(read_manifest(broken).shard_dirs(broken)[2])
        result = _cli("match", "-c", str(broken), "--json", "--scheduler", address,
                      str(queries / "fast.wav"), check=False)  # fmt: skip
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert json.loads(result.stdout)["error"]["code"] == "ShardUnavailableError"
    finally:
        for process in [*workers, scheduler]:
            process.terminate()
        for process in [*workers, scheduler]:
            process.wait(timeout=30)


def _wait_for_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(count, timeout=60)


# ----------------------------------------------------------------- HTTP


@pytest.mark.slow
def test_http_api_serves_a_sharded_catalogue(
    sharded: Path, queries: Path, sharded_reports: dict, song_folder: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    shutil.copytree(sharded, directory)
    headers = {"Authorization": "Bearer shard-writer"}
    with running_server(directory, api_keys="shard-writer:write", workers=1) as url:
        with open(queries / "medley.wav", "rb") as handle:
            response = httpx.post(f"{url}/v1/match", files={"file": ("medley.wav", handle)},
                                  headers=headers, timeout=60)  # fmt: skip
        assert response.status_code == 200, response.text
        assert _comparable(response.json()) == sharded_reports["medley.wav"]
        with open(song_folder / "song2.flac", "rb") as handle:
            added = httpx.post(f"{url}/v1/references", files={"file": ("s.flac", handle)},
                               data={"id": "http/song2"}, headers=headers, timeout=60)  # fmt: skip
        assert added.status_code == 201, added.text
        page = httpx.get(f"{url}/v1/references?limit=100", headers=headers, timeout=30).json()
        assert "http/song2" in [item["id"] for item in page["references"]]
        assert httpx.delete(f"{url}/v1/references/http/song2", headers=headers).status_code == 204
    with ShardedCatalogue(directory, read_only=True) as catalogue:
        assert not catalogue.contains("http/song2") and catalogue.count() == 5
