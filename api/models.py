"""Pydantic models of every HTTP request and response (they make ``/openapi.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Alteration = Literal[
    "none", "time_stretch", "pitch_shift", "speed_change", "time_stretch+pitch_shift"
]


class SegmentModel(BaseModel):
    """A stretch of the query matched to a stretch of the reference."""

    query_start_s: float = Field(ge=0)
    query_end_s: float = Field(ge=0)
    reference_start_s: float = Field(ge=0)
    reference_end_s: float = Field(ge=0)


class MatchModel(BaseModel):
    """One probable copy."""

    reference_id: str
    title: str | None
    artist: str | None
    score: float = Field(ge=0, le=1, description="Calibrated score; the verdict threshold is 0-1.")
    tempo_ratio: float = Field(
        gt=0, description="Reference duration / query duration of the matched material."
    )
    pitch_shift_semitones: float = Field(
        gt=-6, le=6, description="Query pitch minus reference pitch (whole octaves are invisible)."
    )
    alteration: Alteration
    coverage: float = Field(ge=0, le=1, description="Fraction of the query inside segments.")
    segments: list[SegmentModel]


class MatchReportModel(BaseModel):
    """Everything tunetrace says about one query; ``matches`` empty means no probable copy."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "query": "upload.mp3",
                    "duration_s": 201.4,
                    "elapsed_s": 0.41,
                    "matches": [
                        {
                            "reference_id": "album1/track03",
                            "title": "Track three",
                            "artist": "Some artist",
                            "score": 0.993,
                            "tempo_ratio": 1.1,
                            "pitch_shift_semitones": 1.65,
                            "alteration": "speed_change",
                            "coverage": 0.97,
                            "segments": [
                                {
                                    "query_start_s": 0.0,
                                    "query_end_s": 120.2,
                                    "reference_start_s": 10.0,
                                    "reference_end_s": 142.2,
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )

    query: str = Field(description="The upload's file name.")
    duration_s: float = Field(ge=0)
    elapsed_s: float = Field(ge=0)
    matches: list[MatchModel]
    damaged_references: list[str] | None = Field(
        default=None,
        description="Present only when references with damaged stored rows are known (see "
        "the user guide): no upload is compared with them until they are removed and added "
        "again.",
    )


class ReferenceModel(BaseModel):
    """A reference work in the catalogue."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "album1/track03",
                    "title": "Track three",
                    "artist": "Some artist",
                    "isrc": "XXA012500003",
                    "source_path": "track03.flac",
                    "duration_s": 182.5,
                    "added_at": "2026-11-23T10:00:00+00:00",
                }
            ]
        }
    )

    id: str
    title: str | None
    artist: str | None
    isrc: str | None
    source_path: str | None = Field(description="The file name it was added from.")
    duration_s: float = Field(ge=0)
    added_at: str = Field(description="UTC time, ISO 8601.")


class ReferenceListModel(BaseModel):
    """One page of references, ordered by id."""

    total: int = Field(ge=0)
    offset: int = Field(ge=0)
    limit: int = Field(ge=1)
    references: list[ReferenceModel]


class HealthModel(BaseModel):
    """Liveness: the process answers; no catalogue access."""

    status: Literal["ok"]
    version: str
    uptime_s: float
    workers: int
    admitted: int = Field(
        description="Requests holding an admission slot: receiving their upload, waiting for a "
        "worker or being processed (at most workers + max_queue)."
    )
    busy: int = Field(description="Requests being processed or waiting for a worker.")
    queue_depth: int = Field(description="Requests waiting for a worker.")


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="Stable machine-readable code.")
    message: str = Field(description="What went wrong and what to do, for a person.")


class ErrorModel(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "unsupported_audio", "message": "upload.mp3 is not audio"}}
            ]
        }
    )

    error: ErrorDetail
