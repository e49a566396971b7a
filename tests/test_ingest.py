"""Adding references: manifests and the fingerprinting worker pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from threadpoolctl import threadpool_info
from tunetrace.index.catalogue import Catalogue

from tests.conftest import SAMPLE_RATE, write_audio
from tunetrace.errors import BadInputError, CatalogueError
from tunetrace.ingest import IngestItem, ingest, items_from_manifest, worker_pool
from tunetrace.scan import manifest_paths


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "byte-order-mark"])
def test_manifest_header_is_skipped_with_or_without_a_byte_order_mark(
    tmp_path: Path, bom: bytes
) -> None:
    manifest = tmp_path / "manifest.csv"
    text = "path,id,title,artist,isrc\r\nmusic/a.flac,album1/a,Tïtle,Ärtist,XXA012500001\r\n"
    manifest.write_bytes(bom + text.encode("utf-8"))
    items = items_from_manifest(manifest)
    assert len(items) == 1, [item.reference_id for item in items]
    item = items[0]
    assert item.path == tmp_path / "music" / "a.flac"
    assert (item.reference_id, item.title, item.artist, item.isrc) == (
        "album1/a",
        "Tïtle",
        "Ärtist",
        "XXA012500001",
    )


def test_manifest_without_header_keeps_its_first_row_despite_a_byte_order_mark(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"\xef\xbb\xbfa.wav,first\nb.wav,second\n")
    items = items_from_manifest(manifest)
    assert [(item.path.name, item.reference_id) for item in items] == [
        ("a.wav", "first"),
        ("b.wav", "second"),
    ]


def _thread_limits() -> tuple[int, list[int]]:
    """FAISS's OpenMP threads and each BLAS library's threads, in the calling process."""
    blas = [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]
    return faiss.omp_get_max_threads(), blas


def test_worker_pool_limits_each_worker_to_one_thread() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: every library already uses one thread")
    with worker_pool(2) as pool:
        omp_threads, blas_threads = pool.submit(_thread_limits).result(timeout=120)
    assert omp_threads == 1, f"FAISS uses {omp_threads} OpenMP threads in a worker"
    assert blas_threads, "no BLAS library found in the worker"
    assert all(n == 1 for n in blas_threads), f"BLAS threads in a worker: {blas_threads}"


def test_a_manifest_that_is_not_utf8_or_is_a_folder_is_refused_clearly(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"path,id\na.wav,first\nb.wav,m\xe9lodie\n")  # as a spreadsheet saves it
    for read in (items_from_manifest, manifest_paths):
        with pytest.raises(BadInputError, match=r"latin1.csv:3: not UTF-8 text"):
            read(latin1)
        with pytest.raises(BadInputError, match="is a folder, not a manifest file"):
            read(tmp_path)


def test_two_files_that_would_be_one_reference_are_refused_before_anything_is_added(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "dup"
    tone = np.sin(np.arange(5 * SAMPLE_RATE) * 0.05).astype(np.float32)
    write_audio(folder / "a.wav", tone)
    write_audio(folder / "a.flac", tone)
    catalogue = tmp_path / "catalogue"
    for extra in ([], ["--replace"]):
        result = subprocess.run(
            [sys.executable, "-m", "tunetrace.cli", "add", "-c", str(catalogue), str(folder),
             *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "a.flac" in result.stderr and "a.wav" in result.stderr, result.stderr
        assert "would both be reference 'a'" in result.stderr
        assert not catalogue.exists()
    # one file named twice, however its path is written, is one reference, added once
    again = [str(folder / "a.wav"), str(folder / ".." / "dup" / "a.wav")]
    result = subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", "add", "-c", str(catalogue), *again],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "added 1 reference(s) (0 replaced), 0 failed" in result.stdout, result.stdout


def test_a_manifest_line_that_is_not_utf8_is_named_after_a_byte_order_mark(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "bom.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,id\n\xe9a.wav,x\n")
    with pytest.raises(BadInputError, match=r"bom.csv:2: not UTF-8 text"):
        items_from_manifest(manifest)


def test_a_catalogue_that_fails_to_write_ends_the_batch_and_keeps_what_was_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = []
    for number in range(4):
        tone = np.sin(np.arange(6 * SAMPLE_RATE) * (0.03 + 0.01 * number)).astype(np.float32)
        path = write_audio(tmp_path / f"t{number}.wav", tone)
        items.append(IngestItem(path, f"t{number}"))
    attempts = []
    original = Catalogue.add

    def full_after_one(self: Catalogue, reference_id: str, *args: object, **kwargs: object):
        attempts.append(reference_id)
        if len(attempts) > 1:
            raise CatalogueError(f"could not write to {self.directory}: database or disk is full")
        return original(self, reference_id, *args, **kwargs)

    with Catalogue(tmp_path / "catalogue", create=True) as catalogue:
        monkeypatch.setattr(Catalogue, "add", full_after_one)
        with pytest.raises(CatalogueError, match="disk is full"):
            ingest(catalogue, items)
        monkeypatch.undo()
        assert attempts == ["t0", "t1"]  # not every other file failed in turn
        assert [r.reference_id for r in catalogue.list()] == ["t0"]
    with Catalogue(tmp_path / "catalogue", read_only=True) as reader:
        assert reader.count() == 1
