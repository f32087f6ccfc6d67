"""Operational endpoints, outside /v1 and without a token: /health, /ready and /metrics.

/health says only that the process answers (no dependency checked: a load balancer must not
take every replica out because the database blinked). /ready is 200 when PostgreSQL answers,
503 otherwise; its body also reports Redis and the outbox backlog, which never fail it, since
the API keeps working without Redis.

Neither needs a token, so what they cost PostgreSQL is bounded whatever the request rate and the
backlog: the backlog is counted up to BACKLOG_COUNT_LIMIT rows by index (a Redis outage can leave
millions, exactly when replicas must stay ready to drain them), and concurrent /ready and /metrics
calls of a process share one check, so a flood of them holds one pooled connection at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import msgspec
from litestar import Request, get
from litestar.response.base import ASGIResponse

from service import metrics
from service.errors import RETRY_AFTER_SECONDS
from service.events.relay import Relay
from service.model import encode_json
from service.store import outbox
from service.store.database import Database

READY_CHECK_SECONDS = 1.0
BACKLOG_COUNT_LIMIT = 10_000


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    """What /ready found: `status` is "ready" exactly when PostgreSQL answered."""

    status: str
    postgres: str
    redis: str
    outbox_backlog: int | None
    # True when the backlog is at least outbox_backlog (the count stops at BACKLOG_COUNT_LIMIT).
    outbox_backlog_capped: bool
    outbox_oldest_age_seconds: int | None
    relay_is_leader: bool


_HEALTHY = encode_json(Health(status="ok"))


@get("/health", sync_to_thread=False)
def health() -> ASGIResponse:
    return ASGIResponse(body=_HEALTHY, media_type="application/json")


async def _check_postgres(db: Database, stream: str) -> tuple[int, int | None] | None:
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            connection = await db.acquire()
            try:
                return await outbox.fetch_backlog(connection, stream, BACKLOG_COUNT_LIMIT)
            except BaseException:
                with contextlib.suppress(asyncpg.InterfaceError):
                    connection.terminate()  # cut short: do not wait on a server that did not answer
                raise
            finally:
                db.release(connection)
    except Exception:  # any failure at all means "not ready", which is the answer
        return None


class BacklogProbe:
    """One process's check of PostgreSQL and the outbox backlog, shared by concurrent callers.

    The first caller starts the check as a task, so that a caller that gives up does not cancel
    it for the others; every caller that arrives while it runs gets its answer. An answer is
    never reused after that: /ready must tell the state of now.
    """

    def __init__(self, db: Database, stream: str) -> None:
        self._db = db
        self._stream = stream
        self._running: asyncio.Task[tuple[int, int | None] | None] | None = None

    async def backlog(self) -> tuple[int, int | None] | None:
        """(backlog, counted up to BACKLOG_COUNT_LIMIT; occurred_at of the oldest), or None if unreachable."""
        if self._running is None:
            self._running = asyncio.create_task(self._check(), name="ready-check")
        return await asyncio.shield(self._running)

    async def _check(self) -> tuple[int, int | None] | None:
        try:
            return await _check_postgres(self._db, self._stream)
        finally:
            self._running = None


async def _check_redis(request: Request) -> bool:
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            return bool(await request.app.state.redis.ping())
    except Exception:  # any failure at all means "unreachable", which is the answer
        return False


@get("/ready")
async def ready(request: Request) -> ASGIResponse:
    state = request.app.state
    backlog, redis_ok = await asyncio.gather(state.backlog_probe.backlog(), _check_redis(request))
    relay: Relay = state.relay
    oldest_age = None
    if backlog is not None and backlog[1] is not None:
        oldest_age = max(0, int(time.time()) - backlog[1])
    report = Readiness(
        status="ready" if backlog is not None else "unavailable",
        postgres="ok" if backlog is not None else "unreachable",
        redis="ok" if redis_ok else "unreachable",
        outbox_backlog=None if backlog is None else backlog[0],
        outbox_backlog_capped=backlog is not None and backlog[0] >= BACKLOG_COUNT_LIMIT,
        outbox_oldest_age_seconds=oldest_age,
        relay_is_leader=relay.stats.is_leader,
    )
    headers = None if backlog is not None else {"Retry-After": RETRY_AFTER_SECONDS}
    return ASGIResponse(body=encode_json(report), media_type="application/json",
                        status_code=200 if backlog is not None else 503, headers=headers)


@get("/metrics", media_type=metrics.CONTENT_TYPE)
async def metrics_endpoint(request: Request) -> ASGIResponse:
    state = request.app.state
    backlog = await state.backlog_probe.backlog()
    families = await metrics.scrape_families(backlog, state.redis, state.settings.events_stream)
    return ASGIResponse(body=metrics.render(families), media_type=metrics.CONTENT_TYPE)


STATUS_HANDLERS = [health, ready, metrics_endpoint]
