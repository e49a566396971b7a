"""From decoded audio to the features tunetrace stores and matches."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from tunetrace.fingerprint.decode import Audio
from tunetrace.fingerprint.embedding import embed_patches, patch_starts
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import (
    blur_bins,
    chroma_from_spectrum,
    log_spectrogram,
    normalise_frames,
)

from tunetrace.errors import AudioTooShortError

#: A frame is "silent" when its loudest log bin is below this compressed magnitude.
SILENCE_LEVEL = 0.05


@dataclass(frozen=True)
class Features:
    """Feature sequences of one recording.

    Attributes
    ----------
    spectrum : np.ndarray [shape=(n_bins, n_frames), dtype=float32]
        Compressed log-frequency spectrogram (verification).
    chroma : np.ndarray [shape=(bins_per_octave, n_frames), dtype=float32]
        Smoothed, frame-normalised chroma (candidate search, pitch estimate).
    frame_rate_hz : float
        Frames per second.
    """

    spectrum: np.ndarray
    chroma: np.ndarray
    frame_rate_hz: float

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.spectrum.shape[1])

    @property
    def duration_s(self) -> float:
        """Duration covered by the frames, in seconds."""
        return self.n_frames / self.frame_rate_hz

    @cached_property
    def verification_spectrum(self) -> np.ndarray:
        """The spectrum as verification compares it: blurred along frequency
        (:func:`~tunetrace.fingerprint.spectrum.blur_bins`).

        Returns
        -------
        spectrum : np.ndarray [shape=(n_bins, n_frames), dtype=float32]
        """
        return blur_bins(self.spectrum, circular=False)

    @cached_property
    def chroma_bin_spectrum(self) -> np.ndarray:
        """Fourier transform along its bins of every frame of the chroma as verification
        compares it (blurred around the pitch circle, then normalised again), frames first.

        Circular cross-correlations over pitch rolls are products in this domain; a
        reference's transform is computed once and reused by every alignment with it.

        Returns
        -------
        spectrum : np.ndarray [shape=(n_frames, bins_per_octave // 2 + 1), dtype=complex64]
        """
        chroma = normalise_frames(blur_bins(self.chroma, circular=True))
        return np.ascontiguousarray(np.fft.rfft(chroma, axis=0).T, dtype=np.complex64)

    @cached_property
    def spectrum_frames(self) -> np.ndarray:
        """:attr:`verification_spectrum` frames first (each frame's bins contiguous), as
        verification reads a reference.

        Returns
        -------
        spectrum : np.ndarray [shape=(n_frames, n_bins), dtype=float32]
        """
        return np.ascontiguousarray(blur_bins(self.spectrum.T, circular=False, axis=1))

    @property
    def nbytes(self) -> int:
        """Bytes held by the feature arrays, the derived ones computed so far included."""
        return sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray))

    def frames(self, first: int, stop: int) -> Features:
        """The features of frames ``first`` to ``stop - 1`` (a part of the recording), views of
        these; derived arrays already made here are sliced, not made again.

        Parameters
        ----------
        first, stop : int
            Frame range, half-open, ``0 <= first < stop <= n_frames``.
        """
        if not 0 <= first < stop <= self.n_frames:
            raise ValueError(f"frames {first}:{stop} are not inside 0:{self.n_frames}")
        part = Features(
            spectrum=self.spectrum[:, first:stop],
            chroma=self.chroma[:, first:stop],
            frame_rate_hz=self.frame_rate_hz,
        )
        # every derived array is computed frame by frame: those already made are sliced (the
        # same values; a one-frame part's own FFT may round its last bit otherwise)
        derived = vars(self)
        if "verification_spectrum" in derived:
            part.__dict__["verification_spectrum"] = self.verification_spectrum[:, first:stop]
        for name in ("chroma_bin_spectrum", "spectrum_frames"):  # frames first
            if name in derived:
                part.__dict__[name] = derived[name][first:stop]
        return part

    def frames_read(self, first: float, stop: float, *, chroma: bool = True) -> Features:
        """Features whose arrays hold frames ``first`` to ``stop - 1`` at least, for code
        that reads no others.

        Features made from audio hold every frame and return themselves. A stored reference
        read in parts (the catalogue's tiled packing) derives the frames asked for, and
        returns its arrays as they stand: frames not asked for may hold NaN.

        Parameters
        ----------
        first, stop : float
            Frame range, half-open, clipped to the recording (fractional ends are widened to
            whole frames; a range that is not a number reads every frame).
        chroma : bool
            Whether the chroma arrays (:attr:`chroma`, :attr:`chroma_bin_spectrum`) are read
            too, or only the spectra (:attr:`spectrum`, :attr:`spectrum_frames`).

        Returns
        -------
        features : Features
        """
        return self

    def positions_read(self, positions: np.ndarray) -> Features:
        """Features whose spectra (:attr:`spectrum`, :attr:`spectrum_frames`) hold the
        frames around every one of ``positions`` at least, as :meth:`frames_read` does for a
        range.

        Parameters
        ----------
        positions : np.ndarray
            Fractional frames, any shape, clipped to the recording; a position reads its
            frame and the next.

        Returns
        -------
        features : Features
        """
        return self

    def active_frames(self) -> np.ndarray:
        """Boolean mask of frames that are not silent, shape ``(n_frames,)``."""
        return self.spectrum.max(axis=0) > SILENCE_LEVEL


def features_from_spectrum(spectrum: np.ndarray, *, params: FingerprintParams) -> Features:
    """Build :class:`Features` from a log-frequency spectrogram.

    Parameters
    ----------
    spectrum : np.ndarray [shape=(params.n_bins, n_frames)]
    params : FingerprintParams

    Returns
    -------
    features : Features
    """
    spectrum = np.asarray(spectrum, dtype=np.float32)
    chroma = chroma_from_spectrum(spectrum, params=params)
    return Features(spectrum=spectrum, chroma=chroma, frame_rate_hz=params.frame_rate_hz)


def extract_features(
    audio: Audio, *, params: FingerprintParams, min_duration_s: float | None = None
) -> Features:
    """Compute the features of decoded audio.

    Parameters
    ----------
    audio : Audio
        Mono audio at ``params.sample_rate_hz``.
    params : FingerprintParams
    min_duration_s : float or None
        Refuse audio with less than this much non-silent material (default
        ``params.min_query_s``).

    Returns
    -------
    features : Features

    Raises
    ------
    AudioTooShortError
        If the audio holds less than ``min_duration_s`` of sound.
    """
    if audio.sample_rate_hz != params.sample_rate_hz:
        raise ValueError(
            f"audio is at {audio.sample_rate_hz} Hz, features need {params.sample_rate_hz} Hz"
        )
    minimum = params.min_query_s if min_duration_s is None else min_duration_s
    if audio.duration_s < minimum:
        raise AudioTooShortError(
            f"{audio.duration_s:.1f} s of audio is shorter than the minimum of {minimum:.1f} s"
        )
    features = features_from_spectrum(log_spectrogram(audio.samples, params=params), params=params)
    sounding_s = features.active_frames().sum() / features.frame_rate_hz
    if sounding_s < minimum:
        raise AudioTooShortError(
            f"only {sounding_s:.1f} s of the audio is not silent; at least {minimum:.1f} s needed"
        )
    return features


def reference_vectors(
    features: Features, *, params: FingerprintParams
) -> tuple[np.ndarray, np.ndarray]:
    """Patch vectors of a reference at its own tempo.

    Parameters
    ----------
    features : Features
    params : FingerprintParams

    Returns
    -------
    starts : np.ndarray [shape=(n_patches,), dtype=int64]
        First frame of each patch.
    vectors : np.ndarray [shape=(n_patches, params.embedding_dim), dtype=float32]
    """
    starts = patch_starts(
        features.n_frames, patch_frames=params.patch_frames, hop=params.reference_patch_hop
    )
    return starts, embed_patches(features.chroma, starts, params=params)
