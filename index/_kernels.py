"""Compiled inner loops of the catalogue: a stored reference's arrays derived in one pass,
and the searches' selections of the best.

Reading a reference back for verification turns its stored codes into the spectrum, its
octave fold and its blurred frames; these loops do that arithmetic in one pass, compiled by
Numba and cached on disk. A long query's search keeps each patch vector's few nearest IVF
lists (:func:`largest_per_row`), and each vector's best neighbours as every list's matrix
product comes in (:func:`keep_best`). Each function states the NumPy expression it equals;
the tests compare them.
"""

from __future__ import annotations

import numba
import numpy as np

#: LLVM fast-math flags of every kernel: reassociation, contraction, reciprocals, approximate
#: functions, no signed zeros; never ``ninf`` or ``nnan``, which let LLVM assume that no value is
#: infinite or NaN and drop the comparisons with the ``-inf`` sentinels the searches start from.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def stored_spectrum_arrays(
    codes: np.ndarray, levels: np.ndarray, bin_weights: np.ndarray, bins_per_octave: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stored reference's spectrum, its weighted octave sum and its blurred frames, in one pass.

    Equals (to float rounding) ``spectrum = levels[codes]``, the
    :func:`~tunetrace.fingerprint.spectrum.fold_chroma` of it (``bin_weights`` are the
    :func:`~tunetrace.fingerprint.spectrum.chroma_weights`) and the
    :attr:`~tunetrace.fingerprint.features.Features.spectrum_frames` of it (a [1, 2, 1] / 4
    blur along bins, edge bins repeated, frames first). A reference read for verification
    needs all three; computed apart they take four times as long, most of it in the transpose.

    Parameters
    ----------
    codes : np.ndarray [shape=(n_bins, n_frames), dtype=uint8]
    levels : np.ndarray [shape=(256,), dtype=float32]
        Value of each code (:meth:`~tunetrace.index.spectrum_codec.SpectrumCodec.levels`).
    bin_weights : np.ndarray [shape=(n_bins,), dtype=float32]
    bins_per_octave : int
        ``n_bins`` is a whole number of octaves.

    Returns
    -------
    spectrum : np.ndarray [shape=(n_bins, n_frames), dtype=float32]
    folded : np.ndarray [shape=(bins_per_octave, n_frames), dtype=float32]
    frames : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
    """
    n_bins, n_frames = codes.shape
    spectrum = np.empty((n_bins, n_frames), dtype=np.float32)
    folded = np.zeros((bins_per_octave, n_frames), dtype=np.float32)
    frames = np.empty((n_frames, n_bins), dtype=np.float32)
    for b in range(n_bins):
        weight = bin_weights[b]
        row = spectrum[b]
        fold_row = folded[b % bins_per_octave]
        for t in range(n_frames):
            value = levels[codes[b, t]]
            row[t] = value
            fold_row[t] += value * weight
    # Blocks of frames keep the transposed writes in cache.
    block = 64
    last = n_bins - 1
    for first in range(0, n_frames, block):
        stop = min(first + block, n_frames)
        for b in range(n_bins):
            below = spectrum[max(b - 1, 0)]
            here = spectrum[b]
            above = spectrum[min(b + 1, last)]
            for t in range(first, stop):
                frames[t, b] = (
                    np.float32(0.25) * below[t]
                    + np.float32(0.5) * here[t]
                    + (np.float32(0.25) * above[t])
                )
    return spectrum, folded, frames


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def chroma_and_blurred_frames(
    smoothed: np.ndarray, blur: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Frame-normalised chroma and its circularly blurred, normalised frames, in one pass.

    Equals (to float rounding) ``chroma = normalise_frames(smoothed)`` and
    ``normalise_frames(blur_bins(chroma, circular=True)).T`` (see
    :mod:`tunetrace.fingerprint.spectrum`).

    Parameters
    ----------
    smoothed : np.ndarray [shape=(n_bins, n_frames), dtype=float32]
        Folded chroma smoothed along time.
    blur : np.ndarray [shape=(3,), dtype=float32]
        Weights of the previous, same and next bin (circularly).

    Returns
    -------
    chroma : np.ndarray [shape=(n_bins, n_frames), dtype=float32]
    blurred : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        Frames first.
    """
    n_bins, n_frames = smoothed.shape
    chroma = np.empty((n_bins, n_frames), dtype=np.float32)
    blurred = np.empty((n_frames, n_bins), dtype=np.float32)
    column = np.empty(n_bins, dtype=np.float64)
    row = np.empty(n_bins, dtype=np.float64)
    for t in range(n_frames):
        for b in range(n_bins):
            column[b] = smoothed[b, t]
        _normalise(column)
        for b in range(n_bins):
            chroma[b, t] = np.float32(column[b])
        for b in range(n_bins):
            row[b] = (
                blur[0] * column[b - 1 if b > 0 else n_bins - 1]
                + blur[1] * column[b]
                + blur[2] * column[b + 1 if b < n_bins - 1 else 0]
            )
        _normalise(row)
        for b in range(n_bins):
            blurred[t, b] = np.float32(row[b])
    return chroma, blurred


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def moving_average_part(folded: np.ndarray, first: int, stop: int, width: int) -> np.ndarray:
    """Frames ``first`` to ``stop - 1`` of the moving average along time of ``folded``.

    Equals (to float rounding) ``moving_average_frames(folded, width)[:, first:stop]``
    (zero-padded at both ends, centred as ``np.convolve(..., mode="same")`` is), each frame
    summed on its own: a frame's value does not depend on which others are computed with it,
    so a reference derived a part at a time holds the same values whatever the order of its
    parts. Only the frames within ``width`` of the range are read.

    Parameters
    ----------
    folded : np.ndarray [shape=(n_bins, n_frames), dtype=float32]
    first, stop : int
        ``0 <= first <= stop <= n_frames``.
    width : int > 0

    Returns
    -------
    averaged : np.ndarray [shape=(n_bins, stop - first), dtype=float32]
    """
    n_bins, n_frames = folded.shape
    averaged = np.empty((n_bins, stop - first), dtype=np.float32)
    before = width // 2
    for b in range(n_bins):
        row = folded[b]
        for t in range(first, stop):
            total = 0.0
            for s in range(t - before, t - before + width):
                if 0 <= s < n_frames:
                    total += row[s]
            averaged[b, t - first] = np.float32(total / width)
    return averaged


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def frames_times_table(frames: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``frames @ table`` computed frame by frame, in the same order for every frame.

    Equals (to float rounding) the matrix product, whose blocked sums BLAS orders by the
    number of frames: here a frame's row does not depend on the frames computed with it.

    Parameters
    ----------
    frames : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
    table : np.ndarray [shape=(n_bins, n_columns), dtype=float32]

    Returns
    -------
    product : np.ndarray [shape=(n_frames, n_columns), dtype=float32]
    """
    n_frames, n_bins = frames.shape
    n_columns = table.shape[1]
    product = np.zeros((n_frames, n_columns), dtype=np.float32)
    for t in range(n_frames):
        row = product[t]
        for b in range(n_bins):  # bin after bin, every column at once (contiguous: vectorised)
            value = frames[t, b]
            weights = table[b]
            for c in range(n_columns):
                row[c] += value * weights[c]
    return product


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _normalise(values: np.ndarray) -> None:
    """Zero mean and unit L2 norm in place (norms below 1e-6 divide by 1e-6), as
    :func:`~tunetrace.fingerprint.spectrum.normalise_frames` does to a frame."""
    n = values.shape[0]
    mean = 0.0
    for i in range(n):
        mean += values[i]
    mean /= n
    square = 0.0
    for i in range(n):
        values[i] -= mean
        square += values[i] * values[i]
    scale = 1.0 / max(np.sqrt(square), 1e-6)
    for i in range(n):
        values[i] *= scale


@numba.njit(cache=True, nogil=True)
def largest_per_row(values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``count`` largest values and their columns, in no set order.

    Equals (ties aside) ``np.argpartition(-values, count - 1, axis=1)[:, :count]`` and the
    values there, in a fifth of its time for a few of several hundred columns: one pass
    per row keeps the best ``count`` seen and replaces the least of them.

    Parameters
    ----------
    values : np.ndarray [shape=(n, m), dtype=float32]
        Finite.
    count : int
        From 1 to ``m``.

    Returns
    -------
    columns : np.ndarray [shape=(n, count), dtype=int64]
    largest : np.ndarray [shape=(n, count), dtype=float32]
    """
    n, m = values.shape
    columns = np.empty((n, count), dtype=np.int64)
    largest = np.empty((n, count), dtype=np.float32)
    for i in range(n):
        row = values[i]
        kept = largest[i]
        where = columns[i]
        for j in range(count):
            kept[j] = row[j]
            where[j] = j
        least = 0
        for j in range(1, count):
            if kept[j] < kept[least]:
                least = j
        for j in range(count, m):
            value = row[j]
            if value > kept[least]:
                kept[least] = value
                where[least] = j
                least = 0
                for q in range(1, count):
                    if kept[q] < kept[least]:
                        least = q
    return columns, largest


@numba.njit(cache=True, nogil=True)
def keep_best(
    best_similarities: np.ndarray,
    best_ids: np.ndarray,
    rows: np.ndarray,
    similarities: np.ndarray,
    ids: np.ndarray,
) -> None:
    """Merge one inverted list's similarities into the best ``k`` kept for each query row.

    Equals (ties aside) appending ``similarities[i]`` and ``ids`` to row ``rows[i]`` of the
    kept arrays and keeping its ``k`` largest, sorted best first; an equal value never
    displaces one kept before it.

    Parameters
    ----------
    best_similarities : np.ndarray [shape=(n, k), dtype=float32]
        Each row sorted best first; updated in place.
    best_ids : np.ndarray [shape=(n, k), dtype=int64]
        Updated in place with ``best_similarities``.
    rows : np.ndarray [shape=(m,), dtype=int64]
        The query row of each row of ``similarities``.
    similarities : np.ndarray [shape=(m, size), dtype=float32]
        Of those queries with the list's vectors.
    ids : np.ndarray [shape=(size,), dtype=int64]
        The list's vector ids.
    """
    k = best_similarities.shape[1]
    for i in range(len(rows)):
        kept = best_similarities[rows[i]]
        kept_ids = best_ids[rows[i]]
        row = similarities[i]
        for j in range(len(ids)):
            value = row[j]
            if value > kept[k - 1]:
                place = k - 1
                while place > 0 and kept[place - 1] < value:
                    kept[place] = kept[place - 1]
                    kept_ids[place] = kept_ids[place - 1]
                    place -= 1
                kept[place] = value
                kept_ids[place] = ids[j]
