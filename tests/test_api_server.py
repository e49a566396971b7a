"""The HTTP API as deployed: ``tunetrace serve`` in its own process, called over loopback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import librosa
import pytest

from benchmarks.live_server import running_server
from tests.conftest import SAMPLE_RATE, synth_song, write_audio

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
