"""The ``tunetrace`` command line, run as a real process on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from tests.conftest import SAMPLE_RATE, synth_song, white_noise, write_audio


def tunetrace(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunetrace.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_batch_with_broken_file_in_the_middle_adds_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    write_audio(folder / "a.wav", synth_song(21, duration_s=12))
    (folder / "b_broken.mp3").write_bytes(np.random.default_rng(5).bytes(30000))
    (folder / "c_empty.wav").write_bytes(b"")
    write_audio(folder / "d.wav", synth_song(22, duration_s=12))
    done = tunetrace("add", "-c", str(tmp_path / "cat"), str(folder), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "added 2 reference(s)" in done.stdout and "2 failed" in done.stdout
    assert "b_broken.mp3" in done.stderr and "c_empty.wav" in done.stderr
    assert "Traceback" not in done.stderr
    info = json.loads(tunetrace("info", "-c", str(tmp_path / "cat"), "--json").stdout)
    assert info["references"] == 2


def test_bad_queries_get_clear_errors_and_exit_code_2(
    tmp_path: Path, built_catalogue: Path
) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    random_mp3 = tmp_path / "random.mp3"
    random_mp3.write_bytes(np.random.default_rng(1).bytes(50000))
    clip = write_audio(tmp_path / "clip.wav", synth_song(2, duration_s=0.5))
    silence = write_audio(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE * 12, np.float32))
    long_file = tmp_path / "long.flac"
    with soundfile.SoundFile(str(long_file), "w", samplerate=8000, channels=1, format="FLAC") as f:
        for _ in range(18):
            f.write(np.zeros(8000 * 600, np.int16))
    expectations = {
        empty: "empty",
        random_mp3: "not a readable audio file",
        clip: "shorter than the minimum",
        silence: "silent",
        long_file: "longer than the limit",
        tmp_path / "missing.wav": "no such file",
    }
    for path, message in expectations.items():
        done = tunetrace("match", "-c", str(built_catalogue), str(path))
        assert done.returncode == 2, f"{path.name}: exit {done.returncode}"
        assert message in done.stderr, f"{path.name}: {done.stderr}"
        assert "Traceback" not in done.stderr


def test_usage_errors(tmp_path: Path) -> None:
    done = tunetrace("match", "-c", str(tmp_path / "nothing"), str(tmp_path / "q.wav"))
    assert done.returncode == 2 and "no catalogue" in done.stderr  # a mistyped -c: bad usage
    done = tunetrace("add", "-c", str(tmp_path / "cat"))
    assert done.returncode == 2 and "give audio files" in done.stderr
    done = tunetrace("match", "-c", str(tmp_path / "cat"), "--top", "zero", "x.wav")
    assert done.returncode == 2


def test_an_output_path_that_cannot_be_written_is_an_error_line(
    tmp_path: Path, built_catalogue: Path, song_folder: Path
) -> None:
    query = str(next(song_folder.glob("*.flac")))
    catalogue = str(built_catalogue)
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "no").write_text("a file where a folder is needed")
    for out, resume in ((tmp_path / "a_folder", ["--resume"]), (tmp_path / "no" / "r.jsonl", [])):
        done = tunetrace("scan", "-c", catalogue, query, "--out", str(out), *resume)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "cannot write the report" in done.stderr
    done = tunetrace("explain", "-c", catalogue, query, "--out", str(tmp_path / "x" / "e.json"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "cannot write" in done.stderr
    done = tunetrace("explain", "-c", catalogue, query, "--reference", "no-such-work",
                     "--out", str(tmp_path / "e.json"))  # fmt: skip
    assert done.returncode == 2 and "no reference 'no-such-work'" in done.stderr, done.stderr


def test_add_match_json_and_remove(tmp_path: Path, songs: dict[str, np.ndarray]) -> None:
    catalogue = str(tmp_path / "cat")
    manifest = tmp_path / "manifest.csv"
    rows = ["path,id,title,artist,isrc"]
    for name, samples in songs.items():
        write_audio(tmp_path / f"{name}.wav", samples)
        rows.append(f"{name}.wav,label/{name},Title {name},Artist,ISRC{name}")
    manifest.write_text("\n".join(rows) + "\n")
    assert tunetrace("add", "-c", catalogue, "--manifest", str(manifest)).returncode == 0
    again = tunetrace("add", "-c", catalogue, str(tmp_path / "song1.wav"), "--id", "label/song1")
    assert again.returncode == 2 and "already exists" in again.stderr

    # A query 12% faster and 2 semitones up, made by resampling plus a pitch correction.
    song = songs["song3"][SAMPLE_RATE * 5 : SAMPLE_RATE * 20]
    faster = soxr.resample(song, SAMPLE_RATE * 1.12, SAMPLE_RATE).astype(np.float32)
    query = write_audio(tmp_path / "query.wav", faster)
    done = tunetrace("match", "-c", catalogue, "--json", str(query))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["query"] == str(query)
    assert set(report) == {"query", "duration_s", "elapsed_s", "matches"}
    best = report["matches"][0]
    assert best["reference_id"] == "label/song3" and best["title"] == "Title song3"
    assert abs(best["tempo_ratio"] - 1.12) < 0.02
    assert abs(best["pitch_shift_semitones"] - 12 * np.log2(1.12)) < 0.3
    assert best["alteration"] == "speed_change"
    assert best["segments"] and 0.0 < best["coverage"] <= 1.0
    assert abs(best["segments"][0]["reference_start_s"] - 5.0) < 1.0

    assert tunetrace("remove", "-c", catalogue, "label/song3").returncode == 0
    after = json.loads(tunetrace("match", "-c", catalogue, "--json", str(query)).stdout)
    assert all(m["reference_id"] != "label/song3" for m in after["matches"])
    assert tunetrace("remove", "-c", catalogue, "label/song3").returncode == 2


@pytest.mark.parametrize("env_name", ["TUNETRACE_CATALOGUE"])
def test_catalogue_from_environment(tmp_path: Path, built_catalogue: Path, env_name: str) -> None:
    import os

    done = tunetrace("info", env={**os.environ, env_name: str(built_catalogue)})
    assert done.returncode == 0 and "references: 5" in done.stdout


def test_a_non_tonal_query_without_matches_carries_a_caution(
    tmp_path: Path, built_catalogue: Path
) -> None:
    noise = write_audio(tmp_path / "noise.wav", white_noise(7))
    tonal = write_audio(tmp_path / "unknown.wav", synth_song(99, duration_s=12.0))
    done = tunetrace("match", "-c", str(built_catalogue), str(noise), str(tonal))
    assert done.returncode == 0, done.stderr
    noise_part, tonal_part = done.stdout.split(str(tonal))
    assert "no probable copy found" in noise_part and "caution:" in noise_part
    assert "non-tonal" in noise_part
    assert "no probable copy found" in tonal_part and "caution" not in tonal_part
    as_json = tunetrace("match", "-c", str(built_catalogue), "--json", str(noise))
    assert set(json.loads(as_json.stdout)) == {"query", "duration_s", "elapsed_s", "matches"}


def test_help_shows_each_options_default_and_environment_variable() -> None:
    # the help is rich text: a bracketed note would be taken for markup and vanish
    expected = {
        ("match", "--help"): ["TUNETRACE_CATALOGUE"],
        ("list", "--help"): ["TUNETRACE_CATALOGUE", "(default: all)"],
        ("explain", "--help"): ["(default: the", "best)"],
        ("serve", "--help"): ["TUNETRACE_CATALOGUE", "TUNETRACE_WORKERS", "TUNETRACE_SCHEDULER"],
    }
    for command, shown in expected.items():
        result = tunetrace(*command, env={"COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        for text in shown:
            assert text in result.stdout, (command, text, result.stdout)
