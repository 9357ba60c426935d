"""Vector cache: key = model version + digest of the encoded input, value = float32 bytes.

`RedisCache` when REDIS_URL is set (shared by replicas), else `LruCache` in this
process. A cache problem never fails a request: Redis errors and timeouts are
counted, the request is computed without the cache, and Redis is tried again
after a growing pause.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.metrics import Metrics
from model.features import FloatArray

log = logging.getLogger(__name__)

KEY_PREFIX = "ubs-embed"
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0
REDIS_POOL_SIZE = 128  # connections per replica: a request holds at most one at a time
# A timeout is often the event loop being busy rather than Redis being down: only this
# many in a row make the cache pause; a refused connection pauses it at once.
TIMEOUTS_BEFORE_PAUSE = 3
# Stores a request's vectors with one command and one reply: a pipeline of SETs costs the
# Python client a command to pack and a reply to parse per vector (3x the CPU, measured).
# KEYS = the keys, ARGV = the TTL in seconds, then one value per key.
STORE_SCRIPT = "for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1]) end return #KEYS"


def cache_key(model_version: str, digest: str) -> str:
    return f"{KEY_PREFIX}:{model_version}:{digest}"


def to_bytes(vector: FloatArray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(value: bytes, dim: int) -> FloatArray | None:
    """The vector, or None when the stored value has the wrong size (treated as a miss)."""
    if len(value) != 4 * dim:
        return None
    return np.frombuffer(value, dtype="<f4").astype(np.float32)


class Cache(Protocol):
    backend: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, values: Mapping[str, bytes]) -> None: ...

    def state(self) -> str: ...

    async def close(self) -> None: ...


class LruCache:
    """In-process LRU with a TTL; for a single replica without Redis."""

    backend = "lru"

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        found: list[bytes | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= now:
                if entry is not None:
                    del self._entries[key]
                found.append(None)
                continue
            self._entries.move_to_end(key)
            found.append(entry[1])
        return found

    async def set_many(self, values: Mapping[str, bytes]) -> None:
        expires = time.monotonic() + self.ttl_s
        for key, value in values.items():
            self._entries[key] = (expires, value)
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def state(self) -> str:
        return "ok"

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    """Redis with short timeouts: one MGET per lookup batch, one script call per store."""

    backend = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float, metrics: Metrics | None = None) -> None:
        self.ttl_s = ttl_s
        self._metrics = metrics
        # No client-side retries: a failed call is counted and skipped, the backoff below decides when to retry.
        # A bounded pool that waits (at most the timeout) for a free connection: under a burst of
        # concurrent requests, lookups queue for a connection instead of failing with "too many".
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_POOL_SIZE,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._client = aioredis.Redis(connection_pool=pool)
        self._store = self._client.register_script(STORE_SCRIPT)  # EVALSHA, loaded again if Redis lost it
        self._retry_at = 0.0
        self._backoff_s = BACKOFF_START_S
        self._timeouts_in_a_row = 0
        self._last_error: str | None = None

    def _available(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _failed(self, exc: Exception) -> None:
        if self._metrics is not None:
            self._metrics.cache_errors.inc()
        if self._last_error is None:
            log.warning("redis unavailable (%s: %s): serving without the cache", type(exc).__name__, exc)
        self._last_error = type(exc).__name__
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            self._timeouts_in_a_row += 1
            if self._timeouts_in_a_row < TIMEOUTS_BEFORE_PAUSE:
                return
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)

    def _succeeded(self) -> None:
        if self._last_error is not None:
            log.info("redis is back: cache enabled again")
        self._last_error = None
        self._timeouts_in_a_row = 0
        self._backoff_s = BACKOFF_START_S

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            values = await self._client.mget(list(keys))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return [None] * len(keys)
        self._succeeded()
        # The client does not decode responses, so values are bytes (or None for a miss).
        return [value if isinstance(value, bytes) else None for value in values]

    async def set_many(self, values: Mapping[str, bytes]) -> None:
        if not values or not self._available():
            return
        try:
            await self._store(keys=list(values), args=[self.ttl_s, *values.values()])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return
        self._succeeded()

    def state(self) -> str:
        return "ok" if self._last_error is None else f"unavailable ({self._last_error}), serving without cache"

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)


def make_cache(
    redis_url: str | None, ttl_s: int, max_entries: int, timeout_s: float, metrics: Metrics | None = None
) -> Cache:
    if redis_url:
        return RedisCache(redis_url, ttl_s, timeout_s, metrics)
    return LruCache(max_entries, ttl_s)
