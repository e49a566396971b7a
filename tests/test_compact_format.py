"""The compact catalogue format: damaged and hostile rows, earlier-format catalogues."""

from __future__ import annotations

import json
import pickle
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import zstandard
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue, ReferenceData
from tunetrace.index.spectrum_codec import (
    COMPACT_CODEC,
    LEGACY_CODEC,
    codec_named,
    compact_codec,
)
from tunetrace.index.vector_index import IndexSpec

from tests.conftest import make_format_1_catalogue, synth_song, write_audio
from tests.live_server import running_server
from tunetrace.errors import CatalogueError, DamagedReferenceError
from tunetrace.ingest import fingerprint_reference
from tunetrace.matcher import Matcher

N_BINS = FingerprintParams().n_bins


@pytest.fixture(scope="module")
def songs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("compact-songs")
    return {
        name: write_audio(folder / f"{name}.wav", synth_song(seed, duration_s=20))
        for seed, name in enumerate(("a", "b", "c"), start=41)
    }


@pytest.fixture
def excerpts(songs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    import soundfile

    found = {}
    for name, path in songs.items():
        samples, rate = soundfile.read(str(path), dtype="float32")
        found[name] = write_audio(tmp_path / f"{name}-excerpt.wav", samples[4 * rate : 13 * rate])
    return found


def _with_reference_a_damaged(
    songs: dict[str, Path], directory: Path, column: str, value: object
) -> int:
    """Make a closed catalogue of songs a and b with ``column`` of a's row set to ``value``;
    a's key."""
    with Catalogue(directory, create=True) as catalogue:
        for name in ("a", "b"):
            catalogue.add(name, fingerprint_reference(songs[name], params=catalogue.params))
        key = catalogue.get("a").key
    with sqlite3.connect(directory / "catalogue.sqlite") as db:
        db.execute(f"UPDATE refs SET {column} = ? WHERE key = ?", (value, key))
    return key


def test_a_compressed_blob_never_inflates_past_the_size_its_row_records() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(N_BINS * 2**20))
    assert len(bomb) < 20_000  # a few kilobytes that would inflate to 226 MB
    with pytest.raises(ValueError, match="declares"):
        codec_named("b5e0.7z").codes(bomb, N_BINS, 100)
    with pytest.raises(ValueError, match="no JPEG-LS image header"):
        ONE_IMAGE_CODEC.codes(bomb, N_BINS, 100)
    spectrum = np.random.default_rng(3).random((N_BINS, 100)).astype(np.float32)
    blob, _ = ONE_IMAGE_CODEC.encode(spectrum)
    assert ONE_IMAGE_CODEC.codes(blob, N_BINS, 100).shape == (N_BINS, 100)
    with pytest.raises(ValueError):
        ONE_IMAGE_CODEC.codes(blob, N_BINS, 99)  # the row's frame count must agree
    with pytest.raises(ValueError, match="not bytes"):
        ONE_IMAGE_CODEC.codes("text", N_BINS, 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        ONE_IMAGE_CODEC.levels(float("nan"))


@pytest.mark.parametrize("name", ["b5e0.0z", "b9e0.7z", "b5e2.0z", "", "u16", b"u8", 5])
def test_names_of_no_codec_are_refused(name: object) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        codec_named(name)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("column", "value"),
    [("spectrum", b"\x01\x02"), ("spectrum", "text"), ("spectrum_codec", "b5e0.0z"),
     ("spectrum_codec", b"\x00"), ("spectrum_scale", -1.0), ("n_frames", 5)],
)  # fmt: skip
def test_a_damaged_row_gives_one_clear_error(
    songs: dict[str, Path], tmp_path: Path, column: str, value: object
) -> None:
    directory = tmp_path / "catalogue"
    key = _with_reference_a_damaged(songs, directory, column, value)
    with (
        Catalogue(directory, read_only=True) as catalogue,
        pytest.raises(DamagedReferenceError, match=r"reference 'a' in .* is damaged") as raised,
    ):
        catalogue.features(key)
    assert raised.value.reference_id == "a"
    carried = pickle.loads(pickle.dumps(raised.value))  # as across a process or Dask boundary
    assert (str(carried), carried.reference_id) == (str(raised.value), "a")
    # matching goes on without it, and says which reference was left out
    command = [sys.executable, "-m", "tunetrace.cli", "match", "-c", str(directory), "--json"]
    for name, found in (("a", []), ("b", ["b"])):
        result = subprocess.run([*command, str(songs[name])], capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert "reference 'a'" in result.stderr and "damaged" in result.stderr, result.stderr
        report = json.loads(result.stdout)
        matched = [m["reference_id"] for m in report["matches"]]
        assert matched == found, (name, matched)
        if name == "a":  # its own excerpt makes it a candidate: the report names what it missed
            assert report["damaged_references"] == ["a"], report


def test_a_damaged_row_is_left_out_of_index_rebuilds_and_can_be_removed(
    songs: dict[str, Path], excerpts: dict[str, Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    directory = tmp_path / "catalogue"
    with Catalogue(directory, create=True) as catalogue:
        for name in ("a", "b", "c"):
            catalogue.add(name, fingerprint_reference(songs[name], params=catalogue.params))
        catalogue.rebuild_index(IndexSpec(kind="hnsw"))  # no removal in place: rebuilt
        keys = {name: catalogue.get(name).key for name in ("a", "c")}
    with sqlite3.connect(directory / "catalogue.sqlite") as db:
        db.execute("UPDATE refs SET spectrum = ? WHERE key = ?", (b"\x01" * 64, keys["a"]))
        db.execute("UPDATE refs SET n_frames = -5 WHERE key = ?", (keys["c"],))
    with Catalogue(directory) as catalogue:
        catalogue.remove("c")  # the index is rebuilt from every other row, damaged or not
        assert "reference 'a'" in caplog.text and "left out of the index" in caplog.text
        catalogue.rebuild_index(IndexSpec(kind="hnsw"))
        assert [m.reference_id for m in Matcher(catalogue).match_path(excerpts["b"]).matches] == [
            "b"
        ]
    # a reader says which references cannot be found, every time it opens the catalogue
    with Catalogue(directory, read_only=True) as reader:
        assert reader.damaged_references() == ["a"]
        assert reader.info()["damaged_references"] == ["a"]
        caplog.clear()
        report = Matcher(reader).match_path(excerpts["b"])
        assert "1 damaged reference(s)" in caplog.text and "'a'" in caplog.text
        # and every report says which references no query is compared with, over HTTP too
        assert report.to_dict()["damaged_references"] == ["a"]
    with running_server(directory, api_keys="reader-key:read", workers=1) as base_url:
        answer = httpx.post(
            f"{base_url}/v1/match", headers={"Authorization": "Bearer reader-key"},
            files={"file": ("b.wav", excerpts["b"].read_bytes())}, timeout=120,
        )  # fmt: skip
        explained = httpx.post(
            f"{base_url}/v1/explain?format=json&reference_id=a",
            headers={"Authorization": "Bearer reader-key"},
            files={"file": ("a.wav", excerpts["a"].read_bytes())}, timeout=120,
        )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert [m["reference_id"] for m in answer.json()["matches"]] == ["b"]
    assert answer.json()["damaged_references"] == ["a"]
    # asked for by name, it is a conflict the client can resolve: add it again
    assert explained.status_code == 409, explained.text
    assert explained.json()["error"]["code"] == "reference_damaged"
    assert "'a'" in explained.json()["error"]["message"]
    assert str(tmp_path) not in explained.text  # a client is not told where the files are
    with Catalogue(directory) as catalogue:  # added again, it is whole and found
        catalogue.add("a", fingerprint_reference(songs["a"], params=catalogue.params),
                      replace=True)  # fmt: skip
        assert catalogue.damaged_references() == []
        report = Matcher(catalogue).match_path(excerpts["a"])
        assert [m.reference_id for m in report.matches] == ["a"]
        assert "damaged_references" not in report.to_dict()
        catalogue.remove("a")
        assert sorted(r.reference_id for r in catalogue.list()) == ["b"]


@pytest.mark.parametrize("n_frames", ["abc", 10**12, -5, 2.5])
def test_a_reference_with_a_damaged_frame_count_can_be_removed_or_replaced(
    songs: dict[str, Path], excerpts: dict[str, Path], tmp_path: Path, n_frames: object
) -> None:
    directory = tmp_path / "catalogue"
    with Catalogue(directory, create=True) as catalogue:
        for name in ("a", "b"):
            catalogue.add(name, fingerprint_reference(songs[name], params=catalogue.params))
    with sqlite3.connect(directory / "catalogue.sqlite") as db:
        db.execute("UPDATE refs SET n_frames = ? WHERE id IN ('a', 'b')", (n_frames,))
    with Catalogue(directory) as catalogue:
        catalogue.remove("a")  # every id the reference could have leaves the index
        catalogue.add("b", fingerprint_reference(songs["b"], params=catalogue.params),
                      replace=True)  # fmt: skip
        assert sorted(r.reference_id for r in catalogue.list()) == ["b"]
        found = Matcher(catalogue).match_path(excerpts["b"]).matches
        assert [m.reference_id for m in found] == ["b"]
        assert Matcher(catalogue).match_path(excerpts["a"]).matches == []


def test_a_spectrum_that_its_named_codec_cannot_read_is_refused(songs: dict[str, Path]) -> None:
    earlier = fingerprint_reference(songs["a"], params=FingerprintParams(), codec=LEGACY_CODEC)
    # 8-bit codes built the way callers built them before rows named their codec
    positional = ReferenceData(
        earlier.spectrum_codes, earlier.spectrum_scale, earlier.n_frames, earlier.duration_s,
        earlier.vectors,
    )  # fmt: skip
    with Catalogue(songs["a"].parent / "refused", create=True) as catalogue:
        with pytest.raises(ValueError, match=f"not one {re.escape(COMPACT_CODEC.name)} stores"):
            catalogue.add("a", positional)
        assert catalogue.count() == 0


def test_a_reader_of_a_first_format_catalogue_keeps_matching_through_its_migration(
    songs: dict[str, Path], excerpts: dict[str, Path], tmp_path: Path
) -> None:
    directory = make_format_1_catalogue(tmp_path / "catalogue", songs)
    info = subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", "info", "-c", str(directory), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert '"format_version": 1' in info.stdout, info.stdout + info.stderr  # read, not upgraded
    reader = Catalogue(directory, read_only=True)
    matcher = Matcher(reader)

    def found() -> list[list[str]]:
        reader.clear_features_cache()
        return [[m.reference_id for m in matcher.match_path(excerpts[n]).matches] for n in songs]

    assert found() == [["a"], ["b"], ["c"]]
    with Catalogue(directory) as writer:
        assert writer.legacy_count() == 3
        assert writer.migrate(batch_size=2) == 3
        assert writer.legacy_count() == 0
        assert writer.info()["mb_per_audio_hour_by_part"]["stored_vectors"] == 0
    assert found() == [["a"], ["b"], ["c"]]
    reader.close()


def test_migration_names_a_reference_it_cannot_read(songs: dict[str, Path], tmp_path: Path) -> None:
    directory = make_format_1_catalogue(tmp_path / "catalogue", songs)
    with sqlite3.connect(directory / "catalogue.sqlite") as db:
        db.execute("UPDATE refs SET spectrum = x'0102' WHERE id = 'b'")
    with Catalogue(directory) as catalogue:
        with pytest.raises(CatalogueError, match="reference 'b' cannot be read"):
            catalogue.migrate(batch_size=1)
        catalogue.remove("b")
        catalogue.migrate()
        assert catalogue.legacy_count() == 0 and catalogue.count() == 2
        with pytest.raises(ValueError, match="not a compact codec"):
            catalogue.migrate(codec=LEGACY_CODEC)


def test_eight_bit_index_vectors_take_half_the_bytes_of_float16_and_find_every_excerpt(
    songs: dict[str, Path], excerpts: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    with Catalogue(directory, create=True) as catalogue:
        for name, path in songs.items():
            catalogue.add(name, fingerprint_reference(path, params=catalogue.params))
        one_byte = catalogue.info()["index_bytes"]  # the default
        catalogue.rebuild_index(IndexSpec(kind="flat", vector_bits=16))
        half_precision = catalogue.info()["index_bytes"]
        vectors = catalogue.info()["vectors"]
    # 2 bytes then 1 per dimension, and the 8-byte ids either way
    dim = FingerprintParams().embedding_dim
    assert one_byte < vectors * (dim + 8) + 8192 < half_precision
    with Catalogue(directory, read_only=True) as reader:
        assert reader.index_spec.vector_bits == 16
        matcher = Matcher(reader)
        for name in songs:
            assert [m.reference_id for m in matcher.match_path(excerpts[name]).matches] == [name]
    with pytest.raises(ValueError, match="vector bits"):
        IndexSpec(vector_bits=4)


ZSTD_CODEC = compact_codec(COMPACT_CODEC.bits, COMPACT_CODEC.exponent, "z")
#: The same codes as one JPEG-LS image (new references get them in tiles of such images).
ONE_IMAGE_CODEC = compact_codec(COMPACT_CODEC.bits, COMPACT_CODEC.exponent, "j")


def test_jpeg_ls_packing_holds_the_codes_zstandard_held_and_refuses_damage() -> None:
    spectrum = np.random.default_rng(4).gamma(2.0, size=(N_BINS, 300)).astype(np.float32)
    packed, scale = ONE_IMAGE_CODEC.encode(spectrum)
    zstd_packed, zstd_scale = ZSTD_CODEC.encode(spectrum)
    assert ONE_IMAGE_CODEC.name.endswith("j") and scale == zstd_scale
    codes = ONE_IMAGE_CODEC.codes(packed, N_BINS, 300)
    np.testing.assert_array_equal(codes, ZSTD_CODEC.codes(zstd_packed, N_BINS, 300))
    assert ONE_IMAGE_CODEC.pack(codes) == packed
    # a frame header claiming a huge image is refused before anything is decoded
    header = packed.index(b"\xff\xf7")
    huge = bytearray(packed)
    huge[header + 5 : header + 9] = (60000).to_bytes(2, "big") * 2
    damaged = [bytes(huge), packed[:60], packed[: len(packed) // 2], packed[:-3] + b"\x00\x00\x00",
               b"\xff\xd8" + bytes(200), zstd_packed, b""]  # fmt: skip
    for blob in damaged:
        with pytest.raises(ValueError, match="damaged"):
            ONE_IMAGE_CODEC.codes(blob, N_BINS, 300)
    with pytest.raises(ValueError, match="declares"):
        ONE_IMAGE_CODEC.codes(packed, N_BINS, 299)


def test_migration_repacks_zstandard_rows_without_touching_the_index(
    songs: dict[str, Path], excerpts: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    with Catalogue(directory, create=True) as catalogue:
        catalogue.migrate(codec=ZSTD_CODEC)  # as the first compact catalogues were packed
        for name, path in songs.items():
            catalogue.add(name, fingerprint_reference(path, params=catalogue.params))
    with sqlite3.connect(directory / "catalogue.sqlite") as db:  # which recorded no choice
        db.execute("DELETE FROM meta WHERE key = 'spectrum_codec'")
    with Catalogue(directory) as catalogue:
        before = {name: catalogue.features(catalogue.get(name).key) for name in songs}
        index_before = catalogue.index_path
        size_before = catalogue.info()["mb_per_audio_hour_by_part"]["spectra"]
        assert catalogue.legacy_count() == 3
        assert catalogue.migrate(batch_size=2) == 3
        assert catalogue.legacy_count() == 0 and catalogue.index_path == index_before
        assert catalogue.info()["mb_per_audio_hour_by_part"]["spectra"] < size_before
        catalogue.clear_features_cache()
        for name, features in before.items():
            np.testing.assert_array_equal(
                catalogue.features(catalogue.get(name).key).spectrum, features.spectrum
            )
    with sqlite3.connect(directory / "catalogue.sqlite") as db:
        codecs = {row[0] for row in db.execute("SELECT spectrum_codec FROM refs")}
    assert codecs == {COMPACT_CODEC.name}
    with Catalogue(directory, read_only=True) as reader:
        matcher = Matcher(reader)
        found = [[m.reference_id for m in matcher.match_path(excerpts[n]).matches] for n in songs]
    assert found == [["a"], ["b"], ["c"]]


def test_the_codec_a_migration_chose_packs_the_references_added_after_it(
    songs: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"

    def stored_codecs() -> dict[str, str]:
        with sqlite3.connect(directory / "catalogue.sqlite") as db:
            return dict(db.execute("SELECT id, spectrum_codec FROM refs").fetchall())

    with Catalogue(directory, create=True) as catalogue:
        assert catalogue.spectrum_codec == COMPACT_CODEC
        catalogue.add("a", fingerprint_reference(songs["a"], params=catalogue.params))
        catalogue.migrate(codec=ZSTD_CODEC)
        assert catalogue.spectrum_codec == ZSTD_CODEC
        catalogue.add("b", fingerprint_reference(songs["b"], params=catalogue.params))
        assert stored_codecs() == {"a": ZSTD_CODEC.name, "b": ZSTD_CODEC.name}
        assert catalogue.legacy_count() == 2 and catalogue.legacy_count(ZSTD_CODEC) == 0
    with Catalogue(directory) as reopened:  # the choice is the catalogue's
        reopened.add("c", fingerprint_reference(songs["c"], params=reopened.params))
        assert stored_codecs()["c"] == ZSTD_CODEC.name
        reopened.migrate()  # keeps the catalogue's choice
        assert stored_codecs()["a"] == ZSTD_CODEC.name
        reopened.migrate(codec=COMPACT_CODEC)
        reopened.add("c", fingerprint_reference(songs["c"], params=reopened.params),
                     replace=True)  # fmt: skip
        assert set(stored_codecs().values()) == {COMPACT_CODEC.name}


def test_a_spectrum_over_65535_frames_is_packed_and_read_back() -> None:
    """JPEG-LS declares a width over 16 bits in an extra header segment (a reference of
    two hours has 72,000 frames)."""
    codes = np.random.default_rng(6).integers(0, 32, size=(N_BINS, 66_001), dtype=np.uint8)
    packed = ONE_IMAGE_CODEC.pack(codes)
    np.testing.assert_array_equal(ONE_IMAGE_CODEC.codes(packed, N_BINS, 66_001), codes)
    with pytest.raises(ValueError, match="declares"):
        ONE_IMAGE_CODEC.codes(packed, N_BINS, 66_000)


def test_migrate_keeps_the_catalogue_s_packing_and_sharding_keeps_it_too(
    songs: dict[str, Path], tmp_path: Path
) -> None:
    from tunetrace.index.resharding import init_sharded

    directory = tmp_path / "catalogue"
    with Catalogue(directory, create=True) as catalogue:
        catalogue.migrate(codec=ZSTD_CODEC)
        for name in ("a", "b"):
            catalogue.add(name, fingerprint_reference(songs[name], params=catalogue.params))
        assert catalogue.migrate() == 0 and catalogue.spectrum_codec == ZSTD_CODEC
        assert catalogue.info()["earlier_format_references"] == 0
        with pytest.raises(ValueError, match="not a packing"):
            catalogue.choose_spectrum_codec(compact_codec(4, 0.7))
    init_sharded(directory, 2)
    codecs = set()
    for shard in directory.glob("g*/shard-*"):
        with sqlite3.connect(shard / "catalogue.sqlite") as db:
            codecs |= {row[0] for row in db.execute("SELECT spectrum_codec FROM refs")}
    assert codecs == {ZSTD_CODEC.name}


@pytest.mark.parametrize("name", ["b4e0.7j", "b5e0.70j", "u8", "b5e0.7", "jpeg"])
def test_index_migrate_takes_only_packings_of_the_current_codes(
    name: str, songs: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    with Catalogue(directory, create=True) as catalogue:
        catalogue.add("a", fingerprint_reference(songs["a"], params=catalogue.params))
    command = [sys.executable, "-m", "tunetrace.cli", "index", "migrate", "-c", str(directory)]
    result = subprocess.run([*command, "--codec", name], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 2 and "not a packing" in result.stderr, result.stderr
    with sqlite3.connect(directory / "catalogue.sqlite") as db:
        assert db.execute("SELECT spectrum_codec FROM refs").fetchall() == [(COMPACT_CODEC.name,)]


def test_a_report_stops_naming_a_damaged_row_once_it_is_added_again(
    songs: dict[str, Path], excerpts: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    _with_reference_a_damaged(songs, directory, "spectrum", b"\x01" * 64)
    with Catalogue(directory) as catalogue:
        matcher = Matcher(catalogue)
        damaged = matcher.match_path(excerpts["a"])  # found damaged by matching, not recorded
        assert (damaged.matches, damaged.damaged_references) == ([], ("a",))
        catalogue.add("a", fingerprint_reference(songs["a"], params=catalogue.params),
                      replace=True)  # fmt: skip
        whole = matcher.match_path(excerpts["a"])
        assert [m.reference_id for m in whole.matches] == ["a"]
        assert whole.damaged_references == ()


def test_a_row_damaged_after_its_features_were_read_is_named_not_fatal(
    songs: dict[str, Path], excerpts: dict[str, Path], tmp_path: Path
) -> None:
    directory = tmp_path / "catalogue"
    with Catalogue(directory, create=True) as catalogue:
        for name in ("a", "b"):
            catalogue.add(name, fingerprint_reference(songs[name], params=catalogue.params))
    with Catalogue(directory, read_only=True) as catalogue:
        matcher = Matcher(catalogue)
        first = matcher.match_path(excerpts["a"])  # its features are now in the cache
        assert [m.reference_id for m in first.matches] == ["a"]
        with sqlite3.connect(directory / "catalogue.sqlite") as db:  # damaged on disk since
            db.execute("UPDATE refs SET spectrum = ? WHERE id = 'a'", (b"\x01" * 64,))
        # the search for its repeats reads the row again: the report names it, matching goes on
        again = matcher.match_path(excerpts["a"])
        assert again.damaged_references == ("a",)
        # from then on it is left out, though its features are still cached
        later = matcher.match_path(excerpts["a"])
        assert (later.matches, later.damaged_references) == ([], ("a",))
        with pytest.raises(DamagedReferenceError, match=r"reference 'a' in .* is damaged"):
            catalogue.reference_index(catalogue.get("a").key)
