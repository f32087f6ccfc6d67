"""docs/api.md §6 across a Redis failover: nothing the relay deleted from the outbox is missing on the promoted replica.

A private AOF primary (compose's flags) with one AOF replica; the service publishes with
EVENTS_WAITAOF_REPLICAS=1, so WAITAOF confirms each batch on the replica's disk too before the
batch's outbox rows go. Under a write storm the primary is killed (SIGKILL), the service is
stopped (what it could not publish stays in the outbox), the replica is promoted (REPLICAOF NO
ONE), and then:

* every acknowledged write whose outbox row the relay deleted is on the promoted replica's stream;
* once the service runs again with REDIS_URL pointing at the promoted replica (a restart with the
  new URL: the service reads its configuration once; EVENTS_WAITAOF_REPLICAS=0 until the new
  primary has a replica of its own), every acknowledged write has its event there, first copies
  in per-conversation order, duplicates only with the same id and sequence.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from service.settings import Settings
from tests.backends import private_aof_server
from tests.conftest import new_account, wait_for
from tests.servers import RedisServer, ServiceProcess
from tests.write_storm import Storm, client_loop, outbox_is_empty, published_at_least

pytestmark = pytest.mark.slow

CLIENTS = 16
KILL_AFTER_WRITES = 800
STORM_LIMIT_SECONDS = 60


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    for name in ("primary", "replica"):
        (tmp_path / name).mkdir()
    primary = private_aof_server(tmp_path / "primary").start()
    replica = private_aof_server(tmp_path / "replica", extra=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.start()
    try:
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


async def stream_of(url: str, stream: str) -> list[dict[str, str]]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return [fields for _, fields in await client.xrange(stream, "-", "+")]
    finally:
        await client.aclose()


async def outbox_event_keys(db: asyncpg.Connection, stream: str) -> set[tuple[str, int]]:
    rows = await db.fetch("SELECT conversation_id, sequence FROM conversation_outbox WHERE stream = $1", stream)
    return {(row[0], int(row[1])) for row in rows}


async def test_after_the_replica_is_promoted_nothing_the_relay_deleted_from_the_outbox_is_missing(
        database_url: str, stream_name: str, db: asyncpg.Connection,
        primary_and_replica: tuple[RedisServer, RedisServer], tmp_path: Path, ci_report):
    primary, replica = primary_and_replica
    settings = Settings(database_url=database_url, events_stream=stream_name)
    account = await new_account(settings)
    env = {"DATABASE_URL": database_url, "REDIS_URL": primary.url, "EVENTS_STREAM": stream_name,
           "EVENTS_WAITAOF_REPLICAS": "1", "SHUTDOWN_TIMEOUT": "4"}
    service = ServiceProcess(env, log_path=tmp_path / "serve.log").start()
    storm, stop = Storm(), asyncio.Event()
    clients = [asyncio.create_task(client_loop(n, service.base_url, account.token, storm, stop))
               for n in range(CLIENTS)]
    try:
        # Mid-storm, once the relay has deleted (published and confirmed) a good part of the writes.
        await wait_for(lambda: published_at_least(db, stream_name, storm, KILL_AFTER_WRITES, KILL_AFTER_WRITES // 2),
                       timeout=STORM_LIMIT_SECONDS, interval=0.1)
        primary.kill()
        await asyncio.sleep(0.5)  # writes keep landing in the outbox meanwhile
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), timeout=15)
        service.signal(signal.SIGTERM)  # its last flush cannot reach Redis: the rest stays in the outbox
        await asyncio.to_thread(service.process.wait, 15)
    finally:
        stop.set()
        service.stop()
    assert storm.failures == []
    acknowledged = {(cid, version): body for cid, version, body in storm.acknowledged_writes}
    still_in_outbox = await outbox_event_keys(db, stream_name)
    deleted = {key for key in acknowledged if key not in still_in_outbox}

    promoted = aioredis.Redis.from_url(replica.url, decode_responses=True)
    try:
        await promoted.execute_command("REPLICAOF", "NO", "ONE")
        assert (await promoted.info("replication"))["role"] == "master"
    finally:
        await promoted.aclose()
    on_promoted = {(f["conversation_id"], int(f["sequence"])) for f in await stream_of(replica.url, stream_name)}
    missing_after_promotion = sorted(deleted - on_promoted)

    # The promoted server has no replica yet: with EVENTS_WAITAOF_REPLICAS=1 its WAITAOF could never
    # confirm, and the events would (safely) wait in the outbox until one is attached.
    restarted = ServiceProcess({**env, "REDIS_URL": replica.url, "EVENTS_WAITAOF_REPLICAS": "0"},
                               log_path=tmp_path / "restarted.log").start()
    try:
        await wait_for(lambda: outbox_is_empty(db, stream_name), timeout=20)
    finally:
        restarted.stop()
    entries = await stream_of(replica.url, stream_name)
    first_copies: dict[str, dict[str, str]] = {}
    for fields in entries:
        first_copies.setdefault(fields["id"], fields)
    published = {(f["conversation_id"], int(f["sequence"])): msgspec.json.decode(f["data"])
                 for f in first_copies.values()}
    lost = [key for key, body in acknowledged.items() if published.get(key) != body]
    same_id_other_sequence = [fields for fields in entries
                              if fields["sequence"] != first_copies[fields["id"]]["sequence"]]
    by_conversation: dict[str, list[int]] = {}
    for fields in first_copies.values():
        by_conversation.setdefault(fields["conversation_id"], []).append(int(fields["sequence"]))
    out_of_order = {cid: seqs for cid, seqs in by_conversation.items() if seqs != sorted(seqs)}
    ci_report(f"REDIS FAILOVER: {len(acknowledged)} writes acknowledged, {len(deleted)} deleted from the outbox "
              f"before the primary's SIGKILL, {len(missing_after_promotion)} of them missing on the promoted replica; "
              f"after the restart on it: {len(first_copies)} events found, {len(lost)} lost, "
              f"{len(entries) - len(first_copies)} duplicated")
    assert deleted, "the relay published nothing before the kill: the test proved nothing"
    assert missing_after_promotion == []
    assert lost == []
    assert same_id_other_sequence == [] and out_of_order == {}

