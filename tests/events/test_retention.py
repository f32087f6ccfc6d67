"""docs/api.md §6 retention: the relay trims to what consumer groups still need, never blindly."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from service.events.durability import Durability, detect_durability
from service.events.redis_client import create_redis
from service.events.retention import Retention
from service.events.stats import RelayStats
from service.settings import Settings
from tests.backends import RedisBackend, aof_server_binary
from tests.servers import RedisServer
from tests.stream_helpers import wait_for_entries


async def fill(redis: aioredis.Redis, stream: str, count: int) -> list[str]:
    pipe = redis.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {"id": f"evt_{n}", "n": str(n)})
    return list(await pipe.execute())


def retention_for(settings: Settings, redis: aioredis.Redis, events_maxlen: int = 1_000_000,
                  events_hard_maxlen: int = 10_000_000) -> Retention:
    return Retention(redis, settings.events_stream, events_maxlen, events_hard_maxlen, RelayStats())


async def test_without_a_consumer_group_the_stream_keeps_about_events_maxlen(settings: Settings, redis_client):
    await fill(redis_client, settings.events_stream, 1000)
    await retention_for(settings, redis_client, events_maxlen=300).trim()
    length = await redis_client.xlen(settings.events_stream)
    # `~`: whole stream nodes (100 entries each by default) are removed, so a little more stays.
    assert 300 <= length < 1000


async def test_entries_a_group_has_not_read_are_never_trimmed(settings: Settings, redis_client):
    await redis_client.xgroup_create(settings.events_stream, "slow", id="0", mkstream=True)
    await fill(redis_client, settings.events_stream, 1000)
    await retention_for(settings, redis_client, events_maxlen=10).trim()
    assert await redis_client.xlen(settings.events_stream) == 1000


async def test_entries_delivered_but_not_acknowledged_are_never_trimmed(settings: Settings, redis_client):
    stream = settings.events_stream
    ids = await fill(redis_client, stream, 1000)
    await redis_client.xgroup_create(stream, "workers", id="0")
    await redis_client.xreadgroup("workers", "w1", {stream: ">"}, count=1000)
    await redis_client.xack(stream, "workers", *ids[600:])  # the first 600 stay pending
    await retention_for(settings, redis_client, events_maxlen=10).trim()
    remaining = await redis_client.xrange(stream, "-", "+")
    assert remaining[0][0] == ids[0]


async def test_entries_every_group_acknowledged_are_trimmed(settings: Settings, redis_client):
    stream = settings.events_stream
    ids = await fill(redis_client, stream, 1000)
    for group in ("a", "b"):
        await redis_client.xgroup_create(stream, group, id="0")
    await redis_client.xreadgroup("a", "c", {stream: ">"}, count=1000)
    await redis_client.xack(stream, "a", *ids)
    await redis_client.xreadgroup("b", "c", {stream: ">"}, count=700)
    await redis_client.xack(stream, "b", *ids[:700])
    await retention_for(settings, redis_client, events_maxlen=10).trim()
    remaining = [entry_id for entry_id, _ in await redis_client.xrange(stream, "-", "+")]
    assert ids[700] in remaining  # group b has not read it yet
    assert len(remaining) < 1000  # what both groups acknowledged is gone (in whole nodes)
    assert remaining == ids[len(ids) - len(remaining):]


async def test_past_the_hard_maximum_unread_entries_are_dropped_logged_and_counted(
        settings: Settings, redis_client, caplog):
    stream = settings.events_stream
    await redis_client.xgroup_create(stream, "stalled", id="0", mkstream=True)
    ids = await fill(redis_client, stream, 500)
    stats = RelayStats()
    retention = Retention(redis_client, stream, 50, 200, stats)
    caplog.set_level(logging.ERROR, logger="service.events")
    await retention.trim()
    remaining = [entry_id for entry_id, _ in await redis_client.xrange(stream, "-", "+")]
    assert remaining == ids[300:]
    assert stats.unread_dropped == 300
    assert any("dropped 300 entries" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(("server_kind", "appendonly", "appendfsync", "expected"), [
    ("redis 7.0", False, "always", Durability.NONE),
    ("redis 7.0", True, "everysec", Durability.AOF_UNCONFIRMED),
    ("redis 7.0", True, "always", Durability.FSYNC_ALWAYS),
    ("aof server >= 7.2", False, "everysec", Durability.NONE),
    ("aof server >= 7.2", True, "everysec", Durability.WAITAOF),
    ("aof server >= 7.2", True, "always", Durability.WAITAOF),
    # WAITAOF never confirms a local fsync that the server never does.
    ("aof server >= 7.2", True, "no", Durability.AOF_UNCONFIRMED),
])
async def test_the_relay_detects_what_durability_the_redis_server_offers(
        database_url: str, tmp_path: Path, server_kind: str, appendonly: bool, appendfsync: str,
        expected: Durability):
    binary = "redis-server" if server_kind == "redis 7.0" else aof_server_binary()
    server = RedisServer(tmp_path, appendonly=appendonly, appendfsync=appendfsync, binary=binary).start()
    settings = Settings(database_url=database_url)
    client = create_redis(msgspec.structs.replace(settings, redis_url=server.url))
    try:
        assert await detect_durability(client) is expected
    finally:
        await client.aclose()
        server.stop()


async def test_the_relay_warns_once_when_redis_is_not_crash_safe_and_never_when_it_is(
        settings: Settings, api, caplog, redis_client, redis_backend: RedisBackend):
    for n in range(5):
        await api.post("/v1/conversations", json={"contact_id": f"c{n}"})
        await wait_for_entries(redis_client, settings.events_stream, n + 1)
    records = caplog.get_records("setup") + caplog.records  # the relay warns as it starts
    warnings = [r for r in records if "not crash-safe" in r.getMessage()]
    assert len(warnings) == (0 if redis_backend.keeps_published_events else 1)
