"""Request bodies decoded by orjson: about twice as fast as the json module on event lists.

FastAPI decodes a JSON body with `await request.json()` before pydantic validates
it; routes of `JsonRoute` get a request whose `json()` uses orjson. A body orjson
refuses is read again by the json module, so what only that module accepts (NaN,
Infinity, numbers too large for a double) still reaches validation and is reported
with its field, and malformed JSON gets the same 422 as before. One difference
remains: orjson reads an integer of 2^64 or more as a float, so such an integer id is
refused (422) where the json module would have read it as a label.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._json = json.loads(body)
        return self._json


class JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_orjson(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return with_orjson
