"""A stored reference read back: its features and patch vectors from its stored spectrum."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from tunetrace.fingerprint.embedding import patch_starts
from tunetrace.fingerprint.features import Features, features_from_spectrum, reference_vectors
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import FREQUENCY_BLUR, chroma_weights, moving_average_frames
from tunetrace.index._kernels import chroma_and_blurred_frames, stored_spectrum_arrays
from tunetrace.index.spectrum_codec import SpectrumCodec
from tunetrace.index.tiled_features import TiledFeatures


def stored_reference_vectors(
    blob: bytes, scale: float, codec: SpectrumCodec, params: FingerprintParams, n_frames: int
) -> np.ndarray:
    """The patch vectors of a stored spectrum, as the catalogue indexes them.

    Computed from the stored (lossy) spectrum, not the original audio: the vectors follow
    from what SQLite holds, so an index rebuilt from it equals the one made at ingest and
    the vectors need not be stored beside the spectrum.

    Parameters
    ----------
    blob : bytes
    scale : float
    codec : SpectrumCodec
    params : FingerprintParams
    n_frames : int
        Frames the row records.

    Returns
    -------
    vectors : np.ndarray [shape=(n_patches, params.embedding_dim), dtype=float32]

    Raises
    ------
    ValueError
        If the blob is not a spectrum of that shape stored by ``codec``.
    """
    spectrum = codec.decode(blob, scale, params.n_bins, n_frames)
    stored = features_from_spectrum(spectrum, params=params)
    return reference_vectors(stored, params=params)[1]


def patch_count(n_frames: int, params: FingerprintParams) -> int:
    """Number of patch vectors of a reference of ``n_frames`` frames."""
    return len(
        patch_starts(n_frames, patch_frames=params.patch_frames, hop=params.reference_patch_hop)
    )


def vectors_to_bytes(vectors: np.ndarray) -> bytes:
    """Patch vectors as float16 bytes."""
    return np.ascontiguousarray(vectors, dtype=np.float16).tobytes()


def vectors_from_bytes(blob: bytes, dim: int) -> np.ndarray:
    """Inverse of :func:`vectors_to_bytes`, shape ``(n, dim)``, float32."""
    return np.frombuffer(blob, dtype=np.float16).reshape(-1, dim).astype(np.float32)


def stored_features(
    blob: bytes,
    scale: float,
    codec: SpectrumCodec,
    params: FingerprintParams,
    n_frames: int,
    *,
    on_damage: Callable[[ValueError], Exception] | None = None,
) -> Features:
    """A stored reference's features, with the arrays verification reads already derived.

    Equals ``features_from_spectrum(codec.decode(blob, scale, params.n_bins, n_frames))``, with its
    ``spectrum_frames`` and ``chroma_bin_spectrum`` computed, to float rounding, in a fraction
    of the time (:func:`~tunetrace.index._kernels.stored_spectrum_arrays`). A spectrum stored
    in tiles is decoded as it is read (:class:`~tunetrace.index.tiled_features.TiledFeatures`).

    Parameters
    ----------
    blob : bytes
        From :meth:`SpectrumCodec.encode`.
    scale : float
    codec : SpectrumCodec
        The codec that stored it.
    params : FingerprintParams
    n_frames : int
        Frames the row records.
    on_damage : callable, optional
        What a tiled spectrum's damaged tile raises, when it is read (see
        :class:`~tunetrace.index.tiled_features.TiledFeatures`).

    Returns
    -------
    features : Features

    Raises
    ------
    ValueError
        If the blob is not a spectrum ``codec`` stored with these parameters (a tiled one's
        tiles are checked as they are read).
    """
    if codec.tiled:
        return TiledFeatures(
            codec.tiles(blob, params.n_bins, n_frames),
            codec.levels(scale),
            params,
            _bin_transform(params.bins_per_octave),
            on_damage,
        )
    spectrum, folded, frames = stored_spectrum_arrays(
        codec.codes(blob, params.n_bins, n_frames),
        codec.levels(scale),
        chroma_weights(params),
        params.bins_per_octave,
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
