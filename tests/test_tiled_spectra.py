"""Spectra stored in tiles and read a part at a time: the same codes, the same features and
the same matches as one image, damage refused, only the frames asked for derived."""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.spectrum_codec import TILE_FRAMES, codec_named
from tunetrace.index.storage import stored_features
from tunetrace.index.tiled_features import TiledFeatures

from tests.conftest import synth_song, write_audio
from tunetrace.errors import DamagedReferenceError
from tunetrace.ingest import fingerprint_reference
from tunetrace.matcher import Matcher

PARAMS = FingerprintParams()
N_BINS = PARAMS.n_bins
TILED = codec_named("b5e0.7t")
ONE_IMAGE = codec_named("b5e0.7j")


def _spectrum(n_frames: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, size=(N_BINS, n_frames)).astype(np.float32)


def test_tiles_hold_the_codes_one_image_held_and_refuse_damaged_tables() -> None:
    spectrum = _spectrum(2 * TILE_FRAMES + 37)
    n_frames = spectrum.shape[1]
    tiled, scale = TILED.encode(spectrum)
    whole, whole_scale = ONE_IMAGE.encode(spectrum)
    assert scale == whole_scale
    codes = ONE_IMAGE.codes(whole, N_BINS, n_frames)
    np.testing.assert_array_equal(TILED.codes(tiled, N_BINS, n_frames), codes)
    tiles = TILED.tiles(tiled, N_BINS, n_frames)
    assert tiles.count == 3 and tiles.frame_range(2) == (2 * TILE_FRAMES, n_frames)
    np.testing.assert_array_equal(tiles.codes(1), codes[:, TILE_FRAMES : 2 * TILE_FRAMES])

    magic, tile_frames, count = struct.unpack_from("<4sII", tiled)
    table_end = 12 + 4 * count
    damaged_tables = [
        tiled[:10],  # no room for the table
        b"XJLS" + tiled[4:],  # not a table of tiles
        struct.pack("<4sII", magic, 0, count) + tiled[12:],  # tiles of no frames
        struct.pack("<4sII", magic, tile_frames, count + 1) + tiled[12:],  # too many tiles
        tiled[: table_end - 2],  # the table cut short
        tiled + b"\x00",  # bytes past the tiles
        tiled[:-5],  # the last tile cut short
        whole,  # one image under a tiled codec's name
    ]
    for blob in damaged_tables:
        with pytest.raises(ValueError, match="damaged"):
            TILED.tiles(blob, N_BINS, n_frames)
    with pytest.raises(ValueError, match="damaged"):
        TILED.tiles(tiled, N_BINS, n_frames + TILE_FRAMES)  # another frame count
    with pytest.raises(ValueError, match="does not store spectra in tiles"):
        ONE_IMAGE.tiles(whole, N_BINS, n_frames)
    # a tile's own damage is found when that tile is read, and only then
    first_tile = tiles.bounds[0]
    garbled = bytearray(tiled)
    garbled[first_tile : first_tile + 8] = bytes(8)
    garbled_tiles = TILED.tiles(bytes(garbled), N_BINS, n_frames)
    np.testing.assert_array_equal(garbled_tiles.codes(2), codes[:, 2 * TILE_FRAMES :])
    with pytest.raises(ValueError, match="damaged"):
        garbled_tiles.codes(0)


def test_a_reference_read_in_parts_equals_the_reference_derived_whole() -> None:
    spectrum = _spectrum(7 * TILE_FRAMES + 51, seed=5)
    n_frames = spectrum.shape[1]
    whole_blob, scale = ONE_IMAGE.encode(spectrum)
    tiled_blob, _ = TILED.encode(spectrum)
    whole = stored_features(whole_blob, scale, ONE_IMAGE, PARAMS, n_frames)

    def read_in_parts() -> TiledFeatures:
        features = stored_features(tiled_blob, scale, TILED, PARAMS, n_frames)
        assert isinstance(features, TiledFeatures) and features.n_frames == n_frames
        return features

    def assert_close(part: Features, first: int, stop: int, *, chroma: bool = True) -> None:
        np.testing.assert_array_equal(part.spectrum[:, first:stop], whole.spectrum[:, first:stop])
        np.testing.assert_array_equal(
            part.spectrum_frames[first:stop], whole.spectrum_frames[first:stop]
        )
        if chroma:
            for name in ("chroma", "chroma_bin_spectrum"):
                ours, theirs = getattr(part, name), getattr(whole, name)
                if name == "chroma":
                    ours, theirs = ours.T, theirs.T
                np.testing.assert_allclose(ours[first:stop], theirs[first:stop], atol=2e-6)

    ranges = [(120, 180), (640, 700), (10, 60), (650, n_frames + 30), (199, 201)]
    forwards, backwards = read_in_parts(), read_in_parts()
    for first, stop in ranges:
        part = forwards.frames_read(first, stop)
        assert_close(part, first, min(stop, n_frames))
    # tiles 0, 1, 2 (the chroma at frame 200 averages frame 201), 6 and 7 and no others
    assert forwards.derived_fraction == 5 / 8
    unread = np.flatnonzero(np.isnan(forwards.frames_read(0, 0).spectrum[0]))
    np.testing.assert_array_equal(unread, np.arange(3 * TILE_FRAMES, 6 * TILE_FRAMES))
    for first, stop in reversed(ranges):
        backwards.frames_read(first, stop)
    # every frame's values whatever order the parts were read in, or read whole at once
    at_once = read_in_parts()
    assert at_once.nbytes == forwards.nbytes  # what the features cache counts, read or not
    at_once.frames_read(0, n_frames)
    for name in ("spectrum", "chroma", "spectrum_frames", "chroma_bin_spectrum"):
        np.testing.assert_array_equal(getattr(forwards, name), getattr(backwards, name))
        np.testing.assert_array_equal(getattr(forwards, name), getattr(at_once, name))
    assert forwards.derived_fraction == 1
    assert_close(forwards, 0, n_frames)
    np.testing.assert_array_equal(forwards.active_frames(), whole.active_frames())

    # positions read the tiles they touch, their spectra only
    positions = np.array([[3.5, TILE_FRAMES * 5 - 0.5], [-40.0, n_frames + 9.0]])
    spectra = read_in_parts()
    part = spectra.positions_read(positions)
    read_tiles = {0, 4, 5, 7}  # the frame after 499.5 is the next tile's first
    assert spectra.derived_fraction == len(read_tiles) / 8
    for tile in read_tiles:
        first, stop = tile * TILE_FRAMES, min((tile + 1) * TILE_FRAMES, n_frames)
        assert_close(part, first, stop, chroma=False)
    assert np.isnan(part.chroma).all()
    # across processes a reference travels whole
    carried = pickle.loads(pickle.dumps(spectra))
    assert type(carried) is Features
    np.testing.assert_array_equal(carried.spectrum, whole.spectrum)
    part_frames = read_in_parts().frames(250, 330)
    np.testing.assert_allclose(part_frames.chroma, whole.chroma[:, 250:330], atol=2e-6)


@pytest.fixture(scope="module")
def long_songs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiled-songs")
    return {
        name: write_audio(folder / f"{name}.wav", synth_song(seed, duration_s=70))
        for seed, name in enumerate(("a", "b", "c"), start=61)
    }


def _excerpt(path: Path, folder: Path, start_s: float, speed: float) -> Path:
    """12 s from ``start_s``, played ``speed`` times faster (resampled: tempo and pitch)."""
    import scipy.signal

    samples, rate = soundfile.read(str(path), dtype="float32")
    part = samples[int(start_s * rate) : int((start_s + 12 * speed) * rate)]
    faster = scipy.signal.resample(part, int(len(part) / speed)).astype(np.float32)
    return write_audio(folder / f"{path.stem}-{start_s:g}-{speed:g}.wav", faster, rate)


def _catalogues(songs: dict[str, Path], folder: Path) -> tuple[Path, Path]:
    one_image, tiled = folder / "one-image", folder / "tiled"
    with Catalogue(one_image, create=True) as catalogue:
        catalogue.migrate(codec=ONE_IMAGE)
        for name, path in songs.items():
            catalogue.add(name, fingerprint_reference(path, params=catalogue.params))
    shutil.copytree(one_image, tiled)
    with Catalogue(tiled) as catalogue:
        assert catalogue.migrate(codec=TILED) == len(songs)
    return one_image, tiled


def test_matching_a_catalogue_stored_in_tiles_reads_parts_and_finds_what_one_image_finds(
    long_songs: dict[str, Path], tmp_path: Path
) -> None:
    one_image, tiled = _catalogues(long_songs, tmp_path)
    queries = [_excerpt(long_songs["a"], tmp_path, 40, 1.0),
               _excerpt(long_songs["b"], tmp_path, 8, 1.12),
               _excerpt(long_songs["c"], tmp_path, 50, 0.9)]  # fmt: skip
    reports = {}
    for directory in (one_image, tiled):
        with Catalogue(directory, read_only=True) as catalogue:
            matcher = Matcher(catalogue)
            reports[directory] = [matcher.match_path(q).matches for q in queries]
            if directory == tiled:  # the last query's other candidates were read in part
                catalogue.clear_features_cache()
                matcher.match_path(queries[0])
                parts = {r.reference_id: catalogue.features(r.key, whole=False)
                         for r in catalogue.list()}  # fmt: skip
                assert isinstance(parts["b"], TiledFeatures)
                assert parts["a"].derived_fraction == 1  # found: grown over the whole work
                assert min(parts["b"].derived_fraction, parts["c"].derived_fraction) < 1
    found = [[m.reference_id for m in matches] for matches in reports[tiled]]
    assert found == [["a"], ["b"], ["c"]]
    for ours, theirs in zip(reports[tiled], reports[one_image], strict=True):
        for match, same in zip(ours, theirs, strict=True):
            assert match.score == pytest.approx(same.score, abs=1e-6)
            assert match.tempo_ratio == pytest.approx(same.tempo_ratio, abs=1e-6)
            assert match.segments == same.segments


def test_a_tile_damaged_where_a_query_reads_leaves_that_reference_out_without_failing(
    long_songs: dict[str, Path], tmp_path: Path
) -> None:
    _, tiled = _catalogues(long_songs, tmp_path)
    with Catalogue(tiled) as catalogue:
        key = catalogue.get("a").key
    with sqlite3.connect(tiled / "catalogue.sqlite") as db:
        (blob,) = db.execute("SELECT spectrum FROM refs WHERE key = ?", (key,)).fetchone()
        tiles = TILED.tiles(blob, N_BINS, _frames(db, key))
        garbled = bytearray(blob)
        fourth = tiles.bounds[4]  # 40-50 s: where the excerpt from 40 s lies
        garbled[fourth : fourth + 8] = bytes(8)
        db.execute("UPDATE refs SET spectrum = ? WHERE key = ?", (bytes(garbled), key))
    query = _excerpt(long_songs["a"], tmp_path, 40, 1.0)
    with Catalogue(tiled, read_only=True) as catalogue:
        matcher = Matcher(catalogue)
        assert matcher.match_path(query).matches == []
        assert matcher.damaged_references() == ("a",)
        other = matcher.match_path(_excerpt(long_songs["b"], tmp_path, 8, 1.0))
        assert [m.reference_id for m in other.matches] == ["b"]
        with pytest.raises(DamagedReferenceError, match="reference 'a'"):
            catalogue.features(key)  # read whole, the damage is found at once


def _frames(db: sqlite3.Connection, key: int) -> int:
    return int(db.execute("SELECT n_frames FROM refs WHERE key = ?", (key,)).fetchone()[0])


def test_each_reader_of_a_reference_asks_for_every_frame_it_reads() -> None:
    """Alignment, screening and verification each read a fresh reference stored in tiles
    (frames not asked for are NaN there) and measure what they measure on it whole."""
    from tunetrace.alignment import align_on_chroma
    from tunetrace.query import VerifySettings, prepare_query
    from tunetrace.screening import fit_objectives
    from tunetrace.types import Candidate
    from tunetrace.verification import SpectralFit

    spectrum = _spectrum(9 * TILE_FRAMES, seed=8)
    n_frames = spectrum.shape[1]
    whole_blob, scale = ONE_IMAGE.encode(spectrum)
    tiled_blob, _ = TILED.encode(spectrum)
    whole = stored_features(whole_blob, scale, ONE_IMAGE, PARAMS, n_frames)

    def fresh() -> TiledFeatures:
        return stored_features(tiled_blob, scale, TILED, PARAMS, n_frames)  # type: ignore[return-value]

    query = prepare_query(whole.frames(430, 550))
    rates = np.array([0.9, 1.0, 1.13])
    offsets = np.array([425.0, 430.0, 471.0])  # the last reads into tile 6 by 5 frames
    shifts = np.array([0.0, 2.5])
    reference = fresh()
    np.testing.assert_allclose(
        fit_objectives(query, reference, rates, offsets, shifts, VerifySettings()),
        fit_objectives(query, whole, rates, offsets, shifts, VerifySettings()),
        atol=1e-6,
    )
    assert reference.derived_fraction < 0.5

    candidate = Candidate(reference_key=1, tempo_ratio=1.05, offset_frames=424.0, votes=5.0)
    ours, theirs = (align_on_chroma(query, r, candidate) for r in (fresh(), whole))
    assert ours is not None and theirs is not None
    assert (ours.tempo_ratio, ours.offset_frames) == pytest.approx(
        (theirs.tempo_ratio, theirs.offset_frames), abs=1e-6
    )
    np.testing.assert_allclose(ours.roll_scores, theirs.roll_scores, atol=1e-6)

    fits = {id(r): SpectralFit(query, r, 9) for r in (fresh(), whole)}
    ours_fit, theirs_fit = fits.values()
    a, b = ours_fit.similarity(1.0, 430.0, 0.0), theirs_fit.similarity(1.0, 430.0, 0.0)
    assert a.spectral == pytest.approx(b.spectral, abs=1e-6)
    positions = 430.0 + np.arange(query.features.n_frames)
    np.testing.assert_allclose(ours_fit.null_curve(positions, 0.0, (-23.0, 9.0, 23.0)),
                               theirs_fit.null_curve(positions, 0.0, (-23.0, 9.0, 23.0)),
                               atol=1e-6)  # fmt: skip
