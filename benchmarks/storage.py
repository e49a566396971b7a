"""Catalogue bytes per hour of audio by part, and ingest time over plain decoding.

python -m benchmarks.storage [--repeats 2]

On the core benchmark's catalogue tracks (real music, about 10 h), in one run:

1. plain decoding: every file decoded to 8 kHz mono by tunetrace's decoder
   (:func:`~tunetrace.fingerprint.decode.load_audio`) in a pool of one process per core, as
   ``add`` runs it, and by the ``ffmpeg`` command line (one single-threaded process per core);
2. ``add``: the same files ingested into a new catalogue with every core
   (:func:`~tunetrace.ingest.ingest`), and a 16-file subset with one worker (x realtime per
   core);
3. the catalogue's bytes on disk by part (spectra, stored vectors, index, the rest of the
   database) per hour of audio, with its default (``flat``) index and with the index
   ``tunetrace index build`` picks for its size (``auto``);
4. what matching pays to read each format: the same references in the earlier 8-bit
   format, in the first compact one (Zstandard-packed) and in the one new references get
   (the copies ``benchmarks.compact`` makes of the core benchmark's catalogue), each
   reference's features derived from its row with the cache empty, and whole 10-15 s
   queries with one thread, the catalogues taking turns in one process.

Decoding and adding alternate ``--repeats`` times; medians are reported. Results go to
``benchmarks/results/storage.json`` and ``storage.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tunetrace.fingerprint.decode import load_audio
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.spectrum_codec import COMPACT_CODEC
from tunetrace.index.vector_index import IndexSpec

from benchmarks import corpus
from benchmarks.compact import codec_copy
from benchmarks.queries import in_catalogue
from benchmarks.run_benchmark import CACHE, RESULTS, build_catalogue, list_tracks
from benchmarks.run_info import disk_use, run_info
from tunetrace.ingest import MAX_REFERENCE_S, IngestItem, ingest, worker_pool

logger = logging.getLogger(__name__)

#: Files of the one-worker run.
SINGLE_WORKER_FILES = 16
#: Sizes of the peers on the same 55 references (4.7 h), measured side by side earlier.
PEERS = {"Olaf": 6.1, "audfprint": 0.46}


def source_catalogue() -> Path:
    """The core benchmark's catalogue in the earlier format (built if missing)."""
    from tunetrace.index.spectrum_codec import LEGACY_CODEC

    directory, _ = build_catalogue(corpus.installed_or_exit(list_tracks()), codec=LEGACY_CODEC)
    return directory


def _decode(path: Path) -> float:
    audio = load_audio(
        path, sample_rate_hz=FingerprintParams().sample_rate_hz, max_duration_s=MAX_REFERENCE_S
    )
    return audio.duration_s


def _ffmpeg_decode(path: Path) -> float:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-threads", "1", "-i", str(path),
         "-ac", "1", "-ar", "8000", "-f", "f32le", "-y", os.devnull],
        check=True,
    )  # fmt: skip
    return 0.0


def time_decoding(paths: list[Path], workers: int) -> float:
    """Wall seconds to decode every file with tunetrace's decoder in ``workers`` processes."""
    with worker_pool(workers) as pool:
        list(pool.map(_decode, paths[:workers]))  # processes started and imports done
        started = time.perf_counter()
        list(pool.map(_decode, paths, chunksize=1))
        return time.perf_counter() - started


def time_ffmpeg(paths: list[Path], workers: int) -> float:
    """Wall seconds to decode every file with the ffmpeg command, ``workers`` at a time."""
    with ProcessPoolExecutor(workers) as pool:
        started = time.perf_counter()
        list(pool.map(_ffmpeg_decode, paths, chunksize=1))
        return time.perf_counter() - started


def time_adding(items: list[IngestItem], workers: int, directory: Path) -> tuple[float, float]:
    """Wall seconds of ingesting ``items`` into a new catalogue, and the audio seconds."""
    shutil.rmtree(directory, ignore_errors=True)
    with Catalogue(directory, create=True) as catalogue:
        started = time.perf_counter()
        summary = ingest(catalogue, items, workers=workers)
        elapsed = time.perf_counter() - started
    if summary.failed:
        raise SystemExit(f"ingest failed: {summary.failed[:3]}")
    return elapsed, summary.audio_s


def reading_costs(formats: dict[str, Path], queries: list[Path]) -> dict[str, object]:
    """Median milliseconds to derive a reference's features, and to match a query with one
    thread, against the same references stored in each format (codec name -> catalogue),
    taking turns reference by reference and query by query."""
    from tunetrace.matcher import Matcher
    from tunetrace.threads import use_one_thread

    use_one_thread()
    catalogues = {name: Catalogue(path, read_only=True) for name, path in formats.items()}
    matchers = {name: Matcher(catalogue) for name, catalogue in catalogues.items()}
    keys = {
        name: {r.reference_id: r.key for r in catalogue.list(limit=100_000)}
        for name, catalogue in catalogues.items()
    }
    shared = sorted(set.intersection(*(set(found) for found in keys.values())))
    read_ms: dict[str, list[float]] = {name: [] for name in catalogues}
    match_ms: dict[str, list[float]] = {name: [] for name in catalogues}
    for matcher in matchers.values():  # compiled and warm before timing
        matcher.match_path(queries[0])
    for reference_id in shared:
        for name, catalogue in catalogues.items():
            catalogue.clear_features_cache()
            started = time.perf_counter()
            catalogue.features(keys[name][reference_id])
            read_ms[name].append(1000 * (time.perf_counter() - started))
    for query in queries:
        for name, matcher in matchers.items():
            catalogues[name].clear_features_cache()
            started = time.perf_counter()
            matcher.match_path(query)
            match_ms[name].append(1000 * (time.perf_counter() - started))
    for catalogue in catalogues.values():
        catalogue.close()
    return {
        "references": len(shared),
        "queries": len(queries),
        "read_ms": {name: float(np.median(values)) for name, values in read_ms.items()},
        "match_ms": {name: float(np.median(values)) for name, values in match_ms.items()},
    }


#: Formats whose reading costs are compared: the first catalogues', the first compact one's,
#: one JPEG-LS image per reference, and the one new references get.
READ_FORMATS = ("u8", "b5e0.7z", "b5e0.7j", COMPACT_CODEC.name)


def sizes(directory: Path) -> dict[str, object]:
    """Bytes per hour by part, with the current index, with ``auto``'s, and with ``auto``'s
    keeping float16 vectors."""
    with Catalogue(directory) as catalogue:
        default = catalogue.info()
        catalogue.rebuild_index(IndexSpec(kind="auto"))
        catalogue.vacuum()
        auto = catalogue.info()
        catalogue.rebuild_index(IndexSpec(kind="auto", vector_bits=16))
        catalogue.vacuum()
        auto_16_bit = catalogue.info()
    return {
        "audio_hours": default["audio_hours"],
        "default_index": _size_entry(default),
        "auto_index": _size_entry(auto),
        "auto_index_16_bit_vectors": _size_entry(auto_16_bit),
    }


def _size_entry(info: dict) -> dict[str, object]:
    return {
        "index_kind": info["index_kind"],
        **disk_use(info),
    }


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tracks = [t for t in corpus.installed_or_exit(list_tracks()) if in_catalogue(t)]
    paths = [t.path for t in tracks]
    items = [IngestItem(t.path, t.track_id) for t in tracks]
    workers = os.cpu_count() or 1
    runs: dict[str, list[float]] = {"decode": [], "ffmpeg": [], "add": [], "add_one_worker": []}
    audio_s = single_audio_s = 0.0
    with tempfile.TemporaryDirectory(prefix="tunetrace-storage-") as scratch:
        directory = Path(scratch) / "catalogue"
        for repeat in range(args.repeats):
            logger.info("run %d of %d", repeat + 1, args.repeats)
            runs["decode"].append(time_decoding(paths, workers))
            runs["ffmpeg"].append(time_ffmpeg(paths, workers))
            elapsed, audio_s = time_adding(items, workers, directory)
            runs["add"].append(elapsed)
            single, single_audio_s = time_adding(
                items[:SINGLE_WORKER_FILES], 1, Path(scratch) / "single"
            )
            runs["add_one_worker"].append(single)
            logger.info("decode %.1f s, ffmpeg %.1f s, add %.1f s, one worker %.1f s",
                        runs["decode"][-1], runs["ffmpeg"][-1], elapsed, single)  # fmt: skip
        size = sizes(directory)
    median = {name: float(np.median(values)) for name, values in runs.items()}
    reading = None
    formats = {name: codec_copy(source_catalogue(), name) for name in dict.fromkeys(READ_FORMATS)}
    # the core benchmark's calibration queries, else the suite's (made by those benchmarks)
    query_files = sorted((CACHE / "queries").glob("calibration-seed*/*.wav"))[::5][:60] or sorted(
        (CACHE / "suite-queries").glob("calibration-seed*/*.wav")
    )[::5][:60]
    if query_files:
        reading = reading_costs(formats, query_files)
    else:
        logger.warning(
            "reading costs not measured: no calibration queries cached "
            "(python -m benchmarks.run_benchmark makes them)"
        )
    result = {
        **run_info(),
        "files": len(paths),
        "audio_hours": audio_s / 3600,
        "workers": workers,
        "runs_s": runs,
        "median_s": median,
        "add_over_decode": median["add"] / median["decode"],
        "add_over_ffmpeg": median["add"] / median["ffmpeg"],
        "add_x_realtime": audio_s / median["add"],
        "add_x_realtime_per_core_one_worker": single_audio_s / median["add_one_worker"],
        "sizes": size,
        "reading": reading,
        "peers_mb_per_audio_hour": PEERS,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "storage.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "storage.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The Markdown tables of :func:`main`'s result."""
    default, auto = result["sizes"]["default_index"], result["sizes"]["auto_index"]
    auto_16_bit = result["sizes"]["auto_index_16_bit_vectors"]
    parts = list(default["mb_per_audio_hour_by_part"])
    lines = [
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}): "
        f"{result['files']} files, {result['audio_hours']:.1f} h of real music, "
        f"{result['workers']} workers, medians of {len(result['runs_s']['add'])} runs.",
        "",
        "| MB per hour of audio | " + " | ".join(parts) + " | on disk |",
        "|---|" + "---|" * (len(parts) + 1),
    ]
    rows = [
        (f"`{default['index_kind']}` index (default)", default),
        (f"`{auto['index_kind']}` index (`index build`)", auto),
        (f"`{auto_16_bit['index_kind']}` index, `--vector-bits 16`", auto_16_bit),
    ]
    for label, entry in rows:
        by_part = entry["mb_per_audio_hour_by_part"]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{by_part[p]:.2f}" for p in parts)
            + f" | {entry['mb_per_audio_hour']:.2f} |"
        )
    median = result["median_s"]
    lines += [
        "",
        "| ingest | value |",
        "|---|---|",
        f"| `add`, all workers | {median['add']:.1f} s, "
        f"{result['add_x_realtime']:.0f}x realtime |",
        f"| plain decoding (tunetrace's decoder, same pool) | {median['decode']:.1f} s |",
        f"| plain decoding (`ffmpeg -threads 1`, one per core) | {median['ffmpeg']:.1f} s |",
        f"| `add` over plain decoding | {result['add_over_decode']:.2f} "
        f"(over ffmpeg: {result['add_over_ffmpeg']:.2f}) |",
        f"| `add`, one worker | {result['add_x_realtime_per_core_one_worker']:.0f}x realtime "
        "per core |",
    ]
    reading = result.get("reading")
    if reading:
        names = list(reading["read_ms"])
        lines += [
            "",
            f"Reading each format ({reading['references']} references, "
            f"{reading['queries']} calibration queries, one thread, feature cache empty, "
            "medians; the same references in every format, taking turns):",
            "",
            "| | " + " | ".join(f"`{name}`" for name in names) + " |",
            "|---|" + "---|" * len(names),
            "| a reference's features derived from its row | "
            + " | ".join(f"{reading['read_ms'][name]:.2f} ms" for name in names) + " |",
            "| a whole query (decode, search, verification) | "
            + " | ".join(f"{reading['match_ms'][name]:.0f} ms" for name in names) + " |",
        ]
    else:
        lines += [
            "",
            "Reading each format: not measured in this run (no calibration queries cached; "
            "`python -m benchmarks.run_benchmark` makes them).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
