"""The partial-copy benchmark's own parts: its metrics, its plan and its truth."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from benchmarks import partial_copies
from benchmarks import partial_metrics as pm
from benchmarks.alter import Alteration
from benchmarks.corpus import Track
from benchmarks.queries import in_catalogue
from tests.conftest import SAMPLE_RATE, synth_song


def _section(work: str, start: float, end: float, **extra: object) -> dict:
    return {
        "work_id": work,
        "query_start_s": start,
        "query_end_s": end,
        "reference_start_s": 0.0,
        "reference_end_s": end - start,
        "tempo_ratio": 1.0,
        "pitch_semitones": 0.0,
        "length_label": "10 s",
        **extra,
    }


def _segment(start: float, end: float) -> dict:
    return {"query_start_s": start, "query_end_s": end}


def _match(work: str, segments: list[dict], score: float = 0.95, **extra: object) -> dict:
    return {
        "reference_id": work,
        "score": score,
        "tempo_ratio": 1.0,
        "pitch_shift_semitones": 0.0,
        "segments": segments,
        **extra,
    }


def _row(family: str, sections: list[dict], matches: list[dict], **truth: object) -> dict:
    return {
        "truth": {
            "family": family,
            "label": family,
            "negative": not sections,
            "duration_s": 120.0,
            "sections": sections,
            "sources": sorted({s["work_id"] for s in sections}),
            **truth,
        },
        "report": {"duration_s": 120.0, "elapsed_s": 1.0, "matches": matches},
    }


def test_a_section_is_located_only_with_both_edges_close() -> None:
    section = _section("a", 30.0, 40.0)
    assert pm.section_outcome(section, [_match("a", [_segment(31.5, 41.9)])]) == (True, True)
    # Overlapping but an edge 3 s off: found, not located.
    assert pm.section_outcome(section, [_match("a", [_segment(27.0, 40.0)])]) == (True, False)
    # Right work, wrong place; wrong work, right place.
    assert pm.section_outcome(section, [_match("a", [_segment(50.0, 60.0)])]) == (False, False)
    assert pm.section_outcome(section, [_match("b", [_segment(30.0, 40.0)])]) == (False, False)
    # Two fragments covering the section locate nothing: each misses an edge.
    fragments = [_match("a", [_segment(30.0, 35.0), _segment(35.5, 40.0)])]
    assert pm.section_outcome(section, fragments) == (True, False)


def test_the_threshold_and_the_report_length_apply_before_the_figures() -> None:
    row = _row("section", [_section("a", 30.0, 40.0)], [_match("a", [_segment(30, 40)], 0.5)])
    assert pm.reported(row, 0.6) == []
    assert pm.section_table([row], 0.6)["section / 10 s"] == {
        "located": 0.0,
        "found": 0.0,
        "n": 1,
    }
    assert pm.section_table([row], 0.4)["section"]["located"] == 1.0
    many = _row("medley2", [], [_match(f"w{i}", [], 0.99 - i / 100) for i in range(8)])
    assert [m["reference_id"] for m in pm.reported(many, 0.5)] == [f"w{i}" for i in range(5)]


def test_hygiene_counts_strays_fragments_and_wrong_works() -> None:
    truth = {"sections": [_section("a", 10.0, 20.0), _section("b", 40.0, 60.0)]}
    matches = [
        _match("a", [_segment(10.0, 20.0), _segment(21.0, 22.5)]),  # a fragment beside it
        _match("b", [_segment(40.0, 50.0), _segment(50.0, 60.0)]),  # the section in two
        _match("c", [_segment(70.0, 80.0)]),  # a work the upload does not hold
    ]
    assert pm.hygiene(truth, matches) == {"stray": 2, "duplicate": 1, "wrong_work": 1}
    clean = [_match("a", [_segment(10.0, 20.0)]), _match("b", [_segment(40.0, 60.0)])]
    assert pm.hygiene(truth, clean) == {"stray": 0, "duplicate": 0, "wrong_work": 0}


def test_a_medley_is_complete_only_when_every_work_is_found() -> None:
    sections = [_section("a", 0.0, 20.0), _section("b", 20.0, 45.0), _section("c", 45.0, 70.0)]
    two = [_match("a", [_segment(0.5, 19.0)]), _match("b", [_segment(22.0, 44.0)])]
    assert not pm.medley_complete({"sections": sections}, two)
    three = [*two, _match("c", [_segment(46.0, 60.0)])]
    assert pm.medley_complete({"sections": sections}, three)
    table = pm.medley_table([_row("medley3", sections, two), _row("medley3", sections, three)], 0.5)
    # c's segment ends 10 s early: found, not located.
    assert table["medley3"] == {"every_work_found": 0.5, "every_section_located": 0.0, "n": 2}


def test_each_loop_repeat_needs_a_segment_of_its_own() -> None:
    repeats = [_section("a", 0.0, 12.0), _section("a", 20.0, 32.0), _section("a", 40.0, 52.0)]
    one_long = [_match("a", [_segment(0.0, 52.0)])]
    assert pm.repeats_located(repeats, one_long) == 0
    two = [_match("a", [_segment(0.0, 12.0), _segment(40.5, 51.0)])]
    assert pm.repeats_located(repeats, two) == 2
    table = pm.loop_table([_row("loop", repeats, two)], 0.5)
    assert table["repeats_located"] == pytest.approx(2 / 3) and table["repeats"] == 3


def test_negatives_are_counted_by_length_and_shared_material_is_ignored() -> None:
    flagged = _row("negative", [], [_match("x", [_segment(0, 30)])], duration_s=400.0)
    quiet = _row("negative", [], [_match("x", [], 0.1)], duration_s=50.0)
    shared = _row(
        "negative",
        [],
        [_match("drascula-music/track16", [_segment(0, 30)])],
        duration_s=200.0,
        sources=["drascula-music/track2"],
    )
    table = pm.false_positive_table([flagged, quiet, shared], 0.5)
    assert table["6-10 min"]["flagged"] == 1 and table["<1 min"]["flagged"] == 0
    assert table["3-6 min"] == {"flagged": 0, "n": 1, "rate": 0.0, "upper_95": pytest.approx(0.95)}
    assert table["all"]["flagged"] == 1 and table["all"]["n"] == 3
    assert pm.negative_scores([flagged, quiet, shared])["max"] == 0.95
    assert pm.length_bucket(59.9) == "<1 min" and pm.length_bucket(240.0) == "3-6 min"


def test_estimate_errors_wrap_pitch_and_use_located_sections_only() -> None:
    located = _row(
        "section",
        [_section("a", 30.0, 40.0, tempo_ratio=1.5, pitch_semitones=-11.8)],
        [_match("a", [_segment(30.0, 40.0)], tempo_ratio=1.51, pitch_shift_semitones=0.4)],
    )
    missed = _row("section", [_section("b", 30.0, 40.0, tempo_ratio=2.0)], [])
    errors = pm.estimate_errors([located, missed], 0.5)["section"]
    assert errors["n"] == 1
    assert errors["tempo_ratio_abs_error_median"] == pytest.approx(0.01)
    assert errors["pitch_semitones_abs_error_median"] == pytest.approx(0.2)


def _tracks(folder: Path, count: int, *, write: bool = False) -> list[Track]:
    """Tracks of three packages (written as synthetic songs only when ``write``)."""
    tracks = []
    for number in range(count):
        path = folder / f"t{number}.wav"
        if write:
            soundfile.write(str(path), synth_song(number, 45.0), SAMPLE_RATE)
        tracks.append(Track(f"pkg{number % 3}/t{number}", path, 45.0, f"pkg{number % 3}", "x"))
    return tracks


def test_the_plan_is_seeded_and_keeps_filler_outside_the_catalogue(tmp_path: Path) -> None:
    tracks = _tracks(tmp_path, 40)  # planning reads no audio
    counts = {"section": 1, "medley2": 1, "medley3": 1, "loop": 1, "padded": 1, "negative": 3}
    first = partial_copies.plan_split(tracks, "evaluation", counts, seed=3)
    assert first == partial_copies.plan_split(tracks, "evaluation", counts, seed=3)
    assert first != partial_copies.plan_split(tracks, "evaluation", counts, seed=4)
    inside = {t.track_id for t in tracks if in_catalogue(t)}
    for plan in first:
        for piece in plan.pieces:
            assert (piece.source_id in inside) == (piece.role == "copy"), (plan.family, piece)
    families = [p.family for p in first]
    assert families.count("section") == len(partial_copies.SECTION_S)
    assert families.count("negative") == 3


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
def test_truth_times_come_from_the_generated_pieces(tmp_path: Path) -> None:
    work, filler = _tracks(tmp_path, 2, write=True)
    stretch = Alteration("stretch", "sox", tempo_ratio=1.25)
    pieces = (
        partial_copies.Piece(filler.track_id, str(filler.path), 5.0, 7.5, "filler"),
        partial_copies.Piece(
            work.track_id, str(work.path), 20.0, 12.5, "copy", stretch, source_s=45.0
        ),
        partial_copies.Piece(filler.track_id, str(filler.path), 30.0, 4.0, "filler"),
    )
    plan = partial_copies.PartialPlan(0, "evaluation", "section", "10 s", False, pieces, 21.5)
    (truth,) = partial_copies.make_uploads([plan], tmp_path / "first", workers=1)
    (section,) = truth["sections"]
    assert section["query_start_s"] == pytest.approx(7.5, abs=1e-3)
    assert section["query_end_s"] - section["query_start_s"] == pytest.approx(10.0, abs=0.05)
    assert section["reference_end_s"] - section["reference_start_s"] == pytest.approx(12.5)
    samples, rate = soundfile.read(truth["path"])
    assert len(samples) / rate == pytest.approx(truth["duration_s"], abs=1e-3)
    assert truth["duration_s"] == pytest.approx(section["query_end_s"] + 4.0, abs=1e-3)
    assert np.abs(samples).max() <= 1.0
    (again,) = partial_copies.make_uploads([plan], tmp_path / "again", workers=1)
    assert Path(again["path"]).read_bytes() == Path(truth["path"]).read_bytes()


def test_a_copied_section_is_moved_off_silence(tmp_path: Path) -> None:
    path = tmp_path / "quiet-start.wav"
    song = np.concatenate([np.zeros(20 * SAMPLE_RATE), synth_song(5, 40.0)])
    soundfile.write(str(path), song, SAMPLE_RATE)
    piece = partial_copies.Piece("w/quiet", str(path), 5.0, 8.0, "copy", source_s=60.0)
    samples, rate, start = partial_copies._sounding_excerpt(piece, seed=1)
    assert start != 5.0
    assert partial_copies.active_fraction(samples, rate) >= partial_copies.MIN_ACTIVE_FRACTION
    silent, _ = soundfile.read(str(path), frames=8 * SAMPLE_RATE, always_2d=True)
    assert partial_copies.active_fraction(silent, SAMPLE_RATE) == 0.0
