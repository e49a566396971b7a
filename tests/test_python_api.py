"""The Python API exported from ``tunetrace`` (design section 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr

import tunetrace
from tests.conftest import SAMPLE_RATE, synth_song, write_audio


def test_every_exported_name_resolves() -> None:
    for name in tunetrace.__all__:
        assert getattr(tunetrace, name) is not None, name
    assert tunetrace.__version__ == "0.1.0"
    assert issubclass(tunetrace.AudioDecodeError, tunetrace.BadInputError)
    assert issubclass(tunetrace.DuplicateReferenceError, tunetrace.TunetraceError)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = tunetrace.no_such_name


def test_import_stays_light() -> None:
    code = (
        "import sys, tunetrace, tunetrace.errors; "
        "print(sorted(m for m in ('faiss', 'librosa', 'numba') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"imported by 'import tunetrace': {done.stdout}"


def test_add_list_match_remove(tmp_path: Path) -> None:
    original = synth_song(41, duration_s=25)
    other = synth_song(42, duration_s=25)
    write_audio(tmp_path / "track03.flac", original)
    write_audio(tmp_path / "other.flac", other)
    faster = soxr.resample(original, SAMPLE_RATE, SAMPLE_RATE / 1.1)  # speed change x1.1
    write_audio(tmp_path / "upload.wav", faster)

    with tunetrace.Catalogue(tmp_path / "catalogue", create=True) as cat:
        record = cat.add_file(tmp_path / "track03.flac", "album1/track03", title="Track three")
        assert record.reference_id == "album1/track03"
        assert record.title == "Track three"
        assert record.duration_s == pytest.approx(25.0, abs=0.05)
        assert cat.add_file(tmp_path / "other.flac").reference_id == "other"  # default: stem
        assert [r.reference_id for r in cat.list(limit=100)] == ["album1/track03", "other"]

        report = tunetrace.Matcher(cat).match_path(tmp_path / "upload.wav", top=5)
        assert isinstance(report, tunetrace.MatchReport)
        assert [m.reference_id for m in report.matches] == ["album1/track03"]
        found = report.to_dict()["matches"][0]
        assert found["title"] == "Track three"
        assert found["tempo_ratio"] == pytest.approx(1.1, abs=0.02)
        assert found["pitch_shift_semitones"] == pytest.approx(12 * np.log2(1.1), abs=0.3)
        assert found["alteration"] == "speed_change"
        assert report.to_dict()["query"] == str(tmp_path / "upload.wav")

        cat.remove("album1/track03")
        assert [r.reference_id for r in cat.list()] == ["other"]
        with pytest.raises(tunetrace.ReferenceNotFoundError):
            cat.remove("album1/track03")

    with tunetrace.Catalogue(tmp_path / "catalogue") as reopened:
        assert reopened.count() == 1


def test_add_file_refuses_a_duplicate_before_decoding(tmp_path: Path) -> None:
    write_audio(tmp_path / "a.wav", synth_song(43, duration_s=8))
    with tunetrace.Catalogue(tmp_path / "cat", create=True) as cat:
        cat.add_file(tmp_path / "a.wav", "a")
        with pytest.raises(tunetrace.DuplicateReferenceError, match="already exists"):
            cat.add_file(tmp_path / "missing.wav", "a")  # refused before the file is opened
        with pytest.raises(tunetrace.InvalidReferenceIdError):
            cat.add_file(tmp_path / "a.wav", "bad\nid")
        with pytest.raises(tunetrace.AudioDecodeError):
            cat.add_file(tmp_path / "missing.wav", "b")
        replaced = cat.add_file(tmp_path / "a.wav", "a", artist="Someone", replace=True)
        assert replaced.artist == "Someone"
        assert cat.count() == 1


def test_add_files_skips_bad_files_and_keeps_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "music"
    write_audio(folder / "album" / "one.wav", synth_song(44, duration_s=8))
    write_audio(folder / "two.wav", synth_song(45, duration_s=8))
    (folder / "broken.mp3").write_bytes(b"not audio at all" * 100)
    with tunetrace.Catalogue(tmp_path / "cat", create=True) as cat:
        summary = cat.add_files([folder])
        assert summary.added == 2
        assert [Path(path).name for path, _ in summary.failed] == ["broken.mp3"]
        assert [r.reference_id for r in cat.list()] == ["album/one", "two"]
        item = tunetrace.IngestItem(folder / "two.wav", "again", title="Two again")
        assert cat.add_files([item]).added == 1
        assert cat.get("again").title == "Two again"


def test_missing_catalogue_is_a_catalogue_error(tmp_path: Path) -> None:
    with pytest.raises(tunetrace.CatalogueError, match="no catalogue"):
        tunetrace.Catalogue(tmp_path / "nothing")
