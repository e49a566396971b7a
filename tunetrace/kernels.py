"""Compiled inner loops of verification.

Verification measures thousands of alignments per query, each on arrays of a few hundred
values. Written as NumPy expressions, every measurement is a dozen small array operations and
their per-call overhead, temporaries and gathers cost more than the arithmetic. These loops do
the same arithmetic in one pass, compiled by Numba (which librosa already depends on); the
compiled code is cached on disk, so only the first run on a machine pays for compiling.

Each function states the NumPy expression it equals; the tests compare them.
"""

from __future__ import annotations

import numpy as np

from tunetrace.alignment_kernels import chroma_cross_spectra, chroma_grid_search
from tunetrace.index._kernels import (
    chroma_and_blurred_frames,
    stored_spectrum_arrays,
)
from tunetrace.screening_kernels import alignment_objectives
from tunetrace.verification_kernels import aligned_frames, paired_bins, shifted_fit, spectral_curves


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
