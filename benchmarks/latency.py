"""End-to-end latency of 10-s queries against a large catalogue, with recall and false positives.

``python -m benchmarks.latency --works 100000`` grows a copy of the benchmark catalogue (the
dev-corpus tracks of the "other half") to that many works with mosaic works (see
:mod:`benchmarks.scale_sweep`: spectra cut from the real references, stored exactly as ingested
references, so verification reads and derives them from the catalogue as it would real ones),
rebuilds its index as ``auto`` chooses, and sends the scale benchmark's altered 10-s evaluation
queries (every family, several stretching tools) and 10-s negative queries (tracks outside the
catalogue) through the whole pipeline: decoding, features, candidate search, verification and
scoring. The same queries on the base catalogue give the recall the growth is compared with.

Latency is measured with the process's default threads (``tunetrace match``, one API worker)
and with one thread (a batch-scan worker process), on each catalogue: the base catalogue's real
tracks show what verification costs for full-length songs, which the 60-s mosaics do not. The
catalogue's cache of reference features is emptied before every query, so every candidate is
read from the catalogue database and derived afresh, as for a catalogue far larger than the
cache. An untimed pass over the queries first brings the rows they read into the operating
system's file cache: the timings assume the catalogue database is in memory (16 GB at 100k
60-s works here; on disk, each candidate adds one random read). The grown catalogue (~16 GB at 100k
works) is kept in the benchmark cache and reused by later runs with the same size and seed.
Results: ``benchmarks/results/latency.json`` and ``latency.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.vector_index import IndexSpec

from benchmarks import corpus
from benchmarks.match_rows import timed_features
from benchmarks.queries import Query, make_queries
from benchmarks.run_benchmark import CACHE, build_catalogue
from benchmarks.run_info import disk_use, index_file_bytes, run_info
from benchmarks.scale_sweep import grow_with_mosaics
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher
from tunetrace.threads import thread_count, use_one_thread

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
#: Queries matched (and not timed) before each timed pass: compiled kernels, index pages.
WARM_UP = 3
#: Stage names of a timed query, in pipeline order.
STAGES = ("decode", "features", "search", "verification")


def grown_catalogue(base: Path, works: int, seed: int) -> Path:
    """A copy of ``base`` grown to ``works`` works with its ``auto`` index (cached).

    A copy whose growth or index build was interrupted has no ``complete`` marker and is
    made again.
    """
    directory = CACHE / f"latency-{base.name}-{works}-seed{seed}"
    marker = directory / "complete.json"
    if marker.exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(base, directory)
    with Catalogue(directory) as catalogue:
        grow_s = grow_with_mosaics(catalogue, works, np.random.default_rng(seed))
        started = time.perf_counter()
        index = catalogue.rebuild_index(IndexSpec(kind="auto"))
        build_s = time.perf_counter() - started
        marker.write_text(
            json.dumps(
                {
                    "grow_s": round(grow_s, 1),
                    "index_build_s": round(build_s, 1),
                    "index": index.spec.to_dict(),
                    "vectors": index.size,
                }
            )
        )
    return directory


def latency_queries(
    tracks: list, *, per_family: int, negatives: int, seed: int
) -> tuple[list[Query], list[Query]]:
    """The 10-s altered queries of the evaluation split (``per_family`` per family) and
    ``negatives`` 10-s negative queries, as this benchmark and :mod:`benchmarks.shards` send
    them (cached)."""
    positives = [
        q
        for q in make_queries(
            tracks,
            split="evaluation",
            per_family=per_family,
            negatives=0,
            cache=CACHE / "scale-queries",
            seed=seed,
            query_s=(10.0, 10.0),
        )
        if q.positive
    ]
    negative_queries = make_queries(
        tracks,
        split="evaluation",
        per_family=0,
        negatives=negatives,
        cache=CACHE / "latency-negatives",
        seed=seed,
        query_s=(10.0, 10.0),
    )
    return positives, negative_queries


def timed_match(matcher: Matcher, query: Query) -> dict:
    """One query through the pipeline with an empty feature cache: stage times and verdict."""
    matcher.catalogue.clear_features_cache()
    started = time.perf_counter()
    try:
        features, stages = timed_features(matcher, query.path)
    except TunetraceError as exc:
        return {"path": query.path, "error": str(exc)}
    verifications = matcher.verify(features, timings=stages)
    elapsed = time.perf_counter() - started
    best = verifications[0] if verifications else None
    flagged = best is not None and best.score >= matcher.default_min_score
    found = None
    if flagged:
        found = matcher.catalogue.record_by_key(best.reference_key).reference_id
    return {
        "path": query.path,
        "positive": query.positive,
        "family": query.family,
        "tool": query.tool,
        "truth": query.source_id if query.positive else None,
        "flagged": found,
        "elapsed_s": elapsed,
        "stages": stages,
    }


def timed_pass(matcher: Matcher, queries: list[Query], *, warm_files: bool = False) -> list[dict]:
    """Every query once, after :data:`WARM_UP` untimed ones (or, with ``warm_files``, after
    an untimed pass over all of them, which brings the catalogue rows they read into the
    operating system's file cache)."""
    for query in queries if warm_files else queries[:WARM_UP]:
        timed_match(matcher, query)
    return [timed_match(matcher, query) for query in queries]


def summarise(rows: list[dict], stages: Sequence[str] = STAGES) -> dict[str, object]:
    """Latency percentiles, stage medians (of ``stages``, which every timed row has), recall
    and false positives of one pass."""
    good = [r for r in rows if "error" not in r]
    positives = [r for r in good if r["positive"]]
    negatives = [r for r in good if not r["positive"]]
    elapsed = np.array([r["elapsed_s"] for r in good]) * 1000
    return {
        "queries": len(good),
        "errors": len(rows) - len(good),
        "p50_ms": round(float(np.median(elapsed)), 1),
        "p95_ms": round(float(np.percentile(elapsed, 95)), 1),
        "stage_p50_ms": {
            stage: round(float(np.median([r["stages"][stage] for r in good])) * 1000, 1)
            for stage in stages
        },
        "recall": round(sum(r["flagged"] == r["truth"] for r in positives) / len(positives), 4),
        "positives": len(positives),
        "false_positives": sum(r["flagged"] is not None for r in negatives),
        "negatives": len(negatives),
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--queries-per-family", type=int, default=12)
    parser.add_argument("--negatives", type=int, default=40)
    parser.add_argument(
        "--grow-only", action="store_true", help="grow and index the catalogue, then stop"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tracks = corpus.installed_or_exit(corpus.tracks())
    base, _ = build_catalogue(tracks)
    grown = grown_catalogue(base, args.works, args.seed)
    if args.grow_only:
        return
    positives, negatives = latency_queries(
        tracks, per_family=args.queries_per_family, negatives=args.negatives, seed=args.seed
    )
    queries = positives + negatives
    rows: dict[str, list[dict]] = {}
    with (
        Catalogue(grown, read_only=True) as grown_cat,
        Catalogue(base, read_only=True) as base_cat,
    ):
        info = grown_cat.info()
        base_works = base_cat.count()
        base_index = base_cat.info()["index_kind"]
        grown_matcher, base_matcher = Matcher(grown_cat), Matcher(base_cat)
        # the default threads first: a process cannot go back from one thread
        threads = thread_count()
        rows[f"grown, {threads} threads"] = timed_pass(grown_matcher, queries, warm_files=True)
        rows[f"base, {threads} threads"] = timed_pass(base_matcher, queries, warm_files=True)
        use_one_thread()
        rows["grown, one thread"] = timed_pass(grown_matcher, queries)
        rows["base, one thread"] = timed_pass(base_matcher, queries)
    passes = {name: summarise(pass_rows) for name, pass_rows in rows.items()}
    result = {
        **run_info(),
        "params": FingerprintParams().digest(),
        "base": {"works": base_works, "index": base_index},
        "grown": {
            "works": info["references"],
            "audio_hours": info["audio_hours"],
            "index_mb": round(index_file_bytes(grown) / 1e6, 1),
            **disk_use(info),
            **json.loads((grown / "complete.json").read_text()),
        },
        "passes": passes,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "latency.md").write_text(markdown(result))
    print(markdown(result))


def _on_disk(grown: dict) -> str:
    """The grown catalogue's bytes on disk per hour of audio, by part (runs that kept them)."""
    if "mb_per_audio_hour" not in grown:
        return ""
    parts = ", ".join(f"{part} {mb:.2f}" for part, mb in grown["mb_per_audio_hour_by_part"].items())
    return f"; on disk {grown['mb_per_audio_hour']:.2f} MB per hour of audio ({parts})"


def _describe(spec: dict) -> str:
    """An index spec in a few words."""
    if spec["kind"] != "ivfpq":
        return str(spec["kind"])
    dims = spec["projection_dims"]
    projection = f"{dims} projected dimensions, " if dims else ""
    return (
        f"ivfpq ({projection}{spec['pq_m']} {spec['pq_bits']}-bit codes, "
        f"{spec['nlist']:,} lists, {spec['nprobe']} probed)"
    )


def markdown(result: dict) -> str:
    """The results as a short Markdown table."""
    grown = result["grown"]
    lines = [
        f"End-to-end 10-s queries, {result['date']}, {result['machine']}, commit "
        f"{result['commit']}. Grown catalogue: {grown['works']:,} works, "
        f"{grown['audio_hours']:,.0f} h, index {_describe(grown['index'])} "
        f"({grown['index_mb']} MB){_on_disk(grown)}; "
        f"base: {result['base']['works']} works. Feature cache emptied before every query.",
        "",
        "| catalogue, threads | queries | p50 ms | p95 ms | decode | features | search "
        "| verification | recall | false positives |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["passes"].items():
        stages = row["stage_p50_ms"]
        lines.append(
            f"| {name} | {row['queries']} | {row['p50_ms']} | {row['p95_ms']} | "
            f"{stages['decode']} | {stages['features']} | {stages['search']} | "
            f"{stages['verification']} | {row['recall']:.1%} of {row['positives']} | "
            f"{row['false_positives']} of {row['negatives']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
