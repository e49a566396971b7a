"""Catalogue-size sweep: the whole matching pipeline as the catalogue grows.

The suite's catalogue (dev-corpus tracks and rendered pieces) is grown to each size with
mosaic works, and at each size the same positive and negative queries go through decoding,
search, verification and scoring, so recall, false positives, latency and memory are those of
the real pipeline.

A mosaic work is made faster than audio: its log-frequency spectrum is a sequence of 2-s blocks
cut from random catalogue references at random places, each moved by a random whole number of
semitones (-3..+3), and it is stored exactly as an ingested reference (quantised spectrum,
patch vectors from it). Each work is ``MOSAIC_S`` seconds long. Its blocks come from the real
references, so mosaics are hard distractors: every one shares short stretches with real
tracks, as a huge catalogue of similar music would.
"""

from __future__ import annotations

import logging
import resource
import shutil
import time
from pathlib import Path

import numpy as np
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.index.catalogue import Catalogue, ReferenceData
from tunetrace.index.spectrum_codec import COMPACT_CODEC
from tunetrace.index.storage import stored_reference_vectors
from tunetrace.index.vector_index import IndexSpec

from benchmarks import suite_metrics as metrics
from benchmarks.grid import SuiteQuery
from benchmarks.match_rows import match_row
from benchmarks.run_info import index_file_bytes
from tunetrace.matcher import Matcher
from tunetrace.threads import use_one_thread

logger = logging.getLogger(__name__)
MOSAIC_S = 60.0
BLOCK_S = 2.0


def mosaic_work(
    spectra: list[np.ndarray], params: FingerprintParams, rng: np.random.Generator
) -> ReferenceData:
    """One mosaic work stored like an ingested reference (see the module text)."""
    frames = int(MOSAIC_S * params.frame_rate_hz)
    block = int(BLOCK_S * params.frame_rate_hz)
    step = params.bins_per_octave // 12
    pieces = []
    for _ in range(-(-frames // block)):
        spectrum = spectra[rng.integers(len(spectra))]
        at = int(rng.integers(0, spectrum.shape[1] - block))
        piece = spectrum[:, at : at + block]
        shift = step * int(rng.integers(-3, 4))
        moved = np.zeros_like(piece)
        if shift >= 0:
            moved[shift:] = piece[: piece.shape[0] - shift]
        else:
            moved[:shift] = piece[-shift:]
        pieces.append(moved)
    spectrum = np.concatenate(pieces, axis=1)[:, :frames]
    blob, scale = COMPACT_CODEC.encode(spectrum)
    vectors = stored_reference_vectors(blob, scale, COMPACT_CODEC, params, frames)
    return ReferenceData(blob, scale, frames, MOSAIC_S, vectors, COMPACT_CODEC.name)


def grow_with_mosaics(catalogue: Catalogue, target: int, rng: np.random.Generator) -> float:
    """Add mosaic works until the catalogue holds ``target`` references; seconds taken."""
    started = time.perf_counter()
    params = catalogue.params
    real = [r for r in catalogue.list(limit=1_000_000) if not r.reference_id.startswith("mosaic/")]
    spectra = [catalogue.features(r.key).spectrum for r in real]
    spectra = [s for s in spectra if s.shape[1] > BLOCK_S * params.frame_rate_hz + 1]
    count = catalogue.count()
    while count < target:
        data = mosaic_work(spectra, params, rng)
        catalogue.add(f"mosaic/{count:06d}", data, title="mosaic", save_index=False)
        count += 1
        if count % 10_000 == 0:
            logger.info("%d works, %.0f s", count, time.perf_counter() - started)
    return time.perf_counter() - started


def sweep(
    base: Path,
    positives: list[SuiteQuery],
    negatives: list[SuiteQuery],
    *,
    works: tuple[int, ...],
    queries: int,
    cache: Path,
    seed: int = 7,
) -> list[dict[str, object]]:
    """Recall, false positives, latency and memory at each catalogue size.

    Parameters
    ----------
    base : Path
        The suite's catalogue (copied, never changed).
    positives, negatives : list of SuiteQuery
        Evaluation queries; ``queries`` of each (seeded choice) are used at every size.
    works : tuple of int
        Catalogue sizes, ascending; sizes below the base catalogue's are skipped.
    queries : int
    cache : Path
        Where the grown catalogue is built (replaced on every run).
    seed : int

    Returns
    -------
    rows : list of dict
        One per size.
    """
    use_one_thread()
    rng = np.random.default_rng(seed)
    chosen_positive = [positives[i] for i in sorted(rng.permutation(len(positives))[:queries])]
    chosen_negative = [negatives[i] for i in sorted(rng.permutation(len(negatives))[:queries])]
    directory = cache / f"sweep-{base.name}"
    shutil.rmtree(directory, ignore_errors=True)  # grown afresh: every size starts from base
    shutil.copytree(base, directory)
    results = []
    for size in works:
        with Catalogue(directory) as catalogue:
            if size < catalogue.count():
                continue
            grow_s = grow_with_mosaics(catalogue, size, rng)
            started = time.perf_counter()
            index = catalogue.rebuild_index(IndexSpec(kind="auto"))
            build_s = time.perf_counter() - started
            hours = float(catalogue.info()["audio_hours"])  # type: ignore[arg-type]
            spec = index.spec.to_dict()
            vectors = index.size
        with Catalogue(directory, read_only=True) as catalogue:
            matcher = Matcher(catalogue)
            rows = [match_row(matcher, q) for q in chosen_positive + chosen_negative]
        threshold = matcher.score_model.threshold
        good = [r for r in rows if "error" not in r]
        latencies = np.array([r["elapsed_s"] for r in good])
        ten_s = np.array([r["elapsed_s"] for r in good if abs(r["duration_s"] - 10) <= 1])
        recall = metrics.recall_table(rows, metrics.tunetrace_verdict, threshold, lambda q: "all")
        fps = metrics.false_positives(rows, metrics.tunetrace_verdict, threshold)["all"]
        index_mb = index_file_bytes(directory) / 1e6
        row = {
            "works": size,
            "audio_hours": round(hours, 1),
            "vectors": vectors,
            "index": spec,
            "mosaic_build_s": round(grow_s, 1),
            "index_build_s": round(build_s, 1),
            "index_mb": round(index_mb, 1),
            "index_mb_per_hour": round(index_mb / hours, 3),
            "recall": recall["all"]["recall"],
            "positives": recall["all"]["n"],
            "false_positives": fps["flagged"],
            "negatives": fps["n"],
            "fp_upper_95": fps["upper_95"],
            "latency_p50_ms": float(np.median(latencies) * 1000),
            "latency_p95_ms": float(np.percentile(latencies, 95) * 1000),
            "latency_10s_p50_ms": float(np.median(ten_s) * 1000) if len(ten_s) else None,
            "search_p50_ms": float(np.median([r["stages"]["search"] for r in good]) * 1000),
            "verification_p50_ms": float(
                np.median([r["stages"]["verification"] for r in good]) * 1000
            ),
            "vectors_per_hour": vectors / hours,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        logger.info("scale %s", row)
        results.append(row)
    return results


#: Index kinds that hold every vector in full.
FULL_VECTOR_KINDS = ("flat", "ivfflat", "hnsw")
#: Bytes per vector of the default IVF-PQ index (measured at 100k works by the scale benchmark).
IVFPQ_BYTES_PER_VECTOR = 42

ASSUMPTIONS = """
vectors grow with hours of audio at the measured rate; an index of full vectors (flat,
IVF-Flat) needs the measured MB per hour, an IVF-PQ index 42 bytes per vector (64 4-bit codes,
id, list overhead), what the scale benchmark measured at 100k works; with
4*sqrt(n) inverted lists and a fixed number of probed lists, the vectors scanned per query,
and so the search time, grow as sqrt(n); verification time does not depend on the
catalogue's size (a fixed number of candidates); one shard, one thread.
"""


def extrapolate(rows: list[dict], works: int, hours_per_work: float) -> dict[str, object]:
    """What a catalogue of ``works`` works would need, from the largest measured size.

    The assumptions are :data:`ASSUMPTIONS`, stated with the result.
    """
    last = rows[-1]
    # Full vectors take the MB per hour measured where the index held them (the largest
    # sizes may use IVF-PQ codes instead).
    full = next(
        (r for r in reversed(rows) if r.get("index", {}).get("kind") in FULL_VECTOR_KINDS), last
    )
    hours = works * hours_per_work
    vectors = hours * last["vectors_per_hour"]
    growth = np.sqrt(vectors / last["vectors"])
    search_ms = last["search_p50_ms"] * growth
    return {
        "works": works,
        "hours": round(hours),
        "vectors": int(vectors),
        "full_vector_index_gb": round(hours * full["index_mb_per_hour"] / 1000, 1),
        "ivfpq_index_gb": round(vectors * IVFPQ_BYTES_PER_VECTOR / 1e9, 1),
        "search_p50_ms": round(search_ms),
        "query_p50_ms": round(search_ms + last["verification_p50_ms"]),
        "from_works": last["works"],
        "assumptions": " ".join(ASSUMPTIONS.split()),
    }
