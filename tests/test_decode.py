"""Decoding real audio containers and refusing bad input with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from tunetrace.fingerprint.decode import load_audio, load_audio_span, seekable_length

from tests.conftest import SAMPLE_RATE, synth_song, write_audio
from tunetrace.errors import AudioDecodeError, AudioTooLongError


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_libsndfile_formats_decode_to_mono_at_the_analysis_rate(
    tmp_path: Path, suffix: str
) -> None:
    samples = synth_song(3, duration_s=5.0)
    stereo = np.stack([samples, 0.5 * samples], axis=1)
    path = write_audio(tmp_path / f"song{suffix}", stereo)
    audio = load_audio(path, sample_rate_hz=8000)
    assert audio.sample_rate_hz == 8000
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert abs(audio.duration_s - 5.0) < 0.1, f"{suffix}: {audio.duration_s} s"
    assert 0.05 < np.abs(audio.samples).max() <= 1.0


@pytest.mark.parametrize(("suffix", "codec"), [(".m4a", "aac"), (".opus", "libopus")])
def test_ffmpeg_formats_decode(tmp_path: Path, suffix: str, codec: str) -> None:
    av = pytest.importorskip("av")
    samples = synth_song(4, duration_s=4.0, sample_rate=48000)
    path = tmp_path / f"song{suffix}"
    with av.open(str(path), "w") as container:
        try:
            stream = container.add_stream(codec, rate=48000)
        except (ValueError, av.error.FFmpegError) as exc:  # codec not built into this av
            pytest.skip(f"{codec} encoder unavailable: {exc}")
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = load_audio(path, sample_rate_hz=8000)
    assert abs(audio.duration_s - 4.0) < 0.15


def test_missing_empty_and_random_files_raise_decode_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match="no such file"):
        load_audio(tmp_path / "absent.wav", sample_rate_hz=8000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(empty, sample_rate_hz=8000)
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        load_audio(noise, sample_rate_hz=8000)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    with pytest.raises(AudioDecodeError):
        load_audio(text, sample_rate_hz=8000)


def test_three_hour_file_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    rate = 8000
    block = np.zeros(rate * 600, dtype=np.int16)
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1, format="FLAC") as handle:
        for _ in range(18):  # 3 hours of silence, a few MB of FLAC
            handle.write(block)
    with pytest.raises(AudioTooLongError, match="longer than the limit"):
        load_audio(path, sample_rate_hz=8000, max_duration_s=1200)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_a_span_decodes_the_samples_the_whole_file_has_there(tmp_path: Path, suffix: str) -> None:
    path = write_audio(tmp_path / f"song{suffix}", synth_song(5, duration_s=45.0))
    n_samples, rate = seekable_length(path)
    assert rate == SAMPLE_RATE and abs(n_samples - 45 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    whole = load_audio(path, sample_rate_hz=SAMPLE_RATE).samples
    # everywhere, including the last page of a Vorbis stream, where plain seeks land wrongly
    for start_s in (0.0, 0.3, 3.0, 10.7, 22.0, 37.9, 42.5, 44.2):
        span = load_audio_span(path, sample_rate_hz=SAMPLE_RATE, start_s=start_s, duration_s=2.5)
        first = round(start_s * SAMPLE_RATE)
        expected = whole[first : first + round(2.5 * SAMPLE_RATE)]
        assert len(span.samples) == len(expected), f"span at {start_s} s"
        np.testing.assert_allclose(span.samples, expected, atol=1e-6, err_msg=f"at {start_s} s")
    resampled = load_audio_span(path, sample_rate_hz=8000, start_s=3.0, duration_s=2.5)
    assert resampled.sample_rate_hz == 8000 and len(resampled.samples) == 20000


def test_spans_refuse_what_cannot_be_read(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "short.flac", synth_song(6, duration_s=2.0))
    with pytest.raises(AudioDecodeError, match=r"no audio samples from 5\.0 s"):
        load_audio_span(path, sample_rate_hz=8000, start_s=5.0, duration_s=1.0)
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(np.random.default_rng(1).bytes(20000))
    assert seekable_length(noise) is None  # callers decode such files whole (and fail there)
    assert seekable_length(tmp_path / "absent.ogg") is None
    with pytest.raises(AudioDecodeError, match="cannot read"):
        load_audio_span(noise, sample_rate_hz=8000, start_s=0.0, duration_s=1.0)
