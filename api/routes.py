"""The ``/v1`` routes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from tunetrace.api.errors import ApiError, status_for, without_server_paths
from tunetrace.api.models import (
    ErrorModel,
    HealthModel,
    MatchReportModel,
    ReferenceListModel,
    ReferenceModel,
)
from tunetrace.api.upload import FILE_FIELD, Upload, receive_upload
from tunetrace.api.workers import explain_job, fingerprint_job, match_job
from tunetrace.index.catalogue import (
    REFERENCE_ID_PATTERN,
    ReferenceRecord,
    validate_reference_id,
)

from tunetrace import __version__
from tunetrace.errors import TunetraceError
from tunetrace.report import report_to_dict

#: Response headers of ``POST /v1/match`` beside the contract's JSON report.
TONALITY_HEADER = "X-Tunetrace-Query-Tonality"
CAUTION_HEADER = "X-Tunetrace-Caution"

T = TypeVar("T")
router = APIRouter(prefix="/v1")
_bearer = HTTPBearer(auto_error=False, description="An API key with the read or write role.")

REFERENCE_FIELDS = ("id", "title", "artist", "isrc", "replace")
#: Text fields are at most MAX_FIELD_BYTES of UTF-8: 1,000 characters always fit.
MAX_TEXT_CHARS = 1000
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed request body (also: one that ends before its closing boundary).",
        408: "The upload stalled (sent nothing for the idle timeout).",
        401: "No API key, or not a valid one.",
        403: "The API key's role does not allow this.",
        404: "No such reference.",
        409: "A reference with this id exists (send replace=true to overwrite it); for "
        "explain, the reference's stored row is damaged (remove it and add it again).",
        413: "Upload over the size limit, or audio over the duration limit.",
        415: "Not multipart/form-data, or audio that cannot be decoded (or that has more "
        "channels or another sample rate than accepted).",
        422: "Audio too short, or invalid fields.",
        503: "All workers busy and the queue full (see Retry-After).",
    }
    return {status: {"model": ErrorModel, "description": described[status]} for status in statuses}


def _upload_body(
    *fields: tuple[str, dict[str, Any]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """OpenAPI text of a multipart body (the body is parsed by streaming, not by FastAPI)."""
    properties: dict[str, Any] = {
        FILE_FIELD: {"type": "string", "format": "binary", "description": "The audio file."}
    }
    properties.update(fields)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [FILE_FIELD, *required],
                        "properties": properties,
                    }
                }
            },
        }
    }


def _text_field(description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": MAX_TEXT_CHARS, "description": description}


class RequireRole:
    """Dependency that checks the bearer key's role."""

    def __init__(self, role: str) -> None:
        self.role = role

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        # ``credentials`` puts the bearer scheme into the OpenAPI document; the key ring reads
        # the header itself so that every malformed header gets the same 401 answer.
        return request.app.state.keys.authorise(request.headers.get("authorization"), self.role)


ReadAccess = Annotated[str, Depends(RequireRole("read"))]
WriteAccess = Annotated[str, Depends(RequireRole("write"))]


def _reference_model(record: ReferenceRecord) -> ReferenceModel:
    return ReferenceModel(**record.to_dict())


async def _library_call(
    request: Request,
    awaitable: Awaitable[T],
    upload: Upload | None = None,
    *,
    echoed: tuple[str, ...] = (),
) -> T:
    """Await library work; its errors become HTTP errors naming the upload, not server
    paths. ``echoed``: what else of the request a message may quote (a reference id)."""
    try:
        return await awaitable
    except TunetraceError as exc:
        message = str(exc)
        if upload is not None:  # named by the client's file name, which nothing rewrites
            for server_name in (str(upload.path), upload.path.name):
                message = message.replace(server_name, _UPLOAD_NAME)
        message = without_server_paths(
            message, request.app.state.settings.catalogue, echoed=echoed
        )
        if upload is not None:
            message = message.replace(_UPLOAD_NAME, upload.filename)
        raise status_for(exc, message) from exc


#: Stands for the upload's file name while a message's server paths are taken out.
_UPLOAD_NAME = "\x00upload\x00"


@router.get("/health", response_model=HealthModel, tags=["service"])
async def health(request: Request) -> HealthModel:
    """Liveness: answers at once, whatever the workers are doing (no key needed)."""
    state = request.app.state
    return HealthModel(
        status="ok",
        version=__version__,
        uptime_s=round(time.monotonic() - state.started, 3),
        workers=state.pool.workers,
        admitted=state.pool.admitted,
        busy=state.pool.busy,
        queue_depth=state.pool.queue_depth,
    )


@router.post(
    "/match",
    response_model=MatchReportModel,
    response_model_exclude_unset=True,  # damaged_references only when there are some
    tags=["match"],
    responses=_errors(400, 401, 403, 408, 413, 415, 422, 503),
    openapi_extra=_upload_body(),
)
async def match(
    request: Request,
    response: Response,
    _: ReadAccess,
    top: Annotated[int, Query(ge=1, le=100, description="Most matches reported.")] = 5,
    min_score: Annotated[
        float | None,
        Query(ge=0.0, le=1.0, description="Score threshold [default: the calibrated one]."),
    ] = None,
) -> dict[str, Any]:
    """Is the uploaded audio an altered copy of a reference? The match report.

    The report's JSON follows the contract; the query's tonality travels in the
    ``X-Tunetrace-Query-Tonality`` header, with ``X-Tunetrace-Caution`` when a mostly
    non-tonal query matched nothing (a weaker "no copy").
    """
    state = request.app.state
    settings = state.settings
    try:
        async with _admitted_upload(request) as upload:
            state.metrics.upload_bytes.inc(upload.size_bytes)
            report = await _library_call(
                request,
                state.pool.run(
                    match_job,
                    str(upload.path),
                    upload.filename,
                    top,
                    min_score,
                    settings.max_duration_s,
                ),
                upload,
            )
    except ApiError as exc:
        if exc.status in (413, 415, 422, 400):
            state.metrics.match_outcomes.labels("rejected").inc()
        raise
    state.metrics.match_outcomes.labels("copy_found" if report.matches else "no_copy").inc()
    if report.query_tonality is not None:
        response.headers[TONALITY_HEADER] = f"{report.query_tonality:.2f}"
        if report.caution is not None:
            response.headers[CAUTION_HEADER] = report.caution
    return report_to_dict(report)


@router.post(
    "/explain",
    tags=["match"],
    responses={
        200: {
            "description": "The evidence image (format=png) or the data behind it (json).",
            "content": {"image/png": {}, "application/json": {}},
        },
        **_errors(400, 401, 403, 404, 408, 409, 413, 415, 422, 503),
    },
    openapi_extra=_upload_body(
        ("reference_id", _text_field("Explain against this reference (default: the best)."))
    ),
)
async def explain(
    request: Request,
    _: ReadAccess,
    format: Annotated[
        Literal["png", "json"], Query(description="png: the image; json: the data behind it.")
    ] = "png",
    reference_id: Annotated[
        str | None, Query(max_length=200, description="Reference to explain against.")
    ] = None,
) -> Response:
    """Why the upload is, or is not, an altered copy: aligned chroma, similarity, path."""
    state = request.app.state
    settings = state.settings
    async with _admitted_upload(request, ("reference_id",)) as upload:
        wanted = reference_id or upload.fields.get("reference_id") or None
        result = await _library_call(
            request,
            state.pool.run(
                explain_job,
                str(upload.path),
                upload.filename,
                wanted,
                format == "png",
                settings.max_duration_s,
            ),
            upload,
            echoed=(wanted or "",),
        )
    if format == "png":
        return Response(content=result, media_type="image/png")
    return JSONResponse(result)


@contextlib.asynccontextmanager
async def _admitted_upload(
    request: Request, text_fields: tuple[str, ...] = ()
) -> AsyncIterator[Upload]:
    """Take an admission slot before the body is read (503 at once when none is free), then
    stream the upload to a temporary file under the size limit; the slot is held until the
    block ends."""
    state = request.app.state
    settings = state.settings
    with state.pool.admit():
        async with receive_upload(
            request,
            max_bytes=settings.max_upload_bytes,
            text_fields=text_fields,
            directory=settings.upload_dir,
            idle_timeout_s=settings.upload_idle_timeout_s,
            min_bytes_per_s=settings.upload_min_bytes_per_s,
        ) as upload:
            yield upload


def _flag(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiError(422, "invalid_field", f"{name} must be true or false, got {value!r}")


@router.post(
    "/references",
    response_model=ReferenceModel,
    status_code=201,
    tags=["references"],
    responses=_errors(400, 401, 403, 408, 409, 413, 415, 422, 503),
    openapi_extra=_upload_body(
        (
            "id",
            {
                "type": "string",
                "pattern": REFERENCE_ID_PATTERN,
                "description": "Reference id: 1-200 characters, no control characters; "
                "'/' allowed (album/track).",
            },
        ),
        ("title", _text_field("Title.")),
        ("artist", _text_field("Artist.")),
        ("isrc", _text_field("ISRC.")),
        (
            "replace",
            {"type": "boolean", "description": "true: overwrite a reference with this id."},
        ),
        required=("id",),
    ),
)
async def add_reference(
    request: Request,
    _: WriteAccess,
    replace: Annotated[
        bool, Query(description="Overwrite an existing reference with this id.")
    ] = False,
) -> ReferenceModel:
    """Fingerprint the uploaded audio and add it as a reference (201)."""
    state = request.app.state
    settings = state.settings
    async with _admitted_upload(request, REFERENCE_FIELDS) as upload:
        fields = upload.fields
        reference_id = fields.get("id", "")
        try:
            validate_reference_id(reference_id)
        except TunetraceError as exc:
            raise status_for(exc) from exc
        for name in ("title", "artist", "isrc"):
            if len(fields.get(name) or "") > MAX_TEXT_CHARS:
                raise ApiError(
                    422, "invalid_field", f"{name} is longer than {MAX_TEXT_CHARS} characters"
                )
        form_replace = _flag(fields.get("replace"), "replace")  # checked even when the query says
        replace = replace or form_replace
        if not replace and await state.catalogue.contains(reference_id):
            raise ApiError(
                409,
                "reference_exists",
                f"reference {reference_id!r} already exists (send replace=true to overwrite it)",
            )
        state.metrics.upload_bytes.inc(upload.size_bytes)
        data = await _library_call(
            request,
            state.pool.run(fingerprint_job, str(upload.path), settings.max_duration_s),
            upload,
        )
        record = await _library_call(
            request,
            state.catalogue.add(
                reference_id,
                data,
                title=fields.get("title") or None,
                artist=fields.get("artist") or None,
                isrc=fields.get("isrc") or None,
                source_path=upload.filename,
                replace=replace,
            ),
            upload,
            echoed=(reference_id,),
        )
    return _reference_model(record)


@router.get(
    "/references",
    response_model=ReferenceListModel,
    tags=["references"],
    responses=_errors(401, 403),
)
async def list_references(
    request: Request,
    _: ReadAccess,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ReferenceListModel:
    """References ordered by id, one page at a time."""
    total, records = await request.app.state.catalogue.page(offset, limit)
    return ReferenceListModel(
        total=total,
        offset=offset,
        limit=limit,
        references=[_reference_model(r) for r in records],
    )


@router.get(
    "/references/{reference_id:path}",
    response_model=ReferenceModel,
    tags=["references"],
    responses=_errors(401, 403, 404),
)
async def get_reference(request: Request, reference_id: str, _: ReadAccess) -> ReferenceModel:
    """One reference's metadata."""
    record = await _library_call(
        request, request.app.state.catalogue.get(reference_id), echoed=(reference_id,)
    )
    return _reference_model(record)


@router.delete(
    "/references/{reference_id:path}",
    status_code=204,
    tags=["references"],
    responses=_errors(401, 403, 404),
)
async def delete_reference(request: Request, reference_id: str, _: WriteAccess) -> Response:
    """Delete a reference (204)."""
    await _library_call(
        request, request.app.state.catalogue.remove(reference_id), echoed=(reference_id,)
    )
    return Response(status_code=204)
