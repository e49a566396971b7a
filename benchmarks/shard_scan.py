"""Batch scans of a sharded catalogue on Dask: whole tracks and 10-s files, one worker vs two.

``python -m benchmarks.shard_scan`` shards the benchmark catalogue (the dev corpus's
in-catalogue tracks, :func:`benchmarks.run_benchmark.build_catalogue`) into two shards
(``tunetrace shards init``, then ``tunetrace index build``) and scans it with
:func:`tunetrace.scan_backends.run_dask` on a Dask ``LocalCluster`` of one single-threaded
worker process and of two, in turn for several rounds (:func:`benchmarks.shards.measure_scan`:
a warm-up scan before each timed one, the speed-up the median of each round's ratio). Two
sets of files, as catalogue teams scan them:

- whole tracks: corpus tracks scanned whole (every section of a track is searched), half of
  them in the catalogue;
- 10-s files: 10-s excerpts cut from the middle of corpus tracks (WAV, cached), the size of
  the sharded latency benchmark's queries.

Each file is one task that decodes and fingerprints on a worker and sends its query to the
shards' tasks on the workers they are assigned to. The catalogue is small (131 works, a
fraction of a second of search per file), so this measures how a scan's own work (decoding,
fingerprints, voting, verification) spreads over worker processes; the 100,000-work shards of
:mod:`benchmarks.shards` add search per shard. The same files are then scanned by a local pool
of one and of two worker processes (:func:`tunetrace.scan_backends.run_local`, no cluster):
what two processes get from the machine, against which the cluster's speed-up is read.
Results: ``benchmarks/results/shard_scan.json`` and ``shard_scan.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile
from tunetrace.index.resharding import init_sharded
from tunetrace.index.vector_index import IndexSpec

from benchmarks import corpus
from benchmarks.queries import in_catalogue, read_excerpt
from benchmarks.run_benchmark import CACHE, build_catalogue
from benchmarks.run_info import run_info
from benchmarks.shards import log_without_dask_chatter, measure_scan
from tunetrace.scan import ScanJob
from tunetrace.scan_backends import run_local
from tunetrace.sharded_catalogue import ShardedCatalogue

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
SHARDS = 2
EXCERPT_S = 10.0
#: Marks a finished sharded copy in the benchmark cache.
COMPLETE = "complete.json"


@dataclass(frozen=True)
class ScanFile:
    """One file to scan (what :func:`benchmarks.shards.measure_scan` reads of a query)."""

    path: str


def sharded_copy(catalogue: Path, shards: int) -> Path:
    """A sharded copy of ``catalogue`` in the benchmark cache (made once), each shard's index
    of the kind ``tunetrace index build`` chooses for its size (a flat index would spend
    seconds searching each whole track exactly)."""
    directory = CACHE / f"shard-scan-{catalogue.name}-{shards}-auto"
    if (directory / COMPLETE).is_file():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(catalogue, directory)
    init_sharded(directory, shards)
    with ShardedCatalogue(directory) as sharded:
        sharded.rebuild_index(IndexSpec(kind="auto"))
    (directory / COMPLETE).write_text(json.dumps({"source": catalogue.name, "shards": shards}))
    return directory


def whole_tracks(tracks: list[corpus.Track], count: int) -> list[ScanFile]:
    """``count`` tracks spread over the corpus, half in the catalogue and half not."""
    inside = [t for t in tracks if in_catalogue(t)]
    outside = [t for t in tracks if not in_catalogue(t)]
    chosen = _spread(inside, count - count // 2) + _spread(outside, count // 2)
    return [ScanFile(str(t.path)) for t in chosen]


def middle_excerpts(tracks: list[corpus.Track], count: int) -> list[ScanFile]:
    """10-s excerpts from the middle of ``count`` tracks spread over the corpus (cached)."""
    folder = CACHE / "shard-scan-excerpts"
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for number, track in enumerate(_spread(tracks, count)):
        path = folder / f"{number:04d}_{track.track_id.replace('/', '_')}.wav"
        if not path.is_file():
            start_s = max(0.0, (track.duration_s - EXCERPT_S) / 2)
            samples, rate = read_excerpt(track.path, start_s, EXCERPT_S)
            partial = path.with_suffix(".part.wav")
            soundfile.write(str(partial), samples, rate)
            partial.replace(path)
        found.append(ScanFile(str(path)))
    return found


def _spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items taken evenly from ``items`` (all of them if fewer)."""
    if count >= len(items):
        return list(items)
    return [items[round(i * len(items) / count)] for i in range(count)]


def measure_local(directory: Path, files: list[ScanFile], rounds: int) -> dict[str, Any]:
    """Files per second of :func:`run_local` (a pool of local worker processes, each opening
    every shard) over the same files with one worker and with two, alternating which goes
    first: what the machine gives two processes that need no cluster."""
    jobs = [ScanJob(f.path, f.path) for f in files]
    runs: dict[int, list[float]] = {1: [], 2: []}
    for round_number in range(rounds):
        for workers in (1, 2) if round_number % 2 == 0 else (2, 1):
            started = time.perf_counter()
            lines = dict(run_local(directory, jobs, workers=workers, top=5, min_score=None))
            runs[workers].append(len(lines) / (time.perf_counter() - started))
            logger.info("local scan round %d, %d worker(s): %.2f files/s", round_number,
                        workers, runs[workers][-1])  # fmt: skip
    ratios = [two / one for one, two in zip(runs[1], runs[2], strict=True)]
    return {
        "files_per_s": {str(k): [round(r, 2) for r in v] for k, v in runs.items()},
        "median_files_per_s": {str(k): round(statistics.median(v), 2) for k, v in runs.items()},
        "ratio_two_to_one": round(statistics.median(ratios), 2),
        "ratios": [round(r, 2) for r in ratios],
    }


def markdown(result: dict[str, Any]) -> str:
    """The results as a short Markdown table."""
    lines = [
        f"Sharded scans on Dask, {result['date']}, {result['machine']}, commit "
        f"{result['commit']}: the benchmark catalogue ({result['references']} works) in "
        f"{result['shards']} shards; a LocalCluster of single-threaded worker processes; "
        f"median of {result['rounds']} rounds.",
        "",
        "| files | 1 worker, files/s | 2 workers, files/s | speed-up (median) | rounds' speed-ups "
        "| cores busy with 2 workers | other processes' CPU share, 1 / 2 workers "
        "| reports agree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, scan in result["scans"].items():
        shares = scan["cpu_shares"]
        two_cores = [share["ours"] * 2 for share in shares["2"]]
        others = [
            f"{one['others']:.0%} / {two['others']:.0%}"
            for one, two in zip(shares["1"], shares["2"], strict=True)
        ]
        lines.append(
            f"| {name} ({scan['files']}) | {scan['median_files_per_s']['1']} "
            f"| {scan['median_files_per_s']['2']} | {scan['ratio_two_to_one']} "
            f"| {', '.join(map(str, scan['ratios']))} "
            f"| {', '.join(f'{c:.2f}' for c in two_cores)} | {', '.join(others)} "
            f"| {scan['reports_agree']} |"
        )
    if not result["local"]:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "The same files and sharded catalogue scanned by a local pool of worker processes "
        "(`run_local`, no cluster; each process opens every shard), what two processes get "
        "from this machine's two cores:",
        "",
        "| files | 1 worker, files/s | 2 workers, files/s | speed-up (median) "
        "| rounds' speed-ups |",
        "|---|---|---|---|---|",
    ]
    for name, local in result["local"].items():
        lines.append(
            f"| {name} | {local['median_files_per_s']['1']} | {local['median_files_per_s']['2']} "
            f"| {local['ratio_two_to_one']} | {', '.join(map(str, local['ratios']))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=40, help="Whole tracks scanned.")
    parser.add_argument("--excerpts", type=int, default=120, help="10-s files scanned.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--skip-local", action="store_true", help="no local-pool comparison")
    args = parser.parse_args()
    log_without_dask_chatter()
    tracks = corpus.installed_or_exit(corpus.tracks())
    catalogue, stats = build_catalogue(tracks)
    directory = sharded_copy(catalogue, SHARDS)
    sets = {
        "whole tracks": whole_tracks(tracks, args.tracks),
        "10-s files": middle_excerpts(tracks, args.excerpts),
    }
    scans = {
        name: measure_scan(directory, files, args.rounds, args.quiet_wait)  # type: ignore[arg-type]
        for name, files in sets.items()
    }
    local = {
        name: measure_local(directory, files, args.rounds)
        for name, files in sets.items()
        if not args.skip_local
    }
    result = {
        **run_info(),
        "references": stats.get("references"),
        "shards": SHARDS,
        "rounds": args.rounds,
        "audio_s": {
            name: round(sum(soundfile.info(f.path).duration for f in files), 1)
            for name, files in sets.items()
        },
        "scans": scans,
        "local": local,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shard_scan.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "shard_scan.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
