"""Load test of the HTTP API: concurrent clients on loopback upload 10-s queries.

``python -m benchmarks.api_load --clients 4 --duration-s 60`` starts ``tunetrace serve`` on the
dev-corpus catalogue (built by ``benchmarks.run_benchmark`` and cached), runs the clients for a
bounded time while a probe calls ``/v1/health`` every 0.25 s, and writes
``benchmarks/results/api_load.json`` and ``api_load.md``: throughput, latency percentiles,
errors (every response that is not 200), health latency under load, and how many altered
queries came back with the right reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks import corpus
from benchmarks.queries import Query, make_queries
from benchmarks.run_benchmark import CACHE, build_catalogue
from benchmarks.run_info import run_info
from tests.live_server import running_server

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
KEY = "load-test-key"


def _client_loop(
    base_url: str, queries: list[Query], start: int, deadline: float, out: list[dict]
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=300) as client:
        for query in itertools.islice(itertools.cycle(queries), start, None):
            if time.monotonic() >= deadline:
                return
            data = Path(query.path).read_bytes()
            started = time.perf_counter()
            try:
                response = client.post(
                    f"{base_url}/v1/match",
                    headers=headers,
                    files={"file": (Path(query.path).name, data)},
                )
                status, body = response.status_code, response.json()
            except httpx.HTTPError as exc:
                status, body = 0, {"error": {"code": type(exc).__name__, "message": str(exc)}}
            elapsed = time.perf_counter() - started
            top = (body.get("matches") or [{}])[0].get("reference_id") if status == 200 else None
            out.append(
                {
                    "status": status,
                    "latency_s": elapsed,
                    "positive": query.positive,
                    "correct": bool(query.positive and top == query.source_id),
                    "flagged": top is not None,
                    "finished": time.monotonic(),
                }
            )


def _health_probe(base_url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get(f"{base_url}/v1/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append(time.perf_counter() - started if ok else float("inf"))
            stop.wait(0.25)


def run_load(
    catalogue: Path,
    queries: list[Query],
    *,
    clients: int,
    duration_s: float,
    workers: int,
    max_queue: int,
    log_path: Path,
) -> dict[str, object]:
    """Run the load test; returns the measured figures."""
    with running_server(
        catalogue,
        api_keys=f"{KEY}:read",
        workers=workers,
        max_queue=max_queue,
        log_path=log_path,
    ) as base_url:
        # one warm-up request per worker loads the index and caches in every process
        for query in queries[:workers]:
            httpx.post(
                f"{base_url}/v1/match",
                headers={"Authorization": f"Bearer {KEY}"},
                files={"file": (Path(query.path).name, Path(query.path).read_bytes())},
                timeout=300,
            )
        results: list[dict] = []
        health: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=_health_probe, args=(base_url, stop, health))
        started = time.monotonic()
        deadline = started + duration_s
        threads = [
            threading.Thread(
                target=_client_loop,
                args=(base_url, queries, i * len(queries) // clients, deadline, results),
            )
            for i in range(clients)
        ]
        probe.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        stop.set()
        probe.join()
    latencies = np.array([r["latency_s"] for r in results if r["status"] == 200])
    positives = [r for r in results if r["positive"] and r["status"] == 200]
    negatives = [r for r in results if not r["positive"] and r["status"] == 200]
    errors: dict[str, int] = {}
    for row in results:
        if row["status"] != 200:
            errors[str(row["status"])] = errors.get(str(row["status"]), 0) + 1
    health_ok = np.array([h for h in health if np.isfinite(h)])
    return {
        "clients": clients,
        "workers": workers,
        "max_queue": max_queue,
        "duration_s": round(wall, 1),
        "requests": len(results),
        "throughput_rps": round(len(latencies) / wall, 3),
        "latency_ms": {
            f"p{q}": round(float(np.percentile(latencies, q)) * 1000, 1) for q in (50, 95, 99)
        }
        if len(latencies)
        else {},
        "errors": errors,
        "error_count": sum(errors.values()),
        "health_checks": len(health),
        "health_failures": len(health) - len(health_ok),
        "health_ms": {
            "p50": round(float(np.percentile(health_ok, 50)) * 1000, 2),
            "p99": round(float(np.percentile(health_ok, 99)) * 1000, 2),
            "max": round(float(health_ok.max()) * 1000, 2),
        }
        if len(health_ok)
        else {},
        "positive_correct": f"{sum(r['correct'] for r in positives)}/{len(positives)}",
        "negatives_flagged": f"{sum(r['flagged'] for r in negatives)}/{len(negatives)}",
    }


def markdown(result: dict) -> str:
    """The short table for the benchmarks page of the docs."""
    rows = []
    for run in result["runs"]:
        latency, health = run["latency_ms"], run["health_ms"]
        rows.append(
            f"| {run['clients']} | {run['requests']} | {run['throughput_rps']:.2f} | "
            f"{latency.get('p50', '-')} / {latency.get('p95', '-')} / {latency.get('p99', '-')} | "
            f"{run['error_count']} | {health.get('p50', '-')} / {health.get('max', '-')} | "
            f"{run['positive_correct']} | {run['negatives_flagged']} |"
        )
    return "\n".join(
        [
            f"Run {result['date']} on {result['machine']} (commit {result['commit']}): "
            f"`tunetrace serve` with {result['runs'][0]['workers']} worker processes on a "
            f"catalogue of {result['references']} dev-corpus tracks; 10-s queries "
            f"({result['queries']} distinct, altered and unaltered, plus tracks outside the "
            f"catalogue), {result['runs'][0]['duration_s']:.0f} s per run, loopback HTTP.",
            "",
            "| clients | requests | req/s | latency p50 / p95 / p99 (ms) | errors | "
            "health p50 / max (ms) | right reference | negatives flagged |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    tracks = corpus.installed_or_exit(corpus.tracks())
    catalogue, ingest_stats = build_catalogue(tracks)
    queries = make_queries(
        tracks,
        split="evaluation",
        per_family=3,
        negatives=12,
        cache=CACHE / "load-queries",
        seed=args.seed,
        query_s=(10.0, 10.0),
    )
    runs = []
    for clients in args.clients:
        logger.info("load test: %d clients for %.0f s", clients, args.duration_s)
        runs.append(
            run_load(
                catalogue,
                queries,
                clients=clients,
                duration_s=args.duration_s,
                workers=args.workers,
                max_queue=args.max_queue,
                log_path=CACHE / "api_load_server.log",
            )
        )
    result = {
        **run_info(),
        "references": ingest_stats.get("references"),
        "queries": len(queries),
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api_load.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "api_load.md").write_text(markdown(result) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
