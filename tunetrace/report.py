"""The match report (JSON contract shared by the CLI and the HTTP API)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunetrace.fingerprint.tonality import low_tonality_caution
from tunetrace.types import Segment


@dataclass(frozen=True)
class Match:
    """One probable copy, as reported.

    Attributes
    ----------
    reference_id : str
        Id of the reference the query copies.
    title, artist : str or None
        The reference's metadata.
    score : float
        Calibrated score in [0, 1]; matches are reported at or above the threshold.
    tempo_ratio : float
        Reference duration / query duration of the matched material (1.10: the query plays
        10% faster).
    pitch_shift_semitones : float
        Query pitch minus reference pitch, in (-6, 6].
    alteration : str
        ``none``, ``time_stretch``, ``pitch_shift``, ``speed_change`` or
        ``time_stretch+pitch_shift``.
    coverage : float
        Fraction of the query's duration inside matched segments.
    segments : list of Segment
        Every section of the query copied from the reference, in query order.
    """

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

    Attributes
    ----------
    query : str
        The query's name: the path as given, or an upload's file name.
    duration_s : float
        Duration of the query audio, in seconds.
    elapsed_s : float
        Seconds spent decoding, fingerprinting and matching it.
    matches : list of Match
        Probable copies, best first; empty when nothing passes the threshold.
    query_tonality : float or None
        How tonal the query is (see below).
    damaged_references : tuple of str
        Ids of catalogue references known to have damaged stored rows (recorded by the last
        index rebuild, or found by this matcher): no query is compared with them until they
        are removed and added again, so an empty ``matches`` says nothing about them. Empty
        when none is known (and then left out of the JSON form); a sharded catalogue's come
        from its shards' answers.

    ``query_tonality`` (see :func:`tunetrace.fingerprint.tonality.tonality`) serves the
    human-readable output only; the JSON form does not carry it.
    """

    query: str
    duration_s: float
    elapsed_s: float
    matches: list[Match]
    query_tonality: float | None = None
    damaged_references: tuple[str, ...] = ()

    @property
    def caution(self) -> str | None:
        """What a reviewer should know about an empty report of a mostly non-tonal query
        (:func:`~tunetrace.fingerprint.tonality.low_tonality_caution`); ``None`` otherwise."""
        return None if self.matches else low_tonality_caution(self.query_tonality)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this report, as ``tunetrace match --json`` and ``POST /v1/match``
        give it (see :func:`report_to_dict`)."""
        return report_to_dict(self)


def report_to_dict(report: MatchReport) -> dict[str, Any]:
    """The JSON form of a report (see the report section of the user guide, docs/guide.md)."""
    form = {
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
    if report.damaged_references:
        form["damaged_references"] = list(report.damaged_references)
    return form


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
