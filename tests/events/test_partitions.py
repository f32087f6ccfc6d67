"""docs/api.md §6 with EVENTS_PARTITIONS > 1: each conversation's events on its partition's key, in order;
one leader per partition, spread over the processes and taken over when one dies; strays of another
partition count published; the feed, /ready, /metrics and `events tail` across partitions.

Runs once per Redis backend (tests/events/conftest.py)."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from service.events.consumer import TailOptions, tail
from service.http.app import create_app
from service.partitions import partition_of, stream_key, stream_keys
from service.settings import Settings
from service.store import queries
from service.store.database import Transaction
from tests.asgi import Lifespan, client_for
from tests.conftest import Account, wait_for
from tests.servers import ServiceProcess

PARTITIONS = 4


@pytest.fixture
async def partitioned(settings: Settings) -> AsyncIterator[Settings]:
    """The test's settings with 4 partitions; their keys are deleted afterwards."""
    settings = msgspec.structs.replace(settings, events_partitions=PARTITIONS)
    yield settings
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        keys = stream_keys(settings.events_stream, PARTITIONS)
        await client.delete(*keys, *(key + ":dead" for key in keys))
    finally:
        await client.aclose()


async def entries_by_key(redis: aioredis.Redis, settings: Settings) -> dict[str, list[dict[str, str]]]:
    return {key: [fields for _, fields in await redis.xrange(key, "-", "+")]
            for key in stream_keys(settings.events_stream, settings.events_partitions)}


async def wait_for_events(redis: aioredis.Redis, settings: Settings, count: int, timeout: float = 10.0
                          ) -> dict[str, list[dict[str, str]]]:
    async def enough() -> dict[str, list[dict[str, str]]] | None:
        found = await entries_by_key(redis, settings)
        return found if sum(len(entries) for entries in found.values()) >= count else None

    return await wait_for(enough, timeout=timeout)


def led(*apps) -> list[list[int]]:
    return [app.state.relay.led_partitions for app in apps]


async def test_each_event_goes_to_its_conversations_partition_key_in_sequence_order(
        partitioned: Settings, account: Account, redis_client):
    async with Lifespan(app := create_app(partitioned)), client_for(app, account.token) as api:
        ids = [(await api.post("/v1/conversations", json={"contact_id": f"c{n}"})).json()["id"] for n in range(16)]
        for n in range(2):
            for conversation_id in ids:
                assert (await api.put(f"/v1/conversations/{conversation_id}",
                                      json={"last_active_at": 10 + n})).status_code == 200
        found = await wait_for_events(redis_client, partitioned, 48)
    misplaced = [(key, fields["conversation_id"]) for key, entries in found.items() for fields in entries
                 if key != stream_key(partitioned.events_stream, partition_of(fields["conversation_id"], PARTITIONS),
                                      PARTITIONS)]
    assert misplaced == []
    assert sum(1 for entries in found.values() if entries) > 1  # 16 conversations used several partitions
    sequences: dict[str, list[int]] = {}
    for entries in found.values():
        for fields in entries:
            sequences.setdefault(fields["conversation_id"], []).append(int(fields["sequence"]))
    assert sequences == {conversation_id: [1, 2, 3] for conversation_id in ids}


async def test_two_processes_lead_two_partitions_each_and_the_feed_holds_every_event_in_sequence(
        partitioned: Settings, account: Account, redis_client):
    first, second = create_app(partitioned), create_app(partitioned)
    async with Lifespan(first), Lifespan(second):
        # Each relay counts the live ones at its next survey, which may come after the partitions
        # settled (both may take two while one still counted itself alone): wait for both.
        await wait_for(lambda: sorted(map(len, led(first, second))) == [2, 2]
                       and first.state.relay.live_relays == second.state.relay.live_relays == 2, timeout=10)
        assert sorted(led(first, second)[0] + led(first, second)[1]) == list(range(PARTITIONS))
        async with client_for(first, account.token) as one, client_for(second, account.token) as two:
            ids = [(await (one if n % 2 else two).post("/v1/conversations", json={"group_id": f"g{n}"})).json()["id"]
                   for n in range(12)]
            await asyncio.gather(*(api.put(f"/v1/conversations/{cid}", json={"is_muted": True})
                                   for api, cid in zip([one, two] * 6, ids, strict=True)))
            await wait_for_events(redis_client, partitioned, 24)

            async def whole_feed() -> list[dict] | None:  # moved into the log just after their XADDs
                data = (await one.get("/v1/events", params={"limit": 100})).json()["data"]
                return data if len(data) >= 24 else None

            feed = await wait_for(whole_feed)
    assert len(feed) == 24
    oldest_first: dict[str, list[int]] = {}
    for event in reversed(feed):
        oldest_first.setdefault(event["conversation_id"], []).append(event["sequence"])
    assert oldest_first == {cid: [1, 2] for cid in ids}


async def test_a_killed_process_partitions_are_taken_over_within_5_seconds(
        partitioned: Settings, account: Account, redis_client, tmp_path: Path):
    env = {"DATABASE_URL": partitioned.database_url, "REDIS_URL": partitioned.redis_url,
           "EVENTS_STREAM": partitioned.events_stream, "EVENTS_PARTITIONS": str(PARTITIONS)}
    other = ServiceProcess(env, log_path=tmp_path / "other.log").start()
    try:
        async with Lifespan(app := create_app(partitioned)), client_for(app, account.token) as api:
            await wait_for(lambda: len(app.state.relay.led_partitions) == 2, timeout=10)
            await wait_for(lambda: app.state.relay.live_relays == 2, timeout=5)
            other.signal(signal.SIGKILL)
            await asyncio.to_thread(other.process.wait, 5)
            killed_at = time.monotonic()
            await wait_for(lambda: len(app.state.relay.led_partitions) == PARTITIONS, timeout=5)
            took_over = time.monotonic() - killed_at
            ids = [(await api.post("/v1/conversations", json={"contact_id": f"after_{n}"})).json()["id"]
                   for n in range(12)]
            found = await wait_for_events(redis_client, partitioned, 12, timeout=5)
            published_in = time.monotonic() - killed_at
    finally:
        other.stop()
    assert {fields["conversation_id"] for entries in found.values() for fields in entries} == set(ids)
    assert published_in < 5, f"took over in {took_over:.2f} s, published in {published_in:.2f} s"


async def test_rows_recorded_under_more_partitions_are_published_by_the_leader_of_their_partition_modulo_ours(
        partitioned: Settings, account: Account, redis_client, db: asyncpg.Connection):
    # A writer configured with 8 partitions, as during a change of EVENTS_PARTITIONS, next to relays with 4.
    written = [await queries.insert_conversation(Transaction(db), partitioned.events_stream, account.id,
                                                 f"wide_{n}", None, 8) for n in range(24)]
    recorded = {conversation.id: partition_of(conversation.id, 8) for conversation, _ in written}
    assert any(partition >= PARTITIONS for partition in recorded.values())
    async with Lifespan(create_app(partitioned)):
        found = await wait_for_events(redis_client, partitioned, 24, timeout=10)
    where = {fields["conversation_id"]: key for key, entries in found.items() for fields in entries}
    assert where == {cid: stream_key(partitioned.events_stream, partition % PARTITIONS, PARTITIONS)
                     for cid, partition in recorded.items()}


async def test_ready_and_metrics_report_every_partition(partitioned: Settings, account: Account, redis_client):
    async with Lifespan(app := create_app(partitioned)), client_for(app, account.token) as api:
        await wait_for(lambda: len(app.state.relay.led_partitions) == PARTITIONS)
        for n in range(8):
            await api.post("/v1/conversations", json={"contact_id": f"c{n}"})
        found = await wait_for_events(redis_client, partitioned, 8)

        async def drained() -> dict | None:  # the rows leave the outbox just after their XADDs
            body = (await api.get("/ready")).json()
            return body if body["outbox_backlog_by_partition"] == [0] * PARTITIONS else None

        ready = await wait_for(drained)
        metrics = (await api.get("/metrics")).text
    assert ready["relay_partitions"] == list(range(PARTITIONS))
    assert ready["relay_processes"] == 1
    for index, key in enumerate(stream_keys(partitioned.events_stream, PARTITIONS)):
        assert f'conversations_stream_partition_length{{partition="{index}"}} {float(len(found[key]))}' in metrics
        assert f'conversations_outbox_partition_backlog{{partition="{index}"}} 0.0' in metrics
    assert "conversations_relay_partitions_led 4.0" in metrics


async def test_events_tail_reads_every_partition_or_only_those_it_is_given(
        partitioned: Settings, account: Account, redis_client):
    async with Lifespan(app := create_app(partitioned)), client_for(app, account.token) as api:
        for n in range(12):
            await api.post("/v1/conversations", json={"contact_id": f"c{n}"})
        found = await wait_for_events(redis_client, partitioned, 12)
    keys = stream_keys(partitioned.events_stream, PARTITIONS)
    everything = io.StringIO()
    await asyncio.wait_for(tail(partitioned, TailOptions(group="all", from_start=True, count=12), everything), 20)
    printed = [json.loads(line) for line in everything.getvalue().splitlines()]
    assert sorted(event["id"] for event in printed) == sorted(f["id"] for entries in found.values() for f in entries)
    assert {event["partition"] for event in printed} == {index for index, key in enumerate(keys) if found[key]}
    first_two = len(found[keys[0]]) + len(found[keys[1]])
    subset = io.StringIO()
    await asyncio.wait_for(tail(partitioned, TailOptions(group="some", from_start=True, count=first_two,
                                                         partitions=[0, 1]), subset), 20)
    assert {json.loads(line)["partition"] for line in subset.getvalue().splitlines()} <= {0, 1}
    assert len(subset.getvalue().splitlines()) == first_two
    for key in keys[2:]:  # the subset never joined the other partitions' keys
        if found[key]:
            assert all(group["name"] != "some" for group in await redis_client.xinfo_groups(key))
