"""Unit tests of the fingerprint stage on signals whose answer is known by construction."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st
from tunetrace.fingerprint import spectrum
from tunetrace.fingerprint.decode import Audio
from tunetrace.fingerprint.embedding import embed_patches, patch_starts, resample_time
from tunetrace.fingerprint.features import Features, extract_features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.spectrum import FREQUENCY_BLUR, blur_bins, chroma_weights
from tunetrace.fingerprint.tonality import LOW_TONALITY, low_tonality_caution, tonality

from tunetrace.alignment import align_on_chroma
from tunetrace.errors import AudioTooShortError
from tunetrace.query import prepare_query
from tunetrace.segments import harmonic_change
from tunetrace.types import Candidate
from tunetrace.verification import verify_candidate

PARAMS = FingerprintParams()


def chord(semitones_above_a3: float, duration_s: float = 6.0) -> Audio:
    """A major triad with harmonics, rooted ``semitones_above_a3`` above A3 (220 Hz)."""
    sr = PARAMS.sample_rate_hz
    t = np.arange(int(duration_s * sr)) / sr
    root = 220.0 * 2 ** (semitones_above_a3 / 12)
    samples = sum(
        np.sin(2 * np.pi * root * 2 ** (i / 12) * h * t) / h for i in (0, 4, 7) for h in (1, 2, 3)
    )
    return Audio((0.1 * samples).astype(np.float32), sr)


@pytest.mark.parametrize(
    "n_frames", [1, 6, spectrum.STFT_BLOCK_FRAMES, spectrum.STFT_BLOCK_FRAMES + 1,
                 2 * spectrum.STFT_BLOCK_FRAMES, 2 * spectrum.STFT_BLOCK_FRAMES + 3],
)  # fmt: skip
def test_stft_magnitude_block_by_block_is_the_whole_transform_bit_for_bit(n_frames: int) -> None:
    hop, n_fft = 800, 4096
    samples = np.random.default_rng(n_frames).standard_normal((n_frames - 1) * hop)
    magnitude = spectrum.stft_magnitude(samples.astype(np.float32), n_fft=n_fft, hop_length=hop)
    # every frame in one transform
    padded = np.pad(samples.astype(np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    whole = np.abs(scipy.fft.rfft(frames * window, axis=1)).T
    assert magnitude.shape == (n_fft // 2 + 1, n_frames) and magnitude.flags.c_contiguous
    np.testing.assert_array_equal(magnitude, whole)
    # and librosa's frames
    expected = np.abs(librosa.stft(samples.astype(np.float32), n_fft=n_fft, hop_length=hop,
                                   center=True, pad_mode="constant"))  # fmt: skip
    np.testing.assert_allclose(magnitude, expected, rtol=1e-4, atol=1e-3)


def test_chord_shift_rolls_chroma_by_three_bins_per_semitone() -> None:
    base = extract_features(chord(0), params=PARAMS).chroma.mean(axis=1)
    for shift in (1, 2, 5):
        shifted = extract_features(chord(shift), params=PARAMS).chroma.mean(axis=1)
        correlations = [np.dot(np.roll(base, k), shifted) for k in range(PARAMS.bins_per_octave)]
        assert int(np.argmax(correlations)) == 3 * shift, f"expected roll {3 * shift}"


def test_chroma_window_is_a_smooth_bump_over_log_frequency() -> None:
    weights = chroma_weights(PARAMS)
    octaves = np.arange(PARAMS.n_bins) / PARAMS.bins_per_octave
    low = np.log2(PARAMS.chroma_fmin_hz / PARAMS.fmin_hz)
    high = np.log2(PARAMS.chroma_fmax_hz / PARAMS.fmin_hz)

    assert np.all(weights[octaves <= low] == 0)
    peak = octaves[int(np.argmax(weights))]
    assert abs(peak - (low + high) / 2) <= 1 / PARAMS.bins_per_octave
    assert weights.max() == pytest.approx(1.0, abs=1e-3)
    # No hard edge: neighbouring bins never differ by more than a few percent.
    assert np.abs(np.diff(weights)).max() < 0.05


def test_embedding_ignores_chroma_rolls() -> None:
    rng = np.random.default_rng(0)
    chroma = rng.standard_normal((PARAMS.bins_per_octave, 80)).astype(np.float32)
    starts = patch_starts(80, patch_frames=PARAMS.patch_frames, hop=8)
    original = embed_patches(chroma, starts, params=PARAMS)
    rolled = embed_patches(np.roll(chroma, 7, axis=0), starts, params=PARAMS)
    np.testing.assert_allclose(original, rolled, atol=1e-5)
    norms = np.linalg.norm(original, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.parametrize("smooth_frames", [2, 3, 4, 7])
def test_chroma_smoothing_is_a_centred_zero_padded_moving_average(smooth_frames: int) -> None:
    rng = np.random.default_rng(3)
    folded = rng.random((PARAMS.bins_per_octave, 50)).astype(np.float32)
    kernel = np.ones(smooth_frames) / smooth_frames
    expected = np.stack([np.convolve(row, kernel, mode="same") for row in folded])
    np.testing.assert_allclose(
        spectrum.smooth_chroma(folded, smooth_frames),
        spectrum.normalise_frames(expected),
        atol=1e-6,
    )


def test_embedding_keeps_the_low_2d_fourier_magnitudes_of_each_patch() -> None:
    rng = np.random.default_rng(4)
    chroma = rng.standard_normal((PARAMS.bins_per_octave, 60)).astype(np.float32)
    starts = np.array([0, 11, 28])
    k_chroma, k_time = PARAMS.embed_chroma_coeffs, PARAMS.embed_time_coeffs
    for row, start in zip(embed_patches(chroma, starts, params=PARAMS), starts, strict=True):
        full = np.abs(np.fft.fft2(chroma[:, start : start + PARAMS.patch_frames]))
        kept = full[1 : k_chroma + 1][:, np.r_[0:k_time, -k_time + 1 : 0]]
        expected = np.sqrt(kept.reshape(-1))
        expected -= expected.mean()
        np.testing.assert_allclose(row, expected / np.linalg.norm(expected), atol=1e-5)


def test_embedding_separates_different_patches() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((PARAMS.bins_per_octave, 40)).astype(np.float32)
    b = rng.standard_normal((PARAMS.bins_per_octave, 40)).astype(np.float32)
    starts = np.array([0])
    va, vb = (embed_patches(x, starts, params=PARAMS)[0] for x in (a, b))
    assert float(va @ vb) < 0.5, "unrelated random patches should not look alike"


@given(rate=st.floats(min_value=0.5, max_value=2.0))
def test_resample_time_length_follows_rate(rate: float) -> None:
    features = np.random.default_rng(2).standard_normal((36, 100)).astype(np.float32)
    assert resample_time(features, rate).shape == (36, round(100 * rate))


def test_rate_grid_covers_half_to_double_speed() -> None:
    grid = PARAMS.rate_grid()
    assert grid[0] <= 0.5 and grid[-1] >= 2.0
    assert np.any(np.isclose(grid, 1.0))
    assert np.all(np.diff(np.log(grid)) <= np.log(PARAMS.rate_step) + 1e-9)


def test_silence_and_short_audio_are_refused() -> None:
    sr = PARAMS.sample_rate_hz
    with pytest.raises(AudioTooShortError):
        extract_features(Audio(np.zeros(int(0.5 * sr), np.float32), sr), params=PARAMS)
    with pytest.raises(AudioTooShortError, match="silent"):
        extract_features(Audio(np.zeros(10 * sr, np.float32), sr), params=PARAMS)


@settings(max_examples=12, deadline=None)
@given(shift=st.floats(min_value=-5.5, max_value=5.5))
def test_estimated_pitch_shift_follows_a_synthetic_shift(shift: float) -> None:
    import soxr

    from tests.conftest import synth_song

    song = synth_song(7, duration_s=12.0, sample_rate=PARAMS.sample_rate_hz)
    reference = extract_features(Audio(song, PARAMS.sample_rate_hz), params=PARAMS)
    # Resampling plays the song faster and higher; with the tempo ratio known this is a
    # pure pitch reference for the estimator: pitch moves by 12 * log2(factor).
    factor = 2 ** (shift / 12)
    shifted = soxr.resample(song, PARAMS.sample_rate_hz * factor, PARAMS.sample_rate_hz)
    query = prepare_query(
        extract_features(Audio(shifted.astype(np.float32), PARAMS.sample_rate_hz), params=PARAMS)
    )
    candidate = Candidate(reference_key=0, tempo_ratio=factor, offset_frames=0.0, votes=1.0)
    alignment = align_on_chroma(query, reference, candidate)
    assert alignment is not None
    verification = verify_candidate(query, reference, alignment, params=PARAMS)
    assert verification is not None
    assert abs(verification.pitch_shift_semitones - shift) < 0.3, (
        f"expected {shift:+.2f} semitones, estimated {verification.pitch_shift_semitones:+.2f}"
    )
    assert abs(verification.tempo_ratio / factor - 1) < 0.02


def test_blur_bins_spreads_a_bin_to_its_neighbours() -> None:
    one_hot = np.zeros((36, 1), dtype=np.float32)
    one_hot[0] = 1.0
    around_the_circle = blur_bins(one_hot, circular=True)[:, 0]
    assert around_the_circle[[35, 0, 1]] == pytest.approx(FREQUENCY_BLUR)
    assert around_the_circle.sum() == pytest.approx(1.0)
    at_the_edge = blur_bins(one_hot, circular=False)[:, 0]
    assert at_the_edge[35] == 0.0
    assert at_the_edge[[0, 1]] == pytest.approx([FREQUENCY_BLUR[0] + FREQUENCY_BLUR[1], 0.25])


def _verified_at(song: np.ndarray, query_path: Path, tempo_ratio: float) -> tuple[float, float]:
    """Chroma and spectral similarity of a query file against a song, aligned at a known ratio."""
    from tunetrace.fingerprint.decode import load_audio

    reference = extract_features(Audio(song, PARAMS.sample_rate_hz), params=PARAMS)
    decoded = load_audio(query_path, sample_rate_hz=PARAMS.sample_rate_hz)
    query = prepare_query(extract_features(decoded, params=PARAMS))
    candidate = Candidate(reference_key=0, tempo_ratio=tempo_ratio, offset_frames=0.0, votes=1.0)
    alignment = align_on_chroma(query, reference, candidate)
    assert alignment is not None
    verification = verify_candidate(query, reference, alignment, params=PARAMS)
    assert verification is not None
    return alignment.chroma_similarity, verification.spectral_similarity


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
def test_frequency_blur_helps_a_wsola_copy_more_than_an_unrelated_song(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import synth_song, write_audio

    song = synth_song(3, duration_s=20.0, sample_rate=PARAMS.sample_rate_hz)
    other = synth_song(7, duration_s=20.0, sample_rate=PARAMS.sample_rate_hz)
    copies = {}
    for name, source in (("copy", song), ("unrelated", other)):
        original = write_audio(tmp_path / f"{name}.wav", source, PARAMS.sample_rate_hz)
        copies[name] = tmp_path / f"{name}-sox.wav"
        subprocess.run(["sox", str(original), str(copies[name]), "tempo", "-m", "1.3"], check=True)

    blurred = {name: _verified_at(song, path, 1.3) for name, path in copies.items()}
    monkeypatch.setattr(spectrum, "FREQUENCY_BLUR", (1.0,))
    sharp = {name: _verified_at(song, path, 1.3) for name, path in copies.items()}

    chroma_gain = blurred["copy"][0] - sharp["copy"][0]
    assert chroma_gain > 0.01, (blurred, sharp)
    assert blurred["copy"][1] - sharp["copy"][1] > 0.01, (blurred, sharp)
    assert blurred["unrelated"][0] - sharp["unrelated"][0] < chroma_gain, (blurred, sharp)


def test_harmonic_change_is_zero_for_a_held_chord_and_high_for_chord_changes() -> None:
    rng = np.random.default_rng(9)
    chords = spectrum.normalise_frames(rng.standard_normal((PARAMS.bins_per_octave, 2)))
    held = np.repeat(chords[:, :1], 100, axis=1)
    changing = np.tile(np.repeat(chords, 10, axis=1), 5)  # 10 frames of each, alternating
    matched = np.ones(100, dtype=bool)

    assert harmonic_change(held, matched, 10) == pytest.approx(0.0, abs=1e-6)
    # frames 10 apart always hold the other chord
    expected = 1.0 - float(chords[:, 0] @ chords[:, 1])
    assert harmonic_change(changing, matched, 10) == pytest.approx(expected, abs=1e-5)
    # only pairs of matched frames count; none left: 0
    assert harmonic_change(changing, np.r_[np.ones(5), np.zeros(95)].astype(bool), 10) == 0.0
    assert harmonic_change(changing, matched, 200) == 0.0


def test_tonality_is_high_for_chords_and_low_for_noise() -> None:
    sr = PARAMS.sample_rate_hz
    noise = Audio((0.1 * np.random.default_rng(3).standard_normal(6 * sr)).astype(np.float32), sr)
    chord_tonality = tonality(extract_features(chord(2), params=PARAMS), params=PARAMS)
    noise_tonality = tonality(extract_features(noise, params=PARAMS), params=PARAMS)
    assert chord_tonality > 3 * LOW_TONALITY
    assert 1.0 <= noise_tonality < LOW_TONALITY
    assert low_tonality_caution(noise_tonality) is not None
    assert "non-tonal" in low_tonality_caution(noise_tonality)
    assert low_tonality_caution(chord_tonality) is None
    assert low_tonality_caution(None) is None


def test_tonality_ignores_silent_frames() -> None:
    sr = PARAMS.sample_rate_hz
    held = chord(0, duration_s=4.0).samples
    padded = Audio(np.concatenate([np.zeros(8 * sr, np.float32), held]), sr)
    alone = tonality(extract_features(chord(0, duration_s=4.0), params=PARAMS), params=PARAMS)
    with_silence = tonality(extract_features(padded, params=PARAMS), params=PARAMS)
    assert with_silence == pytest.approx(alone, rel=0.05)


def test_a_prepared_part_of_a_query_is_the_part_prepared() -> None:
    """Slicing the whole query's prepared arrays (and derived features already made) gives
    what preparing the part on its own gives: every array is made frame by frame."""
    rng = np.random.default_rng(3)
    sr = PARAMS.sample_rate_hz
    features = extract_features(
        Audio(0.1 * rng.standard_normal(sr * 12).astype(np.float32), sr), params=PARAMS
    )
    features.spectrum_frames  # noqa: B018  (made before the parts, so they slice it)
    whole = prepare_query(features)
    for first, stop in ((0, 50), (17, 61), (40, features.n_frames), (30, 31), (30, 32)):
        part, alone = whole.frames(first, stop), prepare_query(features.frames(first, stop))
        for name in ("weights", "white_frames", "white_changes", "raw_changes"):
            assert np.array_equal(getattr(part, name), getattr(alone, name)), (name, first)
            if getattr(part, name).size:  # sliced, not made again
                assert np.shares_memory(getattr(part, name), getattr(whole, name)), name
        for name in ("verification_spectrum", "chroma_bin_spectrum", "spectrum_frames"):
            made = Features(features.spectrum[:, first:stop], features.chroma[:, first:stop],
                            features.frame_rate_hz)  # fmt: skip
            sliced, own = getattr(part.features, name), getattr(made, name)
            assert np.shares_memory(sliced, getattr(features, name)), name
            if name == "chroma_bin_spectrum" and stop - first == 1:
                assert np.allclose(sliced, own, atol=1e-6)  # a one-frame FFT rounds its own way
            else:
                assert np.array_equal(sliced, own), (name, first)
