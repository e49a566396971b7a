"""Compiling every stage's kernels before the first query.

Verification measures thousands of alignments per query, each on arrays of a few hundred
values. Written as NumPy expressions, every measurement is a dozen small array operations and
their per-call overhead, temporaries and gathers cost more than the arithmetic. Its inner
loops do the same arithmetic in one pass, compiled by Numba (which librosa already depends
on); the compiled code is cached on disk, so only the first run on a machine pays for
compiling.

The loops sit beside the stages that call them: ``tunetrace.index._kernels`` (a stored
reference's arrays, read from the catalogue, a long query's choice of IVF lists and each
vector's best neighbours in them; it also holds the fast-math flags every kernel is compiled
with), :mod:`tunetrace.alignment_kernels` and :mod:`tunetrace.verification_kernels`.
:func:`compile_kernels` compiles all of them up front.
"""

from __future__ import annotations

import numpy as np

from tunetrace import alignment_kernels, verification_kernels
from tunetrace.index import _kernels as catalogue_kernels


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
    alignment_kernels.chroma_cross_spectra(bins, bins[:3], weights, positions, positions)
    grid = np.ones(2, dtype=np.float64)
    transform = _read_only(np.zeros((3, 4), dtype=np.float64))
    ends = _read_only(np.array([1, 2], dtype=np.int64))
    alignment_kernels.chroma_grid_search(
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
    raw, white = verification_kernels.aligned_frames(frames, positions, 3)
    # called from the kernels above; compiled for Python callers too, as every kernel is
    row_of, white_rows = verification_kernels.whitened_rows(frames, positions[None], 3)
    verification_kernels.interpolate_rows(frames, white_rows, row_of, positions, raw, white)
    catalogue_kernels.chroma_and_blurred_frames(frames[:, :3].T.copy(), weights)
    # a reference stored in tiles, derived a part at a time
    catalogue_kernels.moving_average_part(frames, 1, 3, 3)
    catalogue_kernels.frames_times_table(frames, _read_only(frames[:, :2].T.copy()))
    catalogue_kernels.stored_spectrum_arrays(
        _read_only(np.zeros((6, 3), dtype=np.uint8)),
        _read_only(np.zeros(256, dtype=np.float32)),
        _read_only(weights[:1].repeat(6)),
        3,
    )
    query = np.zeros((3, 8), dtype=np.float32)
    verification_kernels.shifted_fit(
        raw, white, 0.0, 0, 8, query, query[:1], query[:1], weights, True, True
    )
    verification_kernels.alignment_objectives(
        frames, grid, grid, grid, weights, 3, query, query[:1]
    )
    verification_kernels.spectral_curves(frames, np.zeros((2, 3)), 3, 0.0, 0, 8, query, weights)
    verification_kernels.paired_bins(8, 0.0)  # also called on its own, by the spectral fit
    catalogue_kernels.largest_per_row(frames, 2)  # a long query's IVF lists
    catalogue_kernels.keep_best(  # an IVF-Flat index's lists, searched here
        np.zeros((3, 2), dtype=np.float32),
        np.zeros((3, 2), dtype=np.int64),
        np.arange(2, dtype=np.int64),
        np.zeros((2, 4), dtype=np.float32),
        np.arange(4, dtype=np.int64),
    )


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only copy of ``array`` (a Numba argument type of its own)."""
    copy = array.copy()
    copy.flags.writeable = False
    return copy
