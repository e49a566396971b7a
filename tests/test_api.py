"""The HTTP API in process (TestClient): contract, auth, limits, errors, catalogue writes.

The worker processes, the catalogue, decoding and FAISS are all real; only the HTTP transport
is in-process. ``test_api_server.py`` repeats the essentials over a real socket.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import librosa
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from tunetrace.api.app import create_app
from tunetrace.api.settings import ApiSettings, parse_api_keys

from tests.conftest import SAMPLE_RATE, synth_song, white_noise, write_audio

READ_KEY = "read-key-0123456789"
WRITE_KEY = "write-key-0123456789"
READ = {"Authorization": f"Bearer {READ_KEY}"}
WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}
MAX_UPLOAD_MB = 2.0


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, built_catalogue: Path, upload_dir: Path
) -> Iterator[TestClient]:
    directory = tmp_path_factory.mktemp("api") / "catalogue"
    shutil.copytree(built_catalogue, directory)
    settings = ApiSettings(
        catalogue=directory,
        api_keys=f"{READ_KEY}:read,{WRITE_KEY}:write",
        workers=2,
        max_upload_mb=MAX_UPLOAD_MB,
        max_duration_s=120,
        upload_dir=upload_dir,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def stretched_query(tmp_path_factory: pytest.TempPathFactory, songs: dict) -> Path:
    """song2, time-stretched to 1.15x and pitch-shifted +2 semitones, 12 s, as MP3."""
    altered = librosa.effects.pitch_shift(
        librosa.effects.time_stretch(songs["song2"], rate=1.15), sr=SAMPLE_RATE, n_steps=2
    )
    return write_audio(tmp_path_factory.mktemp("q") / "upload.mp3", altered[: 12 * SAMPLE_RATE])


def _file(path: Path) -> dict:
    return {"file": (path.name, path.read_bytes())}


def test_match_reports_the_altered_copy(client: TestClient, stretched_query: Path) -> None:
    response = client.post("/v1/match", headers=READ, files=_file(stretched_query))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["query"] == "upload.mp3"
    assert 11.5 < report["duration_s"] < 12.5
    best = report["matches"][0]
    assert best["reference_id"] == "song2"
    assert best["tempo_ratio"] == pytest.approx(1.15, abs=0.02)
    assert best["pitch_shift_semitones"] == pytest.approx(2.0, abs=0.3)
    assert best["alteration"] == "time_stretch+pitch_shift"
    assert best["segments"] and best["coverage"] > 0.5
    assert response.headers["x-request-id"]
    assert float(response.headers["X-Tunetrace-Query-Tonality"]) >= 1.0
    assert "X-Tunetrace-Caution" not in response.headers


def test_match_query_parameters(client: TestClient, stretched_query: Path) -> None:
    loose = client.post(
        "/v1/match?min_score=0&top=3", headers=READ, files=_file(stretched_query)
    ).json()["matches"]
    assert 1 <= len(loose) <= 3, loose
    scores = [m["score"] for m in loose]
    assert scores == sorted(scores, reverse=True)
    # a bar just under the best score keeps the best match and nothing well below it
    bar = round(scores[0] - 0.001, 4)
    strict = client.post(
        f"/v1/match?min_score={bar}&top=3", headers=READ, files=_file(stretched_query)
    ).json()["matches"]
    assert strict and strict[0]["reference_id"] == loose[0]["reference_id"]
    assert all(m["score"] >= bar for m in strict)
    assert len(strict) == sum(score >= bar for score in scores)
    bad = client.post("/v1/match?top=0", headers=READ, files=_file(stretched_query))
    assert bad.status_code == 422
    assert "top" in bad.json()["error"]["message"]


def test_unknown_music_gives_an_empty_report(client: TestClient, tmp_path: Path) -> None:
    query = write_audio(tmp_path / "new.flac", synth_song(404, duration_s=12))
    response = client.post("/v1/match", headers=READ, files=_file(query))
    assert response.status_code == 200
    assert response.json()["matches"] == []
    assert float(response.headers["X-Tunetrace-Query-Tonality"]) > 2.0
    assert "X-Tunetrace-Caution" not in response.headers


def test_a_non_tonal_query_without_matches_gets_a_caution_header(
    client: TestClient, tmp_path: Path
) -> None:
    query = write_audio(tmp_path / "noise.flac", white_noise(11))
    response = client.post("/v1/match", headers=READ, files=_file(query))
    assert response.status_code == 200
    assert set(response.json()) == {"query", "duration_s", "elapsed_s", "matches"}
    assert response.json()["matches"] == []
    assert float(response.headers["X-Tunetrace-Query-Tonality"]) < 2.0
    assert "non-tonal" in response.headers["X-Tunetrace-Caution"]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer nope"}, 401, "unauthorized"),
        ({"Authorization": f"Basic {READ_KEY}"}, 401, "unauthorized"),
        ({"Authorization": "Bearer "}, 401, "unauthorized"),
    ],
)
def test_missing_or_invalid_keys_are_refused(
    client: TestClient, headers: dict, status: int, code: str
) -> None:
    response = client.get("/v1/references", headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_read_key_cannot_write(client: TestClient, songs: dict, tmp_path: Path) -> None:
    path = write_audio(tmp_path / "x.flac", songs["song1"])
    added = client.post("/v1/references", headers=READ, files=_file(path), data={"id": "x"})
    assert added.status_code == 403
    assert added.json()["error"]["code"] == "forbidden"
    assert client.delete("/v1/references/song1", headers=READ).status_code == 403
    assert client.get("/v1/references/song1", headers=READ).status_code == 200


def test_health_needs_no_key_and_touches_nothing(client: TestClient) -> None:
    body = client.get("/v1/health").json()
    assert body["status"] == "ok"
    assert body["workers"] == 2


def test_reference_lifecycle(client: TestClient, tmp_path: Path) -> None:
    song = synth_song(77, duration_s=40)
    path = write_audio(tmp_path / "new.flac", song)
    fields = {"id": "label/new-single", "title": "New single", "artist": "Band", "isrc": "XX1"}
    added = client.post("/v1/references", headers=WRITE, files=_file(path), data=fields)
    assert added.status_code == 201, added.text
    assert added.json()["id"] == "label/new-single"
    assert added.json()["duration_s"] == pytest.approx(40, abs=0.1)

    again = client.post("/v1/references", headers=WRITE, files=_file(path), data=fields)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "reference_exists"
    replaced = client.post(
        "/v1/references",
        headers=WRITE,
        files=_file(path),
        data={**fields, "title": "Renamed", "replace": "true"},
    )
    assert replaced.status_code == 201
    assert replaced.json()["title"] == "Renamed"

    # the next request can match it
    query = write_audio(
        tmp_path / "q.wav",
        librosa.resample(song, orig_sr=SAMPLE_RATE, target_sr=int(SAMPLE_RATE / 1.2)),
    )
    report = client.post("/v1/match", headers=READ, files=_file(query)).json()
    assert report["matches"][0]["reference_id"] == "label/new-single"

    got = client.get("/v1/references/label/new-single", headers=READ)
    assert got.status_code == 200 and got.json()["artist"] == "Band"
    listing = client.get("/v1/references?limit=2&offset=0", headers=READ).json()
    assert listing["total"] == 6 and len(listing["references"]) == 2

    assert client.delete("/v1/references/label/new-single", headers=WRITE).status_code == 204
    missing = client.get("/v1/references/label/new-single", headers=READ)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "reference_not_found"
    assert client.delete("/v1/references/label/new-single", headers=WRITE).status_code == 404
    report = client.post("/v1/match", headers=READ, files=_file(query)).json()
    assert all(m["reference_id"] != "label/new-single" for m in report["matches"])


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, "invalid_reference_id"),
        ({"id": "a" * 201}, "invalid_reference_id"),
        ({"id": "bad\x07id"}, "invalid_reference_id"),
        ({"id": "ok", "replace": "maybe"}, "invalid_field"),
        ({"id": "ok", "title": "t" * 1001}, "invalid_field"),
        ({"id": "ok", "artist": "a" * 1001}, "invalid_field"),
    ],
)
def test_reference_fields_are_checked(
    client: TestClient, songs: dict, tmp_path: Path, fields: dict, code: str
) -> None:
    path = write_audio(tmp_path / "x.flac", songs["song1"][: 10 * SAMPLE_RATE])
    response = client.post("/v1/references", headers=WRITE, files=_file(path), data=fields)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


def _truncated_mp3(tmp_path: Path) -> bytes:
    data = write_audio(tmp_path / "t.mp3", synth_song(5, duration_s=20)).read_bytes()
    return data[:1500]


@pytest.mark.parametrize(
    ("name", "make_bytes", "status", "code"),
    [
        ("empty.wav", lambda tmp: b"", 415, "unsupported_audio"),
        (
            "random.mp3",
            lambda tmp: np.random.default_rng(1).bytes(50_000),
            415,
            "unsupported_audio",
        ),
        (
            "notes.wav",
            lambda tmp: b"this is a text file, not audio\n" * 100,
            415,
            "unsupported_audio",
        ),
        ("truncated.mp3", _truncated_mp3, 422, "audio_too_short"),
        (
            "short.flac",
            lambda tmp: write_audio(tmp / "s.flac", synth_song(3, 0.5)).read_bytes(),
            422,
            "audio_too_short",
        ),
        (
            "silence.wav",
            lambda tmp: write_audio(
                tmp / "z.wav", np.zeros(10 * SAMPLE_RATE, np.float32)
            ).read_bytes(),
            422,
            "audio_too_short",
        ),
    ],
)
def test_bad_audio_gets_a_clear_error(
    client: TestClient, upload_dir: Path, tmp_path: Path, name, make_bytes, status, code
) -> None:
    response = client.post("/v1/match", headers=READ, files={"file": (name, make_bytes(tmp_path))})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert "tunetrace-upload" not in error["message"]  # no server paths
    assert list(upload_dir.iterdir()) == []


def test_request_shape_errors(client: TestClient, upload_dir: Path) -> None:
    not_multipart = client.post("/v1/match", headers=READ, content=b"RIFF....")
    assert not_multipart.status_code == 415
    assert not_multipart.json()["error"]["code"] == "unsupported_media_type"
    no_file = client.post("/v1/match", headers=READ, files={"other": ("a.wav", b"123")})
    assert no_file.status_code == 422
    assert no_file.json()["error"]["code"] == "missing_file"
    truncated_body = client.post(
        "/v1/match",
        headers={**READ, "Content-Type": "multipart/form-data; boundary=XyZ"},
        content=b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRI',
    )
    assert truncated_body.status_code == 400
    assert truncated_body.json()["error"]["code"] == "malformed_request"
    assert list(upload_dir.iterdir()) == []


def test_upload_over_the_limit_is_refused_while_streaming(
    client: TestClient, upload_dir: Path
) -> None:
    limit = int(MAX_UPLOAD_MB * 1_000_000)
    boundary = "b0undary"

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it up front
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"'
            "\r\nContent-Type: audio/wav\r\n\r\n"
        ).encode()
        for _ in range(limit // 65536 + 10):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/match",
        headers={**READ, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert list(upload_dir.iterdir()) == []
    declared = client.post(
        "/v1/match",
        headers={
            **READ,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(limit * 2),
        },
        content=b"x",
    )
    assert declared.status_code == 413


def test_audio_over_the_duration_limit_is_refused(client: TestClient, tmp_path: Path) -> None:
    # 130 s of quiet noise compresses to well under the 2 MB upload limit as low-rate FLAC
    long_audio = np.random.default_rng(0).normal(0, 0.01, 130 * 8000).astype(np.float32)
    path = write_audio(tmp_path / "long.flac", long_audio, sample_rate=8000)
    assert path.stat().st_size < MAX_UPLOAD_MB * 1_000_000
    response = client.post("/v1/match", headers=READ, files=_file(path))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "audio_too_long"


def test_errors_for_unknown_routes_and_methods_use_the_json_shape(client: TestClient) -> None:
    assert client.get("/v1/nothing-here").json()["error"]["code"] == "not_found"
    wrong_method = client.put("/v1/match", headers=READ)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_the_real_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    match = schema["paths"]["/v1/match"]["post"]
    body = match["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["format"] == "binary"
    assert {"200", "401", "413", "415", "422", "503"} <= set(match["responses"])
    report = schema["components"]["schemas"]["MatchReportModel"]
    assert report["examples"][0]["matches"][0]["tempo_ratio"] == 1.1
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_metrics_count_requests_and_outcomes(client: TestClient, stretched_query: Path) -> None:
    client.post("/v1/match", headers=READ, files=_file(stretched_query))
    text = client.get("/metrics").text
    assert 'tunetrace_http_requests_total{method="POST",route="/v1/match",status="200"}' in text
    assert 'tunetrace_match_outcomes_total{outcome="copy_found"}' in text
    assert "tunetrace_catalogue_references" in text
    assert "tunetrace_queue_depth" in text
    assert READ_KEY not in text


def test_api_key_parsing() -> None:
    assert parse_api_keys(" a:read , b:write ") == {"a": "read", "b": "write"}
    assert parse_api_keys("with:colon:write") == {"with:colon": "write"}
    for bad in ("secretkey", "secretkey:admin", ":read", "secretkey:read,secretkey:write"):
        with pytest.raises(ValueError) as info:
            parse_api_keys(bad)
        assert "secretkey" not in str(info.value)  # messages never show a key


def test_api_key_messages_never_show_any_part_of_an_item() -> None:
    cases = {
        "read:Secret-Token-77": "does not end in ':read' or ':write' (it starts with a role",
        "Secret Token 77:read": "whitespace or characters outside printable ASCII",
        "Secret\tToken:write": "whitespace or characters outside printable ASCII",
        "Secret-Tökën-77:read": "whitespace or characters outside printable ASCII",
        "ok-key:read,Secret-Token-77:owner": "API key #2 does not end in ':read' or ':write'",
    }
    for value, expected in cases.items():
        with pytest.raises(ValueError) as info:
            parse_api_keys(value)
        assert expected in str(info.value)
        for part in ("Secret", "Token", "Tökën", "owner", "ok-key"):
            assert part not in str(info.value), str(info.value)
    with pytest.raises(ValidationError) as settings_error:
        ApiSettings(api_keys="read:Secret-Token-77")
    assert "Secret-Token-77" not in str(settings_error.value)
    assert parse_api_keys("a-Z_0~!@#$%^&*():write") == {"a-Z_0~!@#$%^&*()": "write"}


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1"])
@pytest.mark.parametrize(
    "variable", ["TUNETRACE_MAX_UPLOAD_MB", "TUNETRACE_MAX_DURATION_S",
                 "TUNETRACE_UPLOAD_IDLE_TIMEOUT_S"],
)  # fmt: skip
def test_limits_that_are_not_finite_and_positive_are_refused_at_startup(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # infinity had been taken, and every upload then failed (500) converting it to bytes
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        ApiSettings()


def test_a_bad_replace_field_is_refused_even_when_the_query_asks_to_replace(
    client: TestClient, songs: dict, tmp_path: Path
) -> None:
    path = write_audio(tmp_path / "x.flac", songs["song1"][: 10 * SAMPLE_RATE])
    response = client.post(
        "/v1/references?replace=true",
        headers=WRITE,
        files=_file(path),
        data={"id": "ok", "replace": "maybe"},
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_field"


def test_error_messages_call_the_catalogue_by_no_server_path(tmp_path: Path) -> None:
    from tunetrace.api.errors import without_server_paths

    catalogue = ApiSettings(catalogue=tmp_path / "cat", api_keys="k:read").catalogue
    assert catalogue.is_absolute()
    disk = tmp_path / "other-disk" / "s01"
    disk.mkdir(parents=True)
    (catalogue / "g2").mkdir(parents=True)
    (catalogue / "g2" / "s01").symlink_to(disk)  # a shard kept on another disk
    message = (
        f"could not write to {catalogue}: [Errno 28] No space left on device: "
        f"'{catalogue}/g2/s00/catalogue.sqlite-wal'; {catalogue}2 and x{catalogue} are other "
        f"paths; shard {disk} is not on this worker's disk; no catalogue at {catalogue}."
    )
    assert without_server_paths(message, catalogue) == (
        "could not write to the catalogue: [Errno 28] No space left on device: "
        f"'the catalogue'; {catalogue}2 and x{catalogue} are other paths; shard the catalogue "
        "is not on this worker's disk; no catalogue at the catalogue."
    )
    assert without_server_paths(
        f"is {catalogue}/g2 gone? file://{catalogue}/catalogue.sqlite?mode=ro, {catalogue}.bak",
        catalogue,
    ) == f"is the catalogue gone? file://the catalogue?mode=ro, {catalogue}.bak"
    # the id the client sent is repeated as sent where the message names it, and only there:
    # neither answer tells whether a guessed path is the server's
    wal = catalogue / "g2" / "s00" / "catalogue.sqlite-wal"
    for guess in (str(wal), str(tmp_path / "elsewhere")):
        answer = without_server_paths(
            f"reference {guess!r} was not added: could not write to {catalogue}: "
            f"[Errno 28] No space left on device: {str(wal)!r}",
            catalogue,
            echoed=(guess,),
        )
        assert answer == (
            f"reference {guess!r} was not added: could not write to the catalogue: "
            "[Errno 28] No space left on device: 'the catalogue'"
        )
    (catalogue / "g2" / "s09").symlink_to(catalogue / "g2" / "s09")  # a loop: no 500
    assert without_server_paths(f"at {catalogue}", catalogue) == "at the catalogue"


def test_errors_over_http_name_no_server_path(client: TestClient) -> None:
    """A reference id is repeated as sent and the catalogue is never named by its path,
    whether or not the id guesses that path: the answers to a right and a wrong guess have
    the same shape."""
    directory = str(client.app.state.settings.catalogue)
    shapes = set()
    for guess in (directory, directory + "-not-it"):
        response = client.get(f"/v1/references/{quote(guess, safe='')}", headers=READ)
        assert response.status_code == 404, response.text
        message = response.json()["error"]["message"]
        assert repr(guess) in message, message
        without_id = message.replace(repr(guess), "ID")
        assert directory not in without_id and "the catalogue" in without_id, message
        shapes.add(without_id)
    assert len(shapes) == 1, shapes
