"""Where scan jobs run: this process, local worker processes, or a Dask distributed cluster.

Every backend yields ``(job, report_line)`` pairs as jobs finish. Each worker (process or Dask
worker) opens the catalogue once and keeps it: the index and the reference features are loaded
once per worker, not per task. With Dask the catalogue directory must be readable by the
workers at the same path (shared storage, or a copy on each machine).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from tunetrace.index.catalogue import Catalogue
from tunetrace.matcher import Matcher
from tunetrace.scan import ScanJob, run_job
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)

#: Jobs in flight per worker: enough to keep workers busy, few enough to stop quickly.
IN_FLIGHT_PER_WORKER = 2

_matchers: dict[str, Matcher] = {}
_matchers_lock = threading.Lock()


def _matcher_for(catalogue_dir: str) -> Matcher:
    """This process's matcher on ``catalogue_dir`` (opened on first use, then reused)."""
    with _matchers_lock:
        matcher = _matchers.get(catalogue_dir)
        if matcher is None:
            matcher = _matchers[catalogue_dir] = Matcher(Catalogue(catalogue_dir, read_only=True))
        return matcher


def scan_task(
    catalogue_dir: str,
    job: ScanJob,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
    one_thread: bool = True,
) -> dict[str, Any]:
    """Run one job in whatever process this is (local worker or Dask worker).

    Worker processes (``one_thread``) are kept to one thread: parallelism comes from running
    one of them per core.
    """
    if one_thread:
        use_one_thread()
    return run_job(
        _matcher_for(catalogue_dir), job, top=top, min_score=min_score, excerpts=excerpts
    )


def _init_local_worker(catalogue_dir: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    use_one_thread()
    _matcher_for(catalogue_dir)


def run_in_process(
    catalogue_dir: Path,
    jobs: list[ScanJob],
    *,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
) -> Iterator[tuple[ScanJob, dict[str, Any]]]:
    """Run jobs one after another in this process."""
    for job in jobs:
        yield job, scan_task(str(catalogue_dir), job, top, min_score, excerpts, False)


def run_local(
    catalogue_dir: Path,
    jobs: list[ScanJob],
    *,
    workers: int,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
) -> Iterator[tuple[ScanJob, dict[str, Any]]]:
    """Run jobs in ``workers`` local processes (one process: in this one)."""
    if workers <= 1:
        yield from run_in_process(
            catalogue_dir, jobs, top=top, min_score=min_score, excerpts=excerpts
        )
        return
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_local_worker,
        initargs=(str(catalogue_dir),),
    ) as pool:
        pending = iter(jobs)
        running: dict[Future[dict[str, Any]], ScanJob] = {}
        try:
            while True:
                for job in pending:
                    future = pool.submit(
                        scan_task, str(catalogue_dir), job, top, min_score, excerpts
                    )
                    running[future] = job
                    if len(running) >= workers * IN_FLIGHT_PER_WORKER:
                        break
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()
        finally:
            for future in running:
                future.cancel()


def run_dask(
    catalogue_dir: Path,
    jobs: list[ScanJob],
    *,
    scheduler: str,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
) -> Iterator[tuple[ScanJob, dict[str, Any]]]:
    """Run jobs on the Dask distributed cluster at ``scheduler`` (e.g. ``tcp://host:8786``)."""
    from distributed import Client, as_completed

    directory = str(Path(catalogue_dir).resolve())
    with Client(scheduler, set_as_default=False) as client:
        threads = sum(client.nthreads().values()) or 1
        window = threads * IN_FLIGHT_PER_WORKER
        logger.info("Dask cluster at %s: %d worker threads", scheduler, threads)
        running: dict[str, ScanJob] = {}
        completed = as_completed(loop=client.loop)

        def submit(job: ScanJob) -> None:
            future = client.submit(scan_task, directory, job, top, min_score, excerpts, pure=False)
            running[future.key] = job
            completed.add(future)

        pending = iter(jobs)
        for job in itertools.islice(pending, window):
            submit(job)
        for future in completed:  # a new job goes in as each one finishes
            job = running.pop(future.key)
            result = future.result()
            future.release()
            next_job = next(pending, None)
            if next_job is not None:
                submit(next_job)
            yield job, result
