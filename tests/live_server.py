"""Start ``tunetrace serve`` as a real process on a loopback port (for tests and the load test)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_server(
    catalogue: Path,
    *,
    api_keys: str,
    workers: int = 2,
    max_queue: int = 8,
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
    startup_timeout_s: float = 60.0,
) -> Iterator[str]:
    """Run the HTTP API in a child process until the block ends.

    Parameters
    ----------
    catalogue : Path
    api_keys : str
        ``TUNETRACE_API_KEYS`` for the server.
    workers, max_queue : int
    extra_env : dict, optional
        More ``TUNETRACE_*`` settings.
    log_path : Path, optional
        Where the server's output goes (default: discarded).
    startup_timeout_s : float

    Yields
    ------
    base_url : str
        ``http://127.0.0.1:PORT``, answering ``/v1/health``.
    """
    port = free_port()
    env = {
        **os.environ,
        "TUNETRACE_API_KEYS": api_keys,
        "TUNETRACE_WORKERS": str(workers),
        "TUNETRACE_MAX_QUEUE": str(max_queue),
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "tunetrace.cli", "serve",
        "-c", str(catalogue), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log_path.open("ab")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_healthy(base_url, process, startup_timeout_s)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_healthy(base_url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tunetrace serve exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"tunetrace serve did not answer within {timeout_s:.0f} s")
