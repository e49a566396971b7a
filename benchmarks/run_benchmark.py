"""Accuracy and speed of tunetrace on real music with real alteration tools.

    python -m benchmarks.run_benchmark [--size quick|full] [--calibrate]

1. lists the corpus (``benchmarks.corpus``; install it first with
   ``python -m benchmarks.corpus install``) and builds a catalogue of three quarters of it,
   timing ingest with one and with all workers;
2. generates seeded altered queries (calibration and evaluation splits, disjoint tracks);
3. with ``--calibrate``, fits the score model and threshold on the calibration split only
   and writes ``tunetrace/calibration.json``;
4. matches the evaluation split and writes ``benchmarks/results/core.json`` and ``core.md``
   (``core-full.*`` for the full size).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tunetrace.fingerprint.params import FingerprintParams
from tunetrace.fingerprint.tonality import LOW_TONALITY, tonality
from tunetrace.index.catalogue import Catalogue
from tunetrace.index.spectrum_codec import COMPACT_CODEC, LEGACY_CODEC, SpectrumCodec
from tunetrace.index.vector_index import IndexSpec

from benchmarks import corpus
from benchmarks.queries import FAMILIES, SHARED_MATERIAL, Query, in_catalogue, make_queries
from benchmarks.run_info import run_info
from tunetrace.errors import TunetraceError
from tunetrace.ingest import IngestItem, ingest
from tunetrace.matcher import Matcher
from tunetrace.scoring import DECREASING, FEATURE_NAMES, ScoreModel, measurement_vector

logger = logging.getLogger("benchmarks")
RESULTS = Path(__file__).parent / "results"
CACHE = Path(os.environ.get("TUNETRACE_BENCH_CACHE", Path.home() / ".cache" / "tunetrace-bench"))
SIZES = {
    "quick": {"per_family": 25, "negatives": 220, "cal_per_family": 14, "cal_negatives": 120},
    "full": {"per_family": 60, "negatives": 400, "cal_per_family": 30, "cal_negatives": 250},
}


def list_tracks() -> list[corpus.Track]:
    """Corpus tracks, cached between runs."""
    listing = CACHE / "tracks.json"
    if listing.exists():
        return [
            corpus.Track(**{**row, "path": Path(row["path"])})
            for row in json.loads(listing.read_text())
        ]
    tracks = corpus.tracks()
    CACHE.mkdir(parents=True, exist_ok=True)
    listing.write_text(json.dumps([{**asdict(t), "path": str(t.path)} for t in tracks]))
    return tracks


def build_catalogue(
    tracks: list[corpus.Track], codec: SpectrumCodec = COMPACT_CODEC
) -> tuple[Path, dict[str, float]]:
    """Catalogue of the in-catalogue tracks, with ingest speed (1 worker vs all)."""
    # One cached catalogue per parameter set and codec: changed ones get a fresh build.
    digest = FingerprintParams().digest()
    if codec != LEGACY_CODEC:
        digest = f"{digest}-{codec.name}"
    directory = CACHE / f"catalogue-{digest}"
    stats_path = CACHE / f"ingest-{digest}.json"
    if (directory / "catalogue.sqlite").exists() and stats_path.exists():
        return directory, json.loads(stats_path.read_text())
    members = [t for t in tracks if in_catalogue(t)]
    items = [
        IngestItem(t.path, t.track_id, title=t.track_id.split("/")[-1], artist=t.package)
        for t in members
    ]
    single = CACHE / f"catalogue-single-{digest}"
    subset = items[:16]
    with Catalogue(single, create=True) as cat:
        started, cpu = time.perf_counter(), time.process_time()
        summary_one = ingest(cat, subset, workers=1, replace=True, codec=codec)
        one_wall, one_cpu = time.perf_counter() - started, time.process_time() - cpu
    with Catalogue(directory, create=True) as cat:
        started = time.perf_counter()
        summary_all = ingest(cat, items, workers=os.cpu_count() or 1, replace=True, codec=codec)
        all_wall = time.perf_counter() - started
    stats = {
        "single_worker_audio_s": summary_one.audio_s,
        "single_worker_wall_s": one_wall,
        "single_worker_cpu_s": one_cpu,
        "x_realtime_per_core": summary_one.audio_s / one_wall,
        "all_workers": os.cpu_count() or 1,
        "all_workers_audio_s": summary_all.audio_s,
        "all_workers_wall_s": all_wall,
        "x_realtime_all_workers": summary_all.audio_s / all_wall,
        "references": summary_all.added,
        "failed": len(summary_all.failed),
    }
    stats_path.write_text(json.dumps(stats, indent=1))
    return directory, stats


#: Queries at least this long (decoded) are the "15-s queries" of the latency goal.
LONG_QUERY_S = 14.0


def whole_corpus_latency(tracks: list[corpus.Track], rows: list[dict]) -> dict[str, float]:
    """Latency of the evaluation's 14-15 s queries against a catalogue of every corpus track.

    The latency goal names a catalogue of all dev-corpus tracks; the evaluation catalogue
    holds three quarters of them (the rest give negatives). This catalogue is built once per
    parameter set and cached; its index kind is the one ``auto`` picks, as for the other.
    ``rows`` are the evaluation's (:func:`run_queries`): their decoded durations pick the
    queries, as :func:`evaluate` picks them for its own latency figure.
    """
    digest = f"{FingerprintParams().digest()}-{COMPACT_CODEC.name}"
    directory = CACHE / f"catalogue-all-{digest}"
    if not (directory / "catalogue.sqlite").exists():
        items = [
            IngestItem(t.path, t.track_id, title=t.track_id.split("/")[-1], artist=t.package)
            for t in tracks
        ]
        with Catalogue(directory, create=True) as cat:
            ingest(cat, items, workers=os.cpu_count() or 1, replace=True)
    with Catalogue(directory) as writer:
        if writer.index_spec.kind != "auto":
            writer.rebuild_index(IndexSpec(kind="auto"))
    catalogue = Catalogue(directory, read_only=True)
    long_queries = [
        Query(**row["query"])
        for row in rows
        if "error" not in row and row["duration_s"] >= LONG_QUERY_S
    ]
    timed = [r for r in run_queries(Matcher(catalogue), long_queries) if "error" not in r]
    elapsed = np.array([r["elapsed_s"] for r in timed])
    info = catalogue.info()
    catalogue.close()
    return {
        "references": float(info["references"]),  # type: ignore[arg-type]
        "audio_hours": float(info["audio_hours"]),  # type: ignore[arg-type]
        "queries": float(len(timed)),
        "latency_median_s": float(np.median(elapsed)),
        "latency_p95_s": float(np.percentile(elapsed, 95)),
    }


def run_queries(matcher: Matcher, queries: list[Query]) -> list[dict[str, object]]:
    """Fingerprint, search and verify each query; keep every scored verification."""
    rows = []
    for query in queries:
        started = time.perf_counter()
        try:
            features = matcher.load_query(query.path)
        except TunetraceError as exc:  # e.g. an excerpt that fell on silence
            rows.append({"query": asdict(query), "error": str(exc)})
            continue
        verifications = matcher.verify(features)
        query_tonality = tonality(features, params=matcher.catalogue.params)
        elapsed = time.perf_counter() - started
        rows.append(
            {
                "query": asdict(query),
                "duration_s": features.duration_s,
                "elapsed_s": elapsed,
                "tonality": query_tonality,
                "verifications": [
                    {
                        "reference_id": matcher.catalogue.record_by_key(
                            v.reference_key
                        ).reference_id,
                        "measurements": measurement_vector(v).tolist(),
                        "all_measurements": {
                            name: getattr(v, name) for name in (*FEATURE_NAMES, "votes")
                        },
                        "tempo_ratio": v.tempo_ratio,
                        "offset_s": v.offset_frames / matcher.catalogue.params.frame_rate_hz,
                        "pitch_shift_semitones": v.pitch_shift_semitones,
                        "spectral_shift_semitones": v.spectral_shift_semitones,
                    }
                    for v in verifications
                ],
            }
        )
    return rows


def _label(row: dict, verification: dict) -> float | None:
    """1 for the query's own reference, 0 for another, None for a pair sharing material."""
    query = row["query"]
    if query["positive"] and verification["reference_id"] == query["source_id"]:
        return 1.0
    if frozenset((query["source_id"], verification["reference_id"])) in SHARED_MATERIAL:
        return None
    return 0.0


#: A verification of a positive query's own reference is a true example for the score model
#: only when it found the copy's alignment (tempo ratio and the reference time of the query's
#: first frame) within these tolerances.
TRUE_TEMPO_TOLERANCE = 0.03
TRUE_OFFSET_TOLERANCE_S = 1.5


def _training_label(row: dict, verification: dict) -> float | None:
    """:func:`_label`, but ``None`` for the own reference verified at a wrong alignment.

    The matcher verifies several places and tempo ratios of a strong candidate; those that
    miss the copy's alignment measure a coincidence of the right reference, not a copy.
    Fitted as copies they taught the model to accept coincidence-level fits; fitted as
    non-copies they would punish real repeats (a chorus verified at its other occurrence).
    So they are left out.
    """
    label = _label(row, verification)
    if label != 1.0:
        return label
    query = row["query"]
    tempo_error = abs(verification["tempo_ratio"] / query["tempo_ratio"] - 1)
    offset_error = abs(verification["offset_s"] - query["reference_start_s"])
    found = tempo_error <= TRUE_TEMPO_TOLERANCE and offset_error <= TRUE_OFFSET_TOLERANCE_S
    return 1.0 if found else None


#: Share of queries without a copy that may be flagged: the threshold is where the fitted tail
#: of calibration queries' best coincidence scores falls to this rate.
TARGET_FALSE_POSITIVE_RATE = 1e-4
#: Share of the calibration queries (highest best-coincidence scores) the tail is fitted to.
TAIL_FRACTION = 0.1
#: Fewer calibration queries with a coincidence than this fit no tail (the threshold then
#: sits one unit of log-odds above the highest coincidence).
MIN_TAIL_QUERIES = 50


def tail_quantile(values: np.ndarray, rate: float, tail_fraction: float = TAIL_FRACTION) -> float:
    """The value exceeded with probability ``rate``, from an exponential tail fitted to the
    highest ``tail_fraction`` of ``values`` (peaks over a threshold).

    With a few hundred calibration queries the highest one alone says little about a rate of
    1 in 10,000; the excesses of the top tenth over their smallest value are fitted with an
    exponential (the generalised Pareto tail with shape 0), whose mean is their mean excess.

    Parameters
    ----------
    values : np.ndarray
    rate : float
        Target exceedance probability, below ``tail_fraction``.
    tail_fraction : float

    Returns
    -------
    quantile : float
    """
    ordered = np.sort(values)
    n_tail = max(5, round(tail_fraction * len(ordered)))
    share = n_tail / len(ordered)
    return float(ordered[-n_tail]) + tail_scale(values, tail_fraction) * float(np.log(share / rate))


def tail_scale(values: np.ndarray, tail_fraction: float = TAIL_FRACTION) -> float:
    """Mean excess of the highest ``tail_fraction`` of ``values`` over their smallest: the
    scale of the exponential tail :func:`tail_quantile` fits."""
    ordered = np.sort(values)
    tail = ordered[-max(5, round(tail_fraction * len(ordered))) :]
    return float(np.mean(tail - tail[0]))


def fit_score_model(rows: list[dict]) -> ScoreModel:
    """Logistic regression (L2) on calibration verifications; threshold from its negatives."""
    from scipy.optimize import minimize

    features, labels, row_of = [], [], []
    for number, row in enumerate(rows):
        for v in row.get("verifications", []):
            label = _training_label(row, v)
            if label is not None:
                features.append(v["measurements"])
                labels.append(label)
                row_of.append(number)
    x, y, row_index = np.asarray(features), np.asarray(labels), np.asarray(row_of)
    weights = np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))

    def loss(theta: np.ndarray) -> float:
        z = x @ theta[:-1] + theta[-1]
        return float(
            np.sum(weights * (np.logaddexp(0, z) - y * z)) + 0.01 * np.sum(theta[:-1] ** 2)
        )

    # Monotone prior: more similarity or coverage never lowers the score, a higher
    # coincidence level never raises it.
    bounds = [(None, 0.0) if name in DECREASING else (0.0, None) for name in FEATURE_NAMES]
    theta = minimize(
        loss, np.zeros(x.shape[1] + 1), method="L-BFGS-B", bounds=[*bounds, (None, None)]
    ).x
    logits = x @ theta[:-1] + theta[-1]
    scores = 1 / (1 + np.exp(-logits))
    negative = y == 0
    negative_max = float(scores[negative].max()) if negative.any() else 0.5
    # Each query's best coincidence (its highest-scoring wrong reference).
    best_coincidence = np.full(len(rows), -np.inf)
    np.maximum.at(best_coincidence, row_index[negative], logits[negative])
    best_coincidence = best_coincidence[np.isfinite(best_coincidence)]
    threshold_logit = float(np.log(negative_max / (1 - negative_max + 1e-12))) + 1.0
    scale = None
    if len(best_coincidence) >= MIN_TAIL_QUERIES:
        tail = tail_quantile(best_coincidence, TARGET_FALSE_POSITIVE_RATE)
        threshold_logit = max(threshold_logit, tail)
        scale = tail_scale(best_coincidence)
    threshold = float(max(0.5, 1 / (1 + np.exp(-threshold_logit))))
    recall = float((scores[y == 1] >= threshold).mean())
    provenance = (
        f"fitted {time.strftime('%Y-%m-%d')} by benchmarks/run_benchmark.py --calibrate on "
        f"{int(y.sum())} true and {int((1 - y).sum())} false verifications of the calibration "
        f"split (tracks disjoint from the evaluation split); calibration recall at threshold "
        f"{recall:.3f}, highest negative score {negative_max:.3f}; threshold where the fitted "
        f"tail of queries' best coincidence scores falls to {TARGET_FALSE_POSITIVE_RATE:g}"
    )
    logger.info(provenance)
    return ScoreModel(
        tuple(float(w) for w in theta[:-1]), float(theta[-1]), threshold, provenance, scale
    )


def with_measured_tail(model: ScoreModel, rows: list[dict]) -> ScoreModel:
    """``model`` with the tail scale of its own calibration queries' best coincidence log-odds
    (what :meth:`ScoreModel.score_section` needs), weights and threshold unchanged."""
    best = []
    for row in rows:
        logits = [
            float(np.dot(model.weights, v["measurements"]) + model.bias)
            for v in row.get("verifications", [])
            if _training_label(row, v) == 0.0
        ]
        if logits:
            best.append(max(logits))
    if len(best) < MIN_TAIL_QUERIES:
        raise ValueError(f"only {len(best)} calibration queries with a coincidence")
    scale = tail_scale(np.asarray(best))
    provenance = (
        f"{model.provenance}; tail scale {scale:.3f} (log-odds) measured "
        f"{time.strftime('%Y-%m-%d')} by benchmarks/run_benchmark.py --measure-tail on the best "
        f"coincidences of {len(best)} calibration queries under these weights"
    )
    return ScoreModel(model.weights, model.bias, model.threshold, provenance, scale)


def _wrap(semitones: float) -> float:
    return (semitones + 6) % 12 - 6


def evaluate(rows: list[dict], model: ScoreModel) -> dict[str, object]:
    """Recall per family, false positives, estimate errors and latency on scored rows."""
    per_family: dict[str, list[int]] = {f: [] for f in FAMILIES}
    by_tonality: dict[str, list[int]] = {"low": [], "tonal": []}
    tempo_errors, pitch_errors, negatives_flagged, wrong_top = [], [], 0, 0
    n_negatives = 0
    failures = []
    unusable = 0
    for row in rows:
        query = row["query"]
        if "error" in row:
            unusable += 1
            continue
        scored = [(model.score_measurements(v["measurements"]), v) for v in row["verifications"]]
        passed = sorted(
            [s for s in scored if s[0] >= model.threshold and _label(row, s[1]) is not None],
            key=lambda s: -s[0],
        )
        if not query["positive"]:
            n_negatives += 1
            negatives_flagged += bool(passed)
            continue
        top = passed[0][1] if passed else None
        hit = top is not None and top["reference_id"] == query["source_id"]
        wrong_top += top is not None and not hit
        per_family[query["family"]].append(int(hit))
        if row.get("tonality") is not None:
            by_tonality["low" if row["tonality"] < LOW_TONALITY else "tonal"].append(int(hit))
        if hit:
            tempo_errors.append(abs(top["tempo_ratio"] / query["tempo_ratio"] - 1))
            pitch_errors.append(abs(_wrap(top["pitch_shift_semitones"] - query["pitch_semitones"])))
        else:
            failures.append(
                {k: query[k] for k in ("path", "family", "tool", "tempo_ratio", "pitch_semitones")}
            )
    timed = [r for r in rows if "error" not in r]
    latencies = np.array([r["elapsed_s"] for r in timed])
    long_latencies = np.array([r["elapsed_s"] for r in timed if r["duration_s"] >= LONG_QUERY_S])
    tempo_errors_a, pitch_errors_a = np.array(tempo_errors), np.array(pitch_errors)
    return {
        "recall_top1": {
            f: (float(np.mean(v)) if v else None, len(v)) for f, v in per_family.items()
        },
        "recall_by_tonality": {
            "threshold": LOW_TONALITY,
            **{k: (float(np.mean(v)) if v else None, len(v)) for k, v in by_tonality.items()},
        },
        "negatives": n_negatives,
        "unusable_queries": unusable,
        "false_positive_queries": negatives_flagged,
        "positive_queries_with_wrong_top1": wrong_top,
        "tempo_within_2pct": float(np.mean(tempo_errors_a <= 0.02))
        if len(tempo_errors_a)
        else None,
        "pitch_within_0.3_semitone": float(np.mean(pitch_errors_a <= 0.3))
        if len(pitch_errors_a)
        else None,
        "both_estimates_within_limits": float(
            np.mean((tempo_errors_a <= 0.02) & (pitch_errors_a <= 0.3))
        )
        if len(tempo_errors_a)
        else None,
        "tempo_error_median": float(np.median(tempo_errors_a)) if len(tempo_errors_a) else None,
        "pitch_error_median": float(np.median(pitch_errors_a)) if len(pitch_errors_a) else None,
        "latency_median_s": float(np.median(latencies)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "latency_median_15s_queries_s": float(np.median(long_latencies))
        if len(long_latencies)
        else None,
        "failures": failures,
    }


def markdown(result: dict) -> str:
    """Short Markdown summary of a result."""
    ev, ing = result["evaluation"], result["ingest"]
    lines = [
        f"Run {result['date']} on {result['machine']} (commit {result['commit']}), "
        f"catalogue of {ing['references']} tracks ({result['catalogue_hours']:.1f} h, "
        f"{result.get('index_kind', 'flat')} vector index), {result['size']} size.",
        "",
        "| family | top-1 recall | queries |",
        "|---|---|---|",
    ]
    for family, (recall, n) in ev["recall_top1"].items():
        lines.append(f"| {family} | {'-' if recall is None else f'{recall:.1%}'} | {n} |")
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
    ]
    table = [
        (
            "false positives on negative queries",
            f"{ev['false_positive_queries']} of {ev['negatives']}",
        ),
        (
            "positive queries whose top match was the wrong track",
            str(ev["positive_queries_with_wrong_top1"]),
        ),
        ("tempo ratio within 2% (correct matches)", f"{ev['tempo_within_2pct']:.1%}"),
        (
            "pitch shift within 0.3 semitone (correct matches)",
            f"{ev['pitch_within_0.3_semitone']:.1%}",
        ),
        ("ingest, one worker (x realtime per core)", f"{ing['x_realtime_per_core']:.0f}x"),
        (
            f"ingest, {ing['all_workers']} workers (x realtime)",
            f"{ing['x_realtime_all_workers']:.0f}x",
        ),
        (
            "query latency median / p95 (10-15 s queries, incl. decoding)",
            f"{ev['latency_median_s'] * 1000:.0f} / {ev['latency_p95_s'] * 1000:.0f} ms",
        ),
        (
            "query latency median, 14-15 s queries",
            f"{(ev['latency_median_15s_queries_s'] or 0) * 1000:.0f} ms",
        ),
        ("score threshold (fitted on the calibration split)", f"{result['threshold']:.3f}"),
    ]
    whole = result.get("whole_corpus_latency")
    if whole:
        table.append(
            (
                f"query latency median / p95, 14-15 s queries, catalogue of all "
                f"{whole['references']:.0f} corpus tracks ({whole['audio_hours']:.1f} h)",
                f"{whole['latency_median_s'] * 1000:.0f} / {whole['latency_p95_s'] * 1000:.0f} ms",
            )
        )
    tonal = ev.get("recall_by_tonality")
    if tonal and tonal["low"][1] and tonal["tonal"][1]:
        table.append(
            (
                f"top-1 recall, queries of tonality below {tonal['threshold']:.1f} / the rest",
                f"{tonal['low'][0]:.1%} of {tonal['low'][1]} / "
                f"{tonal['tonal'][0]:.1%} of {tonal['tonal'][1]}",
            )
        )
    lines += [f"| {name} | {value} |" for name, value in table]
    return "\n".join(lines) + "\n"


def _rows(matcher: Matcher, queries: list[Query], name: str, reuse: bool) -> list[dict]:
    """Run the queries, or with ``reuse`` read the rows an earlier run cached (rows cached
    before queries' tonality was recorded get it measured now)."""
    cached = CACHE / f"{name}-rows.json"
    if reuse and cached.exists():
        rows = json.loads(cached.read_text())
        missing = [row for row in rows if "error" not in row and "tonality" not in row]
        for row in missing:
            features = matcher.load_query(row["query"]["path"])
            row["tonality"] = tonality(features, params=matcher.catalogue.params)
        if missing:
            cached.write_text(json.dumps(rows))
        return rows
    rows = run_queries(matcher, queries)
    cached.write_text(json.dumps(rows))
    return rows


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--calibrate", action="store_true", help="refit tunetrace/calibration.json")
    parser.add_argument(
        "--calibration-size",
        choices=sorted(SIZES),
        default=None,
        help="size of the calibration split (default: --size); the full one has 250 negatives",
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--measure-tail",
        action="store_true",
        help="measure only the coincidence tail scale of the shipped weights on the calibration "
        "split and record it in tunetrace/calibration.json (weights and threshold kept)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse cached verification rows (only the score model and figures are redone)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    size = SIZES[args.size]
    tracks = corpus.installed_or_exit(list_tracks())
    directory, ingest_stats = build_catalogue(tracks)
    with Catalogue(directory) as writer:
        if writer.index_spec.kind != "auto":
            # As `tunetrace index build` does: the index kind suited to the catalogue's size.
            writer.rebuild_index(IndexSpec(kind="auto"))
    catalogue = Catalogue(directory, read_only=True)  # as `match`, the API and scans open it
    matcher = Matcher(catalogue)
    if args.calibrate or args.measure_tail:
        calibration_size = args.calibration_size or args.size
        calibration = make_queries(
            tracks,
            split="calibration",
            per_family=SIZES[calibration_size]["cal_per_family"],
            negatives=SIZES[calibration_size]["cal_negatives"],
            cache=CACHE / "queries",
            seed=args.seed,
        )
        logger.info("matching %d calibration queries", len(calibration))
        calibration_rows = _rows(
            matcher, calibration, f"calibration-{calibration_size}-{args.seed}", args.reuse
        )
        path = Path(__file__).parent.parent / "tunetrace" / "calibration.json"
        if args.measure_tail:
            model = with_measured_tail(matcher.score_model, calibration_rows)
            path.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
            logger.info("tail scale %.3f recorded in %s", model.tail_scale_logit, path)
            return
        model = fit_score_model(calibration_rows)
        path.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
        matcher = Matcher(catalogue, score_model=model)
    evaluation = make_queries(
        tracks,
        split="evaluation",
        per_family=size["per_family"],
        negatives=size["negatives"],
        cache=CACHE / "queries",
        seed=args.seed + 1,
    )
    logger.info("matching %d evaluation queries", len(evaluation))
    rows = _rows(matcher, evaluation, f"evaluation-{args.size}-{args.seed}", args.reuse)
    whole_corpus = whole_corpus_latency(tracks, rows)
    result = {
        **run_info(),
        "size": args.size,
        "catalogue_hours": float(catalogue.info()["audio_hours"]),  # type: ignore[arg-type]
        "index_kind": catalogue.info()["index_kind"],
        "threshold": matcher.score_model.threshold,
        "score_features": list(FEATURE_NAMES),
        "ingest": ingest_stats,
        "evaluation": evaluate(rows, matcher.score_model),
        "whole_corpus_latency": whole_corpus,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    # The quick run is the reference one (core.*); other sizes are kept beside it.
    name = "core" if args.size == "quick" else f"core-{args.size}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
