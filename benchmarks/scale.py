"""Index scale benchmark: exact versus approximate vector search as the catalogue grows.

``python -m benchmarks.scale --works 10000 100000`` measures, for catalogues of the real dev
corpus plus N synthetic works, each index kind's build time, memory, search time for a 10-s
query and candidate recall: the share of altered corpus queries whose true reference is among
the candidates that go on to verification, with the exact index and with the approximate one.

Synthetic works are made faster than audio: their chroma is a mosaic of 2-s blocks cut from
random corpus tracks at random places, each block rolled by a random number of semitones, and
their patch vectors are computed from that chroma exactly as for a real reference. A patch
(3.2 s) always spans two or more blocks from different sources, so no synthetic vector equals a
real one while their distribution stays that of real music; blocks of the real tracks make them
hard distractors. Each synthetic work is ``--work-s`` long (default 60 s).
Results: ``benchmarks/results/scale.json`` and ``scale.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import faiss
import numpy as np
from tunetrace.fingerprint.embedding import embed_patches, patch_starts
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.vector_index import IndexSpec, VectorIndex

from benchmarks import corpus
from benchmarks.queries import make_queries
from benchmarks.run_benchmark import CACHE, build_catalogue
from benchmarks.run_info import run_info
from tunetrace.candidates import vector_ids
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
BLOCK_FRAMES = 20
#: Synthetic works get keys above every real reference key.
SYNTHETIC_KEY_BASE = 1 << 20


def synthetic_vectors(
    catalogue: Catalogue, n_works: int, work_s: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Patch vectors (float16) and ids of ``n_works`` mosaic works (see the module text)."""
    params = catalogue.params
    rng = np.random.default_rng(seed)
    sources = [catalogue.features(r.key).chroma for r in _records(catalogue)]
    frames = int(work_s * params.frame_rate_hz)
    starts = patch_starts(frames, patch_frames=params.patch_frames, hop=params.reference_patch_hop)
    bins = params.bins_per_octave
    step = bins // 12
    vectors = np.empty((n_works * len(starts), params.embedding_dim), dtype=np.float16)
    ids = np.empty(n_works * len(starts), dtype=np.int64)
    for work in range(n_works):
        blocks = []
        for _ in range(-(-frames // BLOCK_FRAMES)):
            chroma = sources[rng.integers(len(sources))]
            at = rng.integers(0, chroma.shape[1] - BLOCK_FRAMES)
            block = chroma[:, at : at + BLOCK_FRAMES]
            blocks.append(np.roll(block, step * int(rng.integers(12)), axis=0))
        mosaic = np.concatenate(blocks, axis=1)[:, :frames]
        rows = slice(work * len(starts), (work + 1) * len(starts))
        vectors[rows] = embed_patches(mosaic, starts, params=params)
        ids[rows] = vector_ids(SYNTHETIC_KEY_BASE + work, len(starts))
    return vectors, ids


def _records(catalogue: Catalogue) -> list:
    return catalogue.list(offset=0, limit=1_000_000)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Searcher:
    """Adapter giving find_candidates a bare VectorIndex, timing its searches."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.seconds: list[float] = []

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        result = self.index.search(vectors, k)
        self.seconds.append(time.perf_counter() - started)
        return result


def candidate_recall(
    searcher: _Searcher, queries: list, matcher: Matcher, key_of: dict[str, int]
) -> float:
    """Share of positive queries whose true reference is among the verified candidates."""
    found = 0
    for query, features in queries:
        candidates = matcher.candidates(features, searcher)
        found += key_of[query.source_id] in {c.reference_key for c in candidates}
    return found / max(1, len(queries))


def measure_nprobe(
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: list,
    matcher: Matcher,
    key_of: dict[str, int],
    nprobes: list[int],
) -> list[dict[str, object]]:
    """One IVF-PQ index, searched with each number of probed lists."""
    started = time.perf_counter()
    index = VectorIndex.build(vectors.shape[1], IndexSpec(kind="ivfpq"), vectors, ids)
    build_s = time.perf_counter() - started
    rows = []
    for nprobe in nprobes:
        faiss.extract_index_ivf(index._index).nprobe = nprobe
        searcher = _Searcher(index)
        recall = candidate_recall(searcher, queries, matcher, key_of)
        rows.append(
            {
                "kind": f"ivfpq, nprobe {nprobe}",
                "spec": {**index.spec.to_dict(), "nprobe": nprobe},
                "build_s": round(build_s, 1),
                "index_mb": None,
                "search_ms_p50": round(float(np.median(searcher.seconds)) * 1000, 1),
                "search_ms_p95": round(float(np.percentile(searcher.seconds, 95)) * 1000, 1),
                "candidate_recall": round(recall, 4),
            }
        )
        logger.info("%s", rows[-1])
    return rows


def measure(
    kind_spec: IndexSpec,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: list,
    matcher: Matcher,
    key_of: dict[str, int],
    work_dir: Path,
) -> dict[str, object]:
    """Build one index over ``vectors`` and measure it."""
    started = time.perf_counter()
    index = VectorIndex.build(vectors.shape[1], kind_spec, vectors, ids)
    build_s = time.perf_counter() - started
    path = work_dir / f"{kind_spec.kind}.faiss"
    index.save(path, generation=0)
    size = path.stat().st_size
    mapped = VectorIndex.load(path, dim=vectors.shape[1], generation=0, mmap=True) or index
    del index
    searcher = _Searcher(mapped)
    recall = candidate_recall(searcher, queries, matcher, key_of)
    path.unlink()
    return {
        "kind": kind_spec.kind,
        "spec": mapped.spec.to_dict(),
        "build_s": round(build_s, 1),
        "index_mb": round(size / 1e6, 1),
        "search_ms_p50": round(float(np.median(searcher.seconds)) * 1000, 1),
        "search_ms_p95": round(float(np.percentile(searcher.seconds, 95)) * 1000, 1),
        "candidate_recall": round(recall, 4),
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", type=int, nargs="+", default=[10_000])
    parser.add_argument("--work-s", type=float, default=60.0)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivfpq", "hnsw"])
    parser.add_argument(
        "--hnsw-max-works", type=int, default=10_000,
        help="Skip HNSW above this size (its build takes hours on 2 cores at 100k works).",
    )  # fmt: skip
    parser.add_argument("--queries-per-family", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--nprobe", type=int, nargs="+", default=None,
        help="Instead of comparing kinds: one IVF-PQ index searched with each of these "
        "numbers of probed lists (results: scale_nprobe.*).",
    )  # fmt: skip
    parser.add_argument(
        "--name", default=None,
        help="Results file name (default scale, or scale_nprobe with --nprobe).",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    name = args.name or ("scale_nprobe" if args.nprobe else "scale")
    tracks = corpus.tracks()
    catalogue_dir, _ = build_catalogue(tracks)
    catalogue = Catalogue(catalogue_dir, read_only=True)
    matcher = Matcher(catalogue)
    key_of = {r.reference_id: r.key for r in _records(catalogue)}
    generated = make_queries(
        tracks, split="evaluation", per_family=args.queries_per_family, negatives=0,
        cache=CACHE / "scale-queries", seed=args.seed, query_s=(10.0, 10.0),
    )  # fmt: skip
    queries = []
    for query in generated:
        try:
            if query.positive:
                queries.append((query, matcher.load_query(query.path)))
        except TunetraceError as exc:  # e.g. an excerpt that fell on silence
            logger.info("query %s skipped: %s", query.path, exc)
    real_vectors, real_ids = catalogue._all_vectors()
    real_hours = sum(r.duration_s for r in _records(catalogue)) / 3600
    info = run_info()
    work_dir = CACHE / "scale-work"
    work_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for n_works in args.works:
        started = time.perf_counter()
        extra, extra_ids = synthetic_vectors(catalogue, n_works, args.work_s, args.seed)
        generate_s = time.perf_counter() - started
        vectors = np.concatenate([real_vectors.astype(np.float16), extra])
        ids = np.concatenate([real_ids, extra_ids])
        del extra, extra_ids
        hours = real_hours + n_works * args.work_s / 3600
        logger.info("%d works: %d vectors (%.0f h), generated in %.0f s",
                    n_works, len(vectors), hours, generate_s)  # fmt: skip
        if args.nprobe:
            for result in measure_nprobe(vectors, ids, queries, matcher, key_of, args.nprobe):
                result.update(
                    works=len(key_of) + n_works, vectors=len(vectors),
                    audio_hours=round(hours, 1), index_mb_per_hour=None,
                    peak_rss_mb=round(_rss_mb()),
                )  # fmt: skip
                runs.append(result)
                _write(info, len(key_of), real_hours, args.work_s, len(queries), runs, name)
            continue
        for kind in args.kinds:
            if kind == "hnsw" and n_works > args.hnsw_max_works:
                continue
            result = measure(
                IndexSpec(kind=kind), vectors, ids, queries, matcher, key_of, work_dir,
            )  # fmt: skip
            result.update(
                works=len(key_of) + n_works,
                vectors=len(vectors),
                audio_hours=round(hours, 1),
                index_mb_per_hour=round(result["index_mb"] / hours, 3),
                peak_rss_mb=round(_rss_mb()),
            )
            logger.info("%s", result)
            runs.append(result)
            _write(info, len(key_of), real_hours, args.work_s, len(queries), runs, name)
    print(markdown(json.loads((RESULTS / f"{name}.json").read_text())))


def _write(
    info: dict[str, str],
    references: int,
    hours: float,
    work_s: float,
    n_queries: int,
    runs: list[dict],
    name: str = "scale",
) -> None:
    """Write the results so far (a long run that is stopped keeps what it measured)."""
    result = {
        **info,
        "real_references": references,
        "real_hours": round(hours, 2),
        "synthetic_work_s": work_s,
        "positive_queries": n_queries,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(result) + "\n")


def markdown(result: dict) -> str:
    """The table for the README."""
    exact = {r["works"]: r["candidate_recall"] for r in result["runs"] if r["kind"] == "flat"}
    lines = [
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}): the "
        f"{result['real_references']} dev-corpus references ({result['real_hours']:.1f} h) plus "
        f"synthetic works of {result['synthetic_work_s']:.0f} s; {result['positive_queries']} "
        "altered 10-s queries of corpus tracks; candidate recall = true reference among the "
        "16 candidates sent to verification.",
        "",
        "| works | vectors | hours | index | build (s) | index MB | MB per hour | search p50 / p95 "
        "(ms, 10-s query) | candidate recall | loss vs exact (points) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        base = exact.get(r["works"])
        loss = "-" if base is None else f"{(base - r['candidate_recall']) * 100:+.1f}"
        lines.append(
            f"| {r['works']:,} | {r['vectors']:,} | {r['audio_hours']:,.0f} | {r['kind']} | "
            f"{r['build_s']} | {r['index_mb'] or '-'} | {r['index_mb_per_hour'] or '-'} | "
            f"{r['search_ms_p50']} / {r['search_ms_p95']} | {r['candidate_recall']:.3f} | "
            f"{loss} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
