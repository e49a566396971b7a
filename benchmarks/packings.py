"""Lossless packings of the stored spectrum codes, side by side: bytes per hour of audio,
and encode and decode time per minute of audio on one thread.

python -m benchmarks.packings --real DIR --mosaic DIR

``--real`` is a catalogue of real tracks (the core benchmark's), ``--mosaic`` one holding
mosaic works (the latency benchmark's 100,000-work catalogue: 60-s works of 2-s blocks of
many tracks, like a large catalogue of short unrelated works). The codes of ``--tracks``
real references and ``--works`` mosaic works (every n-th by key) are read once, then packed
and unpacked by each packing; every packing must give the codes back exactly. Decode times
are the best of three, summed over references. The results go to
``benchmarks/results/packings.json`` and ``packings.md``.

Besides the stored packings (JPEG-LS, Zstandard), the comparison holds what a faster-reading
packing could be: the codes' differences along time or along both axes (whose inverse is a
cumulative sum) under Zstandard, general-purpose coders (xz, Brotli), lossless image coders
(PNG, JPEG 2000) and JPEG-LS cut into 10-s tiles (what reading only part of a reference
would need).
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.spectrum_codec import codec_named

from benchmarks.run_benchmark import RESULTS
from benchmarks.run_info import run_info

logger = logging.getLogger(__name__)

#: Frames per tile of the tiled JPEG-LS packing (10 s).
TILE_FRAMES = 100


@dataclass(frozen=True)
class Packing:
    """A way to pack a codes array and to get it back."""

    name: str
    pack: Callable[[np.ndarray], bytes]
    unpack: Callable[[bytes, tuple[int, int]], np.ndarray]


def _zstd(level: int) -> Callable[[bytes], bytes]:
    return zstandard.ZstdCompressor(level=level).compress


def _unzstd(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob)


def time_differences(codes: np.ndarray) -> np.ndarray:
    """Each frame minus the one before, modulo 256 (the first frame as it is)."""
    out = codes.copy()
    out[:, 1:] -= codes[:, :-1]
    return out


def planar_differences(codes: np.ndarray) -> np.ndarray:
    """Differences along time and along bins (a plane's prediction), modulo 256."""
    return time_differences(time_differences(codes.T).T)


def undo_time_differences(differences: np.ndarray) -> np.ndarray:
    """Inverse of :func:`time_differences`."""
    return np.cumsum(differences, axis=1, dtype=np.uint8)


def undo_planar_differences(differences: np.ndarray) -> np.ndarray:
    """Inverse of :func:`planar_differences`."""
    return np.cumsum(np.cumsum(differences, axis=0, dtype=np.uint8), axis=1, dtype=np.uint8)


def _raw(blob: bytes, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8).reshape(shape)


def _tiles_pack(codes: np.ndarray) -> bytes:
    import imagecodecs

    parts = [
        bytes(imagecodecs.jpegls_encode(np.ascontiguousarray(codes[:, at : at + TILE_FRAMES])))
        for at in range(0, codes.shape[1], TILE_FRAMES)
    ]
    return b"".join(len(part).to_bytes(4, "little") + part for part in parts)


def _tiles_unpack(blob: bytes, shape: tuple[int, int]) -> np.ndarray:
    import imagecodecs

    parts, at = [], 0
    while at < len(blob):
        size = int.from_bytes(blob[at : at + 4], "little")
        parts.append(imagecodecs.jpegls_decode(blob[at + 4 : at + 4 + size]))
        at += 4 + size
    return np.concatenate(parts, axis=1)


def packings() -> list[Packing]:
    """Every packing compared (imagecodecs imported here: it takes a while)."""
    import imagecodecs

    xz_filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
    return [
        Packing("JPEG-LS (stored: b5e0.7j)", lambda c: bytes(imagecodecs.jpegls_encode(c)),
                lambda b, s: imagecodecs.jpegls_decode(b)),
        Packing(f"JPEG-LS in {TILE_FRAMES // 10}-s tiles", _tiles_pack, _tiles_unpack),
        Packing("Zstandard 9 (stored: b5e0.7z)", lambda c: _zstd(9)(c.tobytes()),
                lambda b, s: _raw(_unzstd(b), s)),
        Packing("Zstandard 19", lambda c: _zstd(19)(c.tobytes()),
                lambda b, s: _raw(_unzstd(b), s)),
        Packing("time differences, Zstandard 19",
                lambda c: _zstd(19)(time_differences(c).tobytes()),
                lambda b, s: undo_time_differences(_raw(_unzstd(b), s))),
        Packing("plane differences, Zstandard 19",
                lambda c: _zstd(19)(planar_differences(c).tobytes()),
                lambda b, s: undo_planar_differences(_raw(_unzstd(b), s))),
        Packing("plane differences, xz 9e",
                lambda c: lzma.compress(planar_differences(c).tobytes(),
                                        format=lzma.FORMAT_RAW, filters=xz_filters),
                lambda b, s: undo_planar_differences(_raw(
                    lzma.decompress(b, format=lzma.FORMAT_RAW, filters=xz_filters), s))),
        Packing("plane differences, Brotli 11",
                lambda c: bytes(imagecodecs.brotli_encode(planar_differences(c).tobytes(),
                                                          level=11)),
                lambda b, s: undo_planar_differences(_raw(bytes(imagecodecs.brotli_decode(b)), s))),
        Packing("PNG level 9", lambda c: bytes(imagecodecs.png_encode(c, level=9)),
                lambda b, s: imagecodecs.png_decode(b)),
        Packing("JPEG 2000 lossless", lambda c: bytes(imagecodecs.jpeg2k_encode(c, level=0,
                                                                                 reversible=True)),
                lambda b, s: imagecodecs.jpeg2k_decode(b)),
    ]  # fmt: skip


def read_codes(directory: Path, count: int, *, mosaic: bool) -> list[np.ndarray]:
    """Codes of ``count`` references of a catalogue, spread over its keys."""
    n_bins = FingerprintParams().n_bins
    db = sqlite3.connect(f"file:{directory / 'catalogue.sqlite'}?mode=ro", uri=True)
    try:
        where = "id LIKE 'mosaic/%'" if mosaic else "id NOT LIKE 'mosaic/%'"
        total = db.execute(f"SELECT count(*) FROM refs WHERE {where}").fetchone()[0]
        step = max(1, total // max(count, 1))
        rows = db.execute(
            f"SELECT spectrum, spectrum_codec, n_frames FROM refs WHERE {where}"
            " AND (key % ?) = 0 ORDER BY key LIMIT ?",
            (step, count),
        ).fetchall()
    finally:
        db.close()
    return [codec_named(name).codes(blob, n_bins, frames).copy() for blob, name, frames in rows]


def measure(packing: Packing, references: list[np.ndarray], frame_rate_hz: float) -> dict:
    """Bytes per hour of audio and encode / decode milliseconds per minute of audio.

    Raises
    ------
    AssertionError
        If the packing does not give some reference's codes back exactly.
    """
    size = encode_s = decode_s = 0.0
    frames = 0
    for codes in references:
        started = time.perf_counter()
        blob = packing.pack(codes)
        encode_s += time.perf_counter() - started
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            back = packing.unpack(blob, codes.shape)
            runs.append(time.perf_counter() - started)
        if not np.array_equal(np.asarray(back), codes):
            raise AssertionError(f"{packing.name} did not give the codes back")
        decode_s += min(runs)
        size += len(blob)
        frames += codes.shape[1]
    minutes = frames / frame_rate_hz / 60
    return {
        "mb_per_hour": round(size / 1e6 / (minutes / 60), 3),
        "encode_ms_per_minute": round(encode_s * 1000 / minutes, 2),
        "decode_ms_per_minute": round(decode_s * 1000 / minutes, 3),
        "hours": round(minutes / 60, 2),
    }


def markdown(result: dict) -> str:
    """The results as a short page."""
    lines = [
        f"Lossless packings of the stored 5-bit spectrum codes, {result['date']}, "
        f"{result['machine']}, commit {result['commit']}; one thread. "
        f"Real music: {result['real_references']} corpus tracks "
        f"({result['real_hours']} h); mosaic works: {result['mosaic_references']} of the "
        f"100,000-work catalogue ({result['mosaic_hours']} h). Every packing gave the codes "
        "back exactly. Milliseconds per minute of audio (decode: best of three).",
        "",
        "| packing | MB/h real | MB/h mosaic | encode ms/min (real / mosaic) "
        "| decode ms/min (real / mosaic) |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["packings"].items():
        real, mosaic = row["real"], row["mosaic"]
        lines.append(
            f"| {name} | {real['mb_per_hour']:.2f} | {mosaic['mb_per_hour']:.2f} | "
            f"{real['encode_ms_per_minute']:.1f} / {mosaic['encode_ms_per_minute']:.1f} | "
            f"{real['decode_ms_per_minute']:.2f} / {mosaic['decode_ms_per_minute']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", type=Path, required=True, help="catalogue of real tracks")
    parser.add_argument("--mosaic", type=Path, required=True, help="catalogue with mosaic works")
    parser.add_argument("--tracks", type=int, default=32)
    parser.add_argument("--works", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    frame_rate_hz = FingerprintParams().frame_rate_hz
    sets = {
        "real": read_codes(args.real, args.tracks, mosaic=False),
        "mosaic": read_codes(args.mosaic, args.works, mosaic=True),
    }
    for label, references in sets.items():
        if not references:
            raise SystemExit(f"no {label} references in the catalogue given for them")
    result: dict = {
        **run_info(),
        "real_references": len(sets["real"]),
        "mosaic_references": len(sets["mosaic"]),
        "packings": {},
    }
    for packing in packings():
        result["packings"][packing.name] = {
            label: measure(packing, references, frame_rate_hz)
            for label, references in sets.items()
        }
        logger.info("%s: %s", packing.name, result["packings"][packing.name])
    first = next(iter(result["packings"].values()))
    result["real_hours"], result["mosaic_hours"] = first["real"]["hours"], first["mosaic"]["hours"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "packings.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "packings.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
