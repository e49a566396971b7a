"""Keep worker processes to one thread each.

FAISS (OpenMP) and BLAS start a thread per core in every process. A pool of one worker process
per core, each also running a thread per core, oversubscribes the machine: the workers then
slow each other down instead of adding up. Worker processes call :func:`use_one_thread`.
"""

from __future__ import annotations

import faiss
from threadpoolctl import threadpool_limits

_limits: object | None = None


def use_one_thread() -> None:
    """Limit FAISS and the BLAS/OpenMP libraries of this process to one thread.

    Cheap after the first call (scan tasks call it on every task): OpenMP's setting belongs to
    the calling thread and is set each time; the library scan behind the BLAS limits runs once.
    """
    global _limits
    faiss.omp_set_num_threads(1)
    if _limits is None:
        _limits = threadpool_limits(limits=1)  # kept: the limits last as long as this object
