"""A bounded pool of worker processes for decoding, fingerprinting and matching.

CPU-bound work never runs on the event loop. Each worker process opens the catalogue once
(index and reference features stay loaded) and picks up changes by its generation counter.
Admission is bounded: a request takes a slot when its headers arrive, before its body is read,
and gives it back when it ends, whatever happened; ``workers + max_queue`` slots exist, and
beyond that the service answers 503 with ``Retry-After`` instead of piling work (or spooled
uploads) up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from tunetrace.api.errors import ApiError
from tunetrace.index.catalogue import ReferenceData

from tunetrace.ingest import fingerprint_reference
from tunetrace.kernels import compile_kernels
from tunetrace.matcher import Matcher
from tunetrace.opening import open_catalogue
from tunetrace.parent_watch import exit_with_parent
from tunetrace.report import MatchReport
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)
T = TypeVar("T")

_matcher: Matcher | None = None


def _init_worker(catalogue_dir: str, scheduler: str | None = None) -> None:
    global _matcher
    exit_with_parent()  # a server killed outright must not leave its workers behind
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    use_one_thread()  # one process per core; threads inside them would only compete
    _matcher = Matcher(open_catalogue(catalogue_dir, read_only=True, scheduler=scheduler))
    compile_kernels()


def _ready() -> bool:
    return _matcher is not None


def match_job(
    path: str, query_name: str, top: int, min_score: float | None, max_duration_s: float
) -> MatchReport:
    """Match one uploaded file (runs in a worker process)."""
    assert _matcher is not None, "worker not initialised"
    return _matcher.match_path(
        path, query_name=query_name, top=top, min_score=min_score, max_duration_s=max_duration_s
    )


def explain_job(
    path: str, query_name: str, reference_id: str | None, image: bool, max_duration_s: float
) -> bytes | dict[str, Any]:
    """The evidence for one uploaded file: PNG bytes, or its JSON form (in a worker process)."""
    from tunetrace.explain import build_evidence, evidence_to_dict, render_png

    assert _matcher is not None, "worker not initialised"
    features = _matcher.load_query(path, max_duration_s=max_duration_s)
    evidence = build_evidence(_matcher, features, query_name=query_name, reference_id=reference_id)
    return render_png(evidence) if image else evidence_to_dict(evidence)


def fingerprint_job(path: str, max_duration_s: float) -> ReferenceData:
    """Fingerprint one uploaded reference (runs in a worker process)."""
    assert _matcher is not None, "worker not initialised"
    return fingerprint_reference(
        path, params=_matcher.catalogue.params, max_duration_s=max_duration_s
    )


class WorkerPool:
    """Worker processes with bounded admission.

    Parameters
    ----------
    catalogue_dir : Path
    scheduler : str, optional
        Dask scheduler address: each worker searches the sharded catalogue's shards on that
        cluster's workers.
    workers : int
        Processes (one per core is right: the work is CPU-bound).
    max_queue : int
        Requests allowed to wait for a worker.
    retry_after_s : int
        Sent with 503 responses.
    """

    def __init__(
        self,
        catalogue_dir: Path,
        *,
        workers: int,
        max_queue: int,
        retry_after_s: int,
        scheduler: str | None = None,
    ) -> None:
        self.catalogue_dir = catalogue_dir
        self.scheduler = scheduler
        self.workers = workers
        self.capacity = workers + max_queue
        self.retry_after_s = retry_after_s
        self.admitted = 0
        self.busy = 0
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn: forking a process that runs an event loop and threads is unsafe
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(self.catalogue_dir), self.scheduler),
        )

    @property
    def queue_depth(self) -> int:
        """Requests admitted but waiting for a free worker."""
        return max(0, self.busy - self.workers)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the ``workers + max_queue`` admission slots for the ``with`` block.

        Take it when a request's headers have arrived, before its body is read; the slot is
        given back when the block ends, however it ends.

        Raises
        ------
        ApiError
            503 ``busy`` with ``Retry-After`` when every slot is taken.
        """
        if self.admitted >= self.capacity:
            raise ApiError(
                503,
                "busy",
                f"all {self.workers} workers are busy and {self.capacity - self.workers} "
                "requests are waiting; retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` in a worker process and await its result.

        Callers hold an admission slot (:meth:`admit`), which bounds how many jobs wait.

        Raises
        ------
        ApiError
            503 if a worker process died (the pool is restarted).
        """
        self.busy += 1
        try:
            return await asyncio.wrap_future(self._executor.submit(function, *args))
        except BrokenProcessPool as exc:
            logger.error("a worker process died; restarting the pool")
            self._restart()
            raise ApiError(
                503,
                "worker_restarted",
                "a worker process stopped unexpectedly; retry the request",
                headers={"Retry-After": str(self.retry_after_s)},
            ) from exc
        finally:
            self.busy -= 1

    def _restart(self) -> None:
        old, self._executor = self._executor, self._start()
        old.shutdown(wait=False, cancel_futures=True)

    async def warm_up(self) -> None:
        """Start every worker process now rather than on the first request."""
        futures = [self._executor.submit(_ready) for _ in range(self.workers)]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    def shutdown(self) -> None:
        """Stop the worker processes (running jobs finish, queued ones are dropped)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
