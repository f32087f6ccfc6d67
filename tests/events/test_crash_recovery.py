"""docs/api.md §6 across a crash: SIGKILL in the middle of a write storm loses no acknowledged write or event.

A `serve` process (one worker) takes creates and updates from many concurrent clients; once a few
hundred have been acknowledged, it is killed with SIGKILL, and so is its Redis where that Redis
keeps what it acknowledged, as when their host dies: a private AOF server (`appendfsync
everysec`, the relay confirming each batch with WAITAOF) or a private Redis 7.0 with
`appendfsync always`. On the `none` backend (no persistence) only the service is killed: a
crash of that Redis loses the stream, which is that mode's documented caveat. Both are started
again. Then:

* every conversation a 201 named is in PostgreSQL, and each holds what the last acknowledged
  update said, or what the one update in flight at the kill would have made of it (a write
  whose response never arrived may or may not have committed);
* the stream, deduplicated by event id, has an event for every acknowledged write (its
  `sequence` is the response's ETag, its `data` the response body); per conversation the
  first copies' sequences run 1, 2, 3, ... up to the stored version without a gap (so every
  committed write, acknowledged or not, got its event), and the last one's data is the stored row.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis

from service.settings import Settings
from tests.backends import RedisBackend
from tests.conftest import Account, new_account, wait_for
from tests.http_helpers import CONVERSATION_FIELDS
from tests.servers import RedisServer, ServiceProcess
from tests.write_storm import Storm, applied, client_loop, outbox_is_empty

pytestmark = pytest.mark.slow

CLIENTS = 24
KILL_AFTER_WRITES = 1500
STORM_LIMIT_SECONDS = 60


@pytest.fixture
def private_redis(tmp_path: Path, redis_backend: RedisBackend) -> Iterator[RedisServer | None]:
    """A server of the backend's kind to kill with the service, if that kind survives its crash."""
    if not redis_backend.keeps_published_events:
        yield None
        return
    directory = tmp_path / "redis"
    directory.mkdir()
    server = redis_backend.private(directory).start()
    yield server
    server.stop()


@pytest.fixture
def fsync_always_redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis-always"
    directory.mkdir()
    server = RedisServer(directory, appendonly=True, appendfsync="always").start()
    yield server
    server.stop()


async def test_a_sigkilled_service_and_redis_lose_no_acknowledged_write_and_no_event(
        settings: Settings, account: Account, db: asyncpg.Connection, private_redis: RedisServer | None,
        redis_backend: RedisBackend, tmp_path: Path, ci_report):
    await storm_then_crash(settings, account, db, private_redis, f"{redis_backend.durability} backend", tmp_path,
                           ci_report)


async def test_a_sigkilled_service_and_fsync_always_redis_lose_no_acknowledged_write_and_no_event(
        database_url: str, stream_name: str, db: asyncpg.Connection, fsync_always_redis: RedisServer,
        tmp_path: Path, ci_report):
    settings = Settings(database_url=database_url, redis_url=fsync_always_redis.url, events_stream=stream_name)
    account = await new_account(settings)
    await storm_then_crash(settings, account, db, fsync_always_redis, "fsync-always Redis 7.0", tmp_path, ci_report)


async def storm_then_crash(settings: Settings, account: Account, db: asyncpg.Connection,
                           redis_server: RedisServer | None, what: str, tmp_path: Path, ci_report) -> None:
    """The storm, the SIGKILL of the service (and of `redis_server`, if given), the restart and the checks."""
    stream = settings.events_stream
    redis_url = redis_server.url if redis_server is not None else settings.redis_url
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": redis_url, "EVENTS_STREAM": stream}
    service = ServiceProcess(env, log_path=tmp_path / "serve.log").start()  # --workers 1
    storm, stop = Storm(), asyncio.Event()
    clients = [asyncio.create_task(client_loop(n, service.base_url, account.token, storm, stop))
               for n in range(CLIENTS)]
    try:
        await wait_for(lambda: len(storm.acknowledged_writes) >= KILL_AFTER_WRITES or all(c.done() for c in clients),
                       timeout=STORM_LIMIT_SECONDS)
        service.signal(signal.SIGKILL)  # the whole process group, mid-storm
        await asyncio.to_thread(service.process.wait, 10)
        if redis_server is not None:
            redis_server.kill()  # its host went down with it
        killed_at = time.monotonic()
        backlog_at_kill = await db.fetchval("SELECT count(*) FROM conversation_outbox WHERE stream = $1", stream)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), timeout=15)
    finally:
        stop.set()
        service.stop()
    assert storm.failures == []
    assert storm.dropped > 0  # the kill really hit requests in flight
    in_flight_updates = sum(t.in_flight is not None for t in storm.tracked.values())

    if redis_server is not None:
        redis_server.start()  # the same directory: it loads its append-only file
    restarted = ServiceProcess(env, log_path=tmp_path / "restarted.log").start()
    try:
        await wait_for(lambda: outbox_is_empty(db, stream), timeout=20)
        drained_in = time.monotonic() - killed_at
        rows = {row["id"]: row for row in await db.fetch(
            "SELECT * FROM conversations WHERE account_id = $1", account.id)}
        stream_reader = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            stream_entries = list(await stream_reader.xrange(stream, "-", "+"))
        finally:
            await stream_reader.aclose()
    finally:
        restarted.stop()

    # PostgreSQL: every acknowledged create and the last acknowledged (or in-flight) update of each.
    missing = [cid for cid in storm.tracked if cid not in rows]
    assert missing == []
    unaccounted = []
    for conversation_id, tracked in storm.tracked.items():
        row = rows[conversation_id]
        stored = {name: row[name] for name in CONVERSATION_FIELDS}
        if row["version"] == tracked.version:
            expected = tracked.acknowledged
        elif row["version"] == tracked.version + 1 and tracked.in_flight is not None:
            expected = applied(tracked.acknowledged, tracked.in_flight)
        else:
            expected = None
        if stored != expected:
            unaccounted.append((conversation_id, row["version"], tracked.version, stored, expected))
    assert unaccounted == [], unaccounted[:3]

    # The stream: first copies in per-conversation order, contiguous, ending at the stored row.
    first_copies: dict[str, dict[str, str]] = {}
    for _, fields in stream_entries:
        first_copies.setdefault(fields["id"], fields)
    duplicates = len(stream_entries) - len(first_copies)
    by_conversation: dict[str, list[dict[str, str]]] = {}
    for fields in first_copies.values():
        by_conversation.setdefault(fields["conversation_id"], []).append(fields)
    published = {(f["conversation_id"], int(f["sequence"])): msgspec.json.decode(f["data"])
                 for f in first_copies.values()}
    lost = [(cid, version) for cid, version, body in storm.acknowledged_writes
            if published.get((cid, version)) != body]
    ci_report(f"CRASH ({what}): {len(storm.acknowledged_writes)} writes acknowledged, "
              f"{len(first_copies)} events found ({len(stream_entries)} entries), {len(lost)} lost, {duplicates} "
              f"duplicated; {storm.dropped} requests cut, {in_flight_updates} updates in flight; outbox backlog at "
              f"the kill {backlog_at_kill}; drained {drained_in:.2f} s after the kill")
    assert lost == [], lost[:5]
    out_of_order = {cid: [int(f["sequence"]) for f in events] for cid, events in by_conversation.items()
                    if [int(f["sequence"]) for f in events] != list(range(1, len(events) + 1))}
    assert out_of_order == {}, list(out_of_order.items())[:3]
    assert set(by_conversation) == set(rows)
    disagreeing = [cid for cid, row in rows.items()
                   if (int(by_conversation[cid][-1]["sequence"]), msgspec.json.decode(by_conversation[cid][-1]["data"]))
                   != (row["version"], {name: row[name] for name in CONVERSATION_FIELDS})]
    assert disagreeing == []
