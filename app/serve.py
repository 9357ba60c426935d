"""`ubs-embed serve`: run the service with uvicorn (one worker; scale out with replicas)."""

from __future__ import annotations

import argparse
import logging
import sys

# uvicorn waits this long for in-flight requests after SIGTERM before closing them.
GRACEFUL_SHUTDOWN_S = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="bundle directory (default: UBS_BUNDLE_DIR or bundles/default)")
    parser.add_argument("--host", help="address to bind (default: UBS_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: UBS_PORT or 8000)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.config import SettingsError, load_settings
    from app.main import create_app
    from model.bundle import BundleError, load_bundle

    overrides = {
        name: value
        for name, value in (("bundle_dir", args.bundle), ("host", args.host), ("port", args.port))
        if value is not None
    }
    try:
        settings = load_settings(**overrides)
        load_bundle(settings.bundle_dir)  # fail here with one clear line, not inside the server
    except (SettingsError, BundleError) as exc:
        sys.stderr.write(f"ubs-embed serve: {exc}\n")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        workers=1,
        access_log=False,  # requests are counted and timed in /metrics
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
