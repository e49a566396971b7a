"""The benchmark suite: accuracy over an alteration grid, hard negatives, a peer, and scale.

    python -m benchmarks.suite --size quick|full

1. Catalogue: three quarters of the dev corpus (``benchmarks.corpus``) plus half of a set of
   music21 pieces rendered with FluidSynth (``benchmarks.renders``).
2. Queries (``benchmarks.grid``): a seeded grid of alterations made with sox, Rubber Band (R2
   and R3), FFmpeg and librosa, from tracks of a calibration split and of a disjoint evaluation
   split; negatives from corpus tracks outside the catalogue (some sharing key and tempo with
   a catalogue track) and from rendered pieces outside it.
3. tunetrace matches every query (two single-threaded worker processes, per-stage timing);
   Chromaprint (``benchmarks.peer_chromaprint``) matches the same queries; its threshold is
   fitted on the calibration split, tunetrace uses its shipped calibrated threshold.
4. Figures on the evaluation split only; precision/recall over the threshold on both splits.
5. A catalogue-size sweep (``benchmarks.scale_sweep``) and plots (``benchmarks.plots``).
6. Partial copies (``benchmarks.partial_copies``): sections of catalogue works inside other
   music, medleys, loops and padded tracks, and long negatives, matched against the same
   catalogue; its own results go to ``partial.json`` and ``partial.md`` as well.

Results: ``benchmarks/results/suite.json``, ``suite.md`` and ``suite-*.png`` (the full size
writes ``suite-full.*`` and ``suite-full-*.png``). Generated audio,
renders and catalogues are cached in ``$TUNETRACE_BENCH_CACHE`` (default
``~/.cache/tunetrace-bench``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.vector_index import IndexSpec

from benchmarks import (
    corpus,
    grid,
    musical,
    partial_copies,
    peer_chromaprint,
    plots,
    renders,
    scale_sweep,
)
from benchmarks import suite_metrics as metrics
from benchmarks.corpus import Track
from benchmarks.match_rows import match_row
from benchmarks.queries import _hash, in_catalogue, split_of, split_of_id
from benchmarks.run_benchmark import CACHE, build_catalogue, list_tracks
from benchmarks.run_info import index_file_bytes, run_info
from tunetrace.ingest import IngestItem, ingest
from tunetrace.matcher import Matcher
from tunetrace.scoring import ScoreModel
from tunetrace.threads import use_one_thread

logger = logging.getLogger("benchmarks.suite")
RESULTS = Path(__file__).parent / "results"
SIZES: dict[str, dict[str, object]] = {
    "quick": {
        "renders": 120,
        "repeats": 3,
        "negatives_per_kind": 40,
        "cal_repeats": 1,
        "cal_negatives_per_kind": 30,
        "scale_works": (200, 1000, 10000),
        "scale_queries": 30,
    },
    "full": {
        "renders": 600,
        "repeats": 8,
        "negatives_per_kind": 150,
        "cal_repeats": 3,
        "cal_negatives_per_kind": 100,
        "scale_works": (200, 1000, 10000),
        "scale_queries": 120,
    },
}
THRESHOLDS = tuple(np.round(np.linspace(0.05, 0.99, 95), 3))


def _render_in_catalogue(work: renders.RenderedWork) -> bool:
    return _hash(work.work_id) % 2 == 0


def _source(track: Track) -> grid.Source:
    return grid.Source(track.track_id, track.path, track.duration_s, f"corpus:{track.package}")


def _render_source(work: renders.RenderedWork) -> grid.Source:
    return grid.Source(work.work_id, work.path, work.duration_s, f"render:{work.collection}")


def suite_catalogue(
    tracks: list[Track], works: list[renders.RenderedWork]
) -> tuple[Path, dict[str, float]]:
    """The corpus catalogue plus the in-catalogue rendered pieces, auto index kind (cached)."""
    corpus_directory, ingest_stats = build_catalogue(tracks)
    members = [w for w in works if _render_in_catalogue(w)]
    directory = CACHE / f"suite-{corpus_directory.name}-{len(works)}-auto"
    if not (directory / "complete").exists():
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(corpus_directory, directory)
        items = [
            IngestItem(w.path, w.work_id, title=w.work_id, artist=w.collection) for w in members
        ]
        with Catalogue(directory) as catalogue:
            summary = ingest(catalogue, items, workers=os.cpu_count() or 1, replace=True)
            # As `tunetrace index build` does: the index kind suited to the catalogue's size.
            catalogue.rebuild_index(IndexSpec(kind="auto"))
        logger.info(
            "catalogue: %d rendered pieces added (%d failed)", summary.added, len(summary.failed)
        )
        (directory / "complete").write_text("ok\n")
    return directory, ingest_stats


def negative_sources(
    tracks: list[Track], works: list[renders.RenderedWork], split: str
) -> dict[str, list[grid.Source]]:
    """Negative query sources of one split, by kind (see ``benchmarks.grid``)."""
    outside = [t for t in tracks if not in_catalogue(t) and split_of(t) == split]
    inside = [t for t in tracks if in_catalogue(t)]
    keys = musical.key_and_tempo([t.path for t in tracks], CACHE / "key-tempo.json")
    twinned = [
        t
        for t in outside
        if any(musical.twins(keys[str(t.path)], keys[str(c.path)]) for c in inside)
    ]
    rendered_outside = [
        w for w in works if not _render_in_catalogue(w) and split_of_id(w.work_id) == split
    ]
    return {
        "other_track": [_source(t) for t in outside],
        "same_key_tempo": [_source(t) for t in twinned],
        "render": [_render_source(w) for w in rendered_outside],
    }


_matcher: Matcher | None = None


def _open_matcher(directory: str) -> None:
    global _matcher
    use_one_thread()
    _matcher = Matcher(Catalogue(directory, read_only=True))


def _match(query: grid.SuiteQuery) -> dict:
    assert _matcher is not None
    return match_row(_matcher, query)


def match_all(directory: Path, queries: list[grid.SuiteQuery], workers: int) -> list[dict]:
    """tunetrace rows of every query, from ``workers`` single-threaded processes."""
    with ProcessPoolExecutor(
        workers, initializer=_open_matcher, initargs=(str(directory),)
    ) as pool:
        return list(pool.map(_match, queries, chunksize=1))


_peer: peer_chromaprint.ChromaprintMatcher | None = None


def _open_peer(ids: list[str], prints: list[np.ndarray]) -> None:
    global _peer
    _peer = peer_chromaprint.ChromaprintMatcher(ids, prints)


def _peer_match(item: tuple[dict, np.ndarray]) -> dict:
    assert _peer is not None
    query, fingerprint = item
    reference_id, score = _peer.best(fingerprint)
    return {"query": query, "reference_id": reference_id, "score": score}


def peer_rows(
    reference_paths: dict[str, Path], queries: list[grid.SuiteQuery], workers: int
) -> tuple[list[dict], dict[str, float]]:
    """Chromaprint rows of every query, with fingerprinting and search time."""
    started = time.perf_counter()
    ids = sorted(reference_paths)
    reference_prints = peer_chromaprint.fingerprints([reference_paths[i] for i in ids])
    indexed = time.perf_counter()
    query_prints = peer_chromaprint.fingerprints([Path(q.path) for q in queries])
    fingerprinted = time.perf_counter()
    with ProcessPoolExecutor(
        workers, initializer=_open_peer, initargs=(ids, reference_prints)
    ) as pool:
        items = [(asdict(q), p) for q, p in zip(queries, query_prints, strict=True)]
        rows = list(pool.map(_peer_match, items, chunksize=4))
    timing = {
        "reference_fingerprint_s": indexed - started,
        "query_fingerprint_ms_mean": (fingerprinted - indexed) / max(1, len(queries)) * 1000,
        "search_ms_mean": (time.perf_counter() - fingerprinted)
        / max(1, len(queries))
        * 1000
        * workers,
    }
    return rows, timing


def _by_amount(query: dict) -> str:
    return f"{query['family']} {query['amount']}"


def _tool_key(query: dict) -> str:
    return f"{query['family']} / {query['tool']}"


def evaluate(rows: list[dict], peer: list[dict], threshold: float, peer_threshold: float) -> dict:
    """Every reported figure of one split."""
    return {
        "recall_by_family": metrics.recall_table(
            rows, metrics.tunetrace_verdict, threshold, lambda q: q["family"]
        ),
        "recall_by_amount": metrics.recall_table(
            rows, metrics.tunetrace_verdict, threshold, _by_amount
        ),
        "recall_by_tool": metrics.recall_table(
            rows, metrics.tunetrace_verdict, threshold, _tool_key
        ),
        "peer_recall_by_family": metrics.recall_table(
            peer, metrics.peer_verdict, peer_threshold, lambda q: q["family"]
        ),
        "peer_recall_by_amount": metrics.recall_table(
            peer, metrics.peer_verdict, peer_threshold, _by_amount
        ),
        "false_positives": metrics.false_positives(rows, metrics.tunetrace_verdict, threshold),
        "peer_false_positives": metrics.false_positives(peer, metrics.peer_verdict, peer_threshold),
        "estimates": metrics.estimate_errors(rows, threshold),
        "stages": metrics.stage_timing(rows),
        "precision_recall": metrics.precision_recall(rows, metrics.tunetrace_verdict, THRESHOLDS),
        "unusable_queries": sum(1 for r in rows if "error" in r),
        "scores": metrics.score_distributions(rows),
    }


def _peer_negative_scores(peer: list[dict]) -> list[float]:
    """Best scores of calibration queries whose best reference is not their source."""
    return [
        r["score"]
        for r in peer
        if r["reference_id"] is not None
        and (not r["query"]["positive"] or r["reference_id"] != r["query"]["source_id"])
        and not metrics.shares_material(r["query"]["source_id"], r["reference_id"])
    ]


def catalogue_footprint(directory: Path) -> dict[str, float]:
    """Bytes on disk of the catalogue and of its FAISS index, per hour of reference audio."""
    with Catalogue(directory, read_only=True) as catalogue:
        hours = float(catalogue.info()["audio_hours"])  # type: ignore[arg-type]
        references = catalogue.count()
    total = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    index = index_file_bytes(directory)
    return {
        "references": references,
        "audio_hours": hours,
        "disk_mb": total / 1e6,
        "disk_mb_per_hour": total / 1e6 / hours,
        "index_mb": index / 1e6,
        "index_mb_per_hour": index / 1e6 / hours,
    }


def split_queries(
    tracks: list[Track],
    works: list[renders.RenderedWork],
    split: str,
    repeats: int,
    negatives_per_kind: int,
    seed: int,
) -> list[grid.SuiteQuery]:
    """The suite's queries of one split (made once, cached under the benchmark cache)."""
    positives = [_source(t) for t in tracks if in_catalogue(t) and split_of(t) == split]
    plans = grid.plan_queries(
        positives,
        negative_sources(tracks, works, split),
        repeats=repeats,
        negatives_per_kind=negatives_per_kind,
        seed=seed,
    )
    folder = CACHE / "suite-queries" / f"{split}-seed{seed}-r{repeats}-n{negatives_per_kind}"
    queries = grid.make_suite_queries(plans, folder)
    logger.info("%s split: %d queries", split, len(queries))
    return queries


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-scale", action="store_true", help="leave out the size sweep")
    parser.add_argument(
        "--skip-partial", action="store_true", help="leave out the partial-copy families"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the rows of an earlier run with this size and seed (figures and plots only)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size = SIZES[args.size]
    for reason in (renders.available(), peer_chromaprint.available()):
        if reason:
            raise SystemExit(
                f"{reason}; run `python -m benchmarks.corpus install --suite-tools` first"
            )
    started = time.perf_counter()
    tracks = corpus.installed_or_exit(list_tracks())
    works = renders.render_works(int(size["renders"]), CACHE, workers=args.workers)  # type: ignore[arg-type]
    shared = renders.shared_tunes(works)
    metrics.KNOWN_SHARED.update(shared)
    directory, ingest_stats = suite_catalogue(tracks, works)
    with Catalogue(directory, read_only=True) as catalogue:
        reference_paths = {
            r.reference_id: Path(r.source_path or "") for r in catalogue.list(limit=1_000_000)
        }
    calibration = split_queries(
        tracks,
        works,
        "calibration",
        size["cal_repeats"],
        size["cal_negatives_per_kind"],
        args.seed,  # type: ignore[arg-type]
    )
    evaluation = split_queries(
        tracks,
        works,
        "evaluation",
        size["repeats"],
        size["negatives_per_kind"],
        args.seed + 1,  # type: ignore[arg-type]
    )
    prepared = time.perf_counter()
    cached = CACHE / f"suite-rows-{args.size}-{args.seed}.json"
    if args.reuse and cached.exists():
        saved = json.loads(cached.read_text())
        rows, peer, peer_timing = saved["rows"], saved["peer"], saved["peer_timing"]
        matched = prepared
    else:
        logger.info("matching %d queries with tunetrace", len(calibration) + len(evaluation))
        rows = match_all(directory, calibration + evaluation, args.workers)
        matched = time.perf_counter()
        logger.info("matching them with Chromaprint")
        peer, peer_timing = peer_rows(reference_paths, calibration + evaluation, args.workers)
        saved = {"rows": rows, "peer": peer, "peer_timing": peer_timing}
        cached.write_text(json.dumps(saved, default=str))
    cal_rows, eval_rows = rows[: len(calibration)], rows[len(calibration) :]
    cal_peer, eval_peer = peer[: len(calibration)], peer[len(calibration) :]
    threshold = ScoreModel.load().threshold
    peer_threshold = peer_chromaprint.fit_threshold(_peer_negative_scores(cal_peer))
    result = {
        **run_info(),
        "size": args.size,
        "seed": args.seed,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
        "threshold": threshold,
        "peer": "Chromaprint (fpcalc, exhaustive sliding bit-error search)",
        "peer_threshold": peer_threshold,
        "catalogue": catalogue_footprint(directory),
        "rendered_pairs_sharing_a_tune": len(shared),
        "rendered_pieces": {
            "rendered": len(works),
            "in_catalogue": sum(map(_render_in_catalogue, works)),
        },
        "ingest": ingest_stats,
        "queries": {"calibration": len(calibration), "evaluation": len(evaluation)},
        "evaluation": evaluate(eval_rows, eval_peer, threshold, peer_threshold),
        "calibration_precision_recall": metrics.precision_recall(
            cal_rows, metrics.tunetrace_verdict, THRESHOLDS
        ),
        "peer_timing": peer_timing,
        "timing_s": {"prepare": prepared - started, "tunetrace_matching": matched - prepared},
    }
    if not args.skip_scale:
        result["scale"] = scale_sweep.sweep(
            directory,
            [q for q in evaluation if q.positive and q.family in ("stretch", "pitch", "speed")],
            [q for q in evaluation if not q.positive],
            works=size["scale_works"],  # type: ignore[arg-type]
            queries=int(size["scale_queries"]),  # type: ignore[arg-type]
            cache=CACHE,
        )
        mean_hours = result["catalogue"]["audio_hours"] / result["catalogue"]["references"]
        result["extrapolation"] = scale_sweep.extrapolate(result["scale"], 1_000_000, mean_hours)
    result["peak_rss_mb"] = {
        "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    result["timing_s"]["total"] = time.perf_counter() - started
    page = plots.markdown(result)
    if not args.skip_partial:
        # Timed and reported on its own: the figures above keep their meaning.
        partial = partial_copies.run(
            directory,
            tracks,
            size=args.size,
            seed=args.seed,
            workers=args.workers,
            catalogue="the suite's catalogue (corpus tracks and rendered pieces)",
        )
        result["partial_copies"] = partial_copies.summary(partial)
        page += "\n" + partial_copies.suite_section(partial)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "suite" if args.size == "quick" else f"suite-{args.size}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(page)
    plots.draw_all(result, RESULTS, prefix=name)
    logger.info("done in %.0f s; results in %s", result["timing_s"]["total"], RESULTS)


if __name__ == "__main__":
    main()
