"""Operational endpoints, outside /v1 and without a token: /health, /ready and /metrics.

/health says only that the process answers (no dependency checked: a load balancer must not
take every replica out because the database blinked). /ready is 200 when PostgreSQL answers,
503 otherwise; its body also reports Redis, the outbox backlog, the durability the relay
detected and why events wait in the outbox (EVENTS_REQUIRE_DURABLE), none of which fail it,
since the API keeps working without Redis.
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
from service.events.durability import Durability
from service.events.relay import Relay
from service.model import encode_json
from service.store import outbox
from service.store.database import Database

READY_CHECK_SECONDS = 1.0


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    """What /ready found: `status` is "ready" exactly when PostgreSQL answered."""

    status: str
    postgres: str
    redis: str
    outbox_backlog: int | None
    outbox_oldest_age_seconds: int | None
    relay_is_leader: bool
    events_durability: str | None  # waitaof / fsync-always / aof-unconfirmed / none; null: not known yet
    events_held: str | None  # why events stay in the outbox although Redis answers; null: they do not


_HEALTHY = encode_json(Health(status="ok"))


@get("/health", sync_to_thread=False)
def health() -> ASGIResponse:
    return ASGIResponse(body=_HEALTHY, media_type="application/json")


async def _check_postgres(db: Database, stream: str) -> tuple[int, int | None] | None:
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            connection = await db.acquire()
            try:
                return await outbox.fetch_backlog(connection, stream)
            except BaseException:
                with contextlib.suppress(asyncpg.InterfaceError):
                    connection.terminate()  # cut short: do not wait on a server that did not answer
                raise
            finally:
                db.release(connection)
    except Exception:  # any failure at all means "not ready", which is the answer
        return None


async def _check_redis(request: Request) -> bool:
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            return bool(await request.app.state.redis.ping())
    except Exception:  # any failure at all means "unreachable", which is the answer
        return False


@get("/ready")
async def ready(request: Request) -> ASGIResponse:
    state = request.app.state
    backlog, redis_ok = await asyncio.gather(_check_postgres(state.db, state.settings.events_stream),
                                             _check_redis(request))
    relay: Relay = state.relay
    oldest_age = None
    if backlog is not None and backlog[1] is not None:
        oldest_age = max(0, int(time.time()) - backlog[1])
    report = Readiness(
        status="ready" if backlog is not None else "unavailable",
        postgres="ok" if backlog is not None else "unreachable",
        redis="ok" if redis_ok else "unreachable",
        outbox_backlog=None if backlog is None else backlog[0],
        outbox_oldest_age_seconds=oldest_age,
        relay_is_leader=relay.stats.is_leader,
        events_durability=None if relay.stats.durability is None else relay.stats.durability.value,
        events_held=relay.hold_reason(),
    )
    headers = None if backlog is not None else {"Retry-After": RETRY_AFTER_SECONDS}
    return ASGIResponse(body=encode_json(report), media_type="application/json",
                        status_code=200 if backlog is not None else 503, headers=headers)


@get("/metrics", media_type=metrics.CONTENT_TYPE)
async def metrics_endpoint(request: Request) -> ASGIResponse:
    state = request.app.state
    backlog = await _check_postgres(state.db, state.settings.events_stream)
    relay: Relay = state.relay
    durability = [(mode.value, mode is relay.stats.durability) for mode in Durability]
    families = await metrics.scrape_families(backlog, state.redis, state.settings.events_stream, durability,
                                             held=relay.hold_reason() is not None)
    return ASGIResponse(body=metrics.render(families), media_type=metrics.CONTENT_TYPE)


STATUS_HANDLERS = [health, ready, metrics_endpoint]
