"""Batch-scan benchmark: the dev corpus scanned against the benchmark catalogue.

``python -m benchmarks.scan_bench`` scans every corpus track (full-length files, matched by
three 20-s excerpts each) against the catalogue of the in-catalogue tracks: with one local
worker and with all local workers, alternately, for several rounds (this machine's speed drifts
by 10% and more between minutes, so the speed-up is the median of each round's ratio of two
runs made back to back), then once on a Dask ``LocalCluster`` on loopback with as many
single-threaded worker processes. It reports throughput of each, the speed-ups, whether the
reports agree, and how many in-catalogue tracks found themselves. Results:
``benchmarks/results/scan.json`` and ``scan.md``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import corpus
from benchmarks.queries import in_catalogue
from benchmarks.run_benchmark import build_catalogue
from benchmarks.run_info import run_info
from tunetrace.scan import ScanJob
from tunetrace.scan_backends import run_dask, run_local
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
EXCERPTS = 3


def _timed(label: str, results) -> tuple[dict[str, dict[str, Any]], float]:
    started = time.perf_counter()
    lines = {job.query: line for job, line in results}
    elapsed = time.perf_counter() - started
    logger.info("%s: %d files in %.1f s", label, len(lines), elapsed)
    return lines, elapsed


def _comparable(lines: dict[str, dict[str, Any]]) -> dict[str, object]:
    return {
        query: line.get("error", {}).get("code")
        or [
            (m["reference_id"], m["tempo_ratio"], m["pitch_shift_semitones"], m["score"])
            for m in line["matches"]
        ]
        for query, line in lines.items()
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="Scan only the first N tracks.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--rounds", type=int, default=3, help="Rounds of one-worker and all-worker runs."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tracks = corpus.installed_or_exit(corpus.tracks())
    catalogue, ingest_stats = build_catalogue(tracks)
    chosen = tracks[: args.limit] if args.limit else tracks
    by_path = {str(t.path): t for t in chosen}
    jobs = [ScanJob(str(t.path), str(t.path)) for t in chosen]
    audio_h = sum(t.duration_s for t in chosen) / 3600
    common = {"top": 5, "min_score": None, "excerpts": EXCERPTS}

    use_one_thread()  # the baseline is one worker as the pool runs it: one process, one thread
    one_runs: list[float] = []
    many_runs: list[float] = []
    one: dict[str, dict[str, Any]] = {}
    many: dict[str, dict[str, Any]] = {}
    for round_number in range(args.rounds):
        order = (1, args.workers) if round_number % 2 == 0 else (args.workers, 1)
        for workers in order:
            lines, seconds = _timed(
                f"round {round_number + 1}, {workers} worker(s)",
                run_local(catalogue, jobs, workers=workers, **common),
            )
            if workers == 1:
                one_runs.append(seconds)
                one = one or lines
            else:
                many_runs.append(seconds)
                many = many or lines
    ratios = [a / b for a, b in zip(one_runs, many_runs, strict=True)]
    one_s, many_s = statistics.median(one_runs), statistics.median(many_runs)
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        dask, dask_s = _timed(
            "dask",
            run_dask(catalogue, jobs, scheduler=cluster.scheduler_address, **common),
        )
    inside = [q for q in one if in_catalogue(by_path[q])]
    found_self = sum(
        bool(one[q].get("matches")) and one[q]["matches"][0]["reference_id"] == by_path[q].track_id
        for q in inside
    )
    outside_flagged = sorted(
        by_path[q].track_id for q in one if not in_catalogue(by_path[q]) and one[q].get("matches")
    )
    result = {
        **run_info(),
        "catalogue_references": ingest_stats.get("references"),
        "files": len(jobs),
        "audio_hours": round(audio_h, 2),
        "excerpts_per_file": EXCERPTS,
        "rounds": args.rounds,
        "one_worker_s_runs": [round(t, 1) for t in one_runs],
        "local_workers_s_runs": [round(t, 1) for t in many_runs],
        "speedup_local_rounds": [round(r, 2) for r in ratios],
        "one_worker_s": round(one_s, 1),
        "local_workers": args.workers,
        "local_workers_s": round(many_s, 1),
        "dask_workers": args.workers,
        "dask_s": round(dask_s, 1),
        "speedup_local": round(statistics.median(ratios), 2),
        "speedup_dask": round(one_s / dask_s, 2),
        "files_per_s": {
            "one": round(len(jobs) / one_s, 3),
            "local": round(len(jobs) / many_s, 3),
            "dask": round(len(jobs) / dask_s, 3),
        },
        "x_realtime_local": round(audio_h * 3600 / many_s, 1),
        "local_equals_one": _comparable(many) == _comparable(one),
        "dask_equals_local": _comparable(dask) == _comparable(many),
        "in_catalogue_found_themselves": f"{found_self}/{len(inside)}",
        "outside_flagged": outside_flagged,
        "errors": sum("error" in line for line in one.values()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scan.json").write_text(json.dumps(result, indent=1))
    table = "\n".join(
        [
            f"Run {result['date']} on {result['machine']} (commit {result['commit']}): {len(jobs)} "
            f"full-length corpus tracks ({audio_h:.1f} h), {EXCERPTS} excerpts of 20 s each, "
            f"against a catalogue of {result['catalogue_references']} tracks.",
            "",
            "| run | wall time (s), median | files/s | speed-up over 1 worker "
            "| same report as 1 worker |",
            "|---|---|---|---|---|",
            f"| 1 worker (one process, one thread) | {one_s:.0f} | {len(jobs) / one_s:.2f} "
            "| 1.00 | - |",
            f"| {args.workers} local workers | {many_s:.0f} | {len(jobs) / many_s:.2f} | "
            f"{result['speedup_local']:.2f} (median of rounds: "
            f"{', '.join(f'{r:.2f}' for r in ratios)}) | {result['local_equals_one']} |",
            f"| Dask LocalCluster, {args.workers} workers (one run) | {dask_s:.0f} | "
            f"{len(jobs) / dask_s:.2f} | {one_s / dask_s:.2f} | "
            f"{result['dask_equals_local']} (vs local workers) |",
            "",
            f"{args.rounds} rounds of one run with 1 worker and one with {args.workers}, back to "
            f"back (order alternating); 1 worker: {', '.join(f'{t:.0f}' for t in one_runs)} s, "
            f"{args.workers} workers: {', '.join(f'{t:.0f}' for t in many_runs)} s.",
            "",
            f"In-catalogue tracks that found themselves: {result['in_catalogue_found_themselves']}"
            f"; tracks outside the catalogue flagged: {len(outside_flagged)}"
            f"{' (' + ', '.join(outside_flagged) + ')' if outside_flagged else ''}; "
            f"errors: {result['errors']}.",
        ]
    )
    (RESULTS / "scan.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
