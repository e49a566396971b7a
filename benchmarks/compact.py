"""Which compact spectrum codec: bytes per hour against accuracy, on the calibration split.

python -m benchmarks.compact [--codecs u8 b6e1.0z b5e0.7z ...]

1. takes the core benchmark's catalogue of real music (``benchmarks.run_benchmark`` builds
   it) stored in the earlier 8-bit format, copies it once per codec and rewrites each copy
   with :meth:`Catalogue.migrate` (so every copy starts from the same spectra);
2. matches the calibration split's queries (the same for every codec) with the shipped
   score model and threshold against each copy;
3. writes ``benchmarks/results/compact.json`` and ``compact.md``: bytes per hour of audio by
   part, recall per family, false positives, tempo and pitch accuracy, the scores' margins
   (lowest score of a found copy, highest of a negative query) and query latency.

Codecs are chosen here, on the calibration split; the evaluation split and the suite then
check the chosen one (``run_benchmark``, ``suite``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.spectrum_codec import LEGACY_CODEC, codec_named
from tunetrace.index.vector_index import IndexSpec

from benchmarks import corpus
from benchmarks.queries import make_queries
from benchmarks.run_benchmark import (
    CACHE,
    RESULTS,
    SIZES,
    _label,
    build_catalogue,
    evaluate,
    list_tracks,
    run_queries,
)
from benchmarks.run_info import disk_use, run_info
from tunetrace.matcher import Matcher

logger = logging.getLogger(__name__)

DEFAULT_CODECS = ("u8", "b6e1.0z", "b6e0.7z", "b5e0.7z", "b5e0.5z", "b4e0.7z", "b4e0.5z")


def codec_copy(source: Path, name: str) -> Path:
    """A copy of the earlier-format ``source`` catalogue rewritten with codec ``name``."""
    target = CACHE / f"compact-{source.name}-{name}"
    if (target / "catalogue.sqlite").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    with Catalogue(target) as catalogue:
        if name != LEGACY_CODEC.name:
            started = time.perf_counter()
            catalogue.migrate(codec=codec_named(name))
            logger.info("%s: migrated in %.1f s", name, time.perf_counter() - started)
        # every copy's index in this tunetrace's file format, of the kind `auto` picks
        catalogue.rebuild_index(IndexSpec(kind="auto"))
        catalogue.vacuum()
    return target


def margins(rows: list[dict], matcher: Matcher) -> dict[str, float | None]:
    """Lowest score of a copy's own reference found at its place, highest score of any
    verification of a negative query."""
    model = matcher.score_model
    own, negative = [], []
    for row in rows:
        if "error" in row:
            continue
        for verification in row["verifications"]:
            score = model.score_measurements(verification["measurements"])
            if not row["query"]["positive"]:
                negative.append(score)
            elif _label(row, verification) == 1.0:
                own.append(score)
    return {
        "own_score_min": float(min(own)) if own else None,
        "own_score_p05": float(np.percentile(own, 5)) if own else None,
        "negative_score_max": float(max(negative)) if negative else None,
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--codecs", nargs="+", default=list(DEFAULT_CODECS))
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tracks = corpus.installed_or_exit(list_tracks())
    source, _ = build_catalogue(tracks, codec=LEGACY_CODEC)
    size = SIZES["quick"]
    queries = make_queries(
        tracks,
        split="calibration",
        per_family=size["cal_per_family"],
        negatives=size["cal_negatives"],
        cache=CACHE / "queries",
        seed=args.seed,
    )
    results = []
    for name in args.codecs:
        directory = codec_copy(source, name)
        catalogue = Catalogue(directory, read_only=True)
        info = catalogue.info()
        matcher = Matcher(catalogue)
        logger.info("%s: matching %d calibration queries", name, len(queries))
        rows = run_queries(matcher, queries)
        evaluation = evaluate(rows, matcher.score_model)
        evaluation.pop("failures")
        results.append(
            {
                "codec": name,
                "audio_hours": info["audio_hours"],
                "index_kind": info["index_kind"],
                **disk_use(info),
                "evaluation": evaluation,
                **margins(rows, matcher),
            }
        )
        catalogue.close()
    result = {**run_info(), "split": "calibration", "queries": len(queries), "codecs": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compact.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "compact.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The Markdown table of :func:`main`'s result."""
    families = list(result["codecs"][0]["evaluation"]["recall_top1"])
    lines = [
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}), "
        f"calibration split, {result['queries']} queries.",
        "",
        "| codec | spectra MB/h | on disk MB/h | recall (all families) | lowest family | "
        "false positives | tempo / pitch within limits | own score, 5th percentile "
        "| highest negative | latency p50 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["codecs"]:
        evaluation = entry["evaluation"]
        recalls = evaluation["recall_top1"]
        hits = sum(r[0] * r[1] for r in recalls.values() if r[0] is not None)
        total = sum(r[1] for r in recalls.values())
        lowest = min(families, key=lambda f: recalls[f][0] if recalls[f][0] is not None else 2)
        lines.append(
            f"| {entry['codec']} | {entry['mb_per_audio_hour_by_part']['spectra']:.2f} "
            f"| {entry['mb_per_audio_hour']:.2f} | {hits / total:.1%} of {total} "
            f"| {lowest} {recalls[lowest][0]:.1%} "
            f"| {evaluation['false_positive_queries']} of {evaluation['negatives']} "
            f"| {evaluation['tempo_within_2pct']:.1%} / "
            f"{evaluation['pitch_within_0.3_semitone']:.1%} "
            f"| {_fmt(entry['own_score_p05'])} | {_fmt(entry['negative_score_max'])} "
            f"| {evaluation['latency_median_s'] * 1000:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
