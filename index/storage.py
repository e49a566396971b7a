"""Compact storage of feature arrays as bytes (for SQLite blobs)."""

from __future__ import annotations

import functools

import numpy as np
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import FREQUENCY_BLUR, chroma_weights, moving_average_frames
from tunetrace.index._kernels import chroma_and_blurred_frames, stored_spectrum_arrays


def quantise_spectrum(spectrum: np.ndarray) -> tuple[bytes, float]:
    """Store a non-negative spectrogram as 8-bit codes and one scale factor.

    Parameters
    ----------
    spectrum : np.ndarray [shape=(n_bins, n_frames)]

    Returns
    -------
    codes : bytes
        ``n_bins * n_frames`` unsigned bytes, row-major.
    scale : float
        Value of code 255.
    """
    scale = float(max(spectrum.max(initial=0.0), 1e-6))
    codes = np.clip(np.round(spectrum / scale * 255.0), 0, 255).astype(np.uint8)
    return codes.tobytes(), scale


def dequantise_spectrum(codes: bytes, scale: float, n_bins: int) -> np.ndarray:
    """Inverse of :func:`quantise_spectrum`, shape ``(n_bins, n_frames)``, float32."""
    array = np.frombuffer(codes, dtype=np.uint8).reshape(n_bins, -1)
    return array.astype(np.float32) * np.float32(scale / 255.0)


def vectors_to_bytes(vectors: np.ndarray) -> bytes:
    """Patch vectors as float16 bytes."""
    return np.ascontiguousarray(vectors, dtype=np.float16).tobytes()


def vectors_from_bytes(blob: bytes, dim: int) -> np.ndarray:
    """Inverse of :func:`vectors_to_bytes`, shape ``(n, dim)``, float32."""
    return np.frombuffer(blob, dtype=np.float16).reshape(-1, dim).astype(np.float32)


def features_from_codes(codes: bytes, scale: float, params: FingerprintParams) -> Features:
    """A stored reference's features, with the arrays verification reads already derived.

    Equals ``features_from_spectrum(dequantise_spectrum(codes, scale, params.n_bins))``
    with its ``spectrum_frames`` and ``chroma_bin_spectrum`` computed, to float rounding,
    in a fraction of the time (:func:`~tunetrace.index._kernels.stored_spectrum_arrays`).

    Parameters
    ----------
    codes : bytes
        From :func:`quantise_spectrum`.
    scale : float
    params : FingerprintParams

    Returns
    -------
    features : Features
    """
    array = np.frombuffer(codes, dtype=np.uint8).reshape(params.n_bins, -1)
    spectrum, folded, frames = stored_spectrum_arrays(
        array, np.float32(scale / 255.0), chroma_weights(params), params.bins_per_octave
    )
    chroma, blurred = chroma_and_blurred_frames(
        moving_average_frames(folded, params.chroma_smooth_frames),
        np.asarray(FREQUENCY_BLUR, dtype=np.float32),
    )
    # the real FFT along bins as one matrix product, real and imaginary parts interleaved
    bin_spectrum = (blurred @ _bin_transform(params.bins_per_octave)).view(np.complex64)
    features = Features(spectrum=spectrum, chroma=chroma, frame_rate_hz=params.frame_rate_hz)
    # a cached property keeps its value in the instance's dict: these are what they compute
    vars(features)["spectrum_frames"] = frames
    vars(features)["chroma_bin_spectrum"] = bin_spectrum
    return features


@functools.lru_cache(maxsize=4)
def _bin_transform(n_bins: int) -> np.ndarray:
    """Columns ``cos``, ``-sin`` of ``2 pi b k / n_bins`` for bins ``b`` (rows) and each
    frequency ``k = 0 .. n_bins // 2`` in turn: frames times this matrix, viewed as complex
    numbers, are their real FFT along bins."""
    angles = 2 * np.pi * np.outer(np.arange(n_bins), np.arange(n_bins // 2 + 1)) / n_bins
    table = np.empty((n_bins, 2 * angles.shape[1]), dtype=np.float32)
    table[:, 0::2] = np.cos(angles)
    table[:, 1::2] = -np.sin(angles)
    table.flags.writeable = False
    return table
