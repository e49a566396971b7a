"""Pitch- and shift-tolerant patch vectors from chroma, and tempo resampling of chroma.

A patch is ``patch_frames`` frames of chroma. Its vector is the magnitude of the patch's
2-D Fourier transform (Bertin-Mahieux & Ellis 2012): a circular roll along the chroma axis
(a pitch shift) leaves it unchanged, and a small shift along time changes it little. Tempo
is handled outside the vector: a query is resampled along time to each candidate tempo ratio
before its patches are embedded (multi-rate matching, as in Müller's audio matching).
"""

from __future__ import annotations

import functools

import numpy as np
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import normalise_frames


def patch_starts(n_frames: int, *, patch_frames: int, hop: int) -> np.ndarray:
    """First frame of each patch of a sequence.

    A sequence shorter than one patch yields the single start 0 (it is zero-padded).

    Parameters
    ----------
    n_frames : int >= 0
    patch_frames : int > 0
    hop : int > 0

    Returns
    -------
    starts : np.ndarray [shape=(n_patches,), dtype=int64]
    """
    if n_frames <= patch_frames:
        return np.zeros(1 if n_frames > 0 else 0, dtype=np.int64)
    return np.arange(0, n_frames - patch_frames + 1, hop, dtype=np.int64)


def embed_patches(
    chroma: np.ndarray, starts: np.ndarray, *, params: FingerprintParams
) -> np.ndarray:
    """Embed chroma patches as L2-normalised 2-D Fourier magnitude vectors.

    Parameters
    ----------
    chroma : np.ndarray [shape=(bins_per_octave, n_frames)]
        Frame-normalised chroma (see :func:`chroma_from_spectrum`).
    starts : np.ndarray [shape=(n_patches,)]
        First frame of each patch.
    params : FingerprintParams

    Returns
    -------
    vectors : np.ndarray [shape=(n_patches, params.embedding_dim), dtype=float32]
        Zero-mean, unit-norm vectors: their dot product is a correlation.
    """
    n_bins, n_frames = chroma.shape
    width = params.patch_frames
    if n_frames < width:
        chroma = np.pad(chroma, ((0, 0), (0, width - n_frames)))
    chroma_dft, time_dft = _dft_matrices(
        n_bins, width, params.embed_chroma_coeffs, params.embed_time_coeffs
    )
    # |F(k, l)| = |F(-k, -l)| for real patches: chroma frequencies 1..K and time frequencies
    # -(L-1)..(L-1) cover every distinct low-frequency coefficient (k = 0 is zero because
    # every chroma frame has zero mean). Only those are computed: the chroma transform of
    # every frame once (patches overlap), then the time transform of each patch's window of
    # it, both as matrix products (a fraction of the cost of a full 2-D FFT per patch).
    coefficients = chroma_dft @ chroma  # (K, n_frames)
    windows = coefficients[:, starts[:, None] + np.arange(width)[None, :]]  # (K, patches, width)
    n_chroma, n_patches = windows.shape[:2]
    products = windows.reshape(n_chroma * n_patches, width) @ time_dft  # one matrix product
    magnitudes = np.abs(products).reshape(n_chroma, n_patches, -1).transpose(1, 0, 2)
    vectors = np.sqrt(magnitudes.reshape(len(starts), -1))
    vectors -= vectors.mean(axis=1, keepdims=True)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    return vectors.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _dft_matrices(
    n_bins: int, width: int, chroma_coeffs: int, time_coeffs: int
) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows of the DFT along chroma bins (frequencies ``1 .. chroma_coeffs``) and the
    kept columns of the DFT along a patch's frames (``0 .. L - 1`` then ``-(L - 1) .. -1``)."""
    chroma_frequencies = np.arange(1, chroma_coeffs + 1)
    time_frequencies = np.r_[0:time_coeffs, -time_coeffs + 1 : 0]
    chroma_dft = np.exp(-2j * np.pi * np.outer(chroma_frequencies, np.arange(n_bins)) / n_bins)
    time_dft = np.exp(-2j * np.pi * np.outer(np.arange(width), time_frequencies) / width)
    chroma_dft = chroma_dft.astype(np.complex64)
    time_dft = time_dft.astype(np.complex64)
    chroma_dft.flags.writeable = False
    time_dft.flags.writeable = False
    return chroma_dft, time_dft


def resample_time(features: np.ndarray, rate: float, *, normalise: bool = True) -> np.ndarray:
    """Stretch a feature sequence along time by ``rate`` (linear interpolation).

    Parameters
    ----------
    features : np.ndarray [shape=(n_features, n_frames)]
    rate : float > 0
        Output length is ``round(n_frames * rate)``; ``rate`` > 1 lengthens, so a query that
        plays ``rate`` times faster than its reference is brought back to reference tempo.
    normalise : bool
        Normalise every output frame (zero mean, unit norm).

    Returns
    -------
    resampled : np.ndarray [shape=(n_features, round(n_frames * rate)), dtype=float32]
        Frame-normalised again when ``normalise`` is set.
    """
    n_out = max(1, round(features.shape[1] * rate))
    out = interpolate_frames(features, np.arange(n_out) / rate)
    return normalise_frames(out) if normalise else out.astype(np.float32)


def interpolate_frames(features: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``features[:, t]`` at fractional frames (clipped to the ends).

    Parameters
    ----------
    features : np.ndarray [shape=(n_features, n_frames)]
    positions : np.ndarray [shape=(n,)]
        Fractional frame numbers.

    Returns
    -------
    interpolated : np.ndarray [shape=(n_features, n)]
    """
    last = features.shape[1] - 1
    clipped = np.clip(positions, 0, last)
    left = np.floor(clipped).astype(np.int64)
    right = np.minimum(left + 1, last)
    frac = (clipped - left).astype(np.float32)
    return features[:, left] * (1 - frac) + features[:, right] * frac
