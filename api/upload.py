"""Multipart uploads streamed to a temporary file under a hard size limit.

The request body is parsed as it arrives (python-multipart's streaming parser): the audio part
goes straight to disk, and the upload is cut off with 413 as soon as the file passes the limit
or the whole body (every part, ignored ones too, and the framing) passes the limit plus
:data:`FRAMING_SLACK_BYTES`. A body that stops sending for ``idle_timeout_s``, or sends
slower than ``min_bytes_per_s`` on average after that, gets 408, one
that ends before its closing boundary 400, and a client that goes away is logged, not
treated as a server error. The temporary file is removed when the request is done, whatever
happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request
from tunetrace.api.errors import ApiError

logger = logging.getLogger(__name__)

FILE_FIELD = "file"
#: Form fields other than the file are short texts.
MAX_FIELD_BYTES = 4096
MAX_PARTS = 16
#: Multipart framing and text fields allowed on top of the upload limit: a body longer than
#: the limit plus this is refused (from Content-Length, or while it streams).
FRAMING_SLACK_BYTES = 64 * 1024
#: Default seconds an upload may send nothing before it is refused.
DEFAULT_IDLE_TIMEOUT_S = 30.0
#: Slowest average upload rate, in bytes per second, after the first idle timeout's grace.
DEFAULT_MIN_BYTES_PER_S = 1000.0
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")


@dataclass
class Upload:
    """An uploaded file on disk plus the form's text fields."""

    path: Path
    filename: str
    size_bytes: int = 0
    fields: dict[str, str] = field(default_factory=dict)


class _PartCollector:
    """Callbacks for :class:`MultipartParser`: the file part to disk, text parts to memory."""

    def __init__(self, sink, max_bytes: int, text_fields: frozenset[str]) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.text_fields = text_fields
        self.file_bytes = 0
        self.filename: str | None = None
        self.seen_file = False
        self.fields: dict[str, str] = {}
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._target: str | None = None  # "file", a field name, or None (ignored part)
        self._buffer = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add(d, s, e, "_header_name"),
            "on_header_value": lambda d, s, e: self._add(d, s, e, "_header_value"),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _add(self, data: bytes, start: int, end: int, attribute: str) -> None:
        setattr(self, attribute, getattr(self, attribute) + data[start:end])

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(422, "too_many_fields", f"a form may have at most {MAX_PARTS} parts")
        self._headers = {}
        self._buffer = bytearray()
        self._target = None

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD:
            if self.seen_file:
                raise ApiError(422, "too_many_files", "send exactly one file in the 'file' field")
            self.seen_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self._target = FILE_FIELD
        elif name in self.text_fields:
            self._target = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._target == FILE_FIELD:
            self.file_bytes += end - start
            if self.file_bytes > self.max_bytes:
                raise _too_large(self.max_bytes)
            self.sink.write(data[start:end])
        elif self._target is not None:
            self._buffer += data[start:end]
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise ApiError(
                    422,
                    "field_too_long",
                    f"form field {self._target!r} is over {MAX_FIELD_BYTES} bytes",
                )

    def _part_end(self) -> None:
        if self._target not in (None, FILE_FIELD):
            try:
                self.fields[self._target] = self._buffer.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(
                    422, "invalid_field", f"form field {self._target!r} is not UTF-8 text"
                ) from exc


#: Prefix of the temporary files uploads are spooled to.
UPLOAD_PREFIX = "tunetrace-upload-"
#: Spooled uploads older than this when a server starts were left by one that was killed.
STALE_UPLOAD_S = 3600.0


def sweep_stale_uploads(directory: Path | None, older_than_s: float = STALE_UPLOAD_S) -> int:
    """Remove spooled uploads a killed server left behind (each is removed when its request
    ends, unless the process dies first).

    Only files named as uploads are spooled and not changed for ``older_than_s`` are removed:
    another server sharing the folder may be receiving or matching its own.

    Parameters
    ----------
    directory : Path or None
        The upload folder (``None``: the system's temporary folder).
    older_than_s : float

    Returns
    -------
    removed : int
    """
    folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
    cutoff = time.time() - older_than_s
    removed = 0
    for path in folder.glob(f"{UPLOAD_PREFIX}*"):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def _too_slow(received: int, elapsed_s: float, min_bytes_per_s: float) -> ApiError:
    return ApiError(
        408,
        "upload_timeout",
        f"the upload is too slow: {received} bytes in {elapsed_s:.0f} s; send at least "
        f"{min_bytes_per_s / 1000:g} kB/s",
    )


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, "upload_too_large", f"the upload is larger than the limit of {max_bytes / 1e6:g} MB"
    )


async def _body_chunks(
    request: Request,
    *,
    max_bytes: int,
    idle_timeout_s: float,
    min_bytes_per_s: float = DEFAULT_MIN_BYTES_PER_S,
) -> AsyncIterator[bytes]:
    """The request body's chunks as they arrive, refused past ``max_bytes`` plus framing.

    A body must also keep up a rate: it may take ``idle_timeout_s`` plus one second for every
    ``min_bytes_per_s`` bytes it has sent (as Apache's ``mod_reqtimeout`` counts), so that a
    client trickling a byte now and then cannot hold an admission slot for ever.

    Raises
    ------
    ApiError
        413 past the limit, 408 when nothing arrives for ``idle_timeout_s`` or the body falls
        behind the rate.
    ClientDisconnect
        When the client goes away before the body ends.
    """
    max_body_bytes = max_bytes + FRAMING_SLACK_BYTES
    received = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        allowed = started + idle_timeout_s + received / min_bytes_per_s - loop.time()
        timeout = max(0.0, min(idle_timeout_s, allowed))
        try:
            message = await asyncio.wait_for(request.receive(), timeout)
        except TimeoutError as exc:
            if received == 0 or timeout >= idle_timeout_s:
                raise ApiError(
                    408,
                    "upload_timeout",
                    f"the upload sent nothing for {idle_timeout_s:g} s; send the body without "
                    "pauses",
                ) from exc
            raise _too_slow(received, loop.time() - started, min_bytes_per_s) from exc
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > max_body_bytes:
            raise _too_large(max_bytes)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


@contextlib.asynccontextmanager
async def receive_upload(
    request: Request,
    *,
    max_bytes: int,
    text_fields: tuple[str, ...] = (),
    directory: Path | None = None,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    min_bytes_per_s: float = DEFAULT_MIN_BYTES_PER_S,
) -> AsyncIterator[Upload]:
    """Stream a ``multipart/form-data`` request with one ``file`` part to a temporary file.

    Parameters
    ----------
    request : Request
    max_bytes : int
        Largest accepted file; the upload is refused as soon as it passes this, or as soon as
        the whole body passes it plus :data:`FRAMING_SLACK_BYTES`.
    text_fields : tuple of str
        Names of the text fields to keep (others are ignored, though their bytes count).
    directory : Path, optional
        Where the temporary file goes (default: the system's temporary folder).
    idle_timeout_s : float
        Longest pause, in seconds, between two pieces of the body.
    min_bytes_per_s : float
        Slowest average rate after the first ``idle_timeout_s`` (see :func:`_body_chunks`).

    Yields
    ------
    upload : Upload
        Valid inside the ``async with`` block; the file is removed on leaving it.

    Raises
    ------
    ApiError
        415 if the body is not multipart, 413 over the limit, 422 without a file or with bad
        fields, 400 for a malformed body or one that ends before its closing boundary, 408
        for a body that stalls or falls behind the rate.
    ClientDisconnect
        When the client goes away mid-upload (logged at info level).
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the audio as multipart/form-data with the file in the 'file' field",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FRAMING_SLACK_BYTES:
        raise _too_large(max_bytes)
    handle, name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=directory)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as sink:
            collector = _PartCollector(sink, max_bytes, frozenset(text_fields))
            parser = MultipartParser(options[b"boundary"], collector.callbacks())
            chunks = _body_chunks(
                request,
                max_bytes=max_bytes,
                idle_timeout_s=idle_timeout_s,
                min_bytes_per_s=min_bytes_per_s,
            )
            try:
                async for chunk in chunks:
                    parser.write(chunk)
                parser.finalize()
            except MultipartParseError as exc:
                raise ApiError(
                    400, "malformed_request", f"the multipart body is malformed: {exc}"
                ) from exc
            except ClientDisconnect:
                logger.info("client disconnected during upload")
                raise
            if parser.state != MultipartState.END:
                raise ApiError(
                    400,
                    "malformed_request",
                    "the multipart body ends before its closing boundary (--BOUNDARY--)",
                )
        if not collector.seen_file:
            raise ApiError(422, "missing_file", "the form has no 'file' field with the audio")
        filename = collector.filename or "upload"
        suffix = Path(filename).suffix
        if _SAFE_SUFFIX.match(suffix):  # decoders probe the content; the suffix only helps
            path = path.rename(path.with_suffix(suffix.lower()))
        yield Upload(
            path=path, filename=filename, size_bytes=collector.file_bytes, fields=collector.fields
        )
    finally:
        path.unlink(missing_ok=True)
