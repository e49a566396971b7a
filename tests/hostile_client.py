"""A hostile HTTP client for tests and benchmarks: raw multipart bodies, endless and stalled
uploads, and the memory of a running server's processes (from ``/proc``).

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile

#: The API key and multipart boundary the helpers use unless told otherwise.
KEY = "hostile-audio-key"
BOUNDARY = "hostileboundary"


def multipart(filename: str, payload: bytes, *, close: bool = True) -> bytes:
    """A ``multipart/form-data`` body (boundary :data:`BOUNDARY`) with one ``file`` part.

    Parameters
    ----------
    filename : str
    payload : bytes
    close : bool
        False leaves out the closing boundary.
    """
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode() if close else b""
    return head + payload + tail


def endless_part(name: str, filename: str | None = None) -> Iterator[bytes]:
    """A multipart body whose one part never ends (64-KB chunks until the server stops it)."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    yield f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
    chunk = b"\x55" * 65536
    while True:
        yield chunk


def write_silence_flac(path: Path, *, seconds: int, rate: int, channels: int) -> Path:
    """A FLAC of digital silence: tiny on disk whatever its rate, channels and length."""
    block = np.zeros((rate, channels), dtype=np.int16)
    with soundfile.SoundFile(
        str(path), "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16"
    ) as handle:
        for _ in range(seconds):
            handle.write(block)
    return path


def processes() -> dict[int, tuple[int, str]]:
    """Every running process: its parent's pid and its command line, by pid."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int(_status_fields(int(entry.name))["PPid"])
        except (OSError, KeyError, ValueError):
            continue
        found[int(entry.name)] = (parent, command)
    return found


def child_processes(parent: int, command_part: str = "") -> list[int]:
    """The processes ``parent`` started whose command line holds ``command_part``, sorted."""
    return sorted(
        pid
        for pid, (their_parent, command) in processes().items()
        if their_parent == parent and command_part in command
    )


def server_processes(port: int) -> tuple[int, list[int]]:
    """The ``tunetrace serve`` process listening on ``port`` and its worker processes.

    Returns
    -------
    server_pid : int
    worker_pids : list of int
        Its children started by multiprocessing's spawn (not the resource tracker).
    """
    servers = [
        pid
        for pid, (_, command) in processes().items()
        if "tunetrace.cli serve" in command and f"--port {port}" in command
    ]
    if not servers:
        raise RuntimeError(f"no tunetrace serve process on port {port}")
    return servers[0], child_processes(servers[0], "spawn_main")


def _status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def memory_mb(pid: int) -> tuple[float, float]:
    """``(resident, peak resident)`` of a process in MB (VmRSS and VmHWM)."""
    fields = _status_fields(pid)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak(pid: int) -> None:
    """Reset a process's peak resident set (VmHWM) to its current one (Linux, own processes)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def post_raw(
    port: int, body: bytes | Iterator[bytes], *, key: str = KEY, limit_bytes: int = 2**30
) -> tuple[int, dict, float]:
    """``POST /v1/match`` over a plain socket, watching for the answer while the body goes out.

    Parameters
    ----------
    port : int
        The server's port on 127.0.0.1.
    body : bytes or iterator of bytes
        Bytes go with a Content-Length; an iterator goes chunked, until the server answers,
        stops reading, or ``limit_bytes`` were sent.
    key : str
        API key with the read role.

    Returns
    -------
    status : int
        0 if the connection closed without an answer.
    answer : dict
        The JSON body (empty if none).
    seconds : float
        From the first byte sent to the answer's status line.
    """
    chunked = not isinstance(body, bytes)
    head = (
        f"POST /v1/match HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(body)}\r\n")
        + "\r\n"
    ).encode()
    pieces: Iterator[bytes] = (
        (b"%x\r\n%s\r\n" % (len(c), c) for c in body)
        if chunked
        else (body[i : i + 65536] for i in range(0, len(body), 65536))
    )
    received = b""
    started = time.perf_counter()
    answered_at = None
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(head)
        sent = 0
        for piece in pieces:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable or sent > limit_bytes:
                break
            try:
                sock.sendall(piece)
            except OSError:  # the server answered and closed
                break
            sent += len(piece)
        else:
            if chunked:
                with contextlib.suppress(OSError):
                    sock.sendall(b"0\r\n\r\n")
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            if answered_at is None:
                answered_at = time.perf_counter()
            received += data
            header, _, rest = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", header)
            if length and len(rest) >= int(length.group(1)):
                break
    seconds = (answered_at or time.perf_counter()) - started
    if not received:
        return 0, {}, seconds
    header, _, rest = received.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    try:
        answer = json.loads(rest) if rest else {}
    except ValueError:
        answer = {}
    return status, answer, seconds


def _request_head(port: int, content_length: int, key: str) -> bytes:
    return (
        f"POST /v1/match HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def stalled_uploads(
    port: int, upload_dir: Path, *, connections: int = 20, wait_s: float = 2.0, key: str = KEY
) -> dict[str, object]:
    """Open uploads that send their headers and stall; count spooled and refused ones.

    Parameters
    ----------
    port : int
        The server's port on 127.0.0.1.
    upload_dir : Path
        The server's ``TUNETRACE_UPLOAD_DIR`` (a spooled upload is a file there).
    connections : int
    wait_s : float
        How long to wait for answers while no body is sent.
    key : str
        API key with the read role.

    Returns
    -------
    result : dict
        ``connections``, ``spooled`` (files in the upload folder while they stall),
        ``refused_503`` (answered 503 before any body byte), ``other_answers`` and
        ``seconds_to_refusals`` (from the first connection to the last answer).
    """
    sockets: list[socket.socket] = []
    answers: dict[int, bytes] = {}
    answered_after: list[float] = []
    try:
        started = time.perf_counter()
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(_request_head(port, 500_000, key))
            sockets.append(sock)
        deadline = time.monotonic() + wait_s
        waiting = set(range(connections))
        while waiting and time.monotonic() < deadline:
            readable, _, _ = select.select(
                [sockets[i] for i in waiting], [], [], max(0.0, deadline - time.monotonic())
            )
            for sock in readable:
                index = sockets.index(sock)
                answers[index] = sock.recv(65536)
                answered_after.append(time.perf_counter() - started)
                waiting.discard(index)
        spooled = len(list(upload_dir.glob("tunetrace-upload-*")))
    finally:
        for sock in sockets:
            sock.close()
    statuses = [data.split(b" ", 2)[1].decode() if data else "closed" for data in answers.values()]
    return {
        "connections": connections,
        "spooled": spooled,
        "refused_503": statuses.count("503"),
        "other_answers": len(statuses) - statuses.count("503"),
        "seconds_to_refusals": round(max(answered_after, default=0.0), 3),
    }
