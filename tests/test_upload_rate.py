"""Upload bodies must keep up a rate, and spooled uploads a killed server left are swept."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from tunetrace.api.errors import ApiError
from tunetrace.api.upload import _body_chunks, sweep_stale_uploads


class _Trickle:
    """A request whose body arrives ``chunk`` bytes every ``pause_s`` seconds, ``count`` times."""

    def __init__(self, chunk: int, pause_s: float, count: int) -> None:
        self.chunk, self.pause_s, self.left = chunk, pause_s, count

    async def receive(self) -> dict:
        await asyncio.sleep(self.pause_s)
        self.left -= 1
        return {"type": "http.request", "body": b"x" * self.chunk, "more_body": self.left > 0}


async def _drain(request: _Trickle, **limits: float) -> int:
    async def drained() -> int:
        received = 0
        async for chunk in _body_chunks(request, max_bytes=10**9, **limits):  # type: ignore[arg-type]
            received += len(chunk)
        return received

    return await asyncio.wait_for(drained(), 30.0)  # without the rate rule: fails, not hangs


def test_a_body_trickling_under_the_rate_is_cut_off_after_its_grace() -> None:
    # a byte every 0.1 s never pauses as long as the idle timeout, but sends 10 bytes a second
    started = time.monotonic()
    with pytest.raises(ApiError) as refused:
        asyncio.run(_drain(_Trickle(1, 0.1, 10_000), idle_timeout_s=1.0, min_bytes_per_s=100.0))
    assert refused.value.status == 408
    assert "too slow" in refused.value.message and "0.1 kB/s" in refused.value.message
    assert 1.0 <= time.monotonic() - started < 3.0  # the grace, plus 1 s per 100 bytes sent


def test_a_body_at_the_rate_or_faster_is_received_whole() -> None:
    # 200 bytes every 0.1 s (2 kB/s) for 3 s: past the 1-s grace, above the 100 B/s floor
    received = asyncio.run(
        _drain(_Trickle(200, 0.1, 30), idle_timeout_s=1.0, min_bytes_per_s=100.0)
    )
    assert received == 6000


def test_a_pause_longer_than_the_idle_timeout_is_still_refused_as_a_pause() -> None:
    with pytest.raises(ApiError) as refused:
        asyncio.run(_drain(_Trickle(10_000, 1.5, 3), idle_timeout_s=1.0, min_bytes_per_s=100.0))
    assert refused.value.status == 408 and "sent nothing for 1 s" in refused.value.message


def test_uploads_a_killed_server_left_are_swept_and_others_kept(tmp_path: Path) -> None:
    old = tmp_path / "tunetrace-upload-abc.flac"
    fresh = tmp_path / "tunetrace-upload-def.mp3"  # another server's upload in progress
    other = tmp_path / "notes.txt"
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    for path in (old, other):
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert sweep_stale_uploads(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "tunetrace-upload-def.mp3"]
