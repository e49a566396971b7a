"""Whole 10-s queries against one large catalogue packed three ways, one thread.

The suite's catalogue is grown with mosaic works (:mod:`benchmarks.scale_sweep`) to ``--works``
references once, stored as new references are (JPEG-LS tiles, read a part at a time), then
copied and repacked without loss as one JPEG-LS image per reference and as Zstandard. The same
seeded positive and negative queries of the suite's evaluation split go through the whole
pipeline (decoding, search, verification) against each copy in turn, query by query, so the
machine's slow and fast phases fall on all three alike; every copy's features cache starts
empty and keeps what its queries read, as a service's would.

Run: ``python -m benchmarks.part_reads [--works 10000] [--queries 40] [--rounds 5]``. Writes
``benchmarks/results/part_reads.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.spectrum_codec import COMPACT_CODEC, compact_codec
from tunetrace.index.vector_index import IndexSpec

from benchmarks import corpus, renders, suite
from benchmarks import suite_metrics as metrics
from benchmarks.match_rows import match_row
from benchmarks.run_benchmark import CACHE, RESULTS, list_tracks
from benchmarks.run_info import run_info
from benchmarks.scale_sweep import grow_with_mosaics
from tunetrace.matcher import Matcher
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)

#: Packings compared: the one new references get, one image per reference, Zstandard.
PACKINGS = (COMPACT_CODEC.packing, "j", "z")


def grown_catalogue(base: Path, works: int, seed: int) -> Path:
    """The suite's catalogue grown to ``works`` references with mosaic works (cached)."""
    directory = CACHE / f"part-reads-{base.name}-{works}-{COMPACT_CODEC.name}"
    if (directory / "complete").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(base, directory)
    with Catalogue(directory) as catalogue:
        catalogue.migrate(codec=COMPACT_CODEC)
        seconds = grow_with_mosaics(catalogue, works, np.random.default_rng(seed))
        logger.info("grown to %d works in %.0f s", catalogue.count(), seconds)
        catalogue.rebuild_index(IndexSpec(kind="auto"))
    (directory / "complete").write_text("ok\n")
    return directory


def repacked(source: Path, packing: str) -> Path:
    """A copy of ``source`` with every spectrum repacked as ``packing`` (cached)."""
    codec = compact_codec(COMPACT_CODEC.bits, COMPACT_CODEC.exponent, packing)
    if codec == COMPACT_CODEC:
        return source
    directory = source.with_name(f"{source.name}-as-{codec.name}")
    if not (directory / "complete").exists():
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(source, directory)
        with Catalogue(directory) as catalogue:
            catalogue.migrate(codec=codec)  # the index is left as it is
        (directory / "complete").write_text("ok\n")
    return directory


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--works", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=40, help="of each kind, seeded")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rounds", type=int, default=5,
        help="passes over the queries, each with every features cache emptied first",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size = suite.SIZES["quick"]
    tracks = corpus.installed_or_exit(list_tracks())
    works = renders.render_works(int(size["renders"]), CACHE, workers=os.cpu_count() or 1)  # type: ignore[arg-type]
    metrics.KNOWN_SHARED.update(renders.shared_tunes(works))
    base, _ = suite.suite_catalogue(tracks, works)
    evaluation = suite.split_queries(
        tracks,
        works,
        "evaluation",
        size["repeats"],
        size["negatives_per_kind"],
        2027,  # type: ignore[arg-type]
    )
    grown = grown_catalogue(base, args.works, args.seed)
    copies = {p: repacked(grown, p) for p in PACKINGS}

    rng = np.random.default_rng(args.seed)
    positives = [q for q in evaluation if q.positive and q.family in ("stretch", "pitch", "speed")]
    negatives = [q for q in evaluation if not q.positive]
    chosen = [positives[i] for i in sorted(rng.permutation(len(positives))[: args.queries])]
    chosen += [negatives[i] for i in sorted(rng.permutation(len(negatives))[: args.queries])]

    use_one_thread()
    catalogues = {p: Catalogue(path, read_only=True) for p, path in copies.items()}
    matchers = {p: Matcher(c) for p, c in catalogues.items()}
    for matcher in matchers.values():  # compiled and warm before timing
        match_row(matcher, chosen[0])
    # rounds[r][packing]: that pass's rows (the machine's phases differ between passes)
    rounds: list[dict[str, list[dict]]] = []
    for _ in range(max(args.rounds, 1)):
        for catalogue in catalogues.values():
            catalogue.clear_features_cache()
        rounds.append({p: [] for p in PACKINGS})
        for query in chosen:
            for packing, matcher in matchers.items():
                rounds[-1][packing].append(match_row(matcher, query))
    rows = rounds[0]
    for catalogue in catalogues.values():
        catalogue.close()
    threshold = next(iter(matchers.values())).score_model.threshold

    def ten_s(packing: str, passes: list[dict[str, list[dict]]]) -> list[float]:
        """Seconds each 10-s query of ``passes`` took against ``packing`` (errors left out)."""
        return [r["elapsed_s"] for p in passes for r in p[packing]
                if "error" not in r and abs(r["duration_s"] - 10) <= 1]  # fmt: skip

    def round_p50(packing: str, passes: list[dict[str, list[dict]]]) -> float | None:
        times = ten_s(packing, passes)
        return float(np.median(times)) if times else None

    def over_zstandard(packing: str, passes: list[dict[str, list[dict]]]) -> float | None:
        ours, theirs = round_p50(packing, passes), round_p50("z", passes)
        return None if ours is None or not theirs else ours / theirs

    def summary(packing: str) -> dict[str, object]:
        good = [r for p in rounds for r in p[packing] if "error" not in r]
        ten_s_p50 = round_p50(packing, rounds)
        recall = metrics.recall_table(rows[packing], metrics.tunetrace_verdict, threshold,
                                      lambda q: "all")["all"]  # fmt: skip
        fps = metrics.false_positives(rows[packing], metrics.tunetrace_verdict, threshold)["all"]
        return {
            "codec": compact_codec(COMPACT_CODEC.bits, COMPACT_CODEC.exponent, packing).name,
            "latency_10s_p50_ms": None if ten_s_p50 is None else ten_s_p50 * 1000,
            "latency_p50_ms": float(np.median([r["elapsed_s"] for r in good]) * 1000),
            "verification_p50_ms": float(
                np.median([r["stages"]["verification"] for r in good]) * 1000
            ),
            # per pass (the same queries each time; a query that failed in one pass only
            # leaves that pass one short)
            "ten_s_queries": [len(ten_s(packing, [p])) for p in rounds],
            "over_zstandard_by_round": [over_zstandard(packing, [p]) for p in rounds],
            "recall": recall["recall"],
            "positives": recall["n"],
            "false_positives": fps["flagged"],
            "negatives": fps["n"],
        }

    first = rows[PACKINGS[0]]
    same = sum(
        [(v["reference_id"], round(v["score"], 6)) for v in a.get("verifications", [])]
        == [(v["reference_id"], round(v["score"], 6)) for v in b.get("verifications", [])]
        for passes in rounds
        for other in PACKINGS[1:]
        for a, b in zip(passes[PACKINGS[0]], passes[other], strict=True)
    )
    result = {
        **run_info(),
        "works": args.works,
        "queries": len(chosen),
        "rounds": len(rounds),
        "threads": 1,
        "packings": [summary(p) for p in PACKINGS],
        "identical_verifications": {
            "same": same,
            "of": len(first) * (len(PACKINGS) - 1) * len(rounds),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "part_reads.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "part_reads.md").write_text(markdown(result))
    logger.info("\n%s", markdown(result))


def markdown(result: dict) -> str:
    """The results as a short Markdown table."""
    same = result["identical_verifications"]
    rounds = result.get("rounds", 1)
    lines = [
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}): "
        f"{result['works']:,} works (the suite's catalogue and mosaic works), "
        f"{result['queries']} queries of the suite's evaluation split, {rounds} passes over them "
        f"(every features cache emptied before each), one thread, the copies taking turns "
        f"query by query; latencies are medians over all passes, recall and false positives "
        f"those of the first pass; every verification the same in all three: {same['same']} "
        f"of {same['of']} query pairs.",
        "",
        "| packing | 10-s query p50 | all queries p50 | verification p50 | p50 over Zstandard's, "
        "pass by pass | recall | false positives |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["packings"]:
        ten_s = row["latency_10s_p50_ms"]
        ratios = ", ".join(
            "-" if r is None else f"{r:.2f}" for r in row.get("over_zstandard_by_round", [])
        )
        counts = row["ten_s_queries"]
        if isinstance(counts, list):  # per pass
            counts = "/".join(str(c) for c in sorted(set(counts)))
        lines.append(
            f"| `{row['codec']}` | {'-' if ten_s is None else f'{ten_s:.1f} ms'} "
            f"({counts} a pass) | {row['latency_p50_ms']:.1f} ms | "
            f"{row['verification_p50_ms']:.1f} ms | {ratios or '-'} | "
            f"{row['recall']:.1%} of {row['positives']} | "
            f"{row['false_positives']} of {row['negatives']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
