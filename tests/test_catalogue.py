"""Catalogue: add, replace, remove, versions, rebuilds, and survival of a kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tunetrace.fingerprint.features import features_from_spectrum
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.spectrum_codec import COMPACT_CODEC, LEGACY_CODEC, SpectrumCodec
from tunetrace.index.storage import stored_features

from tests.conftest import synth_song, write_audio
from tunetrace.errors import (
    DuplicateReferenceError,
    IncompatibleCatalogueError,
    InvalidReferenceIdError,
    ReferenceNotFoundError,
)
from tunetrace.ingest import fingerprint_reference


@pytest.fixture(scope="module")
def reference_data(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("refs")
    path = write_audio(folder / "a.flac", synth_song(11, duration_s=20))
    return fingerprint_reference(path, params=FingerprintParams())


def test_add_get_list_remove(tmp_path: Path, reference_data) -> None:
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        record = catalogue.add("album/track 1", reference_data, title="T", artist="A")
        assert record.reference_id == "album/track 1" and record.title == "T"
        assert catalogue.count() == 1
        assert catalogue.info()["vectors"] == len(reference_data.vectors)
        with pytest.raises(DuplicateReferenceError):
            catalogue.add("album/track 1", reference_data)
        catalogue.add("album/track 1", reference_data, title="T2", replace=True)
        assert catalogue.get("album/track 1").title == "T2"
        assert catalogue.info()["vectors"] == len(reference_data.vectors), (
            "replace left old vectors"
        )
        catalogue.add("b", reference_data)
        assert [r.reference_id for r in catalogue.list()] == ["album/track 1", "b"]
        catalogue.remove("b")
        with pytest.raises(ReferenceNotFoundError):
            catalogue.remove("b")
        assert catalogue.count() == 1


def test_reference_features_cache_keeps_to_its_byte_budget(tmp_path: Path, reference_data) -> None:
    with Catalogue(tmp_path / "cat", create=True) as writer:
        keys = [writer.add(name, reference_data).key for name in ("a", "b", "c")]
    one_reference = Catalogue(tmp_path / "cat", read_only=True).features(keys[0]).nbytes
    catalogue = Catalogue(tmp_path / "cat", read_only=True, features_cache_bytes=2 * one_reference)

    first = catalogue.features(keys[0])
    assert catalogue.features(keys[0]) is first  # kept
    for key in keys[1:]:
        catalogue.features(key)

    assert catalogue._features_cache_bytes <= 2 * one_reference
    assert list(catalogue._features_cache) == keys[1:]  # the least recently used went first
    again = catalogue.features(keys[0])  # rebuilt from the stored spectrum, equal
    assert again is not first
    np.testing.assert_array_equal(again.spectrum_frames, first.spectrum_frames)
    np.testing.assert_array_equal(again.chroma_bin_spectrum, first.chroma_bin_spectrum)
    assert catalogue._features_cache_bytes == sum(
        f.nbytes for f in catalogue._features_cache.values()
    )


def test_invalid_ids_are_refused(tmp_path: Path, reference_data) -> None:
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        for bad in ("", "x" * 201, "tab\there", "new\nline"):
            with pytest.raises(InvalidReferenceIdError):
                catalogue.add(bad, reference_data)
        assert catalogue.count() == 0


def test_other_parameters_or_format_are_refused(tmp_path: Path) -> None:
    Catalogue(tmp_path / "cat", create=True).close()
    with pytest.raises(IncompatibleCatalogueError, match="other fingerprint parameters"):
        Catalogue(tmp_path / "cat", params=FingerprintParams(patch_frames=40))
    with sqlite3.connect(tmp_path / "cat" / "catalogue.sqlite") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(IncompatibleCatalogueError, match="format 99"):
        Catalogue(tmp_path / "cat")
    with sqlite3.connect(tmp_path / "cat" / "catalogue.sqlite") as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
        db.execute(
            """UPDATE meta SET value = '{"hop_length": 800, "wavelets": 3}'"""
            " WHERE key = 'params'"
        )
    with pytest.raises(IncompatibleCatalogueError, match="another version"):
        Catalogue(tmp_path / "cat")


def test_stale_or_missing_index_is_rebuilt_from_sqlite(tmp_path: Path, reference_data) -> None:
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        catalogue.add("a", reference_data)
        query = reference_data.vectors[:3]
        expected = catalogue.search(query, 5)
    with Catalogue(tmp_path / "cat") as catalogue:
        catalogue.index_path.unlink()
    with Catalogue(tmp_path / "cat") as catalogue:
        rebuilt = catalogue.search(query, 5)
    np.testing.assert_array_equal(expected[1], rebuilt[1])
    np.testing.assert_allclose(expected[0], rebuilt[0], rtol=1e-6)


def test_kill_during_batch_add_never_corrupts_the_catalogue(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    song = synth_song(12, duration_s=30)
    for i in range(40):
        write_audio(folder / f"t{i:02d}.wav", np.roll(song, i * 997))
    catalogue_dir = tmp_path / "cat"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunetrace.cli",
            "add",
            "-c",
            str(catalogue_dir),
            str(folder),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = catalogue_dir / "catalogue.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some references are committed
        time.sleep(0.2)
        if database.exists():
            try:
                with sqlite3.connect(database, timeout=1) as db:
                    if db.execute("SELECT count(*) FROM refs").fetchone()[0] >= 3:
                        break
            except sqlite3.OperationalError:
                continue
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the add finished before it could be killed"

    with Catalogue(catalogue_dir) as catalogue:
        with sqlite3.connect(database) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        n_refs = catalogue.count()
        assert 3 <= n_refs < 40
        records = catalogue.list(limit=100)
        for record in records:  # every stored reference is whole: its spectrum and its vectors
            features = catalogue.features(record.key)
            assert abs(features.duration_s - record.duration_s) < 0.2, record
            assert catalogue.reference_index(record.key).size > 0, record
        # The index searched reflects exactly what SQLite holds.
        stored = sum(catalogue.reference_index(record.key).size for record in records)
        assert catalogue.info()["vectors"] == stored
    # Resuming the batch adds the rest; the ones already there are reported, not doubled.
    done = subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", "add", "-c", str(catalogue_dir), str(folder)],
        capture_output=True,
        text=True,
    )
    assert f"added {40 - n_refs} reference(s)" in done.stdout, done.stdout + done.stderr
    with Catalogue(catalogue_dir) as catalogue:
        assert catalogue.count() == 40


@pytest.mark.parametrize("codec", [LEGACY_CODEC, COMPACT_CODEC], ids=lambda c: c.name)
def test_stored_features_are_derived_as_from_the_decoded_spectrum(codec: SpectrumCodec) -> None:
    params = FingerprintParams()
    rng = np.random.default_rng(4)
    spectrum = rng.random((params.n_bins, 700)).astype(np.float32) ** 3  # mostly quiet
    blob, scale = codec.encode(spectrum)

    stored = stored_features(blob, scale, codec, params, 700)

    expected = features_from_spectrum(codec.decode(blob, scale, params.n_bins, 700), params=params)
    for name in ("spectrum", "chroma", "spectrum_frames", "chroma_bin_spectrum"):
        got, want = getattr(stored, name), getattr(expected, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=name)
