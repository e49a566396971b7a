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
import hashlib
import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path

import faiss
import numpy as np
from tunetrace.fingerprint.embedding import embed_patches, patch_starts
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.ids import vector_ids
from tunetrace.index.vector_index import IndexSpec, VectorIndex

from benchmarks import corpus
from benchmarks.queries import make_queries
from benchmarks.run_benchmark import CACHE, build_catalogue
from benchmarks.run_info import run_info
from tunetrace.errors import TunetraceError
from tunetrace.matcher import Matcher

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
BLOCK_FRAMES = 20
#: Synthetic works get keys above every real reference key.
SYNTHETIC_KEY_BASE = 1 << 20
#: Vectors added to an index per call (bounds the float32 copy).
ADD_CHUNK = 500_000
#: Neighbour overlap is measured on every this-many-th query vector.
OVERLAP_EVERY = 25


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


class _Answers:
    """A searcher that hands back neighbours found earlier (one query's rows)."""

    def __init__(self, similarities: np.ndarray, ids: np.ndarray) -> None:
        self.similarities, self.ids = similarities, ids

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.similarities[:, :k], self.ids[:, :k]


@dataclass(frozen=True)
class QuerySet:
    """Positive queries with their patch vectors stacked (rows ``bounds[i]:bounds[i + 1]``)."""

    queries: list
    vectors: np.ndarray
    bounds: np.ndarray
    patches: list

    def rows(self, number: int) -> slice:
        """Rows of query ``number`` in :attr:`vectors`."""
        return slice(int(self.bounds[number]), int(self.bounds[number + 1]))


def query_set(queries: list, matcher: Matcher) -> QuerySet:
    """Stack the patch vectors of every query (as ``matcher``'s candidate search makes them,
    :meth:`~tunetrace.matcher.Matcher.query_patches`)."""
    params = matcher.catalogue.params
    patches = [matcher.query_patches(features, params) for _, features in queries]
    vectors = [vectors for vectors, _, _ in patches]
    bounds = np.cumsum([0] + [len(v) for v in vectors])
    return QuerySet(queries, np.concatenate(vectors).astype(np.float32), bounds, patches)


def exact_index(vectors: np.ndarray) -> faiss.IndexFlatIP:
    """An exact inner-product index over ``vectors`` (row numbers as ids), added in chunks so
    that no float32 copy of all of them is made at once."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, len(vectors), ADD_CHUNK):
        flat.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))
    return flat


def exact_neighbours(
    flat: Callable[[], faiss.IndexFlatIP],
    ids: np.ndarray,
    queries: QuerySet,
    k: int,
    cache: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every query vector, in one batched search.

    Searching all queries at once turns the exact search into a few large matrix products
    (minutes at 100k works, against about a minute per query when each query scans the
    catalogue alone). The result is cached in ``cache``; ``flat`` gives the exact index over
    the vectors whose ``ids`` are given, and is only called when the cache is missing.
    """
    if cache.exists():
        saved = np.load(cache)
        return saved["similarities"], saved["ids"]
    started = time.perf_counter()
    similarities, rows = flat().search(queries.vectors, k)
    found = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
    np.savez(cache, similarities=similarities, ids=found)
    logger.info("exact neighbours of %d vectors in %.0f s", len(queries.vectors),
                time.perf_counter() - started)  # fmt: skip
    return similarities, found


def candidates_found(
    similarities: np.ndarray,
    ids: np.ndarray,
    queries: QuerySet,
    matcher: Matcher,
    key_of: dict[str, int],
) -> np.ndarray:
    """Per query: whether its true reference is among the candidates these neighbours give."""
    found = []
    for number, (query, features) in enumerate(queries.queries):
        rows = queries.rows(number)
        candidates = matcher.candidates(
            features, _Answers(similarities[rows], ids[rows]), patches=queries.patches[number]
        )
        found.append(key_of[query.source_id] in {c.reference_key for c in candidates})
    return np.array(found, dtype=bool)


def search_each(index: VectorIndex, queries: QuerySet, k: int) -> tuple[np.ndarray, ...]:
    """Search every query on its own (as a matcher does), timing each search."""
    similarities = np.zeros((len(queries.vectors), k), dtype=np.float32)
    ids = np.full((len(queries.vectors), k), -1, dtype=np.int64)
    seconds = []
    for number in range(len(queries.queries)):
        rows = queries.rows(number)
        started = time.perf_counter()
        similarities[rows], ids[rows] = index.search(queries.vectors[rows], k)
        seconds.append(time.perf_counter() - started)
    return similarities, ids, np.array(seconds)


def compare(
    name: str,
    found: np.ndarray,
    exact_found: np.ndarray,
    ids: np.ndarray,
    exact_ids: np.ndarray,
    seconds: np.ndarray,
) -> dict[str, object]:
    """One table row: search time and candidate recall against exact search, same queries."""
    overlap = np.mean(
        [
            len(set(a) & set(b)) / len(b)
            for a, b in zip(ids[::OVERLAP_EVERY], exact_ids[::OVERLAP_EVERY], strict=True)
        ]
    )
    return {
        "kind": name,
        "search_ms_p50": round(float(np.median(seconds)) * 1000, 1),
        "search_ms_p95": round(float(np.percentile(seconds, 95)) * 1000, 1),
        "candidate_recall": round(float(found.mean()), 4),
        "exact_candidate_recall": round(float(exact_found.mean()), 4),
        "lost": int((exact_found & ~found).sum()),
        "gained": int((found & ~exact_found).sum()),
        "neighbour_overlap": round(float(overlap), 3),
    }


def measure(
    kind_spec: IndexSpec,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: QuerySet,
    exact: tuple[np.ndarray, np.ndarray, np.ndarray],
    matcher: Matcher,
    key_of: dict[str, int],
    work_dir: Path,
    nprobes: list[int],
) -> list[dict[str, object]]:
    """Build one index over ``vectors``, save it, memory-map it and measure it (for an IVF
    kind, once per number of probed lists)."""
    k = matcher.settings.n_neighbours
    _, exact_ids, exact_found = exact
    started = time.perf_counter()
    index = VectorIndex.build(vectors.shape[1], kind_spec, vectors, ids)
    build_s = time.perf_counter() - started
    path = work_dir / f"{kind_label(kind_spec)}.faiss"
    index.save(path)
    size = path.stat().st_size
    mapped = VectorIndex.read(path, dim=vectors.shape[1], spec=index.spec, mmap=True)
    del index
    ivf = faiss.try_extract_index_ivf(mapped._index)
    label = kind_label(mapped.spec)
    rows = []
    for nprobe in nprobes if ivf is not None else [None]:
        if ivf is not None:
            ivf.nprobe = nprobe
        similarities, found_ids, seconds = search_each(mapped, queries, k)
        found = candidates_found(similarities, found_ids, queries, matcher, key_of)
        name = label if nprobe is None else f"{label}, nprobe {nprobe}"
        row = compare(name, found, exact_found, found_ids, exact_ids, seconds)
        row.update(
            spec={**mapped.spec.to_dict(), **({"nprobe": nprobe} if nprobe else {})},
            build_s=round(build_s, 1),
            index_mb=round(size / 1e6, 1),
            memory_mapped=mapped.memory_mapped,
        )
        logger.info("%s", row)
        rows.append(row)
    path.unlink()
    return rows


#: The IVF-PQ recipe before alteration-discriminant projections: OPQ rotation of all
#: dimensions, 48 codes of 8 bits.
OPQ_SPEC = IndexSpec(kind="ivfpq", pq_m=48, pq_bits=8, projection_dims=0)


def kind_label(spec: IndexSpec) -> str:
    """The kind, ``ivfpq-opq`` for IVF-PQ without projection, ``+sqN`` for re-ranking copies."""
    label = spec.kind
    if spec.kind == "ivfpq" and not spec.projection_dims:
        label += "-opq"
    return f"{label}+sq{spec.refine_bits}" if spec.refine_bits else label


def spec_of_label(label: str) -> IndexSpec:
    """Inverse of :func:`kind_label` (``--kinds ivfpq ivfpq-opq ivfpq-opq+sq4 hnsw``): ``ivfpq``
    is the default recipe, ``ivfpq-opq`` the unprojected one (:data:`OPQ_SPEC`)."""
    kind, _, refine = label.partition("+sq")
    if kind == "ivfpq-opq":
        return replace(OPQ_SPEC, refine_bits=int(refine) if refine else 0)
    if refine:
        raise ValueError("re-ranking copies go with the unprojected recipe: ivfpq-opq+sqN")
    return IndexSpec(kind=kind)


def time_exact(
    flat: Callable[[], faiss.IndexFlatIP], queries: QuerySet, k: int, n_timed: int
) -> np.ndarray:
    """Seconds of an exact search of each of the first ``n_timed`` queries on its own."""
    seconds = []
    for number in range(min(n_timed, len(queries.queries))):
        index = flat()
        started = time.perf_counter()
        index.search(queries.vectors[queries.rows(number)], k)
        seconds.append(time.perf_counter() - started)
    return np.array(seconds)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", type=int, nargs="+", default=[10_000])
    parser.add_argument("--work-s", type=float, default=60.0)
    parser.add_argument(
        "--kinds", nargs="+", default=["ivfpq", "hnsw"],
        help="Index kinds: ivfpq (default recipe), ivfpq-opq (OPQ, 48 8-bit codes, no "
        "projection), ivfpq-opq+sq4 (or +sq6, +sq8: re-ranking copies), hnsw, ivfflat.",
    )  # fmt: skip
    parser.add_argument(
        "--hnsw-max-works", type=int, default=10_000,
        help="Skip HNSW above this size (its build takes hours on 2 cores at 100k works).",
    )  # fmt: skip
    parser.add_argument("--queries-per-family", type=int, default=12)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--nprobe", type=int, nargs="+", default=[32],
        help="Probed lists to measure each IVF index with (one build, one row each).",
    )  # fmt: skip
    parser.add_argument(
        "--exact-timed", type=int, default=3,
        help="Queries whose exact search is timed on its own (about a minute each at 100k).",
    )  # fmt: skip
    parser.add_argument("--name", default="scale", help="Results file name.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tracks = corpus.tracks()
    catalogue_dir, _ = build_catalogue(tracks)
    catalogue = Catalogue(catalogue_dir, read_only=True)
    matcher = Matcher(catalogue)
    key_of = {r.reference_id: r.key for r in _records(catalogue)}
    generated = make_queries(
        tracks, split="evaluation", per_family=args.queries_per_family, negatives=0,
        cache=CACHE / "scale-queries", seed=args.seed, query_s=(10.0, 10.0),
    )  # fmt: skip
    positives = []
    for query in generated:
        try:
            if query.positive:
                positives.append((query, matcher.load_query(query.path)))
        except TunetraceError as exc:  # e.g. an excerpt that fell on silence
            logger.info("query %s skipped: %s", query.path, exc)
    queries = query_set(positives, matcher)
    real_vectors, real_ids = catalogue._all_vectors()
    real_hours = sum(r.duration_s for r in _records(catalogue)) / 3600
    info = run_info()
    work_dir = CACHE / "scale-work"
    work_dir.mkdir(parents=True, exist_ok=True)
    k = matcher.settings.n_neighbours
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
        digest = "-".join(
            [catalogue.params.digest(), str(n_works), f"{args.work_s:g}", str(args.seed)]
        )
        digest += "-" + hashlib.sha1(queries.vectors.tobytes()).hexdigest()[:12]
        # Built once, and only if the ground truth is not cached or exact search is timed.
        flat = cache(partial(exact_index, vectors))
        exact_similarities, exact_ids = exact_neighbours(
            flat, ids, queries, k, work_dir / f"exact-{digest}.npz"
        )
        exact_found = candidates_found(exact_similarities, exact_ids, queries, matcher, key_of)
        exact_seconds = time_exact(flat, queries, k, args.exact_timed)
        del flat
        sizes = {
            "works": len(key_of) + n_works, "vectors": len(vectors), "audio_hours": round(hours, 1),
        }  # fmt: skip
        exact_row = compare("flat", exact_found, exact_found, exact_ids, exact_ids, exact_seconds)
        exact_row.update(
            sizes, spec=IndexSpec(kind="flat").to_dict(), build_s=None,
            index_mb=round(len(vectors) * (vectors.shape[1] * 4 + 8) / 1e6, 1),
            timed_queries=len(exact_seconds),
        )  # fmt: skip
        runs.append(exact_row)
        for kind in args.kinds:
            if kind == "hnsw" and n_works > args.hnsw_max_works:
                continue
            for result in measure(
                spec_of_label(kind), vectors, ids, queries,
                (exact_similarities, exact_ids, exact_found), matcher, key_of, work_dir,
                args.nprobe,
            ):  # fmt: skip
                result.update(sizes, peak_rss_mb=round(_rss_mb()))
                runs.append(result)
                _write(info, len(key_of), real_hours, args.work_s, len(positives), runs, args.name)
        for run in runs:
            if run.get("index_mb") is not None:
                run["index_mb_per_hour"] = round(run["index_mb"] / run["audio_hours"], 3)
        _write(info, len(key_of), real_hours, args.work_s, len(positives), runs, args.name)
    print(markdown(json.loads((RESULTS / f"{args.name}.json").read_text())))


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
    """The table for the benchmarks page of the docs."""
    lines = [
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}): the "
        f"{result['real_references']} dev-corpus references ({result['real_hours']:.1f} h) plus "
        f"synthetic works of {result['synthetic_work_s']:.0f} s; {result['positive_queries']} "
        "altered 10-s queries of corpus tracks; candidate recall = true reference among the "
        "16 candidates sent to verification; lost / gained = queries whose true reference "
        "exact search finds and the index does not / the other way round; neighbour overlap = "
        "share of the exact 20 nearest patches the index returns. Exact search (flat) gives "
        "the ground truth in one batched search; its per-query time is measured on "
        "the first few queries alone.",
        "",
        "| works | vectors | hours | index | build (s) | index MB | MB per hour | search p50 / p95 "
        "(ms, 10-s query) | candidate recall | loss vs exact (points) | lost / gained | "
        "neighbour overlap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        loss = (r["exact_candidate_recall"] - r["candidate_recall"]) * 100
        lines.append(
            f"| {r['works']:,} | {r['vectors']:,} | {r['audio_hours']:,.0f} | {r['kind']} | "
            f"{r['build_s'] if r['build_s'] is not None else '-'} | {r['index_mb']} | "
            f"{r.get('index_mb_per_hour', '-')} | {r['search_ms_p50']} / {r['search_ms_p95']} | "
            f"{r['candidate_recall']:.3f} | {loss:+.1f} | {r['lost']} / {r['gained']} | "
            f"{r['neighbour_overlap']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
