"""CSV export of JSON Lines match reports, for spreadsheets."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COLUMNS = (
    "query",
    "duration_s",
    "error",
    "reference_id",
    "title",
    "artist",
    "score",
    "tempo_ratio",
    "pitch_shift_semitones",
    "alteration",
    "coverage",
    "segments",
)


def _segments_text(segments: list[dict[str, float]]) -> str:
    return "; ".join(
        f"{s['query_start_s']:.1f}-{s['query_end_s']:.1f} s <-> "
        f"{s['reference_start_s']:.1f}-{s['reference_end_s']:.1f} s"
        for s in segments
    )


def report_rows(lines: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """One row per match; a query without matches (or with an error) gets one row."""
    for line in lines:
        base = {"query": line.get("query"), "duration_s": line.get("duration_s", "")}
        if "error" in line:
            error = line["error"]
            yield {**base, "error": f"{error.get('code')}: {error.get('message')}"}
            continue
        if not line.get("matches"):
            yield base
            continue
        for match in line["matches"]:
            yield {
                **base,
                **{k: match.get(k) for k in COLUMNS if k in match and k != "segments"},
                "segments": _segments_text(match.get("segments", [])),
            }


def write_csv(lines: Iterable[dict[str, Any]], path: Path) -> int:
    """Write report lines as CSV (atomically); returns the number of rows."""
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    with temporary.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        for row in report_rows(lines):
            writer.writerow(row)
            count += 1
    temporary.replace(path)
    return count
