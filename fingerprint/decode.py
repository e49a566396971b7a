"""Decode any common audio file to mono float32 at the analysis sample rate.

Two decoders are tried: libsndfile (through ``soundfile``; first for WAV, FLAC and AIFF, which
it reads fastest) and FFmpeg's libraries (through ``av``; first for everything else: OGG/Vorbis,
MP3, Opus, AAC/M4A, where its decoders are faster). Some real Vorbis files are read by one and
rejected by the other, so both are always tried.
Resampling uses ``soxr`` (high quality); nothing shells out.

Decoding is bounded whatever a file's header claims: files with more than
:data:`MAX_CHANNELS` channels or a sample rate outside :data:`MIN_SAMPLE_RATE_HZ` ..
:data:`MAX_SAMPLE_RATE_HZ` are refused from their header, and samples are read, mixed down and
resampled :data:`BLOCK_FRAMES` frames at a time, so memory follows the mono output at the
analysis rate, never frames x channels of the whole file. Decoding stops as soon as the audio
passes the duration limit. Blocks give the same samples as decoding the file in one piece,
except with libsndfile's MPEG decoder (MP3), which gives different samples around some block
boundaries: MPEG audio is read in one piece, which the format bounds (at most 2 channels at
48 kHz) and which never holds more frames than the duration limit allows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

from tunetrace.errors import AudioDecodeError, AudioTooLongError, UnsupportedAudioError

logger = logging.getLogger(__name__)

#: Default longest input accepted, in seconds (overridable per call).
DEFAULT_MAX_DURATION_S = 1200.0
#: Decoding of a span starts this long before it (see :func:`load_audio_span`) ...
SEEK_PREROLL_S = 1.0
#: ... and at least this long before the end of the file.
SEEK_END_MARGIN_S = 30.0
#: Most channels accepted (7.1 surround); a header declaring more is refused.
MAX_CHANNELS = 8
#: Sample rates accepted, in Hz (telephone audio to high-resolution masters).
MIN_SAMPLE_RATE_HZ = 8_000
MAX_SAMPLE_RATE_HZ = 192_000
#: Packets in a row FFmpeg cannot decode before a compressed stream is taken to end there.
MAX_DAMAGED_PACKETS = 64
#: Frames read, mixed down and resampled at a time (at most 2 MB of float32 at 8 channels).
BLOCK_FRAMES = 65_536
#: Blocks a damaged file is read again in, to keep the audio before the damage.
SALVAGE_BLOCK_FRAMES = 1_024
#: File suffixes libsndfile decodes first (PCM and FLAC: it reads them faster than FFmpeg).
SOUNDFILE_FIRST_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".aif", ".aiff", ".au", ".caf"})
#: Lowest MPEG audio bit rate: bounds how much audio an MP3 of a given size can hold.
MPEG_MIN_BITRATE_BPS = 8_000


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
    UnsupportedAudioError
        If the file declares more than :data:`MAX_CHANNELS` channels or a sample rate outside
        :data:`MIN_SAMPLE_RATE_HZ` .. :data:`MAX_SAMPLE_RATE_HZ`, or its stream changes its
        channel count or sample rate part-way (files joined byte for byte) (a subclass of
        :class:`AudioDecodeError`).
    AudioTooLongError
        If the audio is longer than ``max_duration_s`` (decoding stops there).

    Notes
    -----
    Damage inside a compressed stream costs the packets it hits and is logged as a warning;
    where no decoder reads past it, the audio before it is returned, with a warning.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioDecodeError(f"{path} is a folder, not an audio file")
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: the file is empty")
    errors: list[str] = []
    partial: _PartialAudio | None = None
    for decoder in _decoders_for(path):
        try:
            samples = decoder(path, max_duration_s, sample_rate_hz)
        except (AudioTooLongError, UnsupportedAudioError):
            raise  # the file says so itself: another decoder would only spend more on it
        except _PartialAudio as cut:  # the audio before damage: another may read past it
            if partial is None or cut.samples.size > partial.samples.size:
                partial = cut
            continue
        except Exception as exc:  # decoders raise many unrelated types on bad data
            errors.append(f"{decoder.__name__.removeprefix('_decode_')}: {_reason(exc)}")
            continue
        if samples.size == 0:
            errors.append(f"{decoder.__name__.removeprefix('_decode_')}: no audio samples")
            continue
        if partial is not None and partial.samples.size >= samples.size:
            break  # the damaged read got as far as this one, which stopped there unsaid
        return Audio(samples, sample_rate_hz)
    if partial is not None:
        logger.warning("%s: %s; using the audio before that", path, partial)
        return Audio(partial.samples, sample_rate_hz)
    logger.debug("could not decode %s: %s", path, "; ".join(errors))
    raise AudioDecodeError(f"{path.name}: not a readable audio file ({'; '.join(errors)})")


def _reason(exc: Exception) -> str:
    """A decoder's error as a person reads it: libsndfile says a file that exists but that it
    cannot identify "does not exist or is not a regular file"."""
    message = str(exc)
    if isinstance(exc, soundfile.LibsndfileError) and "does not exist" in message:
        return "format not recognised"
    return message


def seekable_length(path: str | Path) -> tuple[int, int] | None:
    """Length and sample rate of a file libsndfile can read and seek in, from its header.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    length : tuple of (n_samples, native_rate_hz) or None
        ``None`` when libsndfile cannot open the file, cannot seek in it, does not know its
        length in advance or the format is outside the accepted limits (callers then decode
        the whole file with :func:`load_audio`, which says what is wrong).
    """
    try:
        with soundfile.SoundFile(str(path)) as handle:
            _check_format(Path(path), int(handle.channels), int(handle.samplerate))
            if handle.seekable() and handle.frames > 0:
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
    UnsupportedAudioError
        If the file's channels or sample rate are outside the accepted limits.
    """
    try:
        with soundfile.SoundFile(str(path)) as handle:
            native_rate = int(handle.samplerate)
            _check_format(Path(path), int(handle.channels), native_rate)
            start = max(0, round(start_s * native_rate))
            landing = max(
                0,
                min(
                    start - round(SEEK_PREROLL_S * native_rate),
                    handle.frames - round(SEEK_END_MARGIN_S * native_rate),
                ),
            )
            handle.seek(landing)
            sink = _MonoSink(native_rate, sample_rate_hz)
            skip = start - landing
            for mono in _mono_blocks(handle, skip + round(duration_s * native_rate)):
                sink.add(mono[skip:])
                skip = max(0, skip - len(mono))
    except UnsupportedAudioError:
        raise
    except Exception as exc:  # libsndfile raises several types on bad data
        message = f"{Path(path).name}: cannot read {start_s:.1f} s onwards ({exc})"
        raise AudioDecodeError(message) from exc
    if sink.n_input == 0:
        raise AudioDecodeError(f"{Path(path).name}: no audio samples from {start_s:.1f} s onwards")
    return Audio(sink.finish(), sample_rate_hz)


def _too_long(path: Path, duration_s: float, max_duration_s: float | None) -> None:
    if max_duration_s is not None and duration_s > max_duration_s:
        raise AudioTooLongError(
            f"{path.name}: {duration_s:.0f} s of audio is longer than the limit of "
            f"{max_duration_s:.0f} s"
        )


def _check_format(path: Path, channels: int, sample_rate_hz: int) -> None:
    """Refuse channel counts and sample rates outside the accepted limits."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise UnsupportedAudioError(
            f"{path.name}: {channels} audio channels are not accepted (at most {MAX_CHANNELS})"
        )
    if not MIN_SAMPLE_RATE_HZ <= sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise UnsupportedAudioError(
            f"{path.name}: a sample rate of {sample_rate_hz} Hz is not accepted "
            f"({MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz)"
        )


class _MonoSink:
    """Collects mono blocks at ``from_hz`` as float32 at ``to_hz``, resampling as they come.

    soxr's streaming resampler gives the same samples as resampling the whole signal at once.
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.from_hz = from_hz
        self.n_input = 0
        self._chunks: list[np.ndarray] = []
        self._stream = (
            None
            if from_hz == to_hz
            else soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32", quality="HQ")
        )

    def add(self, mono: np.ndarray) -> None:
        """Append mono samples (float32, shape ``(n,)``)."""
        if mono.size == 0:
            return
        self.n_input += mono.size
        if self._stream is None:
            self._chunks.append(np.array(mono, dtype=np.float32))
        else:
            self._chunks.append(self._stream.resample_chunk(np.ascontiguousarray(mono)))

    def finish(self) -> np.ndarray:
        """All samples at the output rate (empty if nothing was added)."""
        if self._stream is not None and self.n_input:
            self._chunks.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        if not self._chunks:
            return np.zeros(0, np.float32)
        samples = np.concatenate(self._chunks).astype(np.float32, copy=False)
        self._chunks = []
        return samples


def _decode_soundfile(
    path: Path,
    max_duration_s: float | None,
    sample_rate_hz: int,
    block_frames: int = BLOCK_FRAMES,
) -> np.ndarray:
    with soundfile.SoundFile(str(path)) as handle:
        native_rate = int(handle.samplerate)
        _check_format(path, int(handle.channels), native_rate)
        if handle.frames > 0:
            _too_long(path, handle.frames / native_rate, max_duration_s)
        if max_duration_s is not None:
            most_frames = int(max_duration_s * native_rate) + 1  # one more: "too long" shows
        else:
            most_frames = int(path.stat().st_size * 8 / MPEG_MIN_BITRATE_BPS + 1) * native_rate
        sink = _MonoSink(native_rate, sample_rate_hz)
        mpeg = _is_mpeg(handle)
        blocks = _mono_blocks(handle, most_frames if mpeg else None, block_frames)
        while True:
            try:
                mono = next(blocks)
            except StopIteration:
                break
            except soundfile.SoundFileRuntimeError as exc:
                # a file cut short or damaged part-way (a FLAC that loses sync): what comes
                # before the damage is audio, as it is for a cut WAV whose header overstates
                # it. The failing block's own audio is lost, so the file is read again in
                # small blocks, up to the damage.
                if not mpeg and block_frames > SALVAGE_BLOCK_FRAMES:
                    return _decode_soundfile(
                        path, max_duration_s, sample_rate_hz, SALVAGE_BLOCK_FRAMES
                    )
                if sink.n_input == 0:
                    raise
                raise _PartialAudio(
                    sink.finish(), f"decoding stopped after {sink.n_input / native_rate:.1f} s "
                    f"({exc})"
                ) from exc
            sink.add(mono)
            _too_long(path, sink.n_input / native_rate, max_duration_s)
    return sink.finish()


class _PartialAudio(Exception):  # noqa: N818 (a result, not an error)
    """A decoder read the audio up to damage in the file: ``samples`` are what came before
    it. Another decoder may read past the damage (FFmpeg resynchronises on a damaged FLAC
    frame where libsndfile stops), so the longest result wins."""

    def __init__(self, samples: np.ndarray, reason: str) -> None:
        super().__init__(reason)
        self.samples = samples


def _is_mpeg(handle: soundfile.SoundFile) -> bool:
    return str(handle.subtype).startswith("MPEG_LAYER")


def _mono_blocks(
    handle: soundfile.SoundFile, n_frames: int | None, block_frames: int = BLOCK_FRAMES
) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``block_frames`` of the next ``n_frames`` frames (``None``: to
    the end).

    MPEG audio comes in one block of at most ``n_frames`` (see the module's docstring); for
    MPEG, ``n_frames`` must be given.
    """
    if _is_mpeg(handle):
        assert n_frames is not None, "MPEG audio is read in one piece of a bounded length"
        data = handle.read(n_frames, dtype="float32", always_2d=True)
        if len(data):
            yield _mix_down(data)
        return
    remaining = n_frames
    while remaining is None or remaining > 0:
        count = block_frames if remaining is None else min(block_frames, remaining)
        block = handle.read(count, dtype="float32", always_2d=True)
        if len(block) == 0:
            return
        if remaining is not None:
            remaining -= len(block)
        yield _mix_down(block)


#: Suffixes FFmpeg's MPEG audio demuxer is chosen for ...
MPEG_SUFFIXES = frozenset({".mp1", ".mp2", ".mp3", ".mpga"})
#: ... which looks for the first frame through the whole file, buffering what it passes:
#: a file of zeros took twice its size in memory. One with no frame sync in this many bytes
#: after its ID3 tag is refused before FFmpeg opens it.
MPEG_SYNC_WINDOW_BYTES = 1 << 20


def has_mpeg_frame_sync(path: Path, window: int = MPEG_SYNC_WINDOW_BYTES) -> bool:
    """Whether an MPEG audio frame sync (11 set bits) lies in the first ``window`` bytes after
    the file's ID3v2 tag, if it has one.

    Parameters
    ----------
    path : Path
    window : int

    Returns
    -------
    found : bool
    """
    with path.open("rb") as handle:
        header = handle.read(10)
        start = 0
        if len(header) == 10 and header[:3] == b"ID3":
            size = 0
            for byte in header[6:10]:  # a syncsafe integer: 7 bits a byte
                size = (size << 7) | (byte & 0x7F)
            start = 10 + size + (10 if header[5] & 0x10 else 0)  # the footer flag
        handle.seek(start)
        data = np.frombuffer(handle.read(window), dtype=np.uint8)
    if len(data) < 2:
        return False
    return bool(np.any((data[:-1] == 0xFF) & ((data[1:] & 0xE0) == 0xE0)))


def _decode_av(path: Path, max_duration_s: float | None, sample_rate_hz: int) -> np.ndarray:
    import av  # imported lazily: its import is slower than libsndfile's

    if path.suffix.lower() in MPEG_SUFFIXES and not has_mpeg_frame_sync(path):
        raise AudioDecodeError("no MPEG audio frame near its start")

    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise AudioDecodeError("no audio stream")
        stream = container.streams.audio[0]
        native_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if native_rate <= 0:
            raise AudioDecodeError("unknown sample rate")
        _check_format(path, _av_channels(stream.codec_context), native_rate)
        if container.duration is not None:
            _too_long(path, container.duration / 1_000_000, max_duration_s)
        return _decode_frames(
            path, _frames_past_damage(path, container, stream), native_rate, sample_rate_hz,
            max_duration_s,
        )  # fmt: skip


def _frames_past_damage(path: Path, container: Any, stream: Any) -> Iterator[Any]:
    """A stream's decoded PyAV frames, packet by packet, past packets FFmpeg cannot decode.

    Damage inside a compressed stream (bytes overwritten, a second file's tag where two files
    were joined) costs the packets it hits, not the rest of the file: the audio goes on after
    it, as FFmpeg's own command line goes on. After :data:`MAX_DAMAGED_PACKETS` in a row the
    error is raised (the rest is no audio this decoder can read). Skipped packets are logged.
    """
    import av

    in_a_row = skipped = 0
    lost_s = 0.0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            in_a_row, skipped = in_a_row + 1, skipped + 1
            if packet.duration and packet.time_base:
                lost_s += float(packet.duration * packet.time_base)
            if in_a_row > MAX_DAMAGED_PACKETS:
                raise
            continue
        in_a_row = 0
        yield from frames
    if skipped:
        logger.warning(
            "%s: %d damaged packet(s) skipped (about %.1f s of audio)", path.name, skipped, lost_s
        )


def _decode_frames(
    path: Path,
    frames: Iterable[Any],
    native_rate: int,
    sample_rate_hz: int,
    max_duration_s: float | None,
) -> np.ndarray:
    """Mono samples at ``sample_rate_hz`` from a stream's decoded PyAV frames.

    Frames (a thousand samples or so each) gather in FFmpeg's own FIFO and come out a block at
    a time: converting each frame in Python took as long as decoding it.
    """
    import av

    sink = _MonoSink(native_rate, sample_rate_hz)
    fifo, channels = av.AudioFifo(), None
    try:
        for frame in frames:
            # the FIFO compares neither layouts nor frames without samples: each is checked
            frame_channels, rate = _av_channels(frame), int(frame.sample_rate or native_rate)
            _check_format(path, frame_channels, rate)
            if rate != native_rate:
                raise UnsupportedAudioError(
                    f"{path.name}: the sample rate changes inside the stream"
                )
            if frame_channels != (channels := channels or frame_channels):
                raise UnsupportedAudioError(
                    f"{path.name}: the number of channels changes inside the stream"
                )
            frame.pts = None  # the FIFO would check timestamps, which need not be contiguous
            try:
                fifo.write(frame)
            except ValueError:  # its sample format or time base differs
                _flush_fifo(path, fifo, channels, sink, max_duration_s)
                fifo = av.AudioFifo()  # the same samples in another format: they go on
                fifo.write(frame)
            if fifo.samples >= BLOCK_FRAMES:  # mixed down and resampled a block at a time
                _flush_fifo(path, fifo, channels, sink, max_duration_s)
    except av.error.FFmpegError as exc:  # damage FFmpeg could not read past
        _flush_fifo(path, fifo, channels or 1, sink, max_duration_s)
        if sink.n_input == 0:
            raise
        raise _PartialAudio(
            sink.finish(), f"decoding stopped after {sink.n_input / native_rate:.1f} s ({exc})"
        ) from exc
    _flush_fifo(path, fifo, channels or 1, sink, max_duration_s)  # (nothing waits if no frame)
    return sink.finish()


def _flush_fifo(
    path: Path, fifo: object, channels: int, sink: _MonoSink, max_duration_s: float | None
) -> None:
    """Mix down and resample every sample waiting in ``fifo``; check the duration so far."""
    if fifo.samples:  # type: ignore[attr-defined]
        block = fifo.read()  # type: ignore[attr-defined]
        sink.add(mix_down_planar(planar_samples(block, channels)))
        _too_long(path, sink.n_input / sink.from_hz, max_duration_s)


#: Divisors that bring FFmpeg's integer sample formats to [-1, 1].
_AV_INTEGER_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 2.0**63}


def planar_samples(frame: object, channels: int) -> np.ndarray:
    """A PyAV audio frame's samples as float32 in [-1, 1], channels first ``(channels, n)``.

    Parameters
    ----------
    frame : av.AudioFrame
    channels : int
        The frame's channel count.

    Returns
    -------
    samples : np.ndarray [shape=(channels, n), dtype=float32]
    """
    try:
        data = frame.to_ndarray()  # planar: (channels, n); packed: (1, n * channels)
    except ValueError:  # a format NumPy has no type for (s64): FFmpeg converts it
        import av

        layout = frame.layout  # type: ignore[attr-defined]
        rate = frame.sample_rate  # type: ignore[attr-defined]
        converted = av.AudioResampler(format="fltp", layout=layout, rate=rate).resample(frame)
        if not converted:
            return np.zeros((channels, 0), dtype=np.float32)
        return np.concatenate([part.to_ndarray() for part in converted], axis=1)
    sample_format = frame.format  # type: ignore[attr-defined]
    samples = data if sample_format.is_planar else data.reshape(-1, channels).T
    name = sample_format.name.rstrip("p")
    if name in _AV_INTEGER_SCALE:
        offset = 1.0 if name == "u8" else 0.0
        samples = samples.astype(np.float32) / np.float32(_AV_INTEGER_SCALE[name]) - offset
    return np.asarray(samples, dtype=np.float32)


def mix_down_planar(samples: np.ndarray) -> np.ndarray:
    """Average the channels of ``(channels, n)`` samples, float32 ``(n,)``.

    Channel by channel, sample by sample: every output sample is rounded the same way
    however the file is cut into blocks (a matrix product's kernels sum in an order that
    depends on the block's length and alignment on some processors).

    Parameters
    ----------
    samples : np.ndarray [shape=(channels, n)]
        One row per channel, at least one.

    Returns
    -------
    mono : np.ndarray [shape=(n,), dtype=float32]
        C-contiguous.
    """
    if samples.shape[0] == 1:
        return np.ascontiguousarray(samples[0], dtype=np.float32)
    mixed = np.array(samples[0], dtype=np.float32)
    for channel in samples[1:]:
        mixed += channel
    mixed *= np.float32(1.0 / samples.shape[0])
    return mixed


def _decoders_for(path: Path) -> tuple[Callable[[Path, float | None, int], np.ndarray], ...]:
    """Decoders to try, fastest for the file's kind first: libsndfile for PCM and FLAC,
    FFmpeg's decoders (faster than libvorbis and libmpg123 here) for compressed audio."""
    if path.suffix.lower() in SOUNDFILE_FIRST_SUFFIXES:
        return (_decode_soundfile, _decode_av)
    return (_decode_av, _decode_soundfile)


def _av_channels(item: object) -> int:
    """Channels of a PyAV codec context or frame (1 when the layout is unknown)."""
    layout = getattr(item, "layout", None)
    return int(getattr(layout, "nb_channels", 0) or getattr(item, "channels", 0) or 1)


def _mix_down(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``(n, channels)`` samples (see :func:`mix_down_planar`)."""
    return mix_down_planar(data.T)
