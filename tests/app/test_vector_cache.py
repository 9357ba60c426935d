"""The vector caches: in-process LRU and a real Redis, including Redis going away."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis
from service_helpers import RedisServer

from app.cache import LruCache, RedisCache, cache_key, from_bytes, make_cache, to_bytes
from app.metrics import Metrics


def test_vector_bytes_round_trip_and_wrong_size_is_a_miss() -> None:
    vector = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    data = to_bytes(vector)
    assert data == vector.astype("<f4").tobytes() and len(data) == 12
    np.testing.assert_array_equal(from_bytes(data, 3), vector)
    assert from_bytes(data, 4) is None


def test_key_holds_model_version_and_digest() -> None:
    assert cache_key("v1", "abc") != cache_key("v2", "abc")
    assert cache_key("v1", "abc").endswith(":v1:abc")


def test_make_cache_picks_the_backend() -> None:
    assert make_cache(None, 10, 5, 0.05).backend == "lru"
    assert make_cache("redis://127.0.0.1:1/0", 10, 5, 0.05).backend == "redis"


@pytest.mark.asyncio
async def test_lru_evicts_the_least_recently_used() -> None:
    cache = LruCache(max_entries=2, ttl_s=60)
    await cache.set_many({"a": b"1", "b": b"2"})
    assert await cache.get_many(["a"]) == [b"1"]  # a is now the most recent
    await cache.set_many({"c": b"3"})
    assert await cache.get_many(["a", "b", "c"]) == [b"1", None, b"3"]


@pytest.mark.asyncio
async def test_lru_entries_expire_after_ttl() -> None:
    cache = LruCache(max_entries=10, ttl_s=0.05)
    await cache.set_many({"a": b"1"})
    time.sleep(0.1)
    assert await cache.get_many(["a"]) == [None]


@pytest.mark.asyncio
async def test_redis_round_trip_with_ttl(redis_server: RedisServer) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_server.url, ttl_s=100, timeout_s=0.5, metrics=metrics)
    await cache.set_many({"k1": b"\x00\x01", "k2": b"\x02"})
    assert await cache.get_many(["k1", "missing", "k2"]) == [b"\x00\x01", None, b"\x02"]
    assert 0 < await cache._client.ttl("k1") <= 100
    assert 0 < await cache._client.ttl("k2") <= 100
    # Redis forgets scripts on SCRIPT FLUSH or a restart: the store loads it again.
    await cache._client.script_flush()
    await cache.set_many({"k3": b"\x03"})
    assert await cache.get_many(["k3"]) == [b"\x03"]
    assert cache.state() == "ok"
    assert metrics.registry.get_sample_value("ubs_embed_cache_errors_total") == 0.0
    await cache.close()


@pytest.mark.asyncio
async def test_redis_down_is_counted_skipped_and_retried(redis_server: RedisServer) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_server.url, ttl_s=100, timeout_s=0.5, metrics=metrics)
    await cache.set_many({"k": b"v"})
    redis_server.stop()
    started = time.monotonic()
    assert await cache.get_many(["k"]) == [None]
    assert time.monotonic() - started < 2.0  # bounded, no retry storm
    assert metrics.registry.get_sample_value("ubs_embed_cache_errors_total") == 1.0
    assert cache.state().startswith("unavailable")
    await cache.set_many({"k": b"v"})  # inside the backoff: skipped, not another error
    assert metrics.registry.get_sample_value("ubs_embed_cache_errors_total") == 1.0
    redis_server.start()
    cache._retry_at = 0.0  # the backoff has passed
    await cache.set_many({"k": b"v2"})
    assert await cache.get_many(["k"]) == [b"v2"]
    assert cache.state() == "ok"
    await cache.close()


@pytest.mark.asyncio
async def test_a_slow_redis_pauses_the_cache_only_after_several_timeouts(redis_server: RedisServer) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_server.url, ttl_s=100, timeout_s=0.05, metrics=metrics)
    await cache.set_many({"k": b"v"})
    blocker = redis.Redis.from_url(redis_server.url)
    sleeping = threading.Thread(target=lambda: blocker.execute_command("DEBUG", "SLEEP", "1.5"))
    sleeping.start()
    time.sleep(0.2)  # Redis is now busy for real: every call times out
    for n in range(1, 4):
        assert await cache.get_many(["k"]) == [None]
        assert metrics.registry.get_sample_value("ubs_embed_cache_errors_total") == float(n)
    # Three timeouts in a row: the cache pauses, so this lookup does not even try.
    started = time.monotonic()
    assert await cache.get_many(["k"]) == [None]
    assert time.monotonic() - started < 0.02
    assert metrics.registry.get_sample_value("ubs_embed_cache_errors_total") == 3.0
    sleeping.join()
    blocker.close()
    cache._retry_at = 0.0  # the pause has passed
    assert await cache.get_many(["k"]) == [b"v"]
    assert cache.state() == "ok"
    await cache.close()
