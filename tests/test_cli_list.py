"""``tunetrace list``: the references of a catalogue, ordered by id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tunetrace
from tests.conftest import synth_song, write_audio


def tunetrace_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def listed_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three references added out of id order, one with every metadata field."""
    folder = tmp_path_factory.mktemp("list")
    with tunetrace.Catalogue(folder / "cat", create=True) as cat:
        for seed, (reference_id, duration_s) in enumerate(
            [("zeta", 6.0), ("album1/track03", 65.0), ("alpha", 7.0)], start=51
        ):
            path = write_audio(folder / f"{seed}.wav", synth_song(seed, duration_s=duration_s))
            if reference_id == "album1/track03":
                cat.add_file(path, reference_id, title="Track three", artist="Some artist",
                             isrc="XXA012500003")  # fmt: skip
            else:
                cat.add_file(path, reference_id)
    return folder / "cat"


def test_json_lines_are_ordered_by_id_with_metadata(listed_catalogue: Path) -> None:
    done = tunetrace_cli("list", "-c", str(listed_catalogue), "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["album1/track03", "alpha", "zeta"]
    first = lines[0]
    assert (first["title"], first["artist"], first["isrc"]) == (
        "Track three",
        "Some artist",
        "XXA012500003",
    )
    assert first["duration_s"] == pytest.approx(65.0, abs=0.05)
    assert lines[1]["title"] is None and lines[1]["duration_s"] == pytest.approx(7.0, abs=0.05)


def test_offset_and_limit_page_through(listed_catalogue: Path) -> None:
    def ids(*options: str) -> list[str]:
        done = tunetrace_cli("list", "-c", str(listed_catalogue), "--json", *options)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["id"] for line in done.stdout.splitlines()]

    assert ids("--offset", "1") == ["alpha", "zeta"]
    assert ids("--limit", "2") == ["album1/track03", "alpha"]
    assert ids("--offset", "1", "--limit", "1") == ["alpha"]
    assert ids("--offset", "3") == []


def test_table_shows_columns_and_durations(listed_catalogue: Path) -> None:
    done = tunetrace_cli("list", "-c", str(listed_catalogue))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["id", "title", "artist", "isrc", "duration"]
    assert lines[1].split() == [
        "album1/track03", "Track", "three", "Some", "artist", "XXA012500003", "1:05",
    ]  # fmt: skip
    assert lines[2].split() == ["alpha", "0:07"]
    assert lines[3].split() == ["zeta", "0:06"]
    assert len(lines) == 4


@pytest.mark.parametrize(
    ("option", "value"),
    [("--offset", "-1"), ("--offset", "many"), ("--limit", "0"), ("--limit", "1.5")],
)
def test_bad_values_exit_2_with_one_line(listed_catalogue: Path, option: str, value: str) -> None:
    done = tunetrace_cli("list", "-c", str(listed_catalogue), option, value)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {option} must be a whole number"), done.stderr
    assert done.stdout == ""


def test_missing_catalogue_fails_with_one_line(tmp_path: Path) -> None:
    done = tunetrace_cli("list", "-c", str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: no catalogue"), done.stderr
    assert done.stderr.count("\n") == 1
