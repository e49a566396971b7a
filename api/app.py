"""The FastAPI application: wiring of settings, workers, catalogue, auth, errors, logs, metrics.

``create_app(settings)`` builds an app; ``tunetrace serve`` runs one with uvicorn.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tunetrace.api.auth import KeyRing
from tunetrace.api.errors import ApiError, error_body
from tunetrace.api.metrics import ServiceMetrics
from tunetrace.api.routes import router
from tunetrace.api.settings import ApiSettings
from tunetrace.api.store import CatalogueService
from tunetrace.api.upload import sweep_stale_uploads
from tunetrace.api.workers import WorkerPool
from tunetrace.index.shard_layout import is_sharded

from tunetrace import __version__
from tunetrace.errors import BadInputError
from tunetrace.opening import check_scheduler_address

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("tunetrace.access")
REVIEW_PAGE = Path(__file__).parent / "static" / "review.html"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Methods recorded by name in logs and metrics; any other is recorded as "other", so that
#: made-up methods cannot add metric series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
#: Status of a request whose client went away before the answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the tunetrace HTTP application.

    Parameters
    ----------
    settings : ApiSettings, optional
        Defaults to settings read from the environment.

    Returns
    -------
    app : FastAPI
        Worker processes start, and the catalogue opens (created empty if missing), when the
        app's lifespan starts.
    """
    settings = settings or ApiSettings()
    if settings.scheduler is not None:  # before any worker starts: a clear error, not a crash
        check_scheduler_address(settings.scheduler)
        if not is_sharded(settings.catalogue):
            raise BadInputError(
                f"{settings.catalogue} is not a sharded catalogue: serving on a Dask cluster "
                "needs one ('tunetrace shards init')"
            )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if swept := sweep_stale_uploads(settings.upload_dir):
            logger.info("removed %d upload file(s) a killed server left behind", swept)
        app.state.catalogue = CatalogueService(settings.catalogue)
        app.state.pool = WorkerPool(
            settings.catalogue,
            workers=settings.workers,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            scheduler=settings.scheduler,
        )
        app.state.metrics.watch(
            references=app.state.catalogue.count,
            queue_depth=lambda: app.state.pool.queue_depth,
            busy=lambda: app.state.pool.busy,
            admitted=lambda: app.state.pool.admitted,
        )
        await app.state.pool.warm_up()
        logger.info(
            "serving catalogue %s with %d workers (queue %d)",
            settings.catalogue,
            settings.workers,
            settings.max_queue,
        )
        try:
            yield
        finally:
            app.state.pool.shutdown()
            app.state.catalogue.close()

    app = FastAPI(
        title="tunetrace",
        version=__version__,
        summary="Find tempo-, pitch- and speed-altered copies of known music.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keys = KeyRing(settings.keys)
    app.state.metrics = ServiceMetrics()
    app.state.started = time.monotonic()
    app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware, metrics=app.state.metrics)

    @app.get("/", include_in_schema=False)
    async def review_page() -> HTMLResponse:
        """The review page (plain HTML and JavaScript calling the API with the user's key)."""
        return HTMLResponse(REVIEW_PAGE.read_text(encoding="utf-8"))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg')}"
            for error in exc.errors()
        )
        return _error_response(ApiError(422, "invalid_request", problems or "invalid request"))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # nobody is left to read an answer: no error body, no traceback; the access log
        # records 499 (client closed request), not a server error
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return _error_response(ApiError(exc.status_code, code, str(exc.detail), headers))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(
            ApiError(500, "internal_error", "an unexpected error occurred; it has been logged")
        )


class AccessLogMiddleware:
    """One structured log line and metrics per request; a request id on every response.

    The line has the request id, method, route template, status and duration; never the
    query string, headers or body (no keys, no audio). Labels come from fixed sets: a method
    outside :data:`KNOWN_METHODS` is "other", a path no route matches is "unmatched".
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = _method_label(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            access_logger.info(
                json.dumps(
                    {
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 1),
                    }
                )
            )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts at this path (routes are one per method here)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        matched, _ = route.matches(request.scope)
        if matched != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


def _method_label(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in KNOWN_METHODS else "other"


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
