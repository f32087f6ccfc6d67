"""Operational endpoints, outside /v1 and without a token: /health, /ready and /metrics.

/health says only that the process answers (no dependency checked: a load balancer must not
take every replica out because the database blinked). /ready is 200 when PostgreSQL answers,
503 otherwise; its body also reports Redis, the outbox backlog (in all and per partition), the
partitions this process publishes and the relays alive, the durability the relay
detected and why events wait in the outbox (EVENTS_REQUIRE_DURABLE), none of which fail it,
since the API keeps working without Redis.

Neither needs a token, so what they cost is bounded whatever the request rate and the backlog:
the backlog is counted up to BACKLOG_COUNT_LIMIT rows by index (a Redis outage can leave
millions, exactly when replicas must stay ready to drain them); concurrent calls of a process
share one PostgreSQL check and one Redis ping (`SharedCheck`), so a flood of them holds one
pooled connection at most; and they reach Redis through a client of their own with at most
PROBE_REDIS_CONNECTIONS connections, never the relay's, so a flood that waits on a slow Redis
cannot take the connections the relay publishes with.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg
import msgspec
from litestar import Request, get
from litestar.response.base import ASGIResponse

from service import metrics
from service.errors import RETRY_AFTER_SECONDS
from service.events.coordinator import Relay
from service.events.durability import Durability
from service.events.redis_client import Client
from service.model import encode_json
from service.store import idempotency_keys, outbox
from service.store.database import Database

READY_CHECK_SECONDS = 1.0
BACKLOG_COUNT_LIMIT = 10_000
PROBE_REDIS_CONNECTIONS = 2  # the shared ping, and a /metrics scrape's stream figures

T = TypeVar("T")


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
    events_durability: str | None  # waitaof / fsync-always / aof-unconfirmed / none; null: not known yet
    events_held: str | None  # why events stay in the outbox although Redis answers; null: they do not
    # The partitions of the stream (EVENTS_PARTITIONS): this process publishes `relay_partitions`, and
    # `relay_processes` relays were alive when it last counted (null: not counted yet).
    relay_partitions: list[int]
    relay_processes: int | None
    # Each partition's backlog, counted up to BACKLOG_COUNT_LIMIT (null: PostgreSQL did not answer).
    outbox_backlog_by_partition: list[int] | None


_HEALTHY = encode_json(Health(status="ok"))


@get("/health", sync_to_thread=False)
def health() -> ASGIResponse:
    return ASGIResponse(body=_HEALTHY, media_type="application/json")


class StoreFigures(msgspec.Struct, frozen=True):
    """What one check read from PostgreSQL for /ready and /metrics."""

    backlog: int  # counted up to BACKLOG_COUNT_LIMIT
    oldest_occurred_at: int | None
    partition_backlogs: list[tuple[int, int | None]]  # (backlog, oldest occurred_at) per partition
    keys_stored: int
    oldest_key_age: int | None


async def _check_postgres(db: Database, stream: str, partitions: int) -> StoreFigures | None:
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            connection = await db.acquire()
            try:
                backlog, oldest = await outbox.fetch_backlog(connection, stream, BACKLOG_COUNT_LIMIT)
                by_partition = await outbox.fetch_partition_backlogs(connection, stream, partitions,
                                                                     BACKLOG_COUNT_LIMIT)
                keys, oldest_key_age = await idempotency_keys.fetch_figures(connection)
                return StoreFigures(backlog, oldest, by_partition, keys, oldest_key_age)
            except BaseException:
                with contextlib.suppress(asyncpg.InterfaceError):
                    connection.terminate()  # cut short: do not wait on a server that did not answer
                raise
            finally:
                db.release(connection)
    except Exception:  # any failure at all means "not ready", which is the answer
        return None


class SharedCheck(Generic[T]):
    """One run of `check` at a time, its answer shared by every caller that arrives while it runs.

    The first caller starts the check as a task, so that a caller that gives up does not cancel
    it for the others. An answer is never reused after that: /ready must tell the state of now.
    """

    def __init__(self, check: Callable[[], Awaitable[T]]) -> None:
        self._check = check
        self._running: asyncio.Task[T] | None = None

    async def __call__(self) -> T:
        if self._running is None:
            self._running = asyncio.create_task(self._run(), name="status-check")
        return await asyncio.shield(self._running)

    async def _run(self) -> T:
        try:
            return await self._check()
        finally:
            self._running = None


async def _ping(redis: Client) -> bool:
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            return bool(await redis.ping())
    except Exception:  # any failure at all means "unreachable", which is the answer
        return False


class StatusProbes(msgspec.Struct, frozen=True):
    """A process's shared checks for /ready and /metrics, and the Redis client they use."""

    store: SharedCheck[StoreFigures | None]
    redis_ping: SharedCheck[bool]
    redis: Client

    @classmethod
    def create(cls, db: Database, stream: str, partitions: int, redis: Client) -> StatusProbes:
        return cls(SharedCheck(lambda: _check_postgres(db, stream, partitions)), SharedCheck(lambda: _ping(redis)),
                   redis)


@get("/ready")
async def ready(request: Request) -> ASGIResponse:
    state = request.app.state
    probes: StatusProbes = state.status_probes
    figures, redis_ok = await asyncio.gather(probes.store(), probes.redis_ping())
    relay: Relay = state.relay
    oldest_age = None
    if figures is not None and figures.oldest_occurred_at is not None:
        oldest_age = max(0, int(time.time()) - figures.oldest_occurred_at)
    report = Readiness(
        status="ready" if figures is not None else "unavailable",
        postgres="ok" if figures is not None else "unreachable",
        redis="ok" if redis_ok else "unreachable",
        outbox_backlog=None if figures is None else figures.backlog,
        outbox_backlog_capped=figures is not None and figures.backlog >= BACKLOG_COUNT_LIMIT,
        outbox_oldest_age_seconds=oldest_age,
        relay_is_leader=relay.stats.is_leader,
        events_durability=None if relay.stats.durability is None else relay.stats.durability.value,
        events_held=relay.hold_reason(),
        relay_partitions=relay.led_partitions,
        relay_processes=relay.live_relays,
        outbox_backlog_by_partition=None if figures is None else [count for count, _ in figures.partition_backlogs],
    )
    headers = None if figures is not None else {"Retry-After": RETRY_AFTER_SECONDS}
    return ASGIResponse(body=encode_json(report), media_type="application/json",
                        status_code=200 if figures is not None else 503, headers=headers)


@get("/metrics", media_type=metrics.CONTENT_TYPE)
async def metrics_endpoint(request: Request) -> ASGIResponse:
    state = request.app.state
    probes: StatusProbes = state.status_probes
    figures = await probes.store()
    relay: Relay = state.relay
    durability = [(mode.value, mode is relay.stats.durability) for mode in Durability]
    families = await metrics.scrape_families(
        None if figures is None else (figures.backlog, figures.oldest_occurred_at),
        None if figures is None else (figures.keys_stored, figures.oldest_key_age),
        probes.redis, relay.keys, durability, held=relay.hold_reason() is not None,
        partition_backlogs=None if figures is None else figures.partition_backlogs,
        relay_processes=relay.live_relays, partitions_led=len(relay.led_partitions))
    return ASGIResponse(body=metrics.render(families), media_type=metrics.CONTENT_TYPE)


STATUS_HANDLERS = [health, ready, metrics_endpoint]
