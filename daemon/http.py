"""The daemon's HTTP API (FastAPI, served by uvicorn inside the daemon's event loop).

Errors are always JSON ``{"error": "..."}`` with a 4xx/5xx status. Write endpoints require
``Authorization: Bearer <token>`` when ``server.bearer_token_file`` is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from tfwarden.core.errors import ActionRefused, ApiError, Refused
from tfwarden.daemon import statuspage
from tfwarden.daemon.recorder import Recorder
from tfwarden.daemon.statuspage import PageSource


class DaemonControl(PageSource, Protocol):
    """What the HTTP layer needs from the daemon (the status page's reads among it)."""

    recorder: Recorder

    @property
    def ready(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def max_body_bytes(self) -> int | None: ...

    def bearer_token(self) -> str | None: ...

    def ingest_tokens(self) -> tuple[str, ...]:
        """Tokens accepted by the capture endpoints (the ingest token and the operators'
        token); empty when neither is configured."""
        ...

    def status(self) -> dict[str, Any]: ...

    def probes_debug(self) -> dict[str, Any]: ...

    def findings(self) -> list[dict[str, Any]]: ...

    def models(self) -> list[dict[str, Any]]: ...

    def model(self, name: str) -> dict[str, Any] | None: ...

    def journal(self, after_id: int, limit: int, kind: str | None,
                model: str | None, newest_first: bool = False) -> list[dict[str, Any]]: ...

    async def manual_action(self, model: str, action: str) -> dict[str, Any]: ...

    def receive_alerts(self, payload: dict[str, Any]) -> dict[str, Any]: ...

    async def capture(self, model: str, body: bytes, client: str, kind: str,
                      version: int | None) -> dict[str, Any]: ...

    def capture_stats(self, model: str) -> dict[str, Any]: ...

    def drift_report(self, name: str) -> dict[str, Any] | None: ...

    async def reload(self, trigger: str) -> dict[str, Any]: ...

    async def edge_ingest(self, signal: str, body: bytes, content_type: str | None,
                          content_encoding: str | None, client: str) -> tuple[bytes, str]:
        """An OTLP ``metrics`` or ``logs`` request body in, the response body and its media
        type out (Refused: 4xx)."""
        ...

    def edge_refused(self, refusal: Refused, content_type: str | None) -> tuple[bytes, str]:
        """A refusal as OTLP answers it (a ``google.rpc.Status``), and its media type."""
        ...

    def edge_stats(self, model: str) -> dict[str, Any] | None: ...

    def edge_limits(self) -> tuple[int, tuple[str, ...]]:
        """(the largest OTLP body accepted, the browser origins allowed to post)."""
        ...

    def edge_rollout(self, model: str) -> dict[str, Any] | None: ...

    async def edge_action(self, model: str, action: str,
                          params: dict[str, Any]) -> dict[str, Any]: ...

    def edge_assignment(self, model: str, device_id: str,
                        attributes: dict[str, str]) -> dict[str, Any] | None: ...

    def edge_file(self, model: str, version: int) -> Path | None: ...


MAX_JSON_DEPTH = 64
WEBHOOK_MAX_BYTES = 1024 * 1024  # Alertmanager batches stay far below this
MAX_JOURNAL_ID = 2**63 - 1  # SQLite's largest INTEGER; a larger one cannot even be compared
MAX_REFRESH_SECONDS = 3600
PAGE_REUSE_SECONDS = 1.0  # a page rendered this recently is served again as it is
PAGE_CACHE_ENTRIES = 32
# the page runs its one script (allowed by its hash, no other) and loads nothing from elsewhere
PAGE_HEADERS = {"Content-Security-Policy": f"default-src 'none'; script-src {statuspage.SCRIPT_SOURCE}; "
                "style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _require_token(daemon: DaemonControl, request: Request,
                   accepted: tuple[str, ...] | None = None) -> None:
    """The request must carry one of the ``accepted`` tokens (default: the operators' token);
    none configured: open. Refusals are counted by route, never by the path asked for."""
    if accepted is None:
        token = daemon.bearer_token()
        accepted = (token,) if token is not None else ()
    if not accepted:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    route = getattr(request.scope.get("route"), "path", "other")
    if scheme.lower() != "bearer" or not given:
        daemon.recorder.unauthorized(route)
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})
    if not any(hmac.compare_digest(given.strip().encode(), t.encode()) for t in accepted):
        daemon.recorder.unauthorized(route)
        raise ApiError(403, "bearer token is not valid")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read as it streams in: 413 as soon as it passes ``limit`` bytes, whether or
    not a Content-Length was sent (a chunked body is never read whole first)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"body of {length} bytes is over {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, expected: str) -> Any:
    """JSON of at most ``MAX_JSON_DEPTH`` levels, or a 400 saying what was ``expected``."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, f"body is not JSON (expected {expected})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ApiError(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            return depth
        level = [v for item in level if isinstance(item, dict | list)
                 for v in (item.values() if isinstance(item, dict) else item)]
    return depth - 1


def create_app(daemon: DaemonControl) -> FastAPI:
    """Build the FastAPI application bound to ``daemon``."""
    app = FastAPI(title="tfwarden", docs_url=None, redoc_url=None, openapi_url="/api/v1/openapi.json")
    _errors_as_json(app)
    for router in (_process_routes(daemon), _model_routes(daemon), _capture_routes(daemon),
                   _edge_routes(daemon), _edge_rollout_routes(daemon), _page_routes(daemon)):
        app.include_router(router)
    return app


def _errors_as_json(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse({"error": message}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"error": f"{where}: {first['msg']}"}, 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not bad input: still JSON; the traceback goes to the log as before
        return JSONResponse({"error": f"internal error ({type(exc).__name__}) on {request.method} "
                                      f"{request.url.path}; the daemon's log has the traceback"}, 500)


EXPOSITION_SWITCH_SECONDS = 0.0005


def _exposition_beside_the_loop(expose: Callable[[], bytes]) -> bytes:
    """Write the /metrics page with the interpreter's thread switch interval at 0.5 ms instead
    of 5: the event loop gives up the GIL at every poll and waits a whole interval to get it
    back while this thread runs, so at 5 ms a one-second page cut the loop to 200 turns a
    second and 1,000 probes a second fell 180 ms behind their slots."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(EXPOSITION_SWITCH_SECONDS)
    try:
        return expose()
    finally:
        sys.setswitchinterval(previous)


def _process_routes(daemon: DaemonControl) -> APIRouter:
    """Metrics, health, readiness, reload, status and probe debugging."""
    routes = APIRouter()

    @routes.get("/metrics")
    async def metrics() -> Response:
        # In a thread: with 1,000 probed versions the page is ~1.5 MB and takes prometheus_client
        # ~0.4 s to write, which would stall every probe for as long (its metrics are locked,
        # so writing beside the loop is safe; the loop still gets the GIL every few ms).
        body = await asyncio.to_thread(_exposition_beside_the_loop, daemon.recorder.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @routes.get("/-/healthy")
    async def healthy() -> dict[str, str]:
        return {"status": "healthy"}

    @routes.get("/-/ready")
    async def ready() -> JSONResponse:
        if daemon.ready:
            return JSONResponse({"status": "ready"})
        state = "stopping" if daemon.stopping else "starting"
        return JSONResponse({"status": state}, 503)

    @routes.post("/-/reload")
    async def reload(request: Request) -> JSONResponse:
        _require_token(daemon, request)
        if daemon.stopping:
            raise ApiError(503, "shutting down; not reloading")
        result = await daemon.reload("http")
        return JSONResponse(result, 200 if result["ok"] else 400)

    @routes.get("/api/v1/status")
    async def status() -> dict[str, Any]:
        return daemon.status()

    @routes.get("/debug/probes")
    async def debug_probes() -> dict[str, Any]:
        return daemon.probes_debug()

    return routes


def _model_routes(daemon: DaemonControl) -> APIRouter:
    """Findings, models and operators' actions, the journal, Alertmanager's webhook."""
    routes = APIRouter()

    @routes.get("/api/v1/findings")
    async def findings() -> dict[str, Any]:
        return {"findings": daemon.findings()}

    @routes.get("/api/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": daemon.models()}

    @routes.get("/api/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        found = daemon.model(name)
        if found is None:
            raise ApiError(404, f"model {name!r} is not managed by tfwarden")
        return found

    @routes.post("/api/v1/models/{name}/{action}")
    async def model_action(name: str, action: str, request: Request) -> dict[str, Any]:
        _require_token(daemon, request)
        if action not in ("rollback", "promote", "pause", "resume", "approve"):
            raise ApiError(404, f"unknown action {action!r} (expected rollback, promote, pause, "
                                "resume or approve)")
        if daemon.model(name) is None:
            raise ApiError(404, f"model {name!r} is not managed by tfwarden")
        try:
            return await daemon.manual_action(name, action)
        except ActionRefused as exc:
            raise ApiError(409, str(exc)) from None

    @routes.get("/api/v1/journal")
    async def journal(after: int = 0, limit: int = 100, kind: str | None = None,
                      model: str | None = None, order: str = "asc") -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise ApiError(400, "limit must be between 1 and 1000")
        if not 0 <= after <= MAX_JOURNAL_ID:
            raise ApiError(400, f"after must be a journal entry id between 0 and {MAX_JOURNAL_ID}")
        if order not in ("asc", "desc"):
            raise ApiError(400, "order must be asc (the first entries after `after`) or desc "
                                "(the latest ones, latest first)")
        # a read of up to 1,000 entries: SQLite in a thread, not on the event loop
        return {"entries": await asyncio.to_thread(daemon.journal, after, limit, kind, model,
                                                   order == "desc")}

    @routes.post("/api/v1/alertmanager")
    async def alertmanager(request: Request) -> dict[str, Any]:
        _require_token(daemon, request)
        payload = parse_json(await read_body(request, WEBHOOK_MAX_BYTES),
                             "Alertmanager's webhook payload")
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise ApiError(400, "expected Alertmanager's webhook payload with an 'alerts' list")
        return daemon.receive_alerts(payload)

    return routes


def _capture_routes(daemon: DaemonControl) -> APIRouter:
    """Input capture and drift reports."""
    routes = APIRouter()

    async def _capture(kind: str, model: str, request: Request,
                       version: int | None) -> dict[str, Any]:
        _require_token(daemon, request, daemon.ingest_tokens())
        client = request.client.host if request.client else "unknown"
        body = await read_body(request, daemon.max_body_bytes or WEBHOOK_MAX_BYTES)
        try:
            return await daemon.capture(model, body, client, kind, version)
        except Refused as exc:
            raise ApiError(exc.status, exc.message) from None

    @routes.post("/api/v1/capture/{model}")
    async def capture(model: str, request: Request, version: int | None = None) -> dict[str, Any]:
        return await _capture("capture", model, request, version)

    @routes.post("/api/v1/samples/{model}")
    async def samples(model: str, request: Request) -> dict[str, Any]:
        return await _capture("samples", model, request, None)

    @routes.get("/api/v1/models/{name}/capture")
    async def capture_stats(name: str) -> dict[str, Any]:
        return daemon.capture_stats(name)

    @routes.get("/api/v1/models/{name}/drift")
    async def drift(name: str) -> dict[str, Any]:
        report = daemon.drift_report(name)
        if report is None:
            raise ApiError(404, f"model {name!r} has no drift configuration")
        return report

    return routes


def _edge_routes(daemon: DaemonControl) -> APIRouter:
    """OTLP/HTTP from edge devices and browsers (docs/edge.md), and what they reported."""
    routes = APIRouter()

    async def _otlp(signal: str, request: Request) -> Response:
        content_type = request.headers.get("content-type")
        cors = _cors(daemon, request)
        try:
            _require_token(daemon, request, daemon.ingest_tokens())
            body = await read_body(request, daemon.edge_limits()[0])
            client = request.client.host if request.client else "unknown"
            answer, media_type = await daemon.edge_ingest(
                signal, body, content_type, request.headers.get("content-encoding"), client)
        except Refused as exc:
            daemon.recorder.edge_request_refused(signal, exc.status)
            refusal, media_type = daemon.edge_refused(exc, content_type)
            headers = {**cors, **(exc.headers or {})}
            if exc.status == 429:  # OTLP clients retry after it
                headers.setdefault("Retry-After", "1")
            return Response(refusal, exc.status, media_type=media_type, headers=headers)
        return Response(answer, 200, media_type=media_type, headers=cors)

    @routes.post("/v1/metrics")
    async def metrics(request: Request) -> Response:
        return await _otlp("metrics", request)

    @routes.post("/v1/logs")
    async def logs(request: Request) -> Response:
        return await _otlp("logs", request)

    @routes.options("/v1/metrics")
    @routes.options("/v1/logs")
    async def preflight(request: Request) -> Response:
        """CORS preflight of a browser exporter: allowed only for the configured origins."""
        cors = _cors(daemon, request)
        if not cors:
            raise ApiError(403, f"origin {request.headers.get('origin')!r} is not in "
                                "edge.cors_origins")
        return Response(status_code=204, headers={
            **cors, "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "content-type, content-encoding, authorization",
            "Access-Control-Max-Age": "600"})

    @routes.get("/api/v1/edge/{model}")
    async def edge_stats(model: str) -> dict[str, Any]:
        stats = daemon.edge_stats(model)
        if stats is None:
            raise ApiError(404, f"model {model!r} is not in edge.models")
        return stats

    return routes


def _edge_rollout_routes(daemon: DaemonControl) -> APIRouter:
    """Staged edge rollouts: devices ask which version to run and fetch it; operators watch
    and steer (docs/edge.md)."""
    routes = APIRouter()

    @routes.get("/api/v1/edge/{model}/assignment")
    async def assignment(model: str, request: Request, device_id: str = "") -> Response:
        """The version this device should run; its attributes (``ml.delegate``,
        ``device.model.identifier``...) as query parameters, named as in its telemetry."""
        _require_token(daemon, request, daemon.ingest_tokens())
        if not device_id or len(device_id) > 256:
            raise ApiError(400, "device_id is required: the device's id as its telemetry "
                                "sends it in device.id (at most 256 characters)")
        attributes = {k: v for k, v in request.query_params.items() if k != "device_id"}
        answer = daemon.edge_assignment(model, device_id, attributes)
        if answer is None:
            raise ApiError(404, f"model {model!r} has no edge rollout (edge.models[].rollout)")
        return JSONResponse(answer, headers={**_cors(daemon, request), "Cache-Control":
                                             f"private, max-age={int(answer['ttl_seconds'])}"})

    @routes.get("/api/v1/edge/{model}/versions/{version}/{file}")
    async def version_file(model: str, version: int, file: str, request: Request) -> Response:
        _require_token(daemon, request, daemon.ingest_tokens())
        path = daemon.edge_file(model, version)
        if path is None or path.name != file:
            raise ApiError(404, f"model {model!r} has no published file {file!r} in version "
                                f"{version}")
        return FileResponse(path, media_type="application/octet-stream",
                            headers=_cors(daemon, request))

    @routes.get("/api/v1/edge/{model}/rollout")
    async def rollout(model: str) -> dict[str, Any]:
        status = daemon.edge_rollout(model)
        if status is None:
            raise ApiError(404, f"model {model!r} has no edge rollout (edge.models[].rollout)")
        return status

    @routes.post("/api/v1/edge/{model}/rollout/{action}")
    async def rollout_action(model: str, action: str, request: Request) -> dict[str, Any]:
        """``start`` ({"version": N}), ``advance``, ``halt``, ``resume``, ``rollback``,
        ``rollback_cohort`` / ``unpin`` ({"cohort": NAME}); 409 when it does not apply."""
        _require_token(daemon, request)
        if daemon.edge_rollout(model) is None:
            raise ApiError(404, f"model {model!r} has no edge rollout (edge.models[].rollout)")
        body = await read_body(request, 64 * 1024)
        params = parse_json(body, "a JSON object of parameters") if body.strip() else {}
        if not isinstance(params, dict):
            raise ApiError(400, "body must be a JSON object of parameters")
        try:
            return await daemon.edge_action(model, action, params)
        except ActionRefused as exc:
            raise ApiError(409, str(exc)) from None

    return routes


def _page_routes(daemon: DaemonControl) -> APIRouter:
    """The status page and the alerts' runbooks: HTML for people, read-only like every GET."""
    routes = APIRouter()
    rendering = asyncio.Lock()  # one page rendered at a time, in a thread
    rendered: dict[tuple[int, str | None], tuple[float, str]] = {}

    @routes.get("/", response_class=HTMLResponse)
    async def page(refresh: int = statuspage.DEFAULT_REFRESH_SECONDS,
                   model: str | None = None) -> HTMLResponse:
        if not 1 <= refresh <= MAX_REFRESH_SECONDS:
            raise ApiError(400, f"refresh must be between 1 and {MAX_REFRESH_SECONDS} seconds")
        async with rendering:  # many browsers on one URL cost one render a second
            key, now = (refresh, model), time.monotonic()
            for old in [k for k, (t, _) in rendered.items() if now - t >= PAGE_REUSE_SECONDS]:
                del rendered[old]  # only pages of the last second are kept
            cached = rendered.get(key)
            if cached is not None:
                return HTMLResponse(cached[1], headers=PAGE_HEADERS)
            snapshot = statuspage.collect(daemon, refresh, model)
            if snapshot.unknown:  # like every 4xx: JSON that says what was wrong
                raise ApiError(404, f"tfwarden knows no model named {model!r} (all of them: /)")
            html = await asyncio.to_thread(statuspage.render, daemon, snapshot)
            if len(rendered) >= PAGE_CACHE_ENTRIES:
                rendered.pop(min(rendered, key=lambda k: rendered[k][0]))
            rendered[key] = (time.monotonic(), html)
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @routes.get("/runbooks/", response_class=HTMLResponse)
    async def runbooks() -> HTMLResponse:
        return HTMLResponse(statuspage.runbook_index(), headers=PAGE_HEADERS)

    @routes.get("/runbooks/{name}", response_class=HTMLResponse)
    async def runbook(name: str) -> HTMLResponse:
        html = statuspage.runbook(name)
        if html is None:
            raise ApiError(404, f"no runbook named {name!r} (the list: /runbooks/)")
        return HTMLResponse(html, headers=PAGE_HEADERS)

    return routes


def _cors(daemon: DaemonControl, request: Request) -> dict[str, str]:
    """CORS headers for a configured origin (that origin, never ``*``); none otherwise."""
    origin = request.headers.get("origin")
    if origin is None or origin not in daemon.edge_limits()[1]:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

