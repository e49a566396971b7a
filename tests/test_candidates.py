"""Candidate places from patch votes, and the spectral fit that verification reads them with."""

from __future__ import annotations

import numpy as np
import pytest
from tunetrace.fingerprint.embedding import embed_patches
from tunetrace.fingerprint.features import Features, features_from_spectrum
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.ids import vector_ids

from tunetrace.alignment import inverse_transform
from tunetrace.candidates import (
    SAME_PLACE_RATES,
    add_best_neighbour_bin,
    find_candidates,
    local_totals,
    query_patch_vectors,
    run_starts,
    strongest_first,
    strongest_per_row,
)
from tunetrace.matcher import one_ratio_each
from tunetrace.query import prepare_query, whiten_spectrum
from tunetrace.types import Candidate
from tunetrace.verification import SpectralFit
from tunetrace.verification_kernels import alignment_objectives, paired_bins

PARAMS = FingerprintParams()
OFFSET = 800  # reference frame where the query's first frame lands


def _query(seed: int = 0, n_frames: int = 100) -> Features:
    rng = np.random.default_rng(seed)
    spectrum = rng.random((PARAMS.n_bins, n_frames)).astype(np.float32)
    return features_from_spectrum(spectrum, params=PARAMS)


class _ScriptedSearcher:
    """Answers each query patch with hits chosen per tempo-ratio index of the grid."""

    def __init__(
        self,
        features: Features,
        hits_by_rate: dict[int, list[tuple[int, float]]],
        shift_by_rate: dict[int, int] | None = None,
    ):
        _, self.rate_index, self.starts = query_patch_vectors(features, params=PARAMS)
        self.hits_by_rate = hits_by_rate
        self.shift_by_rate = shift_by_rate or {}

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = np.zeros((len(vectors), k), dtype=np.float32)
        ids = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, (rate_i, start) in enumerate(zip(self.rate_index, self.starts, strict=True)):
            for column, (key, similarity) in enumerate(self.hits_by_rate.get(int(rate_i), [])):
                shift = self.shift_by_rate.get(int(rate_i), 0)
                patch = round((start + OFFSET + shift) / PARAMS.reference_patch_hop)
                ids[row, column] = vector_ids(key, patch + 1)[patch]
                sims[row, column] = similarity
        return sims, ids


def _rate_index(rate: float) -> int:
    return int(np.argmin(np.abs(np.log(PARAMS.rate_grid() / rate))))


def test_other_tempo_ratios_at_the_same_place_are_kept_with_it() -> None:
    query = _query()
    unit, slower = _rate_index(1.0), _rate_index(0.8)
    searcher = _ScriptedSearcher(query, {unit: [(1, 0.9)], slower: [(1, 0.6)]})

    with_others = find_candidates(query, searcher, params=PARAMS, other_rates=3)
    without = find_candidates(query, searcher, params=PARAMS, other_rates=0)

    assert len(with_others) == 1
    place = with_others[0]
    assert place.tempo_ratio == pytest.approx(1.0)
    assert abs(place.offset_frames - OFFSET) <= PARAMS.reference_patch_hop
    ((other_ratio, other_offset),) = place.other_alignments
    assert other_ratio == pytest.approx(PARAMS.rate_grid()[slower])
    assert abs(other_offset - OFFSET) <= PARAMS.reference_patch_hop
    assert [c.other_alignments for c in without] == [()]


def test_each_other_tempo_ratio_keeps_the_offset_its_own_votes_chose() -> None:
    query = _query()
    unit = _rate_index(1.0)
    faster = unit + SAME_PLACE_RATES + 1  # far enough in the grid to be another ratio
    moved = 3 * PARAMS.reference_patch_hop  # within one place, but three offset bins away
    searcher = _ScriptedSearcher(
        query, {unit: [(1, 0.9)], faster: [(1, 0.6)]}, shift_by_rate={faster: moved}
    )

    (place,) = find_candidates(query, searcher, params=PARAMS, other_rates=3)

    ((_, other_offset),) = place.other_alignments
    assert abs(place.offset_frames - OFFSET) <= PARAMS.reference_patch_hop
    assert abs(other_offset - (OFFSET + moved)) <= PARAMS.reference_patch_hop


def test_only_the_best_voted_references_become_candidates() -> None:
    query = _query()
    unit, slower = _rate_index(1.0), _rate_index(0.8)
    # reference 3 also wins a second place (another tempo ratio) of its own
    searcher = _ScriptedSearcher(
        query, {unit: [(1, 0.9), (2, 0.5), (3, 0.7)], slower: [(3, 0.6)]}
    )

    two = find_candidates(query, searcher, params=PARAMS, max_candidates=2, other_rates=3)
    three = find_candidates(query, searcher, params=PARAMS, max_candidates=3, other_rates=3)

    assert [c.reference_key for c in two] == [1, 3]
    assert [c.reference_key for c in three] == [1, 3, 2]
    assert two[1].other_alignments == three[1].other_alignments != ()


def test_weak_vote_peaks_are_dropped_below_the_ratio() -> None:
    query = _query()
    unit = _rate_index(1.0)
    searcher = _ScriptedSearcher(query, {unit: [(1, 0.9), (2, 0.1)]})

    everything = find_candidates(query, searcher, params=PARAMS)
    strong = find_candidates(query, searcher, params=PARAMS, min_vote_ratio=0.5)

    assert {c.reference_key for c in everything} == {1, 2}
    assert {c.reference_key for c in strong} == {1}


def test_local_totals_are_each_places_best_two_neighbouring_windows() -> None:
    # place 0 votes in windows 0, 1, 1, 3; place 1 in windows 2, 2
    place_starts = np.array([True, False, False, False, True, False])
    windows = np.array([0, 1, 1, 3, 2, 2])
    votes = np.array([1.0, 0.5, 0.25, 2.0, 0.5, 0.5])

    totals = local_totals(place_starts, windows, votes)

    # place 0: windows 0+1 give 1.75, window 3 alone (no window 4) 2.0
    np.testing.assert_allclose(totals, [2.0, 1.0])


class _PositionalSearcher:
    """Answers query patches at reference tempo: a steady weak coincidence with reference 2
    all along the query, and a strong copy of reference 1 in one stretch of it."""

    def __init__(self, features: Features, copied_frames: tuple[int, int]) -> None:
        _, self.rate_index, self.starts = query_patch_vectors(features, params=PARAMS)
        self.copied = copied_frames
        self.unit = _rate_index(1.0)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = np.zeros((len(vectors), k), dtype=np.float32)
        ids = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, (rate_i, start) in enumerate(zip(self.rate_index, self.starts, strict=True)):
            if rate_i != self.unit:
                continue
            patch = round((start + OFFSET) / PARAMS.reference_patch_hop)
            ids[row, 0] = vector_ids(2, patch + 1)[patch]
            sims[row, 0] = 0.2
            if self.copied[0] <= start < self.copied[1]:
                ids[row, 1] = vector_ids(1, patch + 1)[patch]
                sims[row, 1] = 0.9
        return sims, ids


def test_a_short_copy_in_a_long_query_is_not_outvoted_by_a_steady_coincidence() -> None:
    fps = PARAMS.frame_rate_hz
    long_query = _query(n_frames=int(180 * fps))
    copied = (int(60 * fps), int(68 * fps))  # 8 s of the 3 minutes

    (best,) = find_candidates(
        long_query, _PositionalSearcher(long_query, copied), params=PARAMS, max_candidates=1
    )

    # Over the whole query the coincidence gathers 0.2 x 180 s of votes against the copy's
    # 0.9 x 8 s; within the copy's own stretch of the query (two windows) the copy wins.
    assert best.reference_key == 1
    assert abs(best.offset_frames - OFFSET) <= PARAMS.reference_patch_hop
    assert best.query_span_frames is not None
    assert copied[0] <= best.query_span_frames[0] < best.query_span_frames[1] <= copied[1] + 32


def test_only_the_strongest_candidates_are_split_into_one_per_ratio() -> None:
    first = Candidate(1, 1.0, 0.0, 2.0, other_alignments=((0.8, 16.0), (1.25, -8.0)))
    second = Candidate(2, 1.1, 0.0, 1.0, other_alignments=((0.9, 0.0),))

    seeds = one_ratio_each([first, second], retimed=1)

    assert [(c.reference_key, c.tempo_ratio, c.offset_frames) for c in seeds] == [
        (1, 1.0, 0.0),
        (1, 0.8, 16.0),
        (1, 1.25, -8.0),
        (2, 1.1, 0.0),
    ]
    assert all(c.other_alignments == () for c in seeds)


def _direct_frame_correlation(
    query_white: np.ndarray, reference: np.ndarray, positions: np.ndarray, shift: float
) -> np.ndarray:
    """Interpolate frames, whiten, shift along frequency, correlate: the straightforward way."""
    n_frames = reference.shape[1]
    clipped = np.clip(positions, 0, n_frames - 1)
    left = np.floor(clipped).astype(int)
    right = np.minimum(left + 1, n_frames - 1)
    frac = clipped - left
    frames = reference[:, left] * (1 - frac) + reference[:, right] * frac
    white = whiten_spectrum(frames, 13)
    source = np.arange(white.shape[0]) - shift
    valid = (source >= 0) & (source <= white.shape[0] - 1)
    low = np.floor(source[valid]).astype(int)
    high = np.minimum(low + 1, white.shape[0] - 1)
    weight = (source[valid] - low)[:, None]
    shifted = white[low] * (1 - weight) + white[high] * weight
    q = query_white[valid] - query_white[valid].mean(axis=0)
    r = shifted - shifted.mean(axis=0)
    return (q * r).sum(axis=0) / (np.linalg.norm(q, axis=0) * np.linalg.norm(r, axis=0))


@pytest.mark.parametrize(
    ("rate", "offset", "shift"), [(1.0, 40.0, 0.0), (0.83, 12.5, 7.4), (1.37, 300.2, -41.0)]
)
def test_spectral_fit_equals_shifting_and_whitening_each_alignment(
    rate: float, offset: float, shift: float
) -> None:
    query = prepare_query(_query(seed=1))
    reference = _query(seed=2, n_frames=600)
    fit = SpectralFit(query, reference, whiten_bins=13)

    measured = fit.similarity(rate, offset, shift).per_frame
    expected = _direct_frame_correlation(
        query.white, reference.verification_spectrum, fit.positions(rate, offset), shift
    )

    np.testing.assert_allclose(measured, expected, atol=1e-5)


def test_fit_objectives_of_many_alignments_and_shifts_equal_the_spectral_fit_of_each() -> None:
    # the last alignment runs past the reference's end; +-190 bins pair too few bins to count
    query = prepare_query(_query(seed=3))
    reference = _query(seed=4, n_frames=600)
    fit = SpectralFit(query, reference, whiten_bins=13)
    rates = np.array([1.0, 0.83, 1.37])
    offsets = np.array([40.0, 12.5, 540.2])
    shifts = np.array([-190.0, -36.4, 0.0, 7.25, 35.6, 190.0])

    objectives = alignment_objectives(
        reference.spectrum_frames,
        rates,
        offsets,
        shifts,
        query.weights,
        13,
        query.white_frames,
        query.raw_changes,
    )

    expected = [
        [fit.similarity(rate, offset, shift).objective for shift in shifts]
        for rate, offset in zip(rates, offsets, strict=True)
    ]
    assert objectives.shape == (3, 6)
    assert all(row[0] == row[-1] == 0.0 and min(row[1:-1]) != 0.0 for row in expected)
    np.testing.assert_allclose(objectives, expected, atol=1e-5)


def test_paired_bins_are_the_bins_whose_partner_lies_in_the_spectrum() -> None:
    n_bins = PARAMS.n_bins
    rng = np.random.default_rng(6)
    shifts = [0.0, 1.0, -1.0, 35.5, n_bins - 1.0, -(n_bins - 1.0), n_bins + 0.5]
    for shift in [*shifts, *rng.uniform(-1.2 * n_bins, 1.2 * n_bins, 2000)]:
        source = np.arange(n_bins) - shift
        valid = np.flatnonzero((source >= 0) & (source <= n_bins - 1))
        first, stop = paired_bins(n_bins, float(shift))
        if len(valid) == 0:
            assert stop <= first
        else:
            assert (first, stop) == (valid[0], valid[-1] + 1)


@pytest.mark.parametrize("n_bins", [36, 35, 12])
def test_inverse_transform_matrices_equal_the_inverse_fft(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    half = rng.standard_normal((9, n_bins // 2 + 1)) + 1j * rng.standard_normal(
        (9, n_bins // 2 + 1)
    )
    cosines, sines = inverse_transform(n_bins)
    np.testing.assert_allclose(
        half.real @ cosines + half.imag @ sines,
        np.fft.irfft(np.conj(half), n=n_bins, axis=1),
        atol=1e-12,
    )


def test_spectral_fit_reads_far_apart_frames_of_a_long_reference() -> None:
    query = prepare_query(_query(seed=3))
    reference = _query(seed=4, n_frames=20_000)
    fit = SpectralFit(query, reference, whiten_bins=13)
    # wrapped round the end: frames from both ends of a long reference in one reading
    positions = (fit.positions(1.0, 10.0) - 50.0) % reference.n_frames

    measured = fit.spectral_at(positions, 3.0)
    several = fit.spectral_at(np.stack([positions, positions + 7.5]), 3.0)  # a curve per row

    expected = _direct_frame_correlation(
        query.white, reference.verification_spectrum, positions, 3.0
    )
    np.testing.assert_allclose(measured, expected, atol=1e-5)
    np.testing.assert_allclose(several[0], expected, atol=1e-5)
    np.testing.assert_allclose(
        several[1],
        _direct_frame_correlation(
            query.white, reference.verification_spectrum, positions + 7.5, 3.0
        ),
        atol=1e-5,
    )


def test_a_twice_as_fast_query_is_smoothed_like_its_reference() -> None:
    # A chord every 6 frames; the query plays it twice as fast (every other frame).
    rng = np.random.default_rng(0)
    spectrum = np.repeat(rng.random((PARAMS.n_bins, 60)).astype(np.float32) ** 4, 6, axis=1)
    reference = features_from_spectrum(spectrum, params=PARAMS)
    query = features_from_spectrum(spectrum[:, ::2], params=PARAMS)
    rates = PARAMS.rate_grid()
    nearest = int(np.argmin(np.abs(rates - 2.0)))

    vectors, rate_index, _ = query_patch_vectors(query, params=PARAMS)
    reference_patches = embed_patches(reference.chroma, np.arange(0, 200), params=PARAMS)
    best = (vectors[rate_index == nearest] @ reference_patches.T).max(axis=1)

    # Smoothed at the query's own tempo (over twice as much music) the median is 0.95.
    assert np.median(best) > 0.98


def test_run_starts_of_sorted_rows_give_numpy_unique_over_rows() -> None:
    rng = np.random.default_rng(5)
    rows = rng.integers(-3, 3, size=(500, 3))
    rows = rows[np.lexsort(rows.T[::-1])]
    starts = run_starts(rows)
    expected_unique, expected_inverse = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(rows[starts], expected_unique)
    np.testing.assert_array_equal(np.cumsum(starts) - 1, expected_inverse.reshape(-1))


@pytest.mark.parametrize("high", [5, 2**40], ids=["packed", "too-wide-to-pack"])
def test_strongest_per_row_keeps_each_distinct_row_once_with_its_largest_value(
    high: int,
) -> None:
    rng = np.random.default_rng(8)
    rows = rng.integers(-high, high, size=(2000, 4))
    rows[:, 1] = rng.integers(0, 3, size=2000)  # many equal rows
    rows[500:900] = rows[:400]  # and exact repeats with other values
    values = rng.random(2000).astype(np.float32)
    distinct, largest = strongest_per_row(rows, values)
    expected, inverse = np.unique(rows, axis=0, return_inverse=True)
    expected_largest = np.full(len(expected), -np.inf, dtype=np.float32)
    np.maximum.at(expected_largest, inverse.reshape(-1), values)
    np.testing.assert_array_equal(distinct, expected)
    np.testing.assert_array_equal(largest, expected_largest)


@pytest.mark.parametrize("hop", [0, -9])
def test_patches_less_than_a_frame_apart_are_refused(hop: int) -> None:
    with pytest.raises(ValueError, match="at least 1 frame apart"):
        query_patch_vectors(_query(n_frames=200), params=PARAMS, hop=hop)


def test_patches_are_the_hop_apart_at_every_tempo_ratio() -> None:
    _, rate_index, starts = query_patch_vectors(_query(n_frames=400), params=PARAMS, hop=9)
    gaps = [set(np.diff(starts[rate_index == rate])) for rate in np.unique(rate_index)]
    assert len(gaps) == len(PARAMS.rate_grid())
    assert all(gap == {9} for gap in gaps)  # every ratio has several patches here


def test_tied_places_go_stronger_bin_first_then_earlier_row() -> None:
    totals = np.array([0.5, 0.9, 0.9, 0.2, 0.9])
    own_votes = np.array([0.5, 0.4, 0.5, 0.2, 0.5])
    assert strongest_first(totals, own_votes, 3).tolist() == [2, 4, 1]
    assert strongest_first(totals, own_votes, 10).tolist() == [2, 4, 1, 0, 3]


@pytest.mark.parametrize("n", [0, 1, 7, 300, 5001])
def test_the_strongest_places_are_a_full_stable_sorts_first_ones(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(10):
        totals = rng.integers(0, 20, n) / 7.0  # many exact ties
        own_votes = rng.integers(0, 4, n) / 7.0
        for count in (1, 5, 5000):
            expected = np.lexsort((-own_votes, -totals))[:count]
            assert np.array_equal(strongest_first(totals, own_votes, count), expected)


def test_the_walk_order_of_places_does_not_depend_on_reference_keys() -> None:
    # 60 references whose first two offset bins tie (each holds both bins' votes, and the
    # same votes of its own); a shard numbers the same references otherwise, so their rows
    # lie elsewhere
    rng = np.random.default_rng(4)
    strength = 1.0 + rng.permutation(60) / 100.0
    own = {(name, bin_): strength[name] * (0.5 if bin_ == 2 else 1.0)
           for name in range(60) for bin_ in range(3)}  # fmt: skip

    def order_with(keys: np.ndarray) -> list[tuple[int, int]]:
        rows = sorted(own, key=lambda place: (keys[place[0]], place[1]))
        triples = np.array([(keys[name], 0, bin_) for name, bin_ in rows])
        own_votes = np.array([own[place] for place in rows])
        totals = add_best_neighbour_bin(triples, own_votes)
        return [rows[i] for i in strongest_first(totals, own_votes, len(rows))]

    walk = order_with(np.arange(60))
    assert walk == order_with(rng.permutation(60) + 100)
    assert walk[:2] == [(int(np.argmax(strength)), 0), (int(np.argmax(strength)), 1)]
