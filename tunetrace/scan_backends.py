"""Where scan jobs run: this process, local worker processes, or a Dask distributed cluster.

Every backend yields ``(job, report_line)`` pairs as jobs finish. Each worker (process or Dask
worker) opens the catalogue once and keeps it: the index and the reference features are loaded
once per worker, not per task. With Dask the catalogue directory must be readable by the
workers at the same path (shared storage, or a copy on each machine).

A worker process that dies (the OOM killer's SIGKILL, a crash in a decoder) does not end a
scan: the job it was running is run once more, and if that kills a worker too the file gets
a ``worker_died`` error line; every other job gets its line as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tunetrace.errors import ScanWorkerError
from tunetrace.index.shard_layout import is_sharded
from tunetrace.matcher import Matcher
from tunetrace.opening import open_catalogue
from tunetrace.parent_watch import exit_with_parent
from tunetrace.report import error_to_dict
from tunetrace.scan import ScanJob, run_job
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)

#: Dask tasks in flight per worker thread. One: a worker then holds only the task it is
#: running, so when it dies Dask blames that task alone (every task a dead worker holds counts
#: one failure towards ``KilledWorker``), never an innocent one waiting behind it.
DASK_TASKS_PER_THREAD = 1
#: Times a local job may have its worker die under it before it is reported as failed.
LOCAL_ATTEMPTS = 2
#: Dask retries of a task that raised. Worker deaths are counted by the scheduler instead,
#: up to its ``distributed.scheduler.allowed-failures`` (3 by default), then ``KilledWorker``.
DASK_RETRIES = 1
#: Local workers that may die before they are ready, in a row, before a scan gives up.
MAX_START_FAILURES = 3
#: Error code of a file whose worker process died running it.
WORKER_DIED = "worker_died"

#: Test hooks (see :func:`_fault_hook`): a worker running a job whose query ends with this
#: variable's value kills itself; with the second naming a file, only once.
KILL_ON_ENV = "TUNETRACE_TEST_KILL_WORKER_ON"
KILL_ONCE_ENV = "TUNETRACE_TEST_KILL_WORKER_ONCE"
_READY = "ready"
_NOTHING = object()
_DIED = object()

_matchers: dict[str, Matcher] = {}
_matchers_lock = threading.Lock()


def _matcher_for(catalogue_dir: str) -> Matcher:
    """This process's matcher on ``catalogue_dir`` (opened on first use, then reused)."""
    with _matchers_lock:
        matcher = _matchers.get(catalogue_dir)
        if matcher is None:
            store = open_catalogue(catalogue_dir, read_only=True)
            matcher = _matchers[catalogue_dir] = Matcher(store)
        return matcher


def opened_catalogues() -> list[str]:
    """The catalogue directories this process has opened a matcher on (jobs run here reuse
    them).

    Returns
    -------
    directories : list of str
        Sorted.
    """
    with _matchers_lock:
        return sorted(_matchers)


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
    _start_job(job, one_thread)
    return run_job(
        _matcher_for(catalogue_dir), job, top=top, min_score=min_score, excerpts=excerpts
    )


def _start_job(job: ScanJob, one_thread: bool) -> None:
    """What every scan task does first: one thread if asked, and the test fault hook."""
    if one_thread:
        use_one_thread()
    _fault_hook(job)


def sharded_scan_task(
    catalogue_dir: str,
    job: ScanJob,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
    one_thread: bool = True,
) -> dict[str, Any]:
    """A Dask task: run one job against a sharded catalogue whose shards are searched on the
    same cluster.

    The file is decoded and fingerprinted here, on whichever worker runs the job; the query
    then goes to every shard on the worker each shard is assigned to, through this worker's
    own client (the task leaves the worker's thread pool meanwhile, so the shard work it
    waits for can run in that pool on this worker too).
    """
    from distributed import worker_client

    _start_job(job, one_thread)
    with worker_client(separate_thread=True) as client:
        return run_job(
            _sharded_matcher_for(catalogue_dir, client), job, top=top, min_score=min_score,
            excerpts=excerpts,
        )  # fmt: skip


def _sharded_matcher_for(catalogue_dir: str, client: Any) -> Matcher:
    """This worker's matcher on a sharded catalogue through the cluster (made once)."""
    key = f"dask:{catalogue_dir}"
    with _matchers_lock:
        matcher = _matchers.get(key)
        if matcher is None:
            store = open_catalogue(catalogue_dir, read_only=True, scheduler=client)
            matcher = _matchers[key] = Matcher(store)
        return matcher


def _init_local_worker(catalogue_dir: str) -> None:
    exit_with_parent()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    use_one_thread()
    _matcher_for(catalogue_dir)


def _fault_hook(job: ScanJob) -> None:
    """Kill this worker process as the kernel's OOM killer would, when a test asks for it.

    Active only in a worker process (never in a scan's own process) whose environment sets
    :data:`KILL_ON_ENV` to a suffix of the job's query. With :data:`KILL_ONCE_ENV` naming a
    file, only the first job to create that file dies.
    """
    suffix = os.environ.get(KILL_ON_ENV)
    if not suffix or not job.query.endswith(suffix) or multiprocessing.parent_process() is None:
        return
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        try:
            Path(marker).touch(exist_ok=False)
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def _local_worker_main(
    connection: Connection, catalogue_dir: str, top: int, min_score: float | None, excerpts: int
) -> None:
    """A local worker process: open the catalogue, say so, then run the jobs sent over
    ``connection`` one at a time until it sends ``None`` or the scan goes away."""
    try:
        _init_local_worker(catalogue_dir)
        connection.send(_READY)
        while (job := connection.recv()) is not None:
            connection.send(scan_task(catalogue_dir, job, top, min_score, excerpts))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the scan ended or was killed: there is no one left to report to


def run_in_process(
    catalogue_dir: Path,
    jobs: list[ScanJob],
    *,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
) -> Iterator[tuple[ScanJob, dict[str, Any]]]:
    """Run jobs one after another in this process (a job that kills it ends the scan)."""
    for job in jobs:
        yield job, scan_task(str(catalogue_dir), job, top, min_score, excerpts, False)


@dataclass
class _LocalWorker:
    """A local worker process, the parent's end of its pipe and the job it is running."""

    process: BaseProcess
    connection: Connection
    ready: bool = False
    job: ScanJob | None = None

    def receive(self) -> object:
        """What the worker sent (:data:`_NOTHING` if nothing yet), or :data:`_DIED`."""
        try:
            if self.connection.poll():
                return self.connection.recv()
            if self.process.is_alive():
                return _NOTHING
            # dead: whatever it sent before dying is in the pipe by now
            return self.connection.recv() if self.connection.poll() else _DIED
        except (EOFError, OSError):
            return _DIED

    def how_it_ended(self) -> str:
        """``killed by SIGKILL`` or ``exited with code N``."""
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def stop(self) -> None:
        """Ask an idle worker to finish; kill a busy one (the scan is being abandoned)."""
        if self.job is None:
            with contextlib.suppress(OSError):
                self.connection.send(None)
        elif self.process.is_alive():
            self.process.kill()

    def close(self) -> None:
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def _start_local_worker(context: BaseContext, args: tuple[Any, ...]) -> _LocalWorker:
    """Start a worker process that ignores Ctrl-C: the scan stops its workers itself."""
    ours, theirs = context.Pipe()
    process = context.Process(
        target=_local_worker_main, args=(theirs, *args), name="tunetrace-scan", daemon=True
    )
    # A process that starts with SIGINT ignored keeps it ignored (Python installs its
    # KeyboardInterrupt handler only over the default), even while it is still importing.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        process.start()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    theirs.close()
    return _LocalWorker(process, ours)


def _worker_died_line(job: ScanJob, how: str, times: int) -> dict[str, Any]:
    runs = "the only time it ran" if times == 1 else f"each of the {times} times it ran"
    return error_to_dict(
        job.query,
        WORKER_DIED,
        f"the worker process running it was {how} {runs} (out of memory?); file skipped",
    )


def run_local(
    catalogue_dir: Path,
    jobs: list[ScanJob],
    *,
    workers: int,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
    attempts: int = LOCAL_ATTEMPTS,
) -> Iterator[tuple[ScanJob, dict[str, Any]]]:
    """Run jobs in ``workers`` local worker processes, surviving their deaths.

    Each worker runs one job at a time, so when one dies (killed by the OOM killer, a crash in
    a decoder) the job it was running is known and no other job is touched. That job is run
    again (the first death may have been another process's doing: the OOM killer picks the
    largest process, not the one that asked for memory) and, when its worker dies
    ``attempts`` times, it gets a ``worker_died`` error line. Each dead worker is replaced.

    Raises
    ------
    ScanWorkerError
        If worker processes die before they are ready :data:`MAX_START_FAILURES` times in a
        row (they cannot open the catalogue, say).
    """
    context = multiprocessing.get_context("spawn")
    args = (str(catalogue_dir), top, min_score, excerpts)
    pending = deque(jobs)
    deaths: Counter[ScanJob] = Counter()
    pool: list[_LocalWorker] = []
    start_failures = 0
    try:
        while True:
            busy = sum(worker.job is not None for worker in pool)
            if not pending and not busy:
                break
            while len(pool) < min(workers, busy + len(pending)):
                pool.append(_start_local_worker(context, args))
            for worker in pool:
                if worker.job is None and pending:
                    job = pending.popleft()
                    try:
                        worker.connection.send(job)
                        worker.job = job
                    except OSError:  # it died idle: found below, not the job's doing
                        pending.appendleft(job)
            multiprocessing.connection.wait(
                [w.connection for w in pool] + [w.process.sentinel for w in pool]
            )
            finished: list[tuple[ScanJob, dict[str, Any]]] = []
            for worker in list(pool):
                message = worker.receive()
                if message is _NOTHING:
                    continue
                if message == _READY:
                    worker.ready, start_failures = True, 0
                elif message is not _DIED:
                    assert worker.job is not None
                    finished.append((worker.job, message))  # type: ignore[arg-type]
                    worker.job = None
                    continue
                else:
                    pool.remove(worker)
                    how = worker.how_it_ended()
                    worker.close()
                    job, worker.job = worker.job, None
                    if not worker.ready:
                        start_failures += 1
                        if start_failures >= MAX_START_FAILURES:
                            raise ScanWorkerError(
                                f"scan worker processes {how} before they were ready, "
                                f"{start_failures} times in a row"
                            )
                        if job is not None:
                            pending.appendleft(job)
                    elif job is not None:
                        deaths[job] += 1
                        if deaths[job] >= attempts:
                            logger.warning("%s: worker %s again; skipped", job.query, how)
                            finished.append((job, _worker_died_line(job, how, deaths[job])))
                        else:
                            logger.warning("%s: worker %s; running it again", job.query, how)
                            pending.appendleft(job)
            yield from finished
    finally:
        for worker in pool:
            worker.stop()
        for worker in pool:
            worker.close()


def run_dask(
    catalogue_dir: Path,
    jobs: list[ScanJob],
    *,
    scheduler: str,
    top: int,
    min_score: float | None,
    excerpts: int = 0,
) -> Iterator[tuple[ScanJob, dict[str, Any]]]:
    """Run jobs on the Dask distributed cluster at ``scheduler`` (e.g. ``tcp://host:8786``).

    Each job is one task, which opens the catalogue on its worker; for a sharded catalogue the
    job's task fingerprints the file and sends the query to the shards' own tasks
    (:func:`sharded_scan_task`), so each shard is opened only on the worker it is assigned to.

    A task that raises is retried :data:`DASK_RETRIES` time(s). A task whose worker dies is
    rescheduled by Dask on another worker, until the workers running it have died more than
    the scheduler's ``distributed.scheduler.allowed-failures`` times; it then gets a
    ``worker_died`` error line (and a task that keeps raising an ``InternalError`` line).

    Raises
    ------
    ScanWorkerError
        If Dask cancels a task (the scheduler restarted or was lost): run again with resume.
    """
    from distributed import Client, as_completed

    directory = str(Path(catalogue_dir).resolve())
    task = sharded_scan_task if is_sharded(directory) else scan_task
    with Client(scheduler, set_as_default=False) as client:
        threads = sum(client.nthreads().values()) or 1
        window = threads * DASK_TASKS_PER_THREAD
        logger.info("Dask cluster at %s: %d worker threads", scheduler, threads)
        running: dict[str, ScanJob] = {}
        completed = as_completed(loop=client.loop)

        def submit(job: ScanJob) -> None:
            future = client.submit(
                task, directory, job, top, min_score, excerpts,
                pure=False, retries=DASK_RETRIES,
            )  # fmt: skip
            running[future.key] = job
            completed.add(future)

        pending = iter(jobs)
        for job in itertools.islice(pending, window):
            submit(job)
        for future in completed:  # a new job goes in as each one finishes
            job = running.pop(future.key)
            result = dask_line(job, future)
            future.release()
            next_job = next(pending, None)
            if next_job is not None:
                submit(next_job)
            yield job, result


def dask_line(job: ScanJob, future: Any) -> dict[str, Any]:
    """The report line of a finished Dask future: its result, or an error line.

    Parameters
    ----------
    job : ScanJob
        The job the future ran.
    future : distributed.Future
        Finished: its result, an error it raised, or cancelled.

    Returns
    -------
    line : dict
        The job's report line; an error line (``worker_died`` when its workers died each time
        it ran, ``InternalError`` when it raised).

    Raises
    ------
    ScanWorkerError
        When the cluster cancelled the task.
    """
    from distributed.scheduler import KilledWorker

    if future.status not in ("finished", "error", "cancelled"):
        # as_completed can hand over a future whose worker died and whose task Dask is
        # running again: wait for that run through the future's own client (distributed.wait
        # would use the process's default client, whose event loop may be another one); when
        # it does not finish, its status below says what happened
        with contextlib.suppress(Exception, asyncio.CancelledError):
            return future.result()
    if future.status == "finished":
        return future.result()
    if future.status not in ("finished", "error"):  # cancelled, or the wait was interrupted
        raise ScanWorkerError(
            f"the Dask cluster cancelled or lost the task of {job.query} (scheduler restarted?)"
        )
    exc = future.exception()
    if isinstance(exc, KilledWorker):
        times = exc.allowed_failures + 1
        logger.warning("%s: the Dask workers running it died %d times; skipped", job.query, times)
        return error_to_dict(
            job.query,
            WORKER_DIED,
            f"the Dask worker process running it died each of the {times} times it ran "
            "(out of memory?; see distributed.scheduler.allowed-failures); file skipped",
        )
    logger.error("%s: the Dask task failed: %s: %s", job.query, type(exc).__name__, exc)
    return error_to_dict(job.query, "InternalError", f"{type(exc).__name__}: {exc}")
