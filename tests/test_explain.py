"""Evidence for reviewers: the explain command and the /v1/explain route."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import librosa
import pytest
from fastapi.testclient import TestClient
from tunetrace.api.app import create_app
from tunetrace.api.settings import ApiSettings

from tests.conftest import SAMPLE_RATE, synth_song, white_noise, write_audio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _explain(catalogue: Path, query: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", "explain", "-c", str(catalogue), str(query),
         "--out", str(out), *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def altered(tmp_path_factory: pytest.TempPathFactory, songs: dict) -> Path:
    """song2, 15 s from 6 s in, stretched to 1.2x and shifted down 2 semitones, as MP3."""
    excerpt = songs["song2"][6 * SAMPLE_RATE : 24 * SAMPLE_RATE]
    stretched = librosa.effects.time_stretch(excerpt, rate=1.2)
    shifted = librosa.effects.pitch_shift(stretched, sr=SAMPLE_RATE, n_steps=-2)
    return write_audio(tmp_path_factory.mktemp("explain") / "upload.mp3", shifted)


def test_png_and_json_of_a_match(built_catalogue: Path, altered: Path, tmp_path: Path) -> None:
    png = tmp_path / "evidence.png"
    result = _explain(built_catalogue, altered, png)
    assert result.returncode == 0, result.stderr
    assert "Probable altered copy of song2" in result.stdout
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and 30_000 < len(data) < 3_000_000

    as_json = tmp_path / "evidence.json"
    assert _explain(built_catalogue, altered, as_json).returncode == 0
    evidence = json.loads(as_json.read_text())
    assert evidence["is_copy"] and evidence["reference_id"] == "song2"
    assert evidence["tempo_ratio"] == pytest.approx(1.2, abs=0.03)
    assert evidence["pitch_shift_semitones"] == pytest.approx(-2, abs=0.3)
    assert evidence["segments"] and evidence["score"] >= evidence["threshold"]
    series = evidence["series"]
    assert len(series["time_s"]) == len(series["similarity"]) == len(series["alignment_path"])
    assert len(series["query_chroma"]) == 36
    # the aligned reference really resembles the query where the segment is
    inside = [
        s
        for t, s in zip(series["time_s"], series["similarity"], strict=True)
        if s is not None and evidence["segments"][0]["query_start_s"] <= t
    ]
    assert sum(inside) / len(inside) > 0.5
    path = series["alignment_path"]
    slope = (path[-1]["reference_s"] - path[0]["reference_s"]) / (
        path[-1]["query_s"] - path[0]["query_s"]
    )
    assert slope == pytest.approx(evidence["tempo_ratio"], rel=1e-3)

    page = tmp_path / "evidence.html"
    assert _explain(built_catalogue, altered, page).returncode == 0
    assert "data:image/png;base64," in page.read_text()


def test_a_non_match_is_explained_against_the_closest_reference(
    built_catalogue: Path, tmp_path: Path
) -> None:
    unknown = write_audio(tmp_path / "new.wav", synth_song(333, duration_s=15))
    out = tmp_path / "e.json"
    result = _explain(built_catalogue, unknown, out)
    assert result.returncode == 0, result.stderr
    evidence = json.loads(out.read_text())
    assert not evidence["is_copy"]
    assert evidence["verdict"].startswith(("Not a copy", "No reference came close"))
    assert evidence["query_tonality"] > 2.0 and "Caution" not in evidence["verdict"]
    assert _explain(built_catalogue, unknown, tmp_path / "e.png").returncode == 0


def test_a_non_tonal_non_match_is_explained_with_a_caution(
    built_catalogue: Path, tmp_path: Path
) -> None:
    query = write_audio(tmp_path / "noise.wav", white_noise(5))
    out = tmp_path / "e.json"
    assert _explain(built_catalogue, query, out).returncode == 0
    evidence = json.loads(out.read_text())
    assert not evidence["is_copy"] and evidence["query_tonality"] < 2.0
    assert "Caution: the query is mostly non-tonal" in evidence["verdict"]
    assert _explain(built_catalogue, query, tmp_path / "e.png").returncode == 0


def test_explain_against_a_named_reference(
    built_catalogue: Path, altered: Path, tmp_path: Path
) -> None:
    out = tmp_path / "e.json"
    assert _explain(built_catalogue, altered, out, "--reference", "song1").returncode == 0
    evidence = json.loads(out.read_text())
    assert evidence["reference_id"] == "song1" and not evidence["is_copy"]
    missing = _explain(built_catalogue, altered, out, "--reference", "nope")
    assert missing.returncode == 2 and "nope" in missing.stderr  # bad usage
    wrong_suffix = _explain(built_catalogue, altered, tmp_path / "e.txt")
    assert wrong_suffix.returncode == 2


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, built_catalogue: Path) -> Iterator[TestClient]:
    directory = tmp_path_factory.mktemp("api") / "catalogue"
    shutil.copytree(built_catalogue, directory)
    settings = ApiSettings(catalogue=directory, api_keys="explain-key:read", workers=1)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_explain_route(client: TestClient, altered: Path) -> None:
    headers = {"Authorization": "Bearer explain-key"}
    files = {"file": ("upload.mp3", altered.read_bytes())}
    image = client.post("/v1/explain", headers=headers, files=files)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(PNG_MAGIC)
    data = client.post("/v1/explain?format=json", headers=headers, files=files).json()
    assert data["reference_id"] == "song2" and data["is_copy"]
    named = client.post(
        "/v1/explain?format=json&reference_id=song4", headers=headers, files=files
    ).json()
    assert named["reference_id"] == "song4" and not named["is_copy"]
    missing = client.post("/v1/explain?reference_id=none", headers=headers, files=files)
    assert missing.status_code == 404
    assert client.post("/v1/explain?format=gif", headers=headers, files=files).status_code == 422
    assert client.post("/v1/explain", files=files).status_code == 401


def test_review_page_is_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert '<label for="file">' in page.text and '<label for="key">' in page.text
    assert 'id="key"' in page.text and "v1/match" in page.text


def test_text_box_and_verdict_print_the_same_threshold() -> None:
    from tunetrace.explain import Evidence, text_box

    evidence = Evidence(
        query="q.wav", duration_s=10.0, threshold=0.8704845, reference_id="a", score=0.80049
    )
    assert "threshold 0.870" in evidence.verdict
    assert "0.800 (threshold 0.870)" in text_box(evidence)
