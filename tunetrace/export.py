"""CSV export of JSON Lines match reports, for spreadsheets."""

from __future__ import annotations

import csv
import os
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
    """Write report lines as CSV (atomically); returns the number of rows.

    A file name that is not UTF-8 is written with its undecodable bytes as ``\\udcXX``.

    Raises
    ------
    OSError
        If ``path`` cannot be written (nothing is left behind).
    """
    temporary = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with temporary.open("w", newline="", encoding="utf-8", errors="backslashreplace") as out:
            writer = csv.DictWriter(out, fieldnames=COLUMNS, restval="")
            writer.writeheader()
            for row in report_rows(lines):
                writer.writerow(row)
                count += 1
        temporary.replace(path)
    finally:
        if temporary.exists() and not temporary.is_dir():
            temporary.unlink()
    return count


def csv_problem(path: Path) -> str | None:
    """Why a CSV could not be written at ``path``, or ``None`` (checked before a long scan).

    Parameters
    ----------
    path : Path

    Returns
    -------
    problem : str or None
    """
    if path.is_dir():
        return f"{path} is a folder; give a file name for the CSV"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    if not os.access(path.parent, os.W_OK):
        return f"the folder {path.parent} cannot be written"
    return None
