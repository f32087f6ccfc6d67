"""The Litestar application: its routes, its error handler, and the resources its lifespan owns.

`create_app(settings)` is the only way to build it (tests pass their own Settings; the server's
workers their environment's, server.py). The lifespan opens the request pool, the Redis client
and the relay, and starts the housekeeping (the idempotency-key purge, the event log's
partitions);
on shutdown (after the server has stopped taking requests and finished the ones in flight) it
flushes the relay and closes them. No SQL and no request parsing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar

from service import metrics
from service.conversations import Conversations
from service.events.coordinator import Relay
from service.events.redis_client import create_redis
from service.feed import Feed
from service.http import idempotency
from service.http.auth import TokenAuthenticator
from service.http.call import Services
from service.http.docs_page import DOCS_HANDLERS
from service.http.error_handler import render_error
from service.http.limits import MAX_BODY_BYTES
from service.http.mount import V1_HANDLERS
from service.http.observability import RequestObserver
from service.http.openapi import SCHEMA_HANDLERS
from service.http.status import PROBE_REDIS_CONNECTIONS, STATUS_HANDLERS, StatusProbes
from service.settings import Settings
from service.store import event_log
from service.store.database import Database, create_pool
from service.store.pool import ConnectionPool

logger = logging.getLogger("service.http.app")

POOL_SAMPLE_SECONDS = 1.0
EVENT_LOG_MAINTENANCE_SECONDS = 3600.0


async def _sample_pool(pool: ConnectionPool) -> None:
    """Once a second: this worker's pool usage (the gauge sums live workers), and its request counts."""
    while True:
        size = pool.open_count()
        metrics.POOL_SIZE.set(size)
        metrics.POOL_IN_USE.set(size - pool.idle_count())
        metrics.flush_requests()
        await asyncio.sleep(POOL_SAMPLE_SECONDS)


async def _maintain_event_log(db: Database, window_days: int) -> None:
    """The feed's partitions, at start and every EVENT_LOG_MAINTENANCE_SECONDS.

    At start too: `serve --no-migrate`, or processes that restart more often than the interval,
    would otherwise never make a new week's partition (its events would go to the default one).
    """
    while True:
        try:
            connection = await db.acquire()
            try:
                await event_log.maintain(connection, window_days)
            finally:
                db.release(connection)
        except Exception:  # PostgreSQL unreachable, say: try again next time
            logger.warning("could not maintain the event log's partitions; retrying later", exc_info=True)
        await asyncio.sleep(EVENT_LOG_MAINTENANCE_SECONDS)


def _lifespan(settings: Settings, run_relay: bool) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        pool = await create_pool(settings)
        # The relay's Redis client is its own: unauthenticated probes waiting on a slow Redis must
        # not be able to take the connections it publishes with (status.py).
        relay_redis = create_redis(settings)
        probes_redis = create_redis(settings, max_connections=PROBE_REDIS_CONNECTIONS)
        db = Database(pool, settings.db_acquire_timeout)
        relay = Relay(settings, relay_redis)
        app.state.settings = settings
        app.state.db = db
        app.state.relay = relay
        app.state.authenticator = TokenAuthenticator(db, settings.token_cache_seconds, settings.token_cache_size)
        app.state.services = Services(db, Conversations(settings.events_stream, settings.events_partitions),
                                      Feed(settings.events_feed_days),
                                      idempotency.KeyedWriteBudget(settings.idempotency_keys_per_second))
        app.state.status_probes = StatusProbes.create(db, settings.events_stream, settings.events_partitions,
                                                      probes_redis)
        if run_relay:
            relay.start()
        background = [asyncio.create_task(_sample_pool(pool), name="pool-sampler"),
                      asyncio.create_task(idempotency.purge_forever(db, settings.idempotency_purge_seconds),
                                          name="idempotency-purge"),
                      asyncio.create_task(_maintain_event_log(db, settings.events_feed_days), name="event-log")]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await relay.stop(flush_seconds=settings.shutdown_timeout * 0.4)
            await relay_redis.aclose()
            await probes_redis.aclose()
            await pool.close()
            metrics.forget_this_process()

    return resources


def create_app(settings: Settings, *, run_relay: bool = True) -> RequestObserver:
    """The application for `settings`, wrapped in its request observer (ids, metrics, logs).

    `run_relay=False` is for tests that drive the relay themselves.
    """
    return RequestObserver(Litestar(
        route_handlers=[*V1_HANDLERS, *STATUS_HANDLERS, *SCHEMA_HANDLERS, *DOCS_HANDLERS],
        lifespan=[_lifespan(settings, run_relay)],
        exception_handlers={Exception: render_error},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,  # the document is openapi.py's, served at /schema/openapi.json
        logging_config=None,  # logging is service/logs.py's, set up once per process
        debug=False,
    ))
