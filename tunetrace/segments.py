"""Matched segments, the fifth stage of verification.

Full verification (:mod:`tunetrace.verification`) compares the aligned spectra frame by
frame; the frames that fit clearly better than the coincidence level become matched
segments here (:func:`matched_segments`), and :func:`harmonic_change` measures how much the
query's harmony moves inside them. The matcher then scores the verification
(:mod:`tunetrace.scoring`).
"""

from __future__ import annotations

import itertools

import numpy as np

from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.query import VerifySettings
from tunetrace.types import Segment


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
    width = max(1, round(settings.smooth_s * fps))
    level = _moving_average(per_frame * (usable > 0), width)
    excess = level - _moving_average(null_curve * (usable > 0), width)
    matched = (excess >= settings.segment_margin) & (level >= settings.segment_floor) & (usable > 0)
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
