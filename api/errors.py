"""HTTP errors: one JSON shape, ``{"error": {"code": ..., "message": ...}}``, for every failure.

:func:`status_for` is the one place where library errors become HTTP statuses.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tunetrace.errors import (
    AudioDecodeError,
    AudioTooLongError,
    AudioTooShortError,
    BadInputError,
    CatalogueNotFoundError,
    DamagedReferenceError,
    DuplicateReferenceError,
    InvalidReferenceIdError,
    ReferenceNotFoundError,
    ShardUnavailableError,
    TunetraceError,
)


class ApiError(Exception):
    """An error answered with ``status`` and the JSON error body.

    Parameters
    ----------
    status : int
    code : str
        Stable machine-readable code (``upload_too_large``, ``unsupported_audio`` ...).
    message : str
        What went wrong and what to do, for a person.
    headers : dict, optional
    """

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


#: library error -> (HTTP status, code); the first matching class wins.
_STATUS: list[tuple[type[TunetraceError], int, str]] = [
    (AudioTooLongError, 413, "audio_too_long"),
    (AudioDecodeError, 415, "unsupported_audio"),
    (AudioTooShortError, 422, "audio_too_short"),
    (InvalidReferenceIdError, 422, "invalid_reference_id"),
    (CatalogueNotFoundError, 500, "catalogue_error"),  # the service's own catalogue is gone
    (DamagedReferenceError, 409, "reference_damaged"),  # remove it and add it again
    (BadInputError, 422, "bad_input"),
    (DuplicateReferenceError, 409, "reference_exists"),
    (ReferenceNotFoundError, 404, "reference_not_found"),
    (ShardUnavailableError, 503, "shard_unavailable"),
]


def status_for(exc: TunetraceError, message: str | None = None) -> ApiError:
    """The HTTP answer for a library error (500 ``catalogue_error`` for anything unexpected).

    Parameters
    ----------
    exc : TunetraceError
    message : str, optional
        Replaces the exception's own message (e.g. with server paths taken out).
    """
    text = str(exc) if message is None else message
    for error_type, status, code in _STATUS:
        if isinstance(exc, error_type):
            return ApiError(status, code, text)
    return ApiError(500, "catalogue_error", text)


def without_server_paths(message: str, catalogue: Path) -> str:
    """``message`` with the catalogue's directory, and every path inside it, called "the
    catalogue": a client is told what went wrong, not where the server keeps its files.

    Parameters
    ----------
    message : str
    catalogue : Path
        The served catalogue's directory, absolute (as the settings make it).

    Returns
    -------
    message : str
    """
    forms = {str(catalogue), str(catalogue.resolve())}
    path_character = r"""[^\s'",:;()]"""
    for form in sorted(forms, key=len, reverse=True):
        inside = f"{re.escape(form)}(?:{re.escape(os.sep)}{path_character}*)?(?!{path_character})"
        message = re.sub(inside, "the catalogue", message)
    return message


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of an error response."""
    return {"error": {"code": code, "message": message}}
