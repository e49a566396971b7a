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
    for bins, frames in [(0, n_frames), (N_BINS, 0), (-N_BINS, -n_frames)]:  # no spectrum's
        for read in (TILED.tiles, TILED.codes, ONE_IMAGE.codes):
            with pytest.raises(ValueError, match=f"of {bins} bins by {frames} frames is empty"):
                read(tiled, bins, frames)
    # a tile's header is checked with the table, before anything is allocated for it
    with pytest.raises(ValueError, match="tile 0 is not"):
        TILED.tiles(_garbled(tiled, tiles.bounds[0], at_end=False), N_BINS, n_frames)
    # the rest of a tile is checked when that tile is read, and only then
    garbled_tiles = TILED.tiles(_garbled(tiled, tiles.bounds[1]), N_BINS, n_frames)
    np.testing.assert_array_equal(garbled_tiles.codes(2), codes[:, 2 * TILE_FRAMES :])
    with pytest.raises(ValueError, match="damaged"):
        garbled_tiles.codes(0)


def _garbled(blob: bytes, end: int, *, at_end: bool = True) -> bytes:
    """``blob`` with 8 bytes zeroed: the last of the tile ending at byte ``end``, or the
    first of the tile starting there."""
    garbled = bytearray(blob)
    first = end - 8 if at_end else end
    garbled[first : first + 8] = bytes(8)
    return bytes(garbled)


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
    # what the features cache counts before anything is read: the arrays of the whole
    # reference and the octave fold kept to derive chroma parts
    fold_bytes = 4 * PARAMS.bins_per_octave * n_frames
    assert at_once.nbytes == whole.nbytes + fold_bytes
    assert at_once.frames_read(0, n_frames).nbytes + fold_bytes == at_once.nbytes
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
    # across processes a reference travels whole, and so do the arrays read from it
    for sent in (spectra, spectra.frames_read(3, 9)):
        carried = pickle.loads(pickle.dumps(sent))
        assert type(carried) is Features
        np.testing.assert_array_equal(carried.spectrum, whole.spectrum)
        np.testing.assert_allclose(carried.chroma_bin_spectrum, whole.chroma_bin_spectrum,
                                   atol=2e-6)  # fmt: skip
    # the arrays read do not keep their reference alive (the cache's budget frees it)
    import gc
    import weakref

    gc.disable()
    try:
        dropped = read_in_parts()
        part = dropped.frames_read(0, 50)
        gone = weakref.ref(dropped)
        del dropped
        assert gone() is None and part.n_frames == n_frames
        with pytest.raises(RuntimeError, match="gone"):
            part.frames_read(60, 80)
    finally:
        gc.enable()
    part_frames = read_in_parts().frames(250, 330)
    np.testing.assert_allclose(part_frames.chroma, whole.chroma[:, 250:330], atol=2e-6)


@pytest.fixture(scope="module")
def long_songs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiled-songs")
    return {
        name: write_audio(folder / f"{name}.wav", synth_song(seed, duration_s=120))
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


def test_ranges_and_positions_that_are_not_numbers_read_what_they_say() -> None:
    spectrum = _spectrum(3 * TILE_FRAMES + 20, seed=9)
    n_frames = spectrum.shape[1]
    blob, scale = TILED.encode(spectrum)

    def fresh() -> TiledFeatures:
        return stored_features(blob, scale, TILED, PARAMS, n_frames)

    # a range that is not a number reads everything; an infinite one stops at the ends
    for first, stop in [(np.nan, np.nan), (-np.inf, np.inf), (np.float64("nan"), 15.5)]:
        features = fresh()
        features.frames_read(first, stop)
        assert features.derived_fraction == (1 / 4 if stop == 15.5 else 1), (first, stop)
    # values wider than a float land where they lie: a long double just under a tile's
    # start reads the tile before it, integers too large for a float read to the ends
    features = fresh()
    features.frames_read(
        np.longdouble(TILE_FRAMES) - np.longdouble(2) ** -55, TILE_FRAMES + 1, chroma=False
    )
    assert list(np.flatnonzero(features._tile_done)) == [0, 1]
    features = fresh()
    features.frames_read(-(10**400), 10**400)
    assert features.derived_fraction == 1
    features = fresh()
    features.frames_read(np.inf, np.inf)  # past the end: nothing
    assert features.derived_fraction == 0
    features.frames_read(-np.inf, 0.5)  # frame 0 only
    assert features.derived_fraction == 1 / 4
    # a position that is not a number reads frame 0, infinite ones the first or last frame
    features = fresh()
    features.positions_read(np.array([np.nan, -np.inf, np.inf]))
    assert list(np.flatnonzero(features._tile_done)) == [0, 3]


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


@pytest.mark.parametrize(
    ("copy_at_s", "damaged_tile"), [(40, 4), (10, 7)], ids=["where-the-copy-is", "elsewhere"]
)
def test_a_damaged_tile_leaves_its_reference_out_of_every_query_without_failing(
    long_songs: dict[str, Path], tmp_path: Path, copy_at_s: float, damaged_tile: int
) -> None:
    """Tile 4 (40-50 s) is read by the alignment of a copy of 40-52 s; tile 7 (70-80 s) is
    read by no alignment nor null model of a copy of 10-22 s, only by another place of the
    repeating song, or when the work found is read whole: either way no query reports that
    work, the first as every later one, and the damaged reference is named."""
    _, tiled = _catalogues(long_songs, tmp_path)
    with Catalogue(tiled) as catalogue:
        key = catalogue.get("a").key
    with sqlite3.connect(tiled / "catalogue.sqlite") as db:
        (blob,) = db.execute("SELECT spectrum FROM refs WHERE key = ?", (key,)).fetchone()
        tiles = TILED.tiles(blob, N_BINS, _frames(db, key))
        garbled = _garbled(blob, tiles.bounds[damaged_tile + 1])
        db.execute("UPDATE refs SET spectrum = ? WHERE key = ?", (garbled, key))
    query = _excerpt(long_songs["a"], tmp_path, copy_at_s, 1.0)
    with Catalogue(tiled, read_only=True) as catalogue:
        for matcher in (Matcher(catalogue), Matcher(catalogue)):  # once, then again
            for _ in range(2):
                assert matcher.match_path(query).matches == []
                assert matcher.damaged_references() == ("a",)
            catalogue.clear_features_cache()
        other = matcher.match_path(_excerpt(long_songs["b"], tmp_path, 8, 1.0))
        assert [m.reference_id for m in other.matches] == ["b"]
        with pytest.raises(DamagedReferenceError, match="reference 'a'"):
            catalogue.features(key)  # read whole, the damage is found at once


def test_a_work_verified_before_its_damage_was_read_is_not_reported(
    long_songs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verification read the parts of "a" around the copy; its row is damaged afterwards,
    far from them: reporting the work reads it whole, finds the damage and leaves it out."""
    _, tiled = _catalogues(long_songs, tmp_path)
    query = _excerpt(long_songs["a"], tmp_path, 10, 1.0)
    with Catalogue(tiled) as catalogue:
        key = catalogue.get("a").key
        matcher = Matcher(catalogue)
        features = matcher.load_query(query)
        verifications = matcher.verify(features)
        assert [m.reference_id for m in matcher.matches_from(features, verifications)] == ["a"]
        with sqlite3.connect(tiled / "catalogue.sqlite") as db:
            (blob,) = db.execute("SELECT spectrum FROM refs WHERE key = ?", (key,)).fetchone()
            tiles = TILED.tiles(blob, N_BINS, _frames(db, key))
            garbled = _garbled(blob, tiles.bounds[tiles.count])  # the last tile, 110-120 s
            db.execute("UPDATE refs SET spectrum = ? WHERE key = ?", (garbled, key))
        catalogue.clear_features_cache()
        assert matcher.matches_from(features, verifications) == []
        assert matcher.damaged_references() == ("a",)
        # nor is it explained: the evidence is of no work rather than an error
        from tunetrace.explain import build_evidence

        catalogue.clear_features_cache()
        explaining = Matcher(catalogue)
        monkeypatch.setattr(explaining, "verify", lambda *args, **kwargs: verifications)
        evidence = build_evidence(explaining, features, query_name="query")
        assert evidence.reference_id != "a" and explaining.damaged_references() == ("a",)


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


def test_the_alignment_search_asks_for_every_frame_it_can_read() -> None:
    """Every reference frame the chroma grid search can read, at every point of every stage
    laid around every point of the stage before (the worst case of its path), lies in the
    range it asks for: a position reads its frame and the next, and alignments summed as a
    group read up to ``floor(offset) + int(rate * (n - 1) + 2)``."""
    from tunetrace.alignment import _alignment_grids, _frames_searched
    from tunetrace.alignment_kernels import chroma_cross_spectra
    from tunetrace.query import VerifySettings
    from tunetrace.types import Candidate

    settings = VerifySettings()
    factors, deltas, ends = _alignment_grids(
        settings.rate_search, float(settings.offset_search_frames)
    )
    stages = np.split(np.arange(len(factors)), ends[:-1])
    widest = float(np.prod([factors[s].max() for s in stages]))
    rng = np.random.default_rng(11)
    cases = [(float(rng.uniform(0.45, 2.2)), float(rng.uniform(-40, 900)),
              int(rng.integers(30, 300))) for _ in range(12)]  # fmt: skip
    # corners: the search ending on the last point of every stage at ratio 1 and a whole
    # offset, its last position a whole frame
    for n_query in (100, 101, 121, 201):
        for whole in (137.0, 300.0):
            ratio, offset, centre = 1 / widest, whole, n_query / 2
            for stage in stages:
                faster = ratio * factors[stage].max()
                offset -= (ratio - faster) * centre + deltas[stage].max()
                ratio = faster
            cases.append((1 / widest, offset, n_query))
    for ratio, offset, n_query in cases:
        candidate = Candidate(reference_key=0, tempo_ratio=ratio, offset_frames=offset, votes=1.0)
        asked_first, asked_stop = _frames_searched(candidate, n_query, factors, deltas, ends)
        rates, offsets = np.array([ratio]), np.array([offset])
        centre = n_query / 2
        lowest, highest = np.inf, -np.inf
        for stage in stages:  # as the kernel lays each stage around a point of the last
            grid_rates = rates[:, None] * factors[stage][None, :]
            offsets = (offsets[:, None] + (rates[:, None] - grid_rates) * centre
                       + deltas[stage][None, :]).ravel()  # fmt: skip
            rates = grid_rates.ravel()
            last_position = offsets + rates * (n_query - 1)
            lowest = min(lowest, float(np.floor(np.minimum(offsets, last_position)).min()))
            grouped = np.floor(offsets) + np.floor(rates * (n_query - 1) + 2.0)
            highest = max(highest, float(np.maximum(np.floor(last_position) + 1, grouped).max()))
        assert np.floor(asked_first) <= lowest, (ratio, offset, n_query)
        assert np.ceil(asked_stop) - 1 >= highest, (ratio, offset, n_query)
        # and the kernel itself, every stage's points at once per ratio (as it groups
        # them), reads nothing outside the range on a reference NaN everywhere else
        first, stop = int(max(np.floor(asked_first), 0)), int(np.ceil(asked_stop))
        reference = (rng.standard_normal((stop + 400, 7))
                     + 1j * rng.standard_normal((stop + 400, 7))).astype(np.complex64)  # fmt: skip
        reference[:first] = np.nan
        reference[stop:] = np.nan
        query = rng.standard_normal((n_query, 7)).astype(np.complex64)
        weights = np.ones(n_query, dtype=np.float32)
        rates, offsets = np.array([ratio]), np.array([offset])
        for stage in stages:
            grid_rates = rates[:, None] * factors[stage][None, :]
            offsets = (offsets[:, None] + (rates[:, None] - grid_rates) * centre
                       + deltas[stage][None, :]).ravel()  # fmt: skip
            rates = grid_rates.ravel()
            for rate in np.unique(rates):
                chosen = rates == rate
                sums, _ = chroma_cross_spectra(reference, query, weights, rates[chosen],
                                               offsets[chosen])  # fmt: skip
                assert np.isfinite(sums).all(), (ratio, offset, n_query, rate)
