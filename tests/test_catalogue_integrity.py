"""The catalogue's write protocol: failed writes, readers, leftovers, writers side by side."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
import tunetrace.index.catalogue as catalogue_module
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue, ReferenceData
from tunetrace.index.ids import PATCH_BITS
from tunetrace.index.vector_index import IndexSpec

from tests.conftest import synth_song, write_audio
from tunetrace.candidates import add_best_neighbour_bin
from tunetrace.errors import CatalogueError, ReferenceNotFoundError
from tunetrace.ingest import fingerprint_reference
from tunetrace.matcher import Matcher


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ReferenceData, Path]]:
    """Three fingerprinted songs and a 9-s excerpt of each."""
    folder = tmp_path_factory.mktemp("integrity")
    out = {}
    for seed, name in enumerate("xyz", start=31):
        samples = synth_song(seed, duration_s=20)
        data = fingerprint_reference(write_audio(folder / f"{name}.wav", samples),
                                     params=FingerprintParams())  # fmt: skip
        excerpt = write_audio(folder / f"{name}-excerpt.wav", samples[3 * 22050 : 12 * 22050])
        out[name] = (data, excerpt)
    return out


def _holding_x(tmp_path: Path, three: dict) -> Path:
    """A catalogue in ``tmp_path / "cat"``, closed, holding reference ``x``."""
    directory = tmp_path / "cat"
    with Catalogue(directory, create=True) as catalogue:
        catalogue.add("x", three["x"][0])
    return directory


def _found(catalogue: Catalogue, excerpt: Path) -> list[str]:
    return [m.reference_id for m in Matcher(catalogue).match_path(excerpt).matches]


def test_a_write_failing_inside_its_transaction_leaves_memory_as_sqlite(
    tmp_path: Path, three: dict
) -> None:
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        catalogue.add("x", three["x"][0])
        catalogue.add("y", three["y"][0])
        broken = replace(three["y"][0], duration_s=None)  # NOT NULL: the INSERT fails
        # ... after the replaced reference's vectors were dropped from the in-memory index
        with pytest.raises(Exception, match="NOT NULL"):
            catalogue.add("y", broken, replace=True)
        catalogue.add("z", three["z"][0])  # the next write publishes what memory holds
        assert catalogue.count() == 3
        for name in "xyz":
            assert _found(catalogue, three[name][1]) == [name]
    with Catalogue(tmp_path / "cat", read_only=True) as reader:
        for name in "xyz":
            assert _found(reader, three[name][1]) == [name]


def test_readers_never_write_and_see_a_batch_before_it_is_published(
    tmp_path: Path, three: dict
) -> None:
    directory = tmp_path / "cat"
    with Catalogue(directory, create=True) as writer:
        writer.add("x", three["x"][0])
        published = sorted(p.name for p in directory.iterdir())
        writer.add("y", three["y"][0], save_index=False)  # a batch add, not yet published
        writer.remove("x")  # ... then a removal, which publishes
        writer.add("z", three["z"][0], save_index=False)
        before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
        with Catalogue(directory, read_only=True) as reader:
            assert _found(reader, three["y"][1]) == ["y"]
            assert _found(reader, three["z"][1]) == ["z"]  # from the in-memory layer
            assert _found(reader, three["x"][1]) == []
            with pytest.raises(CatalogueError, match="read-only"):
                reader.save_index()
        after = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()
                 if not p.name.startswith("catalogue.sqlite")}  # fmt: skip
        assert after == {k: v for k, v in before.items() if k in after}, "a reader wrote a file"
        assert set(after) <= set(before)
    assert published  # the first write published an index file


def test_an_index_file_that_cannot_be_written_fails_the_write_cleanly(
    tmp_path: Path, three: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        catalogue.add("x", three["x"][0])

        def disk_full(*args: object) -> None:
            raise RuntimeError("Error in faiss::FileIOWriter: No space left on device")

        with monkeypatch.context() as patched:
            patched.setattr(faiss, "write_index", disk_full)
            with pytest.raises(CatalogueError, match="No space left on device"):
                catalogue.add("y", three["y"][0])
        assert catalogue.count() == 1
        catalogue.add("z", three["z"][0])  # the next write goes on from the state before
    with Catalogue(tmp_path / "cat", read_only=True) as reader:
        assert sorted(r.reference_id for r in reader.list()) == ["x", "z"]
        for name in "xz":
            assert _found(reader, three[name][1]) == [name]


def test_a_projection_wider_than_the_vectors_is_refused_before_anything_is_read(
    tmp_path: Path, three: dict
) -> None:
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        catalogue.add("x", three["x"][0])
        generation = catalogue.generation
        with pytest.raises(ValueError, match="at most the vectors' 190 dimensions, not 256"):
            catalogue.rebuild_index(IndexSpec(kind="ivfpq", pq_m=64, projection_dims=256))
        assert catalogue.generation == generation


def test_an_empty_database_file_is_refused_by_readers_and_left_as_it_is(tmp_path: Path) -> None:
    directory = tmp_path / "cat"
    directory.mkdir()
    (directory / "catalogue.sqlite").touch()
    with pytest.raises(CatalogueError, match="is empty, not a catalogue"):
        Catalogue(directory, read_only=True)
    with pytest.raises(CatalogueError, match="is empty, not a catalogue"):
        Catalogue(directory)
    # nor by a writer (add, serve), once it is not another process's catalogue in the making
    hour_ago = time.time() - 3600
    os.utime(directory / "catalogue.sqlite", (hour_ago, hour_ago))
    with pytest.raises(CatalogueError, match="is empty, not a catalogue"):
        Catalogue(directory, create=True)
    assert [p.name for p in directory.iterdir()] == ["catalogue.sqlite"]
    assert (directory / "catalogue.sqlite").stat().st_size == 0  # not made a new catalogue
    (directory / "catalogue.sqlite").touch()  # just made by a creator that has not written yet
    with Catalogue(directory, create=True) as created:
        assert created.count() == 0


def _without_root_privileges() -> list[str] | None:
    """A command prefix that runs a program without the power to write what it may not (root
    writes anywhere), or ``None`` when there is none here."""
    if os.geteuid() != 0:
        return []
    capabilities = "-dac_override,-dac_read_search,-fowner"
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", f"--bounding-set={capabilities}", f"--inh-caps={capabilities}", "--"]


def test_a_folder_this_user_cannot_write_is_refused_with_the_reason(
    tmp_path: Path, three: dict
) -> None:
    prefix = _without_root_privileges()
    if prefix is None:
        pytest.skip("running as root without setpriv: a folder root cannot write is not made")
    directory = _holding_x(tmp_path, three)
    files = {p: p.stat().st_mode for p in directory.iterdir()}
    for path in [*files, directory]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        command = [*prefix, sys.executable, "-m", "tunetrace.cli", "info", "-c", str(directory)]
        info = subprocess.run(command, capture_output=True, text=True, timeout=300)
        # another user may be writing it: reading it as it is could miss their changes
        assert info.returncode == 1 and "Traceback" not in info.stderr, info.stderr
        assert "cannot write the folder" in info.stderr and "read-only" in info.stderr
        assert sorted(directory.iterdir()) == sorted(files)  # nothing made beside it
    finally:
        directory.chmod(0o755)
        for path, mode in files.items():
            path.chmod(mode)


class _ReadOnlyMount:
    """What ``os.statvfs`` says of a read-only file system."""

    f_flag = os.ST_RDONLY


def test_a_catalogue_on_a_read_only_file_system_is_read_as_it_is(
    tmp_path: Path, three: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _holding_x(tmp_path, three)
    real_connect, real_statvfs = sqlite3.connect, os.statvfs

    def read_only_file_system(database: object, *args: object, **kwargs: object):
        if not kwargs.get("uri"):  # SQLite cannot make its files beside the database
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(catalogue_module.sqlite3, "connect", read_only_file_system)
    monkeypatch.setattr(catalogue_module.os, "access", lambda path, mode: False)
    monkeypatch.setattr(catalogue_module.os, "statvfs", lambda path: _ReadOnlyMount())
    with Catalogue(directory, read_only=True) as reader:
        assert reader.count() == 1
        assert _found(reader, three["x"][1]) == ["x"]
    # a log holding changes not yet in the database: only a writer can bring them in
    (directory / "catalogue.sqlite-wal").write_bytes(b"\x00" * 100)
    with pytest.raises(CatalogueError, match="holds changes not yet in the database"):
        Catalogue(directory, read_only=True)
    monkeypatch.setattr(catalogue_module.os, "statvfs", real_statvfs)
    (directory / "catalogue.sqlite-wal").unlink()
    with pytest.raises(CatalogueError, match="cannot write the folder"):
        Catalogue(directory, read_only=True)  # a writable file system: refused, with why


def test_a_writer_sweeps_files_a_killed_write_left(tmp_path: Path, three: dict) -> None:
    directory = tmp_path / "cat"
    with Catalogue(directory, create=True) as writer:
        writer.add("x", three["x"][0])
        current = writer.index_path
        leftovers = [
            directory / ".vectors-abc123.tmp",
            directory / "vectors-9-0123456789abcdef.faiss",
        ]
        for leftover in leftovers:
            leftover.write_bytes(b"half a file")
        writer.add("y", three["y"][0])
        assert not any(p.exists() for p in leftovers)
        assert not current.exists() and writer.index_path.exists()  # the old one went too
        assert _found(writer, three["x"][1]) == ["x"]


def test_info_while_another_process_sweeps_the_index_file(
    tmp_path: Path, three: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _holding_x(tmp_path, three)
    with Catalogue(directory, read_only=True) as reader:
        swept = reader.index_path
        listed = list(directory.iterdir())
        layered = Catalogue._layered_index

        def sweep_then_search(self: Catalogue):
            swept.unlink(missing_ok=True)  # another writer publishes and sweeps meanwhile
            return layered(self)

        monkeypatch.setattr(Path, "iterdir", lambda self: iter(listed))
        monkeypatch.setattr(Catalogue, "_layered_index", sweep_then_search)
        details = reader.info()
    assert details["references"] == 1
    assert details["index_bytes"] == 0, "the swept file has no size"
    assert details["size_on_disk_bytes"] > 0


def test_creating_a_catalogue_another_process_just_created_keeps_its_state(
    tmp_path: Path, three: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "cat"
    with Catalogue(directory, create=True) as first:
        first.add("x", three["x"][0])
        generation = first.generation
    looked = Catalogue._meta
    seen = []

    def not_yet_created(self: Catalogue, key: str):
        if key == "format_version" and not seen:  # looked before the other process committed
            seen.append(key)
            return None
        return looked(self, key)

    monkeypatch.setattr(Catalogue, "_meta", not_yet_created)
    with Catalogue(directory, create=True) as late:
        assert late.generation == generation, "the generation went back"
        assert late.count() == 1


def test_two_writers_in_two_threads_keep_every_reference(tmp_path: Path, three: dict) -> None:
    directory = tmp_path / "cat"
    Catalogue(directory, create=True).close()
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            with Catalogue(directory) as writer:  # a connection and a lock file of its own
                for round_number in range(5):
                    writer.add(f"{name}{round_number}", three[name][0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in "xy"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with Catalogue(directory, read_only=True) as reader:
        assert reader.count() == 10
        _, ids = reader.search(three["x"][0].vectors, 10)
        keys = {int(k) for k in np.unique(ids[ids >= 0] >> PATCH_BITS)}
        assert keys == {record.key for record in reader.list(limit=20)}


def test_matching_never_fails_while_a_reference_is_deleted_and_added_again(
    tmp_path: Path, three: dict
) -> None:
    directory = tmp_path / "cat"
    with Catalogue(directory, create=True) as writer:
        writer.add("x", three["x"][0])
        writer.add("y", three["y"][0])
    stop = threading.Event()
    cycles = 0

    def churn() -> None:
        nonlocal cycles
        with Catalogue(directory) as writer:
            # until the reader has matched enough times under churn (at most 2,000 cycles)
            while not stop.is_set() and (cycles < 150 or len(results) < 20) and cycles < 2000:
                writer.remove("x")
                writer.add("x", three["x"][0])
                cycles += 1

    failures: list[str] = []
    results: list[tuple[str, list[str]]] = []
    thread = threading.Thread(target=churn)
    thread.start()
    try:
        with Catalogue(directory, read_only=True) as reader:
            matcher = Matcher(reader)
            while thread.is_alive():
                for name in "xy":
                    try:
                        found = [m.reference_id for m in matcher.match_path(three[name][1]).matches]
                        results.append((name, found))
                    except Exception as exc:
                        failures.append(repr(exc))
    finally:
        stop.set()
        thread.join()
    assert cycles >= 50 and len(results) >= 20
    assert failures == []
    assert all(found == ["y"] for name, found in results if name == "y")
    assert all(found in ([], ["x"]) for name, found in results if name == "x")


#: Run in a child process, so that a crash is a failed test rather than the end of the run:
#: one Catalogue object searched and matched by three threads while a fourth adds, replaces and
#: removes references in it, for a few seconds.
SHARED_CATALOGUE_CHILD = """
import sys, threading, time
from pathlib import Path
import numpy as np
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue
from tunetrace.ingest import fingerprint_reference
from tunetrace.matcher import Matcher

directory, x_song, y_song, x_excerpt = sys.argv[1:5]
params = FingerprintParams()
x, y = (fingerprint_reference(Path(p), params=params) for p in (x_song, y_song))
catalogue = Catalogue(directory, create=True)
catalogue.add("y", y)
for copy in range(150):  # an index big enough for searches to take a while
    catalogue.add(f"copy{copy}", x, save_index=False)
catalogue.save_index()
matcher = Matcher(catalogue)
queries = np.tile(x.vectors, (40, 1))
done = threading.Event()
failures, counts = [], {"searches": 0, "matches": 0}

def search():
    while not done.is_set():
        similarities, ids = catalogue.search(queries, 10)
        if similarities.shape != (len(queries), 10) or not np.isfinite(similarities).all():
            failures.append("search gave a malformed answer")
        counts["searches"] += 1

def match():
    while not done.is_set():
        found = [m.reference_id for m in matcher.match_path(x_excerpt).matches]
        if any(reference == "y" for reference in found):
            failures.append(f"matched {found}")
        counts["matches"] += 1

threads = [threading.Thread(target=f) for f in (search, search, match)]
for thread in threads:
    thread.start()
started, cycle = time.monotonic(), 0
while time.monotonic() - started < 8.0 or counts["matches"] < 3:
    catalogue.add("x", x, replace=True, save_index=cycle % 4 == 0)
    catalogue.add(f"x{cycle}", x)  # the index grows, so FAISS reallocates its arrays ...
    if cycle % 3 == 2:
        catalogue.remove(f"x{cycle - 1}")  # ... and shrinks
    cycle += 1
done.set()
for thread in threads:
    thread.join()
print(cycle, counts["searches"], counts["matches"], failures)
"""


def test_one_catalogue_object_searched_while_another_thread_writes_to_it(
    tmp_path: Path, three: dict
) -> None:
    """FAISS's own add may move an index's memory under a search reading it (a segmentation
    fault): searches and writes of one in-process index take turns."""
    excerpt = three["x"][1]
    completed = subprocess.run(
        [sys.executable, "-c", SHARED_CATALOGUE_CHILD, str(tmp_path / "cat"),
         str(excerpt.parent / "x.wav"), str(excerpt.parent / "y.wav"), str(excerpt)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, f"exit {completed.returncode}: {completed.stderr[-2000:]}"
    cycles, searches, matches, failures = completed.stdout.split(maxsplit=3)
    assert failures.strip() == "[]"
    assert int(cycles) >= 5 and int(searches) >= 5 and int(matches) >= 3


def test_a_reference_removed_after_its_verification_ends_the_search_for_repeats(
    tmp_path: Path, three: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        catalogue.add("x", three["x"][0])

        def removed_meanwhile(key: int):
            raise ReferenceNotFoundError(f"no reference with key {key}")

        # a writer in another process deletes "x" between its verification and the search
        # for its repeats in that reference alone
        monkeypatch.setattr(catalogue, "reference_index", removed_meanwhile)
        assert _found(catalogue, three["x"][1]) == ["x"]


def test_neighbour_votes_do_not_overflow_with_large_reference_keys() -> None:
    rng = np.random.default_rng(0)
    triples = np.unique(
        np.stack([rng.integers(1, 4, 400), rng.integers(0, 3, 400), rng.integers(-5, 5, 400)], 1),
        axis=0,
    )
    totals = rng.random(len(triples))
    small = add_best_neighbour_bin(triples, totals)
    # the same places under keys far past 2**19 (where packing into one int64 overflowed)
    shifted = triples.copy()
    shifted[:, 0] += 2**38
    np.testing.assert_array_equal(add_best_neighbour_bin(shifted, totals), small)
    # and by definition: each triple gains its best neighbour one offset bin away
    for row, value in zip(triples[:50], small[:50], strict=True):
        neighbours = [
            totals[j] for j, other in enumerate(triples)
            if other[0] == row[0] and other[1] == row[1] and abs(other[2] - row[2]) == 1
        ]  # fmt: skip
        own = totals[np.flatnonzero((triples == row).all(axis=1))[0]]
        assert value == pytest.approx(own + max(neighbours, default=0.0))


def test_lock_file_is_released_when_a_writer_closes(tmp_path: Path, three: dict) -> None:
    directory = _holding_x(tmp_path, three)
    lock = directory / "catalogue.lock"
    assert lock.exists()
    import fcntl

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody holds it
    finally:
        os.close(fd)
