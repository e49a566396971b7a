"""The Dask actors through which a client reaches the shards opened on each worker.

A client gets one :class:`ShardHost` on each worker it uses, made with that worker as a strict
restriction (``workers=[w]``), so that neither placement nor work stealing opens a shard
anywhere else (:class:`ShardHosts`). A call on a host reaches its worker without a scheduler
task. It carries one pickled payload (the shards' directories, the function and each shard's
arguments: a query shared by the shards is pickled once) and returns one pickled answer per
shard, so nothing in it is left to Dask's serialisation: an answer that cannot be pickled, or
an exception that cannot be rebuilt where it is read, becomes that shard's error instead of a
call that never completes. The worker runs the shards in its own thread pool (its
``--nthreads``), not on the single thread Dask gives actors, and skips a call that waited
there past the time its caller gives it.
"""

from __future__ import annotations

import asyncio
import contextvars
import pickle
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from tunetrace.errors import CatalogueError, ShardUnavailableError
from tunetrace.fingerprint.params import FingerprintParams

#: Seconds between checks that a worker making a host, or answering a call, is still in the
#: cluster.
WORKER_CHECK_S = 1.0
#: One host is bound to its client at a time (Dask's "current client" also sets Dask's
#: scheduler option, which is process-wide).
_binding = threading.Lock()
#: What a call gives back for each shard: ``(True, answer)`` or ``(False, exception)``.
Outcome = tuple[bool, Any]
#: A call's answer when its worker is closing (its shards go to other workers).
CLOSING = ("closing",)


class ShardHost:
    """A Dask actor on one worker: runs functions on the shards opened in its process."""

    async def run(self, payload: bytes) -> bytes:
        """Run a call made by :func:`call_payload` in the worker's thread pool.

        Parameters
        ----------
        payload : bytes

        Returns
        -------
        answer : bytes
            For :func:`read_answer`.
        """
        from distributed import get_worker

        received = time.monotonic()
        pool = get_worker().executors["default"]
        # in this context, so that the shards' functions see their worker as a task does
        context = contextvars.copy_context()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, context.run, run_payload, payload, received
            )
        except RuntimeError:  # the worker is closing: its pool takes no more work
            return pickle.dumps(CLOSING)


def call_payload(
    directories: list[str],
    read_only: bool,
    params: FingerprintParams,
    function: Callable[..., Any],
    args: list[tuple[Any, ...]],
    seconds: float,
) -> bytes:
    """One host call: ``function(open_shard, *args[i])`` on each shard ``directories[i]``,
    skipped if it cannot start within ``seconds`` of reaching the worker."""
    import cloudpickle  # as Dask pickles functions: by reference when importable

    return cloudpickle.dumps((directories, read_only, params, function, args, seconds))


def run_payload(payload: bytes, received: float) -> bytes:
    """The worker's side of a call (:class:`ShardHost`): never raises."""
    from tunetrace.shard_access import run_on_shards

    try:
        directories, read_only, params, function, args, seconds = pickle.loads(payload)
    except Exception as exc:  # e.g. a function this worker's installation lacks
        return pickle.dumps(f"the call could not be read on its worker ({exc!r})")
    waited = time.monotonic() - received
    if waited > seconds:
        late = ShardUnavailableError(
            f"it waited {waited:.0f} s for a free thread on its Dask worker, past the query's "
            "time"
        )
        outcomes: list[Outcome] = [(False, late)] * len(directories)
    else:
        outcomes = run_on_shards(directories, read_only, params, function, args)
    return pickle.dumps([_dumped(outcome) for outcome in outcomes])


def _dumped(outcome: Outcome) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(outcome)
    except Exception as exc:
        answered, value = outcome
        what = "answer" if answered else f"error ({value!r})"
        failure = CatalogueError(f"its {what} could not be sent back ({exc!r})")
        return pickle.dumps((False, failure))


def read_answer(raw: bytes) -> list[Outcome] | str | None:
    """What a host call gave: each shard's outcome, or why the call as a whole failed.

    Parameters
    ----------
    raw : bytes
        What :meth:`ShardHost.run` returned.

    Returns
    -------
    outcomes : list of tuple of (bool, object), str or None
        ``None`` when the worker was closing (its shards go elsewhere).
    """
    decoded = pickle.loads(raw)
    if decoded == CLOSING:
        return None
    if isinstance(decoded, str):
        return decoded
    outcomes: list[Outcome] = []
    for item in decoded:
        try:
            outcomes.append(pickle.loads(item))
        except Exception as exc:  # an exception class this process cannot rebuild
            outcomes.append((False, CatalogueError(f"its answer could not be read ({exc!r})")))
    return outcomes


def _done_within(future: Any, seconds: float) -> bool:
    """Whether ``future`` is done, waiting up to ``seconds`` (polled: Dask's own waiting
    asks for the process's default client, which a catalogue's client need not be)."""
    end = time.monotonic() + seconds
    while not future.done():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


class ShardHosts:
    """A client's :class:`ShardHost` on each worker it uses: made on first use (one at a
    time per worker, however many threads ask), kept, and dropped when found lost.

    Parameters
    ----------
    client : distributed.Client
    workers_now : callable
        The cluster's workers now (asked while a host is being made).
    """

    def __init__(self, client: Any, workers_now: Callable[[], set[str]]) -> None:
        self.client = client
        self._workers_now = workers_now
        self._lock = threading.Lock()
        #: Each worker's host: the actor's future (which keeps it alive) and the actor.
        self._hosts: dict[str, tuple[Any, Any]] = {}
        self._making: dict[str, Any] = {}
        self._closed = False

    def get(self, workers: Iterable[str], deadline: float) -> dict[str, Any | str | None]:
        """Each worker's host, made where missing (all asked for before any is awaited).

        Parameters
        ----------
        workers : iterable of str
        deadline : float
            ``time.monotonic()`` by which a host must be made.

        Returns
        -------
        hosts : dict
            By worker: its host; ``None`` if the worker left the cluster first; or a message
            saying why no host could be made there.

        Raises
        ------
        ShardUnavailableError
            If the hosts were closed, or the client cannot send work.
        """
        found: dict[str, Any | str | None] = {}
        waiting: dict[str, Any] = {}
        with self._lock:
            if self._closed:
                raise ShardUnavailableError("the catalogue's Dask connection is closed")
            for worker in workers:
                made = self._hosts.get(worker)
                if made is not None and made[0].status == "finished":
                    found[worker] = made[1]
                    continue
                if made is not None:  # its worker was lost since
                    del self._hosts[worker]
                    made[0].release()
                future = self._making.get(worker)
                if future is None:
                    try:
                        future = self.client.submit(
                            ShardHost, actor=True, workers=[worker],
                            allow_other_workers=False, pure=False,
                        )  # fmt: skip
                    except Exception as exc:  # a closed client raises its own kinds
                        raise ShardUnavailableError(
                            f"the Dask client cannot send work ({exc})"
                        ) from exc
                    self._making[worker] = future
                waiting[worker] = future
        for worker, future in waiting.items():
            found[worker] = self._awaited(worker, future, deadline)
        return found

    def _awaited(self, worker: str, future: Any, deadline: float) -> Any | str | None:
        """The host ``future`` makes on ``worker`` (see :meth:`get`). A host not made by
        ``deadline`` is left to finish for later calls (other threads may be waiting on it
        with later deadlines)."""
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        try:
            while True:
                if _done_within(future, WORKER_CHECK_S):
                    # The actor takes Dask's current client as its own when it is read:
                    # this one, not the process's default (another cluster's, or none).
                    try:
                        with _binding, self.client.as_current():
                            actor = future.result(timeout=WORKER_CHECK_S)
                        return self._settled(worker, future, actor)
                    except TimeoutError:  # its worker died since: the host is made again
                        pass
                if worker not in self._workers_now():
                    return self._settled(worker, future, None)
                if time.monotonic() > deadline:
                    return f"Dask worker {worker} made no shard host in time"
        except (KilledWorker, FutureCancelledError, OSError):  # its worker died making it
            return self._settled(worker, future, None)
        except ShardUnavailableError as exc:  # the scheduler is gone
            self._settled(worker, future, None)
            return str(exc)
        except Exception as exc:  # e.g. a worker whose installation lacks this module
            self._settled(worker, future, None)
            return f"Dask worker {worker} could not make a shard host ({exc!r})"

    def _settled(self, worker: str, future: Any, actor: Any) -> Any:
        """Record how making ``worker``'s host ended; the host to use (``None``: none)."""
        with self._lock:
            if self._making.get(worker) is future:
                del self._making[worker]
            if actor is None or self._closed:
                future.release()
                return None
            made = self._hosts.get(worker)
            if made is None:
                self._hosts[worker] = (future, actor)
                return actor
            return made[1]

    def lost(self, worker: str, actor: Any) -> bool:
        """Whether ``worker``'s host ``actor`` is no longer the one in use, or Dask lost it."""
        with self._lock:
            made = self._hosts.get(worker)
        return made is None or made[1] is not actor or made[0].status != "finished"

    def forget(self, worker: str, actor: Any) -> None:
        """Drop ``worker``'s host if it is still ``actor`` (found lost, or stuck)."""
        with self._lock:
            made = self._hosts.get(worker)
            if made is not None and made[1] is actor:
                del self._hosts[worker]
                made[0].release()

    def close(self) -> None:
        """Release every host; later :meth:`get` calls raise."""
        with self._lock:
            self._closed = True
            made, self._hosts = list(self._hosts.values()), {}
        if self.client.status == "running":
            for future, _ in made:
                future.release()
