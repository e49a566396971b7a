"""A process killed outright (SIGKILL, the out-of-memory killer) leaves no worker behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hostile_client import child_processes, server_processes
from tests.live_server import free_port, running_server

KEYS = "worker-test-read-key:read"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_all_end(pids: list[int], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not [pid for pid in pids if alive(pid)], f"workers {pids} outlived their parent"


def test_a_server_killed_outright_leaves_no_worker_behind(
    built_catalogue: Path, tmp_path: Path
) -> None:
    catalogue = tmp_path / "catalogue"
    shutil.copytree(built_catalogue, catalogue)
    with running_server(catalogue, api_keys=KEYS, workers=2, max_queue=0) as url:
        server, workers = server_processes(int(url.rsplit(":", 1)[1]))
        assert len(workers) == 2, workers
        os.kill(server, signal.SIGKILL)
        assert_all_end(workers)


def test_a_server_killed_while_its_workers_start_leaves_none_behind(
    built_catalogue: Path, tmp_path: Path
) -> None:
    """Killed as soon as its worker processes exist, long before they have opened the
    catalogue (they take seconds to import): they still end."""
    catalogue = tmp_path / "catalogue"
    shutil.copytree(built_catalogue, catalogue)
    command = [sys.executable, "-m", "tunetrace.cli", "serve", "-c", str(catalogue),
               "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
    env = {**os.environ, "TUNETRACE_API_KEYS": KEYS, "TUNETRACE_WORKERS": "2"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen(command, env=env, **quiet)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while not workers and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.02)
            workers = child_processes(server.pid, "spawn_main")
        assert workers, "the server started no worker process"
        server.kill()
        server.wait(timeout=30)
        time.sleep(0.5)  # any worker spawned meanwhile is there now
        assert_all_end(workers)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_an_add_killed_outright_leaves_no_worker_behind(song_folder: Path, tmp_path: Path) -> None:
    many = tmp_path / "many"
    for copy in range(12):  # enough work that the pool is still busy when the kill comes
        shutil.copytree(song_folder, many / f"copy{copy}")
    command = [sys.executable, "-m", "tunetrace.cli", "add", "-c", str(tmp_path / "catalogue"),
               "--workers", "2", str(many)]  # fmt: skip
    adding = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and adding.poll() is None:
            time.sleep(0.05)
            workers = child_processes(adding.pid)
        if adding.poll() is not None:
            pytest.fail("add finished before its two workers were seen: give it more files")
        assert len(workers) == 2, workers
        adding.kill()
        adding.wait(timeout=30)
        assert_all_end(workers)
    finally:
        if adding.poll() is None:
            adding.kill()
            adding.wait()
