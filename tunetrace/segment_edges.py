"""Where a verified section really starts and ends in the whole query.

A candidate whose voters sit in one part of the query is verified on a window around them
(:meth:`tunetrace.matcher.Matcher._in_window`), and its matched segments cannot reach past
that window, though the copied section often does: the voters of a section are where its
patches matched best, not where it begins and ends. Once a verification has fixed the tempo
ratio, the offset and the spectral shift, :func:`reach_segments` measures the same
frame-by-frame fit and coincidence level over the whole query at that alignment and lets each
segment grow to the run of matched frames it belongs to. A run goes on across a pause the
query shares with its reference (:func:`quiet_together`: both far under their own level, as
where the reference falls silent and the copy holds only added noise). A segment that then
stops within :data:`EDGE_REACH_S` of its reference's start or end is carried there when the
query frames that part of the reference aligns with carry the copy on (a quiet intro or
ending the copy shares with its reference, or music that fits it on average), and over a
shared pause of any length. The score, which judged the window's own evidence, is left as it
was; only where the segments lie changes. The constants below were chosen on the
partial-copy benchmark's calibration split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.tonality import tonality
from tunetrace.query import PreparedQuery, VerifySettings
from tunetrace.segments import (
    continuous_runs,
    is_section,
    matched_frames,
    same_place_of,
    smoothed_fit,
)
from tunetrace.types import Segment, Verification
from tunetrace.verification import SpectralFit

logger = logging.getLogger(__name__)

#: Past a segment's edge the copy goes on while the smoothed fit stays at least this ...
REACH_FLOOR = 0.45
#: ... and this fraction of its median inside the verification's segments ...
REACH_FRACTION = 0.75
#: ... and at least this much above the misaligned reference's;
REACH_MIN_EXCESS = 0.0
#: or, where the copy is quieter or altered more than inside the segments, while the fit stays
#: at least this ...
REACH_LOW_FLOOR = 0.25
#: ... and this much above the misaligned reference's.
REACH_LOW_MARGIN = 0.1
#: ... over at least this many seconds.
REACH_LOW_MIN_S = 4.0
#: A segment within this many seconds of its reference's start or end is carried there when
#: the query frames the part left out aligns with carry the copy on: silent together with the
#: reference (its quiet intro or ending, a fade both have) on all but this share of them
#: (which also bounds the frames of a shared pause, see :data:`PAUSE_DB`, that may not
#: pause) ...
EDGE_REACH_S = 30.0
EDGE_MAX_SOUNDING = 0.2
#: ... or, sounding for at least this many seconds (0.5 lost a padded track on the calibration
#: split; fewer frames are too few to judge) ...
EDGE_MIN_JUDGED_S = 0.3
#: ... fitting it by this much more than a misaligned reference on average (coincidences
#: around copied sections reached 0.16 on the calibration split, copies going on 0.2-0.9).
EDGE_MIN_EXCESS = 0.2
#: A query frame and the reference frame it aligns with pause together where both are at
#: least this many decibels under their median level inside the verification's segments
#: (added noise or a lossy codec keeps a copy's pauses from being silent; on the calibration
#: split the reference lay a median 20-40 dB under its music there) ...
PAUSE_DB = 15.0
#: ... and the query holds noise there (the median chroma peak-to-mean ratio of its sounding
#: frames, at most this: 1.3-2.4 in most of the calibration split's pauses, 1.3 for white
#: noise, 2.8 for the median query, 10 for quiet synthetic music) or music that fits the
#: reference (:data:`EDGE_MIN_EXCESS`) ...
PAUSE_MAX_TONALITY = 2.5
#: ... and silent where the reference sounds on at most this share of the frames. No fit is
#: asked of noise: a quiet, non-tonal passage of other material (drums, applause) beside a
#: soft passage of the reference passes for the copy's pause.
PAUSE_MAX_CUT_SHARE = 0.5
#: A run at a verification's alignment apart from its segments is the copy resumed (after a
#: passage that did not verify, see :func:`_resumed`) where it holds this many seconds of
#: strong fit (:data:`REACH_FLOOR` and :data:`REACH_FRACTION`): the shortest section looked for.
RESUMED_MIN_S = 8.0
#: A passage carries the copy on where its sounding frames fit the aligned reference at least
#: this well on average (and by :data:`REACH_LOW_MARGIN` more than a misaligned one): on the
#: calibration split, passages of copies that did not verify fit at 0.20-0.39, other music
#: between the repeats of a loop from a reference that repeats itself at 0.11 (its misaligned
#: reference fitting worse still).
PASSAGE_MIN_LEVEL = 0.15
#: A passage this short between two sections of one place is judged first, whatever the
#: sections' lengths (:func:`join_across_passages`), and joins them where it carries the copy
#: on (:func:`_passage_carries`) or has too few sounding frames to judge: a quiet moment of
#: the copy under the level of the music around it, as a reference's own pauses fall silent
#: in a copy whose noise floor is higher. A longer passage with too few sounding frames is
#: where the copy stopped.
SHORT_PASSAGE_S = 5.0
#: A segment is not carried to its reference's start or end across this many seconds whose
#: sounding frames fit the aligned reference under :data:`PASSAGE_MIN_LEVEL` on average: other
#: music (what lies between two repeats of a loop, where the reference plays its hook again
#: further on), however well the rest of the part left out fits. As long as the gap a
#: verification bridges between its own runs by default (``VerifySettings.edge_gap_s``).
BREAK_S = 2.0


def reach_segments(
    query: PreparedQuery,
    reference: Features,
    verification: Verification,
    *,
    params: FingerprintParams,
    settings: VerifySettings,
) -> Verification:
    """The verification with each segment grown to the matched run it lies in, over the whole
    query at the verification's own alignment.

    Parameters
    ----------
    query : PreparedQuery
        The whole query (not a window of it).
    reference : Features
        The verification's reference.
    verification : Verification
        With offsets as seen from the query's first frame.
    params : FingerprintParams
    settings : VerifySettings
        The same settings the segments were found with (margins, smoothing, gaps).

    Returns
    -------
    verification : Verification
        Score and estimates unchanged; a segment no run overlaps is kept as it was, and a
        segment is never shortened. A run apart from every segment is added where it holds
        :data:`RESUMED_MIN_S` of strong fit and the passage between it and a section carries
        the copy on: the copy resumed at the same alignment (:func:`_resumed`).
    """
    if not verification.segments:
        return verification
    fps = params.frame_rate_hz
    fit = SpectralFit(query, reference, settings.whiten_bins)
    shift = verification.spectral_shift_semitones * params.bins_per_octave / 12.0
    aligned = fit.similarity(verification.tempo_ratio, verification.offset_frames, shift)
    positions = aligned.positions
    null_curve = fit.null_curve(positions, shift, settings.null_offsets_s)
    level, excess = smoothed_fit(
        aligned.per_frame, null_curve, aligned.usable, params=params, settings=settings
    )
    usable = aligned.usable > 0
    inside = _frames_of(verification.segments, len(level), fps) & usable
    if not inside.any():
        return verification
    # the copy goes on where the fit stays near what it is inside the segments and no worse
    # than a misaligned reference's: repetitive music fits its own misalignment almost as
    # well, so the null margin that finds segments would stop short inside a copy
    floor = max(REACH_FLOOR, REACH_FRACTION * float(np.median(level[inside])))
    min_run = max(1, round(settings.min_segment_s * fps))
    going_on = usable & (level >= floor) & (excess >= REACH_MIN_EXCESS)
    matched = matched_frames(level, excess, usable, settings=settings)
    strong = np.zeros(len(level), dtype=bool)
    for start, stop in continuous_runs(going_on | matched, min_run=min_run, max_gap=0):
        strong[start:stop] = True
    # a weaker fit continues the copy only over a stretch long enough not to be a passing
    # likeness of the music that follows it
    weaker = usable & (level >= REACH_LOW_FLOOR) & (excess >= REACH_LOW_MARGIN) & ~strong
    for start, stop in continuous_runs(weaker, min_run=min_run, max_gap=0):
        # counted in frames that fit, not in the short dips bridged between them; a weaker
        # stretch between two stretches that fit well is the copy going on whatever its length
        before, after = strong[max(start - min_run, 0) : start], strong[stop : stop + min_run]
        between = before.any() and after.any()
        if between or weaker[start:stop].sum() >= REACH_LOW_MIN_S * fps:
            going_on[start:stop] = True
    paused = quiet_together(
        query.features, reference, positions, inside, excess, params=params
    )
    runs = copy_runs(going_on | matched, paused, min_run=min_run)
    # a fragment stays one (it is not reported beside a section): only sections grow
    grown = [
        _grown(segment, runs, positions, fps) if is_section(segment) else segment
        for segment in verification.segments
    ]
    # the copy resumed at the same alignment after a passage that did not verify: a long run
    # of strong fit apart from every segment (the verification's window did not reach it)
    reference_active = reference.active_frames()
    reference_sounding = _reference_sounding(reference_active, positions)

    def carried(passage: slice) -> bool:
        return _carries_over(level, excess, usable, reference_sounding, passage, fps)

    grown += _resumed(runs, strong, grown, positions, fps, carried)
    grown = [
        _to_reference_edges(
            segment, positions, reference_active, excess, usable, fps,
            others=[other for other in grown if other is not segment], paused=paused,
            level=level,
        )
        if is_section(segment)
        else segment
        for segment in grown
    ]  # fmt: skip
    return replace(verification, segments=_without_overlaps(grown))


def join_across_passages(
    query: PreparedQuery,
    reference: Features,
    segments: list[Segment],
    verification: Verification,
    *,
    params: FingerprintParams,
    settings: VerifySettings,
) -> list[Segment]:
    """A reported work's segments with consecutive sections of the same place joined across
    the passage between them, where it carries the copy on.

    Sections are segments of at least :data:`~tunetrace.segments.MIN_REPORTED_SEGMENT_S`,
    of the same place at the verification's tempo ratio
    (:func:`~tunetrace.segments.same_place_of`). Passages of up to :data:`SHORT_PASSAGE_S`
    are judged first (dips inside a copy); then a longer passage must be no longer than the
    shorter of the sections on its sides as that first pass joined them (not of the stretch
    joined so far: a short likeness does not claim long stretches of other music). Either
    must carry the copy on at the first section's alignment (:func:`_passage_carries`; a
    short passage too quiet to judge does); fragments inside it become part of the joined
    section, and a section of another place between the two keeps them apart.

    Parameters
    ----------
    query : PreparedQuery
        The whole query.
    reference : Features
        The work's reference.
    segments : list of Segment
        Its merged segments (:func:`~tunetrace.segments.merge_segments`).
    verification : Verification
        The verification its report follows (tempo ratio and spectral shift).
    params : FingerprintParams
    settings : VerifySettings

    Returns
    -------
    segments : list of Segment
        In query order.
    """
    fps = params.frame_rate_hz
    ratio = verification.tempo_ratio
    shift = verification.spectral_shift_semitones * params.bins_per_octave / 12.0

    def carries(kept: Segment, segment: Segment, short: bool) -> bool:
        offset_frames = (kept.reference_end_s - ratio * kept.query_end_s) * fps
        passage = (int(kept.query_end_s * fps), int(np.ceil(segment.query_start_s * fps)))
        return _passage_carries(query, reference, ratio, offset_frames, shift, passage,
                                params=params, settings=settings, short=short)  # fmt: skip

    # short passages first (dips inside a copy), then longer ones held to the sections that
    # pass has made: a short section beside a dip is not what a long passage is held to
    within_copies = _joined_across(segments, ratio, carries, short=True)
    return _joined_across(within_copies, ratio, carries, short=False)


def _joined_across(
    segments: list[Segment],
    ratio: float,
    carries: Callable[[Segment, Segment, bool], bool],
    *,
    short: bool,
) -> list[Segment]:
    """One pass of :func:`join_across_passages`: consecutive sections of one place joined
    where ``carries(before, after, short)`` says the passage between them carries the copy
    on. The ``short`` pass judges passages of up to :data:`SHORT_PASSAGE_S`; the other, the
    longer ones, each no longer than the shorter of the sections on its sides (short ones
    left there were judged by the first pass and stay apart)."""
    joined: list[Segment] = []
    # the length of the last section each joined stretch was made of: a passage is held to
    # the sections on its two sides, not to the stretch they have joined so far
    last_section_s: list[float] = []
    for segment in sorted(segments, key=lambda s: s.query_start_s):
        length_s = segment.query_end_s - segment.query_start_s
        sections = [n for n, kept in enumerate(joined) if is_section(kept)]
        if not is_section(segment) or not sections:
            joined.append(segment)
            last_section_s.append(length_s)
            continue
        number = sections[-1]
        kept = joined[number]
        passage_s = segment.query_start_s - kept.query_end_s
        shortest_s, longest_s = (
            (0.0, SHORT_PASSAGE_S) if short
            else (SHORT_PASSAGE_S, min(last_section_s[number], length_s))
        )  # fmt: skip
        if (
            not shortest_s < passage_s <= longest_s
            or not same_place_of(kept, segment, ratio)
            or not carries(kept, segment, short)
        ):
            joined.append(segment)
            last_section_s.append(length_s)
            continue
        logger.debug("sections at %.1f s and %.1f s joined across the passage between them",
                     kept.query_start_s, segment.query_start_s)  # fmt: skip
        del joined[number + 1 :], last_section_s[number + 1 :]  # fragments in the passage
        joined[number] = replace(kept, query_end_s=segment.query_end_s,
                                 reference_end_s=segment.reference_end_s)  # fmt: skip
        last_section_s[number] = length_s
    return joined


def _passage_carries(
    query: PreparedQuery,
    reference: Features,
    ratio: float,
    offset_frames: float,
    shift: float,
    passage: tuple[int, int],
    *,
    params: FingerprintParams,
    settings: VerifySettings,
    short: bool = False,
) -> bool:
    """Whether the query frames ``passage`` (first, stop) carry a copy on at an alignment
    (``offset_frames``: the reference frame of the query's first frame).

    They do where the reference sounds under all but :data:`EDGE_MAX_SOUNDING` of the
    passage's sounding frames (other music in a pause of the reference is not the copy) and
    those frames fit the aligned reference at :data:`PASSAGE_MIN_LEVEL` and by
    :data:`REACH_LOW_MARGIN` more than a misaligned one on average (the fit a copy keeps
    where it is altered more, or noisier, than around it); or where query and reference
    pause together on all but that share of the frames. A ``short`` passage (see
    :data:`SHORT_PASSAGE_S`) also carries it where too few of its frames sound to judge. The
    fit is measured on the passage with the smoothing's width of frames around it, not on the
    whole query.
    """
    margin = int(np.ceil(settings.smooth_s * params.frame_rate_hz))
    first = max(0, passage[0] - margin)
    stop = min(query.features.n_frames, passage[1] + margin)
    if passage[1] <= passage[0] or stop <= first:
        return True
    fit = SpectralFit(query.frames(first, stop), reference, settings.whiten_bins)
    aligned = fit.similarity(ratio, offset_frames + ratio * first, shift)
    null_curve = fit.null_curve(aligned.positions, shift, settings.null_offsets_s)
    level, excess = smoothed_fit(
        aligned.per_frame, null_curve, aligned.usable, params=params, settings=settings
    )
    reference_sounding = _reference_sounding(reference.active_frames(), aligned.positions)
    inside = slice(passage[0] - first, min(passage[1], stop) - first)
    return _carries_over(
        level, excess, aligned.usable > 0, reference_sounding, inside, params.frame_rate_hz,
        unjudged=short,
    )  # fmt: skip


def _reference_sounding(active: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Whether the reference frame each query frame aligns with sounds (its nearest frame),
    from the reference's sounding frames ``active``."""
    if len(active) == 0:
        return np.zeros(len(positions), dtype=bool)
    return active[np.clip(np.round(positions), 0, len(active) - 1).astype(np.int64)]


def _carries_over(
    level: np.ndarray,
    excess: np.ndarray,
    usable: np.ndarray,
    reference_sounding: np.ndarray,
    passage: slice,
    fps: float,
    *,
    unjudged: bool = False,
) -> bool:
    """The test of :func:`_passage_carries`, on one alignment's per-frame arrays: where
    the passage is no pause of both and has sounding frames enough to judge, the reference
    must sound under them at a level; then they carry the copy on as :func:`_fits_on_average`
    says, by :data:`REACH_LOW_MARGIN`. A passage with too few sounding frames to judge
    carries it on when ``unjudged`` says so."""
    sounding, under = usable[passage], reference_sounding[passage]
    if len(sounding) == 0:
        return True
    enough_sound = sounding.sum() >= EDGE_MIN_JUDGED_S * fps
    if unjudged and not enough_sound:
        return True
    judged = np.mean(sounding | under) > EDGE_MAX_SOUNDING and enough_sound
    if judged and (
        np.mean(~under[sounding]) > EDGE_MAX_SOUNDING
        or level[passage][sounding].mean() < PASSAGE_MIN_LEVEL
    ):
        return False
    return _fits_on_average(excess[passage], sounding, under, fps, min_excess=REACH_LOW_MARGIN)


def _to_reference_edges(
    segment: Segment,
    positions: np.ndarray,
    reference_active: np.ndarray,
    excess: np.ndarray,
    usable: np.ndarray,
    fps: float,
    *,
    others: list[Segment],
    paused: np.ndarray | None = None,
    level: np.ndarray | None = None,
) -> Segment:
    """``segment`` carried to the first or last query frame aligned inside its reference.

    It is carried where none of the query frames the part it leaves out aligns with lies in
    one of ``others`` (the verification's other sections: a copy broken off between two of
    them is not joined through the break; fragments shorter than a section do not count), and
    where those frames either pause together with the reference on all but
    :data:`EDGE_MAX_SOUNDING` of them, however long the part, or carry the copy on
    (:func:`_fits_on_average`: a quiet intro or ending, music that fits) with the part at most
    :data:`EDGE_REACH_S` long and no break in it (:func:`_broken_off`: other music).

    Parameters
    ----------
    segment : Segment
    positions : np.ndarray [shape=(n,)]
        Reference frame each query frame aligns with.
    reference_active : np.ndarray [shape=(reference frames,), dtype=bool]
        The reference's sounding frames.
    excess : np.ndarray [shape=(n,)]
        Smoothed fit over the null level, per query frame.
    usable : np.ndarray [shape=(n,), dtype=bool]
        The query frames that sound.
    fps : float
        Frames per second.
    others : list of Segment
        The verification's other segments.
    paused : np.ndarray [shape=(n,), dtype=bool], optional
        Query frames that pause together with the reference (:func:`quiet_together`); none
        if not given.
    level : np.ndarray [shape=(n,)], optional
        Smoothed fit per query frame; without it no break is looked for.

    Returns
    -------
    segment : Segment
        Never shorter than ``segment``.
    """
    reference_frames = len(reference_active)
    if reference_frames == 0 or len(positions) == 0:
        return segment
    taken = _frames_of([other for other in others if is_section(other)], len(positions), fps)
    if paused is None:
        paused = np.zeros(len(positions), dtype=bool)
    inside = (positions >= 0) & (positions <= reference_frames - 1)
    sounding = _reference_sounding(reference_active, positions) & inside

    def carries(span: slice) -> bool:
        if taken[span].any():
            return False
        if level is not None and _broken_off(level[span], usable[span], fps):
            return False
        return _fits_on_average(excess[span], usable[span], sounding[span], fps)

    def quiet(span: slice) -> bool:  # a pause both share is the copy's, however long
        return not taken[span].any() and bool(np.mean(~paused[span]) <= EDGE_MAX_SOUNDING)

    first_frame, stop_frame = _frame_range(segment, fps)
    stop_frame = min(stop_frame, len(positions))
    step = positions[1] - positions[0] if len(positions) > 1 else 1.0
    before = np.flatnonzero(inside[:first_frame])
    if len(before):
        start = int(before[0])
        span = slice(start, first_frame)
        if quiet(span) or (segment.reference_start_s <= EDGE_REACH_S and carries(span)):
            segment = replace(
                segment,
                query_start_s=start / fps,
                reference_start_s=max(float(positions[start]), 0.0) / fps,
            )
    after = np.flatnonzero(inside[stop_frame:]) + stop_frame
    left_out_s = reference_frames / fps - segment.reference_end_s
    if len(after) and left_out_s > 0:
        stop = int(after[-1]) + 1
        span = slice(stop_frame, stop)
        if quiet(span) or (left_out_s <= EDGE_REACH_S and carries(span)):
            segment = replace(
                segment,
                query_end_s=stop / fps,
                reference_end_s=min(float(positions[stop - 1] + step), reference_frames) / fps,
            )
    return segment


def _broken_off(level: np.ndarray, usable: np.ndarray, fps: float) -> bool:
    """Whether :data:`BREAK_S` seconds of the frames, all but :data:`EDGE_MAX_SOUNDING` of
    them sounding, fit the aligned reference under :data:`PASSAGE_MIN_LEVEL` on average.

    Parameters
    ----------
    level : np.ndarray [shape=(n,)]
        Smoothed fit per frame.
    usable : np.ndarray [shape=(n,), dtype=bool]
        The frames that sound.
    fps : float
        Frames per second.

    Returns
    -------
    broken : bool
    """
    width = max(1, round(BREAK_S * fps))
    if len(level) < width:
        return False
    window = np.ones(width)
    sounding = np.convolve(usable.astype(np.float64), window, mode="valid")
    fitted = np.convolve(np.where(usable, level, 0.0), window, mode="valid")
    judged = sounding >= (1.0 - EDGE_MAX_SOUNDING) * width
    return bool(np.any(judged & (fitted < PASSAGE_MIN_LEVEL * sounding)))


def quiet_together(
    query: Features,
    reference: Features,
    positions: np.ndarray,
    inside: np.ndarray,
    excess: np.ndarray,
    *,
    params: FingerprintParams,
) -> np.ndarray:
    """The query frames where query and reference pause together.

    A frame pauses where its loudest bin lies at least :data:`PAUSE_DB` under its median over
    the frames of ``inside`` (where the copy was matched), in the query and in the reference
    frame it aligns with. A stretch of such frames is the copy's own pause only when what the
    query holds there is what a pause of a copy holds: noise (its sounding frames' median
    chroma peak-to-mean ratio, :func:`~tunetrace.fingerprint.tonality.tonality`, at most
    :data:`PAUSE_MAX_TONALITY`) or the reference's own quiet music (fitting it by
    :data:`EDGE_MIN_EXCESS` more than a misaligned reference on average), not other quiet
    music; and silent where the reference sounds on at most :data:`PAUSE_MAX_CUT_SHARE` of
    its frames (a copy that stops where its reference still sounds, softly, is a copy cut
    short).

    Parameters
    ----------
    query, reference : Features
    positions : np.ndarray [shape=(query.n_frames,)]
        Reference frame each query frame aligns with (fractional; outside the reference
        before its start and past its end).
    inside : np.ndarray [shape=(query.n_frames,), dtype=bool]
        Query frames inside the matched segments.
    excess : np.ndarray [shape=(query.n_frames,)]
        Smoothed fit over the null level, per query frame.
    params : FingerprintParams
        The parameters the features were computed with.

    Returns
    -------
    paused : np.ndarray [shape=(query.n_frames,), dtype=bool]
        False for query frames aligned outside the reference.
    """
    paused = np.zeros(query.n_frames, dtype=bool)
    n_reference = reference.n_frames
    if n_reference == 0 or not inside.any():
        return paused
    within = (positions >= 0) & (positions <= n_reference - 1)
    at = np.clip(np.round(positions), 0, n_reference - 1).astype(np.int64)
    # the spectra are log1p-compressed magnitudes: expm1 gives levels that ratios compare
    query_level = np.expm1(query.spectrum.max(axis=0))
    reference_level = np.expm1(reference.spectrum.max(axis=0))[at]
    ratio = 10.0 ** (-PAUSE_DB / 20.0)
    quiet = (
        within
        & (query_level <= ratio * np.median(query_level[inside]))
        & (reference_level <= ratio * np.median(reference_level[inside]))
    )
    query_sounding = query.active_frames()
    reference_sounding = reference.active_frames()[at]
    for start, stop in continuous_runs(quiet, min_run=1, max_gap=0):
        sounding = query_sounding[start:stop]
        # over its sounding frames (1 when there are none)
        noise = tonality(query.frames(start, stop), params=params) <= PAUSE_MAX_TONALITY
        if not noise and not excess[start:stop][sounding].mean() >= EDGE_MIN_EXCESS:
            continue  # other quiet music
        cut_short = ~sounding & reference_sounding[start:stop]
        if cut_short.mean() > PAUSE_MAX_CUT_SHARE:
            continue  # the copy stopped where its reference goes on softly
        logger.debug("pause shared with the reference at frames %d-%d", start, stop)
        paused[start:stop] = True
    return paused


def copy_runs(fits: np.ndarray, paused: np.ndarray, *, min_run: int) -> list[tuple[int, int]]:
    """Where a copy goes on: runs of frames that fit, followed across dips shorter than
    ``min_run`` (not across a break), each at least ``min_run`` long, and joined across
    pauses shared with the reference whatever their length; a run never begins or ends on a
    pause.

    Parameters
    ----------
    fits : np.ndarray [shape=(n,), dtype=bool]
        Frames where the copy fits.
    paused : np.ndarray [shape=(n,), dtype=bool]
        Frames where the query pauses with its reference (:func:`quiet_together`).
    min_run : int > 0
        Frames.

    Returns
    -------
    runs : list of (int, int)
        Half-open frame ranges, in order.
    """
    solid = np.zeros(len(fits), dtype=bool)
    for start, stop in continuous_runs(fits, min_run=min_run, max_gap=0):
        solid[start:stop] = True
    return [
        trimmed
        for run in continuous_runs(solid | paused, min_run=min_run, max_gap=0)
        if (trimmed := _trimmed_to(solid, run)) is not None
    ]


def _trimmed_to(fits: np.ndarray, run: tuple[int, int]) -> tuple[int, int] | None:
    """``run`` cut to its first and last frame of ``fits`` (None when it has none): a pause
    joins stretches of a copy, but does not begin or end one.

    Parameters
    ----------
    fits : np.ndarray [shape=(n,), dtype=bool]
    run : tuple of int
        Half-open frame range.

    Returns
    -------
    trimmed : tuple of int or None
    """
    start, stop = run
    fitting = np.flatnonzero(fits[start:stop])
    if len(fitting) == 0:
        return None
    return start + int(fitting[0]), start + int(fitting[-1]) + 1


def _fits_on_average(
    excess: np.ndarray,
    usable: np.ndarray,
    reference_sounding: np.ndarray,
    fps: float,
    *,
    min_excess: float = EDGE_MIN_EXCESS,
) -> bool:
    """Whether query frames carry a copy on.

    They do where query and reference are silent together on all but
    :data:`EDGE_MAX_SOUNDING` of the frames (the reference's quiet intro or ending, the end of
    a fade both have), or where the query sounds for :data:`EDGE_MIN_JUDGED_S` or more and
    fits the aligned reference better than a misaligned one by ``min_excess`` on average.
    A query silent where its reference sounds, with too few sounding frames to
    judge, is where a copy stopped. Its quiet passages can fall under the query's own level
    of sound (set by louder music around the copy) where the reference still sounds, so a
    copy that goes on is judged by how its sounding frames fit, however many are silent.

    Parameters
    ----------
    excess : np.ndarray [shape=(n,)]
        Smoothed fit over the null level, per query frame.
    usable : np.ndarray [shape=(n,), dtype=bool]
        The query frames that sound.
    reference_sounding : np.ndarray [shape=(n,), dtype=bool]
        Whether the reference frame each query frame aligns with sounds.
    fps : float
        Frames per second.
    min_excess : float
        Default :data:`EDGE_MIN_EXCESS`.

    Returns
    -------
    carried : bool
    """
    if len(excess) == 0:
        return False
    if np.mean(usable | reference_sounding) <= EDGE_MAX_SOUNDING:  # silent together
        return True
    if usable.sum() < EDGE_MIN_JUDGED_S * fps:  # too few sounding frames to judge
        return False
    mean = float(excess[usable].mean())
    logger.debug(
        "copy going on over %d frames (%d sounding)? mean excess %.3f",
        len(excess), int(usable.sum()), mean,
    )  # fmt: skip
    return bool(mean >= min_excess)


def _frame_range(segment: Segment, fps: float) -> tuple[int, int]:
    """The query frames ``[first, stop)`` a segment covers."""
    return int(segment.query_start_s * fps), int(np.ceil(segment.query_end_s * fps))


def _frames_of(segments: list[Segment], n_frames: int, fps: float) -> np.ndarray:
    """A mask of the ``n_frames`` query frames that ``segments`` cover."""
    mask = np.zeros(n_frames, dtype=bool)
    for segment in segments:
        first, stop = _frame_range(segment, fps)
        mask[first:stop] = True
    return mask


def _grown(
    segment: Segment, runs: list[tuple[int, int]], positions: np.ndarray, fps: float
) -> Segment:
    """``segment`` reaching to the outer edges of the runs (frame ranges) that overlap it."""
    first_frame, stop_frame = _frame_range(segment, fps)
    touching = [(a, b) for a, b in runs if b > first_frame and a < stop_frame]
    if not touching:
        return segment
    start = min(a for a, _ in touching)
    stop = max(b for _, b in touching)
    step = positions[1] - positions[0] if len(positions) > 1 else 1.0
    if start < first_frame:
        segment = replace(
            segment,
            query_start_s=start / fps,
            reference_start_s=max(float(positions[start]), 0.0) / fps,
        )
    if stop > stop_frame:
        segment = replace(
            segment,
            query_end_s=stop / fps,
            reference_end_s=max(float(positions[stop - 1] + step), 0.0) / fps,
        )
    return segment


def _resumed(
    runs: list[tuple[int, int]],
    strong: np.ndarray,
    segments: list[Segment],
    positions: np.ndarray,
    fps: float,
    carried: Callable[[slice], bool],
) -> list[Segment]:
    """Segments for the runs (frame ranges) where the copy resumes: a run overlapping none
    of ``segments``, holding at least :data:`RESUMED_MIN_S` of ``strong`` frames, with a
    passage no longer than itself or the section on its other side between it and the
    nearest section before or after it that ``carried`` says carries the copy on (another
    repeat of a looped section matches a reference that repeats itself at this alignment
    too, but the other music between repeats does not)."""
    taken = _frames_of(segments, len(strong), fps)
    sections = [_frame_range(s, fps) for s in segments if is_section(s)]
    step = positions[1] - positions[0] if len(positions) > 1 else 1.0
    out = []
    for start, stop in runs:
        if taken[start:stop].any() or strong[start:stop].sum() < RESUMED_MIN_S * fps:
            continue
        before = [(a, b) for a, b in sections if b <= start]
        after = [(a, b) for a, b in sections if a >= stop]
        passages = []
        if before:
            a, b = max(before, key=lambda section: section[1])
            passages.append((slice(b, start), min(b - a, stop - start)))
        if after:
            a, b = min(after, key=lambda section: section[0])
            passages.append((slice(stop, a), min(b - a, stop - start)))
        if not any(
            passage.stop - passage.start <= longest and carried(passage)
            for passage, longest in passages
        ):
            continue
        out.append(
            Segment(
                query_start_s=start / fps,
                query_end_s=stop / fps,
                reference_start_s=max(float(positions[start]), 0.0) / fps,
                reference_end_s=max(float(positions[stop - 1] + step), 0.0) / fps,
            )
        )
    return out


def _without_overlaps(segments: list[Segment]) -> list[Segment]:
    """Segments that grew into the same run joined (in query order)."""
    joined: list[Segment] = []
    for segment in sorted(segments, key=lambda s: s.query_start_s):
        if joined and segment.query_start_s < joined[-1].query_end_s:
            last = joined[-1]
            if segment.query_end_s > last.query_end_s:
                joined[-1] = replace(
                    last,
                    query_end_s=segment.query_end_s,
                    reference_end_s=segment.reference_end_s,
                )
            continue
        joined.append(segment)
    return joined
