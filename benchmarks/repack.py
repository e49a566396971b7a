"""Rewriting a large catalogue's spectra with the current codec, in place: bytes per hour of
audio by part before and after, how long it took, and what reading a reference costs.

python -m benchmarks.repack --catalogue DIR [--sample 300]

Made for the latency benchmark's grown catalogue (``benchmarks.latency``: the dev-corpus
references plus mosaic works up to 100,000), whose rows an earlier tunetrace packed with
Zstandard: ``Catalogue.migrate`` repacks rows of the same codes without loss (vectors and
index untouched) and quantises the others again. The catalogue is changed in place; the
results go to ``benchmarks/results/repack.json`` and ``repack.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import time
from pathlib import Path

import numpy as np
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.spectrum_codec import COMPACT_CODEC

from benchmarks.run_benchmark import RESULTS
from benchmarks.run_info import run_info

logger = logging.getLogger(__name__)


def codec_counts(directory: Path) -> dict[str, int]:
    """References per stored codec (read from the database file)."""
    db = sqlite3.connect(f"file:{directory / 'catalogue.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT spectrum_codec, count(*) FROM refs GROUP BY 1").fetchall()
    finally:
        db.close()
    return {str(name): int(count) for name, count in rows}


def read_ms(catalogue: Catalogue, keys: list[int]) -> float:
    """Median milliseconds to derive a reference's features from its row (cache empty)."""
    spent = []
    for key in keys:
        catalogue.clear_features_cache()
        started = time.perf_counter()
        catalogue.features(key)
        spent.append(1000 * (time.perf_counter() - started))
    return float(np.median(spent))


def snapshot(catalogue: Catalogue, keys: list[int]) -> dict[str, object]:
    """Sizes, codecs and reading cost of the catalogue as it is now."""
    info = catalogue.info()
    return {
        "codecs": codec_counts(catalogue.directory),
        "mb_per_audio_hour": sum(info["bytes_by_part"].values()) / 1e6 / info["audio_hours"],
        "mb_per_audio_hour_by_part": info["mb_per_audio_hour_by_part"],
        "read_ms_median": read_ms(catalogue, keys),
    }


def run(directory: Path, sample: int, seed: int) -> dict[str, object]:
    """Measure, migrate, measure again; write and return the results."""
    with Catalogue(directory) as catalogue:
        info = catalogue.info()
        keys = [r.key for r in catalogue.list(limit=10_000_000)]
        rng = np.random.default_rng(seed)
        chosen = sorted(int(key) for key in rng.choice(keys, min(sample, len(keys)), replace=False))
        before = snapshot(catalogue, chosen)
        logger.info("before: %s", before)
        started = time.perf_counter()
        rewritten = catalogue.migrate(codec=COMPACT_CODEC)
        took = time.perf_counter() - started
        after = snapshot(catalogue, chosen)
        logger.info("after: %s (%d rewritten in %.0f s)", after, rewritten, took)
    result = {
        **run_info(),
        "catalogue": str(directory),
        "references": info["references"],
        "audio_hours": info["audio_hours"],
        "codec": COMPACT_CODEC.name,
        "rewritten": rewritten,
        "migrate_s": took,
        "sampled_references": len(chosen),
        "before": before,
        "after": after,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "repack.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "repack.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    """The results as a short Markdown table."""
    before, after = result["before"], result["after"]
    parts = list(before["mb_per_audio_hour_by_part"])
    lines = [
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}): "
        f"{result['references']:,} references, {result['audio_hours']:,.0f} h of audio; "
        f"{result['rewritten']:,} rewritten with `{result['codec']}` by `index migrate` in "
        f"{result['migrate_s']:.0f} s (VACUUM included); reading cost: median of "
        f"{result['sampled_references']} sampled references, feature cache empty.",
        "",
        "| | codecs | " + " | ".join(f"{p} MB/h" for p in parts)
        + " | on disk MB/h | features from a row |",
        "|---|---|" + "---|" * (len(parts) + 2),
    ]
    for label, entry in (("before", before), ("after", after)):
        codecs = ", ".join(f"`{name}` {count:,}" for name, count in entry["codecs"].items())
        by_part = entry["mb_per_audio_hour_by_part"]
        lines.append(
            f"| {label} | {codecs} | "
            + " | ".join(f"{by_part[p]:.2f}" for p in parts)
            + f" | {entry['mb_per_audio_hour']:.2f} | {entry['read_ms_median']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalogue", type=Path, required=True)
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(markdown(run(args.catalogue, args.sample, args.seed)))


if __name__ == "__main__":
    main()
