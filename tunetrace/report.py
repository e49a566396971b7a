"""The match report (JSON contract shared by the CLI and the HTTP API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunetrace.fingerprint.tonality import low_tonality_caution
from tunetrace.types import Segment


@dataclass(frozen=True)
class Match:
    """One probable copy, as reported."""

    reference_id: str
    title: str | None
    artist: str | None
    score: float
    tempo_ratio: float
    pitch_shift_semitones: float
    alteration: str
    coverage: float
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class MatchReport:
    """Everything tunetrace says about one query.

    ``query_tonality`` (see :func:`tunetrace.fingerprint.tonality.tonality`) serves the
    human-readable output only; the JSON form does not carry it.
    """

    query: str
    duration_s: float
    elapsed_s: float
    matches: list[Match]
    query_tonality: float | None = None

    @property
    def caution(self) -> str | None:
        """What a reviewer should know about an empty report of a mostly non-tonal query
        (:func:`~tunetrace.fingerprint.tonality.low_tonality_caution`); ``None`` otherwise."""
        return None if self.matches else low_tonality_caution(self.query_tonality)


def report_to_dict(report: MatchReport) -> dict[str, Any]:
    """The JSON form of a report (see the README's report section)."""
    return {
        "query": report.query,
        "duration_s": round(report.duration_s, 2),
        "elapsed_s": round(report.elapsed_s, 3),
        "matches": [
            {
                "reference_id": m.reference_id,
                "title": m.title,
                "artist": m.artist,
                "score": round(m.score, 4),
                "tempo_ratio": round(m.tempo_ratio, 4),
                "pitch_shift_semitones": round(m.pitch_shift_semitones, 2),
                "alteration": m.alteration,
                "coverage": round(m.coverage, 3),
                "segments": [segment_to_dict(s) for s in m.segments],
            }
            for m in report.matches
        ],
    }


def segment_to_dict(segment: Segment) -> dict[str, float]:
    """The JSON form of a matched segment (times in seconds, two decimals)."""
    return {
        "query_start_s": round(segment.query_start_s, 2),
        "query_end_s": round(segment.query_end_s, 2),
        "reference_start_s": round(segment.reference_start_s, 2),
        "reference_end_s": round(segment.reference_end_s, 2),
    }


def error_to_dict(query: str, code: str, message: str) -> dict[str, Any]:
    """The JSON line written for a query that could not be matched."""
    return {"query": query, "error": {"code": code, "message": message}}
