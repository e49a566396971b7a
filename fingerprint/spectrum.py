"""Log-frequency spectrogram and fine-resolution chroma.

A log-frequency spectrogram with ``bins_per_octave`` bins per octave makes a pitch shift a
translation along the frequency axis; folding its octaves gives chroma, where a pitch shift is a
circular shift. Both are computed from one STFT through a sparse triangular filterbank, which
is faster than a constant-Q transform at the resolution needed here.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.signal
import scipy.sparse
from tunetrace.fingerprint.params import FingerprintParams


@lru_cache(maxsize=8)
def log_frequency_filterbank(
    *,
    sample_rate_hz: int,
    n_fft: int,
    fmin_hz: float,
    n_bins: int,
    bins_per_octave: int,
) -> scipy.sparse.csr_matrix:
    """Triangular filters mapping STFT bins to log-spaced frequency bins.

    Each filter is a triangle centred on ``fmin_hz * 2 ** (k / bins_per_octave)`` whose half
    width is one log bin, widened to the STFT bin spacing where the STFT is coarser (low
    frequencies), so every log bin receives energy. Rows sum to 1.

    Parameters
    ----------
    sample_rate_hz : int > 0
    n_fft : int > 0
    fmin_hz : float > 0
        Centre of the lowest bin.
    n_bins : int > 0
    bins_per_octave : int > 0

    Returns
    -------
    filterbank : scipy.sparse.csr_matrix [shape=(n_bins, 1 + n_fft // 2)]
    """
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate_hz)
    spacing_hz = sample_rate_hz / n_fft
    centres = fmin_hz * 2.0 ** (np.arange(n_bins) / bins_per_octave)
    half_widths = np.maximum(centres * (2.0 ** (1.0 / bins_per_octave) - 1.0), spacing_hz)
    weights = 1.0 - np.abs(fft_freqs[None, :] - centres[:, None]) / half_widths[:, None]
    weights = np.clip(weights, 0.0, None)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return scipy.sparse.csr_matrix(weights.astype(np.float32))


#: Frames transformed at a time: a few megabytes of work at once, however long the audio.
STFT_BLOCK_FRAMES = 256


def stft_magnitude(samples: np.ndarray, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Magnitude of a Hann-windowed STFT with centred frames (zero padding at both ends).

    The same frames as ``librosa.stft(samples, n_fft=n_fft, hop_length=hop_length)`` with its
    default zero padding, computed with NumPy alone so that no command-line run pays for a
    JIT warm-up on its first call. Frames are transformed in blocks of
    :data:`STFT_BLOCK_FRAMES` and each block's magnitudes written straight into their
    columns: a 20-minute upload needs no transient copies of its whole spectrum.

    Parameters
    ----------
    samples : np.ndarray [shape=(n,)]
    n_fft : int > 0
    hop_length : int > 0

    Returns
    -------
    magnitude : np.ndarray [shape=(1 + n_fft // 2, 1 + n // hop_length), dtype=float32]
        C-contiguous.
    """
    padded = np.pad(np.asarray(samples, dtype=np.float32), n_fft // 2)
    if len(padded) < n_fft:
        padded = np.pad(padded, (0, n_fft - len(padded)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    magnitude = np.empty((n_fft // 2 + 1, len(frames)), dtype=np.float32)
    for first in range(0, len(frames), STFT_BLOCK_FRAMES):
        block = slice(first, first + STFT_BLOCK_FRAMES)
        np.abs(scipy.fft.rfft(frames[block] * window, axis=1), out=magnitude[:, block].T)
    return magnitude


def log_spectrogram(samples: np.ndarray, *, params: FingerprintParams) -> np.ndarray:
    """Compressed log-frequency magnitude spectrogram.

    Parameters
    ----------
    samples : np.ndarray [shape=(n,), dtype=float32]
        Mono audio at ``params.sample_rate_hz``.
    params : FingerprintParams

    Returns
    -------
    spectrum : np.ndarray [shape=(params.n_bins, n_frames), dtype=float32]
        ``log1p(log_gain * magnitude)``, frame ``t`` centred at ``t / params.frame_rate_hz`` s.
    """
    magnitude = stft_magnitude(samples, n_fft=params.n_fft, hop_length=params.hop_length)
    magnitude *= np.float32(2.0 / params.n_fft)  # in place (a power of two: exact)
    filterbank = log_frequency_filterbank(
        sample_rate_hz=params.sample_rate_hz,
        n_fft=params.n_fft,
        fmin_hz=params.fmin_hz,
        n_bins=params.n_bins,
        bins_per_octave=params.bins_per_octave,
    )
    return np.log1p(params.log_gain * (filterbank @ magnitude)).astype(np.float32)


def chroma_from_spectrum(spectrum: np.ndarray, *, params: FingerprintParams) -> np.ndarray:
    """Fold a log-frequency spectrogram into smoothed fine-resolution chroma.

    Bins are weighted by :func:`chroma_weights` before their octaves are summed. The result
    is smoothed along time with a moving average of ``params.chroma_smooth_frames`` frames
    (CENS-style, Müller, Kurth & Clausen 2005) and normalised per frame: zero mean and unit L2
    norm, so a dot product of two frames is their correlation and loudness does not count.

    Parameters
    ----------
    spectrum : np.ndarray [shape=(params.n_bins, n_frames)]
    params : FingerprintParams

    Returns
    -------
    chroma : np.ndarray [shape=(params.bins_per_octave, n_frames), dtype=float32]
        Bin ``b`` holds the pitch class ``fmin_hz * 2 ** (b / bins_per_octave)``; a pitch
        shift of ``s`` semitones rolls it by ``s * bins_per_octave / 12`` bins.
    """
    return smooth_chroma(fold_chroma(spectrum, params=params), params.chroma_smooth_frames)


def fold_chroma(spectrum: np.ndarray, *, params: FingerprintParams) -> np.ndarray:
    """Weighted octave sum of a log-frequency spectrogram, shape ``(bins_per_octave,
    n_frames)``: :func:`chroma_from_spectrum` (same parameters) before smoothing and
    normalisation, so louder frames have larger values."""
    weighted = spectrum * chroma_weights(params)[:, None]
    return weighted.reshape(-1, params.bins_per_octave, spectrum.shape[1]).sum(axis=0)


def smooth_chroma(folded: np.ndarray, smooth_frames: int) -> np.ndarray:
    """Moving average of folded chroma over ``smooth_frames`` frames, then per-frame
    normalisation (zero mean, unit L2 norm).

    Parameters
    ----------
    folded : np.ndarray [shape=(bins_per_octave, n_frames)]
        From :func:`fold_chroma`.
    smooth_frames : int > 0

    Returns
    -------
    chroma : np.ndarray [shape=(bins_per_octave, n_frames), dtype=float32]
    """
    return normalise_frames(moving_average_frames(folded, smooth_frames))


def moving_average_frames(features: np.ndarray, width: int) -> np.ndarray:
    """Moving average along time over ``width`` frames, zero-padded at both ends and centred
    as ``np.convolve(..., mode="same")`` is (the smoothing of :func:`smooth_chroma`).

    Parameters
    ----------
    features : np.ndarray [shape=(n_features, n_frames)]
    width : int > 0

    Returns
    -------
    averaged : np.ndarray [shape=(n_features, n_frames)]
        ``features`` itself when ``width`` is 1 or there are no frames.
    """
    if width <= 1 or features.shape[1] == 0:
        return features
    return scipy.ndimage.uniform_filter1d(features, width, axis=1, mode="constant", cval=0.0)


#: Blur along frequency of what verification compares, [1, 2, 1] / 4 over neighbouring bins.
#: Waveform-similarity stretchers (WSOLA: sox ``tempo``, FFmpeg ``atempo``) splice overlapping
#: grains; the splices smear each partial over neighbouring 1/3-semitone bins. Blurred, those
#: copies fit their references much better while unrelated pairs move little.
FREQUENCY_BLUR = (0.25, 0.5, 0.25)


def blur_bins(features: np.ndarray, *, circular: bool, axis: int = 0) -> np.ndarray:
    """Convolve every frame with :data:`FREQUENCY_BLUR` along its bins.

    Parameters
    ----------
    features : np.ndarray [shape=(n_bins, n_frames) or (n_frames, n_bins)]
    circular : bool
        Wrap around the ends (chroma, whose bins form a circle) or repeat the edge bins
        (a spectrum).
    axis : int
        The axis of the bins: 0 (bins first) or 1 (frames first).

    Returns
    -------
    blurred : np.ndarray [same shape as ``features``, dtype=float32]
    """
    kernel = np.asarray(FREQUENCY_BLUR, dtype=np.float32)
    mode = "wrap" if circular else "nearest"
    features = np.asarray(features, dtype=np.float32)
    return scipy.ndimage.convolve1d(features, kernel, axis=axis, mode=mode)


@lru_cache(maxsize=8)
def chroma_weights(params: FingerprintParams) -> np.ndarray:
    """Weight of each log-frequency bin in chroma: a raised-cosine window over log frequency.

    The window rises from 0 at ``params.chroma_fmin_hz`` to 1 half-way (in octaves) to
    ``params.chroma_fmax_hz`` and falls back to 0 there: the middle octaves, where the
    partials that set a pitch class are strongest, weigh most; low bins, blurred by the
    STFT, and the top octave, crowded with noise-like partials, weigh little; and a pitch
    shift, which moves every partial along the window, changes their weights gradually
    instead of dropping them at a hard band edge.

    Parameters
    ----------
    params : FingerprintParams

    Returns
    -------
    weights : np.ndarray [shape=(params.n_bins,), dtype=float32]
    """
    octaves = np.arange(params.n_bins) / params.bins_per_octave
    low = np.log2(params.chroma_fmin_hz / params.fmin_hz)
    high = np.log2(params.chroma_fmax_hz / params.fmin_hz)
    position = (octaves - low) / (high - low)
    inside = (position > 0) & (position < 1)
    weights = np.where(inside, np.sin(np.pi * position) ** 2, 0.0).astype(np.float32)
    weights.flags.writeable = False  # shared by every call with these parameters
    return weights


def normalise_frames(features: np.ndarray) -> np.ndarray:
    """Give every frame (column) zero mean and unit L2 norm; silent frames stay zero.

    Parameters
    ----------
    features : np.ndarray [shape=(n_features, n_frames)]

    Returns
    -------
    normalised : np.ndarray [shape=(n_features, n_frames), dtype=float32]
    """
    centred = features - features.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=0, keepdims=True)
    return (centred / np.maximum(norms, 1e-6)).astype(np.float32)
