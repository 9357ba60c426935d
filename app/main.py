"""The app factory: `create_app(settings)` builds the service; the lifespan loads and warms the model."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.batching import Batcher
from app.cache import make_cache
from app.config import Settings, load_settings
from app.embedder import Embedder
from app.engine import Engine
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import BodyLimit, RequestMetrics
from app.routes import router
from model.bundle import load_bundle

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Turns a user's raw behavior events (item, time, event type, optional dwell) into one compact vector. "
    "Concurrent requests are batched dynamically; vectors are cached per model version."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        bundle = load_bundle(settings.bundle_dir)
        engine = Engine(bundle.onnx_path, bundle.dim, settings.provider, settings.intra_op_threads)
        engine.warm_up(bundle.max_len)
        metrics.set_model(bundle.model_version, engine.provider, settings.provider)
        cache = make_cache(
            settings.redis_url, settings.cache_ttl_s, settings.cache_max_entries, settings.redis_timeout_s, metrics
        )
        batcher = Batcher(
            engine.embed,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_s,
            max_queue=settings.max_queue,
            metrics=metrics,
        )
        await batcher.start()
        app.state.embedder = Embedder(bundle, engine.provider, batcher, cache, metrics, settings)
        # Everything loaded so far lives as long as the process: keep it out of the cyclic
        # collector, whose full passes over ~75k startup objects otherwise stall requests.
        gc.collect()
        gc.freeze()
        log.info(
            "serving model %s (dim %d, max_len %d) on %s, cache %s",
            bundle.model_version,
            bundle.dim,
            bundle.max_len,
            engine.provider,
            cache.backend,
        )
        try:
            yield
        finally:
            app.state.embedder = None
            await batcher.stop()
            await cache.close()

    app = FastAPI(title="ubs-embed", description=DESCRIPTION, version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.embedder = None
    install_error_handlers(app, metrics.count_failure)
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, count_failure=metrics.count_failure)
    paths = frozenset(getattr(route, "path", "") for route in [*app.routes, *router.routes])
    app.add_middleware(RequestMetrics, metrics=metrics, paths=paths)
    return app
