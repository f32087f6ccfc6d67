"""The Litestar application: routes, the error handler, and the resources its lifespan owns.

`create_app(settings)` is the only way to build it (tests pass their own Settings);
`app_from_environment()` is the factory the ASGI server imports in each worker. The lifespan
opens the request pool, the Redis client and the relay, and on shutdown (after the server has
stopped taking requests and finished the ones in flight) flushes the relay and closes them.
No SQL and no request parsing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar, Request, Response

from service import metrics
from service.auth import TokenAuthenticator
from service.conversations import Conversations
from service.db import Database, create_pool
from service.errors import InternalError, as_api_error, encode_error
from service.handlers import CONVERSATION_HANDLERS, MAX_BODY_BYTES
from service.observability import RequestObserver, configure_logging
from service.openapi import SCHEMA_HANDLERS
from service.operations import OPERATION_HANDLERS
from service.pool import ConnectionPool
from service.redis_client import create_redis
from service.relay import Relay
from service.settings import Settings, load_settings

logger = logging.getLogger("service.app")

POOL_SAMPLE_SECONDS = 1.0


def render_error(request: Request, error: Exception) -> Response:
    """The one exception handler: every error leaves in the contract's shape (API.md §4)."""
    # raw_path: the path as sent (a mounted handler sees scope["path"] rewritten to its remainder).
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.scope.get("path", "")
    api_error = as_api_error(request.method, path, error)
    if isinstance(api_error, InternalError):
        logger.error("unhandled error serving %s %s", request.method, path, exc_info=error)
    return Response(content=encode_error(api_error), status_code=api_error.status_code,
                    media_type="application/json", headers=api_error.headers or None)


async def _sample_pool(pool: ConnectionPool) -> None:
    """Publish this worker's pool usage once a second (the gauge sums live workers)."""
    while True:
        size = pool.open_count()
        metrics.POOL_SIZE.set(size)
        metrics.POOL_IN_USE.set(size - pool.idle_count())
        await asyncio.sleep(POOL_SAMPLE_SECONDS)


def _lifespan(settings: Settings, run_relay: bool) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        redis = create_redis(settings)
        db = Database(pool, settings.db_acquire_timeout)
        relay = Relay(settings, redis)
        app.state.settings = settings
        app.state.db = db
        app.state.redis = redis
        app.state.relay = relay
        app.state.authenticator = TokenAuthenticator(db, settings.token_cache_seconds)
        app.state.conversations = Conversations(settings.events_stream)
        if run_relay:
            relay.start()
        sampler = asyncio.create_task(_sample_pool(pool), name="pool-sampler")
        try:
            yield
        finally:
            sampler.cancel()
            await relay.stop(flush_seconds=settings.shutdown_timeout * 0.4)
            await redis.aclose()
            await pool.close()
            metrics.forget_this_process()

    return resources


def create_app(settings: Settings, *, run_relay: bool = True) -> RequestObserver:
    """The application for `settings`, wrapped in its request observer (ids, metrics, logs).

    `run_relay=False` is for tests that drive the relay themselves.
    """
    return RequestObserver(Litestar(
        route_handlers=[*CONVERSATION_HANDLERS, *OPERATION_HANDLERS, *SCHEMA_HANDLERS],
        lifespan=[_lifespan(settings, run_relay)],
        exception_handlers={Exception: render_error},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,  # the document is openapi.py's, served at /schema/openapi.json
        logging_config=None,  # logging is observability.py's, set up once per process
        debug=False,
    ))


def app_from_environment() -> RequestObserver:
    """The ASGI server's factory: one app per worker, configured from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level)  # workers are fresh interpreters: configure each
    return create_app(settings)
