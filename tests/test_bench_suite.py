"""The benchmark suite's own parts: alterations, query grid, metrics, peer and mosaics."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from tunetrace.index.catalogue import Catalogue

from benchmarks import grid, peer_chromaprint, renders, run_benchmark
from benchmarks import suite_metrics as metrics
from benchmarks.alter import Alteration, apply
from benchmarks.scale_sweep import MOSAIC_S, mosaic_work
from tests.conftest import SAMPLE_RATE, synth_song
from tunetrace.ingest import IngestItem, ingest


def _write(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(str(path), samples, SAMPLE_RATE)
    return path


@pytest.mark.parametrize(
    ("edit", "seconds", "expected_s"), [("insert_silence", 2.0, 8.0), ("remove_middle", 3.0, 3.0)]
)
def test_edits_change_length_where_they_should(
    tmp_path: Path, edit: str, seconds: float, expected_s: float
) -> None:
    source = _write(tmp_path / "in.wav", synth_song(1, 6.0))
    target = tmp_path / "out.wav"
    apply(Alteration("edit", "copy", edit=edit, edit_s=seconds), source, target)
    samples, rate = soundfile.read(str(target), always_2d=True)
    assert len(samples) / rate == pytest.approx(expected_s, abs=0.01)
    if edit == "insert_silence":
        middle = samples[int(3.2 * rate) : int(4.8 * rate)]
        assert np.abs(middle).max() == 0.0


def test_pink_noise_has_the_asked_snr_and_falls_with_frequency(tmp_path: Path) -> None:
    clean = synth_song(2, 8.0)
    source = _write(tmp_path / "in.wav", clean)
    target = tmp_path / "out.wav"
    apply(Alteration("noise", "copy", noise_snr_db=5.0, noise_color="pink"), source, target)
    noisy, _ = soundfile.read(str(target), dtype="float32")
    noise = noisy - clean
    snr = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert snr == pytest.approx(5.0, abs=0.3)
    power = np.abs(np.fft.rfft(noise)) ** 2
    low, high = power[10:1000].mean(), power[-20000:].mean()
    assert low > 20 * high


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed")
def test_effects_keep_the_length(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.wav", synth_song(3, 6.0))
    for effect in grid.EFFECTS:
        target = tmp_path / f"{effect}.wav"
        apply(Alteration("effect", "copy", effect=effect), source, target)
        info = soundfile.info(str(target))
        assert info.duration == pytest.approx(6.0, abs=0.05 if effect != "reverb" else 1.0)


def _sources(count: int) -> list[grid.Source]:
    return [grid.Source(f"s{i}", Path(f"/nowhere/{i}.wav"), 200.0, "g") for i in range(count)]


def test_the_plan_is_seeded_covers_the_grid_and_rotates_tools() -> None:
    negatives = {"other_track": _sources(3), "render": _sources(2), "same_key_tempo": []}
    first = grid.plan_queries(_sources(5), negatives, repeats=3, negatives_per_kind=4, seed=9)
    second = grid.plan_queries(_sources(5), negatives, repeats=3, negatives_per_kind=4, seed=9)
    assert first == second
    stretch = [p for p in first if p.alteration.family == "stretch" and p.negative_kind is None]
    assert len(stretch) == 3 * len(grid.STRETCH_FACTORS)
    assert {p.amount for p in stretch} == {f"{f:g}" for f in grid.STRETCH_FACTORS}
    assert {p.alteration.tool for p in stretch} == set(grid.STRETCHERS)
    by_amount: dict[str, set[str]] = {}
    for plan in stretch:
        by_amount.setdefault(plan.amount, set()).add(plan.alteration.tool)
    assert all(len(tools) == 3 for tools in by_amount.values())  # another tool each repeat
    kinds = [p.negative_kind for p in first if p.negative_kind]
    assert kinds.count("other_track") == 4 and kinds.count("render") == 4
    assert "same_key_tempo" not in kinds
    whole = [p for p in first if p.amount == "whole"]
    assert whole and all(p.query_s is None and p.start_s == 0 for p in whole)


def test_a_planned_query_is_made_with_its_truth(tmp_path: Path) -> None:
    song = _write(tmp_path / "song.wav", synth_song(4, 40.0))
    source = grid.Source("song", song, 40.0, "g")
    plan = grid._Plan(
        source, Alteration("stretch", "librosa", tempo_ratio=1.25), "1.25", 5.0, 10.0, None
    )
    (query,) = grid.make_suite_queries([plan], tmp_path / "queries", workers=1)
    assert query.positive and query.amount == "1.25" and query.tempo_ratio == 1.25
    assert soundfile.info(query.path).duration == pytest.approx(10.0, abs=0.1)


def _row(
    source: str, positive: bool, scored: list[tuple[str, float]], kind: str | None = None
) -> dict:
    query = {"source_id": source, "positive": positive, "family": "stretch", "amount": "1.1"}
    query["negative_kind"] = kind
    return {"query": query, "verifications": [{"reference_id": r, "score": s} for r, s in scored]}


def test_verdicts_precision_recall_and_bounds() -> None:
    rows = [
        _row("a", True, [("a", 0.9), ("b", 0.3)]),
        _row("b", True, [("c", 0.6), ("b", 0.5)]),
        _row("x", False, [("a", 0.4)], kind="render"),
        _row("y", False, [], kind="other_track"),
    ]
    assert metrics.tunetrace_verdict(rows[0], 0.5) == "a"
    assert metrics.tunetrace_verdict(rows[1], 0.55) == "c"
    assert metrics.tunetrace_verdict(rows[1], 0.7) is None
    curve = {
        c["threshold"]: c
        for c in metrics.precision_recall(rows, metrics.tunetrace_verdict, [0.35, 0.7])
    }
    assert curve[0.35]["recall"] == 0.5 and curve[0.35]["false_reports"] == 2
    assert curve[0.7]["precision"] == 1.0 and curve[0.7]["recall"] == 0.5
    fps = metrics.false_positives(rows, metrics.tunetrace_verdict, 0.35)
    assert fps["render"]["flagged"] == 1 and fps["all"]["n"] == 2
    assert metrics.upper_bound_95(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-6)
    recall = metrics.recall_table(rows, metrics.tunetrace_verdict, 0.35, lambda q: q["family"])
    assert recall["stretch"] == {"recall": 0.5, "n": 2}


def test_chromaprint_agreement_finds_the_offset() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 2**32, size=400, dtype=np.uint64).astype(np.uint32)
    other = rng.integers(0, 2**32, size=400, dtype=np.uint64).astype(np.uint32)
    matcher = peer_chromaprint.ChromaprintMatcher(["ref", "other"], [reference, other])
    assert matcher.best(reference[150:250]) == ("ref", 1.0)
    _, unrelated = matcher.best(rng.integers(0, 2**32, size=100, dtype=np.uint64).astype(np.uint32))
    assert unrelated < 0.7
    assert matcher.best(reference[:5]) == (None, 0.0)
    drone = np.repeat(reference[:10], 10)  # ten distinct items in a hundred: no answer
    assert matcher.best(drone) == (None, 0.0)


@pytest.mark.skipif(shutil.which("fpcalc") is None, reason="fpcalc is not installed")
def test_chromaprint_peer_on_real_fingerprints(tmp_path: Path) -> None:
    song = _write(tmp_path / "song.wav", synth_song(5, 40.0))
    other = _write(tmp_path / "other.wav", synth_song(6, 40.0))
    excerpt = _write(
        tmp_path / "excerpt.wav", synth_song(5, 40.0)[SAMPLE_RATE * 10 : SAMPLE_RATE * 25]
    )
    prints = peer_chromaprint.fingerprints([song, other, excerpt])
    matcher = peer_chromaprint.ChromaprintMatcher(["song", "other"], prints[:2])
    reference_id, agreement = matcher.best(prints[2])
    assert reference_id == "song" and agreement > 0.9


def test_mosaic_works_are_stored_like_references(tmp_path: Path) -> None:
    paths = [_write(tmp_path / f"{i}.wav", synth_song(10 + i, 30.0)) for i in range(2)]
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        ingest(catalogue, [IngestItem(p, p.stem) for p in paths])
        spectra = [catalogue.features(r.key).spectrum for r in catalogue.list()]
        data = mosaic_work(spectra, catalogue.params, np.random.default_rng(random.randrange(1)))
        record = catalogue.add("mosaic/0", data)
        assert record.duration_s == MOSAIC_S
        stored = catalogue.features(record.key)
        assert stored.n_frames == int(MOSAIC_S * catalogue.params.frame_rate_hz)
        assert data.vectors.shape[1] == catalogue.params.embedding_dim
        assert np.isfinite(data.vectors.astype(np.float32)).all()


def test_extrapolation_grows_search_with_the_square_root_of_the_vectors() -> None:
    from benchmarks.scale_sweep import extrapolate

    measured = {
        "works": 10_000,
        "vectors": 1_000_000,
        "vectors_per_hour": 4_000.0,
        "index_mb_per_hour": 3.0,
        "search_p50_ms": 50.0,
        "verification_p50_ms": 200.0,
    }
    guess = extrapolate([measured], 100_000, 10.0)  # 1M hours: 4e9 vectors, 4,000 times more
    assert guess["vectors"] == 4_000_000_000
    assert guess["search_p50_ms"] == round(50.0 * np.sqrt(4000))
    assert guess["query_p50_ms"] == guess["search_p50_ms"] + 200
    assert guess["full_vector_index_gb"] == 3000.0
    assert "sqrt" in guess["assumptions"]
    # a largest size on IVF-PQ codes does not make full vectors look small
    small = {"works": 1_000, "index": {"kind": "ivfflat"}, "index_mb_per_hour": 3.0}
    coded = {**measured, "index": {"kind": "ivfpq"}, "index_mb_per_hour": 0.2}
    assert extrapolate([small, coded], 100_000, 10.0)["full_vector_index_gb"] == 3000.0


def test_a_match_row_holds_stage_times_and_the_right_reference(tmp_path: Path) -> None:
    from benchmarks.match_rows import match_row
    from tunetrace.matcher import Matcher

    song = _write(tmp_path / "song.wav", synth_song(21, 40.0))
    other = _write(tmp_path / "other.wav", synth_song(22, 40.0))
    with Catalogue(tmp_path / "cat", create=True) as catalogue:
        ingest(catalogue, [IngestItem(song, "song"), IngestItem(other, "other")])
        plan = grid._Plan(
            grid.Source("song", song, 40.0, "g"),
            Alteration("stretch", "librosa", tempo_ratio=1.1),
            "1.1",
            8.0,
            12.0,
            None,
        )
        (query,) = grid.make_suite_queries([plan], tmp_path / "queries", workers=1)
        row = match_row(Matcher(catalogue), query)
        assert set(row["stages"]) == {"decode", "features", "search", "verification"}
        assert row["elapsed_s"] >= sum(row["stages"].values()) * 0.99
        assert metrics.tunetrace_verdict(row, 0.5) == "song"
        broken = tmp_path / "broken.wav"
        broken.write_bytes(b"not audio")
        failed = match_row(
            Matcher(catalogue), grid.SuiteQuery(**{**query.__dict__, "path": str(broken)})
        )
        assert "error" in failed and "verifications" not in failed


def test_tail_quantile_recovers_a_rare_quantile_of_an_exponential_tail() -> None:
    rng = np.random.default_rng(3)
    scale, rate = 2.0, 1e-4
    values = rng.exponential(scale, size=2000) - 7.0
    expected = scale * np.log(1 / rate) - 7.0  # exceeded with probability 1e-4

    estimate = run_benchmark.tail_quantile(values, rate)

    # The sample's own maximum lies far below it: the tail fit extrapolates.
    assert values.max() < expected - 2.0
    assert estimate == pytest.approx(expected, abs=0.15 * scale * np.log(1 / rate))


def test_score_model_learns_only_from_verifications_that_found_the_copy() -> None:
    query = {"positive": True, "source_id": "a", "tempo_ratio": 1.2, "reference_start_s": 30.0}
    row = {"query": query}
    found = {"reference_id": "a", "tempo_ratio": 1.21, "offset_s": 30.4}
    mistimed = {"reference_id": "a", "tempo_ratio": 0.9, "offset_s": 30.0}
    elsewhere = {"reference_id": "a", "tempo_ratio": 1.2, "offset_s": 80.0}
    other = {"reference_id": "b", "tempo_ratio": 1.2, "offset_s": 30.0}

    labels = [run_benchmark._training_label(row, v) for v in (found, mistimed, elsewhere, other)]

    assert labels == [1.0, None, None, 0.0]


def test_core_evaluation_splits_recall_by_query_tonality() -> None:
    from tunetrace.fingerprint.tonality import LOW_TONALITY

    from tunetrace.scoring import FEATURE_NAMES, ScoreModel

    model = ScoreModel(weights=(1.0,) * len(FEATURE_NAMES), bias=-2.0, threshold=0.5)
    strong, weak = [1.0] * len(FEATURE_NAMES), [0.0] * len(FEATURE_NAMES)

    def row(tonality: float, found: bool) -> dict:
        query = {
            "path": f"q{tonality}-{found}.wav", "source_id": "a", "positive": True,
            "family": "stretch", "tool": "sox", "tempo_ratio": 1.2, "pitch_semitones": 0.0,
        }  # fmt: skip
        verification = {
            "reference_id": "a", "measurements": strong if found else weak,
            "tempo_ratio": 1.2, "pitch_shift_semitones": 0.0,
        }  # fmt: skip
        return {"query": query, "duration_s": 10.0, "elapsed_s": 0.1, "tonality": tonality,
                "verifications": [verification]}  # fmt: skip

    rows = [row(1.5, False), row(1.6, True), row(5.0, True), row(8.0, True), row(9.0, True)]
    result = run_benchmark.evaluate(rows, model)["recall_by_tonality"]

    assert result["threshold"] == LOW_TONALITY
    assert result["low"] == (0.5, 2) and result["tonal"] == (1.0, 3)


def test_whole_corpus_latency_times_long_queries_on_a_catalogue_of_every_track(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import asdict

    from benchmarks.corpus import Track
    from benchmarks.queries import Query

    monkeypatch.setattr(run_benchmark, "CACHE", tmp_path / "cache")
    tracks = []
    for seed in (1, 2, 3):
        path = _write(tmp_path / f"song{seed}.flac", synth_song(seed, 20.0))
        tracks.append(Track(f"pkg/song{seed}", path, 20.0, "pkg", "test"))
    long_query = _write(tmp_path / "long.wav", synth_song(2, 20.0)[: 15 * SAMPLE_RATE])
    short_query = _write(tmp_path / "short.wav", synth_song(3, 20.0)[: 10 * SAMPLE_RATE])
    queries = [
        Query(str(path), "pkg/song2", True, "clean", "copy", 1.0, 0.0, 0.0)
        for path in (long_query, short_query)
    ]
    durations = (15.0, 10.0)
    evaluation_rows = [
        {"query": asdict(q), "duration_s": d} for q, d in zip(queries, durations, strict=True)
    ]
    evaluation_rows.append({"query": asdict(queries[0]), "error": "unreadable"})

    result = run_benchmark.whole_corpus_latency(tracks, evaluation_rows)

    assert result["references"] == 3 and result["queries"] == 1
    assert result["audio_hours"] == pytest.approx(60 / 3600, rel=0.05)
    assert 0 < result["latency_median_s"] <= result["latency_p95_s"] < 30


def test_runaway_render_is_stopped_at_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for FluidSynth that, like it on a note that never ends, writes forever.
    fake = tmp_path / "bin" / "fluidsynth"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nwhile [ "$1" != "-F" ]; do shift; done\nexec yes > "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(renders, "MAX_RENDER_BYTES", 1 << 20)
    target = tmp_path / "piece.wav"

    with pytest.raises(RuntimeError, match="size limit"):
        renders._run_fluidsynth(tmp_path / "piece.mid", target)

    stopped_at = target.stat().st_size
    time.sleep(0.5)
    assert target.stat().st_size == stopped_at  # the writer is gone
    assert stopped_at < 1 << 30  # one polling interval past the limit, not a full disk


@pytest.mark.parametrize("label", ["ivfpq", "ivfpq-opq", "ivfpq-opq+sq4", "ivfpq-opq+sq8", "hnsw"])
def test_scale_benchmark_kind_labels_round_trip(label: str) -> None:
    from benchmarks.scale import kind_label, spec_of_label

    spec = spec_of_label(label)
    assert kind_label(spec) == label
    assert spec.refine_bits == (int(label[-1]) if "+sq" in label else 0)
    assert bool(spec.resolved(5_000_000).projection_dims) == (label == "ivfpq")


def test_scale_benchmark_refuses_re_ranking_with_projection() -> None:
    from benchmarks.scale import spec_of_label

    with pytest.raises(ValueError, match="ivfpq-opq"):
        spec_of_label("ivfpq+sq4")
