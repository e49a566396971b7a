"""Decoding real audio containers and refusing bad input with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from tunetrace.fingerprint.decode import load_audio

from tests.conftest import synth_song, write_audio
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
