"""The hub's HTTP API (FastAPI): node endpoints behind mutual TLS, researcher ones behind tokens.

Node endpoints (``/v1/node/...``) take the caller's identity from its client certificate, which the
TLS layer has already chained to the consortium CA; :meth:`Hub.authenticate_node` then checks role,
revocation and admission. Researcher endpoints (``/v1/studies...``) take a bearer token. Every
Cordiale error maps to a 4xx status with ``{"error": kind, "detail": sentence}``; uploads are capped
before they are read, and decoded only by the data-only wire codec.

=========================================  =====================================================
``POST /v1/node/hello``                    register datasets (metadata and row counts only)
``GET  /v1/node/audit-anchor``             the newest head of the node's audit log shown here
``POST /v1/node/heartbeat``                "still here" while a long task runs
``GET  /v1/node/tasks?wait=S``             long poll: the next task (wire bytes) or 204
``GET  /v1/node/tasks/{id}``               fetch a delivered task again (own tasks only)
``POST /v1/node/replies``                  a task's reply (wire bytes)
``POST /v1/studies``                       submit a study (JSON of the study spec)
``GET  /v1/studies``                       the caller's studies
``GET  /v1/studies/{id}``                  status: rounds, per-site state, errors
``GET  /v1/studies/{id}/results``          metrics per round, per site, pooled
``GET  /v1/studies/{id}/model``            newest committed global model (safetensors)
``POST /v1/studies/{id}/grants``           the owner lets another researcher read the study
``GET  /v1/health``                        liveness
=========================================  =====================================================
"""

# No ``from __future__ import annotations`` here: FastAPI reads the dependency annotations
# (``Site``, ``Researcher``, local to create_app) at definition time.
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from cordiale import __version__
from cordiale.core.errors import (
    AuthenticationError,
    ConfigError,
    CordialeError,
    DataError,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    ProtocolError,
    WireError,
)
from cordiale.hub.service import Hub

__all__ = ["create_app"]

WIRE_TYPE = "application/vnd.cordiale.message"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STATUS: list[tuple[type[CordialeError], int]] = [
    (AuthenticationError, 401),
    (PermissionDenied, 403),
    (NotFoundError, 404),
    (PayloadTooLarge, 413),
    (WireError, 400),
    (ProtocolError, 409),
    (DataError, 422),
    (ConfigError, 422),
]


def _status(e: CordialeError) -> int:
    return next((code for cls, code in _STATUS if isinstance(e, cls)), 400)


def _audit_head(request: Request) -> tuple[int, str] | None:
    """The head of the node's audit log it shows with a hello or a reply (None: not shown)."""
    count, last_hash = (
        request.headers.get("x-cordiale-audit-count"),
        request.headers.get("x-cordiale-audit-hash"),
    )
    if count is None and last_hash is None:
        return None
    if (
        count is None
        or last_hash is None
        or not count.isdigit()
        or len(count) > 12
        or not _HEX64.fullmatch(last_hash)
    ):
        raise WireError("x-cordiale-audit-count/-hash must be an entry count and a SHA-256 hex")
    return int(count), last_hash


def create_app(hub: Hub) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # long polls hold a worker thread each: leave room for many sites
        anyio.to_thread.current_default_thread_limiter().total_tokens = 512
        yield

    app = FastAPI(title="Cordiale hub", version=__version__, lifespan=lifespan)

    @app.exception_handler(CordialeError)
    async def _cordiale_error(_request: Request, e: CordialeError) -> JSONResponse:
        return JSONResponse({"error": type(e).__name__, "detail": str(e)}, status_code=_status(e))

    def node_site(request: Request) -> str:
        tls = request.scope.get("extensions", {}).get("tls", {})
        chain = tls.get("client_cert_chain") or []
        return hub.authenticate_node(chain[0] if chain else None)

    def researcher(authorization: Annotated[str | None, Header()] = None) -> str:
        return hub.authenticate_researcher(authorization)

    Site = Annotated[str, Depends(node_site)]
    Researcher = Annotated[str, Depends(researcher)]

    async def read_body(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise PayloadTooLarge(f"upload of {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"upload larger than the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- nodes -------------------------------------------------------------------------------
    @app.post("/v1/node/hello")
    async def hello(site: Site, request: Request) -> dict[str, Any]:
        body = await read_body(request, 1024 * 1024)
        try:
            import json

            payload = json.loads(body)
            datasets = payload["datasets"]
            if not isinstance(datasets, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise WireError("hello must be JSON with a 'datasets' object") from None
        return await run_in_threadpool(hub.hello, site, datasets, _audit_head(request))

    @app.get("/v1/node/audit-anchor")
    def audit_anchor(site: Site) -> dict[str, Any]:
        return {"audit_anchor": hub.audit_anchor(site)}

    @app.post("/v1/node/heartbeat", status_code=204)
    def heartbeat(site: Site) -> Response:
        return Response(status_code=204)

    @app.get("/v1/node/tasks")
    def next_task(site: Site, wait: float = 20.0) -> Response:
        task = hub.next_task(site, wait)
        if task is None:
            return Response(status_code=204)
        message_id, data = task
        return Response(data, media_type=WIRE_TYPE, headers={"x-cordiale-message-id": message_id})

    @app.get("/v1/node/tasks/{message_id}")
    def task_again(site: Site, message_id: str) -> Response:
        return Response(hub.task_bytes(site, message_id), media_type=WIRE_TYPE)

    @app.post("/v1/node/replies")
    async def reply(site: Site, request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip() != WIRE_TYPE:
            raise WireError(f"replies must be sent as {WIRE_TYPE}, not {ctype or 'untyped'}")
        body = await read_body(request, hub.settings.max_upload_bytes)
        outcome = await run_in_threadpool(hub.accept_reply, site, body, _audit_head(request))
        return JSONResponse({"status": outcome}, status_code=202 if outcome == "accepted" else 200)

    # -- researchers -------------------------------------------------------------------------
    @app.post("/v1/studies", status_code=201)
    def submit(owner: Researcher, spec: dict[str, Any]) -> dict[str, str]:
        return {"id": hub.submit(owner, spec)}

    @app.get("/v1/studies")
    def studies(owner: Researcher) -> list[dict[str, Any]]:
        return hub.list_studies(owner)

    @app.get("/v1/studies/{study_id}")
    def status(owner: Researcher, study_id: str) -> dict[str, Any]:
        return hub.status(owner, study_id)

    @app.post("/v1/studies/{study_id}/grants", status_code=201)
    def grant(owner: Researcher, study_id: str, body: dict[str, str]) -> dict[str, str]:
        researcher = body.get("researcher")
        if not isinstance(researcher, str) or not researcher:
            raise ConfigError('a grant names the researcher: {"researcher": NAME}')
        hub.grant(owner, study_id, researcher)
        return {"study": study_id, "researcher": researcher}

    @app.get("/v1/studies/{study_id}/results")
    def results(owner: Researcher, study_id: str) -> dict[str, Any]:
        return hub.results(owner, study_id)

    @app.get("/v1/studies/{study_id}/model")
    def model(owner: Researcher, study_id: str) -> FileResponse:
        return FileResponse(
            hub.model_file(owner, study_id),
            media_type="application/octet-stream",
            filename=f"{study_id}-model.safetensors",
        )

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__, "consortium": hub.ca.consortium}

    return app
