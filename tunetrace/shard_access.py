"""Where a sharded catalogue's shards are opened and searched: in this process, or on the Dask
workers each shard is assigned to.

Both give a :class:`ShardAccess`: ``call(shard, function, *args)`` runs
``function(open_shard, *args)`` where the shard is open and returns its (small) result. Only
arguments and results travel (a query's fingerprint out, verified matches or metadata back);
a shard's vectors and spectra stay where it is opened.

On Dask, each shard is assigned to one worker (:func:`assign_shards`: balanced rendezvous
hashing of the shard's directory over the workers the scheduler knows). The client reaches
each worker through one Dask actor there (:mod:`tunetrace.shard_hosts`): a call on many shards
is one method call on each worker holding some, which runs its shards one after the other
(:func:`run_on_shards`) and keeps them open between calls. When a worker leaves (or dies with
the call), its shards are sent to their next workers by the same assignment, through actors
made there; a shard that raised is tried once more. A worker joining or leaving moves few
shards besides its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tunetrace.errors import (
    BadInputError,
    CatalogueError,
    DamagedReferenceError,
    DuplicateReferenceError,
    ReferenceNotFoundError,
    ShardUnavailableError,
    TunetraceError,
)
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import DATABASE_NAME, FEATURES_CACHE_BYTES, Catalogue
from tunetrace.shard_hosts import (
    WORKER_CHECK_S,
    Outcome,
    ShardHosts,
    call_payload,
    read_answer,
)

logger = logging.getLogger(__name__)
R = TypeVar("R")

#: Seconds a shard-to-worker assignment is used before the cluster's workers are asked again.
ASSIGNMENT_TTL_S = 2.0
#: Environment variable: seconds a query waits for a shard's answer on Dask (default 300).
SHARD_TIMEOUT_ENV = "TUNETRACE_SHARD_TIMEOUT_S"
#: Times a shard's work is sent to another worker after its worker left or died, before
#: giving up.
MAX_REASSIGNMENTS = 3
#: Times a shard's work that raised is sent again (a worker's death counts as a move
#: instead, :data:`MAX_REASSIGNMENTS`).
SHARD_TASK_RETRIES = 1


class OpenShard:
    """One shard catalogue opened in this process, with matchers made on first use.

    Parameters
    ----------
    directory : Path
    read_only : bool
    params : FingerprintParams
        The sharded catalogue's parameters: a shard made with others is refused.
    """

    def __init__(self, directory: Path, *, read_only: bool, params: FingerprintParams) -> None:
        self.directory = directory
        self.read_only = read_only
        try:
            self.catalogue = Catalogue(directory, read_only=read_only, params=params)
        except TunetraceError as exc:
            raise ShardUnavailableError(f"shard {directory} cannot be opened: {exc}") from exc
        self._matchers: dict[Any, Any] = {}
        self._lock = threading.Lock()

    @property
    def matcher(self) -> Any:
        """A :class:`~tunetrace.matcher.Matcher` on this shard with the default settings."""
        return self.matcher_with(None, None, None)

    def matcher_with(self, settings: Any, verify_settings: Any, score_model: Any) -> Any:
        """A :class:`~tunetrace.matcher.Matcher` on this shard configured as a sharded
        matcher is (its ``MatchSettings``, ``VerifySettings`` and ``ScoreModel``; ``None``:
        the defaults), made once per configuration and kept."""
        key = (settings, verify_settings, score_model)
        with self._lock:
            matcher = self._matchers.get(key)
            if matcher is None:
                from tunetrace.matcher import Matcher

                matcher = self._matchers[key] = Matcher(
                    self.catalogue, settings=settings, verify_settings=verify_settings,
                    score_model=score_model,
                )  # fmt: skip
            return matcher

    def damaged_references(self) -> tuple[str, ...]:
        """Ids of this shard's references known to have damaged stored rows: those its last
        index rebuild recorded, and those any of its matchers has failed to read since (see
        :meth:`~tunetrace.matcher.Matcher.damaged_references`).

        Returns
        -------
        ids : tuple of str
            Sorted; empty for a sound shard.
        """
        with self._lock:
            matchers = list(self._matchers.values())
        if not matchers:
            return tuple(self.catalogue.damaged_references())
        # each matcher's own list holds the catalogue's recorded ones too
        return tuple(sorted({i for matcher in matchers for i in matcher.damaged_references()}))

    def close(self) -> None:
        """Close the shard's catalogue."""
        self.catalogue.close()


class ShardAccess(Protocol):
    """Runs functions on open shards, wherever they are open."""

    def call(self, shard: int, function: Callable[..., R], *args: Any) -> R:
        """``function(open_shard, *args)`` on shard number ``shard``."""
        ...

    def call_all(self, function: Callable[..., R], args: Sequence[tuple[Any, ...]]) -> list[R]:
        """``function(open_shard_i, *args[i])`` on every shard ``i``; every shard answers or
        :class:`ShardUnavailableError` is raised naming those that did not."""
        ...

    def call_many(
        self, function: Callable[..., R], args: dict[int, tuple[Any, ...]]
    ) -> dict[int, R]:
        """``function(open_shard_i, *args[i])`` on each shard ``i`` of ``args`` (as
        :meth:`call_all`)."""
        ...

    def close(self) -> None:
        """Release the shards (and any cluster connection)."""
        ...


class _Shards:
    """What both kinds of shard access share."""

    def call_many(
        self, function: Callable[..., R], args: dict[int, tuple[Any, ...]]
    ) -> dict[int, R]:  # pragma: no cover - each kind has its own
        raise NotImplementedError

    def call_all(self, function: Callable[..., R], args: Sequence[tuple[Any, ...]]) -> list[R]:
        """See :class:`ShardAccess`."""
        found = self.call_many(function, dict(enumerate(args)))
        return [found[shard] for shard in range(len(args))]


class LocalShards(_Shards):
    """Shards opened in this process (each on first use, then kept open).

    Parameters
    ----------
    directories : list of Path
        The shard directories, in shard order.
    read_only : bool
    params : FingerprintParams
        The sharded catalogue's fingerprint parameters.
    """

    def __init__(
        self, directories: list[Path], *, read_only: bool, params: FingerprintParams
    ) -> None:
        self.directories = directories
        self.read_only = read_only
        self.params = params
        self._open: dict[int, OpenShard] = {}
        self._lock = threading.Lock()

    def shard(self, shard: int) -> OpenShard:
        """Shard number ``shard``, opened on first use.

        Raises
        ------
        ShardUnavailableError
        """
        with self._lock:
            opened = self._open.get(shard)
            if opened is None:
                opened = self._open[shard] = OpenShard(
                    self.directories[shard], read_only=self.read_only, params=self.params
                )
                share_features_cache(list(self._open.values()))
            return opened

    def opened(self) -> list[OpenShard]:
        """The shards opened so far."""
        with self._lock:
            return list(self._open.values())

    def call(self, shard: int, function: Callable[..., R], *args: Any) -> R:
        """See :class:`ShardAccess`."""
        try:
            return function(self.shard(shard), *args)
        except ShardUnavailableError:
            raise
        except CatalogueError as exc:
            if isinstance(exc, _NOT_SHARD_FAULTS):
                raise
            raise ShardUnavailableError(
                f"shard {shard_name(self.directories[shard])} failed: {exc}"
            ) from exc

    def call_many(
        self, function: Callable[..., R], args: dict[int, tuple[Any, ...]]
    ) -> dict[int, R]:
        """See :class:`ShardAccess` (shards are searched one after the other: each search
        already uses this process's threads)."""
        results, failures = {}, []
        grouped = getattr(function, TOGETHER, None)
        if grouped is not None and len(args) > 1:
            opened = {}
            for shard in args:
                with contextlib.suppress(ShardUnavailableError):  # it fails alone, below
                    opened[shard] = self.shard(shard)
            together_found = _run_together(grouped, opened, args)
            results = {shard: value for shard, (answered, value) in together_found.items()
                       if answered}  # fmt: skip
        for shard, shard_args in args.items():
            if shard in results:
                continue
            try:
                results[shard] = self.call(shard, function, *shard_args)
            except ShardUnavailableError as exc:
                failures.append(str(exc))
        if failures:
            raise ShardUnavailableError(_unavailable_message(failures, len(self.directories)))
        return results

    def close(self) -> None:
        """Close every opened shard."""
        with self._lock:
            for opened in self._open.values():
                opened.close()
            self._open.clear()


class DaskShards(_Shards):
    """Shards opened on the workers of a Dask distributed cluster.

    Parameters
    ----------
    directories : list of Path
        The shard directories, in shard order: the workers must see them at these paths
        (shared storage, or each worker's own copy of the shards assigned to it).
    scheduler : str or distributed.Client
        The scheduler's address (``tcp://host:8786``) or a connected client.
    params : FingerprintParams
        The sharded catalogue's fingerprint parameters.
    read_only : bool
    """

    def __init__(
        self,
        directories: list[Path],
        scheduler: Any,
        *,
        params: FingerprintParams,
        read_only: bool = True,
    ) -> None:
        from distributed import Client

        self.directories = [str(Path(d).resolve()) for d in directories]
        self.read_only = read_only
        self.params = params
        self._lock = threading.Lock()
        self._assigned: list[str | None] | None = None
        self._assigned_at = 0.0
        self._own_client = isinstance(scheduler, str)
        try:
            self.client = (
                Client(scheduler, set_as_default=False, timeout="20s")
                if self._own_client
                else scheduler
            )
        except (OSError, TimeoutError) as exc:
            raise CatalogueError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        self.hosts = ShardHosts(self.client, self._workers)

    def assignment(self) -> list[str | None]:
        """The worker each shard is assigned to now (``None``: the cluster has no workers).

        The cluster's workers are asked for at most every :data:`ASSIGNMENT_TTL_S`; shards
        sent to a worker that has left meanwhile are sent again (see :meth:`call_many`).
        """
        now = time.monotonic()
        with self._lock:
            if self._assigned is None or now - self._assigned_at > ASSIGNMENT_TTL_S:
                workers = sorted(self._workers())
                self._assigned = assign_shards(self.directories, workers)
                self._assigned_at = now
            return self._assigned

    def call(self, shard: int, function: Callable[..., R], *args: Any) -> R:
        """See :class:`ShardAccess`."""
        return self.call_many(function, {shard: args})[shard]

    def call_many(
        self, function: Callable[..., R], args: dict[int, tuple[Any, ...]]
    ) -> dict[int, R]:
        """See :class:`ShardAccess`: one call on the shard host of each worker holding some
        of the shards, every call sent before any answer is awaited. Shards whose worker left
        the cluster (or died answering) are sent to their next workers (up to
        :data:`MAX_REASSIGNMENTS` times), shards that raised are sent again
        (:data:`SHARD_TASK_RETRIES` times); errors about the request itself pass through
        unchanged."""
        self._require_running_client()
        results: dict[int, R] = {}
        failures: dict[int, str] = {}
        moves, retries = dict.fromkeys(args, 0), dict.fromkeys(args, 0)
        pending = sorted(args)
        deadline = time.monotonic() + shard_timeout_s()
        while pending:
            if time.monotonic() > deadline:  # sent again, and again, past the query's time
                failures.update(
                    (shard, f"shard {self._name(shard)}: no answer within "
                            f"{shard_timeout_s():g} s ({SHARD_TIMEOUT_ENV})")
                    for shard in pending
                )  # fmt: skip
                break
            assigned = self.assignment()
            by_worker: dict[str, list[int]] = {}
            for shard in pending:
                worker = assigned[shard]
                if worker is None:
                    failures[shard] = f"shard {self._name(shard)}: the Dask cluster has no workers"
                else:
                    by_worker.setdefault(worker, []).append(shard)
            hosts = self.hosts.get(by_worker, deadline)
            sent = []
            for worker, shards in by_worker.items():
                host = hosts[worker]
                if isinstance(host, str):
                    failures.update((s, f"shard {self._name(s)}: {host}") for s in shards)
                    continue
                future = None if host is None else self._send(worker, host, shards, function,
                                                               args, deadline)  # fmt: skip
                sent.append((worker, host, shards, future))
            pending = []
            for worker, host, shards, future in sent:
                outcomes = (
                    None
                    if future is None
                    else self._outcomes(worker, host, shards, future, deadline, failures)
                )
                if outcomes is None:  # the worker left: its shards go to their next ones
                    self._assigned = None  # ask the cluster again
                    for shard in shards:
                        moves[shard] += 1
                        if moves[shard] > MAX_REASSIGNMENTS:
                            failures[shard] = (
                                f"shard {self._name(shard)}: its workers kept leaving the cluster"
                            )
                        else:
                            pending.append(shard)
                    continue
                if not outcomes:  # failed as a whole (recorded for each shard)
                    continue
                for shard, (answered, value) in zip(shards, outcomes, strict=True):
                    if answered:
                        results[shard] = value
                    elif isinstance(value, _NOT_SHARD_FAULTS):
                        raise value
                    elif retries[shard] < SHARD_TASK_RETRIES:
                        retries[shard] += 1
                        logger.info("shard %s raised %r; sent again", self._name(shard), value)
                        pending.append(shard)
                    elif isinstance(value, TunetraceError | OSError):
                        failures[shard] = f"shard {self._name(shard)} failed: {value}"
                    else:  # a fault of the code, not of the shard: as it was raised
                        raise value
            pending.sort()
        if failures:
            raise ShardUnavailableError(
                _unavailable_message([failures[s] for s in sorted(failures)],
                                     len(self.directories))
            )  # fmt: skip
        return results

    def _send(
        self,
        worker: str,
        host: Any,
        shards: list[int],
        function: Callable[..., R],
        args: dict[int, tuple[Any, ...]],
        deadline: float,
    ) -> Any:
        """``function`` on each of ``shards`` in turn by ``worker``'s host: the call's
        future, or ``None`` when the host's worker was lost."""
        payload = call_payload(
            [self.directories[shard] for shard in shards], self.read_only, self.params,
            function, [args[shard] for shard in shards], max(deadline - time.monotonic(), 0.0),
        )  # fmt: skip
        try:
            return host.run(payload)
        except RuntimeError as exc:
            if "Actor was lost" not in str(exc):
                raise
            self.hosts.forget(worker, host)
            return None

    def _outcomes(
        self,
        worker: str,
        host: Any,
        shards: list[int],
        future: Any,
        deadline: float,
        failures: dict[int, str],
    ) -> list[Outcome] | None:
        """What ``worker``'s host gave for each of its shards; ``None`` when the worker left
        the cluster, or died answering, first.

        A call that failed as a whole (no answer by ``deadline``: :func:`shard_timeout_s`, a
        worker that hangs; a lost scheduler; a call the worker could not read) is recorded
        in ``failures`` for each of the shards, and an empty list returned.
        """

        def failed(reason: str) -> list[Outcome]:
            for shard in shards:
                failures[shard] = f"shard {self._name(shard)}: {reason}"
            return []

        try:
            while True:
                try:
                    answer = read_answer(future.result(timeout=WORKER_CHECK_S))
                    if answer is None:  # its worker is closing
                        break
                    return failed(answer) if isinstance(answer, str) else answer
                except TimeoutError:
                    if time.monotonic() > deadline:
                        return failed(
                            f"no answer from its Dask worker within {shard_timeout_s():g} s "
                            f"({SHARD_TIMEOUT_ENV})"
                        )
                    # still working where it belongs, on a host Dask still has
                    if worker in self._workers() and not self.hosts.lost(worker, host):
                        continue
                break
            logger.info("worker %s left with shards %s", worker, shards)
            self.hosts.forget(worker, host)
            return None
        except ShardUnavailableError as exc:  # the scheduler is gone
            return failed(str(exc))
        except OSError as exc:  # the worker died answering, or cannot be reached
            logger.info("lost contact with worker %s (%s); its shards move", worker, exc)
            self.hosts.forget(worker, host)
            return None
        except Exception as exc:  # the client closed under the call, or the like
            if self.client.status != "running":
                return failed(f"the Dask client is {self.client.status}")
            return failed(f"the call to its Dask worker failed ({exc!r})")

    def _name(self, shard: int) -> str:
        return shard_name(Path(self.directories[shard]))

    def _workers(self) -> set[str]:
        # Asked of the scheduler itself: the client's cached ``scheduler_info`` is rewritten
        # every few seconds by an update that lists no workers, and read at that moment it
        # showed a cluster without any (a query then failed as if no worker were left).
        self._require_running_client()
        scheduler = self.client.scheduler
        try:
            identity = self.client.sync(scheduler.identity, n_workers=-1)
        except (OSError, TimeoutError) as exc:
            raise ShardUnavailableError(f"lost the Dask scheduler: {exc}") from exc
        return set(identity.get("workers", {}))

    def _require_running_client(self) -> None:
        if self.client.status != "running" or self.client.scheduler is None:
            raise ShardUnavailableError(
                f"the Dask client is {self.client.status}: no scheduler to run shards on"
            )

    def close(self) -> None:
        """Release the shard hosts; close the client if this object connected it."""
        self.hosts.close()
        if self._own_client:
            self.client.close()


def shard_timeout_s() -> float:
    """Seconds a query waits for one shard's answer on Dask (:data:`SHARD_TIMEOUT_ENV`)."""
    try:
        value = float(os.environ.get(SHARD_TIMEOUT_ENV, "300"))
    except ValueError:
        value = 300.0
    return value if value > 0 else 300.0


def assign_shards(shard_directories: list[str], workers: list[str]) -> list[str | None]:
    """The worker each shard is assigned to: balanced, and stable as workers come and go.

    Shards take turns, in order, choosing the worker with the highest rendezvous hash of
    shard and worker among those holding fewer than ``ceil(shards / workers)`` shards. A
    worker leaving moves its own shards (and few others); one joining takes a share.

    Parameters
    ----------
    shard_directories : list of str
    workers : list of str
        The cluster's worker addresses.

    Returns
    -------
    workers : list of str or None
        One per shard (``None`` when there are no workers).
    """
    if not workers:
        return [None] * len(shard_directories)
    capacity = -(-len(shard_directories) // len(workers))
    load = dict.fromkeys(workers, 0)
    assigned: list[str | None] = []
    for directory in shard_directories:

        def weight(worker: str, directory: str = directory) -> bytes:
            return hashlib.blake2b(f"{directory}\n{worker}".encode(), digest_size=8).digest()

        chosen = max((w for w in workers if load[w] < capacity), key=weight)
        load[chosen] += 1
        assigned.append(chosen)
    return assigned


#: Shards opened in this (worker) process, by directory and mode.
_opened: dict[tuple[str, bool], OpenShard] = {}
_opened_lock = threading.Lock()


def run_on_shard(
    directory: str,
    read_only: bool,
    params: FingerprintParams,
    function: Callable[..., R],
    *args: Any,
) -> R:
    """A Dask task: ``function(open_shard, *args)`` on the shard at ``directory``, opened in
    this worker process on first use and kept open for later tasks.

    Shards whose directory has gone (a reshard replaced them) are closed and forgotten.
    """
    key = (directory, read_only)
    with _opened_lock:
        for gone in [k for k in _opened if not os.path.exists(Path(k[0]) / DATABASE_NAME)]:
            _opened.pop(gone).close()
        opened = _opened.get(key)
        if opened is None:
            if not os.path.exists(Path(directory) / DATABASE_NAME):
                raise ShardUnavailableError(f"shard {directory} is not on this worker's disk")
            if not _opened:  # this worker's first shard: compile the kernels once, now
                from tunetrace.kernels import compile_kernels

                compile_kernels()
            opened = _opened[key] = OpenShard(Path(directory), read_only=read_only, params=params)
            share_features_cache(list(_opened.values()))
    return function(opened, *args)


def run_on_shards(
    directories: list[str],
    read_only: bool,
    params: FingerprintParams,
    function: Callable[..., R],
    args: list[tuple[Any, ...]],
) -> list[Outcome]:
    """:func:`run_on_shard` on each of a worker's shards (what its
    :class:`~tunetrace.shard_hosts.ShardHost` runs): in turn, or all at once for a function
    marked :func:`together`.

    Returns
    -------
    outcomes : list of tuple of (bool, object)
        One per shard: ``(True, answer)``, or ``(False, exception)`` for a shard that raised
        (the others still answer; the caller decides what each exception means).
    """
    outcomes: dict[int, Outcome] = {}
    grouped = getattr(function, TOGETHER, None)
    if grouped is not None and len(directories) > 1:
        opened = {}
        for number, directory in enumerate(directories):
            try:
                opened[number] = run_on_shard(directory, read_only, params, _the_shard)
            except Exception as exc:
                outcomes[number] = _raised(exc)
        outcomes.update(
            (number, answer if answer[0] else _raised(answer[1]))
            for number, answer in _run_together(grouped, opened, dict(enumerate(args))).items()
        )
    for number, (directory, shard_args) in enumerate(zip(directories, args, strict=True)):
        if number in outcomes:
            continue
        try:
            outcomes[number] = (True, run_on_shard(directory, read_only, params, function,
                                                   *shard_args))  # fmt: skip
        except Exception as exc:  # sent back as a value: one shard's fault is not the others'
            outcomes[number] = _raised(exc)
    return [outcomes[number] for number in range(len(directories))]


def together(
    grouped: Callable[[list[OpenShard], list[tuple[Any, ...]]], list[Outcome]],
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Mark a shard function as one a process holding several of the shards it is asked of
    may run for all of them at once.

    Parameters
    ----------
    grouped : callable
        ``grouped(shards, args)`` gives each shard's outcome as :func:`run_on_shards` does:
        ``(True, answer)`` with the answer ``function(shard, *args[i])`` would give, or
        ``(False, exception)``. Should it raise, each shard is run on its own instead.

    Returns
    -------
    mark : callable
        A decorator that marks the function and returns it unchanged.
    """

    def marked(function: Callable[..., R]) -> Callable[..., R]:
        setattr(function, TOGETHER, grouped)
        return function

    return marked


#: The attribute naming a shard function's way of running on several shards at once.
TOGETHER = "on_shards_together"


def _run_together(
    grouped: Callable[[list[OpenShard], list[tuple[Any, ...]]], list[Outcome]],
    opened: dict[int, OpenShard],
    args: dict[int, tuple[Any, ...]],
) -> dict[int, Outcome]:
    """``grouped`` (see :func:`together`) on the shards ``opened`` (by number), if two or
    more: each one's outcome; none when it raised (logged: each shard then runs on its
    own)."""
    if len(opened) < 2:
        return {}
    numbers = sorted(opened)
    try:
        answers = grouped([opened[n] for n in numbers], [args[n] for n in numbers])
        return dict(zip(numbers, answers, strict=True))
    except Exception:
        logger.warning("shards could not be run together; each runs on its own", exc_info=True)
        return {}


def _the_shard(shard: OpenShard) -> OpenShard:
    return shard


def _raised(exc: BaseException) -> Outcome:
    if not any("on Dask worker process" in note for note in getattr(exc, "__notes__", [])):
        exc.add_note(
            f"on Dask worker process {os.getpid()}:\n{''.join(traceback.format_exception(exc))}"
        )
    return (False, exc)


def share_features_cache(shards: list[OpenShard]) -> None:
    """Split one process's budget of decoded reference features (what one catalogue keeps,
    :data:`~tunetrace.index.catalogue.FEATURES_CACHE_BYTES`) between its open shards, so a
    worker holding many shards holds no more than one catalogue would."""
    for shard in shards:
        shard.catalogue.features_cache_bytes = FEATURES_CACHE_BYTES // len(shards)


def opened_shards() -> list[str]:
    """Shard directories this process has open (for tests and diagnostics)."""
    with _opened_lock:
        return sorted(directory for directory, _ in _opened)


def shard_name(directory: Path) -> str:
    """A shard's short name: its generation folder and directory (``g1/shard-003``)."""
    return f"{directory.parent.name}/{directory.name}"


def _unavailable_message(failures: list[str], shards: int) -> str:
    shown = "; ".join(failures[:3]) + (
        f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    )
    return (
        f"{len(failures)} of {shards} shard(s) unavailable, so no complete answer can be "
        f"given: {shown}"
    )


#: Errors that are about the request or one reference, not the shard: they pass through
#: unchanged.
_NOT_SHARD_FAULTS = (
    BadInputError, ReferenceNotFoundError, DuplicateReferenceError, DamagedReferenceError
)
