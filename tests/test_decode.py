"""Decoding real audio containers and refusing bad input with clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile
import soxr
from tunetrace.fingerprint import decode
from tunetrace.fingerprint.decode import load_audio, load_audio_span, seekable_length

from tests.conftest import SAMPLE_RATE, patch_wav_header, synth_song, write_audio
from tunetrace.errors import AudioDecodeError, AudioTooLongError, UnsupportedAudioError


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
    with pytest.raises(AudioDecodeError, match="is a folder, not an audio file"):
        load_audio(tmp_path, sample_rate_hz=8000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(empty, sample_rate_hz=8000)
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(AudioDecodeError, match="not a readable audio file") as refused:
        load_audio(noise, sample_rate_hz=8000)
    assert "does not exist" not in str(refused.value)  # it does: libsndfile's words, mended
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


def _whole_file_reference(path: Path, sample_rate_hz: int) -> np.ndarray:
    """The file decoded in one piece: all frames, channels averaged, resampled at once."""
    if path.suffix in decode.SOUNDFILE_FIRST_SUFFIXES:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        mono = decode.mix_down_planar(data.T)
    else:  # FFmpeg's decoders: every frame at once
        import av

        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            frames = [
                decode.planar_samples(f, f.layout.nb_channels) for f in container.decode(stream)
            ]
        mono = decode.mix_down_planar(np.concatenate(frames, axis=1))
    if rate == sample_rate_hz:
        return mono
    return soxr.resample(mono, rate, sample_rate_hz, quality="HQ")


@pytest.mark.parametrize(
    ("suffix", "channels", "rate"),
    [(".wav", 2, 44100), (".flac", 2, 44100), (".ogg", 2, 44100), (".mp3", 2, 44100),
     (".wav", 6, 48000), (".flac", 1, SAMPLE_RATE)],
)  # fmt: skip
def test_block_decoding_gives_the_samples_of_a_whole_file_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, channels: int, rate: int
) -> None:
    monkeypatch.setattr(decode, "BLOCK_FRAMES", 4099)  # many blocks, none aligned to anything
    song = synth_song(7, duration_s=12.0, sample_rate=rate)
    samples = np.stack([song * (1 - 0.1 * c) for c in range(channels)], axis=1)
    path = write_audio(tmp_path / f"song{suffix}", samples, sample_rate=rate)
    for sample_rate_hz in (SAMPLE_RATE, 8000):
        expected = _whole_file_reference(path, sample_rate_hz)
        decoded = load_audio(path, sample_rate_hz=sample_rate_hz).samples
        assert decoded.dtype == np.float32 and len(decoded) == len(expected)
        assert np.array_equal(decoded, expected), f"{suffix} at {sample_rate_hz} Hz"


def test_ffmpeg_decoding_streams_the_same_samples_as_resampling_at_once(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    samples = synth_song(8, duration_s=6.0, sample_rate=48000)
    path = tmp_path / "song.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with av.open(str(path)) as container:
        native = np.concatenate(
            [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
        ).astype(np.float32)
    expected = soxr.resample(native, 48000, SAMPLE_RATE, quality="HQ")
    decoded = load_audio(path, sample_rate_hz=SAMPLE_RATE).samples
    assert np.array_equal(decoded, expected)


def test_channel_and_sample_rate_limits_refuse_the_file_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "fast.flac"
    silence = np.zeros((655350 * 2, 8), dtype=np.int16)
    soundfile.write(str(path), silence, 655350, format="FLAC", subtype="PCM_16")
    with pytest.raises(UnsupportedAudioError, match="655350 Hz is not accepted"):
        load_audio(path, sample_rate_hz=SAMPLE_RATE)
    assert seekable_length(path) is None  # scans decode it whole, and are refused there
    with pytest.raises(UnsupportedAudioError, match="655350 Hz"):
        load_audio_span(path, sample_rate_hz=SAMPLE_RATE, start_s=0.0, duration_s=1.0)
    wide = write_audio(tmp_path / "wide.wav", np.zeros(8000, dtype=np.float32), sample_rate=8000)
    patch_wav_header(wide, channels=200, rate=8000)
    with pytest.raises(UnsupportedAudioError, match="200 audio channels are not accepted"):
        load_audio(wide, sample_rate_hz=SAMPLE_RATE)
    slow = write_audio(tmp_path / "slow.wav", np.zeros(4000, dtype=np.float32), sample_rate=4000)
    with pytest.raises(UnsupportedAudioError, match="4000 Hz is not accepted"):
        load_audio(slow, sample_rate_hz=SAMPLE_RATE)
    # the limits themselves are accepted
    edge = write_audio(
        tmp_path / "edge.wav", np.zeros((192000 * 4, 8), dtype=np.float32), sample_rate=192000
    )
    assert load_audio(edge, sample_rate_hz=8000).duration_s == pytest.approx(4.0)


_PEAK_MEMORY = """
import resource, sys
from tunetrace.fingerprint.decode import load_audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_audio(sys.argv[1], sample_rate_hz=22050, max_duration_s=float(sys.argv[2]))
    outcome = "decoded"
except Exception as exc:
    outcome = type(exc).__name__
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(outcome, (after - before) // 1024)
"""


def _peak_growth_mb(path: Path, max_duration_s: float) -> tuple[str, int]:
    """Decode in a fresh process: the outcome and how far its peak memory rose (MB)."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, str(path), str(max_duration_s)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    outcome, growth = result.stdout.split()
    return outcome, int(growth)


def test_decoding_memory_follows_the_output_not_the_declared_channels_and_rate(
    tmp_path: Path,
) -> None:
    # 8 channels at 192 kHz for 100 s: 614 MB as float32 if read whole, 9 MB at 22,050 Hz mono
    path = tmp_path / "wide.flac"
    block = np.zeros((192000 * 10, 8), dtype=np.int16)
    with soundfile.SoundFile(
        str(path), "w", samplerate=192000, channels=8, format="FLAC", subtype="PCM_16"
    ) as handle:
        for _ in range(10):
            handle.write(block)
    outcome, growth_mb = _peak_growth_mb(path, 1200)
    assert outcome == "decoded"
    assert growth_mb < 100, f"peak memory rose {growth_mb} MB decoding 100 s of 8 x 192 kHz"
    # over the duration limit: stops there (no second decoder tried, nothing more read)
    outcome, growth_mb = _peak_growth_mb(path, 30)
    assert outcome == "AudioTooLongError" and growth_mb < 100
    # a lying header: 8 kHz mono that says 100 channels at 192 kHz
    lying = write_audio(tmp_path / "lying.wav", np.zeros(80000, np.float32), sample_rate=8000)
    patch_wav_header(lying, channels=100, rate=192000, data_bytes=0xFFFFFFF0)
    outcome, growth_mb = _peak_growth_mb(lying, 1200)
    assert outcome == "UnsupportedAudioError" and growth_mb < 50


def test_a_wav_whose_header_overstates_its_data_decodes_what_is_there(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "short.wav", synth_song(9, duration_s=5.0))
    patch_wav_header(path, channels=1, rate=SAMPLE_RATE, data_bytes=0xFFFFFFF0)
    try:
        audio = load_audio(path, sample_rate_hz=SAMPLE_RATE, max_duration_s=1200)
    except AudioTooLongError:
        return  # refusing from the header is as good; never reading 4 GB is what matters
    assert audio.duration_s == pytest.approx(5.0, abs=0.01)


def test_a_flac_cut_short_decodes_what_is_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    samples = synth_song(7, duration_s=20)
    whole = write_audio(tmp_path / "whole.flac", samples)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    expected = load_audio(whole, sample_rate_hz=8000).samples
    with caplog.at_level("WARNING", logger="tunetrace.fingerprint.decode"):
        audio = load_audio(cut, sample_rate_hz=8000)
    assert 5.0 < audio.duration_s < 15.0  # about the first half, not refused
    np.testing.assert_allclose(audio.samples[: 4 * 8000], expected[: 4 * 8000], atol=1e-3)
    # said: libsndfile stops at the cut, FFmpeg skips the packet it cuts
    assert "decoding stopped after" in caplog.text or "damaged packet" in caplog.text
    # damaged in the middle: FFmpeg reads past the damage where libsndfile stops at it
    damaged = bytearray(whole.read_bytes())
    middle = len(damaged) * 3 // 10
    damaged[middle : middle + 64] = bytes(b ^ 0xFF for b in damaged[middle : middle + 64])
    cut.write_bytes(bytes(damaged))
    assert load_audio(cut, sample_rate_hz=8000).duration_s > 18.0
    # cut inside the first block read: the audio before the cut is kept all the same
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 20])
    assert 0.3 < load_audio(cut, sample_rate_hz=8000).duration_s < 2.0
    with pytest.raises(AudioDecodeError):  # a header with nothing decodable after it still fails
        cut.write_bytes(whole.read_bytes()[:200])
        load_audio(cut, sample_rate_hz=8000)


def _id3_tag(body_bytes: int) -> bytes:
    """An ID3v2.3 tag of ``body_bytes`` of padding (zeros, as taggers leave room)."""
    size = bytes((body_bytes >> shift) & 0x7F for shift in (21, 14, 7, 0))  # syncsafe
    return b"ID3\x03\x00\x00" + size + bytes(body_bytes)


def test_an_mpeg_file_with_no_frame_near_its_start_is_refused_before_ffmpeg_opens_it(
    tmp_path: Path,
) -> None:
    zeros = tmp_path / "zeros.mp3"
    zeros.write_bytes(bytes(4 << 20))  # FFmpeg had buffered all of it looking for a frame
    assert not decode.has_mpeg_frame_sync(zeros)
    with pytest.raises(AudioDecodeError, match="no MPEG audio frame near its start"):
        load_audio(zeros, sample_rate_hz=8000)
    # a real MP3 behind a tag larger than the window (cover art) is searched after the tag
    song = write_audio(tmp_path / "song.mp3", synth_song(5, duration_s=6.0))
    tagged = tmp_path / "tagged.mp3"
    tagged.write_bytes(_id3_tag(2 * decode.MPEG_SYNC_WINDOW_BYTES) + song.read_bytes())
    assert decode.has_mpeg_frame_sync(tagged)
    assert load_audio(tagged, sample_rate_hz=8000).duration_s == pytest.approx(6.0, abs=0.2)
    untagged_zeros = tmp_path / "late.mp3"  # a frame, but only past the window: refused
    untagged_zeros.write_bytes(bytes(2 * decode.MPEG_SYNC_WINDOW_BYTES) + song.read_bytes())
    assert not decode.has_mpeg_frame_sync(untagged_zeros)


def test_channels_are_averaged() -> None:
    planar = np.array([[1.0, 3.0, -2.0], [3.0, 5.0, 2.0], [2.0, 1.0, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(decode.mix_down_planar(planar), [2.0, 3.0, 0.1666667], rtol=1e-6)
    assert decode.mix_down_planar(planar[:1]).tolist() == [1.0, 3.0, -2.0]
    assert decode.mix_down_planar(planar).dtype == np.float32


def _compressed(
    path: Path, samples: np.ndarray, rate: int, *, bare: bool = True, codec: str = "libmp3lame"
) -> bytes:
    """``samples`` (channels first) encoded as MPEG frames (``codec="aac"``: AAC in ADTS),
    ``bare`` with no tag and no Xing header, so that files can be joined byte for byte the way
    some uploads are; else as an encoder writes a file."""
    av = pytest.importorskip("av")
    options = {"id3v2_version": "0", "write_xing": "0"} if bare and codec != "aac" else {}
    container_format = "adts" if codec == "aac" else "mp3"
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono" if len(samples) == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout=stream.layout
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("second_channels", "second_rate", "message"),
    [(2, 22050, "number of channels changes"), (1, 44100, "sample rate changes")],
)
def test_a_stream_whose_channels_or_rate_change_part_way_is_refused_by_ffmpeg_decoding(
    tmp_path: Path, second_channels: int, second_rate: int, message: str
) -> None:
    first_song = synth_song(1, duration_s=3.0, sample_rate=22050)
    first = _compressed(tmp_path / "a.mp3", first_song[None], 22050)
    song = synth_song(2, duration_s=3.0, sample_rate=second_rate)
    second = _compressed(tmp_path / "b.mp3", np.tile(song, (second_channels, 1)), second_rate)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first + second)
    with pytest.raises(AudioDecodeError, match=message):
        decode._decode_av(joined, None, 8000)


@pytest.mark.parametrize("codec", ["libmp3lame", "aac"])
def test_damage_inside_a_compressed_stream_costs_only_the_packets_it_hits(
    tmp_path: Path, codec: str, caplog: pytest.LogCaptureFixture
) -> None:
    """3 KB overwritten in the middle of an MP3 or an AAC stream: the audio after the damage
    is decoded too (the copy in an upload's second half is still there), with a warning."""
    rate = 22050
    song = synth_song(4, duration_s=20.0, sample_rate=rate)
    clean = tmp_path / f"clean.{codec}"
    encoded = bytearray(_compressed(clean, song[None], rate, bare=False, codec=codec))
    middle = len(encoded) // 2
    encoded[middle : middle + 3000] = np.random.default_rng(5).bytes(3000)
    damaged = tmp_path / f"damaged.{codec}"
    damaged.write_bytes(bytes(encoded))
    whole = load_audio(clean, sample_rate_hz=8000).samples
    with caplog.at_level("WARNING", logger="tunetrace.fingerprint.decode"):
        read = load_audio(damaged, sample_rate_hz=8000).samples
    assert len(read) > 0.9 * len(whole), (len(read), len(whole))
    assert "damaged packet" in caplog.text
    # 5 s from after the damage are the clean file's (a little earlier: packets were lost)
    after = read[-6 * 8000 : -1 * 8000]
    assert _best_match(after, whole[len(whole) // 2 :]) > 0.95  # unrelated music: ~0.1


def _best_match(segment: np.ndarray, signal: np.ndarray) -> float:
    """The largest normalised correlation of ``segment`` with a stretch of ``signal``."""
    products = scipy.signal.correlate(signal, segment, mode="valid")
    energy = np.convolve(signal.astype(np.float64) ** 2, np.ones(len(segment)), mode="valid")
    return float(np.max(products / np.sqrt(energy * np.dot(segment, segment) + 1e-12)))


def test_a_stream_ffmpeg_cannot_read_past_keeps_the_audio_before(tmp_path: Path) -> None:
    """Damage the decoder cannot resynchronise after (too many bad packets in a row, a
    demuxer error): what came before it is audio, handed on as partial."""
    av = pytest.importorskip("av")
    rate = 22050
    samples = synth_song(8, duration_s=6.0, sample_rate=rate).astype(np.float32)

    def frames():
        for start in range(0, len(samples), 1152):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + 1152].copy(), format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            yield frame
            if start > len(samples) // 2:
                raise av.error.InvalidDataError(1094995529, "Invalid data found")

    with pytest.raises(decode._PartialAudio, match="decoding stopped after 3") as cut:
        decode._decode_frames(tmp_path / "damaged.mp3", frames(), rate, 8000, None)
    assert 2.9 < len(cut.value.samples) / 8000 < 3.2


@pytest.mark.parametrize(("second_rate", "seconds"), [(SAMPLE_RATE, 16.0), (16000, 8.0)])
def test_a_chained_ogg_file_is_read_whole_or_says_where_it_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, second_rate: int, seconds: float
) -> None:
    """Ogg files joined byte for byte: links alike are read whole. FFmpeg stops at a link
    of another sample rate ("not yet implemented") and libsndfile reads the first link alone
    without a word; the first link is used, and the warning says decoding stopped there."""
    parts = []
    for seed, rate in ((9, SAMPLE_RATE), (10, second_rate)):
        part = tmp_path / f"link{seed}.ogg"
        soundfile.write(str(part), synth_song(seed, 8.0, sample_rate=rate), rate, format="OGG")
        parts.append(part.read_bytes())
    chained = tmp_path / "chained.ogg"
    chained.write_bytes(b"".join(parts))
    with caplog.at_level("WARNING", logger="tunetrace.fingerprint.decode"):
        audio = load_audio(chained, sample_rate_hz=8000)
    assert audio.duration_s == pytest.approx(seconds, abs=0.3)
    assert ("decoding stopped after 8" in caplog.text) is (seconds < 16.0)


def test_two_mp3_files_joined_with_their_tags_decode_whole(tmp_path: Path) -> None:
    """Files joined byte for byte, each with its ID3 tag and Xing header: both are decoded,
    not only the first (libsndfile stops at the second tag)."""
    rate = 22050
    first = _compressed(tmp_path / "a.mp3", synth_song(6, 8.0, rate)[None], rate, bare=False)
    second = _compressed(tmp_path / "b.mp3", synth_song(7, 8.0, rate)[None], rate, bare=False)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first + second)
    assert load_audio(joined, sample_rate_hz=8000).duration_s == pytest.approx(16.0, abs=0.3)


def test_a_channel_change_between_joined_files_is_refused_not_cut_short(tmp_path: Path) -> None:
    """With their tags, joined files whose channel counts differ are refused with the reason
    (no other decoder is tried: one would return the first file alone)."""
    rate = 22050
    first = _compressed(tmp_path / "a.mp3", synth_song(6, 8.0, rate)[None], rate, bare=False)
    song = synth_song(7, 8.0, rate)
    second = _compressed(tmp_path / "b.mp3", np.tile(song, (2, 1)), rate, bare=False)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first + second)
    with pytest.raises(UnsupportedAudioError, match="number of channels changes"):
        load_audio(joined, sample_rate_hz=8000)


def test_frames_whose_sample_format_changes_part_way_decode_on(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    rate = 22050
    # values an int16 holds exactly, so both formats carry the same samples
    samples = np.round(synth_song(3, duration_s=8.0, sample_rate=rate) * 16384) / 32768
    samples = samples.astype(np.float32)
    frames = []
    for number, start in enumerate(range(0, len(samples), 1152)):
        part = samples[start : start + 1152]
        if number % 40 < 20:
            frame = av.AudioFrame.from_ndarray(part[None], format="fltp", layout="mono")
        else:
            frame = av.AudioFrame.from_ndarray(
                np.round(part * 32768).astype(np.int16)[None], format="s16p", layout="mono"
            )
        frame.sample_rate = rate
        frames.append(frame)
    decoded = decode._decode_frames(tmp_path / "mixed.mp3", frames, rate, 8000, None)
    assert np.array_equal(decoded, soxr.resample(samples, rate, 8000, quality="HQ"))


def test_a_rate_change_after_an_empty_first_frame_is_refused(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    frames = []
    for rate, samples in [(22050, 0), *[(44100, 1152)] * 20]:
        frame = av.AudioFrame.from_ndarray(
            np.full((1, samples), 0.1, dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = rate
        frames.append(frame)
    with pytest.raises(AudioDecodeError, match="sample rate changes"):
        decode._decode_frames(tmp_path / "odd.mp3", frames, 22050, 8000, None)
