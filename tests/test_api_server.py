"""The HTTP API as deployed: ``tunetrace serve`` in its own process, called over loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import librosa
import numpy as np
import pytest
import soundfile

from tests.conftest import SAMPLE_RATE, patch_wav_header, synth_song, write_audio
from tests.hostile_client import (
    BOUNDARY,
    endless_part,
    memory_mb,
    multipart,
    post_raw,
    reset_peak,
    server_processes,
    stalled_uploads,
    write_silence_flac,
)
from tests.live_server import running_server

READ_KEY = "server-read-key-42"
WRITE_KEY = "server-write-key-42"
READ = {"Authorization": f"Bearer {READ_KEY}"}
WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}
KEYS = f"{READ_KEY}:read,{WRITE_KEY}:write"


@pytest.fixture(scope="module")
def server_catalogue(tmp_path_factory: pytest.TempPathFactory, built_catalogue: Path) -> Path:
    directory = tmp_path_factory.mktemp("served") / "catalogue"
    shutil.copytree(built_catalogue, directory)
    return directory


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "server.log"


@pytest.fixture(scope="module")
def base_url(server_catalogue: Path, server_log: Path) -> Iterator[str]:
    with running_server(
        server_catalogue, api_keys=KEYS, workers=1, max_queue=0, log_path=server_log
    ) as url:
        yield url


@pytest.fixture(scope="module")
def long_query(tmp_path_factory: pytest.TempPathFactory, songs: dict) -> Path:
    """song3 sped up by 1.1 (resampled), looped to 60 s so that matching takes a while."""
    sped = librosa.resample(songs["song3"], orig_sr=SAMPLE_RATE, target_sr=int(SAMPLE_RATE / 1.1))
    looped = librosa.util.fix_length(sped, size=60 * SAMPLE_RATE, mode="wrap")
    return write_audio(tmp_path_factory.mktemp("long") / "long.flac", looped)


def _upload(path: Path) -> dict:
    return {"file": (path.name, path.read_bytes())}


def test_match_over_http(base_url: str, long_query: Path) -> None:
    response = httpx.post(
        f"{base_url}/v1/match", headers=READ, files=_upload(long_query), timeout=120
    )
    assert response.status_code == 200, response.text
    best = response.json()["matches"][0]
    assert best["reference_id"] == "song3"
    assert best["tempo_ratio"] == pytest.approx(1.1, abs=0.02)
    assert best["alteration"] == "speed_change"


def test_health_answers_while_the_worker_is_busy_and_excess_requests_get_503(
    base_url: str, long_query: Path
) -> None:
    results: dict[str, httpx.Response] = {}

    def slow_match() -> None:
        results["first"] = httpx.post(
            f"{base_url}/v1/match", headers=READ, files=_upload(long_query), timeout=120
        )

    worker = threading.Thread(target=slow_match)
    worker.start()
    busy_seen = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and worker.is_alive():
        health = httpx.get(f"{base_url}/v1/health", timeout=5).json()
        if health["busy"] >= 1:
            busy_seen = health
            break
        time.sleep(0.01)
    assert busy_seen is not None, "health never reported the running match"
    # one worker, no queue: a second request is refused at once, not queued
    refused = httpx.post(f"{base_url}/v1/match", headers=READ, files=_upload(long_query))
    worker.join()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "busy"
    assert int(refused.headers["retry-after"]) >= 1
    assert results["first"].status_code == 200


def test_reference_added_by_the_cli_is_visible_without_restart(
    base_url: str, server_catalogue: Path, tmp_path: Path
) -> None:
    song = synth_song(91, duration_s=35)
    source = write_audio(tmp_path / "cli-song.flac", song)
    added = subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", "add", "-c", str(server_catalogue), str(source),
         "--id", "cli/added"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    got = httpx.get(f"{base_url}/v1/references/cli/added", headers=READ)
    assert got.status_code == 200
    shifted = librosa.effects.pitch_shift(song, sr=SAMPLE_RATE, n_steps=-3)[: 15 * SAMPLE_RATE]
    query = write_audio(tmp_path / "q.ogg", shifted)
    report = httpx.post(f"{base_url}/v1/match", headers=READ, files=_upload(query), timeout=60)
    best = report.json()["matches"][0]
    assert best["reference_id"] == "cli/added"
    assert best["pitch_shift_semitones"] == pytest.approx(-3, abs=0.3)


def test_reference_added_over_http_is_matched_by_the_next_request(
    base_url: str, tmp_path: Path
) -> None:
    song = synth_song(92, duration_s=35)
    source = write_audio(tmp_path / "api-song.wav", song)
    added = httpx.post(
        f"{base_url}/v1/references", headers=WRITE, files=_upload(source),
        data={"id": "api/added", "title": "Over HTTP"}, timeout=60,
    )  # fmt: skip
    assert added.status_code == 201, added.text
    query = write_audio(
        tmp_path / "q.wav", librosa.effects.time_stretch(song, rate=0.85)[: 14 * SAMPLE_RATE]
    )
    report = httpx.post(f"{base_url}/v1/match", headers=READ, files=_upload(query), timeout=60)
    assert report.json()["matches"][0]["reference_id"] == "api/added"


def test_huge_upload_is_cut_off_and_the_server_stays_up(base_url: str) -> None:
    boundary = "hugeboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.wav"'
            "\r\n\r\n"
        ).encode()
        for _ in range(4000):  # 256 MB offered, over the 200 MB default limit
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = httpx.post(
            f"{base_url}/v1/match",
            headers={**READ, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
            timeout=120,
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "upload_too_large"
    except httpx.TransportError:
        pass  # the server may close the connection after answering 413 mid-upload
    assert httpx.get(f"{base_url}/v1/health").status_code == 200


def test_access_log_is_structured_and_never_shows_keys(base_url: str, server_log: Path) -> None:
    httpx.get(f"{base_url}/v1/references", headers={**READ, "X-Request-ID": "trace-me-123"})
    httpx.get(f"{base_url}/v1/references", headers={"Authorization": "Bearer wrong-key-77"})
    time.sleep(0.2)
    log = server_log.read_text()
    assert '"request_id": "trace-me-123"' in log
    assert '"route": "/v1/references", "status": 401' in log
    for secret in (READ_KEY, WRITE_KEY, "wrong-key-77"):
        assert secret not in log


def test_contract_fuzzing_finds_no_server_errors(base_url: str) -> None:
    """schemathesis against the live server: every operation, all checks but one.

    ``positive_data_acceptance`` is left out: the schema says "a binary file" and cannot say
    "decodable audio", so random bytes are rightly refused with 415.
    """
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")), "run",
            f"{base_url}/openapi.json",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "-H", f"Authorization: Bearer {WRITE_KEY}",
            "--max-examples", "25", "--seed", "20261123", "--workers", "1",
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None and int(generated.group(1)) >= 100, output[-2000:]


# --- hostile clients and hostile audio ------------------------------------------------------

GUARDED_LIMIT_MB = 1.0
IDLE_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def guarded_url(
    tmp_path_factory: pytest.TempPathFactory, server_catalogue: Path, spool_dir: Path
) -> Iterator[str]:
    """One worker and a queue of two (3 admission slots), 1-MB uploads, 3-s idle timeout."""
    with running_server(
        server_catalogue,
        api_keys=KEYS,
        workers=1,
        max_queue=2,
        extra_env={
            "TUNETRACE_UPLOAD_DIR": str(spool_dir),
            "TUNETRACE_MAX_UPLOAD_MB": str(GUARDED_LIMIT_MB),
            "TUNETRACE_UPLOAD_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        },
        log_path=tmp_path_factory.mktemp("guarded-logs") / "server.log",
    ) as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_stalled_uploads_beyond_capacity_are_refused_before_their_body(
    guarded_url: str, spool_dir: Path
) -> None:
    result = stalled_uploads(
        _port(guarded_url), spool_dir, connections=20, wait_s=2.0, key=READ_KEY
    )
    assert result["spooled"] == 3, result  # workers + max_queue
    assert result["refused_503"] == 17, result
    assert result["other_answers"] == 0, result
    # the stalled clients went away: their slots and spooled files are released
    assert _wait_for(lambda: httpx.get(f"{guarded_url}/v1/health").json()["admitted"] == 0)
    assert _wait_for(lambda: not any(spool_dir.iterdir()))


def test_an_upload_that_stalls_is_refused_after_the_idle_timeout(
    guarded_url: str, spool_dir: Path
) -> None:
    port = _port(guarded_url)
    with socket.create_connection(("127.0.0.1", port), timeout=IDLE_TIMEOUT_S + 10) as sock:
        sock.sendall(
            f"POST /v1/match HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {READ_KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Content-Length: 500000\r\n\r\n".encode()
            + multipart("slow.wav", b"RIFF")[:120]
        )
        started = time.monotonic()
        answer = sock.recv(65536)
        waited = time.monotonic() - started
        while chunk := sock.recv(65536):  # the server closes after answering
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"upload_timeout"' in answer
    assert IDLE_TIMEOUT_S - 0.5 < waited < IDLE_TIMEOUT_S + 5
    assert _wait_for(lambda: httpx.get(f"{guarded_url}/v1/health").json()["admitted"] == 0)
    assert not any(spool_dir.iterdir())


def test_bytes_of_ignored_parts_count_against_the_upload_limit(
    guarded_url: str, spool_dir: Path
) -> None:
    junk = b"x" * int(1.2 * GUARDED_LIMIT_MB * 1_000_000)  # over 1 MB + 64 KB of framing
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'.encode()
        + junk
        + b"\r\n"
        + multipart("tiny.wav", b"RIFF0000WAVE")
    )
    # chunked, so that only counting the streamed bytes can refuse it
    status, answer, _ = post_raw(
        _port(guarded_url),
        (body[i : i + 65536] for i in range(0, len(body), 65536)),
        key=READ_KEY,
    )
    assert status == 413, answer
    assert answer["error"]["code"] == "upload_too_large"
    status, answer, _ = post_raw(_port(guarded_url), endless_part("junk"), key=READ_KEY)
    assert status == 413 and answer["error"]["code"] == "upload_too_large"
    assert _wait_for(lambda: not any(spool_dir.iterdir()))


def test_a_body_without_its_closing_boundary_is_refused_and_not_stored(
    base_url: str, tmp_path: Path
) -> None:
    source = write_audio(tmp_path / "unclosed.flac", synth_song(93, duration_s=35))
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="id"\r\n\r\nunclosed/ref\r\n'
    ).encode() + multipart(source.name, source.read_bytes(), close=False)
    response = httpx.post(
        f"{base_url}/v1/references",
        headers={**WRITE, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=body,
        timeout=60,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_request"
    assert httpx.get(f"{base_url}/v1/references/unclosed/ref", headers=READ).status_code == 404
    closed = httpx.post(
        f"{base_url}/v1/references",
        headers={**WRITE, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=body + f"\r\n--{BOUNDARY}--\r\n".encode(),
        timeout=60,
    )
    assert closed.status_code == 201, closed.text  # the same body, closed, is stored


def test_channel_and_rate_bombs_are_refused_fast_with_bounded_worker_memory(
    base_url: str, tmp_path: Path
) -> None:
    # 30 s of 8 channels at 655,350 Hz: 630 MB of float32 if decoded whole, 170 KB of FLAC
    rate_bomb = write_silence_flac(tmp_path / "bomb.flac", seconds=30, rate=655350, channels=8)
    wide = tmp_path / "wide.wav"
    soundfile.write(str(wide), np.zeros(8000, np.int16), 8000, subtype="PCM_16")
    patch_wav_header(wide, channels=4096, rate=8000)
    lying = tmp_path / "lying.wav"
    soundfile.write(str(lying), np.zeros((48000, 8), np.int16), 192000, subtype="PCM_16")
    patch_wav_header(lying, channels=8, rate=192000, data_bytes=0xFFFFFFF0)
    _, workers = server_processes(_port(base_url))
    assert len(workers) == 1
    for path, codes in (
        (rate_bomb, {"unsupported_audio"}),
        (wide, {"unsupported_audio"}),
        (lying, {"audio_too_short", "audio_too_long"}),
    ):
        resident_before, _ = memory_mb(workers[0])
        reset_peak(workers[0])
        started = time.perf_counter()
        response = httpx.post(
            f"{base_url}/v1/match", headers=READ, files=_upload(path), timeout=120
        )
        elapsed = time.perf_counter() - started
        _, peak_after = memory_mb(workers[0])
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["code"] in codes, response.text
        assert elapsed < 2.0, f"{path.name}: answered after {elapsed:.2f} s"
        growth = peak_after - resident_before
        assert growth < 200, f"{path.name}: the worker's peak memory rose {growth:.0f} MB"
    message = httpx.post(f"{base_url}/v1/match", headers=READ, files=_upload(rate_bomb)).json()
    assert "655350 Hz is not accepted" in message["error"]["message"]


def test_a_client_that_disconnects_mid_upload_is_no_server_error(
    base_url: str, server_log: Path
) -> None:
    with socket.create_connection(("127.0.0.1", _port(base_url)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/match HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {READ_KEY}\r\n"
            f"X-Request-ID: gone-mid-upload\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Content-Length: 1000000\r\n\r\n".encode()
            + multipart("partial.wav", b"\0" * 100_000)[:100_000]
        )
        time.sleep(0.3)
    line = None
    deadline = time.monotonic() + 5
    while line is None and time.monotonic() < deadline:
        time.sleep(0.1)
        line = next(
            (x for x in server_log.read_text().splitlines() if "gone-mid-upload" in x), None
        )
    assert line is not None, "no access-log line for the request"
    assert '"status": 499' in line, line
    log = server_log.read_text()
    assert "client disconnected during upload" in log
    assert "Traceback" not in log
    assert 'status="500"' not in httpx.get(f"{base_url}/metrics").text
    assert httpx.get(f"{base_url}/v1/health").json()["admitted"] == 0


def test_made_up_methods_do_not_add_metric_series(base_url: str) -> None:
    def series() -> list[str]:
        text = httpx.get(f"{base_url}/metrics").text
        return [x.rsplit(" ", 1)[0] for x in text.splitlines() if not x.startswith("#")]

    with httpx.Client() as client:
        for index in range(3):
            client.request(f"MADEUP{index}", f"{base_url}/v1/health")
            client.request(f"MADEUP{index}", f"{base_url}/nowhere/{index}")
        before = series()
        for index in range(3, 40):
            client.request(f"MADEUP{index}", f"{base_url}/v1/health")
            client.request(f"MADEUP{index}", f"{base_url}/nowhere/{index}")
    after = series()
    assert after == before, sorted(set(after) - set(before))[:10]
    methods = {m for x in after for m in re.findall(r'method="([^"]*)"', x)}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    assert "other" in methods
    routes = {r for x in after for r in re.findall(r'route="([^"]*)"', x)}
    assert not any("nowhere" in route for route in routes)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("read:s3cr3t-Qz-991", "does not end in ':read' or ':write'"),
        ("s3cr3t Qz 991:read", "whitespace or characters outside printable ASCII"),
        ("s3cr3t-Qü-991:write", "whitespace or characters outside printable ASCII"),
        ("s3cr3t-Qz-991:admin", "does not end in ':read' or ':write'"),
    ],
)
def test_bad_api_keys_stop_serve_without_showing_them(
    tmp_path: Path, keys: str, expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", "serve", "-c", str(tmp_path / "c"),
         "--port", "9"],
        env={**os.environ, "TUNETRACE_API_KEYS": keys},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "API key #1" in output and expected in output, output
    for part in ("s3cr3t", "Qz", "991", "Qü", "admin"):
        assert part not in output, output


@pytest.mark.parametrize("kind", ["garbage database", "a file"])
def test_a_catalogue_that_cannot_be_opened_stops_serve_with_one_line(
    tmp_path: Path, kind: str
) -> None:
    if kind == "a file":
        target = tmp_path / "song.wav"
        target.write_bytes(b"RIFF")
    else:
        target = tmp_path / "c"
        target.mkdir()
        (target / "catalogue.sqlite").write_bytes(bytes(range(256)) * 20)
    result = subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", "serve", "-c", str(target), "--port", "9"],
        env={**os.environ, "TUNETRACE_API_KEYS": "a-key:read"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # as every command given such a catalogue
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert str(target) in result.stderr


def test_a_port_in_use_stops_serve_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tunetrace.cli", "serve", "-c", str(tmp_path / "c"),
             "--port", str(port)],
            env={**os.environ, "TUNETRACE_API_KEYS": "a-key:read"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1, result.stderr  # a failure, as the CLI contract numbers them
    assert "address already in use" in result.stderr.lower(), result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the HTTP server did not start on 127.0.0.1:{port} (the line above says why)"
    ), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
