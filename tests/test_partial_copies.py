"""Copied sections inside longer uploads: padded sections, medleys, loops, long honest music."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import librosa
import numpy as np
import pytest
from tunetrace.fingerprint.features import Features
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue

from tests.conftest import SAMPLE_RATE, synth_song, write_audio
from tunetrace.candidates import densest_run, query_patch_vectors
from tunetrace.ingest import fingerprint_reference
from tunetrace.matcher import MIN_SCORE_OF_OTHER_SECTIONS, MIN_WINDOW_SCORE_TO_GROW, Matcher
from tunetrace.query import prepare_query
from tunetrace.repeats import self_similar_places
from tunetrace.report import Match
from tunetrace.segment_edges import join_across_passages, reach_segments
from tunetrace.segments import continuous_runs, merge_segments
from tunetrace.types import Candidate, Segment, Verification

SR = SAMPLE_RATE
WORKS = {f"work{seed}": synth_song(seed, duration_s=80) for seed in range(60, 66)}
#: Edges of a located section may be this far from the truth (seconds).
EDGE_TOLERANCE_S = 2.0


@contextmanager
def matcher_of(folder: Path, works: dict[str, np.ndarray]) -> Iterator[Matcher]:
    """A matcher over a new catalogue, in ``folder``, of ``works`` (name: samples)."""
    with Catalogue(folder / "catalogue", create=True) as catalogue:
        for name, samples in works.items():
            path = write_audio(folder / f"{name}.wav", samples)
            catalogue.add(name, fingerprint_reference(path, params=FingerprintParams()))
    catalogue = Catalogue(folder / "catalogue", read_only=True)
    try:
        yield Matcher(catalogue)
    finally:
        catalogue.close()


@pytest.fixture(scope="module")
def partial_matcher(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("partial")
    with matcher_of(folder, WORKS) as matcher:
        yield matcher, folder


def altered(
    work: str, start_s: float, length_s: float, rate: float, semitones: float
) -> np.ndarray:
    """``length_s`` of a work from ``start_s``, played ``rate`` times faster and shifted."""
    samples = WORKS[work][int(start_s * SR) : int((start_s + length_s) * SR)]
    samples = librosa.effects.time_stretch(samples, rate=rate)
    if semitones:
        samples = librosa.effects.pitch_shift(samples, sr=SR, n_steps=semitones)
    return samples.astype(np.float32)


def filler(seed: int, seconds: float) -> np.ndarray:
    """Music the catalogue does not hold."""
    return synth_song(seed, duration_s=seconds)


def match(matcher: Matcher, folder: Path, name: str, parts: list[np.ndarray]) -> list[Match]:
    path = write_audio(folder / f"{name}.wav", np.concatenate(parts))
    return matcher.match_path(path).matches


def located(match: Match, start_s: float, end_s: float) -> bool:
    return any(
        abs(s.query_start_s - start_s) <= EDGE_TOLERANCE_S
        and abs(s.query_end_s - end_s) <= EDGE_TOLERANCE_S
        for s in match.segments
    )


def test_densest_run_ignores_stray_voters() -> None:
    positions = np.array([5.0, 300, 310, 320, 330, 340, 900])
    assert densest_run(positions, gap=80, length=40) == (300.0, 380.0)
    assert densest_run(np.array([12.0]), gap=80, length=40) == (12.0, 52.0)


@pytest.mark.parametrize(
    ("seconds", "before_s", "after_s", "rate", "semitones"),
    [(10, 25, 25, 1.2, -1), (10, 70, 70, 1.2, -1), (20, 20, 20, 1.08, 0), (30, 60, 60, 0.9, 2)],
)
def test_a_section_inside_other_music_is_found_and_located(
    partial_matcher, seconds: float, before_s: float, after_s: float, rate: float, semitones: float
) -> None:
    matcher, folder = partial_matcher
    section = altered("work61", 30, seconds, rate, semitones)
    end_s = before_s + len(section) / SR
    matches = match(matcher, folder, f"section{seconds}-{before_s}",
                    [filler(90, before_s), section, filler(91, after_s)])  # fmt: skip
    assert [m.reference_id for m in matches] == ["work61"], matches
    found = matches[0]
    assert located(found, before_s, end_s), (found.segments, before_s, end_s)
    assert len(found.segments) == 1, "fragments or duplicates beside the section"
    assert found.score >= matcher.default_min_score
    assert abs(found.tempo_ratio - rate) < 0.02
    assert abs(found.pitch_shift_semitones - semitones) < 0.3
    assert found.coverage == pytest.approx((end_s - before_s) / (end_s + after_s), abs=0.06)


def test_every_work_of_a_medley_is_found_with_its_section(partial_matcher) -> None:
    matcher, folder = partial_matcher
    parts = [altered("work62", 10, 25, 1.1, 0), altered("work63", 30, 25, 0.9, 2),
             altered("work64", 20, 25, 1.0, -1)]  # fmt: skip
    edges = np.cumsum([0] + [len(p) / SR for p in parts])
    matches = {m.reference_id: m for m in match(matcher, folder, "medley3", parts)}
    assert set(matches) == {"work62", "work63", "work64"}
    for number, work in enumerate(("work62", "work63", "work64")):
        assert located(matches[work], edges[number], edges[number + 1]), matches[work].segments


def test_a_looped_section_gives_one_segment_per_repeat(partial_matcher) -> None:
    matcher, folder = partial_matcher
    hook = altered("work65", 30, 12, 1.1, 1)
    parts, starts = [], []
    for number in range(3):
        parts.append(filler(92 + number, 10))
        starts.append(sum(len(p) for p in parts) / SR)
        parts.append(hook)
    parts.append(filler(96, 10))
    matches = match(matcher, folder, "loop", parts)
    assert [m.reference_id for m in matches] == ["work65"]
    assert len(matches[0].segments) == 3, matches[0].segments
    for start in starts:
        assert located(matches[0], start, start + len(hook) / SR)


@pytest.mark.parametrize("hook_s", [0, 40])
def test_repeats_on_one_alignment_stay_apart_across_other_music(
    tmp_path: Path, hook_s: int
) -> None:
    """A work that plays its hook twice, 4 s apart (at its start, or well inside it): an
    upload with the hook twice and 4 s of other music between them puts both repeats on one
    alignment (the second against the work's second playing). The passage between them is
    other music, not a dip in one copy, and no quiet intro to carry a segment to the work's
    start over: two segments, one per repeat."""
    song = synth_song(70, duration_s=100)
    hook = song[hook_s * SR : (hook_s + 12) * SR]
    work = np.concatenate([song[: (hook_s + 16) * SR], hook, song[(hook_s + 16) * SR :]])
    with matcher_of(tmp_path, {"looped": work}) as matcher:
        parts = [filler(120, 20), hook, filler(121, 4), hook, filler(122, 15)]
        matches = match(matcher, tmp_path, "two-repeats", parts)
    assert [m.reference_id for m in matches] == ["looped"]
    spans = [(round(s.query_start_s, 1), round(s.query_end_s, 1)) for s in matches[0].segments]
    assert len(spans) == 2, spans
    for start in (20.0, 36.0):
        assert located(matches[0], start, start + 12.0), spans


def test_long_honest_music_is_not_flagged(partial_matcher) -> None:
    matcher, folder = partial_matcher
    assert match(matcher, folder, "honest", [filler(97, 240)]) == []


def test_evidence_draws_the_whole_upload_with_every_work(partial_matcher) -> None:
    from tunetrace.explain import build_evidence, evidence_to_dict, render_png

    matcher, folder = partial_matcher
    parts = [altered("work62", 10, 20, 1.1, 0), filler(98, 15), altered("work63", 30, 20, 0.9, 2)]
    path = write_audio(folder / "medley-evidence.wav", np.concatenate(parts))
    features = matcher.load_query(path)
    evidence = build_evidence(matcher, features, query_name=path.name)
    timeline = evidence_to_dict(evidence)["timeline"]
    assert {entry["reference_id"] for entry in timeline} == {"work62", "work63"}
    assert all(entry["segments"] for entry in timeline)
    assert "2 works" in evidence.verdict
    assert render_png(evidence)[:8] == b"\x89PNG\r\n\x1a\n"
    # references the best verifications leave out are still aligned with when named (an
    # unrelated one may offer no alignment at all: most of them do)
    aligned = 0
    for other in ("work60", "work61", "work64", "work65"):
        named = build_evidence(matcher, features, query_name=path.name, reference_id=other)
        assert named.reference_id == other and not named.is_copy
        assert named.score < matcher.default_min_score
        aligned += named.aligned_reference_chroma is not None
    assert aligned >= 2, f"only {aligned} of 4 named references were aligned with"


def test_continuous_runs_bridge_short_gaps_and_drop_blips() -> None:
    mask = np.zeros(60, dtype=bool)
    mask[5:15] = True  # a run
    mask[16:20] = True  # after a 1-frame gap: bridged
    mask[24:34] = True  # 4 frames on: joined (gap <= max_gap)
    mask[40:41] = True  # a blip: dropped
    mask[50:58] = True  # too far: a run of its own
    assert continuous_runs(mask, min_run=2, max_gap=4) == [(5, 34), (50, 58)]


def test_a_segment_grows_to_the_edges_of_its_section(partial_matcher) -> None:
    """A section's verification that matched only its middle (as on a window around its
    voters) grows to where the copy starts and ends, not into the music around it."""
    matcher, folder = partial_matcher
    before_s, after_s = 60.0, 60.0
    section = altered("work61", 10, 30, 1.1, 2)
    end_s = before_s + len(section) / SR
    upload = np.concatenate([filler(80, before_s), section, filler(81, after_s)])
    path = write_audio(folder / "grow.wav", upload)
    features = matcher.load_query(path)
    best = matcher.verify(features)[0]
    fps = features.frame_rate_hz
    assert matcher.catalogue.record_by_key(best.reference_key).reference_id == "work61"
    middle = Segment(
        query_start_s=before_s + 10.0,
        query_end_s=before_s + 15.0,
        reference_start_s=best.offset_frames / fps + (before_s + 10.0) * best.tempo_ratio,
        reference_end_s=best.offset_frames / fps + (before_s + 15.0) * best.tempo_ratio,
    )
    shrunk = replace(best, segments=[middle])
    grown = reach_segments(
        prepare_query(features, matcher.verify_settings),
        matcher.catalogue.features(best.reference_key),
        shrunk,
        params=matcher.catalogue.params,
        settings=matcher.verify_settings,
    )
    assert len(grown.segments) == 1
    segment = grown.segments[0]
    assert abs(segment.query_start_s - before_s) <= EDGE_TOLERANCE_S, segment
    assert abs(segment.query_end_s - end_s) <= EDGE_TOLERANCE_S, segment
    # the reference times are those of the copied material (10-40 s of work61)
    assert segment.reference_start_s == pytest.approx(10.0, abs=EDGE_TOLERANCE_S)
    assert segment.reference_end_s == pytest.approx(40.0, abs=EDGE_TOLERANCE_S)
    assert grown.score == best.score and grown.tempo_ratio == best.tempo_ratio
    # and the matcher's report grows them so
    (reported,) = matcher.matches_from(features, [shrunk])
    assert located(reported, before_s, end_s), reported.segments


@pytest.mark.parametrize(
    ("passage_holds", "resumed_taken"),
    [
        ("the copy under noise", True),
        ("the copy under noise", False),
        ("other music", True),
        ("more of the copy under noise than follows it", True),
    ],
)
def test_a_copy_resumed_after_a_passage_that_did_not_verify_is_a_segment_too(
    partial_matcher, monkeypatch: pytest.MonkeyPatch, passage_holds: str, resumed_taken: bool
) -> None:
    """A verification whose segments end before a passage of the copy buried in noise (too
    deep for the segment to grow through it) gets a segment where the copy resumes at its
    alignment after it; not where the passage holds other music (the other repeat of a
    loop, from a reference that repeats itself, would fit at that alignment too), and the
    music around the copy gets none; nor after a passage longer than what follows it."""
    if not resumed_taken:  # the check fails without the step
        monkeypatch.setattr("tunetrace.segment_edges.RESUMED_MIN_S", float("inf"))
    matcher, folder = partial_matcher
    before_s, after_s = 30.0, 20.0
    copy = altered("work62", 0, 70, 1.1, 0)
    long = passage_holds.startswith("more")
    passage = slice(int(25.0 * SR), int((50.0 if long else 35.0) * SR))  # of the copy
    if passage_holds == "other music":
        copy[passage] = filler(83, 10.0)[: passage.stop - passage.start]
    else:  # noise 18 dB over the music
        copy[passage] = with_noise(copy[passage], below_db=-18.0, seed=3)
    end_s = before_s + len(copy) / SR
    upload = np.concatenate([filler(82, before_s), copy, filler(84, after_s)])
    name = f"resumed-{passage_holds.replace(' ', '-')}.wav"
    features = matcher.load_query(write_audio(folder / name, upload))
    best = matcher.verify(features)[0]
    assert matcher.catalogue.record_by_key(best.reference_key).reference_id == "work62"
    fps = features.frame_rate_hz
    first_part = Segment(  # as a window on the copy's first part would have verified it
        query_start_s=before_s + 5.0,
        query_end_s=before_s + 15.0,
        reference_start_s=best.offset_frames / fps + (before_s + 5.0) * best.tempo_ratio,
        reference_end_s=best.offset_frames / fps + (before_s + 15.0) * best.tempo_ratio,
    )
    grown = reach_segments(
        prepare_query(features, matcher.verify_settings),
        matcher.catalogue.features(best.reference_key),
        replace(best, segments=[first_part]),
        params=matcher.catalogue.params,
        settings=matcher.verify_settings,
    )
    spans = [(s.query_start_s, s.query_end_s) for s in grown.segments]
    assert abs(spans[0][0] - before_s) <= EDGE_TOLERANCE_S, spans
    assert spans[0][1] < before_s + 35.0, spans  # the passage is not grown through
    resumed = [s for s in grown.segments if s.query_start_s > before_s + 30.0]
    found = passage_holds == "the copy under noise" and resumed_taken
    assert bool(resumed) == found, spans
    if found:
        (segment,) = resumed
        assert abs(segment.query_start_s - (before_s + 35.0)) <= EDGE_TOLERANCE_S, spans
        assert abs(segment.query_end_s - end_s) <= EDGE_TOLERANCE_S, spans
        assert segment.reference_start_s == pytest.approx(35.0 * 1.1, abs=EDGE_TOLERANCE_S)
    assert len(grown.segments) == 1 + found, spans


def _verification(score: float, tempo: float, semitones: float, *spans: tuple[float, float]):
    return Verification(
        reference_key=1, tempo_ratio=tempo, pitch_shift_semitones=semitones,
        spectral_shift_semitones=semitones, offset_frames=0.0, spectral_similarity=0.0,
        null_similarity=0.0, local_similarity=0.0, chroma_similarity=0.0,
        dynamics_similarity=0.0, onset_similarity=0.0, coverage=0.0, score=score,
        segments=[Segment(a, b, a * tempo, b * tempo) for a, b in spans],
    )  # fmt: skip


def test_the_report_follows_the_widest_equally_sure_consistent_alignment(partial_matcher) -> None:
    """A reference's report follows, of its verifications as sure as the best and agreeing
    with it on the alteration, the one covering most of the query; the score stays the
    best's."""
    matcher, _ = partial_matcher
    features = matcher.load_query(write_audio(Path(matcher.catalogue.directory).parent
                                              / "short.wav", filler(99, 20)))  # fmt: skip
    low = 0.4  # below the score segments grow at: the segments are compared as given
    best = _verification(low, 1.0, 0.0, (10, 14))
    wider_same_alteration = _verification(low - 0.005, 1.01, 0.1, (2, 18))
    wider_other_alteration = _verification(low - 0.002, 1.25, 3.0, (0, 20))
    less_sure = _verification(low - 0.1, 1.0, 0.0, (0, 20))
    followed, others = matcher.reported_verification(
        features, [best, wider_other_alteration, wider_same_alteration, less_sure]
    )
    assert followed.segments == wider_same_alteration.segments
    assert followed.score == low and followed.tempo_ratio == 1.01
    assert len(others) == 3
    alone, _ = matcher.reported_verification(features, [best, wider_other_alteration])
    assert alone == best


def test_a_consistent_alignment_elsewhere_keeps_what_the_best_leaves_of_it() -> None:
    """Two places of one reference (a moved section): another alignment's segment that runs
    into the best one's keeps its own part rather than being dropped whole."""
    best = _verification(0.99, 1.0, 0.0, (10, 30))
    moved = replace(
        best,
        score=0.98,
        segments=[Segment(25.0, 45.0, 100.0, 120.0)],  # 90 s further on the reference
    )
    merged = merge_segments(best, [moved])
    assert [(s.query_start_s, s.query_end_s) for s in merged] == [(10, 30), (30, 45)]
    assert merged[1].reference_start_s == pytest.approx(105.0)
    assert merged[1].reference_end_s == pytest.approx(120.0)
    # what is left under the shortest reported segment is not reported
    short = replace(moved, segments=[Segment(25.0, 32.0, 100.0, 107.0)])
    assert [(s.query_start_s, s.query_end_s) for s in merge_segments(best, [short])] == [(10, 30)]


def test_sections_of_one_place_are_joined_across_a_passage_only_where_it_carries_the_copy(
    partial_matcher,
) -> None:
    """Two sections of one alignment are one across the passage between them where its
    frames fit the reference (a noisy bridge that did not verify); not where other music
    replaced that passage, and not across a passage longer than the shorter section."""
    matcher, folder = partial_matcher
    copy = librosa.effects.time_stretch(WORKS["work61"], rate=1.1)
    passage = slice(int(30.0 * SR), int(40.0 * SR))  # of the copy: 50-60 s of the upload
    replaced = copy.copy()
    replaced[passage] = filler(92, 10.0)[: passage.stop - passage.start]
    bridged = copy.copy()  # the passage buried in noise 18 dB over the music
    bridged[passage] = with_noise(copy[passage], below_db=-18.0, seed=4)
    end_s = 20.0 + len(copy) / SR
    params, settings = matcher.catalogue.params, matcher.verify_settings

    def joined(samples: np.ndarray, name: str, spans: list[tuple[float, float]]) -> list:
        upload = np.concatenate([filler(90, 20.0), samples, filler(91, 15.0)])
        path = write_audio(folder / f"{name}.wav", upload)
        features = matcher.load_query(path)
        best = matcher.verify(features)[0]
        ratio = best.tempo_ratio  # each section at the copy's own alignment
        sections = [Segment(a, b, (a - 20.0) * ratio, (b - 20.0) * ratio) for a, b in spans]
        reference = matcher.catalogue.features(best.reference_key)
        query = prepare_query(features, settings)
        segments = join_across_passages(
            query, reference, sections, best, params=params, settings=settings
        )
        return [(round(s.query_start_s, 1), round(s.query_end_s, 1)) for s in segments]

    assert joined(bridged, "bridged", [(20.0, 50.0), (60.0, end_s)]) == [
        (20.0, round(end_s, 1))
    ]
    assert joined(copy, "far", [(20.0, 25.0), (35.0, end_s)]) == [(20.0, 25.0),
                                                                   (35.0, round(end_s, 1))]
    # a passage over 5 s is held to the sections on its sides, not to the stretch joined
    # so far; shorter ones are judged first, and what they join is one section
    steps = [(20.0, 27.0), (33.0, 40.0), (48.0, end_s)]
    assert joined(copy, "steps", steps) == [(20.0, 40.0), (48.0, round(end_s, 1))]
    dipped = [(20.0, 40.0), (48.0, 51.0), (54.0, end_s)]
    assert joined(copy, "dipped", dipped) == [(20.0, round(end_s, 1))]
    assert joined(replaced, "replaced", [(20.0, 50.0), (60.0, end_s)]) == [
        (20.0, 50.0), (60.0, round(end_s, 1))
    ]
    # a short passage: too quiet to judge, a moment of the copy; other music, a break
    short = slice(int(30.0 * SR), int(33.0 * SR))
    hushed, interrupted = copy.copy(), copy.copy()
    hushed[short] = 0.0
    interrupted[short] = filler(93, 3.0)[: short.stop - short.start]
    assert joined(hushed, "hushed", [(20.0, 50.0), (53.0, end_s)]) == [(20.0, round(end_s, 1))]
    assert joined(interrupted, "interrupted", [(20.0, 50.0), (53.0, end_s)]) == [
        (20.0, 50.0), (53.0, round(end_s, 1))
    ]


def test_stretches_of_one_place_join_over_a_fragment_between_them() -> None:
    """A fragment between two sections of one place, within the dip joined inside a copy,
    no longer keeps them apart; a section of another place still does. A longer passage is
    left to be judged on the query's frames (:func:`join_across_passages`)."""
    copy = _verification(0.99, 1.0, 0.0, (10, 30), (30.6, 31.4), (31.9, 50))
    assert [(s.query_start_s, s.query_end_s) for s in merge_segments(copy, [])] == [(10, 50)]
    farther = _verification(0.99, 1.0, 0.0, (10, 30), (34, 50))
    assert [(s.query_start_s, s.query_end_s) for s in merge_segments(farther, [])] == [
        (10, 30), (34, 50)
    ]  # fmt: skip
    other_place = replace(copy, score=0.98, segments=[Segment(30.5, 33.5, 200.0, 203.0)])
    apart = merge_segments(_verification(0.99, 1.0, 0.0, (10, 30), (34, 50)), [other_place])
    assert [(s.query_start_s, s.query_end_s) for s in apart] == [(10, 30), (30.5, 33.5),
                                                                  (34, 50)]  # fmt: skip


def test_self_similar_places_find_where_a_stretch_recurs() -> None:
    rng = np.random.default_rng(3)
    chroma = rng.normal(size=(12, 400))
    hook = chroma[:, 50:90].copy()
    chroma[:, 200:240] = hook  # played again
    chroma[:, 320:360] = hook + 0.1 * rng.normal(size=hook.shape)  # again, a little altered
    chroma /= np.linalg.norm(chroma, axis=0, keepdims=True)
    assert sorted(self_similar_places(chroma, 50, 90, min_shift=40, limit=8)) == [200, 320]
    assert self_similar_places(chroma, 50, 90, min_shift=40, limit=1) in ([200], [320])
    # music that does not recur offers no place
    chroma[:, 200:240] = rng.normal(size=hook.shape)
    chroma[:, 320:360] = rng.normal(size=hook.shape)
    chroma /= np.linalg.norm(chroma, axis=0, keepdims=True)
    assert self_similar_places(chroma, 50, 90, min_shift=40, limit=8) == []


def test_repeats_the_search_offers_no_place_for_are_found_where_the_upload_recurs(
    partial_matcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the per-reference place search offering nothing, the repeats of a loop are still
    found where the upload repeats itself: four repeats, four segments."""
    matcher, folder = partial_matcher
    monkeypatch.setattr(Matcher, "_repeat_places", lambda *args: [])
    hook = altered("work64", 20, 11, 0.85, -1)
    parts, starts = [], []
    for number in range(4):
        parts.append(filler(110 + number, 6))
        starts.append(sum(len(p) for p in parts) / SR)
        parts.append(hook)
    matches = match(matcher, folder, "loop4", parts)
    assert [m.reference_id for m in matches] == ["work64"]
    for start in starts:
        assert located(matches[0], start, start + len(hook) / SR), (start, matches[0].segments)


def test_a_place_tried_where_the_work_did_not_verify_adds_no_section(partial_matcher) -> None:
    """Another verification of a reported work at its tempo ratio and pitch adds its
    section only when it verified: one scoring nothing (a repeat looked for in unrelated
    music) adds no segment, whatever threshold the caller asked for."""
    matcher, folder = partial_matcher
    key = matcher.catalogue.list()[0].key
    features = matcher.load_query(write_audio(folder / "sixty.wav", filler(98, 60)))
    low = 0.4  # below the score segments grow at: the segments are compared as given
    best = replace(_verification(low, 1.0, 0.0, (10, 30)), reference_key=key)
    tried = replace(  # another place of the reference (a repeat 60 s further on)
        _verification(0.0, 1.0, 0.0), reference_key=key, segments=[Segment(40, 52, 100, 112)]
    )
    verified = replace(tried, score=MIN_SCORE_OF_OTHER_SECTIONS)

    def spans(others: list[Verification]) -> list[tuple[float, float]]:
        (reported,) = matcher.matches_from(features, [best, *others], min_score=0.0)
        return [(s.query_start_s, s.query_end_s) for s in reported.segments]

    assert spans([tried]) == [(10, 30)]
    assert spans([verified]) == [(10, 30), (40, 52)]
    # at the best one's own place too: the other music between them is no passage of a copy
    # (it fits that alignment at under PASSAGE_MIN_LEVEL, though above a misaligned one)
    same_place = replace(verified, segments=[Segment(40, 52, 40, 52)])
    assert spans([same_place]) == [(10, 30), (40, 52)]


def test_a_repeat_is_looked_for_at_the_found_tempo_and_two_offsets_per_part(
    partial_matcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search for a found work's repeats sends only the patches resampled to about its
    tempo ratio, and tries the next offset voted on a part of the query when the first may
    not verify (a reference that repeats itself), but no third."""
    matcher, _ = partial_matcher
    params = matcher.catalogue.params
    key = matcher.catalogue.list()[0].key
    features = matcher.load_query(
        write_audio(Path(matcher.catalogue.directory).parent / "forty.wav", filler(97, 40))
    )
    fps = params.frame_rate_hz
    found = [replace(_verification(0.99, 0.8, 0.0, (0, 10)), reference_key=key)]

    def place(offset: float, start_s: float, end_s: float) -> Candidate:
        return Candidate(key, 0.8, offset, 1.0, query_span_frames=(start_s * fps, end_s * fps))

    offered = [place(100, 20, 30), place(300, 20.5, 30), place(500, 20, 29.5), place(700, 5, 9),
               place(900, 31, 39)]  # fmt: skip
    sent = {}

    def search(features, searcher, *, patches, **settings):
        sent["rates"] = set(params.rate_grid()[patches[1]].round(3))
        return offered

    monkeypatch.setattr("tunetrace.matcher.find_candidates", search)
    patches = query_patch_vectors(features, params=params)
    places = matcher._repeat_places(features, key, found, patches)
    assert [p.offset_frames for p in places] == [100, 300, 900]  # not a third, not on found
    assert sent["rates"] and all(abs(r / 0.8 - 1) <= 0.06 for r in sent["rates"])


def faded_out(samples: np.ndarray, seconds: float) -> np.ndarray:
    """``samples`` with their last ``seconds`` faded to silence."""
    gain = np.ones(len(samples), dtype=np.float32)
    n = int(seconds * SR)
    gain[-n:] = np.linspace(1.0, 0.0, n, dtype=np.float32) ** 2
    return samples * gain


@pytest.fixture(scope="module")
def fading_matcher(tmp_path_factory: pytest.TempPathFactory):
    """A catalogue of a work that fades out over its last 20 s (and one that does not)."""
    folder = tmp_path_factory.mktemp("fading")
    works = {"fading66": faded_out(synth_song(66, duration_s=80), 20.0), "work60": WORKS["work60"]}
    with matcher_of(folder, works) as matcher:
        yield matcher, folder, works["fading66"]


@pytest.mark.parametrize("edges_followed", [True, False])
def test_a_padded_copy_is_located_through_its_fade_out(
    fading_matcher, monkeypatch: pytest.MonkeyPatch, edges_followed: bool
) -> None:
    """A whole work copied after other music, fading out as its reference does: its segment
    reaches the copy's end (the reference's), where the quiet fade no longer fits well enough
    to grow over."""
    if not edges_followed:  # the check fails without the steps that follow the edges
        monkeypatch.setattr("tunetrace.segment_edges.EDGE_REACH_S", 0.0)
        monkeypatch.setattr("tunetrace.segment_edges.PAUSE_DB", 1000.0)
    matcher, folder, work = fading_matcher
    before_s = 40.0
    copy = librosa.effects.pitch_shift(
        librosa.effects.time_stretch(work, rate=1.1), sr=SR, n_steps=2
    ).astype(np.float32)
    end_s = before_s + len(copy) / SR
    matches = match(matcher, folder, "faded", [filler(92, before_s), copy])
    assert [m.reference_id for m in matches] == ["fading66"], matches
    reaches_end = located(matches[0], before_s, end_s)
    assert reaches_end == edges_followed, (matches[0].segments, before_s, end_s)


def with_pause(samples: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    """``samples`` silent for ``seconds`` from ``start_s``."""
    out = samples.copy()
    out[int(start_s * SR) : int((start_s + seconds) * SR)] = 0.0
    return out


def softened(samples: np.ndarray, start_s: float, end_s: float, by_db: float = 25.0) -> np.ndarray:
    """``samples`` played ``by_db`` decibels softer from ``start_s`` to ``end_s``."""
    out = samples.copy()
    out[int(start_s * SR) : int(end_s * SR)] *= 10.0 ** (-by_db / 20.0)
    return out


def with_noise(samples: np.ndarray, below_db: float, seed: int) -> np.ndarray:
    """``samples`` with white noise ``below_db`` decibels under their RMS level."""
    rms = float(np.sqrt(np.mean(samples**2)))
    noise = np.random.default_rng(seed).standard_normal(len(samples)).astype(np.float32)
    return samples + noise * rms * 10.0 ** (-below_db / 20.0)


@pytest.fixture(scope="module")
def pausing_matcher(tmp_path_factory: pytest.TempPathFactory):
    """A catalogue of a work with 8 s of silence at 35-43 s, one with a soft first 30 s, one
    with soft last 20 s (and one with none)."""
    folder = tmp_path_factory.mktemp("pausing")
    works = {"pausing67": with_pause(synth_song(67, duration_s=80), 35.0, 8.0),
             "soft_intro70": softened(synth_song(70, duration_s=80), 0.0, 30.0),
             "soft_coda71": softened(synth_song(71, duration_s=80), 60.0, 80.0),
             "work60": WORKS["work60"]}  # fmt: skip
    with matcher_of(folder, works) as matcher:
        yield matcher, folder, works


@pytest.mark.parametrize(
    ("pauses_followed", "passages_joined"), [(True, False), (False, True), (False, False)]
)
def test_a_noisy_copy_is_one_segment_across_the_pause_it_shares(
    pausing_matcher, monkeypatch: pytest.MonkeyPatch, pauses_followed: bool,
    passages_joined: bool,
) -> None:  # fmt: skip
    """A whole work copied with noise added between other music: where its reference pauses
    the copy holds only the noise, which fits nothing, yet both are quiet together there, so
    the copy is one segment from its first second to its last. Either step makes it one:
    following the pause as a segment grows, or joining the stretches on both sides of it."""
    if not pauses_followed:
        monkeypatch.setattr("tunetrace.segment_edges.PAUSE_DB", 1000.0)
    if not passages_joined:
        monkeypatch.setattr("tunetrace.matcher.join_across_passages", lambda _q, _r, s, *_, **__: s)
    matcher, folder, works = pausing_matcher
    work = works["pausing67"]
    before_s, after_s = 30.0, 20.0
    copy = with_noise(librosa.effects.time_stretch(work, rate=1.1), below_db=30.0, seed=5)
    end_s = before_s + len(copy) / SR
    matches = match(matcher, folder, "paused", [filler(97, before_s), copy, filler(98, after_s)])
    assert [m.reference_id for m in matches] == ["pausing67"], matches
    whole = located(matches[0], before_s, end_s)
    assert whole == (pauses_followed or passages_joined), (matches[0].segments, before_s, end_s)


def test_other_music_in_a_references_pause_is_not_claimed(pausing_matcher) -> None:
    """The same copy with other music where its reference pauses: the music is loud where the
    reference is quiet, so no segment covers it."""
    matcher, folder, works = pausing_matcher
    work = works["pausing67"]
    before_s = 30.0
    copy = with_noise(work, below_db=30.0, seed=6)
    pause = slice(int(35.0 * SR), int(43.0 * SR))
    copy[pause] += filler(99, 8.0)[: pause.stop - pause.start]
    matches = match(matcher, folder, "filled-pause", [filler(97, before_s), copy])
    assert [m.reference_id for m in matches] == ["pausing67"], matches
    inserted = (before_s + 36.0, before_s + 42.0)
    covering = [s for s in matches[0].segments
                if s.query_start_s < inserted[1] and s.query_end_s > inserted[0]]  # fmt: skip
    assert not covering, matches[0].segments
    end_s = before_s + len(work) / SR
    assert located(matches[0], before_s + 43.0, end_s), matches[0].segments


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_other_music_beside_a_soft_passage_is_not_claimed(
    pausing_matcher, where: str
) -> None:
    """Quiet music the catalogue does not hold, 25 dB softer than a copy, lies where the
    copied work's soft passage would align: before a copy of a work with a soft intro (the
    intro left out), or after a copy of a work with a soft ending (the ending left out, a
    medley's next work opening softly). Both are quiet together, but the music is tonal and
    fits nothing: it is not the copy's pause."""
    matcher, folder, works = pausing_matcher
    quiet = softened(filler(96, 30.0), 0.0, 30.0)
    if where == "before":
        work, parts = "soft_intro70", [filler(97, 20.0), quiet,
                                       works["soft_intro70"][int(30 * SR) :]]  # fmt: skip
        start_s, end_s = 50.0, 100.0
    else:
        work, parts = "soft_coda71", [filler(97, 30.0), works["soft_coda71"][: int(60 * SR)],
                                      quiet[: int(20 * SR)], filler(95, 20.0)]  # fmt: skip
        start_s, end_s = 30.0, 90.0
    matches = match(matcher, folder, f"quiet-{where}", parts)
    assert [m.reference_id for m in matches] == [work], matches
    assert located(matches[0], start_s, end_s), matches[0].segments


def test_a_noisy_copy_cut_short_before_a_soft_ending_is_not_carried_over_silence(
    pausing_matcher,
) -> None:
    """A copy with noise added stops where its reference's soft ending begins, and silence
    follows: the query is silent where the reference still sounds, so the copy stopped."""
    matcher, folder, works = pausing_matcher
    copy = with_noise(works["soft_coda71"][: int(60 * SR)], below_db=30.0, seed=7)
    parts = [filler(97, 30.0), copy, np.zeros(int(20 * SR), dtype=np.float32)]
    matches = match(matcher, folder, "cut-then-silence", parts)
    assert [m.reference_id for m in matches] == ["soft_coda71"], matches
    assert located(matches[0], 30.0, 90.0), matches[0].segments


def test_a_copy_is_carried_neither_into_other_music_nor_over_silence(partial_matcher) -> None:
    """A section from near its reference's start, after other music, is not carried back into
    that music; a copy cut 10 s before its reference ends, then silence, is not carried over
    the silence (the reference goes on sounding there)."""
    matcher, folder = partial_matcher
    before_s = 40.0
    section = altered("work63", 8, 20, 0.9, -2)
    section_end_s = before_s + len(section) / SR
    matches = match(matcher, folder, "near-start", [filler(93, before_s), section, filler(94, 20)])
    assert [m.reference_id for m in matches] == ["work63"], matches
    assert located(matches[0], before_s, section_end_s), matches[0].segments
    cut = altered("work62", 0, 70, 1.1, 2)
    cut_end_s = before_s + len(cut) / SR
    silence = np.zeros(int(15 * SR), dtype=np.float32)
    matches = match(matcher, folder, "cut", [filler(95, before_s), cut, silence])
    assert [m.reference_id for m in matches] == ["work62"], matches
    assert located(matches[0], before_s, cut_end_s), matches[0].segments


def _verified_in_window(
    matcher: Matcher, folder: Path, name: str, work: str, before_s: float, rate: float
) -> tuple[Features, Features, Verification, tuple[int, int], float]:
    """A 22-s section of ``work`` (from 20 s, ``rate`` times faster) placed after
    ``before_s`` of other music and followed by 40 s more, verified on the window the
    matcher judges its true place on: the query's features, the reference's, the
    verification (offsets from the query's first frame), the window and the section's end."""
    from tunetrace.alignment import align_on_chroma
    from tunetrace.matcher import _from_window
    from tunetrace.verification import verify_candidate

    section = altered(work, 20, 22, rate, 0)
    path = write_audio(
        folder / f"{name}.wav", np.concatenate([filler(80, before_s), section, filler(81, 40)])
    )
    features = matcher.load_query(path)
    fps = features.frame_rate_hz
    key = matcher.catalogue.get(work).key
    reference = matcher.catalogue.features(key)
    end_s = before_s + len(section) / SR
    truth = Candidate(
        reference_key=key,
        tempo_ratio=rate,
        offset_frames=20 * fps - rate * before_s * fps,
        votes=1.0,
        query_span_frames=(before_s * fps, end_s * fps),
    )
    window, moved = matcher._in_window(truth, features)
    assert window is not None
    query = prepare_query(features.frames(*window), matcher.verify_settings)
    alignment = align_on_chroma(query, reference, moved, settings=matcher.verify_settings)
    params = matcher.catalogue.params
    in_window = verify_candidate(
        query, reference, alignment, params=params, settings=matcher.verify_settings
    )
    return features, reference, _from_window(in_window, window[0], fps), window, end_s


def test_a_section_is_judged_on_its_own_frames_not_its_windows_margins(partial_matcher) -> None:
    """The window a section is verified on holds seconds of other music on each side; its
    measurements are averaged over them too. The section is judged again on its matched run
    (with ``section_pad_s``), however little of the window lies outside it."""
    from tunetrace.matcher import _with_score

    matcher, folder = partial_matcher
    before_s = 40.0
    features, reference, in_window, window, end_s = _verified_in_window(
        matcher, folder, "judged-alone", "work62", before_s, 1.1
    )
    fps = features.frame_rate_hz
    (run,) = [(s.query_start_s, s.query_end_s) for s in in_window.segments]
    padded_s = run[1] - run[0] + 2 * matcher.settings.section_pad_s
    # most of the window is the section: it held little else
    assert padded_s >= matcher.settings.whole_query_fraction * (window[1] - window[0]) / fps

    def by_fit(verification: Verification | None, windows: float = 1.0) -> Verification | None:
        return None if verification is None else _with_score(
            verification, verification.spectral_similarity
        )

    judged = matcher._judged_alone(
        prepare_query(features, matcher.verify_settings), in_window,
        {in_window.reference_key: reference}, window, by_fit,
    )  # fmt: skip

    assert judged is not None
    assert judged.spectral_similarity > in_window.spectral_similarity + 0.02
    assert located(judged, before_s, end_s)


def test_a_section_verified_only_in_pieces_is_judged_when_its_measurements_are_sure(
    partial_matcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In music that repeats itself a misaligned reference fits almost as well as the
    aligned one, and a real copy's verification can match only short pieces of it, none of
    ``min_section_s``. When its measurements score it as a copy anyway, the pieces grow at
    their alignment to the section's edges and the section is judged, with a length
    penalty no smaller than its window's; when they do not, or the window holds a single
    piece, it comes to nothing, as before."""
    matcher, folder = partial_matcher
    before_s = 40.0
    features, reference, in_window, window, end_s = _verified_in_window(
        matcher, folder, "pieces", "work63", before_s, 1.12
    )
    fps = features.frame_rate_hz
    assert located(in_window, before_s, end_s)

    def piece(start: float, length: float) -> Segment:
        """The copy's matched frames from ``start`` (query seconds), at its alignment."""
        at = in_window.offset_frames / fps
        return Segment(
            query_start_s=start,
            query_end_s=start + length,
            reference_start_s=at + start * in_window.tempo_ratio,
            reference_end_s=at + (start + length) * in_window.tempo_ratio,
        )

    # what repetitive music leaves of it: a 3.2-s piece every 7 s
    pieces = [piece(start, 3.2) for start in np.arange(before_s + 1.0, end_s - 4.0, 7.0)]
    in_pieces = replace(in_window, segments=pieces)
    query = prepare_query(features, matcher.verify_settings)
    references = {in_window.reference_key: reference}
    windows = features.n_frames / (window[1] - window[0])
    assert matcher.score_model.score_section(in_pieces, windows=1.0) >= MIN_WINDOW_SCORE_TO_GROW
    penalties: list[float] = []

    def scored(verification: Verification | None, windows: float = 1.0) -> Verification | None:
        if verification is None:
            return None
        penalties.append(windows)
        score = matcher.score_model.score_section(verification, windows=windows)
        return replace(verification, score=score)

    judged = matcher._judged_alone(query, in_pieces, references, window, scored)

    assert judged is not None
    assert located(judged, before_s, end_s), judged.segments
    assert judged.score >= matcher.default_min_score
    # scored as one of at least as many windows as the window it was found in
    assert penalties and min(penalties) >= windows - 1e-9, (penalties, windows)

    # pieces found in a window over the section's start grow past the window's end: the
    # section is still scored as one of at least as many windows as that window
    narrow = (int((before_s - 3.0) * fps), int((before_s + 10.0) * fps))
    # (more than section_gap_s apart: no run of min_section_s)
    early = replace(in_pieces, segments=[piece(before_s + 1.0, 3.2), piece(before_s + 6.6, 3.2)])
    penalties.clear()
    judged = matcher._judged_alone(query, early, references, narrow, scored)
    assert judged is not None
    assert max(s.query_end_s for s in judged.segments) > narrow[1] / fps + 3.0, judged.segments
    narrow_windows = features.n_frames / (narrow[1] - narrow[0])
    assert penalties and min(penalties) >= narrow_windows - 1e-9, (penalties, narrow_windows)

    # one piece of it, however sure, is what min_section_s keeps out, a stray fragment
    # beside it or not; pieces too short to grow are no section either
    for segments in (
        [piece(before_s + 8.0, 5.5)],
        [piece(before_s + 2.0, 5.5), piece(before_s + 11.0, 1.0)],
        [piece(before_s + 2.0, 2.8), piece(before_s + 8.0, 2.8), piece(before_s + 14.0, 2.8)],
    ):
        few = replace(in_pieces, segments=segments)
        assert matcher.score_model.score_section(few, windows=1.0) >= MIN_WINDOW_SCORE_TO_GROW
        assert matcher._pieces_grown(query, few, references) is None, segments
        assert matcher._judged_alone(query, few, references, window, scored) is None, segments
    # sure pieces where the upload holds other music grow nothing there: no section
    astray = replace(in_pieces, segments=[piece(5.0, 3.2), piece(12.0, 3.2)])
    other_window = (int(2.0 * fps), int(20.0 * fps))
    assert matcher._pieces_grown(query, astray, references) is not None  # it passed the gate
    assert matcher._judged_alone(query, astray, references, other_window, scored) is None

    # the same pieces with a coincidence's measurements are not grown, nor judged; nor are
    # pieces whose measurements are not numbers
    measured = ("spectral_similarity", "local_similarity", "chroma_similarity",
                "dynamics_similarity", "onset_similarity")  # fmt: skip
    coincidence = dict.fromkeys(measured[2:], 0.0) | {
        "spectral_similarity": in_pieces.null_similarity,
        "local_similarity": in_pieces.null_similarity,
        "chroma_similarity": 0.3,
    }
    unsure = replace(in_pieces, **coincidence)
    assert matcher.score_model.score_section(unsure, windows=1.0) < MIN_WINDOW_SCORE_TO_GROW
    assert matcher._judged_alone(query, unsure, references, window, scored) is None
    broken = replace(in_pieces, spectral_similarity=float("nan"))
    assert matcher._judged_alone(query, broken, references, window, scored) is None

    # how sure the pieces are is judged as if their window were the whole upload: pieces
    # that the query's length alone takes under the gate still grow, and the section they
    # make keeps that length penalty
    def between(share: float) -> Verification:
        return replace(in_pieces, **{
            name: (1 - share) * getattr(in_pieces, name) + share * getattr(unsure, name)
            for name in measured
        })  # fmt: skip

    low, high = 0.0, 1.0  # sure at 0, unsure at 1
    for _ in range(30):
        share = (low + high) / 2
        if matcher.score_model.score_section(between(share), windows=1.0) >= 0.55:
            low = share
        else:
            high = share
    borderline = between(low)
    assert matcher.score_model.score_section(borderline, windows=1.0) >= MIN_WINDOW_SCORE_TO_GROW
    assert matcher.score_model.score_section(borderline, windows=windows) < MIN_WINDOW_SCORE_TO_GROW
    penalties.clear()
    judged = matcher._judged_alone(query, borderline, references, window, scored)
    assert judged is not None
    assert located(judged, before_s, end_s), judged.segments
    assert penalties and min(penalties) >= windows - 1e-9, (penalties, windows)

    # grown pieces are judged only on the section verified again on its own frames, even
    # when the grown run covers their whole window; a section that does not verify again
    # is nothing, whatever the grown segments and the window's measurements say
    import tunetrace.matcher as matcher_module

    inner = (int((before_s + 3.5) * fps), int((before_s + 13.5) * fps))
    inside = replace(in_pieces, segments=[piece(before_s + 4.0, 3.2), piece(before_s + 9.5, 3.2)])
    verified_again: list[int] = []
    real_verify = matcher_module.verify_candidate

    def counted(*args, **kwargs):
        verified_again.append(1)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(matcher_module, "verify_candidate", counted)
    judged = matcher._judged_alone(query, inside, references, inner, scored)
    assert judged is not None and located(judged, before_s, end_s), judged
    assert verified_again, "the grown section was not verified again"
    monkeypatch.setattr(matcher_module, "verify_candidate", lambda *args, **kwargs: None)
    assert matcher._judged_alone(query, inside, references, inner, scored) is None
