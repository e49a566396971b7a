"""Compiled inner loop of spectral screening (:mod:`tunetrace.screening`).

Screening scores one alignment at every whole-octave choice of shift, and the spectral
refinement of full verification a grid of alignments at one shift: :func:`alignment_objectives`
does either in one call, running full verification's spectral fit
(:mod:`tunetrace.verification_kernels`) at each alignment and shift. Why verification's loops
are compiled, and how they are compiled before the first query, is told in
:mod:`tunetrace.kernels`.

Each function states the NumPy expression it equals; the tests compare them.
"""

from __future__ import annotations

import numba
import numpy as np

from tunetrace.index._kernels import FASTMATH
from tunetrace.verification_kernels import (
    interpolate_rows,
    paired_bins,
    shifted_fit,
    whitened_rows,
)


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
    frames that fall outside the reference do not count. Each alignment's reference frames are
    interpolated and whitened once (:func:`~tunetrace.verification_kernels.whitened_rows`,
    :func:`~tunetrace.verification_kernels.interpolate_rows`; the reference frames a grid of
    alignments reads are whitened once for all of them);
    each shift then pairs query bins with shifted reference bins
    (:func:`~tunetrace.verification_kernels.shifted_fit`) and scores the weighted mean of the
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
            if stop - first < n_bins // 4:
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
