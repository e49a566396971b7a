"""Compiled inner loops of spectral screening and full verification
(:mod:`tunetrace.screening`, :mod:`tunetrace.verification`).

The spectral fit reads a reference's spectrum at an alignment's fractional frames, whitens
it along frequency (:func:`aligned_frames`), shifts it along frequency and correlates it
with the query frame by frame (:func:`shifted_fit`); :func:`spectral_curves` does the same
for many rows of positions in one call (the null and local levels), and
:func:`alignment_objectives` scores many alignments at many shifts in one call (screening
and spectral refinement). Why verification's loops are compiled, and how they are compiled
before the first query, is told in :mod:`tunetrace.kernels`.

They share one file because Numba's on-disk cache notices changes only to the file a kernel
is defined in: a kernel that called one defined in another file would go on running that
one's old code, compiled into its own cache entry, after the other file changed.

Each function states the NumPy expression it equals; the tests compare them.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from tunetrace.index._kernels import FASTMATH


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def aligned_frames(
    spectrum_frames: np.ndarray, positions: np.ndarray, whiten_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """A reference's spectrum interpolated at fractional frames, raw and whitened.

    Equals (to float rounding) :func:`~tunetrace.fingerprint.embedding.interpolate_frames` of
    the spectrum at ``positions`` and :func:`~tunetrace.query.whiten_spectrum` of that (the
    local mean over ``whiten_bins`` bins, edge bins repeated, removed from every frame).
    Whitening along frequency and interpolating between frames commute, so the reference
    frames read are whitened (:func:`whitened_rows`), then interpolated
    (:func:`interpolate_rows`).

    Parameters
    ----------
    spectrum_frames : np.ndarray [shape=(n_reference_frames, n_bins), dtype=float32]
        The reference's spectrum, frames first.
    positions : np.ndarray [shape=(n_frames,), dtype=float64]
        Fractional reference frames (clipped to the reference).
    whiten_bins : int > 0, odd

    Returns
    -------
    raw, white : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
    """
    rows = np.ascontiguousarray(positions).reshape(1, -1)
    row_of, white_rows = whitened_rows(spectrum_frames, rows, whiten_bins)
    n_frames = positions.shape[0]
    n_bins = spectrum_frames.shape[1]
    raw = np.empty((n_frames, n_bins), dtype=np.float32)
    white = np.empty((n_frames, n_bins), dtype=np.float32)
    interpolate_rows(spectrum_frames, white_rows, row_of, positions, raw, white)
    return raw, white


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _clipped(position: float, last: int) -> float:
    """``position`` clipped to ``0 .. last`` (NaN to 0: never an index outside)."""
    if not position >= 0.0:
        return 0.0
    return min(position, float(last))


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def whitened_rows(
    spectrum_frames: np.ndarray, positions: np.ndarray, whiten_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """The whitened reference frames that interpolating at ``positions`` reads, each once.

    A grid of alignments, or the misaligned copies a null level measures, read the same
    reference frames many times over: whitening each frame once, before any is
    interpolated, does that work once instead of at every alignment.

    Parameters
    ----------
    spectrum_frames : np.ndarray [shape=(n_reference_frames, n_bins), dtype=float32]
    positions : np.ndarray [shape=(n_rows, n_frames), dtype=float64]
        Fractional reference frames (clipped to the reference), any number of rows.
    whiten_bins : int > 0, odd

    Returns
    -------
    row_of : np.ndarray [shape=(n_reference_frames,), dtype=int64]
        Row of ``white_rows`` holding each reference frame whitened (-1: not read).
    white_rows : np.ndarray [shape=(n_read, n_bins), dtype=float32]
        Each read frame minus its local mean over ``whiten_bins`` bins, edge bins repeated
        (:func:`~tunetrace.query.whiten_spectrum` of the frame).
    """
    n_reference, n_bins = spectrum_frames.shape
    if n_reference == 0:
        raise ValueError("a reference with no frames has nothing to align with")
    last = n_reference - 1
    row_of = np.full(n_reference, -1, dtype=np.int64)
    for r in range(positions.shape[0]):
        for t in range(positions.shape[1]):
            position = _clipped(positions[r, t], last)
            left = int(np.floor(position))
            row_of[left] = 0
            row_of[min(left + 1, last)] = 0
    n_read = 0
    for frame in range(n_reference):
        if row_of[frame] == 0:
            row_of[frame] = n_read
            n_read += 1
        else:
            row_of[frame] = -1
    half = whiten_bins // 2
    inverse = np.float32(1.0 / whiten_bins)
    white_rows = np.empty((n_read, n_bins), dtype=np.float32)
    extended = np.empty(n_bins + 2 * half, dtype=np.float32)
    # (every index below is a loop counter or a view's: see shifted_fit on why)
    middle = extended[half:]
    tail = extended[half + n_bins :]
    for frame in range(n_reference):
        if row_of[frame] < 0:
            continue
        row = spectrum_frames[frame]
        out = white_rows[row_of[frame]]
        # the row with its edge bins repeated ``half`` times past each end, then the window
        # sums of every bin added up shift by shift (each shift a vectorised pass)
        for k in range(half):
            extended[k] = row[0]
            tail[k] = row[n_bins - 1]
        for k in range(n_bins):
            middle[k] = row[k]
        for k in range(n_bins):
            out[k] = extended[k]
        for i in range(1, whiten_bins):
            window = extended[i:]
            for k in range(n_bins):
                out[k] += window[k]
        for k in range(n_bins):
            out[k] = row[k] - out[k] * inverse
    return row_of, white_rows


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def interpolate_rows(
    spectrum_frames: np.ndarray,
    white_rows: np.ndarray,
    row_of: np.ndarray,
    positions: np.ndarray,
    raw: np.ndarray,
    white: np.ndarray,
) -> None:
    """Write the reference's raw and whitened frames at ``positions`` into ``raw`` and ``white``.

    Frame ``t`` is the linear interpolation between reference frames ``floor(p)`` and
    ``floor(p) + 1`` (the last frame repeated) for ``p = positions[t]`` clipped to the
    reference; the whitened frames come from :func:`whitened_rows` (``row_of``,
    ``white_rows``), which must have been given these positions.

    Parameters
    ----------
    spectrum_frames : np.ndarray [shape=(n_reference_frames, n_bins), dtype=float32]
    white_rows, row_of : np.ndarray
        From :func:`whitened_rows`.
    positions : np.ndarray [shape=(n_frames,), dtype=float64]
    raw, white : np.ndarray [shape=(>= n_frames, n_bins), dtype=float32]
        Written in their first ``n_frames`` rows.
    """
    last = spectrum_frames.shape[0] - 1
    n_bins = spectrum_frames.shape[1]
    for t in range(positions.shape[0]):
        position = _clipped(positions[t], last)
        left = int(np.floor(position))
        right = min(left + 1, last)
        right_weight = np.float32(position - left)
        left_weight = np.float32(1.0) - right_weight
        row = raw[t]
        left_row = spectrum_frames[left]
        right_row = spectrum_frames[right]
        for k in range(n_bins):
            row[k] = left_row[k] * left_weight + right_row[k] * right_weight
        row = white[t]
        left_row = white_rows[row_of[left]]
        right_row = white_rows[row_of[right]]
        for k in range(n_bins):
            row[k] = left_row[k] * left_weight + right_row[k] * right_weight


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def shifted_fit(
    raw: np.ndarray,
    white: np.ndarray,
    shift: float,
    first_bin: int,
    n_band: int,
    query_white: np.ndarray,
    query_white_changes: np.ndarray,
    query_raw_changes: np.ndarray,
    usable: np.ndarray,
    with_changes: bool,
    with_dynamics: bool,
) -> tuple[np.ndarray, float, float]:
    """How well aligned reference frames, shifted along frequency, fit the query.

    The reference's bin ``j - shift`` (linear interpolation between bins) is paired with the
    query's bin ``j`` for ``j`` in ``first_bin .. first_bin + n_band - 1`` (the band).

    Parameters
    ----------
    raw, white : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        Aligned reference frames (:func:`aligned_frames`).
    shift : float
        Spectral shift in bins (query up by ``shift`` relative to the reference).
    first_bin, n_band : int
        First query bin of the band and its width; every bin of the band has a reference bin
        to pair with.
    query_white : np.ndarray [shape=(n_frames, n_bins)]
        The query's whitened spectrum, frames first.
    query_white_changes, query_raw_changes : np.ndarray [shape=(n_frames - 2, n_bins)]
        Frame ``t + 2`` minus frame ``t`` of the query's whitened and raw spectra.
    usable : np.ndarray [shape=(n_frames,)]
        Frames that count (the changes centred on frame ``t`` count when ``usable[t] > 0``).
    with_changes : bool
        Measure the onset agreement (changes of raw spectra).
    with_dynamics : bool
        Measure the dynamics agreement too (changes of whitened spectra).

    Returns
    -------
    per_frame : np.ndarray [shape=(n_frames,), dtype=float32]
        Pearson correlation of each frame's paired bins.
    onsets, dynamics : float
        Correlation of the masked changes over the band (0 when not asked for or undefined).
    """
    n_frames = query_white.shape[0]
    n_bins = raw.shape[1]
    if n_band < 1:  # no bin pairs: nothing fits
        return np.zeros(n_frames, dtype=np.float32), 0.0, 0.0
    # The shift is the same for every bin: query bin first_bin + j reads reference bins
    # base + j and base + j + 1 with the same weights (the top one clipped to the last bin).
    source = first_bin - shift
    base = int(np.floor(source))
    upper_weight = np.float32(source - base)
    lower_weight = np.float32(1.0) - upper_weight
    last = n_band - 1
    last_upper = min(base + n_band, n_bins - 1)
    shifted_white = np.empty((n_frames, n_band), dtype=np.float32)
    shifted_raw = np.empty((n_frames, n_band), dtype=np.float32)
    per_frame = np.empty(n_frames, dtype=np.float32)
    # Inner loops index views that start at the band with the loop counter alone: an index
    # such as ``base + j`` may be negative as far as Numba knows, and the wraparound it then
    # handles keeps LLVM from vectorising the loop (three times slower).
    for t in range(n_frames):
        reference_row = white[t][base:]
        shifted = shifted_white[t]
        for j in range(last):
            shifted[j] = reference_row[j] * lower_weight + reference_row[j + 1] * upper_weight
        shifted[last] = reference_row[last] * lower_weight + white[t][last_upper] * upper_weight
        # single-precision sums of a few hundred values (vectorised; the same to ~1e-6)
        mean = np.float32(0.0)
        for j in range(n_band):
            mean += shifted[j]
        mean /= n_band
        # the reference side is centred, so the query's mean drops out of the product
        query_row = query_white[t][first_bin:]
        numerator = np.float32(0.0)
        square = np.float32(0.0)
        query_sum = np.float32(0.0)
        query_square = np.float32(0.0)
        for j in range(n_band):
            centred = shifted[j] - mean
            query_value = query_row[j]
            numerator += query_value * centred
            square += centred * centred
            query_sum += query_value
            query_square += query_value * query_value
        query_square = max(query_square - query_sum * query_sum / n_band, 0.0)
        per_frame[t] = numerator / max(np.sqrt(query_square) * np.sqrt(square), 1e-9)
        if with_changes:
            reference_row = raw[t][base:]
            shifted = shifted_raw[t]
            for j in range(last):
                shifted[j] = reference_row[j] * lower_weight + reference_row[j + 1] * upper_weight
            shifted[last] = reference_row[last] * lower_weight + raw[t][last_upper] * upper_weight
    onsets = 0.0
    dynamics = 0.0
    if with_changes and n_frames >= 3:
        onsets = _change_correlation(query_raw_changes, first_bin, shifted_raw, usable)
        if with_dynamics:
            dynamics = _change_correlation(query_white_changes, first_bin, shifted_white, usable)
    return per_frame, onsets, dynamics


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _change_correlation(
    query_changes: np.ndarray, first_bin: int, reference_frames: np.ndarray, usable: np.ndarray
) -> float:
    """Correlation (uncentred) of the query's changes and the reference's, over usable frames
    and the band of query bins starting at ``first_bin`` that ``reference_frames`` covers.

    Two recordings that hold the same chord agree on static spectra but not on when and where
    their spectra change; a copy agrees on both, and frames with large changes (onsets) weigh
    most. On whitened spectra a broadband change (a drum hit, a crescendo) that two unrelated
    pieces share by keeping the same beat does not count, only which partials change does
    (the dynamics measure); on raw spectra it does (the onset measure).
    """
    # Single-precision sums, per frame, added up in double: vectorised, and the same to ~1e-6.
    product = 0.0
    query_square = 0.0
    reference_square = 0.0
    n_changes = query_changes.shape[0]
    n_band = reference_frames.shape[1]
    for t in range(n_changes):
        if usable[t + 1] <= 0:
            continue
        frame_product = np.float32(0.0)
        frame_query = np.float32(0.0)
        frame_reference = np.float32(0.0)
        query_row = query_changes[t][first_bin:]  # indexed by the counter alone: vectorised
        later = reference_frames[t + 2]
        earlier = reference_frames[t]
        for j in range(n_band):
            query_change = query_row[j]
            change = later[j] - earlier[j]
            frame_product += query_change * change
            frame_query += query_change * query_change
            frame_reference += change * change
        product += frame_product
        query_square += frame_query
        reference_square += frame_reference
    denominator = np.sqrt(query_square) * np.sqrt(reference_square)
    return product / denominator if denominator > 0 else 0.0


@numba.njit(cache=True, nogil=True)
def paired_bins(n_bins: int, shift: float) -> tuple[int, int]:
    """Half-open range of bins ``j`` of ``0 .. n_bins - 1`` whose partner ``j - shift`` lies in
    ``[0, n_bins - 1]`` (empty ranges have ``stop <= first``).

    Equals ``(j[0], j[-1] + 1)`` for ``j = np.flatnonzero((0 <= b - shift) & (b - shift <=
    n_bins - 1))`` with ``b = np.arange(n_bins)``, without the arrays.
    """
    first = min(max(math.ceil(shift), 0), n_bins)
    while first > 0 and 0 <= first - 1 - shift <= n_bins - 1:
        first -= 1
    while first < n_bins and not (0 <= first - shift <= n_bins - 1):
        first += 1
    last = max(min(math.floor(n_bins - 1 + shift), n_bins - 1), first - 1)
    while last + 1 < n_bins and 0 <= last + 1 - shift <= n_bins - 1:
        last += 1
    while last >= first and not (0 <= last - shift <= n_bins - 1):
        last -= 1
    return first, last + 1


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def spectral_curves(
    spectrum_frames: np.ndarray,
    positions: np.ndarray,
    whiten_bins: int,
    shift: float,
    first_bin: int,
    n_band: int,
    query_white: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """Per-frame spectral correlation of the query with a reference read at several rows of
    positions, one compiled call for all of them.

    Row ``r`` equals ``shifted_fit(*aligned_frames(spectrum_frames, positions[r],
    whiten_bins), shift, first_bin, n_band, query_white, ..., weights, False, False)[0]``.

    Parameters
    ----------
    spectrum_frames : np.ndarray [shape=(n_reference_frames, n_bins), dtype=float32]
    positions : np.ndarray [shape=(n_rows, n_frames), dtype=float64]
        Fractional reference frames (clipped to the reference).
    whiten_bins : int > 0, odd
    shift : float
    first_bin, n_band : int
        The band of query bins paired under ``shift`` (see :func:`shifted_fit`).
    query_white : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
    weights : np.ndarray [shape=(n_frames,), dtype=float32]

    Returns
    -------
    curves : np.ndarray [shape=(n_rows, n_frames), dtype=float32]
    """
    curves = np.empty(positions.shape, dtype=np.float32)
    row_of, white_rows = whitened_rows(spectrum_frames, positions, whiten_bins)
    n_bins = spectrum_frames.shape[1]
    raw = np.empty((positions.shape[1], n_bins), dtype=np.float32)
    white = np.empty((positions.shape[1], n_bins), dtype=np.float32)
    for r in range(positions.shape[0]):
        interpolate_rows(spectrum_frames, white_rows, row_of, positions[r], raw, white)
        per_frame, _, _ = shifted_fit(
            raw,
            white,
            shift,
            first_bin,
            n_band,
            query_white,
            query_white,  # the change arguments are not read without changes measured
            query_white,
            weights,
            False,
            False,
        )
        curves[r] = per_frame
    return curves


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def alignment_objectives(
    spectrum_frames: np.ndarray,
    rates: np.ndarray,
    offsets: np.ndarray,
    shifts: np.ndarray,
    weights: np.ndarray,
    whiten_bins: int,
    query_white: np.ndarray,
    query_raw_changes: np.ndarray,
) -> np.ndarray:
    """Spectral plus onset similarity of the query with a reference at several alignments,
    each at several spectral shifts.

    For alignment ``a`` query frame ``t`` reads reference frame ``offsets[a] + rates[a] * t``;
    frames that fall outside the reference do not count. The reference frames that all the
    alignments read are whitened once (:func:`whitened_rows`), each alignment's frames
    interpolated once (:func:`interpolate_rows`); each shift then pairs query bins with
    shifted reference bins (:func:`shifted_fit`) and scores the weighted mean of the
    per-frame correlations plus the onset correlation, the objective of
    :meth:`~tunetrace.verification.SpectralFit.similarity`. A shift that pairs fewer than a
    quarter of the bins scores 0. Screening (one alignment, every octave) and spectral
    refinement (a grid of alignments, one shift) each take one call, so that threads working
    side by side spend their time here rather than taking turns at the interpreter between
    many short calls.

    Parameters
    ----------
    spectrum_frames : np.ndarray [shape=(n_reference_frames, n_bins), dtype=float32]
    rates, offsets : np.ndarray [shape=(n_alignments,), dtype=float64]
    shifts : np.ndarray [shape=(n_shifts,), dtype=float64]
        Spectral shifts in bins (query up by ``shift`` relative to the reference).
    weights : np.ndarray [shape=(n_frames,), dtype=float32]
        The query's frame weights.
    whiten_bins : int > 0, odd
    query_white : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
    query_raw_changes : np.ndarray [shape=(n_frames - 2, n_bins), dtype=float32]

    Returns
    -------
    objectives : np.ndarray [shape=(n_alignments, n_shifts), dtype=float64]
    """
    n_frames = weights.shape[0]
    n_bins = query_white.shape[1]
    last_frame = spectrum_frames.shape[0] - 1
    objectives = np.zeros((rates.shape[0], shifts.shape[0]), dtype=np.float64)
    positions = np.empty((rates.shape[0], n_frames), dtype=np.float64)
    for a in range(rates.shape[0]):
        for t in range(n_frames):
            positions[a, t] = offsets[a] + rates[a] * t
    # the alignments of a grid read much the same reference frames: each is whitened once
    row_of, white_rows = whitened_rows(spectrum_frames, positions, whiten_bins)
    raw = np.empty((n_frames, n_bins), dtype=np.float32)
    white = np.empty((n_frames, n_bins), dtype=np.float32)
    usable = np.empty(n_frames, dtype=np.float32)
    for a in range(rates.shape[0]):
        total = 0.0
        for t in range(n_frames):
            position = positions[a, t]
            usable[t] = weights[t] if 0.0 <= position <= last_frame else np.float32(0.0)
            total += usable[t]
        interpolate_rows(spectrum_frames, white_rows, row_of, positions[a], raw, white)
        for i in range(shifts.shape[0]):
            first, stop = paired_bins(n_bins, shifts[i])
            if stop - first < max(n_bins // 4, 1):
                continue
            per_frame, onsets, _ = shifted_fit(
                raw,
                white,
                shifts[i],
                first,
                stop - first,
                query_white,
                query_raw_changes,  # stands in for the whitened changes: no dynamics measured
                query_raw_changes,
                usable,
                True,
                False,
            )
            spectral = 0.0
            if total > 0:
                for t in range(n_frames):
                    spectral += per_frame[t] * usable[t]
                spectral /= total
            objectives[a, i] = spectral + onsets
    return objectives
