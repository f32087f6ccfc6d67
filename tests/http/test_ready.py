"""docs/api.md §7: /ready and /metrics need no token, so what they cost is bounded by the service.

A Redis outage leaves the outbox with a large backlog, exactly when every replica must stay ready
to drain it: /ready must stay fast and 200 while PostgreSQL is up, however many events wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from service.http.app import create_app
from service.http.status import BACKLOG_COUNT_LIMIT
from service.settings import Settings
from tests.asgi import Lifespan, client_for
from tests.conftest import new_account, wait_for
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

BACKLOG = 1_000_000
FAST_SECONDS = 0.25
OCCURRED_AT = 1_700_000_000


@pytest.fixture
async def million_event_backlog(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[str]:
    """A million committed events waiting on the test's stream (no relay runs for it)."""
    await db.execute("""
        INSERT INTO conversation_outbox (stream, event_id, type, account_id, conversation_id, occurred_at, sequence,
                                         schema_version, contact_id, is_pinned, is_muted, created_at)
        SELECT $1, 'evt_backlog' || g, 'conversation.created', 'acct_backlog', 'backlog' || g, $2 + g / 1000, 1, 1,
               'contact' || g, false, false, $2
        FROM generate_series(1, $3) AS g""", settings.events_stream, OCCURRED_AT, BACKLOG)
    try:
        yield settings.events_stream
    finally:
        await db.execute("DELETE FROM conversation_outbox WHERE stream = $1", settings.events_stream)


async def test_ready_stays_fast_and_200_with_a_million_events_waiting(settings: Settings, million_event_backlog):
    async with Lifespan(app := create_app(settings, run_relay=False)), client_for(app) as client:
        for _ in range(5):
            started = time.monotonic()
            response = await client.get("/ready")
            took = time.monotonic() - started
            assert response.status_code == 200, response.text
            assert took < FAST_SECONDS, f"/ready took {took:.3f} s"
            body = response.json()
            assert (body["outbox_backlog"], body["outbox_backlog_capped"]) == (BACKLOG_COUNT_LIMIT, True)
            assert body["outbox_oldest_age_seconds"] >= int(time.time()) - OCCURRED_AT - 1


async def test_metrics_stay_fast_with_a_million_events_waiting(settings: Settings, million_event_backlog):
    async with Lifespan(app := create_app(settings, run_relay=False)), client_for(app) as client:
        started = time.monotonic()
        response = await client.get("/metrics")
        assert time.monotonic() - started < FAST_SECONDS
    assert response.status_code == 200
    assert f"conversations_outbox_backlog {float(BACKLOG_COUNT_LIMIT)}" in response.text


async def test_concurrent_ready_calls_share_one_check(settings: Settings, million_event_backlog):
    """A flood of unauthenticated /ready calls holds at most one pooled connection."""
    async with Lifespan(app := create_app(settings, run_relay=False)), client_for(app) as client:
        pool = app.state.db.pool
        idle_before = pool.idle_count()
        calls = [asyncio.ensure_future(client.get("/ready")) for _ in range(50)]
        fewest_idle = idle_before
        async with asyncio.timeout(30):
            while not all(call.done() for call in calls):
                fewest_idle = min(fewest_idle, pool.idle_count())
                await asyncio.sleep(0)
        responses = await asyncio.gather(*calls)
    assert {response.status_code for response in responses} == {200}
    assert idle_before - fewest_idle <= 1


async def test_a_small_backlog_is_counted_exactly(settings: Settings, db: asyncpg.Connection):
    async with Lifespan(app := create_app(settings, run_relay=False)), client_for(app) as client:
        await db.execute("""
            INSERT INTO conversation_outbox (stream, event_id, type, account_id, conversation_id, occurred_at,
                                             sequence, schema_version)
            SELECT $1, 'evt_small' || g, 'conversation.created', 'acct_small', 'small' || g, $2, 1, 1
            FROM generate_series(1, 7) AS g""", settings.events_stream, int(time.time()) - 30)
        try:
            body = (await client.get("/ready")).json()
        finally:
            await db.execute("DELETE FROM conversation_outbox WHERE stream = $1", settings.events_stream)
    assert (body["outbox_backlog"], body["outbox_backlog_capped"]) == (7, False)
    assert 29 <= body["outbox_oldest_age_seconds"] <= 60


REDIS_PAUSE_MS = 1000


async def test_a_flood_of_ready_and_metrics_calls_never_takes_the_relays_redis_connections(
        settings: Settings, tmp_path, caplog: pytest.LogCaptureFixture):
    """While Redis is slow to answer (paused here), 300 unauthenticated probes wait on it at once; the
    relay publishing an event meanwhile must still get a connection, not an outage."""
    server = RedisServer(tmp_path, appendonly=False).start()
    settings = msgspec.structs.replace(settings, redis_url=server.url, redis_timeout=5.0)
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        async with Lifespan(app := create_app(settings)), client_for(app) as client:
            account = await new_account(settings, "flood")
            await wait_for(lambda: app.state.relay.stats.is_leader)
            caplog.clear()
            await admin.execute_command("CLIENT", "PAUSE", REDIS_PAUSE_MS, "ALL")
            probes = [asyncio.ensure_future(client.get(path)) for path in ("/ready", "/metrics") * 150]
            await asyncio.sleep(0.2)  # every probe is waiting on Redis now
            async with client_for(app, account.token) as api:
                assert (await api.post("/v1/conversations", json={"contact_id": "during_the_flood"})).status_code == 201
            await asyncio.gather(*probes)
            await wait_for(lambda: app.state.relay.stats.events_published >= 1, timeout=10)
    finally:
        await admin.aclose()
        server.stop()
    assert not [r for r in caplog.records if "cannot publish to Redis" in r.getMessage()]
