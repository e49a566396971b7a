"""Shared fixtures: small synthetic songs written as real audio files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile

SAMPLE_RATE = 22050


def synth_song(seed: int, duration_s: float = 30.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic piece: chords with harmonics, a melody and noise-burst drums.

    Different seeds give different chord progressions, rhythms and timbres, like different
    recordings; the same seed always gives the same samples.
    """
    rng = np.random.default_rng(seed)
    n = int(duration_s * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    position = 0.0
    root_choices = rng.integers(45, 60, size=64)
    index = 0
    while position < duration_s:
        length = float(rng.choice([0.5, 0.75, 1.0, 1.5]))
        start, stop = int(position * sample_rate), min(n, int((position + length) * sample_rate))
        segment = t[start:stop] - position
        envelope = np.exp(-segment * rng.uniform(0.8, 3.0))
        root = root_choices[index % len(root_choices)]
        quality = (0, 4, 7) if rng.random() < 0.5 else (0, 3, 7)
        for interval in (*quality, 12 + quality[1]):
            freq = 440.0 * 2 ** ((root + interval - 69) / 12)
            for harmonic in range(1, 5):
                if freq * harmonic < sample_rate / 2:
                    out[start:stop] += (
                        0.12 / harmonic * envelope * np.sin(2 * np.pi * freq * harmonic * segment)
                    )
        melody = 440.0 * 2 ** ((root + 24 + int(rng.choice([0, 2, 4, 7, 9])) - 69) / 12)
        out[start:stop] += 0.15 * envelope * np.sin(2 * np.pi * melody * segment)
        drum = min(stop - start, int(0.05 * sample_rate))
        out[start : start + drum] += (
            0.3 * rng.standard_normal(drum) * np.exp(-np.arange(drum) / 200)
        )
        position += length
        index += 1
    out /= np.max(np.abs(out)) + 1e-9
    return (0.8 * out).astype(np.float32)


def white_noise(seed: int, duration_s: float = 10.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Deterministic white noise (no pitch at all: the least tonal query there is)."""
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal(int(duration_s * sample_rate))).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write samples in the format the suffix names (through libsndfile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    formats = {
        ".wav": ("WAV", "PCM_16"),
        ".flac": ("FLAC", "PCM_16"),
        ".ogg": ("OGG", "VORBIS"),
        ".mp3": ("MP3", "MPEG_LAYER_III"),
    }
    container, subtype = formats[path.suffix.lower()]
    soundfile.write(str(path), samples, sample_rate, format=container, subtype=subtype)
    return path


@pytest.fixture(scope="session")
def songs() -> dict[str, np.ndarray]:
    """Five distinct 30-s synthetic songs."""
    return {f"song{seed}": synth_song(seed) for seed in range(1, 6)}


@pytest.fixture(scope="session")
def song_folder(tmp_path_factory: pytest.TempPathFactory, songs: dict[str, np.ndarray]) -> Path:
    """A folder of the songs as FLAC files, one in a subfolder."""
    folder = tmp_path_factory.mktemp("songs")
    for name, samples in songs.items():
        target = folder / ("album" if name == "song5" else "") / f"{name}.flac"
        write_audio(target, samples)
    return folder


@pytest.fixture(scope="session")
def built_catalogue(tmp_path_factory: pytest.TempPathFactory, song_folder: Path) -> Path:
    """A catalogue holding the five songs (built once per session)."""
    from tunetrace.index.catalogue import Catalogue

    from tunetrace.ingest import ingest, items_from_paths

    directory = tmp_path_factory.mktemp("catalogue")
    with Catalogue(directory, create=True) as catalogue:
        summary = ingest(catalogue, items_from_paths([song_folder]))
    assert summary.added == 5, summary.failed
    return directory


def patch_wav_header(
    path: Path, *, channels: int, rate: int, data_bytes: int | None = None
) -> None:
    """Rewrite a PCM WAV's ``fmt`` chunk (and optionally its data length) to claim other things.

    Parameters
    ----------
    path : Path
        A WAV file written by libsndfile (PCM).
    channels, rate : int
        Channel count and sample rate (Hz) the header will declare.
    data_bytes : int, optional
        Length the ``data`` chunk will declare.
    """
    raw = bytearray(path.read_bytes())
    fmt = raw.index(b"fmt ") + 8
    bits = struct.unpack_from("<H", raw, fmt + 14)[0]
    struct.pack_into("<HI", raw, fmt + 2, channels, rate)
    struct.pack_into("<IH", raw, fmt + 8, rate * channels * bits // 8, channels * bits // 8)
    if data_bytes is not None:
        struct.pack_into("<I", raw, raw.index(b"data") + 4, data_bytes)
    path.write_bytes(bytes(raw))


def make_format_1_catalogue(directory: Path, songs: dict[str, Path]) -> Path:
    """A catalogue of ``songs`` (id -> audio file) as the first format stored it: 8-bit
    spectra with float16 vectors beside them, no codec column, a float32 index file."""
    import sqlite3

    import faiss
    from tunetrace.fingerprint.params import FingerprintParams
    from tunetrace.index.catalogue import Catalogue
    from tunetrace.index.compact_vectors import from_disk_form
    from tunetrace.index.publication import read_publication
    from tunetrace.index.spectrum_codec import LEGACY_CODEC

    from tunetrace.ingest import fingerprint_reference

    with Catalogue(directory, create=True) as catalogue:
        for reference_id, path in songs.items():
            data = fingerprint_reference(path, params=FingerprintParams(), codec=LEGACY_CODEC)
            catalogue.add(reference_id, data)
    db = sqlite3.connect(directory / "catalogue.sqlite")
    try:  # closed here, not whenever it is collected: the folder is copied as it is
        with db:
            db.execute("DROP INDEX refs_by_codec")
            db.execute("ALTER TABLE refs DROP COLUMN spectrum_codec")
            db.execute("UPDATE meta SET value = '1' WHERE key = 'format_version'")
            index_file = directory / read_publication(db).file
    finally:
        db.close()
    widened, _ = from_disk_form(faiss.read_index(str(index_file)))
    faiss.write_index(widened, str(index_file))
    return directory
