"""HTTP errors: one JSON shape, ``{"error": {"code": ..., "message": ...}}``, for every failure.

:func:`status_for` is the one place where library errors become HTTP statuses.
"""

from __future__ import annotations

import contextlib
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


def without_server_paths(message: str, catalogue: Path, *, echoed: tuple[str, ...] = ()) -> str:
    """``message`` with the catalogue's directory, and every path inside it, called "the
    catalogue": a client is told what went wrong, not where the server keeps its files.

    A path is replaced wherever it does not continue a longer name (any character but a
    letter, digit, ``.`` or ``-`` before it), in the forms the server may print it: as
    given, resolved, quoted by ``repr``, and the resolved targets of symbolic links among
    the catalogue's files and shard directories. A reference id the client sent
    (``echoed``) is left as it was where the message names it (``reference 'id'``), so that
    a message never tells a client whether a path it guessed is the server's.

    Parameters
    ----------
    message : str
    catalogue : Path
        The served catalogue's directory, absolute (as the settings make it).
    echoed : tuple of str
        Reference ids from the request that the message may name.

    Returns
    -------
    message : str
    """
    for form in sorted(_server_forms(catalogue), key=len, reverse=True):
        pattern = (
            rf"(?<![\w.\-]){re.escape(form)}"
            rf"(?:{re.escape(os.sep)}{_PATH_CHARACTER}*)?(?![\w\-~]|\.\w)"
        )
        named = _spans_of(message, echoed)

        def replaced(found: re.Match[str], named: list[tuple[int, int]] = named) -> str:
            if any(start <= found.start() and found.end() <= end for start, end in named):
                return found.group(0)  # the client's own id, as it sent it
            path = found.group(0)
            return "the catalogue" + path[len(path.rstrip(".")) :]  # a full stop stays

        message = re.sub(pattern, replaced, message)
    return message


#: What may follow a directory in a path printed in a message: not spaces, quotes,
#: brackets, separators of a sentence or a URI's query, nor the placeholder of an upload.
_PATH_CHARACTER = r"""[^\s'",:;()\[\]<>{}?!*`\x00\u00ab\u00bb\u2018\u2019\u201c\u201d]"""


def _spans_of(message: str, ids: tuple[str, ...]) -> list[tuple[int, int]]:
    """Where ``message`` names any of ``ids`` (``reference 'id'`` or ``reference id 'id'``,
    as the library does), and only there: the same text elsewhere is the server's."""
    return [
        (m.start(), m.end())
        for reference_id in ids
        for m in re.finditer(
            rf"(?:(?<=reference )|(?<=reference id )){re.escape(repr(reference_id))}", message
        )
    ]


def _server_forms(catalogue: Path) -> set[str]:
    """Every form in which a message may name the catalogue or a directory it uses."""
    paths = {catalogue}
    candidates = [catalogue]
    # shard directories and files may be links to other disks; a catalogue directory that
    # went away, or a link that cannot be followed (a loop), leaves the other forms
    with contextlib.suppress(OSError):
        candidates += [
            entry
            for pattern in ("*", "*/*", "*/*/*")
            for entry in catalogue.glob(pattern)
            if entry.is_symlink()
        ]
    for path in candidates:
        with contextlib.suppress(OSError, RuntimeError):
            paths.add(path.resolve())
    forms = {str(path) for path in paths if str(path) not in ("", os.sep)}
    return forms | {repr(form)[1:-1] for form in forms}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of an error response."""
    return {"error": {"code": code, "message": message}}
