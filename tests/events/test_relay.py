"""docs/api.md §6 delivery: outages of Redis and PostgreSQL, one publisher per stream, takeover."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import redis.asyncio as aioredis

from service.http.app import create_app
from service.settings import Settings
from tests.asgi import Lifespan, client_for
from tests.conftest import Account, wait_for
from tests.servers import RedisServer, ServiceProcess
from tests.stream_helpers import entries, wait_for_entries
from tests.tcp_proxy import TcpProxy


def leaders(*apps) -> list:
    return [app for app in apps if app.state.relay.stats.is_leader]


async def test_writes_succeed_while_redis_is_down_and_every_event_arrives_after_it_returns(
        settings: Settings, account: Account, tmp_path: Path, caplog):
    server = RedisServer(tmp_path).start()
    settings = msgspec.structs.replace(settings, redis_url=server.url, redis_timeout=0.5)
    stream_reader = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
            first = (await api.post("/v1/conversations", json={"contact_id": "before"})).json()
            await wait_for_entries(stream_reader, settings.events_stream, 1)
            server.kill()
            caplog.set_level(logging.WARNING, logger="service.events")
            during = [await api.post("/v1/conversations", json={"contact_id": f"during_{n}"}) for n in range(5)]
            during += [await api.put(f"/v1/conversations/{first['id']}", json={"last_active_at": 10 + n})
                       for n in range(5)]
            assert [r.status_code for r in during] == [201] * 5 + [200] * 5
            await asyncio.sleep(1.0)  # the relay keeps failing meanwhile, and says so once
            server.start()
            await stream_reader.aclose()
            stream_reader = aioredis.Redis.from_url(server.url, decode_responses=True)
            found = await wait_for_entries(stream_reader, settings.events_stream, 11, timeout=15)
    finally:
        await stream_reader.aclose()
        server.stop()
    ids = [fields["id"] for _, fields in found]
    assert len(ids) == len(set(ids)) == 11
    updates = [fields for _, fields in found if fields["conversation_id"] == first["id"]]
    assert [fields["sequence"] for fields in updates] == ["1", "2", "3", "4", "5", "6"]
    outage_warnings = [r for r in caplog.records if "cannot publish to Redis" in r.getMessage()]
    assert len(outage_warnings) == 1


async def test_only_the_lock_holder_publishes_and_a_follower_takes_over(
        settings: Settings, account: Account, redis_client):
    apps = {create_app(settings): None, create_app(settings): None}
    lifespans = {app: Lifespan(app) for app in apps}
    for lifespan in lifespans.values():
        await lifespan.__aenter__()
    try:
        await wait_for(lambda: len(leaders(*apps)) == 1)
        one, two = (client_for(app, account.token) for app in apps)
        async with one, two:
            for n in range(10):
                response = await (one if n % 2 else two).post("/v1/conversations", json={"group_id": f"g{n}"})
                assert response.status_code == 201
            await wait_for_entries(redis_client, settings.events_stream, 10)
        assert len(leaders(*apps)) == 1
        [leader] = leaders(*apps)
        [follower] = [app for app in apps if app is not leader]
        await lifespans.pop(leader).__aexit__(None, None, None)  # releases the lock
        stopped = time.monotonic()
        await wait_for(lambda: follower.state.relay.stats.is_leader, timeout=5)
        async with client_for(follower, account.token) as api:
            await api.post("/v1/conversations", json={"group_id": "after"})
        found = await wait_for_entries(redis_client, settings.events_stream, 11, timeout=5)
        assert time.monotonic() - stopped < 5
    finally:
        for lifespan in lifespans.values():
            await lifespan.__aexit__(None, None, None)
    ids = [fields["id"] for _, fields in found]
    assert len(ids) == len(set(ids)) == 11


async def test_a_leader_whose_session_dies_is_replaced_within_5_seconds(
        settings: Settings, account: Account, redis_client, db: asyncpg.Connection):
    first_app, second_app = create_app(settings), create_app(settings)
    async with Lifespan(first_app), Lifespan(second_app):
        await wait_for(lambda: len(leaders(first_app, second_app)) == 1)
        [leader] = leaders(first_app, second_app)
        # What PostgreSQL does when the keepalives find the leader's host gone: end its session.
        terminated = await db.fetchval(
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid::bigint = "
            "(hashtextextended('conversations-relay:' || $1, 0) & 4294967295)", settings.events_stream)
        assert terminated == 1
        started = time.monotonic()
        async with client_for(leader, account.token) as api:
            await api.post("/v1/conversations", json={"contact_id": "after_session_loss"})
        await wait_for_entries(redis_client, settings.events_stream, 1, timeout=5)
        assert time.monotonic() - started < 5
        await wait_for(lambda: len(leaders(first_app, second_app)) == 1)


async def test_relay_waits_out_a_postgres_outage_and_resumes(
        settings: Settings, account: Account, redis_client, caplog):
    target = urlsplit(settings.database_url)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    relay_url = urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}"))
    settings = msgspec.structs.replace(settings, relay_database_url=relay_url, db_statement_timeout=2.0)
    try:
        async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
            await wait_for(lambda: app.state.relay.stats.is_leader)
            caplog.set_level(logging.WARNING, logger="service.events")
            await proxy.cut()
            created = [await api.post("/v1/conversations", json={"contact_id": f"c{n}"}) for n in range(3)]
            assert [r.status_code for r in created] == [201] * 3  # the API does not need the relay
            await wait_for(lambda: app.state.relay.stats.database_failing_since is not None)
            assert await entries(redis_client, settings.events_stream) == []
            await proxy.restore()
            await wait_for_entries(redis_client, settings.events_stream, 3, timeout=10)
    finally:
        await proxy.close()
    assert any("lost PostgreSQL" in r.getMessage() for r in caplog.records)


async def test_a_killed_leader_process_is_replaced_within_5_seconds(
        settings: Settings, account: Account, redis_client, tmp_path: Path):
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "EVENTS_STREAM": settings.events_stream}
    first = ServiceProcess(env, log_path=tmp_path / "first.log").start()
    try:
        async with httpx.AsyncClient(base_url=first.base_url,
                                     headers={"Authorization": f"Bearer {account.token}"}) as api:
            await api.post("/v1/conversations", json={"contact_id": "first"})
        await wait_for_entries(redis_client, settings.events_stream, 1, timeout=5)
        second = ServiceProcess(env, log_path=tmp_path / "second.log").start()
        try:
            first.signal(signal.SIGKILL)
            first.process.wait(5)
            killed_at = time.monotonic()
            async with httpx.AsyncClient(base_url=second.base_url,
                                         headers={"Authorization": f"Bearer {account.token}"}) as api:
                assert (await api.post("/v1/conversations", json={"contact_id": "second"})).status_code == 201
            await wait_for_entries(redis_client, settings.events_stream, 2, timeout=6)
            assert time.monotonic() - killed_at < 5
        finally:
            second.stop()
    finally:
        first.stop()


async def test_writers_stop_notifying_while_the_relay_polls_and_resume_when_it_is_quiet(
        api, settings: Settings, redis_client, db: asyncpg.Connection):
    async def writers_notify() -> bool | None:
        return await db.fetchval("SELECT notify FROM outbox_wakeups WHERE stream = $1", settings.events_stream)

    await wait_for(lambda: _is(writers_notify(), True))
    for n in range(20):
        await api.post("/v1/conversations", json={"contact_id": f"burst_{n}"})
    await wait_for(lambda: _is(writers_notify(), False), timeout=2)  # busy: the relay polls
    await wait_for_entries(redis_client, settings.events_stream, 20)
    await wait_for(lambda: _is(writers_notify(), True), timeout=2)  # quiet: back to NOTIFY
    started = time.monotonic()
    await api.post("/v1/conversations", json={"contact_id": "after_the_burst"})
    await wait_for_entries(redis_client, settings.events_stream, 21, timeout=2)
    assert time.monotonic() - started < 0.5  # woken by the commit, not by the sweep


async def test_a_write_that_skipped_its_notify_is_still_published_by_the_sweep(
        api, settings: Settings, redis_client, db: asyncpg.Connection):
    await wait_for(lambda: _is(db.fetchval("SELECT notify FROM outbox_wakeups WHERE stream = $1",
                                           settings.events_stream), True))
    # The hand-over race: a writer saw notify=false, but the relay had just gone back to waiting.
    await db.execute("UPDATE outbox_wakeups SET notify = false WHERE stream = $1", settings.events_stream)
    await api.post("/v1/conversations", json={"contact_id": "unannounced"})
    await wait_for_entries(redis_client, settings.events_stream, 1, timeout=2.5)


async def _is(value, expected: bool) -> bool:
    return (await value) is expected


async def test_a_stopping_follower_publishes_its_last_rows_once_the_leader_lets_go(
        settings: Settings, account: Account, redis_client):
    """Every process stops at once; the leader cannot publish (its Redis link is cut) and gives up at
    its flush deadline. The follower must not leave its own committed events to the next start:
    it waits for the lock, and publishes them."""
    target = urlsplit(settings.redis_url)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    leader_app = create_app(msgspec.structs.replace(
        settings, redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_timeout=0.5, shutdown_timeout=2.0))
    follower_app = create_app(msgspec.structs.replace(settings, shutdown_timeout=10.0))
    leading, following = Lifespan(leader_app), Lifespan(follower_app)
    try:
        await leading.__aenter__()
        await wait_for(lambda: leader_app.state.relay.stats.is_leader)
        await following.__aenter__()
        await proxy.cut()
        async with client_for(follower_app, account.token) as api:
            created = await api.post("/v1/conversations", json={"contact_id": "last_words"})
            assert created.status_code == 201
        await asyncio.gather(leading.__aexit__(None, None, None), following.__aexit__(None, None, None))
    finally:
        await proxy.close()
    connection = await asyncpg.connect(settings.database_url)
    try:
        left = await connection.fetchval("SELECT count(*) FROM conversation_outbox WHERE stream = $1",
                                         settings.events_stream)
    finally:
        await connection.close()
    assert left == 0
    published = await entries(redis_client, settings.events_stream)
    assert created.json()["id"] in {fields["conversation_id"] for _, fields in published}
