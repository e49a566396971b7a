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

    A search grid holds many alignments at one tempo ratio whose offsets differ by whole
    frames. Those read the reference with the same interpolation weights, shifted by whole
    frames, so the query's weighted frames are spread onto reference frames once for them
    (:func:`_spread_query`) and each such alignment lying wholly inside the reference is a
    dot product per coefficient along the reference frames it spans (:func:`_planes`,
    :func:`_shifted_products`: contiguous, so vectorised) instead of an interpolation and a
    complex product per query frame. The sums are the same to float rounding; the other
    alignments are summed frame by frame (:func:`_direct_sums`).

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
    n_pairs = rates.shape[0]
    n_frames, n_coeffs = query_conj.shape
    n_reference = reference_bins.shape[0]
    last = n_reference - 1
    sums = np.zeros((n_pairs, n_coeffs), dtype=np.complex64)
    totals = np.zeros(n_pairs, dtype=np.float64)
    # Each pair's group (-1: summed frame by frame) and its whole-frame shift from the
    # group's first offset; each group's rate, first offset, floor of it and spread rows.
    group_of = np.full(n_pairs, -1, dtype=np.int64)
    shift_of = np.zeros(n_pairs, dtype=np.int64)
    group_leader = np.empty(n_pairs, dtype=np.int64)
    group_rows = np.empty(n_pairs, dtype=np.int64)
    n_groups = 0
    lowest = n_reference
    highest = 0
    members = np.empty(n_pairs, dtype=np.int64)
    for p in range(n_pairs):
        rate = rates[p]
        # (written so that NaN fails: such alignments are summed frame by frame)
        if group_of[p] >= 0 or n_frames == 0 or not (0.0 < rate < np.inf):
            continue
        if not abs(offsets[p]) < 1e15:
            continue
        low = int(np.floor(offsets[p]))
        # the alignments at this rate whose offsets are this one's plus whole frames, with
        # every query frame inside the reference (by their own offsets, as summed directly)
        n_members = 0
        for q in range(p, n_pairs):
            if group_of[q] >= 0 or rates[q] != rate:
                continue
            shift = offsets[q] - offsets[p]
            whole = np.round(shift)
            inside = offsets[q] >= 0.0 and offsets[q] + rate * (n_frames - 1) <= last
            if not (abs(shift - whole) <= 1e-9 and inside and low + whole >= 0):
                continue
            members[n_members] = q
            n_members += 1
        # Spreading costs about as much as a tenth of one alignment summed frame by frame;
        # each member then takes a tenth of that per reference frame it spans.
        span = rate * (n_frames - 1) + 2.0
        if n_members < 2 or n_frames * (n_members - 0.1) < 0.1 * n_members * span:
            continue
        rows = int(span) + 1
        for m in range(n_members):
            q = members[m]
            group_of[q] = n_groups
            shift_of[q] = int(np.round(offsets[q] - offsets[p]))
            lowest = min(lowest, low + shift_of[q])
            highest = max(highest, min(low + shift_of[q] + rows, n_reference))
        group_leader[n_groups] = p
        group_rows[n_groups] = rows
        n_groups += 1
    if n_groups > 0:
        weight_total = 0.0
        for t in range(n_frames):
            weight_total += weights[t]
        # the reference frames the groups read, coefficient by coefficient, real and
        # imaginary parts apart: each member's sums are then contiguous dot products
        reference_real, reference_imag = _planes(reference_bins[lowest:highest])
        for g in range(n_groups):
            p = group_leader[g]
            low = int(np.floor(offsets[p]))
            spread_real, spread_imag = _planes(
                _spread_query(query_conj, weights, rates[p], offsets[p] - low, group_rows[g])
            )
            for q in range(p, n_pairs):
                if group_of[q] != g:
                    continue
                _shifted_products(
                    reference_real,
                    reference_imag,
                    spread_real,
                    spread_imag,
                    low + shift_of[q] - lowest,
                    sums[q],
                )
                totals[q] = weight_total
    for p in range(n_pairs):
        if group_of[p] < 0:
            totals[p] = _direct_sums(
                reference_bins, query_conj, weights, rates[p], offsets[p], sums[p]
            )
    return sums, totals


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _direct_sums(
    reference_bins: np.ndarray,
    query_conj: np.ndarray,
    weights: np.ndarray,
    rate: float,
    offset: float,
    out: np.ndarray,
) -> float:
    """One alignment's sums (into ``out``) and weight total, query frame by query frame."""
    # Single precision throughout (sums of at most a few hundred products of unit-sized
    # values): faster than accumulating in double, and the same to about 1e-6.
    n_frames, n_coeffs = query_conj.shape
    last = reference_bins.shape[0] - 1
    total = 0.0
    for t in range(n_frames):
        weight = weights[t]
        position = offset + rate * t
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
            out[k] += (left_weight * left_row[k] + right_weight * right_row[k]) * query_row[k]
    return total


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _spread_query(
    query_conj: np.ndarray, weights: np.ndarray, rate: float, start: float, n_rows: int
) -> np.ndarray:
    """The query's weighted frames spread onto reference frames ``0 .. n_rows - 1`` counted
    from ``floor`` of an alignment's first position, ``start`` its fractional part: row ``j``
    holds the weight every query frame gives reference frame ``j`` times its conjugate."""
    n_frames, n_coeffs = query_conj.shape
    spread = np.zeros((n_rows, n_coeffs), dtype=np.complex64)
    for t in range(n_frames):
        weight = weights[t]
        if weight == 0.0:
            continue
        position = start + rate * t
        left = min(int(np.floor(position)), n_rows - 2)  # (inside already: never moves)
        right_weight = np.float32(weight * (position - left))
        left_weight = np.float32(weight) - right_weight
        query_row = query_conj[t]
        left_row = spread[left]
        right_row = spread[left + 1]
        for k in range(n_coeffs):
            left_row[k] += left_weight * query_row[k]
            right_row[k] += right_weight * query_row[k]
    return spread


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _planes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of complex ``rows``, each transposed to
    ``(n_coeffs, n_rows)``."""
    n_rows, n_coeffs = rows.shape
    real = np.empty((n_coeffs, n_rows), dtype=np.float32)
    imag = np.empty((n_coeffs, n_rows), dtype=np.float32)
    for j in range(n_rows):
        for k in range(n_coeffs):
            real[k, j] = rows[j, k].real
            imag[k, j] = rows[j, k].imag
    return real, imag


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _shifted_products(
    reference_real: np.ndarray,
    reference_imag: np.ndarray,
    spread_real: np.ndarray,
    spread_imag: np.ndarray,
    first: int,
    out: np.ndarray,
) -> None:
    """Add the sum over rows ``j`` of reference row ``first + j`` times spread row ``j``
    (complex, coefficient by coefficient, from :func:`_planes` of each) into ``out``, over
    the rows that lie in the reference (those past it carry no weight)."""
    n_coeffs, n_rows = spread_real.shape
    stop = min(n_rows, reference_real.shape[1] - first)
    for k in range(n_coeffs):
        a = reference_real[k][first:]
        b = reference_imag[k][first:]
        c = spread_real[k]
        d = spread_imag[k]
        real = np.float32(0.0)
        imag = np.float32(0.0)
        for j in range(stop):
            real += a[j] * c[j] - b[j] * d[j]
            imag += a[j] * d[j] + b[j] * c[j]
        out[k] += real + 1j * imag


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
            # coefficient by coefficient, every roll at once (contiguous rows: vectorised)
            scores[:] = 0.0
            for k in range(n_coeffs):
                real = np.float64(sums[p, k].real)
                imag = np.float64(sums[p, k].imag)
                cosine_row = cosines[k]
                sine_row = sines[k]
                for r in range(n_rolls):
                    scores[r] += real * cosine_row[r] + imag * sine_row[r]
            top = -np.inf
            for r in range(n_rolls):
                scores[r] *= scale
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
