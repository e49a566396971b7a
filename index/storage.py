"""Compact storage of feature arrays as bytes (for SQLite blobs)."""

from __future__ import annotations

import numpy as np


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
