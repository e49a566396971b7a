"""Matched segments, the fifth stage of verification.

Full verification (:mod:`tunetrace.verification`) compares the aligned spectra frame by
frame; the frames that fit clearly better than the coincidence level become matched
segments here (:func:`matched_segments`), and :func:`harmonic_change` measures how much the
query's harmony moves inside them. The matcher then scores the verification
(:mod:`tunetrace.scoring`).

After scoring, the matcher reports each reference once: the segments of its consistent
verifications are joined (:func:`merge_segments`, :func:`union_segments`), fragments beside
a longer segment dropped (:func:`without_fragments`), and the query time they cover measured
(:func:`covered_seconds`); :func:`section_runs` gives the sections a query window's
verification is judged on again.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.query import VerifySettings
from tunetrace.types import Segment, Verification


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return values
    kernel = np.ones(width, dtype=np.float32) / width
    return np.convolve(values, kernel, mode="same")


def matched_segments(
    per_frame: np.ndarray,
    null_curve: np.ndarray,
    usable: np.ndarray,
    positions: np.ndarray,
    *,
    params: FingerprintParams,
    settings: VerifySettings,
) -> tuple[list[Segment], np.ndarray]:
    """Runs of frames whose aligned fit beats the null level by the margin (``matched``, what
    the measurements read), and the segments reported for them: runs of ``edge_join_min_s``
    or more less than ``edge_gap_s`` apart joined.

    Parameters
    ----------
    per_frame : np.ndarray [shape=(n_frames,)]
        Aligned spectral correlation of every query frame.
    null_curve : np.ndarray [shape=(n_frames,)]
        The same with the reference misaligned (the coincidence level).
    usable : np.ndarray [shape=(n_frames,)]
        Frames that count (weight above 0).
    positions : np.ndarray [shape=(n_frames,)]
        Reference frame of every query frame.
    params : FingerprintParams
    settings : VerifySettings

    Returns
    -------
    segments : list of Segment
        Query and reference times of the reported segments.
    matched : np.ndarray [shape=(n_frames,), dtype=bool]
    """
    fps = params.frame_rate_hz
    level, excess = smoothed_fit(per_frame, null_curve, usable, params=params, settings=settings)
    matched = matched_frames(level, excess, usable > 0, settings=settings)
    min_run = max(1, round(settings.min_segment_s * fps))
    matched = _bridge_gaps(matched, min_run)
    for start, stop in _runs(matched):
        if stop - start < min_run:
            matched[start:stop] = False
    reported = _join_long_runs(
        matched,
        max_gap=round(settings.edge_gap_s * fps),
        min_length=round(settings.edge_join_min_s * fps),
    )
    segments: list[Segment] = []
    for start, stop in _runs(reported):
        if not matched[start:stop].any():
            continue
        segments.append(
            Segment(
                query_start_s=start / fps,
                query_end_s=stop / fps,
                reference_start_s=max(positions[start], 0.0) / fps,
                reference_end_s=max(
                    positions[stop - 1]
                    + (positions[1] - positions[0] if len(positions) > 1 else 1.0),
                    0.0,
                )
                / fps,
            )
        )
    return segments, matched


def matched_frames(
    level: np.ndarray, excess: np.ndarray, usable: np.ndarray, *, settings: VerifySettings
) -> np.ndarray:
    """Frames whose smoothed fit clearly beats the coincidence level (before runs are
    bridged and short ones dropped).

    Parameters
    ----------
    level, excess : np.ndarray [shape=(n_frames,)]
        From :func:`smoothed_fit`.
    usable : np.ndarray [shape=(n_frames,), dtype=bool]
        Frames that count.
    settings : VerifySettings

    Returns
    -------
    matched : np.ndarray [shape=(n_frames,), dtype=bool]
    """
    clear = excess >= settings.segment_margin
    # Where the reference repeats itself its misaligned copies fit almost as well as the
    # aligned one, leaving less than the margin above the null: a fit close to perfect that
    # takes a share of what the null leaves counts there.
    headroom = 1.0 - (level - excess)
    near_perfect = (
        (level >= settings.near_perfect_fit)
        & (excess > 0.0)
        & (excess >= settings.near_perfect_share * headroom)
    )
    return (clear | near_perfect) & (level >= settings.segment_floor) & usable


def smoothed_fit(
    per_frame: np.ndarray,
    null_curve: np.ndarray,
    usable: np.ndarray,
    *,
    params: FingerprintParams,
    settings: VerifySettings,
) -> tuple[np.ndarray, np.ndarray]:
    """The aligned fit and its excess over the coincidence level, both averaged over
    ``smooth_s`` (unusable frames count as 0).

    Parameters
    ----------
    per_frame, null_curve, usable : np.ndarray [shape=(n_frames,)]
        As in :func:`matched_segments`.
    params : FingerprintParams
    settings : VerifySettings

    Returns
    -------
    level, excess : np.ndarray [shape=(n_frames,)]
    """
    width = max(1, round(settings.smooth_s * params.frame_rate_hz))
    level = _moving_average(per_frame * (usable > 0), width)
    excess = level - _moving_average(null_curve * (usable > 0), width)
    return level, excess


def continuous_runs(mask: np.ndarray, *, min_run: int, max_gap: int) -> list[tuple[int, int]]:
    """Half-open frame ranges of ``mask``'s runs: gaps under ``min_run`` bridged, runs under
    ``min_run`` dropped, then runs at most ``max_gap`` apart joined.

    Parameters
    ----------
    mask : np.ndarray [shape=(n_frames,), dtype=bool]
    min_run : int > 0
    max_gap : int >= 0

    Returns
    -------
    runs : list of (int, int)
        In frame order.
    """
    bridged = _bridge_gaps(mask, min_run)
    for start, stop in _runs(bridged):
        if stop - start < min_run:
            bridged[start:stop] = False
    return _runs(_join_long_runs(bridged, max_gap=max_gap, min_length=min_run))


#: Lag between the chroma frames compared by :func:`harmonic_change`.
HARMONIC_LAG_S = 2.0


def harmonic_change(chroma: np.ndarray, matched: np.ndarray, lag: int) -> float:
    """Mean of one minus the correlation of matched chroma frames ``lag`` apart.

    A copy of music matches its reference through chord changes; a coincidence that a slowed,
    re-pitched or noisy query finds in a fade-out or a drone matches one held chord, where
    this is near 0.

    Parameters
    ----------
    chroma : np.ndarray [shape=(bins_per_octave, n_frames)]
        Frame-normalised chroma (zero mean, unit norm per frame).
    matched : np.ndarray [shape=(n_frames,), dtype=bool]
    lag : int > 0

    Returns
    -------
    change : float
        0 when no two matched frames lie ``lag`` apart.
    """
    pairs = np.flatnonzero(matched[:-lag] & matched[lag:]) if 0 < lag < len(matched) else []
    if len(pairs) == 0:
        return 0.0
    correlations = np.einsum("ij,ij->j", chroma[:, pairs], chroma[:, pairs + lag])
    return float(np.mean(1.0 - correlations))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, stop)`` index pairs of the True runs of a boolean mask."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _join_long_runs(mask: np.ndarray, *, max_gap: int, min_length: int) -> np.ndarray:
    """``mask`` with gaps of at most ``max_gap`` filled between runs that are both at least
    ``min_length`` long (a fragment beside a section is not drawn into it)."""
    out = mask.copy()
    runs = [run for run in _runs(mask) if run[1] - run[0] >= min_length]
    for (_, stop), (start, _) in itertools.pairwise(runs):
        if start - stop <= max_gap:
            out[stop:start] = True
    return out


def _bridge_gaps(mask: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill False gaps shorter than ``max_gap`` that lie between two True runs."""
    filled = mask.copy()
    runs = _runs(mask)
    for (_, stop), (start, _) in itertools.pairwise(runs):
        if start - stop < max_gap:
            filled[stop:start] = True
    return filled


# Joining the segments of a reference's verifications: after scoring, the matcher reports
# each reference once, with the segments of its consistent verifications joined.

#: Other verifications of a reference join its match when their estimates agree this closely.
SAME_TEMPO_TOLERANCE = 0.03
SAME_PITCH_TOLERANCE_SEMITONES = 0.5
#: Segments of two alignments may share this much query time at a cut (edges are blurred).
MAX_SEGMENT_OVERLAP_S = 1.0
#: Segments shorter than this are not reported beside longer ones.
MIN_REPORTED_SEGMENT_S = 3.0
#: Overlapping segments whose alignments put the query's start this close on the reference
#: are the same stretch seen twice: they are joined.
SAME_PLACE_OFFSET_S = 2.0
#: Segments of the same place this close in the query (a dip in one copied stretch) are joined
#: when both are at least :data:`MIN_REPORTED_SEGMENT_S` long: as long as the gap a
#: verification bridges between its own runs by default (``VerifySettings.edge_gap_s``). A
#: longer passage between them may be other music (the filler between a loop's repeats, where
#: the reference repeats itself), so it is judged on the query's frames instead
#: (:func:`~tunetrace.segment_edges.join_across_passages`).
SAME_PLACE_GAP_S = 2.0


def covered_seconds(segments: list[Segment]) -> float:
    """Query seconds inside the union of the segments.

    Parameters
    ----------
    segments : list of Segment

    Returns
    -------
    seconds : float
    """
    covered, reach = 0.0, float("-inf")
    for segment in sorted(segments, key=lambda s: s.query_start_s):
        start = max(segment.query_start_s, reach)
        if segment.query_end_s > start:
            covered += segment.query_end_s - start
        reach = max(reach, segment.query_end_s)
    return covered


def merge_segments(best: Verification, others: list[Verification]) -> list[Segment]:
    """The best verification's segments plus non-overlapping ones of consistent others.

    Another verification is consistent when its tempo ratio and spectral shift agree with the
    best one's within :data:`SAME_TEMPO_TOLERANCE` and :data:`SAME_PITCH_TOLERANCE_SEMITONES`.
    Its segment at the same place as a kept one extends it; one that shares at most
    :data:`MAX_SEGMENT_OVERLAP_S` with every kept segment is added.

    Parameters
    ----------
    best : Verification
        A reference's best verification.
    others : list of Verification
        Its other verifications of the same reference.

    Returns
    -------
    segments : list of Segment
        In query order, overlapping segments of the same place joined (:func:`union_segments`).
    """
    segments = list(best.segments)
    for other in others:
        if not consistent(other, best):
            continue
        for segment in other.segments:
            # the same stretch of both recordings, seen by another alignment: extend it
            same_place = [
                number for number, kept in enumerate(segments)
                if _shared_s(segment, kept) > 0 and same_place_of(segment, kept, best.tempo_ratio)
            ]  # fmt: skip
            if same_place:
                number = same_place[0]
                segments[number] = union_segments([segments[number], segment], best.tempo_ratio)[0]
            elif not any(_shared_s(segment, kept) > MAX_SEGMENT_OVERLAP_S for kept in segments):
                segments.append(segment)
            else:  # another place of the reference beside kept ones: what they leave of it
                segments += [
                    piece for piece in _outside(segment, segments) if is_section(piece)
                ]  # fmt: skip
    return union_segments(segments, best.tempo_ratio)


def _outside(segment: Segment, kept: list[Segment]) -> list[Segment]:
    """The parts of ``segment`` no kept segment covers, with reference times along its own
    alignment."""
    pieces = [(segment.query_start_s, segment.query_end_s)]
    for other in kept:
        before = [(start, min(end, other.query_start_s)) for start, end in pieces]
        after = [(max(start, other.query_end_s), end) for start, end in pieces]
        pieces = sorted(part for part in before + after if part[1] > part[0])
    span = segment.query_end_s - segment.query_start_s
    rate = (segment.reference_end_s - segment.reference_start_s) / span if span > 0 else 1.0
    return [
        Segment(
            query_start_s=start,
            query_end_s=end,
            reference_start_s=segment.reference_start_s + (start - segment.query_start_s) * rate,
            reference_end_s=segment.reference_start_s + (end - segment.query_start_s) * rate,
        )
        for start, end in pieces
    ]


def consistent(one: Verification, other: Verification) -> bool:
    """Whether two verifications of a reference agree on the alteration: tempo ratios within
    :data:`SAME_TEMPO_TOLERANCE` and spectral shifts within
    :data:`SAME_PITCH_TOLERANCE_SEMITONES`.

    Parameters
    ----------
    one, other : Verification

    Returns
    -------
    agree : bool
    """
    return (
        abs(one.tempo_ratio / other.tempo_ratio - 1) <= SAME_TEMPO_TOLERANCE
        and abs(one.spectral_shift_semitones - other.spectral_shift_semitones)
        <= SAME_PITCH_TOLERANCE_SEMITONES
    )


def without_fragments(segments: list[Segment]) -> list[Segment]:
    """The segments less those under :data:`MIN_REPORTED_SEGMENT_S` beside a longer one (a
    second or two of chance agreement next to the copied section says nothing).

    Parameters
    ----------
    segments : list of Segment

    Returns
    -------
    kept : list of Segment
        All of ``segments`` when none is that long.
    """
    kept = [s for s in segments if is_section(s)]
    return kept or segments


def _shared_s(a: Segment, b: Segment) -> float:
    """Query seconds two segments share (negative: the gap between them)."""
    return min(a.query_end_s, b.query_end_s) - max(a.query_start_s, b.query_start_s)


def same_place_of(one: Segment, other: Segment, tempo_ratio: float) -> bool:
    """Whether two segments are of the same place: their alignments, at ``tempo_ratio``,
    put the query's start within :data:`SAME_PLACE_OFFSET_S` of each other on the
    reference.

    Parameters
    ----------
    one, other : Segment
    tempo_ratio : float

    Returns
    -------
    same : bool
    """
    return abs(_offset_s(one, tempo_ratio) - _offset_s(other, tempo_ratio)) <= SAME_PLACE_OFFSET_S


def _offset_s(segment: Segment, tempo_ratio: float) -> float:
    """Reference time where the query's start would land, by this segment's alignment."""
    return segment.reference_start_s - segment.query_start_s * tempo_ratio


def union_segments(segments: list[Segment], tempo_ratio: float) -> list[Segment]:
    """Segments of the same place (their alignments put the query's start within
    :data:`SAME_PLACE_OFFSET_S` of each other on the reference) joined into one where they
    overlap or lie close enough (:func:`_gap_joined`), over fragments between them; the
    joined reference times follow the query's first and last segments.

    Parameters
    ----------
    segments : list of Segment
    tempo_ratio : float
        The tempo ratio their alignments are compared at.

    Returns
    -------
    joined : list of Segment
        In query order. A fragment (under :data:`MIN_REPORTED_SEGMENT_S`) between two
        segments joined is part of the stretch they make; a longer segment of another place
        between them keeps them apart.
    """
    joined: list[Segment] = []
    for segment in sorted(segments, key=lambda s: s.query_start_s):
        number = _joined_with(joined, segment, tempo_ratio)
        if number is None:
            joined.append(segment)
            continue
        last = joined[number]
        del joined[number + 1 :]  # fragments inside the stretch now joined
        if segment.query_end_s > last.query_end_s:
            joined[number] = replace(last, query_end_s=segment.query_end_s,
                                     reference_end_s=segment.reference_end_s)  # fmt: skip
    return joined


def _joined_with(joined: list[Segment], segment: Segment, tempo_ratio: float) -> int | None:
    """Index of the segment in ``joined`` (sorted by start) that ``segment`` joins: the
    latest of its place close enough before it, past fragments only."""
    for number in range(len(joined) - 1, -1, -1):
        kept = joined[number]
        if segment.query_start_s <= kept.query_end_s + _gap_joined(
            kept, segment
        ) and same_place_of(segment, kept, tempo_ratio):
            return number
        if is_section(kept):
            return None
    return None


def _gap_joined(first: Segment, second: Segment) -> float:
    """Query seconds between two segments of one place that still make them one stretch:
    :data:`SAME_PLACE_GAP_S` between two of at least :data:`MIN_REPORTED_SEGMENT_S` (a dip
    inside a copy), none when either is a fragment (a passing likeness after it). Longer
    passages between them are judged on the query's frames
    (:func:`~tunetrace.segment_edges.join_across_passages`)."""
    long_enough = min(s.query_end_s - s.query_start_s for s in (first, second))
    return SAME_PLACE_GAP_S if long_enough >= MIN_REPORTED_SEGMENT_S else 0.0


def section_runs(segments: list[Segment], *, gap_s: float) -> list[tuple[float, float]]:
    """Query time ranges of the segments, joined across gaps up to ``gap_s``, longest first.

    Parameters
    ----------
    segments : list of Segment
    gap_s : float
        Segments this close (seconds of query time) are one section.

    Returns
    -------
    runs : list of (float, float)
        Query start and end seconds of each section, longest first.
    """
    runs: list[list[float]] = []
    for segment in sorted(segments, key=lambda s: s.query_start_s):
        if runs and segment.query_start_s - runs[-1][1] <= gap_s:
            runs[-1][1] = max(runs[-1][1], segment.query_end_s)
        else:
            runs.append([segment.query_start_s, segment.query_end_s])
    return sorted(((a, b) for a, b in runs), key=lambda run: run[0] - run[1])


def is_section(segment: Segment) -> bool:
    """Whether a segment is long enough to be reported beside others (at least
    :data:`MIN_REPORTED_SEGMENT_S`), not a fragment."""
    return segment.query_end_s - segment.query_start_s >= MIN_REPORTED_SEGMENT_S
