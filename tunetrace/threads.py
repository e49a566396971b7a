"""How many threads one process uses.

A process that matches one query at a time (``tunetrace match``, a single API worker)
answers soonest with every core on that query: FAISS (OpenMP) and BLAS start a thread per
core, and verification spreads a query's candidates over a thread per core
(:func:`map_in_threads`; its compiled kernels release the GIL). A pool of one worker process
per core, each also running a thread per core, oversubscribes the machine: the workers then
slow each other down instead of adding up. Worker processes call :func:`use_one_thread`.

BLAS is the exception: the matrix products of fingerprinting and matching are small, and an
idle OpenBLAS thread spins on a core for a while after each one, where FAISS's and
verification's threads need it. A matcher therefore limits BLAS to one thread
(:func:`limit_blas_threads`), which leaves the cores to search and verification.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import faiss
from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")

_limits: object | None = None
_blas_limits: object | None = None
_executor: ThreadPoolExecutor | None = None
_executor_threads = 0


def use_one_thread() -> None:
    """Limit FAISS, the BLAS/OpenMP libraries and verification of this process to one thread.

    Cheap after the first call (scan tasks call it on every task): OpenMP's setting belongs to
    the calling thread and is set each time; the library scan behind the BLAS limits runs once.
    """
    global _limits
    faiss.omp_set_num_threads(1)
    if _limits is None:
        _limits = threadpool_limits(limits=1)  # kept: the limits last as long as this object


def limit_blas_threads() -> None:
    """Limit the BLAS libraries of this process (NumPy's, FAISS's) to one thread, once.

    FAISS's OpenMP threads and :func:`map_in_threads` keep every core (see the module text).
    """
    global _blas_limits
    if _blas_limits is None:
        _blas_limits = threadpool_limits(limits=1, user_api="blas")


def thread_count() -> int:
    """Threads this process may use for one query: 1 after :func:`use_one_thread`, else the
    cores it may run on."""
    if _limits is not None:
        return 1
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def map_in_threads(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[function(item) for item in items]``, spread over :func:`thread_count` threads.

    Results come back in the order of ``items``. An exception propagates as from the list
    comprehension: the first failing item's, in the order of ``items`` (items not yet started
    by then are cancelled).
    """
    items = list(items)
    threads = min(thread_count(), len(items))
    if threads <= 1:
        return [function(item) for item in items]
    global _executor, _executor_threads
    if _executor is None or _executor_threads < threads:
        if _executor is not None:
            _executor.shutdown(wait=False)
        _executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tunetrace")
        _executor_threads = threads
    futures = [_executor.submit(function, item) for item in items]
    try:
        return [future.result() for future in futures]
    except BaseException:
        # Items not started are dropped; those running are waited for, so that nothing the
        # caller closes next (a database connection, say) is still in use by a thread.
        for future in futures:
            future.cancel()
        wait(futures)
        raise
