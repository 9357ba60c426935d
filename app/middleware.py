"""Pure ASGI middleware: request metrics (outermost) and the body size limit."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ErrorKind, ServiceError, error_response
from app.metrics import Metrics

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestMetrics:
    """Counts every HTTP request by route and status and times it end to end."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths  # known route paths, for requests refused before routing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # The route template, never the raw path: unknown paths share one label,
            # so scanners cannot blow up the series count.
            route = getattr(scope.get("route"), "path", None) or scope["path"]
            if route not in self.paths:
                route = "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - started)


class BodyLimit:
    """Answers 413 for bodies over `max_bytes`, declared or streamed, before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int, count_failure: Callable[[str], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.count_failure = count_failure

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.count_failure(ErrorKind.TOO_LARGE.value)
        error = ServiceError(
            ErrorKind.TOO_LARGE,
            f"request body is larger than {self.max_bytes} bytes (UBS_MAX_BODY_BYTES)",
            fields=[{"field": "body", "message": f"at most {self.max_bytes} bytes"}],
        )
        await error_response(error)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        await self.app(scope, replay, send)
