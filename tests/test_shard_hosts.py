"""How shard hosts are made and how their calls are packed, without a cluster: a client
that records what it is asked, and the worker's side of a call run in this process."""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunetrace.errors import ShardUnavailableError
from tunetrace.shard_hosts import CLOSING, ShardHosts, call_payload, read_answer, run_payload


class _Future:
    """A host's future that is done (raising ``error`` when read) or never done."""

    def __init__(self, error: Exception | None, done: bool = True) -> None:
        self.error, self._done, self.released = error, done, False
        self.status = "error" if error else ("finished" if done else "pending")

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> object:
        if self.error is not None:
            raise self.error
        return "actor"

    def release(self) -> None:
        self.released = True


class _Client:
    """Records the hosts it is asked to make; each one made as ``make()`` says."""

    status = "running"

    def __init__(self, make) -> None:
        self.make, self.submitted = make, []

    def submit(self, *args: object, **kwargs: object) -> _Future:
        future = self.make()
        self.submitted.append(future)
        return future

    @contextlib.contextmanager
    def as_current(self) -> Iterator[None]:
        yield


def test_a_host_that_fails_to_be_made_is_made_again_next_time() -> None:
    client = _Client(lambda: _Future(ModuleNotFoundError("no module named tunetrace")))
    hosts = ShardHosts(client, lambda: {"w1"})
    for _ in range(2):
        found = hosts.get(["w1"], time.monotonic() + 30)
        assert "could not make a shard host" in found["w1"]
    assert len(client.submitted) == 2 and all(f.released for f in client.submitted)


def test_a_host_late_for_one_query_is_kept_for_the_next() -> None:
    client = _Client(lambda: _Future(None, done=False))
    hosts = ShardHosts(client, lambda: {"w1"})
    for _ in range(2):  # each query gives up at its own deadline; the host is asked once
        assert "in time" in hosts.get(["w1"], time.monotonic())["w1"]
    assert len(client.submitted) == 1 and not client.submitted[0].released


def test_hosts_of_a_worker_that_left_and_of_a_closed_catalogue() -> None:
    client = _Client(lambda: _Future(None, done=False))
    hosts = ShardHosts(client, lambda: set())  # the worker is gone
    assert hosts.get(["w1"], time.monotonic() + 30) == {"w1": None}
    assert client.submitted[0].released
    done = _Client(lambda: _Future(None))
    hosts = ShardHosts(done, lambda: {"w1"})
    assert hosts.get(["w1"], time.monotonic() + 30) == {"w1": "actor"}
    assert hosts.get(["w1"], time.monotonic() + 30) == {"w1": "actor"}  # kept
    assert len(done.submitted) == 1
    hosts.close()
    assert done.submitted[0].released
    with pytest.raises(ShardUnavailableError, match="closed"):
        hosts.get(["w1"], time.monotonic() + 30)


def _shard_name(shard: object) -> str:
    return "unused"


def test_a_call_that_waited_past_its_time_is_skipped_and_answers_are_read_apart(
    tmp_path: Path,
) -> None:
    from tunetrace.fingerprint.params import FingerprintParams

    payload = call_payload(
        [str(tmp_path / "a"), str(tmp_path / "b")], True, FingerprintParams(), _shard_name,
        [(), ()], 5.0,
    )  # fmt: skip
    late = read_answer(run_payload(payload, time.monotonic() - 10))
    assert [answered for answered, _ in late] == [False, False]
    assert "past the query's time" in str(late[0][1])
    # shards missing on this worker's disk: each shard's own error, the call still answers
    missing = read_answer(run_payload(payload, time.monotonic()))
    assert all(not answered and "not on this worker's disk" in str(error)
               for answered, error in missing)  # fmt: skip
    assert read_answer(pickle.dumps(CLOSING)) is None
    assert "could not be read" in read_answer(run_payload(b"not a pickle", time.monotonic()))
