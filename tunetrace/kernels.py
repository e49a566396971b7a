"""Compiled inner loops of verification.

Verification measures thousands of alignments per query, each on arrays of a few hundred
values. Written as NumPy expressions, every measurement is a dozen small array operations and
their per-call overhead, temporaries and gathers cost more than the arithmetic. These loops do
the same arithmetic in one pass, compiled by Numba (which librosa already depends on); the
compiled code is cached on disk, so only the first run on a machine pays for compiling.

Each function states the NumPy expression it equals; the tests compare them.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True)
def chroma_cross_spectra(
    reference_bins: np.ndarray,
    query_conj: np.ndarray,
    weights: np.ndarray,
    rates: np.ndarray,
    offsets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums over frames of a reference's chroma transform times the query's conjugate.

    For alignment ``p`` the query's frame ``t`` lands on reference frame
    ``offsets[p] + rates[p] * t``; frames that land outside the reference are left out, and
    the reference's transform is interpolated linearly between frames.

    Parameters
    ----------
    reference_bins : np.ndarray [shape=(n_reference_frames, n_coeffs), dtype=complex64]
        Fourier transform of every reference chroma frame along its bins.
    query_conj : np.ndarray [shape=(n_query_frames, n_coeffs), dtype=complex64]
        Conjugate of the query's transform.
    weights : np.ndarray [shape=(n_query_frames,), dtype=float32]
    rates, offsets : np.ndarray [shape=(n_pairs,), dtype=float64]

    Returns
    -------
    sums : np.ndarray [shape=(n_pairs, n_coeffs), dtype=complex128]
        ``sum_t weight_t * reference(position_t) * conj(query_t)``.
    totals : np.ndarray [shape=(n_pairs,), dtype=float64]
        Sum of the weights of the frames inside the reference.
    """
    n_pairs = rates.shape[0]
    n_frames, n_coeffs = query_conj.shape
    last = reference_bins.shape[0] - 1
    sums = np.zeros((n_pairs, n_coeffs), dtype=np.complex128)
    totals = np.zeros(n_pairs, dtype=np.float64)
    for p in range(n_pairs):
        for t in range(n_frames):
            weight = weights[t]
            position = offsets[p] + rates[p] * t
            if weight == 0.0 or position < 0.0 or position > last:
                continue
            left = int(np.floor(position))
            right = min(left + 1, last)
            right_weight = weight * (position - left)
            left_weight = weight - right_weight
            totals[p] += weight
            for k in range(n_coeffs):
                sums[p, k] += (
                    left_weight * reference_bins[left, k] + right_weight * reference_bins[right, k]
                ) * query_conj[t, k]
    return sums, totals


@numba.njit(cache=True, nogil=True, fastmath=True)
def aligned_frames(
    spectrum_frames: np.ndarray, positions: np.ndarray, whiten_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """A reference's spectrum interpolated at fractional frames, raw and whitened.

    Equals :func:`~tunetrace.fingerprint.embedding.interpolate_frames` of the spectrum at
    ``positions`` and :func:`~tunetrace.verify.whiten_spectrum` of that (the local mean over
    ``whiten_bins`` bins, edge bins repeated, removed from every frame).

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
    n_frames = positions.shape[0]
    last = spectrum_frames.shape[0] - 1
    n_bins = spectrum_frames.shape[1]
    half = whiten_bins // 2
    raw = np.empty((n_frames, n_bins), dtype=np.float32)
    white = np.empty((n_frames, n_bins), dtype=np.float32)
    prefix = np.empty(n_bins + 1, dtype=np.float64)
    for t in range(n_frames):
        position = min(max(positions[t], 0.0), float(last))
        left = int(np.floor(position))
        right = min(left + 1, last)
        right_weight = np.float32(position - left)
        left_weight = np.float32(1.0) - right_weight
        row = raw[t]
        left_row = spectrum_frames[left]
        right_row = spectrum_frames[right]
        for k in range(n_bins):
            row[k] = left_row[k] * left_weight + right_row[k] * right_weight
        prefix[0] = 0.0
        for k in range(n_bins):
            prefix[k + 1] = prefix[k] + row[k]
        # The window of bin k is k - half .. k + half, edge bins repeated past the ends; the
        # interior loop has no edges to handle (and vectorises).
        whitened = white[t]
        first_value = row[0]
        last_value = row[n_bins - 1]
        for k in range(min(half, n_bins)):
            high = k + half
            total = prefix[min(high, n_bins - 1) + 1] + (half - k) * first_value
            if high > n_bins - 1:
                total += (high - n_bins + 1) * last_value
            whitened[k] = row[k] - total / whiten_bins
        for k in range(half, n_bins - half):
            whitened[k] = row[k] - (prefix[k + half + 1] - prefix[k - half]) / whiten_bins
        for k in range(max(n_bins - half, half), n_bins):
            total = prefix[n_bins] - prefix[k - half] + (k + half - n_bins + 1) * last_value
            whitened[k] = row[k] - total / whiten_bins
    return raw, white


@numba.njit(cache=True, nogil=True, fastmath=True)
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
    for t in range(n_frames):
        reference_row = white[t]
        shifted = shifted_white[t]
        for j in range(last):
            shifted[j] = (
                reference_row[base + j] * lower_weight + reference_row[base + j + 1] * upper_weight
            )
        shifted[last] = (
            reference_row[base + last] * lower_weight + reference_row[last_upper] * upper_weight
        )
        mean = 0.0
        for j in range(n_band):
            mean += shifted[j]
        mean /= n_band
        # the reference side is centred, so the query's mean drops out of the product
        query_row = query_white[t]
        numerator = 0.0
        square = 0.0
        query_sum = 0.0
        query_square = 0.0
        for j in range(n_band):
            centred = shifted[j] - mean
            query_value = query_row[first_bin + j]
            numerator += query_value * centred
            square += centred * centred
            query_sum += query_value
            query_square += query_value * query_value
        query_square = max(query_square - query_sum * query_sum / n_band, 0.0)
        per_frame[t] = numerator / max(np.sqrt(query_square) * np.sqrt(square), 1e-9)
        if with_changes:
            reference_row = raw[t]
            shifted = shifted_raw[t]
            for j in range(last):
                shifted[j] = (
                    reference_row[base + j] * lower_weight
                    + reference_row[base + j + 1] * upper_weight
                )
            shifted[last] = (
                reference_row[base + last] * lower_weight + reference_row[last_upper] * upper_weight
            )
    onsets = 0.0
    dynamics = 0.0
    if with_changes and n_frames >= 3:
        onsets = _change_correlation(query_raw_changes, first_bin, shifted_raw, usable)
        if with_dynamics:
            dynamics = _change_correlation(query_white_changes, first_bin, shifted_white, usable)
    return per_frame, onsets, dynamics


@numba.njit(cache=True, nogil=True, fastmath=True)
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
    product = 0.0
    query_square = 0.0
    reference_square = 0.0
    n_changes = query_changes.shape[0]
    n_band = reference_frames.shape[1]
    for t in range(n_changes):
        if usable[t + 1] <= 0:
            continue
        for j in range(n_band):
            query_change = query_changes[t, first_bin + j]
            change = reference_frames[t + 2, j] - reference_frames[t, j]
            product += query_change * change
            query_square += query_change * query_change
            reference_square += change * change
    denominator = np.sqrt(query_square) * np.sqrt(reference_square)
    return product / denominator if denominator > 0 else 0.0


def compile_kernels() -> None:
    """Compile (or load from Numba's on-disk cache) every kernel for the array types
    verification passes them, so that a service's first query does not wait for it."""
    frames = np.zeros((4, 8), dtype=np.float32)
    positions = np.arange(3, dtype=np.float64)
    bins = np.zeros((4, 3), dtype=np.complex64)
    weights = np.ones(3, dtype=np.float32)
    chroma_cross_spectra(bins, bins[:3], weights, positions, positions)
    raw, white = aligned_frames(frames, positions, 3)
    query = np.zeros((3, 8), dtype=np.float32)
    shifted_fit(raw, white, 0.0, 0, 8, query, query[:1], query[:1], weights, True, True)
