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

from tunetrace.alignment_kernels import chroma_cross_spectra, chroma_grid_search
from tunetrace.index._kernels import (
    FASTMATH,
    chroma_and_blurred_frames,
    stored_spectrum_arrays,
)
from tunetrace.verification_kernels import aligned_frames, paired_bins, shifted_fit, spectral_curves


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
    interpolated and whitened once (:func:`aligned_frames`); each shift then pairs query bins
    with shifted reference bins (:func:`shifted_fit`) and scores the weighted mean of the
    per-frame correlations plus the onset correlation, the objective of
    ``tunetrace.verify._SpectralFit.similarity``. A shift that pairs fewer than a quarter of
    the bins scores 0. Screening (one alignment, every octave) and spectral refinement (a grid
    of alignments, one shift) each take one call, so that threads working side by side spend
    their time here rather than taking turns at the interpreter between many short calls.

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
    positions = np.empty(n_frames, dtype=np.float64)
    usable = np.empty(n_frames, dtype=np.float32)
    for a in range(rates.shape[0]):
        total = 0.0
        for t in range(n_frames):
            position = offsets[a] + rates[a] * t
            positions[t] = position
            usable[t] = weights[t] if 0.0 <= position <= last_frame else np.float32(0.0)
            total += usable[t]
        raw, white = aligned_frames(spectrum_frames, positions, whiten_bins)
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


def compile_kernels() -> None:
    """Compile (or load from Numba's on-disk cache) every kernel for the array types
    verification passes them, so that a service's first query does not wait for it.

    Numba compiles a kernel once per argument type, and a read-only array is a type of its
    own: the cached alignment grids and transforms, the bin weights and the codes read from
    the catalogue are read-only, so they are passed read-only here too.
    """
    frames = np.zeros((4, 8), dtype=np.float32)
    positions = np.arange(3, dtype=np.float64)
    bins = np.zeros((4, 3), dtype=np.complex64)
    weights = np.ones(3, dtype=np.float32)
    chroma_cross_spectra(bins, bins[:3], weights, positions, positions)
    grid = np.ones(2, dtype=np.float64)
    transform = _read_only(np.zeros((3, 4), dtype=np.float64))
    ends = _read_only(np.array([1, 2], dtype=np.int64))
    chroma_grid_search(
        bins,
        bins[:3],
        weights,
        1.0,
        0.0,
        1.0,
        _read_only(grid),
        _read_only(grid),
        ends,
        transform,
        transform,
    )
    raw, white = aligned_frames(frames, positions, 3)
    chroma_and_blurred_frames(frames[:, :3].T.copy(), weights)
    stored_spectrum_arrays(
        _read_only(np.zeros((6, 3), dtype=np.uint8)),
        np.float32(1.0),
        _read_only(weights[:1].repeat(6)),
        3,
    )
    query = np.zeros((3, 8), dtype=np.float32)
    shifted_fit(raw, white, 0.0, 0, 8, query, query[:1], query[:1], weights, True, True)
    alignment_objectives(frames, grid, grid, grid, weights, 3, query, query[:1])
    spectral_curves(frames, np.zeros((2, 3)), 3, 0.0, 0, 8, query, weights)
    paired_bins(8, 0.0)  # also called on its own, by the spectral fit


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only copy of ``array`` (a Numba argument type of its own)."""
    copy = array.copy()
    copy.flags.writeable = False
    return copy
