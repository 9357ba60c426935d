"""HTTP routes: thin wrappers around the Embedder."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.embedder import RETRY_AFTER_S, Embedder
from app.errors import ErrorKind, ServiceError
from app.json_body import JsonRoute
from app.metrics import CONTENT_TYPE, Metrics
from app.schemas import EmbedRequest, EmbedResponse, ErrorBody

T = TypeVar("T")

router = APIRouter(route_class=JsonRoute)
bearer = HTTPBearer(auto_error=False, description="the UBS_API_KEY, when the service has one")


async def get_embedder(request: Request) -> Embedder:
    # async: FastAPI runs plain-def dependencies in a thread pool, a thread hop per request.
    embedder: Embedder | None = request.app.state.embedder
    if embedder is None:
        raise ServiceError(ErrorKind.NOT_READY, "the model is not loaded yet", retry_after_s=RETRY_AFTER_S)
    return embedder


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ServiceError(ErrorKind.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)")


EmbedderDep = Annotated[Embedder, Depends(get_embedder)]
Authorized = [Depends(require_api_key)]
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        401: "missing or wrong API key",
        413: "body, sequences or events over the limits",
        422: "a field is missing, has the wrong type or a bad value",
        500: "inference failed for the batch",
        503: "overloaded (see Retry-After) or not ready",
    }.items()
}


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it when the client goes away (its queued sequences are dropped)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and watcher.done():
            raise ServiceError(ErrorKind.CLIENT_CLOSED, "the client closed the connection") from None
        raise
    finally:
        watcher.cancel()


@router.post("/embed", response_model=EmbedResponse, dependencies=Authorized, responses=ERRORS)
async def embed(body: EmbedRequest, request: Request, embedder: EmbedderDep) -> Response:
    """Compress each sequence of raw behavior events into one vector."""
    # The embedder returns the EmbedResponse already serialised; FastAPI passes a Response through.
    return Response(await until_disconnected(request, embedder.embed(body)), media_type="application/json")


@router.get("/info", dependencies=Authorized)
async def info(embedder: EmbedderDep) -> dict[str, Any]:
    """The model, the execution provider in use, and every limit and batching setting."""
    return embedder.info()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody, "description": "not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """The model is loaded and warmed up; also reports the cache (an outage does not make it unready)."""
    embedder: Embedder | None = request.app.state.embedder
    if embedder is None:
        raise ServiceError(ErrorKind.NOT_READY, "the model is not loaded yet", retry_after_s=RETRY_AFTER_S)
    cache = {"backend": embedder.cache.backend, "state": embedder.cache.state()}
    return JSONResponse({"status": "ready", "model_version": embedder.bundle.model_version, "cache": cache})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
