"""Figures of the benchmark suite, computed from per-query rows.

A tunetrace row holds a query's truth and every scored verification; a peer row holds the
peer's best reference and its score. A query's verdict at a threshold is its best-scoring
reference at or above the threshold (pairs known to share recorded material are ignored).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
from scipy.stats import beta

from benchmarks.queries import SHARED_MATERIAL

#: Pairs of sources known to share material (corpus tracks, rendered pieces on one tune),
#: extended by the suite once it knows its rendered pieces.
KNOWN_SHARED: set[frozenset[str]] = set(SHARED_MATERIAL)


def shares_material(a: str, b: str) -> bool:
    """Whether two sources are known to share material (a match is neither hit nor miss)."""
    return frozenset((a, b)) in KNOWN_SHARED


def tunetrace_verdict(row: dict, threshold: float) -> str | None:
    """The reference tunetrace reports first at ``threshold``, or None."""
    source = row["query"]["source_id"]
    for verification in row.get("verifications", []):  # best first
        if verification["score"] < threshold:
            return None
        if not shares_material(source, verification["reference_id"]):
            return verification["reference_id"]
    return None


def peer_verdict(row: dict, threshold: float) -> str | None:
    """The reference the peer reports at ``threshold``, or None."""
    if row.get("reference_id") is None or row["score"] < threshold:
        return None
    if shares_material(row["query"]["source_id"], row["reference_id"]):
        return None
    return row["reference_id"]


Verdict = Callable[[dict, float], str | None]


def upper_bound_95(failures: int, trials: int) -> float:
    """One-sided 95% Clopper-Pearson upper bound of a rate seen as ``failures / trials``."""
    if trials == 0:
        return 1.0
    if failures >= trials:
        return 1.0
    return float(beta.ppf(0.95, failures + 1, trials - failures))


def recall_table(
    rows: Iterable[dict], verdict: Verdict, threshold: float, key: Callable[[dict], str]
) -> dict[str, dict[str, float]]:
    """Top-1 recall of positive queries grouped by ``key(query)``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        query = row["query"]
        if query["positive"] and "error" not in row:
            groups[key(query)].append(int(verdict(row, threshold) == query["source_id"]))
        elif query["positive"]:
            groups[key(query)].append(0)
    return {name: {"recall": float(np.mean(v)), "n": len(v)} for name, v in groups.items()}


def false_positives(
    rows: Iterable[dict], verdict: Verdict, threshold: float
) -> dict[str, dict[str, float]]:
    """Negative queries flagged, per negative kind and in all, with a 95% upper bound."""
    groups: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        query = row["query"]
        if not query["positive"]:
            flagged = "error" not in row and verdict(row, threshold) is not None
            groups[query["negative_kind"]].append(int(flagged))
            groups["all"].append(int(flagged))
    return {
        kind: {
            "flagged": int(sum(v)),
            "n": len(v),
            "rate": float(np.mean(v)),
            "upper_95": upper_bound_95(int(sum(v)), len(v)),
        }
        for kind, v in groups.items()
    }


def precision_recall(
    rows: list[dict], verdict: Verdict, thresholds: Iterable[float]
) -> list[dict[str, float]]:
    """Precision and recall of reported matches at each threshold.

    A reported match is right when it names the query's source; every other report (a
    negative query flagged, or a positive one given the wrong reference) is a false one.
    """
    positives = sum(1 for r in rows if r["query"]["positive"])
    curve = []
    for threshold in thresholds:
        right = wrong = 0
        for row in rows:
            if "error" in row:
                continue
            reported = verdict(row, threshold)
            if reported is None:
                continue
            if row["query"]["positive"] and reported == row["query"]["source_id"]:
                right += 1
            else:
                wrong += 1
        curve.append(
            {
                "threshold": float(threshold),
                "precision": right / (right + wrong) if right + wrong else 1.0,
                "recall": right / max(1, positives),
                "false_reports": wrong,
            }
        )
    return curve


def _wrap(semitones: float) -> float:
    return (semitones + 6) % 12 - 6


def estimate_errors(rows: Iterable[dict], threshold: float) -> dict[str, float | None]:
    """Tempo-ratio and pitch-shift errors of tunetrace's correct top matches."""
    tempo, pitch = [], []
    for row in rows:
        query = row["query"]
        if not query["positive"] or tunetrace_verdict(row, threshold) != query["source_id"]:
            continue
        top = next(v for v in row["verifications"] if v["reference_id"] == query["source_id"])
        tempo.append(abs(top["tempo_ratio"] / query["tempo_ratio"] - 1))
        pitch.append(abs(_wrap(top["pitch_shift_semitones"] - query["pitch_semitones"])))
    if not tempo:
        return {"n": 0, "tempo_within_2pct": None, "pitch_within_0.3": None}
    tempo_a, pitch_a = np.array(tempo), np.array(pitch)
    return {
        "n": len(tempo),
        "tempo_within_2pct": float(np.mean(tempo_a <= 0.02)),
        "pitch_within_0.3": float(np.mean(pitch_a <= 0.3)),
        "tempo_error_median": float(np.median(tempo_a)),
        "tempo_error_p95": float(np.percentile(tempo_a, 95)),
        "pitch_error_median": float(np.median(pitch_a)),
        "pitch_error_p95": float(np.percentile(pitch_a, 95)),
    }


def stage_timing(rows: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Median and p95 milliseconds of each stage, and of the whole query, by query length."""
    stages: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if "error" in row:
            continue
        for stage, seconds in row["stages"].items():
            stages[stage].append(seconds)
        stages["total"].append(row["elapsed_s"])
        if abs(row["duration_s"] - 10.0) <= 1.0:
            stages["total, 10-s queries"].append(row["elapsed_s"])
    return {
        stage: {
            "p50_ms": float(np.median(v) * 1000),
            "p95_ms": float(np.percentile(v, 95) * 1000),
            "n": len(v),
        }
        for stage, v in stages.items()
    }


def score_distributions(rows: Iterable[dict]) -> dict[str, list[float]]:
    """Scores of true matches, and the best score of each negative query by kind."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if "error" in row:
            continue
        query = row["query"]
        if query["positive"]:
            scores = [
                v["score"] for v in row["verifications"] if v["reference_id"] == query["source_id"]
            ]
            if scores:
                groups["true match"].append(max(scores))
        else:
            scores = [
                v["score"]
                for v in row["verifications"]
                if not shares_material(query["source_id"], v["reference_id"])
            ]
            groups[f"negative: {query['negative_kind']}"].append(max(scores, default=0.0))
    return {k: [round(x, 4) for x in v] for k, v in groups.items()}
