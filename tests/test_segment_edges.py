"""Carrying a segment to its reference's start or end: when the query frames carry the copy on."""

from __future__ import annotations

import numpy as np
import pytest
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams

from tunetrace.segment_edges import (
    EDGE_REACH_S,
    PAUSE_DB,
    _fits_on_average,
    _to_reference_edges,
    _trimmed_to,
    copy_runs,
    quiet_together,
)
from tunetrace.types import Segment

FPS = 10.0


def frames(seconds: float, value: float | bool) -> np.ndarray:
    return np.full(int(seconds * FPS), value)


def test_silence_shared_with_the_reference_carries_the_copy() -> None:
    silent = frames(5, False)
    assert _fits_on_average(frames(5, 0.0), silent, silent, FPS)


def test_quiet_passages_under_the_uploads_level_do_not_stop_a_copy_that_fits() -> None:
    """The copy's quiet frames fall under the query's level of sound (louder music around
    it) where the reference sounds; the 38% that sound fit well: the copy goes on."""
    query, reference = frames(15, False), frames(15, True)
    query[::3] = True
    assert _fits_on_average(np.where(query, 0.6, 0.0), query, reference, FPS)


def test_a_copy_stops_where_the_query_falls_silent_and_the_reference_goes_on() -> None:
    """Two sounding query frames fitting well, the rest silent where the reference sounds:
    the copy stopped (cut, or faded out alone); two frames are too few to say otherwise."""
    usable = frames(6.7, False)
    usable[:2] = True
    excess = np.where(usable, 0.9, 0.0)
    assert not _fits_on_average(excess, usable, frames(6.7, True), FPS)


@pytest.mark.parametrize(("tail_excess", "carried"), [(0.3, True), (-0.2, False)])
def test_a_fade_both_share_carries_the_copy_if_its_last_sounds_fit(
    tail_excess: float, carried: bool
) -> None:
    """The end of a fade in copy and reference alike: the query's last quiet frames sound
    (1.5 s), the reference's a little longer; carried when those frames fit."""
    query, reference = frames(6, False), frames(6, False)
    query[:15], reference[:21] = True, True
    excess = np.where(query, tail_excess, 0.0)
    assert _fits_on_average(excess, query, reference, FPS) == carried


def test_a_few_sounding_frames_do_not_break_a_shared_silence() -> None:
    """A silent intro shared with the reference, with 0.2 s of crackle that fits nothing."""
    query, reference = frames(10, False), frames(10, False)
    query[40:42] = True
    assert _fits_on_average(np.where(query, -0.05, 0.0), query, reference, FPS)


@pytest.mark.parametrize(("mean_excess", "carried"), [(0.3, True), (0.1, False)])
def test_sounding_frames_carry_the_copy_when_they_fit(mean_excess: float, carried: bool) -> None:
    sounding = frames(3, True)
    assert _fits_on_average(frames(3, mean_excess), sounding, sounding, FPS) == carried


def test_silences_at_different_frames_are_not_a_shared_silence() -> None:
    """The query sounds on a fifth of the frames where the reference is silent and is silent
    on another fifth where the reference sounds: not silent together, and it does not fit."""
    query = np.zeros(50, dtype=bool)
    reference = np.zeros(50, dtype=bool)
    query[:10], reference[10:20] = True, True
    assert not _fits_on_average(np.full(50, -0.5), query, reference, FPS)


def test_nothing_to_judge_is_not_a_copy() -> None:
    empty = np.zeros(0, dtype=bool)
    assert not _fits_on_average(np.zeros(0), empty, empty, FPS)


def two_segments_of_one_alignment() -> tuple[np.ndarray, Segment, Segment]:
    """Query frame 100 is reference frame 0 (an 80-s reference inside a 60-s query); the copy
    is at query 12-20 s (reference 2-10 s) and 30-50 s (reference 20-40 s)."""
    positions = np.arange(600, dtype=np.float64) - 100
    first = Segment(12.0, 20.0, 2.0, 10.0)
    second = Segment(30.0, 50.0, 20.0, 40.0)
    return positions, first, second


def test_a_segment_is_carried_to_its_reference_start_over_music_that_fits() -> None:
    positions, first, second = two_segments_of_one_alignment()
    excess = np.zeros(600)
    excess[100:200] = 0.6  # reference 0-10 s: the copy
    usable = np.ones(600, dtype=bool)
    carried = _to_reference_edges(
        first, positions, np.ones(800, dtype=bool), excess, usable, FPS, others=[second]
    )
    assert (carried.query_start_s, carried.reference_start_s) == (10.0, 0.0)
    assert carried.query_end_s == first.query_end_s


def test_a_segment_is_not_carried_through_a_break_to_another_segment() -> None:
    """Between the two segments the query sounds and does not fit (the copy broke off):
    the later segment is not carried back over the earlier one to the reference's start,
    though the earlier one's fit would lift the span's mean above the margin."""
    positions, first, second = two_segments_of_one_alignment()
    excess = np.zeros(600)
    excess[120:200] = 0.6
    excess[300:500] = 0.6
    usable = np.ones(600, dtype=bool)
    carried = _to_reference_edges(
        second, positions, np.ones(800, dtype=bool), excess, usable, FPS, others=[first]
    )
    assert carried == second
    alone = _to_reference_edges(
        second, positions, np.ones(800, dtype=bool), excess, usable, FPS, others=[]
    )
    assert alone.query_start_s == 10.0  # what the break guard prevents


@pytest.mark.parametrize(("break_s", "carried"), [(0.0, True), (1.5, True), (3.0, False)])
def test_a_segment_is_not_carried_over_other_music_that_fits_under_the_passage_level(
    break_s: float, carried: bool
) -> None:
    """Other music between two repeats of a hook the reference plays twice: the segment's
    own verification holds no other segment to stop the carry, and the earlier repeat's fit
    lifts the span's mean, but seconds of sounding frames that do not fit the reference
    are a break; a shorter dip inside a copy is not."""
    positions, _, second = two_segments_of_one_alignment()
    excess, level = np.zeros(600), np.full(600, 0.8)
    excess[100:300] = 0.6
    dip = slice(250, 250 + int(break_s * FPS))
    excess[dip], level[dip] = -0.05, 0.05
    usable = np.ones(600, dtype=bool)
    moved = _to_reference_edges(
        second, positions, np.ones(800, dtype=bool), excess, usable, FPS, others=[],
        level=level,
    )  # fmt: skip
    assert (moved.query_start_s == 10.0) is carried, moved
    assert moved.query_end_s == second.query_end_s
    # frames that do not sound are no break, however they fit
    usable[dip] = False
    quiet = _to_reference_edges(
        second, positions, np.ones(800, dtype=bool), excess, usable, FPS, others=[],
        level=level,
    )  # fmt: skip
    assert quiet.query_start_s == 10.0


def test_a_fragment_of_the_same_alignment_does_not_block_the_carry() -> None:
    positions, first, _ = two_segments_of_one_alignment()
    fragment = Segment(10.5, 11.5, 0.5, 1.5)
    excess = np.full(600, 0.6)
    carried = _to_reference_edges(
        first, positions, np.ones(800, dtype=bool), excess, np.ones(600, dtype=bool), FPS,
        others=[fragment],
    )  # fmt: skip
    assert (carried.query_start_s, carried.reference_start_s) == (10.0, 0.0)


def test_a_segment_far_from_its_reference_edges_stays() -> None:
    positions = np.arange(600, dtype=np.float64) + 400  # query 0 s is reference 40 s
    segment = Segment(10.0, 20.0, 41.0, 51.0)
    everything_fits = np.full(600, 0.9)
    carried = _to_reference_edges(
        segment, positions, np.ones(2000, dtype=bool), everything_fits,
        np.ones(600, dtype=bool), FPS, others=[],
    )  # fmt: skip
    assert carried == segment


def test_an_empty_reference_leaves_the_segment() -> None:
    segment = Segment(1.0, 5.0, 1.0, 5.0)
    carried = _to_reference_edges(
        segment, np.arange(100.0), np.zeros(0, dtype=bool), np.zeros(100),
        np.ones(100, dtype=bool), FPS, others=[],
    )  # fmt: skip
    assert carried == segment


PARAMS = FingerprintParams()


def spectrum_of(levels: np.ndarray, *, tonal: bool = False) -> Features:
    """Features whose frames' loudest bins have the given linear levels (log1p-compressed, as
    spectra are stored): every bin alike (noise-like frames), or one pitch class alone."""
    spectrum = np.zeros((PARAMS.n_bins, len(levels)), dtype=np.float32)
    rows = slice(5, None, PARAMS.bins_per_octave) if tonal else slice(None)
    spectrum[rows] = np.log1p(levels)
    return Features(spectrum=spectrum, chroma=np.ones((12, len(levels))), frame_rate_hz=FPS)


def pause_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Query frame t is reference frame t + 100 (frames 0-19 align before the reference's
    start). The copy is matched at query frames 200-299, where the query's level is 50 and the
    reference's 5; around it both are quieter (the query 15, the reference 1) or louder (the
    query 200 at 20-49). Reference frames 0-99 and 150-199 pause, 20 dB under its level in
    the copy, and the query too at 50-99 (and at 0-19, before the reference's start).

    Returns query levels, reference levels, positions and the matched frames."""
    query = np.full(300, 15.0)
    query[200:] = 50.0
    query[20:50] = 200.0
    query[:20] = query[50:100] = 5.0
    reference = np.ones(600)
    reference[300:400] = 5.0
    reference[:100] = reference[150:200] = 0.5
    positions = np.arange(300, dtype=np.float64) + 100
    positions[:20] -= 200
    inside = np.zeros(300, dtype=bool)
    inside[200:] = True
    return query, reference, positions, inside


def test_a_pause_is_quiet_in_both_relative_to_the_copy_not_silent() -> None:
    """Levels are compared as amplitudes (not their logarithms), to the medians inside the
    copy (not over the whole query), and only where the query aligns inside the reference."""
    query, reference, positions, inside = pause_scene()
    paused = quiet_together(spectrum_of(query), spectrum_of(reference), positions, inside,
                            np.zeros(300), params=PARAMS)  # fmt: skip
    expected = np.zeros(300, dtype=bool)
    expected[50:100] = True
    assert np.array_equal(paused, expected)
    louder = query.copy()
    louder[50:100] = 50.0 * 10 ** (-(PAUSE_DB - 5) / 20)  # a softer passage is no pause
    assert PAUSE_DB < 20
    assert not quiet_together(spectrum_of(louder), spectrum_of(reference), positions, inside,
                              np.zeros(300), params=PARAMS).any()  # fmt: skip


@pytest.mark.parametrize(("fit", "paused"), [(0.0, False), (0.5, True)])
def test_quiet_music_is_a_pause_only_when_it_fits_the_reference(fit: float, paused: bool) -> None:
    """Where the reference pauses the query holds quiet tonal music: other music, unless it
    fits the reference (the copy's own quiet passage)."""
    query, reference, positions, inside = pause_scene()
    excess = np.zeros(300)
    excess[50:100] = fit
    found = quiet_together(spectrum_of(query, tonal=True), spectrum_of(reference), positions,
                           inside, excess, params=PARAMS)  # fmt: skip
    assert found[50:100].all() == paused and found[50:100].any() == paused


def test_a_silent_query_where_the_reference_sounds_softly_is_no_pause() -> None:
    """The query is silent at 50-99, where the reference sounds 20 dB under its music: the
    copy stopped there. Where the reference is silent too, the silence is a shared pause."""
    query, reference, positions, inside = pause_scene()
    query[50:100] = 0.0
    found = quiet_together(spectrum_of(query), spectrum_of(reference), positions, inside,
                           np.zeros(300), params=PARAMS)  # fmt: skip
    assert not found[50:100].any()
    reference[150:200] = 0.0
    found = quiet_together(spectrum_of(query), spectrum_of(reference), positions, inside,
                           np.zeros(300), params=PARAMS)  # fmt: skip
    assert found[50:100].all()


def test_a_few_silent_frames_do_not_cancel_a_noisy_pause() -> None:
    """A codec's gate drops two frames of the noise to silence where the reference still
    sounds, softly: the pause stands."""
    query, reference, positions, inside = pause_scene()
    query[70:72] = 0.0
    found = quiet_together(spectrum_of(query), spectrum_of(reference), positions, inside,
                           np.zeros(300), params=PARAMS)  # fmt: skip
    assert found[50:100].all()


def test_an_empty_reference_has_no_pause() -> None:
    query, _, positions, inside = pause_scene()
    empty = Features(np.zeros((PARAMS.n_bins, 0), dtype=np.float32), np.zeros((12, 0)), FPS)
    found = quiet_together(spectrum_of(query), empty, positions, inside, np.zeros(300),
                           params=PARAMS)  # fmt: skip
    assert not found.any()


def test_a_shared_pause_carries_a_copy_to_its_reference_end_however_long() -> None:
    """Query frame t is reference frame t; the segment stops 40 s before the reference's
    end, where the query holds only noise that fits nothing."""
    positions = np.arange(1000, dtype=np.float64)
    segment = Segment(10.0, 60.0, 10.0, 60.0)
    excess = np.zeros(1000)
    usable = np.ones(1000, dtype=bool)
    assert EDGE_REACH_S < 40.0
    for pause_share, carried in ((1.0, True), (0.7, False)):
        paused = np.zeros(1000, dtype=bool)
        paused[600 : 600 + int(400 * pause_share)] = True
        moved = _to_reference_edges(
            segment, positions, np.ones(1000, dtype=bool), excess, usable, FPS,
            others=[], paused=paused,
        )  # fmt: skip
        assert (moved.query_end_s == 100.0) == carried, moved


@pytest.mark.parametrize(("fragment", "joined"), [(5, False), (10, True)])
def test_a_pause_joins_stretches_that_fit_for_a_second_or_more(fragment: int, joined: bool) -> None:
    """A copy fits at frames 20-59, pauses at 60-89, then fits for ``fragment`` frames: a
    fragment shorter than a second (10 frames) does not carry the copy on across the pause."""
    fits = np.zeros(200, dtype=bool)
    fits[20:60] = True
    fits[90 : 90 + fragment] = True
    paused = np.zeros(200, dtype=bool)
    paused[60:90] = True
    runs = copy_runs(fits, paused, min_run=10)
    assert runs == ([(20, 90 + fragment)] if joined else [(20, 60)])


def test_a_pause_joins_stretches_of_a_copy_but_does_not_end_one() -> None:
    fits = np.zeros(100, dtype=bool)
    fits[20:40] = True
    fits[60:70] = True
    assert _trimmed_to(fits, (10, 90)) == (20, 70)
    assert _trimmed_to(fits, (40, 60)) is None
