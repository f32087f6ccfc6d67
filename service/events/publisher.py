"""Putting a batch of outbox rows on the stream, as durably as the Redis server allows.

One pipelined write carries every XADD of a batch (packed by hiredis in C: redis-py's asyncio
pipeline packs in Python, which cost as much as the rest of the relay together) and, where the
server has it, a WAITAOF: a batch counts as published only once Redis acknowledged it and, where
it can say so, persisted it. A batch that Redis did not confirm raises, so its rows stay in the
outbox and go out again (duplicates with the same id and sequence, which consumers skip).
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import redis.asyncio as aioredis
from hiredis import pack_command

from service.events.durability import Durability, Warner, detect_durability
from service.events.stats import RelayStats
from service.metrics import EVENTS_PUBLISHED, EVENTS_PUBLISHED_BY_PARTITION
from service.store import outbox

logger = logging.getLogger("service.events.publisher")

# How long WAITAOF may wait for the fsync(s). Locally (appendfsync everysec) the server fsyncs
# within ~0.1 s of a WAITAOF; a replica reports its fsynced offset about once a second, so a
# wait for replicas needs more than a second.
WAITAOF_TIMEOUT_MS = 1000
WAITAOF_REPLICAS_TIMEOUT_MS = 3000


class NotPersisted(RuntimeError):
    """Redis acknowledged a batch but did not confirm it reached its append-only file in time."""


class Publisher:
    """XADDs batches of outbox rows to one stream; learns the server's durability once per connection."""

    def __init__(self, redis: aioredis.Redis, stream: str, timeout: float, stats: RelayStats,
                 replicas: int = 0, partition: int = 0, warner: Warner | None = None) -> None:
        self._redis = redis
        self._stream = stream
        self._partition = str(partition)
        self._timeout = timeout
        self._stats = stats
        self._replicas = replicas  # EVENTS_WAITAOF_REPLICAS: replicas whose fsync WAITAOF waits for
        self._waitaof_ms = WAITAOF_REPLICAS_TIMEOUT_MS if replicas else WAITAOF_TIMEOUT_MS
        self._warner = warner or Warner()

    def retarget(self, redis: aioredis.Redis) -> None:
        """Publish through `redis` from now on (the node that serves the stream now): its durability is asked anew."""
        if redis is not self._redis:
            self._redis = redis
            self._stats.durability = None

    async def publish(self, rows: list[asyncpg.Record]) -> None:
        """Every row's entry on the stream, persisted as far as the server can say; raises otherwise."""
        durability = await self.durability()
        commands = [pack_command(("XADD", self._stream, "*", *outbox.entry_fields(row))) for row in rows]
        if durability is Durability.WAITAOF:
            commands.append(pack_command(("WAITAOF", 1, self._replicas, self._waitaof_ms)))
        seconds = self._timeout + self._waitaof_ms / 1000
        # WAITAOF may block for its whole wait: its reply is read within `seconds` too (the
        # connection's REDIS_TIMEOUT would cut it, and the batch would go out again).
        async with asyncio.timeout(seconds):
            replies = await self._pipeline(commands, seconds if durability is Durability.WAITAOF else None)
        if durability is Durability.WAITAOF:
            local, replicas = (int(count) for count in replies[-1])  # type: ignore[attr-defined]
            if local < 1 or replicas < self._replicas:
                raise NotPersisted(f"WAITAOF: the batch was fsynced locally {local} and on {replicas} of "
                                   f"{self._replicas} replica(s) in {self._waitaof_ms} ms")
        self._stats.events_published += len(rows)
        EVENTS_PUBLISHED.inc(len(rows))
        EVENTS_PUBLISHED_BY_PARTITION.labels(self._partition).inc(len(rows))
        self._stats.last_publish_at = time.time()
        if self._stats.redis_failing_since is not None:
            logger.info("Redis is back; the relay is publishing again")
            self._stats.redis_failing_since = None

    async def _pipeline(self, commands: list[bytes], last_reply_timeout: float | None = None) -> list[object]:
        """Send pre-packed commands in one write and read every reply, on one pooled connection; the
        last reply within `last_reply_timeout` seconds if given, else the connection's timeout.

        A connection left with unread replies (an error part-way) is disconnected, never reused.
        """
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(b"".join(commands), check_health=False)
            replies = [await connection.read_response() for _ in commands[:-1]]
            replies.append(await connection.read_response(timeout=last_reply_timeout))
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def durability(self, *, refresh: bool = False) -> Durability:
        """What the server offers, asked once per connection to Redis (after each failure, or on `refresh`)."""
        if refresh or self._stats.durability is None:
            self._stats.durability = durability = await detect_durability(self._redis)
            self._warner.note(durability)
        return self._stats.durability

    def note_failure(self, error: BaseException) -> None:
        """Redis failed: ask its durability again next time (it may come back configured differently)."""
        self._stats.durability = None
        if self._stats.redis_failing_since is None:
            self._stats.redis_failing_since = time.monotonic()
            logger.warning("the relay cannot publish to Redis (%s: %s); events wait in the outbox",
                           type(error).__name__, error)
