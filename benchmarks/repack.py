"""Rewriting a large catalogue's spectra with the current codec, in place: bytes per hour of
audio by part before and after, and how long it took.

python -m benchmarks.repack --catalogue DIR

Made for the latency benchmark's grown catalogue (``benchmarks.latency``: the dev-corpus
references plus mosaic works up to 100,000), whose rows an earlier tunetrace packed with
Zstandard: ``Catalogue.migrate`` repacks rows of the same codes without loss (vectors and
index untouched) and quantises the others again. The catalogue is changed in place; the
results go to ``benchmarks/results/repack.json`` and ``repack.md``. What each packing costs
to read is measured by ``benchmarks.storage`` (the same references in every format, one
thread, in one process).
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import time
from pathlib import Path

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


def snapshot(catalogue: Catalogue) -> dict[str, object]:
    """Sizes and codecs of the catalogue as it is now."""
    info = catalogue.info()
    return {
        "codecs": codec_counts(catalogue.directory),
        "mb_per_audio_hour": (
            sum(info["bytes_by_part"].values()) / 1e6 / info["audio_hours"]
            if info["audio_hours"]
            else None
        ),
        "mb_per_audio_hour_by_part": info["mb_per_audio_hour_by_part"],
    }


def run(directory: Path) -> dict[str, object]:
    """Measure, migrate, measure again; write and return the results."""
    with Catalogue(directory) as catalogue:
        info = catalogue.info()
        before = snapshot(catalogue)
        logger.info("before: %s", before)
        started = time.perf_counter()
        rewritten = catalogue.migrate(codec=COMPACT_CODEC)
        took = time.perf_counter() - started
        after = snapshot(catalogue)
        logger.info("after: %s (%d rewritten in %.0f s)", after, rewritten, took)
    result = {
        **run_info(),
        "catalogue": str(directory),
        "references": info["references"],
        "audio_hours": info["audio_hours"],
        "codec": COMPACT_CODEC.name,
        "rewritten": rewritten,
        "migrate_s": took,
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
        f"{result['migrate_s']:.0f} s (VACUUM included).",
        "",
        "| | codecs | " + " | ".join(f"{p} MB/h" for p in parts)
        + " | on disk MB/h |",
        "|---|---|" + "---|" * (len(parts) + 1),
    ]
    for label, entry in (("before", before), ("after", after)):
        codecs = ", ".join(f"`{name}` {count:,}" for name, count in entry["codecs"].items())
        by_part = entry["mb_per_audio_hour_by_part"]
        lines.append(
            f"| {label} | {codecs} | "
            + " | ".join(f"{by_part[p] or 0:.2f}" for p in parts)
            + f" | {entry['mb_per_audio_hour'] or 0:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalogue", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(markdown(run(args.catalogue)))


if __name__ == "__main__":
    main()
