"""docs/api.md §6: `events tail`, the reference consumer (groups, acks, claims, dead letters)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

import redis
import redis.asyncio as aioredis

from service.events.consumer import Tail, TailOptions
from service.settings import Settings
from tests.servers import ROOT
from tests.stream_helpers import wait_for_entries


async def make_events(api, redis: aioredis.Redis, stream: str, count: int) -> list[tuple[str, dict[str, str]]]:
    for n in range(count):
        assert (await api.post("/v1/conversations", json={"contact_id": f"contact_{n}"})).status_code == 201
    return await wait_for_entries(redis, stream, count)


def tail(redis: aioredis.Redis, settings: Settings, out: io.StringIO, **options: object) -> Tail:
    return Tail(redis, settings.events_stream, TailOptions(**options), out)


async def test_tail_prints_one_json_object_per_event_and_acknowledges_it(api, settings: Settings, redis_client):
    produced = await make_events(api, redis_client, settings.events_stream, 3)
    out = io.StringIO()
    await tail(redis_client, settings, out, group="g", consumer="c", from_start=True, count=3).run()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    printed = [json.loads(line) for line in lines]
    assert [p["stream_id"] for p in printed] == [entry_id for entry_id, _ in produced]
    assert [p["id"] for p in printed] == [fields["id"] for _, fields in produced]
    assert all(p["type"] == "conversation.created" and p["sequence"] == 1 and isinstance(p["data"], dict)
               for p in printed)
    assert (await redis_client.xpending(settings.events_stream, "g"))["pending"] == 0


async def test_tail_creates_its_group_and_the_stream_when_missing(settings: Settings, redis_client):
    await tail(redis_client, settings, io.StringIO(), group="fresh").ensure_group()
    await tail(redis_client, settings, io.StringIO(), group="fresh").ensure_group()  # BUSYGROUP is fine
    groups = await redis_client.xinfo_groups(settings.events_stream)
    assert [g["name"] for g in groups] == ["fresh"]


async def test_a_new_group_starts_at_new_entries_unless_from_start(api, settings: Settings, redis_client):
    await make_events(api, redis_client, settings.events_stream, 2)
    late = tail(redis_client, settings, io.StringIO(), group="late", consumer="c")
    await late.ensure_group()
    await api.post("/v1/conversations", json={"contact_id": "after_the_group"})
    await wait_for_entries(redis_client, settings.events_stream, 3)
    out = io.StringIO()
    await tail(redis_client, settings, out, group="late", consumer="c", count=1).run()
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["data"]["contact_id"] == "after_the_group"


async def test_tail_claims_what_a_dead_consumer_left_pending(api, settings: Settings, redis_client):
    produced = await make_events(api, redis_client, settings.events_stream, 2)
    await redis_client.xgroup_create(settings.events_stream, "g", id="0")
    await redis_client.xreadgroup("g", "dead-consumer", {settings.events_stream: ">"}, count=10)
    out = io.StringIO()
    survivor = tail(redis_client, settings, out, group="g", consumer="survivor", claim_idle_ms=0)
    await survivor.claim_stale()
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == [f["id"] for _, f in produced]
    assert (await redis_client.xpending(settings.events_stream, "g"))["pending"] == 0


async def test_an_entry_delivered_more_than_max_deliveries_goes_to_the_dead_letter_stream(
        settings: Settings, redis_client, caplog):
    stream = settings.events_stream
    poison = await redis_client.xadd(stream, {"id": "evt_poison", "type": "conversation.created", "data": "{"})
    await redis_client.xgroup_create(stream, "g", id="0")
    consumer = tail(redis_client, settings, io.StringIO(), group="g", consumer="c", claim_idle_ms=0,
                    max_deliveries=2)
    caplog.set_level(logging.ERROR, logger="service.events.consumer")
    await consumer._read(">")  # first delivery: not a valid event, so left pending
    for _ in range(3):
        await consumer.claim_stale()  # each claim is one more delivery
    dead = await redis_client.xrange(stream + ":dead", "-", "+")
    assert len(dead) == 1
    assert dead[0][1]["dead_letter_of"] == poison and dead[0][1]["id"] == "evt_poison"
    assert int(dead[0][1]["deliveries"]) == 3
    assert (await redis_client.xpending(stream, "g"))["pending"] == 0
    assert consumer.dead_lettered == 1
    assert any("moved to" in record.getMessage() for record in caplog.records)


async def test_pending_entries_deleted_from_the_stream_are_logged_as_lost(api, settings: Settings, redis_client,
                                                                         caplog):
    produced = await make_events(api, redis_client, settings.events_stream, 2)
    await redis_client.xgroup_create(settings.events_stream, "g", id="0")
    await redis_client.xreadgroup("g", "dead-consumer", {settings.events_stream: ">"}, count=10)
    await redis_client.xdel(settings.events_stream, produced[0][0])
    caplog.set_level(logging.WARNING, logger="service.events.consumer")
    consumer = tail(redis_client, settings, io.StringIO(), group="g", consumer="c", claim_idle_ms=0)
    await consumer.claim_stale()
    assert consumer.lost == [produced[0][0]]
    assert any(produced[0][0] in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)


async def test_events_tail_command_prints_events_as_json_lines(api, settings: Settings, redis_client):
    await make_events(api, redis_client, settings.events_stream, 2)
    env = {**os.environ, "REDIS_URL": settings.redis_url, "EVENTS_STREAM": settings.events_stream,
           "DATABASE_URL": settings.database_url}
    result = subprocess.run(
        [sys.executable, "-m", "service", "events", "tail", "--from-start", "--count", "2", "--group", "cli"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["type"] == "conversation.created" for line in lines)


def test_events_tail_stops_cleanly_on_sigterm(settings: Settings):
    env = {**os.environ, "REDIS_URL": settings.redis_url, "EVENTS_STREAM": settings.events_stream}
    process = subprocess.Popen([sys.executable, "-m", "service", "events", "tail", "--group", "stoppable"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        probe = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        deadline = time.monotonic() + 10
        while not (probe.exists(settings.events_stream) and probe.xinfo_groups(settings.events_stream)):
            assert time.monotonic() < deadline, "events tail never created its group"
            time.sleep(0.05)
        probe.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
