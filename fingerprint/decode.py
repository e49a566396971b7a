"""Decode any common audio file to mono float32 at the analysis sample rate.

Decoders are tried in order: libsndfile (through ``soundfile``: WAV, FLAC, OGG/Vorbis, MP3)
and then FFmpeg's libraries (through ``av``: Opus, AAC/M4A and anything libsndfile rejects).
Some real Vorbis files are read by one and rejected by the other, so both are always tried.
Resampling uses ``soxr`` (high quality); nothing shells out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from tunetrace.errors import AudioDecodeError, AudioTooLongError

logger = logging.getLogger(__name__)

#: Default longest input accepted, in seconds (overridable per call).
DEFAULT_MAX_DURATION_S = 1200.0
#: Decoding of a span starts this long before it (see :func:`load_audio_span`) ...
SEEK_PREROLL_S = 1.0
#: ... and at least this long before the end of the file.
SEEK_END_MARGIN_S = 30.0


@dataclass(frozen=True)
class Audio:
    """Decoded mono audio.

    Attributes
    ----------
    samples : np.ndarray [shape=(n,), dtype=float32]
        Mono samples in [-1, 1].
    sample_rate_hz : int
        Sample rate of ``samples``.
    """

    samples: np.ndarray
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return len(self.samples) / self.sample_rate_hz


def load_audio(
    path: str | Path,
    *,
    sample_rate_hz: int,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
) -> Audio:
    """Decode a file to mono float32 at ``sample_rate_hz``.

    Parameters
    ----------
    path : str or Path
        Audio file (WAV, FLAC, OGG/Vorbis, Opus, MP3, AAC/M4A, ...).
    sample_rate_hz : int > 0
        Output sample rate.
    max_duration_s : float or None
        Refuse files longer than this many seconds; ``None`` for no limit.

    Returns
    -------
    audio : Audio
        Mono audio at ``sample_rate_hz``.

    Raises
    ------
    AudioDecodeError
        If the file is missing, empty, or no decoder can read it.
    AudioTooLongError
        If the audio is longer than ``max_duration_s``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: the file is empty")
    errors: list[str] = []
    for decoder in (_decode_soundfile, _decode_av):
        try:
            samples, native_rate = decoder(path, max_duration_s)
        except AudioTooLongError:
            raise
        except Exception as exc:  # decoders raise many unrelated types on bad data
            errors.append(f"{decoder.__name__.removeprefix('_decode_')}: {exc}")
            continue
        if samples.size == 0:
            errors.append(f"{decoder.__name__.removeprefix('_decode_')}: no audio samples")
            continue
        return Audio(_resample(samples, native_rate, sample_rate_hz), sample_rate_hz)
    logger.debug("could not decode %s: %s", path, "; ".join(errors))
    raise AudioDecodeError(f"{path.name}: not a readable audio file ({'; '.join(errors)})")


def seekable_length(path: str | Path) -> tuple[int, int] | None:
    """Length and sample rate of a file libsndfile can read and seek in, from its header.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    length : tuple of (n_samples, native_rate_hz) or None
        ``None`` when libsndfile cannot open the file, cannot seek in it or does not know its
        length in advance (callers then decode the whole file with :func:`load_audio`).
    """
    try:
        with soundfile.SoundFile(str(path)) as handle:
            if handle.seekable() and handle.frames > 0 and handle.samplerate > 0:
                return int(handle.frames), int(handle.samplerate)
    except Exception as exc:  # any failure here means "decode the whole file"
        logger.debug("%s: no seekable length (%s)", path, exc)
    return None


def load_audio_span(
    path: str | Path, *, sample_rate_hz: int, start_s: float, duration_s: float
) -> Audio:
    """Decode only ``duration_s`` seconds from ``start_s`` of a seekable file.

    Seeking skips the rest of the file: matching three 20-s excerpts of a 5-minute track
    decodes about a fifth of it. Only for files :func:`seekable_length` accepts. libsndfile's
    Ogg/Vorbis seeks are not always sample-exact (the first block decoded after a seek can be
    wrong, and seeks into the last page of some files land wrongly), so decoding starts
    :data:`SEEK_PREROLL_S` before the span and never closer than :data:`SEEK_END_MARGIN_S` to
    the end; what is read from there on is what a whole-file decode gives.

    Parameters
    ----------
    path : str or Path
    sample_rate_hz : int > 0
        Output sample rate.
    start_s, duration_s : float
        The span, in seconds of the file (a span past the end is cut short).

    Returns
    -------
    audio : Audio
        Mono audio at ``sample_rate_hz``.

    Raises
    ------
    AudioDecodeError
        If libsndfile cannot read the span.
    """
    try:
        with soundfile.SoundFile(str(path)) as handle:
            native_rate = int(handle.samplerate)
            start = max(0, round(start_s * native_rate))
            landing = max(
                0,
                min(
                    start - round(SEEK_PREROLL_S * native_rate),
                    handle.frames - round(SEEK_END_MARGIN_S * native_rate),
                ),
            )
            handle.seek(landing)
            wanted = start - landing + round(duration_s * native_rate)
            data = handle.read(wanted, dtype="float32", always_2d=True)[start - landing :]
    except Exception as exc:  # libsndfile raises several types on bad data
        message = f"{Path(path).name}: cannot read {start_s:.1f} s onwards ({exc})"
        raise AudioDecodeError(message) from exc
    if len(data) == 0:
        raise AudioDecodeError(f"{Path(path).name}: no audio samples from {start_s:.1f} s onwards")
    return Audio(_resample(_mix_down(data), native_rate, sample_rate_hz), sample_rate_hz)


def _too_long(path: Path, duration_s: float, max_duration_s: float | None) -> None:
    if max_duration_s is not None and duration_s > max_duration_s:
        raise AudioTooLongError(
            f"{path.name}: {duration_s:.0f} s of audio is longer than the limit of "
            f"{max_duration_s:.0f} s"
        )


def _decode_soundfile(path: Path, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    with soundfile.SoundFile(str(path)) as handle:
        native_rate = int(handle.samplerate)
        if handle.frames > 0:
            _too_long(path, handle.frames / native_rate, max_duration_s)
        data = handle.read(dtype="float32", always_2d=True)
    _too_long(path, len(data) / native_rate, max_duration_s)
    return _mix_down(data), native_rate


def _decode_av(path: Path, max_duration_s: float | None) -> tuple[np.ndarray, int]:
    import av  # imported lazily: only needed for formats libsndfile cannot read

    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioDecodeError("no audio stream")
        stream = container.streams.audio[0]
        native_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if native_rate <= 0:
            raise AudioDecodeError("unknown sample rate")
        if container.duration is not None:
            _too_long(path, container.duration / 1_000_000, max_duration_s)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=native_rate)
        chunks: list[np.ndarray] = []
        n_samples = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1)
                chunks.append(chunk)
                n_samples += chunk.size
            _too_long(path, n_samples / native_rate, max_duration_s)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return samples, native_rate


def _mix_down(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``(n, channels)`` samples (a matrix product: fast)."""
    channels = data.shape[1]
    if channels == 1:
        return data[:, 0]
    return data @ np.full(channels, 1.0 / channels, dtype=np.float32)


def _resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    if from_hz == to_hz:
        return np.ascontiguousarray(samples, dtype=np.float32)
    return soxr.resample(samples, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)
