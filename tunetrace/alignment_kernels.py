"""Compiled inner loops of chroma alignment (:mod:`tunetrace.alignment`).

The coarse-to-fine search scores a few hundred (tempo ratio, offset) points per candidate,
each a weighted sum over the query's frames: one compiled call does all of them (why
verification's loops are compiled, and how they are compiled before the first query, is told
in :mod:`tunetrace.kernels`).

Each function states the NumPy expression it equals; the tests compare them.
"""

from __future__ import annotations

import numba
import numpy as np

from tunetrace.index._kernels import FASTMATH


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
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
    sums : np.ndarray [shape=(n_pairs, n_coeffs), dtype=complex64]
        ``sum_t weight_t * reference(position_t) * conj(query_t)``.
    totals : np.ndarray [shape=(n_pairs,), dtype=float64]
        Sum of the weights of the frames inside the reference.
    """
    # Single precision throughout (sums of at most a few hundred products of unit-sized
    # values): faster than accumulating in double, and the same to about 1e-6.
    n_pairs = rates.shape[0]
    n_frames, n_coeffs = query_conj.shape
    last = reference_bins.shape[0] - 1
    sums = np.zeros((n_pairs, n_coeffs), dtype=np.complex64)
    totals = np.zeros(n_pairs, dtype=np.float64)
    accumulated = np.empty(n_coeffs, dtype=np.complex64)
    for p in range(n_pairs):
        accumulated[:] = 0
        total = 0.0
        for t in range(n_frames):
            weight = weights[t]
            position = offsets[p] + rates[p] * t
            if weight == 0.0 or position < 0.0 or position > last:
                continue
            left = int(np.floor(position))
            right = min(left + 1, last)
            right_weight = np.float32(weight * (position - left))
            left_weight = np.float32(weight) - right_weight
            total += weight
            left_row = reference_bins[left]
            right_row = reference_bins[right]
            query_row = query_conj[t]
            for k in range(n_coeffs):
                accumulated[k] += (
                    left_weight * left_row[k] + right_weight * right_row[k]
                ) * query_row[k]
        sums[p] = accumulated
        totals[p] = total
    return sums, totals


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def chroma_grid_search(
    reference_bins: np.ndarray,
    query_conj: np.ndarray,
    weights: np.ndarray,
    rate: float,
    offset: float,
    centre: float,
    factors: np.ndarray,
    deltas: np.ndarray,
    stage_ends: np.ndarray,
    cosines: np.ndarray,
    sines: np.ndarray,
) -> tuple[float, float, np.ndarray, bool]:
    """Coarse-to-fine search of the (tempo ratio, offset) with the best pitch-corrected chroma fit.

    Stage ``s`` tries the grid points ``stage_ends[s - 1] .. stage_ends[s] - 1`` (0 for the
    first stage's start) around the best point so far: ratio ``rate * factors[i]`` and offset
    ``offset + (rate - rate * factors[i]) * centre + deltas[i]`` (the query's frame ``centre``
    stays in place as the ratio moves). A point is scored by the mean chroma correlation at
    its best circular roll: the inverse transform (``cosines``, ``sines``) of the
    :func:`chroma_cross_spectra` sums divided by their weight. Points that put less than half
    of the query's weight inside the reference (or, for a query longer than the reference at
    that tempo, less than half of a reference's length of it) are not scored. Ties go to the
    first point.

    Parameters
    ----------
    reference_bins, query_conj, weights
        As for :func:`chroma_cross_spectra`.
    rate, offset : float
        Where the search starts.
    centre : float
        Query frame kept in place as the ratio moves.
    factors, deltas : np.ndarray [shape=(n_points,), dtype=float64]
        Every stage's grid, stage after stage.
    stage_ends : np.ndarray [shape=(n_stages,), dtype=int64]
    cosines, sines : np.ndarray [shape=(n_coeffs, n_rolls), dtype=float64]
        ``X.real @ cosines + X.imag @ sines`` is the circular cross-correlation of sums ``X``.

    Returns
    -------
    rate, offset : float
        The best point of the last stage (or of the last stage that scored any).
    roll_scores : np.ndarray [shape=(n_rolls,), dtype=float64]
        Its mean correlation at every roll.
    found : bool
        False when a stage had no point to score (the other values are then meaningless).
    """
    n_coeffs, n_rolls = cosines.shape
    weight_sum = 0.0
    for t in range(weights.shape[0]):
        weight_sum += weights[t]
    weight_mean = weight_sum / max(weights.shape[0], 1)
    n_reference = reference_bins.shape[0]
    best_scores = np.full(n_rolls, -np.inf)
    scores = np.empty(n_rolls)
    start = 0
    for stage in range(stage_ends.shape[0]):
        end = stage_ends[stage]
        rates = rate * factors[start:end]
        offsets = offset + (rate - rates) * centre + deltas[start:end]
        sums, totals = chroma_cross_spectra(reference_bins, query_conj, weights, rates, offsets)
        best_value = -np.inf
        best_point = -1
        for p in range(end - start):
            reference_span = weight_mean * n_reference / rates[p]
            if totals[p] < 0.5 * min(weight_sum, reference_span):
                continue
            scale = 1.0 / max(totals[p], 1e-9)
            top = -np.inf
            for r in range(n_rolls):
                value = 0.0
                for k in range(n_coeffs):
                    value += sums[p, k].real * cosines[k, r] + sums[p, k].imag * sines[k, r]
                scores[r] = value * scale
                top = max(top, scores[r])
            if top > best_value:
                best_value = top
                best_point = p
                best_scores[:] = scores
        if best_point < 0:
            return rate, offset, best_scores, False
        rate = rates[best_point]
        offset = offsets[best_point]
        start = end
    return rate, offset, best_scores, True
