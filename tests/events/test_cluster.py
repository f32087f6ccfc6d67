"""docs/api.md §6 on a real Redis Cluster (REDIS_CLUSTER=true): every partition on its key, single-key
commands only; and a master's `kill -9` during a write storm, after which the relay carries on.

The clusters are redis-server 7.0 nodes on private loopback ports (tests/servers.py LocalCluster),
without persistence: durability `none`. A replica is fed asynchronously, so when its master dies it
may lack the last entries the master acknowledged; the relay had already deleted their outbox rows,
so those events are lost (docs/api.md §6.3: at most what the master acknowledged in the last second
before it died, on that master's partitions). The failover test counts them and prints the counts.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service.events.consumer import TailOptions, tail
from service.http.app import create_app
from service.partitions import partition_of, stream_key, stream_keys
from service.settings import Settings
from tests.asgi import Lifespan, client_for
from tests.conftest import Backends, migrated_database, new_account, wait_for
from tests.servers import LocalCluster, ServiceProcess
from tests.write_storm import Storm, client_loop, outbox_is_empty, published_at_least

pytestmark = pytest.mark.slow

PARTITIONS = 6
CLIENTS = 8
KILL_AFTER_WRITES = 600
STORM_AFTER_FAILOVER_SECONDS = 2.0
# What an asynchronous replica may lack when its master dies (docs/api.md §6.3).
REPLICA_LAG_BOUND_SECONDS = 1.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "cluster", masters=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


async def cluster_entries(url: str, keys: list[str]) -> dict[str, list[dict[str, str]]]:
    client = RedisCluster.from_url(url, decode_responses=True)
    try:
        return {key: [fields for _, fields in await client.xrange(key, "-", "+")] for key in keys}
    finally:
        await client.aclose()


async def test_every_partition_is_published_to_its_key_on_the_cluster_and_read_back_by_events_tail(
        cluster: LocalCluster, database_url: str, stream_name: str, caplog):
    settings = Settings(database_url=database_url, redis_url=cluster.url, redis_cluster=True,
                        events_stream=stream_name, events_partitions=PARTITIONS, db_pool_size=4, shutdown_timeout=4.0)
    account = await new_account(settings)
    keys = stream_keys(stream_name, PARTITIONS)
    masters = cluster.masters()
    # Two partitions on each of the three masters: the tags spread them over the slot ranges.
    per_master = [sum(key_slot(key.encode()) in range(first, last + 1) for key in keys)
                  for first, last in masters.values()]
    assert per_master == [2, 2, 2]
    async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
        ids = [(await api.post("/v1/conversations", json={"contact_id": f"c{n}"})).json()["id"] for n in range(30)]
        for conversation_id in ids[:10]:
            assert (await api.put(f"/v1/conversations/{conversation_id}", json={"is_pinned": True})).status_code == 200

        async def all_published() -> dict[str, list[dict[str, str]]] | None:
            found = await cluster_entries(cluster.url, keys)
            return found if sum(map(len, found.values())) >= 40 else None

        found = await wait_for(all_published, timeout=15)
        metrics = (await api.get("/metrics")).text
        ready = (await api.get("/ready")).json()
    where = {(f["conversation_id"], f["sequence"]): key for key, entries in found.items() for f in entries}
    assert len(where) == 40
    assert all(key == stream_key(stream_name, partition_of(cid, PARTITIONS), PARTITIONS)
               for (cid, _), key in where.items())
    assert "conversations_stream_length 40.0" in metrics
    assert ready["redis"] == "ok" and ready["relay_partitions"] == list(range(PARTITIONS))
    assert not [r for r in caplog.records if "CROSSSLOT" in r.getMessage()]
    out = io.StringIO()
    await asyncio.wait_for(tail(settings, TailOptions(group="cluster-tail", from_start=True, count=40), out), 20)
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted((e["conversation_id"], str(e["sequence"])) for e in printed) == sorted(where)


@pytest.fixture
async def storm_database(backend_urls: Backends) -> AsyncIterator[str]:
    """A database of its own: the storm's thousands of conversations stay out of the run's shared one."""
    async with migrated_database(backend_urls, "cluster_storm") as url:
        yield url


async def test_after_a_master_is_killed_mid_storm_the_relay_carries_on_and_loses_at_most_the_replicas_lag(
        cluster_with_replicas: LocalCluster, storm_database: str, stream_name: str, tmp_path: Path, ci_report):
    cluster = cluster_with_replicas
    database_url = storm_database
    db = await asyncpg.connect(database_url)
    try:
        await _storm_and_failover(cluster, database_url, stream_name, db, tmp_path, ci_report)
    finally:
        await db.close()


async def _storm_and_failover(cluster: LocalCluster, database_url: str, stream_name: str, db: asyncpg.Connection,
                              tmp_path: Path, ci_report) -> None:
    settings = Settings(database_url=database_url, events_stream=stream_name)
    account = await new_account(settings)
    keys = stream_keys(stream_name, PARTITIONS)
    env = {"DATABASE_URL": database_url, "REDIS_URL": cluster.url, "REDIS_CLUSTER": "true",
           "EVENTS_STREAM": stream_name, "EVENTS_PARTITIONS": str(PARTITIONS), "SHUTDOWN_TIMEOUT": "4"}
    service = ServiceProcess(env, log_path=tmp_path / "serve.log").start()
    victim_port = next(port for port, (first, last) in cluster.masters().items()
                       if key_slot(keys[0].encode()) in range(first, last + 1))
    victim_keys = {key for key in keys if key_slot(key.encode()) in range(*_inclusive(cluster.masters()[victim_port]))}
    batches: list[tuple[float, int]] = []  # (when, the event log's last batch number then)

    watcher_connection = await asyncpg.connect(database_url)

    async def watch_batches() -> None:
        while True:
            last = await watcher_connection.fetchval("SELECT last_value FROM event_log_batch_seq")
            batches.append((time.monotonic(), last))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_batches())
    storm, stop = Storm(), asyncio.Event()
    clients = [asyncio.create_task(client_loop(n, service.base_url, account.token, storm, stop))
               for n in range(CLIENTS)]
    try:
        await wait_for(lambda: published_at_least(db, stream_name, storm, KILL_AFTER_WRITES, KILL_AFTER_WRITES // 2),
                       timeout=60, interval=0.1)
        cluster.node(victim_port).kill()  # kill -9
        killed_at = time.monotonic()
        await asyncio.to_thread(_wait_for_failover, cluster, victim_port)
        failed_over_in = time.monotonic() - killed_at
        acknowledged_before_failover = len(storm.acknowledged_writes)
        await asyncio.sleep(STORM_AFTER_FAILOVER_SECONDS)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), timeout=15)
        await wait_for(lambda: outbox_is_empty(db, stream_name), timeout=30, interval=0.1)
        drained_in = time.monotonic() - killed_at
    finally:
        stop.set()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await watcher_connection.close()
        service.stop()
    assert storm.failures == []
    found = await cluster_entries(cluster.url, keys)
    first_copies: dict[tuple[str, int], dict[str, str]] = {}
    for entries in found.values():
        for fields in entries:
            first_copies.setdefault((fields["conversation_id"], int(fields["sequence"])), fields)
    duplicates = sum(map(len, found.values())) - len(first_copies)
    lost = [(cid, version) for cid, version, body in storm.acknowledged_writes
            if (cid, version) not in first_copies
            or msgspec.json.decode(first_copies[(cid, version)]["data"]) != body]
    lost_batches = [await db.fetchval("SELECT batch FROM event_log WHERE conversation_id = $1 AND sequence = $2",
                                      cid, version) for cid, version in lost]
    last_batch_a_second_before = max((batch for when, batch in batches
                                      if when <= killed_at - REPLICA_LAG_BOUND_SECONDS), default=0)
    after_failover = storm.acknowledged_writes[acknowledged_before_failover:]
    ci_report(f"CLUSTER FAILOVER (3 masters + 3 replicas, no persistence, {PARTITIONS} partitions): "
              f"{len(storm.acknowledged_writes)} writes acknowledged ({len(after_failover)} after the failover), "
              f"{len(first_copies)} events found, {len(lost)} lost, {duplicates} duplicated; the replica was "
              f"promoted {failed_over_in:.2f} s after the master's kill -9, the outbox drained "
              f"{drained_in:.2f} s after it")
    assert after_failover, "no write was acknowledged after the failover: the test proved nothing"
    assert all(stream_key(stream_name, partition_of(cid, PARTITIONS), PARTITIONS) in victim_keys
               for cid, _ in lost), "an event of a partition on a surviving master was lost"
    assert all(batch is not None and batch > last_batch_a_second_before for batch in lost_batches), (
        "an event published more than a second before the kill was lost")
    assert not any(key in lost for key in {(cid, version) for cid, version, _ in after_failover})


def _inclusive(slots: tuple[int, int]) -> tuple[int, int]:
    return slots[0], slots[1] + 1


def _wait_for_failover(cluster: LocalCluster, dead_port: int) -> None:
    """Until the dead master's replica serves its slots and every surviving node says the cluster is ok."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        masters = cluster.masters()
        if dead_port not in masters and len(masters) == 3 and cluster.is_ok():
            return
        time.sleep(0.1)
    raise AssertionError("the cluster did not fail over within 30 s")

