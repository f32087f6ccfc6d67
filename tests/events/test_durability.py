"""docs/api.md §6 durability: which the relay detected, shown on /ready and /metrics, and required when asked.

The relay deletes an outbox row only once Redis confirmed its entry as far as the server can
(WAITAOF on an AOF server >= 7.2); /ready's body and /metrics say which durability that is; with
EVENTS_REQUIRE_DURABLE the relay publishes nothing while Redis is not crash-safe, and /ready says why.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import msgspec
import redis.asyncio as aioredis

from service.http.app import create_app
from service.settings import Settings
from tests.asgi import Lifespan, client_for
from tests.backends import RedisBackend, private_aof_server
from tests.conftest import Account, new_account, wait_for
from tests.events.test_relay import LEADER_PID
from tests.http.test_observability import metric_value
from tests.servers import RedisServer
from tests.stream_helpers import entries, wait_for_entries
from tests.write_storm import outbox_waiting

DURABILITIES = ("waitaof", "fsync-always", "aof-unconfirmed", "none")
HELD_SECONDS = 2.0  # how long a test watches the outbox keep what the relay must not publish yet


async def waitaof_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_waitaof", {}).get("calls", 0))


async def stays_in_the_outbox(db: asyncpg.Connection, stream: str, rows: int) -> None:
    """The outbox keeps exactly `rows` rows of `stream` for HELD_SECONDS, sampled every 0.1 s."""
    deadline = time.monotonic() + HELD_SECONDS
    while time.monotonic() < deadline:
        assert await outbox_waiting(db, stream) == rows
        await asyncio.sleep(0.1)


async def test_each_backend_is_published_through_its_own_path(
        api, app, settings: Settings, redis_client, redis_backend: RedisBackend):
    calls_before = await waitaof_calls(redis_client) if redis_backend.durability == "waitaof" else 0
    for n in range(3):
        assert (await api.post("/v1/conversations", json={"contact_id": f"path_{n}"})).status_code == 201
    await wait_for_entries(redis_client, settings.events_stream, 3)
    assert app.state.relay.stats.durability.value == redis_backend.durability
    if redis_backend.durability == "waitaof":  # fails if the WAITAOF branch is never taken
        # The entries are visible once XADD ran; WAITAOF is counted when it returns, up to a
        # second later under appendfsync everysec, so wait for the count rather than read it once.
        async def waited() -> bool:
            return await waitaof_calls(redis_client) > calls_before
        await wait_for(waited, timeout=5.0)


async def test_ready_and_metrics_report_the_durability_the_relay_detected(
        api, anonymous, settings: Settings, redis_client, redis_backend: RedisBackend):
    await api.post("/v1/conversations", json={"contact_id": "visible"})
    await wait_for_entries(redis_client, settings.events_stream, 1)
    ready = await anonymous.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["events_durability"] == redis_backend.durability
    assert ready.json()["events_held"] is None
    metrics = (await anonymous.get("/metrics")).text
    for mode in DURABILITIES:
        expected = 1.0 if mode == redis_backend.durability else 0.0
        assert metric_value(metrics, "conversations_events_durability", mode=mode) == expected
    assert metric_value(metrics, "conversations_events_held") == 0.0


async def test_required_durability_on_a_redis_without_persistence_keeps_events_in_the_outbox_and_ready_says_why(
        settings: Settings, account: Account, redis_client, db: asyncpg.Connection, redis_backend: RedisBackend,
        tmp_path: Path):
    server = redis_backend.private(tmp_path, extra=("--appendonly", "no")).start()
    settings = msgspec.structs.replace(settings, redis_url=server.url, events_require_durable=True)
    try:
        async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
            assert (await api.post("/v1/conversations", json={"contact_id": "held"})).status_code == 201
            await stays_in_the_outbox(db, settings.events_stream, 1)
            reader = aioredis.Redis.from_url(server.url, decode_responses=True)
            try:
                assert await entries(reader, settings.events_stream) == []
            finally:
                await reader.aclose()
            ready = await api.get("/ready")
            assert ready.status_code == 200  # the API works; only the events wait
            body = ready.json()
            assert body["events_durability"] == "none"
            assert "EVENTS_REQUIRE_DURABLE" in body["events_held"] and "none" in body["events_held"]
            metrics = (await api.get("/metrics")).text
            assert metric_value(metrics, "conversations_events_held") == 1.0
            assert metric_value(metrics, "conversations_events_durability", mode="none") == 1.0
    finally:
        server.stop()


async def test_a_new_leadership_asks_redis_again_so_a_redis_no_longer_crash_safe_holds_events(
        settings: Settings, account: Account, db: asyncpg.Connection, redis_backend: RedisBackend, tmp_path: Path):
    """docs/api.md §6.3: the relay asks Redis what it promises when it takes the lead, never trusting
    what an earlier leadership of the partition found."""
    # Crash-safe at first: fsync-always on Redis 7.0, WAITAOF on the AOF server.
    extra = ("--appendonly", "yes", "--appendfsync", "always") if redis_backend.durability == "none" else ()
    server = redis_backend.private(tmp_path, extra=extra).start()
    settings = msgspec.structs.replace(settings, redis_url=server.url, events_require_durable=True)
    reader = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
            assert (await api.post("/v1/conversations", json={"contact_id": "first"})).status_code == 201
            await wait_for_entries(reader, settings.events_stream, 1, timeout=10)
            # Its row retired, so its WAITAOF (if any) has returned: the leader is idle.
            await wait_for(lambda: _equals(outbox_waiting(db, settings.events_stream), 0))
            await reader.config_set("appendonly", "no")  # no longer crash-safe, and no error says so
            old_leader = await db.fetchval(LEADER_PID, settings.events_stream)
            await db.execute("SELECT pg_terminate_backend($1)", old_leader)

            async def new_leader() -> bool:
                pid = await db.fetchval(LEADER_PID, settings.events_stream)
                return pid is not None and pid != old_leader and app.state.relay.stats.is_leader

            await wait_for(new_leader, timeout=10)
            assert (await api.post("/v1/conversations", json={"contact_id": "second"})).status_code == 201
            await stays_in_the_outbox(db, settings.events_stream, 1)
            assert len(await entries(reader, settings.events_stream)) == 1
            assert (await api.get("/ready")).json()["events_durability"] == "none"
    finally:
        await reader.aclose()
        server.stop()


async def test_held_events_are_published_once_redis_becomes_crash_safe_without_a_restart(
        settings: Settings, account: Account, db: asyncpg.Connection, redis_backend: RedisBackend,
        tmp_path: Path):
    server = redis_backend.private(tmp_path, extra=("--appendonly", "no")).start()
    settings = msgspec.structs.replace(settings, redis_url=server.url, events_require_durable=True)
    reader = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
            assert (await api.post("/v1/conversations", json={"contact_id": "held"})).status_code == 201
            await wait_for(lambda: app.state.relay.hold_reason() is not None)
            assert await outbox_waiting(db, settings.events_stream) == 1
            await reader.config_set("appendonly", "yes")
            if redis_backend.durability == "none":  # Redis 7.0 has no WAITAOF: only fsync-always is crash-safe
                await reader.config_set("appendfsync", "always")
            await wait_for_entries(reader, settings.events_stream, 1, timeout=10)
            await wait_for(lambda: _equals(outbox_waiting(db, settings.events_stream), 0))
            assert app.state.relay.hold_reason() is None
            expected = "waitaof" if redis_backend.durability == "waitaof" else "fsync-always"
            assert (await api.get("/ready")).json()["events_durability"] == expected
    finally:
        await reader.aclose()
        server.stop()


async def test_a_batch_whose_waitaof_is_not_confirmed_in_time_stays_in_the_outbox_and_goes_out_again(
        database_url: str, stream_name: str, db: asyncpg.Connection, tmp_path: Path):
    """WAITAOF asked for one replica's fsync while the primary has none: the server cannot confirm in time."""
    (tmp_path / "primary").mkdir()
    primary = private_aof_server(tmp_path / "primary").start()
    replica: RedisServer | None = None
    settings = Settings(database_url=database_url, redis_url=primary.url, events_stream=stream_name,
                        db_pool_size=4, shutdown_timeout=4.0, events_waitaof_replicas=1)
    account = await new_account(settings)
    reader = aioredis.Redis.from_url(primary.url, decode_responses=True)
    try:
        async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
            created = await api.post("/v1/conversations", json={"contact_id": "unconfirmed"})
            assert created.status_code == 201
            await wait_for_entries(reader, stream_name, 1)  # XADDed, but not confirmed
            await stays_in_the_outbox(db, stream_name, 1)
            assert app.state.relay.stats.events_published == 0
            (tmp_path / "replica").mkdir()
            replica = private_aof_server(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port)))
            replica.start()
            await wait_for(lambda: _equals(outbox_waiting(db, stream_name), 0), timeout=15)
            assert app.state.relay.stats.events_published == 1
        copies = [fields for _, fields in await entries(reader, stream_name)]
    finally:
        await reader.aclose()
        if replica is not None:
            replica.stop()
        primary.stop()
    assert len(copies) >= 2  # published again after each unconfirmed attempt
    assert {(c["id"], c["sequence"], c["conversation_id"]) for c in copies} == {
        (copies[0]["id"], "1", created.json()["id"])}


async def test_waitaof_for_a_replica_may_take_longer_than_redis_timeout(
        database_url: str, stream_name: str, db: asyncpg.Connection, tmp_path: Path):
    """A replica reports its fsync about once a second, so WAITAOF for one may take that long: the reply
    is awaited for as long as WAITAOF may wait, not cut at REDIS_TIMEOUT (here 0.3 s) and sent again."""
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = private_aof_server(tmp_path / "primary").start()
    replica = private_aof_server(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    settings = Settings(database_url=database_url, redis_url=primary.url, events_stream=stream_name,
                        db_pool_size=4, shutdown_timeout=4.0, events_waitaof_replicas=1, redis_timeout=0.3)
    account = await new_account(settings)
    reader = aioredis.Redis.from_url(primary.url, decode_responses=True)
    try:
        async def replica_confirms_fsyncs() -> bool:  # linked, its first sync and AOF done
            await reader.set(f"{stream_name}:probe", 1)
            _, replicas = await reader.execute_command("WAITAOF", 1, 1, 500)
            return replicas == 1

        await wait_for(replica_confirms_fsyncs, timeout=20)
        await reader.delete(f"{stream_name}:probe")
        async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
            for n in range(3):
                assert (await api.post("/v1/conversations", json={"contact_id": f"r{n}"})).status_code == 201
            await wait_for(lambda: _equals(outbox_waiting(db, stream_name), 0), timeout=15)
            assert app.state.relay.stats.events_published == 3
            assert len(await entries(reader, stream_name)) == 3  # each batch sent once, not again after a cut
    finally:
        await reader.aclose()
        replica.stop()
        primary.stop()


async def _equals(value, expected: int) -> bool:
    return (await value) == expected
