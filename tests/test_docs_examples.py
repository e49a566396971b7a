"""The Python examples in docs/ and the README marked ``<!-- test: run -->`` run as written.

Each marked block runs in a fresh folder holding ``track03.flac`` (a synthetic recording) and
``upload.mp3`` (the same recording sped up 10%, as MP3), the files the examples name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import soxr

from tests.conftest import SAMPLE_RATE, synth_song, write_audio

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = DOCS.parent / "README.md"
MARKER = "<!-- test: run -->"
_BLOCK = re.compile(re.escape(MARKER) + r"\s*```python\n(.*?)\n```", re.S)


def runnable_blocks() -> list[tuple[str, str]]:
    """``(page:line, code)`` of every marked Python block in the docs and the README."""
    blocks = []
    for page in [*sorted(DOCS.glob("*.md")), README]:
        text = page.read_text(encoding="utf-8")
        for found in _BLOCK.finditer(text):
            line = text.count("\n", 0, found.start(1)) + 1
            blocks.append((f"{page.name}:{line}", found.group(1)))
    return blocks


BLOCKS = runnable_blocks()


def test_the_python_api_page_has_a_runnable_example() -> None:
    pages = {where.split(":")[0] for where, _ in BLOCKS}
    assert "python-api.md" in pages, f"no '{MARKER}' block in docs/python-api.md"
    assert all(MARKER not in code for _, code in BLOCKS)


@pytest.fixture(scope="module")
def example_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("example-audio")
    original = synth_song(61, duration_s=25)
    write_audio(folder / "track03.flac", original)
    write_audio(folder / "upload.mp3", soxr.resample(original, SAMPLE_RATE, SAMPLE_RATE / 1.1))
    return folder


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_example_runs_and_finds_the_added_track(
    where: str, code: str, example_audio: Path, tmp_path: Path
) -> None:
    for name in ("track03.flac", "upload.mp3"):
        (tmp_path / name).write_bytes((example_audio / name).read_bytes())
    namespace: dict[str, object] = {"__name__": "__docs_example__"}
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, where, "exec"), namespace)
    finally:
        os.chdir(previous)
    report = namespace.get("report")
    if where.startswith("python-api.md"):
        assert report is not None, f"{where}: the example makes no 'report'"
    if report is not None:
        found = report.to_dict()
        assert found["query"] == "upload.mp3"
        assert [m["reference_id"] for m in found["matches"]] == ["album1/track03"], found
        assert found["matches"][0]["title"] == "Track three"
        assert found["matches"][0]["tempo_ratio"] == pytest.approx(1.1, abs=0.02)
    if "ids" in namespace:
        assert namespace["ids"] == ["album1/track03"]
