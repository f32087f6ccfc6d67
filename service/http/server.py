"""`python -m service serve`: migrate, then run the app on uvicorn (uvloop + httptools).

Each worker builds its app with `worker_app`, which also hands the protocol its bounds (request
head size and time, requests and connections at once: protocol.py).

uvicorn was chosen over granian by measurement (README.md, "Performance"). Shutdown on SIGTERM
is bounded by SHUTDOWN_TIMEOUT: half of it for in-flight requests to finish, then the lifespan
flushes the relay within a share of the rest and closes the pools.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from types import FrameType

import uvicorn

from service.http.app import create_app
from service.http.observability import RequestObserver
from service.http.protocol import ContractHttpToolsProtocol
from service.logs import configure_logging
from service.settings import Settings, load_settings
from service.store.migrate import migrate

APP_FACTORY = "service.http.server:worker_app"


def worker_app() -> RequestObserver:
    """The ASGI server's factory, run in each worker before it accepts a connection: the app for
    this process's environment, and the front door's bounds for its protocol."""
    settings = load_settings()
    configure_logging(settings.log_level)  # workers are fresh interpreters: configure each
    ContractHttpToolsProtocol.configure(settings)
    return create_app(settings)


def _note_stop_signal(signum: int, _frame: FrameType | None) -> None:
    """Stand-in handler: uvicorn re-raises the stop signal once its graceful shutdown is done."""


def serve(settings: Settings, *, migrate_first: bool = True, workers: int | None = None) -> int:
    """Run the API until SIGTERM or SIGINT, then shut down gracefully and return 0."""
    if migrate_first:
        asyncio.run(migrate(settings))
    worker_count = workers or settings.worker_count
    if worker_count > 1:
        # Each worker is a fresh interpreter that inherits this before importing
        # prometheus_client, so their metrics land in one directory that any worker can sum up.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="conversations-metrics-")
    # uvicorn restores the handlers it found and re-raises the signal it caught after its
    # shutdown; with these in place that re-raise is a no-op, so a graceful stop exits 0
    # instead of dying of the very signal that asked for it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _note_stop_signal)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=worker_count,
        loop="uvloop",
        http=ContractHttpToolsProtocol,  # httptools, with the front door's bounds (protocol.py)
        timeout_keep_alive=settings.http_keep_alive_timeout,  # type: ignore[arg-type]
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # Nothing here reads the client's address, so X-Forwarded-* need no rewriting per request.
        proxy_headers=False,
        timeout_graceful_shutdown=settings.shutdown_timeout / 2,
    )
    return 0
