"""Batch scans: report lines, errors, CSV, interruption and resume, self-scan, Dask cluster."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
import soxr
from tunetrace.index.catalogue import Catalogue

from tests.conftest import SAMPLE_RATE, synth_song, write_audio
from tunetrace.errors import BadInputError
from tunetrace.ingest import IngestItem, ingest
from tunetrace.matcher import Matcher
from tunetrace.scan import (
    ReportWriter,
    ScanJob,
    copy_groups,
    file_jobs,
    file_key,
    read_report,
    run_job,
)
from tunetrace.scan_backends import KILL_ON_ENV, KILL_ONCE_ENV, run_local

CLI = [sys.executable, "-m", "tunetrace.cli"]


def _cli(
    *args: str, check: bool = True, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, check=False, cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _excerpt(song: np.ndarray, start_s: float, length_s: float) -> np.ndarray:
    return song[int(start_s * SAMPLE_RATE) : int((start_s + length_s) * SAMPLE_RATE)]


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory, songs: dict) -> Path:
    """Eight uploads: altered copies of the catalogue's songs, unknown music, a broken file."""
    folder = tmp_path_factory.mktemp("uploads")
    stretch = librosa.effects.time_stretch
    write_audio(folder / "a_stretched.wav", stretch(_excerpt(songs["song1"], 5, 14), rate=1.2))
    write_audio(
        folder / "b_pitched.flac",
        librosa.effects.pitch_shift(_excerpt(songs["song2"], 8, 12), sr=SAMPLE_RATE, n_steps=3),
    )
    write_audio(
        folder / "nested" / "c_fast.ogg",
        soxr.resample(_excerpt(songs["song3"], 0, 15), SAMPLE_RATE, SAMPLE_RATE / 1.3),
    )
    write_audio(folder / "d_clean.mp3", _excerpt(songs["song4"], 10, 12))
    write_audio(folder / "e_slow.wav", stretch(_excerpt(songs["song5"], 3, 10), rate=0.8))
    write_audio(folder / "f_unknown.flac", synth_song(501, duration_s=12))
    write_audio(folder / "g_unknown.wav", synth_song(502, duration_s=12))
    (folder / "h_broken.mp3").write_bytes(b"\xff\xfb" + os.urandom(3000))
    return folder


EXPECTED = {
    "a_stretched.wav": "song1",
    "b_pitched.flac": "song2",
    "c_fast.ogg": "song3",
    "d_clean.mp3": "song4",
    "e_slow.wav": "album/song5",
    "f_unknown.flac": None,
    "g_unknown.wav": None,
}


def _top_by_file(lines: list[dict]) -> dict[str, str | None]:
    return {
        Path(line["query"]).name: (line["matches"][0]["reference_id"] if line["matches"] else None)
        for line in lines
        if "error" not in line
    }


@pytest.fixture(scope="module")
def local_report(tmp_path_factory: pytest.TempPathFactory, built_catalogue: Path, uploads: Path):
    out = tmp_path_factory.mktemp("scan") / "report.jsonl"
    csv_path = out.with_suffix(".csv")
    result = _cli(
        "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out),
        "--workers", "2", "--csv", str(csv_path),
    )  # fmt: skip
    return out, csv_path, result.stdout


def test_scan_reports_every_file_once_with_errors_as_lines(local_report) -> None:
    out, _, stdout = local_report
    lines = read_report(out)
    assert len(lines) == 8
    assert len({line["query"] for line in lines}) == 8
    assert _top_by_file(lines) == EXPECTED
    (broken,) = [line for line in lines if "error" in line]
    assert broken["query"].endswith("h_broken.mp3")
    assert broken["error"]["code"] == "AudioDecodeError"
    assert "scanned 8 file(s)" in stdout and "5 with probable copies" in stdout
    assert "1 error(s)" in stdout


def test_scan_writes_a_csv_for_spreadsheets(local_report) -> None:
    _, csv_path, _ = local_report
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(r["query"]).name for r in rows} == {*EXPECTED, "h_broken.mp3"}
    stretched = next(r for r in rows if r["query"].endswith("a_stretched.wav"))
    assert stretched["reference_id"] == "song1"
    assert float(stretched["tempo_ratio"]) == pytest.approx(1.2, abs=0.03)
    assert "<->" in stretched["segments"]
    assert next(r for r in rows if r["query"].endswith("h_broken.mp3"))["error"]


def test_existing_report_is_never_overwritten(local_report, built_catalogue: Path, uploads) -> None:
    out, _, _ = local_report
    before = out.read_bytes()
    result = _cli("scan", "-c", str(built_catalogue), str(uploads), "--out", str(out), check=False)
    assert result.returncode == 2
    assert "--resume" in result.stderr
    assert out.read_bytes() == before


def test_killed_scan_resumes_without_losing_or_doubling(
    tmp_path: Path, built_catalogue: Path, uploads: Path, local_report
) -> None:
    out = tmp_path / "interrupted.jsonl"
    process = subprocess.Popen(
        [*CLI, "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = out.read_bytes().count(b"\n")
    assert 2 <= finished_before < 8, "the scan should have been killed part-way"
    with out.open("ab") as report:  # a line cut off by the crash
        report.write(b'{"query": "half-written", "matc')

    result = _cli(
        "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out), "--resume",
        "--workers", "1",
    )  # fmt: skip
    assert f"({finished_before} already in the report)" in result.stdout
    lines = read_report(out)
    assert out.read_bytes().endswith(b"\n")
    assert len(lines) == 8
    assert sorted(line["query"] for line in lines) == sorted(
        line["query"] for line in read_report(local_report[0])
    )
    assert _top_by_file(lines) == EXPECTED


def test_report_writer_recovers_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"query": "a", "matches": []}\n{"query": "b", "mat')
    writer = ReportWriter(path, resume=True)
    assert writer.has("a") and not writer.has("b")
    writer.write({"query": "b", "matches": []})
    writer.close()
    assert [line["query"] for line in read_report(path)] == ["a", "b"]


def test_self_scan_groups_altered_copies_inside_one_catalogue(
    tmp_path: Path, song_folder: Path, songs: dict
) -> None:
    directory = tmp_path / "catalogue"
    fast = write_audio(
        tmp_path / "fast.wav", soxr.resample(songs["song1"], SAMPLE_RATE, SAMPLE_RATE / 1.1)
    )
    higher = write_audio(
        tmp_path / "higher.flac",
        librosa.effects.pitch_shift(songs["song2"], sr=SAMPLE_RATE, n_steps=2),
    )
    items = [
        IngestItem(song_folder / "song1.flac", "label-a/song1"),
        IngestItem(song_folder / "song2.flac", "label-a/song2"),
        IngestItem(song_folder / "song3.flac", "label-a/song3"),
        IngestItem(fast, "uploader-x/totally-new-track"),
        IngestItem(higher, "uploader-x/another-new-track"),
    ]
    with Catalogue(directory, create=True) as catalogue:
        assert ingest(catalogue, items).added == 5
    out = tmp_path / "self.jsonl"
    result = _cli("scan", "--self", "-c", str(directory), "--out", str(out), "--workers", "2")
    lines = {line["query"]: line for line in read_report(out)}
    assert set(lines) == {item.reference_id for item in items}
    for query, line in lines.items():
        assert all(m["reference_id"] != query for m in line["matches"])  # never itself
    assert copy_groups(lines.values()) == [
        ["label-a/song1", "uploader-x/totally-new-track"],
        ["label-a/song2", "uploader-x/another-new-track"],
    ]
    fast_match = lines["uploader-x/totally-new-track"]["matches"][0]
    assert fast_match["reference_id"] == "label-a/song1"
    assert fast_match["tempo_ratio"] == pytest.approx(1.1, abs=0.02)
    assert fast_match["alteration"] == "speed_change"
    assert lines["label-a/song3"]["matches"] == []
    assert "copies: label-a/song1  <->  uploader-x/totally-new-track" in result.stdout


def test_scan_on_a_dask_cluster_gives_the_local_results(
    tmp_path: Path, built_catalogue: Path, uploads: Path, local_report
) -> None:
    from distributed import Client, LocalCluster

    catalogue = tmp_path / "catalogue"
    shutil.copytree(built_catalogue, catalogue)
    out = tmp_path / "dask.jsonl"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        result = _cli(
            "scan", "-c", str(catalogue), str(uploads), "--out", str(out),
            "--scheduler", cluster.scheduler_address,
        )  # fmt: skip
        with Client(cluster) as client:
            opened = client.run(_opened_catalogues)
    assert "scanned 8 file(s)" in result.stdout
    # the work ran on the cluster's workers, each of which opened the catalogue once and kept it
    assert len(opened) == 2
    assert all(paths == [str(catalogue.resolve())] for paths in opened.values()), opened

    def comparable(lines: list[dict]) -> dict:
        return {
            Path(line["query"]).name: line.get("error", {}).get("code")
            or [
                (m["reference_id"], m["tempo_ratio"], m["pitch_shift_semitones"], m["score"])
                for m in line["matches"]
            ]
            for line in lines
        }

    assert comparable(read_report(out)) == comparable(read_report(local_report[0]))


def _opened_catalogues() -> list[str]:
    from tunetrace.scan_backends import opened_catalogues

    return opened_catalogues()


def test_scan_input_errors(tmp_path: Path, built_catalogue: Path) -> None:
    out = tmp_path / "r.jsonl"
    both = _cli("scan", "--self", "-c", str(built_catalogue), str(tmp_path), "--out", str(out),
                check=False)  # fmt: skip
    assert both.returncode == 2
    missing = _cli("scan", "-c", str(built_catalogue), str(tmp_path / "nope"), "--out", str(out),
                   check=False)  # fmt: skip
    assert missing.returncode == 2 and "no such file" in missing.stderr
    no_catalogue = _cli("scan", "-c", str(tmp_path / "none"), str(tmp_path), "--out", str(out),
                        check=False)  # fmt: skip
    assert no_catalogue.returncode == 2 and "no catalogue" in no_catalogue.stderr
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\nmissing-file.wav\n")
    listed = _cli("scan", "-c", str(built_catalogue), "--manifest", str(manifest), "--out",
                  str(out), "--workers", "1")  # fmt: skip
    (line,) = read_report(out)
    assert line["error"]["code"] == "AudioDecodeError"
    assert "1 error(s)" in listed.stdout
    assert json.loads(out.read_text())["query"].endswith("missing-file.wav")


def test_excerpt_scan_decodes_only_the_excerpts_and_places_the_copy(
    tmp_path: Path, built_catalogue: Path, songs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = soxr.resample(_excerpt(songs["song1"], 0, 25), SAMPLE_RATE, SAMPLE_RATE / 1.1)
    upload = np.concatenate([synth_song(601, duration_s=24), copy, synth_song(602, duration_s=24)])
    path = write_audio(tmp_path / "upload.ogg", upload)
    duration_s = len(upload) / SAMPLE_RATE
    matcher = Matcher(Catalogue(built_catalogue, read_only=True))
    job = ScanJob(str(path), str(path))

    def whole_file_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("a seekable file was decoded whole")

    with monkeypatch.context() as patched:
        patched.setattr(matcher, "load_query", whole_file_decode)
        line = run_job(matcher, job, top=5, min_score=None, excerpts=3)
    assert line["duration_s"] == pytest.approx(duration_s, abs=0.05)
    [match] = line["matches"]
    assert match["reference_id"] == "song1"
    assert match["tempo_ratio"] == pytest.approx(1.1, abs=0.02)
    copy_end_s = 24 + len(copy) / SAMPLE_RATE
    for segment in match["segments"]:  # in the upload's own time, inside the copied part
        assert 24 - 1 <= segment["query_start_s"] < segment["query_end_s"] <= copy_end_s + 1

    monkeypatch.setattr("tunetrace.scan.seekable_length", lambda path: None)
    whole = run_job(matcher, job, top=5, min_score=None, excerpts=3)  # decoded whole, then cut
    assert [m["reference_id"] for m in whole["matches"]] == ["song1"]
    assert whole["matches"][0]["tempo_ratio"] == pytest.approx(match["tempo_ratio"], abs=0.01)
    assert whole["duration_s"] == pytest.approx(duration_s, abs=0.15)  # whole feature frames


def test_excerpt_scan_decodes_the_whole_file_when_its_header_overstates_the_length(
    tmp_path: Path, built_catalogue: Path, songs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = np.concatenate([synth_song(603, duration_s=20), _excerpt(songs["song2"], 0, 25)])
    path = write_audio(tmp_path / "upload.mp3", upload)
    monkeypatch.setattr(  # as a VBR MP3 without a length header can be misread
        "tunetrace.scan.seekable_length", lambda path: (10 * len(upload), SAMPLE_RATE)
    )
    matcher = Matcher(Catalogue(built_catalogue, read_only=True))
    line = run_job(matcher, ScanJob(str(path), str(path)), top=5, min_score=None, excerpts=3)
    assert "error" not in line
    assert line["duration_s"] == pytest.approx(len(upload) / SAMPLE_RATE, abs=0.15)
    assert [m["reference_id"] for m in line["matches"]] == ["song2"]


def test_excerpt_scan_of_a_file_nothing_of_which_matches_is_an_error_not_clean(
    tmp_path: Path, built_catalogue: Path, songs: dict
) -> None:
    matcher = Matcher(Catalogue(built_catalogue, read_only=True))
    silent = write_audio(tmp_path / "silence.wav", np.zeros(60 * SAMPLE_RATE, dtype=np.float32))
    whole = run_job(matcher, ScanJob(str(silent), str(silent)), top=5, min_score=None)
    excerpted = run_job(
        matcher, ScanJob(str(silent), str(silent)), top=5, min_score=None, excerpts=2
    )
    assert "error" in whole
    assert excerpted.get("error", {}).get("code") == whole["error"]["code"], excerpted
    # one silent excerpt of a file whose other excerpt matches is skipped, as before
    song = songs["song1"]  # 30 s, then 50 s of silence: excerpts at 16.7-36.7 s and 43.3-63.3 s
    silence = np.zeros(50 * SAMPLE_RATE, dtype=song.dtype)
    half = write_audio(tmp_path / "half.wav", np.concatenate([song, silence]))
    line = run_job(matcher, ScanJob(str(half), str(half)), top=5, min_score=None, excerpts=2)
    assert "error" not in line and [m["reference_id"] for m in line["matches"]] == ["song1"]


def test_a_file_name_that_is_not_utf8_gets_its_line_and_reads_back(
    tmp_path: Path, built_catalogue: Path, uploads: Path
) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    source = next(uploads.iterdir())
    odd = os.fsencode(folder) + b"/bad\xffname" + os.fsencode(source.suffix)
    shutil.copy(source, odd)
    out = tmp_path / "report.jsonl"
    csv_out = tmp_path / "report.csv"
    result = _cli("scan", "-c", str(built_catalogue), str(folder), "--out", str(out),
                  "--workers", "1", "--csv", str(csv_out))  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    (line,) = read_report(out)
    assert os.fsencode(line["query"]) == odd  # the same name, escaped in valid JSON
    out.read_bytes().decode("utf-8")  # the report stays UTF-8
    assert "bad\\udcffname" in csv_out.read_text(encoding="utf-8")
    again = _cli("scan", "-c", str(built_catalogue), str(folder), "--out", str(out),
                 "--workers", "1", "--resume")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(read_report(out)) == 1  # resumed past it: not scanned twice


@pytest.mark.parametrize("where", ["folder", "missing"])
def test_a_csv_that_cannot_be_written_is_refused_before_scanning(
    tmp_path: Path, built_catalogue: Path, uploads: Path, where: str
) -> None:
    csv_path = tmp_path if where == "folder" else tmp_path / "missing" / "report.csv"
    out = tmp_path / "report.jsonl"
    result = _cli("scan", "-c", str(built_catalogue), str(uploads), "--out", str(out),
                  "--csv", str(csv_path), check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: cannot write the CSV"), result.stderr
    assert not out.exists()  # refused before anything was scanned


# --- workers that die, damaged reports, concurrent scans ---------------------------------

KILLER = "g_unknown.wav"  # the upload whose job kills its worker (test hook, SIGKILL)


def _assert_survived_a_killer(lines: list[dict], result: subprocess.CompletedProcess) -> None:
    assert len(lines) == 8, [line["query"] for line in lines]
    assert len({file_key(line["query"]) for line in lines}) == 8
    errors = {Path(line["query"]).name: line["error"] for line in lines if "error" in line}
    assert set(errors) == {"h_broken.mp3", KILLER}
    assert errors[KILLER]["code"] == "worker_died"
    assert errors["h_broken.mp3"]["code"] == "AudioDecodeError"
    # every other file, including those in flight when the worker died, got its real result
    assert _top_by_file(lines) == {k: v for k, v in EXPECTED.items() if k != KILLER}
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "scanned 8 file(s)" in result.stdout and "2 error(s)" in result.stdout


def test_local_scan_survives_a_file_that_kills_its_worker(
    tmp_path: Path, built_catalogue: Path, uploads: Path
) -> None:
    out = tmp_path / "killed.jsonl"
    result = _cli(
        "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out), "--workers", "2",
        env={KILL_ON_ENV: KILLER}, check=False,
    )  # fmt: skip
    lines = read_report(out)
    _assert_survived_a_killer(lines, result)
    (killed,) = [line for line in lines if line["query"].endswith(KILLER)]
    # run twice (the first death might have been another process's doing), killed both times
    assert "killed by SIGKILL each of the 2 times" in killed["error"]["message"]
    assert f"error {killed['query']}: " in result.stderr

    # resuming does not run the killer again: it has its line
    again = _cli(
        "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out), "--resume",
        "--workers", "2", env={KILL_ON_ENV: KILLER},
    )  # fmt: skip
    assert "scanned 0 file(s) (8 already in the report)" in again.stdout
    assert read_report(out) == lines


def test_local_pool_runs_again_a_job_whose_worker_died_once(
    tmp_path: Path, built_catalogue: Path, uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_ON_ENV, KILLER)
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    jobs = file_jobs([uploads])
    results = list(run_local(built_catalogue, jobs, workers=2, top=5, min_score=None))
    assert marker.exists(), "the worker running the job should have been killed once"
    assert sorted(job.query for job, _ in results) == sorted(job.query for job in jobs)
    lines = [line for _, line in results]
    assert [Path(line["query"]).name for line in lines if "error" in line] == ["h_broken.mp3"]
    assert _top_by_file(lines) == EXPECTED


def test_dask_scan_survives_a_file_that_kills_its_workers(
    tmp_path: Path, built_catalogue: Path, uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask
    from distributed import LocalCluster

    monkeypatch.setenv(KILL_ON_ENV, KILLER)  # the cluster's worker processes inherit it
    out = tmp_path / "dask-killed.jsonl"
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:  # fmt: skip  (give up on a task after the second death)
        started = time.monotonic()
        result = _cli(
            "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out),
            "--scheduler", cluster.scheduler_address, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    lines = read_report(out)
    _assert_survived_a_killer(lines, result)
    (killed,) = [line for line in lines if line["query"].endswith(KILLER)]
    assert "died each of the 2 times it ran" in killed["error"]["message"]
    assert elapsed < 120


def test_resume_keeps_every_good_line_around_damaged_ones(
    tmp_path: Path, built_catalogue: Path, uploads: Path, local_report
) -> None:
    good = local_report[0].read_bytes().splitlines(keepends=True)
    out = tmp_path / "damaged.jsonl"
    damage = [b'{"query": "cut-off", "matc\n', b"\x00\x00 not json\n", b'["a list"]\n']
    out.write_bytes(b"".join(good[:2] + damage + good[2:6]))  # the last two files not scanned
    result = _cli(
        "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out), "--resume",
        "--workers", "1",
    )  # fmt: skip
    assert "scanned 2 file(s) (6 already in the report)" in result.stdout
    assert "dropping 3 line(s) that cannot be read (line 3, 4, 5)" in result.stderr
    after = out.read_bytes().splitlines(keepends=True)
    assert after[:6] == good[:6]  # the lines after the damage kept, byte for byte, in order
    assert len(after) == 8 and not any(line in after for line in damage)
    assert sorted(line["query"] for line in read_report(out)) == sorted(
        line["query"] for line in read_report(local_report[0])
    )


def test_resume_knows_files_by_path_whatever_the_spelling(
    tmp_path: Path, built_catalogue: Path, uploads: Path, local_report
) -> None:
    lines = read_report(local_report[0])
    first = lines[0]
    relative = os.path.relpath(first["query"], uploads.parent)
    out = tmp_path / "spellings.jsonl"
    error_first = {"query": lines[1]["query"], "error": {"code": "InternalError", "message": "x"}}
    written = [
        error_first,  # an error line, then a good one for the same file: the good one stays
        *lines,
        {**first, "query": "./" + relative},  # the same file, another spelling
        {**first, "query": "{}/.//{}".format(*first["query"].rsplit("/", 1))},
        lines[3],  # an exact repeat
    ]
    out.write_text("".join(json.dumps(line) + "\n" for line in written))
    for spelling in ("./" + uploads.name + "/", uploads.name, str(uploads)):
        result = _cli(
            "scan", "-c", str(built_catalogue), spelling, "--out", str(out), "--resume",
            "--workers", "1", cwd=uploads.parent,
        )  # fmt: skip
        assert "scanned 0 file(s) (8 already in the report)" in result.stdout, spelling
    assert read_report(out) == lines  # one line per file, the first good one, in order
    # one folder named twice in one scan gives each file once
    other_spelling = uploads.parent / ".." / uploads.parent.name / uploads.name
    assert len(file_jobs([uploads, other_spelling])) == 8


def test_a_second_scan_on_a_report_in_use_is_refused(
    tmp_path: Path, built_catalogue: Path, uploads: Path
) -> None:
    out = tmp_path / "busy.jsonl"
    with ReportWriter(out, resume=False) as first:
        first.write({"query": str(uploads / "a_stretched.wav"), "matches": []})
        first._file.flush()
        before = out.read_bytes()
        with pytest.raises(BadInputError, match=f"process {os.getpid()}"):
            ReportWriter(out, resume=True)
        second = _cli(
            "scan", "-c", str(built_catalogue), str(uploads), "--out", str(out), "--resume",
            check=False,
        )  # fmt: skip
        assert second.returncode == 2
        assert "is being written by another scan" in second.stderr
        assert "Traceback" not in second.stderr
        assert out.read_bytes() == before
    with ReportWriter(out, resume=True) as later:  # free again once the first is closed
        assert later.has(str(uploads / "a_stretched.wav"))


def test_report_rewrite_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.jsonl"
    original = b'{"query": "a", "matches": []}\ngarbage\n{"query": "b", "matches": []}\n'
    path.write_bytes(original)

    def crash(*args: object) -> None:
        raise OSError("killed before the rename")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="before the rename"):
            ReportWriter(path, resume=True)
    assert path.read_bytes() == original  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.lock"]

    with ReportWriter(path, resume=True) as writer:  # and without the crash: cleaned
        assert writer.has("a") and writer.has("b")
    assert path.read_bytes() == b'{"query": "a", "matches": []}\n{"query": "b", "matches": []}\n'


class _FinishedFuture:
    """What :func:`dask_line` reads of a Dask future."""

    def __init__(self, status: str, result: object = None, error: BaseException | None = None):
        self.status, self._result, self._error = status, result, error

    def result(self) -> object:
        return self._result

    def exception(self) -> BaseException | None:
        return self._error


def test_failed_dask_tasks_become_error_lines() -> None:
    from distributed.scheduler import KilledWorker

    from tunetrace.errors import ScanWorkerError
    from tunetrace.scan_backends import dask_line

    job = ScanJob("x.wav", "x.wav")
    line = {"query": "x.wav", "duration_s": 1.0, "elapsed_s": 0.1, "matches": []}
    assert dask_line(job, _FinishedFuture("finished", line)) == line
    died = KilledWorker("scan_task-1", None, 3)  # type: ignore[arg-type]
    killed = dask_line(job, _FinishedFuture("error", error=died))
    assert killed["query"] == "x.wav" and killed["error"]["code"] == "worker_died"
    assert "each of the 4 times it ran" in killed["error"]["message"]
    raised = dask_line(job, _FinishedFuture("error", error=ValueError("bad value")))
    assert raised == {
        "query": "x.wav", "error": {"code": "InternalError", "message": "ValueError: bad value"}
    }  # fmt: skip
    with pytest.raises(ScanWorkerError, match="cancelled"):
        dask_line(job, _FinishedFuture("cancelled"))


def test_local_scan_stops_when_its_workers_cannot_start(tmp_path: Path, uploads: Path) -> None:
    from tunetrace.errors import ScanWorkerError

    # workers that die before they are ready are not blamed on a file: the scan stops
    jobs = file_jobs([uploads])
    with pytest.raises(ScanWorkerError, match="exited with code 1 before they were ready"):
        list(run_local(tmp_path / "no-catalogue", jobs, workers=2, top=5, min_score=None))
