"""One /embed request end to end: limits, preprocessing, cache, batcher, response rows.

HTTP-free: it takes the parsed request and raises `ServiceError`s; routes stay thin.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from app.batching import Batcher, BatcherClosed, BatchFailed, QueueFull
from app.cache import Cache, cache_key, from_bytes, to_bytes
from app.config import Settings, env_name
from app.errors import ErrorKind, ServiceError, invalid_field
from app.metrics import Metrics
from app.schemas import EmbedRequest
from model.bundle import Bundle
from model.features import Encoded, EventError, FloatArray

RETRY_AFTER_S = 1


class Embedder:
    def __init__(
        self, bundle: Bundle, provider: str, batcher: Batcher, cache: Cache, metrics: Metrics, settings: Settings
    ) -> None:
        self.bundle = bundle
        self.provider = provider
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.settings = settings

    async def embed(self, request: EmbedRequest) -> bytes:
        """The response body (an `EmbedResponse` as JSON bytes)."""
        self._check_limits(request)
        started = time.perf_counter()
        encoded = self._encode(request)
        keys = [cache_key(self.bundle.model_version, e.digest()) for e in encoded]
        self.metrics.preprocess.observe(time.perf_counter() - started)
        self.metrics.sequences_per_request.observe(len(encoded))
        for sequence in request.sequences:
            self.metrics.events_per_sequence.observe(len(sequence.events))

        # Identical histories in one request are looked up and computed once.
        unique: dict[str, Encoded] = dict(zip(keys, encoded, strict=True))
        vectors: dict[str, FloatArray] = {}
        for key, value in zip(unique, await self.cache.get_many(list(unique)), strict=True):
            vector = None if value is None else from_bytes(value, self.bundle.dim)
            if vector is not None:
                vectors[key] = vector
        hits = set(vectors)  # found in the cache, before anything is computed
        n_hits = sum(key in hits for key in keys)
        self.metrics.cache_hits.inc(n_hits)
        self.metrics.cache_misses.inc(len(keys) - n_hits)

        missing = [key for key in unique if key not in vectors]
        if missing:
            computed = await self._compute([unique[key] for key in missing], missing)
            vectors.update(zip(missing, computed, strict=True))
            await self.cache.set_many({key: to_bytes(vectors[key]) for key in missing})

        rows = [
            {
                "id": sequence.id,
                "embedding": self._format(vectors[key], request.encoding),
                "cached": key in hits,
                "events_used": e.length,
                "unknown_items": e.n_unknown,
            }
            for sequence, key, e in zip(request.sequences, keys, encoded, strict=True)
        ]
        body = {"model_version": self.bundle.model_version, "dim": self.bundle.dim, "embeddings": rows}
        # orjson writes float32 arrays directly (shortest text that reads back to the same float32),
        # several times faster than building and validating a pydantic response per row.
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

    def _check_limits(self, request: EmbedRequest) -> None:
        limit = self.settings.max_sequences_per_request
        if len(request.sequences) > limit:
            raise ServiceError(
                ErrorKind.TOO_LARGE,
                f"sequences: {len(request.sequences)} sequences, at most {limit} per request "
                f"({env_name('max_sequences_per_request')})",
                fields=[{"field": "sequences", "message": f"at most {limit} sequences"}],
            )
        limit = self.settings.max_events_per_sequence
        for index, sequence in enumerate(request.sequences):
            if len(sequence.events) > limit:
                path = f"sequences[{index}].events"
                raise ServiceError(
                    ErrorKind.TOO_LARGE,
                    f"{path}: {len(sequence.events)} events, at most {limit} per sequence "
                    f"({env_name('max_events_per_sequence')})",
                    fields=[{"field": path, "message": f"at most {limit} events"}],
                )

    def _encode(self, request: EmbedRequest) -> list[Encoded]:
        try:
            return self.bundle.preprocessor.encode_event_lists([sequence.events for sequence in request.sequences])
        except EventError as exc:
            path = f"sequences[{exc.sequence}].events[{exc.index}]" + (f".{exc.field}" if exc.field else "")
            raise invalid_field(path, exc.message) from None

    async def _compute(self, items: list[Encoded], keys: list[str]) -> list[FloatArray]:
        try:
            return await self.batcher.embed(items, keys)
        except QueueFull:
            raise ServiceError(
                ErrorKind.OVERLOADED, "the batch queue is full, retry shortly", retry_after_s=RETRY_AFTER_S
            ) from None
        except BatcherClosed:
            raise ServiceError(
                ErrorKind.NOT_READY, "the service is shutting down", retry_after_s=RETRY_AFTER_S
            ) from None
        except BatchFailed:
            raise ServiceError(ErrorKind.INFERENCE_FAILED, "inference failed for this request's batch") from None

    @staticmethod
    def _format(vector: FloatArray, encoding: str) -> FloatArray | str:
        if encoding == "base64":
            return base64.b64encode(to_bytes(vector)).decode("ascii")
        return vector

    def info(self) -> dict[str, Any]:
        s = self.settings
        pre = self.bundle.preprocessor
        return {
            "model_version": self.bundle.model_version,
            "dim": self.bundle.dim,
            "max_len": self.bundle.max_len,
            "vocabulary_size": len(pre.item_ids),
            "event_types": list(pre.event_types),
            "provider": self.provider,
            "requested_provider": s.provider,
            "limits": {
                "max_sequences_per_request": s.max_sequences_per_request,
                "max_events_per_sequence": s.max_events_per_sequence,
                "max_body_bytes": s.max_body_bytes,
            },
            "batching": {"max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms, "max_queue": s.max_queue},
            "cache": {
                "backend": self.cache.backend,
                "state": self.cache.state(),
                "ttl_s": s.cache_ttl_s,
                "max_entries": s.cache_max_entries if self.cache.backend == "lru" else None,
                "redis_timeout_ms": s.redis_timeout_ms if self.cache.backend == "redis" else None,
            },
            "auth": s.api_key is not None,
        }
