"""End-to-end matching on synthetic songs through a real catalogue and FAISS index."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import librosa
import numpy as np
import pytest
import soxr
from tunetrace.fingerprint.features import Features, features_from_spectrum
from tunetrace.index.catalogue import Catalogue

import tunetrace.matcher as matcher_module
from tests.conftest import SAMPLE_RATE, synth_song, write_audio
from tunetrace.alteration import classify_alteration
from tunetrace.matcher import Matcher, MatchSettings
from tunetrace.places import Place
from tunetrace.types import Candidate


@pytest.fixture(scope="module")
def matcher(built_catalogue: Path) -> Matcher:
    return Matcher(Catalogue(built_catalogue))


def excerpt(song: np.ndarray, start_s: float, length_s: float) -> np.ndarray:
    return song[int(start_s * SAMPLE_RATE) : int((start_s + length_s) * SAMPLE_RATE)]


@pytest.mark.parametrize(
    ("name", "tempo", "semitones", "kind"),
    [
        ("song1", 1.0, 0.0, "none"),
        ("song2", 1.25, 0.0, "time_stretch"),
        ("song4", 0.8, 0.0, "time_stretch"),
        ("song5", 1.0, -3.0, "pitch_shift"),
        ("song3", 1.15, -2.0, "time_stretch+pitch_shift"),
    ],
)
def test_altered_copies_are_found_with_their_alteration(
    tmp_path: Path,
    matcher: Matcher,
    songs: dict[str, np.ndarray],
    name: str,
    tempo: float,
    semitones: float,
    kind: str,
) -> None:
    audio = excerpt(songs[name], 4.0, 12.0 * tempo)
    if tempo != 1.0:
        audio = librosa.effects.time_stretch(audio, rate=tempo)
    if semitones:
        audio = librosa.effects.pitch_shift(audio, sr=SAMPLE_RATE, n_steps=semitones)
    query = write_audio(tmp_path / "query.ogg", audio)
    report = matcher.match_path(query)
    assert report.matches, f"{name} altered by tempo {tempo}, pitch {semitones} was not found"
    best = report.matches[0]
    assert best.reference_id.endswith(name)
    assert abs(best.tempo_ratio / tempo - 1) < 0.02, best.tempo_ratio
    assert abs(best.pitch_shift_semitones - semitones) < 0.3, best.pitch_shift_semitones
    assert best.alteration == kind
    assert best.coverage > 0.6
    segment = best.segments[0]
    assert abs(segment.reference_start_s - (4.0 + segment.query_start_s * tempo)) < 0.5


def test_speed_change_to_double_speed(
    tmp_path: Path, matcher: Matcher, songs: dict[str, np.ndarray]
) -> None:
    audio = soxr.resample(excerpt(songs["song2"], 2.0, 24.0), SAMPLE_RATE * 2.0, SAMPLE_RATE)
    report = matcher.match_path(write_audio(tmp_path / "q.flac", audio.astype(np.float32)))
    assert report.matches and report.matches[0].reference_id.endswith("song2")
    assert abs(report.matches[0].tempo_ratio - 2.0) < 0.04
    assert report.matches[0].alteration == "speed_change"


def test_unknown_music_is_not_flagged(tmp_path: Path, matcher: Matcher) -> None:
    for seed in (31, 32, 33):
        query = write_audio(tmp_path / f"new{seed}.wav", synth_song(seed, duration_s=12.0))
        report = matcher.match_path(query)
        assert report.matches == [], (
            f"unrelated song {seed} matched {report.matches[0].reference_id}"
        )


def test_padded_and_trimmed_query_reports_the_matched_part(
    tmp_path: Path, matcher: Matcher, songs: dict[str, np.ndarray]
) -> None:
    silence = np.zeros(SAMPLE_RATE * 4, dtype=np.float32)
    other = synth_song(40, duration_s=5.0)
    audio = np.concatenate([other, excerpt(songs["song1"], 10.0, 10.0), silence])
    report = matcher.match_path(write_audio(tmp_path / "padded.wav", audio))
    assert report.matches and report.matches[0].reference_id.endswith("song1")
    segment = report.matches[0].segments[0]
    assert 4.0 <= segment.query_start_s <= 6.5 and 13.5 <= segment.query_end_s <= 15.5
    assert report.matches[0].coverage < 0.75


@pytest.mark.parametrize(
    ("tempo", "shift", "expected"),
    [
        (1.0, 0.0, "none"),
        (1.0, 2.0, "pitch_shift"),
        (1.2, 0.0, "time_stretch"),
        (1.1, 1.65, "speed_change"),
        (2.0, 12.0, "speed_change"),
        (2.0, 0.0, "time_stretch"),
        (0.9, 3.0, "time_stretch+pitch_shift"),
    ],
)
def test_classify_alteration(tempo: float, shift: float, expected: str) -> None:
    assert classify_alteration(tempo, shift) == expected


def test_query_with_a_cut_out_section_reports_both_pieces(
    tmp_path: Path, matcher: Matcher, songs: dict[str, np.ndarray]
) -> None:
    song = songs["song2"]
    audio = np.concatenate([excerpt(song, 2.0, 9.0), excerpt(song, 19.0, 9.0)])
    report = matcher.match_path(write_audio(tmp_path / "cut.wav", audio))
    assert report.matches and report.matches[0].reference_id.endswith("song2")
    match = report.matches[0]
    starts = sorted(round(s.reference_start_s - s.query_start_s) for s in match.segments)
    assert starts == [2, 10], f"expected pieces from 2 s and 19 s, got {match.segments}"
    assert match.coverage > 0.85


def test_copy_looped_past_its_reference_length_is_found_in_both_repeats(
    tmp_path: Path, matcher: Matcher, songs: dict[str, np.ndarray]
) -> None:
    # a length-shifted upload: the whole song sped up by 1.1, then played twice in a row
    sped = soxr.resample(songs["song3"], SAMPLE_RATE, SAMPLE_RATE / 1.1)
    audio = np.concatenate([sped, sped])
    report = matcher.match_path(write_audio(tmp_path / "looped.flac", audio))
    assert report.matches and report.matches[0].reference_id.endswith("song3")
    match = report.matches[0]
    assert match.tempo_ratio == pytest.approx(1.1, abs=0.02)
    repeat_s = len(sped) / SAMPLE_RATE
    query_starts = sorted(round(s.query_start_s / repeat_s) for s in match.segments)
    assert query_starts == [0, 1], f"expected one segment per repeat, got {match.segments}"
    assert match.coverage > 0.85


def test_short_reference_inside_a_longer_upload_is_found(
    tmp_path: Path, matcher: Matcher, songs: dict[str, np.ndarray]
) -> None:
    padded = np.concatenate([synth_song(60, 20), songs["song4"], synth_song(61, 20)])
    report = matcher.match_path(write_audio(tmp_path / "padded.flac", padded))
    assert report.matches and report.matches[0].reference_id.endswith("song4")
    (segment,) = report.matches[0].segments
    assert segment.query_start_s == pytest.approx(20, abs=1.0)
    assert segment.query_end_s == pytest.approx(50, abs=1.0)


def test_verification_in_threads_equals_one_thread(
    tmp_path: Path, matcher: Matcher, songs: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = librosa.effects.time_stretch(excerpt(songs["song3"], 3.0, 14.0), rate=1.1)
    features = matcher.load_query(write_audio(tmp_path / "query.wav", audio))
    by_threads = {}
    for threads in (1, 2):
        monkeypatch.setattr("tunetrace.threads.thread_count", lambda threads=threads: threads)
        by_threads[threads] = matcher.verify(features)
    assert len(by_threads[1]) > 1  # more than one candidate was verified
    assert by_threads[1] == by_threads[2]


def test_only_the_best_chroma_alignments_are_screened(
    tmp_path: Path, matcher: Matcher, songs: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    screened: list[float] = []
    screen = matcher_module.screen_alignment

    def counting_screen(query, reference, alignment, **kwargs):  # type: ignore[no-untyped-def]
        screened.append(alignment.chroma_similarity)
        return screen(query, reference, alignment, **kwargs)

    monkeypatch.setattr(matcher_module, "screen_alignment", counting_screen)
    audio = librosa.effects.time_stretch(excerpt(songs["song2"], 5.0, 13.0), rate=0.9)
    features = matcher.load_query(write_audio(tmp_path / "query.wav", audio))
    everything = Matcher(matcher.catalogue, settings=MatchSettings(screen_top=None))
    everything.verify(features)
    all_similarities = sorted(screened, reverse=True)
    screened.clear()

    best_two = Matcher(matcher.catalogue, settings=MatchSettings(screen_top=2))
    verifications = best_two.verify(features)

    assert len(all_similarities) > 2
    assert sorted(screened, reverse=True) == all_similarities[:2]
    assert verifications[0].reference_key == everything.verify(features)[0].reference_key


def test_longer_queries_send_more_references_to_alignment(matcher: Matcher) -> None:
    settings = MatchSettings(max_candidates=16, candidates_per_minute=16.0, most_candidates=32)
    counting = Matcher(matcher.catalogue, settings=settings)

    def count(seconds: float) -> int:
        frames = int(seconds * 10)
        silent = np.zeros((216, frames), np.float32)
        return counting.candidate_count(Features(silent, silent[:36], 10.0))

    assert [count(s) for s in (10, 60, 90, 120, 600)] == [16, 16, 24, 32, 32]


@pytest.mark.parametrize(
    "changes",
    [{"max_candidates": 0}, {"most_candidates": 0}, {"candidates_per_minute": float("inf")},
     {"candidates_per_minute": float("nan")}, {"candidates_per_minute": -1.0}],
)  # fmt: skip
def test_candidate_counts_that_cannot_work_are_refused(changes: dict) -> None:
    with pytest.raises(ValueError, match="candidates"):
        MatchSettings(**changes)


def _spectrum_of(seconds: float, params) -> Features:
    frames = int(seconds * params.frame_rate_hz)
    spectrum = np.random.default_rng(3).random((params.n_bins, frames), dtype=np.float32)
    return features_from_spectrum(spectrum, params=params)


def test_long_queries_are_embedded_with_patches_further_apart(matcher: Matcher) -> None:
    params = matcher.catalogue.params
    spaced = Matcher(matcher.catalogue, settings=MatchSettings(long_query_patch_hop=7))

    def patch_starts(seconds: float) -> np.ndarray:
        _, rate_index, starts = spaced.query_patches(_spectrum_of(seconds, params), params)
        return starts[rate_index == rate_index[0]]

    assert set(np.diff(patch_starts(100.0))) == {params.query_patch_hop}
    assert set(np.diff(patch_starts(120.0))) == {params.query_patch_hop}  # not longer
    assert set(np.diff(patch_starts(130.0))) == {7}


def test_the_candidate_search_and_verification_vote_with_the_long_query_hop(
    matcher: Matcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = Matcher(matcher.catalogue, settings=MatchSettings(long_query_patch_hop=7))
    hops = []
    real_find_candidates = matcher_module.find_candidates

    def recording(features, searcher, *, patches, **kwargs):
        _, rate_index, starts = patches
        hops.append(set(np.diff(starts[rate_index == rate_index[0]]).tolist()))
        return real_find_candidates(features, searcher, patches=patches, **kwargs)

    monkeypatch.setattr(matcher_module, "find_candidates", recording)
    features = _spectrum_of(130.0, matcher.catalogue.params)
    spaced.candidates(features)
    spaced.verify(features)
    assert hops and all(hop == {7} for hop in hops), hops


@pytest.mark.parametrize("hop", [0, 9.5, True, -9])
def test_a_long_query_hop_that_cannot_work_is_refused(hop: object) -> None:
    with pytest.raises(ValueError, match="long_query_patch_hop"):
        MatchSettings(long_query_patch_hop=hop)


def test_a_long_query_hop_longer_than_a_patch_is_refused(matcher: Matcher) -> None:
    too_far = matcher.catalogue.params.patch_frames + 1
    with pytest.raises(ValueError, match="patch length"):
        Matcher(matcher.catalogue, settings=MatchSettings(long_query_patch_hop=too_far))


@pytest.mark.parametrize("n_neighbours", [0, -3])
def test_no_neighbours_per_patch_is_refused(n_neighbours: int) -> None:
    with pytest.raises(ValueError, match="n_neighbours"):
        MatchSettings(n_neighbours=n_neighbours)


def test_a_reference_whose_verifications_came_to_nothing_gets_its_next_alignment(
    matcher: Matcher,
) -> None:
    """Chosen alignments whose windows broke into pieces under the section minimum judged
    nothing: the reference's next alignment (another window) is verified after them, while a
    reference that was judged (and scored low) is not tried again."""
    def screened(value: float, key: int) -> Place:
        rank = len(made)
        made.append(
            Place(
                rank,
                (100 * rank, 100 * rank + 150),
                SimpleNamespace(candidate=Candidate(key, 1.0, 0.0, 1.0)),  # type: ignore[arg-type]
                SimpleNamespace(value=value),  # type: ignore[arg-type]
            )
        )
        return made[-1]

    made: list[Place] = []
    unjudged_first, unjudged_second = screened(1.5, 7), screened(1.4, 7)
    judged = screened(1.3, 8)
    unjudged_next, judged_next = screened(1.2, 7), screened(1.1, 8)
    items = [unjudged_first, unjudged_second, judged, unjudged_next, judged_next]
    verified = [SimpleNamespace(reference_key=8, score=0.3)]

    extra = matcher.more_places(items, items[:3], verified)  # type: ignore[arg-type]

    assert extra == [unjudged_next]
