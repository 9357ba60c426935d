"""Error kinds, their HTTP status, and the one handler that turns them into responses.

Every error body is `{"error": {"type": KIND, "message": TEXT, "fields": [...]}}`.
Raw exception text never reaches the client: unexpected errors answer "internal".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorKind(StrEnum):
    INVALID_REQUEST = "invalid_request"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    INFERENCE_FAILED = "inference_failed"
    CLIENT_CLOSED = "client_closed"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INTERNAL = "internal"


STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_REQUEST: 422,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.NOT_READY: 503,
    ErrorKind.INFERENCE_FAILED: 500,
    # nginx's "client closed request": logged and counted, never delivered.
    ErrorKind.CLIENT_CLOSED: 499,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.METHOD_NOT_ALLOWED: 405,
    ErrorKind.INTERNAL: 500,
}

# Kinds that say nothing about the service's health: not counted as failures.
NOT_FAILURES = frozenset({ErrorKind.NOT_FOUND, ErrorKind.METHOD_NOT_ALLOWED})


class ServiceError(Exception):
    """An error with a kind from the table above and a message safe to show the client."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        fields: list[dict[str, str]] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.fields = fields or []
        self.retry_after_s = retry_after_s

    @property
    def status(self) -> int:
        return STATUS[self.kind]


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'sequences', 0, 'events', 3, 'timestamp') -> 'sequences[0].events[3].timestamp'."""
    text = ""
    for part in loc:
        if part == "body" and not text:
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def invalid_field(path: str, message: str) -> ServiceError:
    return ServiceError(
        ErrorKind.INVALID_REQUEST,
        f"{path}: {message}",
        fields=[{"field": path, "message": message}],
    )


def error_response(error: ServiceError) -> JSONResponse:
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if error.kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"type": error.kind.value, "message": error.message, "fields": error.fields}}
    return JSONResponse(body, status_code=error.status, headers=headers)


def _from_validation(exc: RequestValidationError) -> ServiceError:
    fields = []
    for item in exc.errors():
        loc = tuple(item.get("loc", ()))
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        if item.get("type") == "json_invalid":
            # loc is ('body', character offset): the field at fault is the body itself.
            offset = loc[1] if len(loc) > 1 else "?"
            fields.append({"field": "body", "message": f"not valid JSON (at character {offset})"})
            continue
        fields.append({"field": field_path(loc), "message": message})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return ServiceError(ErrorKind.INVALID_REQUEST, summary or "invalid request", fields=fields)


def install_error_handlers(app: FastAPI, count_failure: Callable[[str], None]) -> None:
    """Route every error through one table; `count_failure(kind)` feeds the failures metric."""

    def respond(error: ServiceError) -> JSONResponse:
        if error.kind not in NOT_FAILURES:
            count_failure(error.kind.value)
        return error_response(error)

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(_from_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED}.get(exc.status_code, ErrorKind.INTERNAL)
        return respond(ServiceError(kind, kind.value.replace("_", " ")))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return respond(ServiceError(ErrorKind.INTERNAL, "internal error"))
