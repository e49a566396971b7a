"""Figures of the partial-copy benchmark, computed from per-query rows.

A row holds a query's truth and tunetrace's report, made with no threshold (every verified
reference, best first) so that thresholds can be refitted offline; the figures apply the
shipped threshold here, and keep the first :data:`REPORT_TOP` matches above it, as the CLI
and the API report them.

Truth (``row["truth"]``): ``family``, ``label``, ``negative`` (bool), ``duration_s`` (the
upload's measured length), ``sections`` (each ``work_id``, ``query_start_s``,
``query_end_s``, ``reference_start_s``, ``reference_end_s``, ``tempo_ratio``,
``pitch_semitones``, ``tool``, ``length_label``) and ``sources`` (every track the upload was
cut from, copies, filler and negatives alike).

Definitions
-----------
found
    a reported match for the section's work has a segment overlapping the section;
located
    such a segment also has both query edges within :data:`EDGE_TOLERANCE_S` of the truth;
stray segment
    a reported segment that overlaps no true section of its match's work (a fragment, or a
    match for a work the upload does not hold);
duplicate segment
    a further segment of the right work over a section another segment already covers.

Matches for references known to share recorded material with any source of the upload
(``benchmarks.suite_metrics.shares_material``) are neither hits nor errors: they are left out.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator

import numpy as np

from benchmarks.suite_metrics import shares_material, upper_bound_95

#: Both query edges of a located section lie this close to the truth.
EDGE_TOLERANCE_S = 2.0
#: Matches a report holds at most (the CLI's and the API's default).
REPORT_TOP = 5
#: Upload length buckets, (label, lower bound s, upper bound s).
LENGTH_BUCKETS = (
    ("<1 min", 0.0, 60.0),
    ("1-3 min", 60.0, 180.0),
    ("3-6 min", 180.0, 360.0),
    ("6-10 min", 360.0, 600.0),
    (">10 min", 600.0, float("inf")),
)
#: "4-minute uploads" of the latency figure.
FOUR_MINUTES_S = (210.0, 270.0)


def _natural(key: str) -> list[object]:
    """Sort key that puts "8 s" before "10 s"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def length_bucket(duration_s: float) -> str:
    """Label of the upload length bucket holding ``duration_s`` seconds."""
    for label, low, high in LENGTH_BUCKETS:
        if low <= duration_s < high:
            return label
    return LENGTH_BUCKETS[-1][0]


def overlap_s(start_a: float, end_a: float, start_b: float, end_b: float) -> float:
    """Seconds shared by the intervals ``[start_a, end_a)`` and ``[start_b, end_b)``."""
    return max(0.0, min(end_a, end_b) - max(start_a, start_b))


def _overlaps(segment: dict, section: dict) -> bool:
    return (
        overlap_s(
            segment["query_start_s"],
            segment["query_end_s"],
            section["query_start_s"],
            section["query_end_s"],
        )
        > 0.0
    )


def locates(segment: dict, section: dict, tolerance_s: float = EDGE_TOLERANCE_S) -> bool:
    """Whether a reported segment locates a true section (overlap, both query edges close).

    Parameters
    ----------
    segment : dict
        A reported segment (``query_start_s``, ``query_end_s`` in seconds).
    section : dict
        A true section (same keys).
    tolerance_s : float
        Largest distance, in seconds, of each query edge from the truth.
    """
    return (
        _overlaps(segment, section)
        and abs(segment["query_start_s"] - section["query_start_s"]) <= tolerance_s
        and abs(segment["query_end_s"] - section["query_end_s"]) <= tolerance_s
    )


def _ignored(truth: dict, reference_id: str) -> bool:
    """A reference that shares material with a source of the upload (other than itself)."""
    return any(
        source != reference_id and shares_material(source, reference_id)
        for source in truth.get("sources", [])
    )


def reported(row: dict, threshold: float) -> list[dict]:
    """The matches the product reports for a row at ``threshold`` (best first).

    Matches for references that share material with a source of the upload are left out.
    """
    if "error" in row:
        return []
    above = [m for m in row["report"]["matches"] if m["score"] >= threshold][:REPORT_TOP]
    return [m for m in above if not _ignored(row["truth"], m["reference_id"])]


def _segments_of(matches: list[dict], work_id: str) -> list[dict]:
    return [s for m in matches if m["reference_id"] == work_id for s in m["segments"]]


def section_outcome(section: dict, matches: list[dict]) -> tuple[bool, bool]:
    """``(found, located)`` for one true section given the reported matches."""
    segments = _segments_of(matches, section["work_id"])
    found = any(_overlaps(s, section) for s in segments)
    return found, found and any(locates(s, section) for s in segments)


def repeats_located(sections: list[dict], matches: list[dict]) -> int:
    """True sections each located by a segment of its own (one segment serves one section)."""
    used: set[int] = set()
    count = 0
    for section in sorted(sections, key=lambda s: s["query_start_s"]):
        segments = _segments_of(matches, section["work_id"])
        for number, segment in enumerate(segments):
            if number not in used and locates(segment, section):
                used.add(number)
                count += 1
                break
    return count


def medley_complete(truth: dict, matches: list[dict]) -> bool:
    """Whether every work of a medley is found (a match for it overlaps one of its sections)."""
    works = {s["work_id"] for s in truth["sections"]}
    return all(
        any(section_outcome(s, matches)[0] for s in truth["sections"] if s["work_id"] == work)
        for work in works
    )


def hygiene(truth: dict, matches: list[dict]) -> dict[str, int]:
    """Segments reported beyond one per true section.

    Returns
    -------
    counts : dict
        ``stray`` (segments overlapping no true section of their match's work; every segment
        of a match for a work the upload does not hold counts), ``duplicate`` (segments of
        the right work beyond the first over one true section) and ``wrong_work`` (matches
        for works the upload does not hold).
    """
    counts = {"stray": 0, "duplicate": 0, "wrong_work": 0}
    works = {s["work_id"] for s in truth["sections"]}
    for match in matches:
        if match["reference_id"] not in works:
            counts["wrong_work"] += 1
        own = [s for s in truth["sections"] if s["work_id"] == match["reference_id"]]
        covered: set[int] = set()
        for segment in match["segments"]:
            hit = [n for n, section in enumerate(own) if _overlaps(segment, section)]
            if not hit:
                counts["stray"] += 1
            elif all(n in covered for n in hit):
                counts["duplicate"] += 1
            covered.update(hit)
    return counts


def _rate(values: list[int]) -> float | None:
    return float(np.mean(values)) if values else None


def _copied_sections(
    rows: Iterable[dict], threshold: float
) -> Iterator[tuple[dict, dict, list[dict]]]:
    """``(truth, section, reported matches)`` for every copied section of the positive rows."""
    for row in rows:
        truth = row["truth"]
        if truth["negative"]:
            continue
        matches = reported(row, threshold)
        for section in truth["sections"]:
            yield truth, section, matches


def section_table(rows: Iterable[dict], threshold: float) -> dict[str, dict[str, float | None]]:
    """Sections found and located, per ``"family / section length"`` and per family."""
    found: dict[str, list[int]] = defaultdict(list)
    located: dict[str, list[int]] = defaultdict(list)
    for truth, section, matches in _copied_sections(rows, threshold):
        was_found, was_located = section_outcome(section, matches)
        for key in (truth["family"], f"{truth['family']} / {section['length_label']}"):
            found[key].append(int(was_found))
            located[key].append(int(was_located))
    return {
        key: {"located": _rate(located[key]), "found": _rate(found[key]), "n": len(found[key])}
        for key in sorted(found, key=_natural)
    }


def medley_table(rows: Iterable[dict], threshold: float) -> dict[str, dict[str, float | None]]:
    """Fraction of medleys with every work found, and with every section located, by family."""
    complete: dict[str, list[int]] = defaultdict(list)
    all_located: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        truth = row["truth"]
        if truth["negative"] or not truth["family"].startswith("medley"):
            continue
        matches = reported(row, threshold)
        complete[truth["family"]].append(int(medley_complete(truth, matches)))
        all_located[truth["family"]].append(
            int(all(section_outcome(s, matches)[1] for s in truth["sections"]))
        )
    return {
        family: {
            "every_work_found": _rate(complete[family]),
            "every_section_located": _rate(all_located[family]),
            "n": len(complete[family]),
        }
        for family in sorted(complete)
    }


def loop_table(rows: Iterable[dict], threshold: float) -> dict[str, float | None]:
    """Fraction of a loop's repeats located by a segment of their own."""
    own, total, every = 0, 0, []
    for row in rows:
        truth = row["truth"]
        if truth["family"] != "loop":
            continue
        located = repeats_located(truth["sections"], reported(row, threshold))
        own += located
        total += len(truth["sections"])
        every.append(int(located == len(truth["sections"])))
    return {
        "repeats_located": own / total if total else None,
        "repeats": total,
        "loops_with_every_repeat_located": _rate(every),
        "loops": len(every),
    }


def hygiene_table(rows: Iterable[dict], threshold: float) -> dict[str, dict[str, float]]:
    """Stray and duplicate segments and wrong works per query, by family (positives)."""
    groups: dict[str, list[dict[str, int]]] = defaultdict(list)
    for row in rows:
        truth = row["truth"]
        if truth["negative"]:
            continue
        groups[truth["family"]].append(hygiene(truth, reported(row, threshold)))
    table = {}
    for family, counts in sorted(groups.items()):
        table[family] = {
            "stray_per_query": float(np.mean([c["stray"] for c in counts])),
            "duplicate_per_query": float(np.mean([c["duplicate"] for c in counts])),
            "wrong_work_per_query": float(np.mean([c["wrong_work"] for c in counts])),
            "queries_with_stray_or_duplicate": float(
                np.mean([c["stray"] + c["duplicate"] > 0 for c in counts])
            ),
            "n": len(counts),
        }
    return table


def best_negative_score(row: dict) -> float:
    """Best score of any reference (not sharing material with a source) for a row."""
    if "error" in row:
        return 0.0
    return max(
        (
            m["score"]
            for m in row["report"]["matches"]
            if not _ignored(row["truth"], m["reference_id"])
        ),
        default=0.0,
    )


def false_positive_table(rows: Iterable[dict], threshold: float) -> dict[str, dict[str, float]]:
    """Negatives flagged (any match at ``threshold``), per upload length bucket and in all."""
    groups: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        truth = row["truth"]
        if not truth["negative"]:
            continue
        flagged = int(bool(reported(row, threshold)))
        groups[length_bucket(truth["duration_s"])].append(flagged)
        groups[f"kind: {truth['label']}"].append(flagged)
        groups["all"].append(flagged)
    order = [label for label, _, _ in LENGTH_BUCKETS] + sorted(
        k for k in groups if k.startswith("kind")
    )
    return {
        key: {
            "flagged": int(sum(groups[key])),
            "n": len(groups[key]),
            "rate": float(np.mean(groups[key])),
            "upper_95": upper_bound_95(int(sum(groups[key])), len(groups[key])),
        }
        for key in [*order, "all"]
        if groups.get(key)
    }


def negative_scores(rows: Iterable[dict]) -> dict[str, float | int | list[float]]:
    """Distribution of the best score of each negative upload."""
    scores = sorted(best_negative_score(r) for r in rows if r["truth"]["negative"])
    if not scores:
        return {"n": 0}
    values = np.array(scores)
    return {
        "n": len(scores),
        "p50": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
        "scores": [round(s, 4) for s in scores],
    }


def _wrap(semitones: float) -> float:
    """Semitones wrapped to [-6, 6) (chroma cannot see whole octaves)."""
    return (semitones + 6) % 12 - 6


def estimate_errors(rows: Iterable[dict], threshold: float) -> dict[str, dict[str, float]]:
    """Tempo-ratio and pitch-shift errors of located sections, by family and in all.

    The estimates are those of the section's match (a match has one tempo ratio and one
    pitch shift); tempo errors are absolute (``|estimate - truth|``) and relative
    (``|estimate / truth - 1|``), pitch errors are in semitones, wrapped to an octave.
    """
    tempo: dict[str, list[float]] = defaultdict(list)
    relative: dict[str, list[float]] = defaultdict(list)
    pitch: dict[str, list[float]] = defaultdict(list)
    for truth, section, matches in _copied_sections(rows, threshold):
        if not section_outcome(section, matches)[1]:
            continue
        match = next(m for m in matches if m["reference_id"] == section["work_id"])
        for key in (truth["family"], "all"):
            tempo[key].append(abs(match["tempo_ratio"] - section["tempo_ratio"]))
            relative[key].append(abs(match["tempo_ratio"] / section["tempo_ratio"] - 1))
            pitch[key].append(
                abs(_wrap(match["pitch_shift_semitones"] - section["pitch_semitones"]))
            )
    return {
        key: {
            "tempo_ratio_abs_error_median": float(np.median(tempo[key])),
            "tempo_within_2pct": float(np.mean(np.array(relative[key]) <= 0.02)),
            "pitch_semitones_abs_error_median": float(np.median(pitch[key])),
            "pitch_within_0.3": float(np.mean(np.array(pitch[key]) <= 0.3)),
            "n": len(tempo[key]),
        }
        for key in sorted(tempo)
    }


def latency_table(rows: Iterable[dict]) -> dict[str, dict[str, float]]:
    """p50 and p95 of ``elapsed_s`` (ms) by upload length bucket, and for 4-minute uploads."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if "error" in row:
            continue
        duration = row["report"]["duration_s"]
        elapsed = row["report"]["elapsed_s"]
        groups[length_bucket(duration)].append(elapsed)
        if FOUR_MINUTES_S[0] <= duration <= FOUR_MINUTES_S[1]:
            groups["4-min uploads (3.5-4.5 min)"].append(elapsed)
        groups["all"].append(elapsed)
    order = [label for label, _, _ in LENGTH_BUCKETS] + ["4-min uploads (3.5-4.5 min)", "all"]
    return {
        key: {
            "p50_ms": float(np.median(groups[key]) * 1000),
            "p95_ms": float(np.percentile(groups[key], 95) * 1000),
            "n": len(groups[key]),
        }
        for key in order
        if groups.get(key)
    }
