"""The outbox relay: moves committed events from `conversation_outbox` to the Redis stream.

Invariants (API.md §6):

* One publisher per stream. Every process runs a relay; only the holder of a session-level
  advisory lock (keyed by the stream name) publishes. The lock lives on a dedicated connection
  from RELAY_DATABASE_URL, never a pooled one (the pool's reset and release would drop it), with
  server-side TCP keepalives so that PostgreSQL ends the session, and frees the lock, when the
  leader's host or network dies; followers try the lock every second.
* A row is deleted only after Redis acknowledged its XADD and, where the server can say so,
  persisted it (WAITAOF, or `appendfsync always`). No high-water mark is kept: outbox positions
  are not assigned in commit order, so each published row is deleted by its own position.
* Per-conversation order: a conversation's outbox rows are inserted after its row lock, so
  their positions follow commit order, and a batch is published in position order. A crash
  between XADD and DELETE publishes the batch again: duplicates with the same id and sequence.
* The batch query runs on the lock connection, so a dead connection stops the batch before
  anything is published, and the same query is the connection's keep-alive probe.
* Woken by the commit: each write's statement sends NOTIFY, and the relay LISTENs on its
  connection; because notifications are lost across reconnects, it also sweeps at least once a
  second. Under load it switches to polling instead: once a batch has found events, it fetches
  again every POLL_SECONDS (so each round trip carries more events), and sets
  `outbox_wakeups.notify` to false so that writers skip their NOTIFY, whose commit-time lock
  serialises every notifying commit (measured: a quarter of the write throughput). After
  ~0.1 s without events it sets the flag back and fetches once more before waiting, so what
  committed meanwhile is not left for the sweep; a write whose statement outlasted that
  hand-over (its snapshot saw notify=false, its commit came after that last fetch) is picked up
  by the sweep, within a second.
* Redis down: writes keep landing in the outbox; the relay backs off (bounded, exponential,
  logged once per outage) and drains the backlog when Redis returns. PostgreSQL down: the same.
* Retention: XTRIM MINID to the oldest entry some consumer group still needs; with no group,
  the newest EVENTS_MAXLEN; past EVENTS_HARD_MAXLEN, unread entries are dropped, logged and
  counted (the memory guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
from hiredis import pack_command
from redis.exceptions import RedisError

from service.db import is_unavailable
from service.events import STREAM_FIELDS, PreviousAttributes
from service.idempotency import DELETE_EXPIRED as DELETE_EXPIRED_IDEMPOTENCY_KEYS
from service.metrics import EVENTS_PUBLISHED, UNREAD_DROPPED
from service.queries import OUTBOX_CHANNEL, OUTBOX_DATA_COLUMNS, OUTBOX_PREVIOUS_COLUMNS
from service.redis_client import Durability, detect_durability
from service.settings import Settings
from service.wire import Conversation, encode_json

logger = logging.getLogger("service.relay")

BATCH_SIZE = 500
POLL_SECONDS = 0.010
QUIET_POLLS_BEFORE_LISTENING = 10  # ~0.1 s without an event: back to waiting for NOTIFY
SWEEP_SECONDS = 1.0
FOLLOWER_POLL_SECONDS = 1.0
TRIM_INTERVAL_SECONDS = 1.0
PURGE_INTERVAL_SECONDS = 60.0
WAITAOF_TIMEOUT_MS = 1000
BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 5.0
# Server-side keepalives on the lock connection: a silent peer is declared dead after
# idle + interval * count = 5 + 2 * 3 = 11 s, and unacknowledged data after 10 s, well inside
# the 30 s takeover promise for a dead host or network.
KEEPALIVE_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}

TRY_LEADERSHIP = "SELECT pg_try_advisory_lock(hashtextextended('conversations-relay:' || $1, 0))"
# The envelope in STREAM_FIELDS order (after `position`), the JSON of rows written before the
# column layout, then the conversation's columns and the previous values (schema.sql).
SELECT_OUTBOX_BATCH = f"""
SELECT position, event_id, type, account_id, conversation_id, occurred_at, sequence, schema_version,
       data, previous_attributes, {", ".join(OUTBOX_DATA_COLUMNS)}, {", ".join(OUTBOX_PREVIOUS_COLUMNS)}
FROM conversation_outbox WHERE stream = $1 ORDER BY position LIMIT $2
"""
_ENVELOPE_FIELDS = STREAM_FIELDS[:7]  # id .. schema_version
_ENVELOPE = slice(1, 1 + len(_ENVELOPE_FIELDS))
_TYPE, _CONVERSATION_ID, _DATA, _PREVIOUS_ATTRIBUTES = 2, 4, 8, 9
_CONVERSATION = slice(10, 10 + len(OUTBOX_DATA_COLUMNS))
_PREVIOUS = slice(_CONVERSATION.stop, _CONVERSATION.stop + len(OUTBOX_PREVIOUS_COLUMNS))
SET_WRITERS_NOTIFY = ("INSERT INTO outbox_wakeups (stream, notify) VALUES ($1, $2) "
                      "ON CONFLICT (stream) DO UPDATE SET notify = EXCLUDED.notify")
DELETE_PUBLISHED = "DELETE FROM conversation_outbox WHERE stream = $1 AND position = ANY($2::bigint[])"
SELECT_BACKLOG = ("SELECT count(*), min(occurred_at) FROM conversation_outbox WHERE stream = $1")


class NotPersisted(RuntimeError):
    """Redis acknowledged a batch but did not confirm it reached its append-only file in time."""


@dataclass
class RelayStats:
    """What the relay has done since the process started (read by /metrics and /ready)."""

    events_published: int = 0
    unread_dropped: int = 0
    is_leader: bool = False
    durability: Durability | None = None
    last_publish_at: float | None = None
    redis_failing_since: float | None = None
    database_failing_since: float | None = None
    stream_length: int | None = None
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (lag, pending)


def _successor(stream_id: str) -> str:
    millis, _, sequence = stream_id.partition("-")
    return f"{millis}-{int(sequence or 0) + 1}"


def _id_key(stream_id: str) -> tuple[int, int]:
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)


def _xadd_args(row: asyncpg.Record) -> list[str | bytes]:
    """The entry's fields in STREAM_FIELDS order, every value a string or bytes.

    `data` is the conversation encoded by the HTTP response's own encoder, so its bytes are the
    response body's; `previous_attributes` (updates only) holds the old value of each
    updatable field that differs, in field order.
    """
    args: list[str | bytes] = []
    for name, value in zip(_ENVELOPE_FIELDS, row[_ENVELOPE], strict=True):
        args += (name, value if isinstance(value, str) else str(value))
    data, previous_attributes = row[_DATA], row[_PREVIOUS_ATTRIBUTES]
    if data is None:
        conversation = Conversation(row[_CONVERSATION_ID], *row[_CONVERSATION])
        data = encode_json(conversation)
        if row[_TYPE] == "conversation.updated":
            changed = {name: old for name, old in zip(PreviousAttributes.__struct_fields__, row[_PREVIOUS], strict=True)
                       if old != getattr(conversation, name)}
            previous_attributes = encode_json(PreviousAttributes(**changed))
    args += ("data", data)
    if previous_attributes is not None:
        args += ("previous_attributes", previous_attributes)
    return args


class _Backoff:
    """Bounded exponential delays, reset by the first success."""

    def __init__(self) -> None:
        self._next = BACKOFF_FIRST_SECONDS

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, BACKOFF_MAX_SECONDS)
        return delay

    def reset(self) -> None:
        self._next = BACKOFF_FIRST_SECONDS


class Relay:
    """One process's relay task: leader election, wake-ups, publishing, trimming, flushing."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self._settings = settings
        self._stream = settings.events_stream
        self._redis = redis
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._flush_deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._last_trim = 0.0
        self._last_purge = 0.0
        self._polling = False  # see _pace
        self._quiet_polls = 0
        self._durability_warned = False

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, flush_seconds: float) -> None:
        """Publish what is committed (as leader, or by taking over), then release the lock.

        Called after the server stopped taking requests, so every write that will ever come
        from this process is already in the outbox.
        """
        if self._task is None:
            return
        self._stopping = True
        self._flush_deadline = time.monotonic() + flush_seconds
        self._stop_requested.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=flush_seconds + 1.0)
        except TimeoutError:
            logger.warning("relay did not finish flushing within %.1f s; the rest stays in the outbox",
                           flush_seconds)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_connection()

    def wake(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------------------------- loop

    async def _run(self) -> None:
        backoff = _Backoff()
        while not self._stopping or (self.stats.is_leader and time.monotonic() < self._flush_deadline):
            try:
                await self._serve()
                return
            except Exception as error:
                await self._close_connection(graceful=False)
                if self.stats.database_failing_since is None:
                    backoff.reset()  # a new outage: start again from the shortest delay
                if not (is_unavailable(error) or isinstance(error, asyncpg.PostgresError)):
                    logger.exception("relay failed unexpectedly; restarting it")
                elif self.stats.database_failing_since is None:
                    logger.warning("relay lost PostgreSQL (%s); retrying with backoff", type(error).__name__)
                if self.stats.database_failing_since is None:
                    self.stats.database_failing_since = time.monotonic()
                if self._stopping:
                    return
                await self._sleep(backoff.next_delay())

    async def _serve(self) -> None:
        connection = await asyncpg.connect(
            self._settings.relay_url,
            timeout=self._settings.db_connect_timeout,
            command_timeout=self._settings.db_statement_timeout,
            # The relay's only writes are DELETEs of published rows. Should one be lost in a crash,
            # those rows are published again (duplicates, which API.md §6 allows), so its commits
            # need not wait for the WAL flush.
            server_settings={"application_name": "conversations-relay", "synchronous_commit": "off",
                             **KEEPALIVE_SETTINGS},
        )
        self._connection = connection
        await connection.add_listener(OUTBOX_CHANNEL, self._on_notify)
        if self.stats.database_failing_since is not None:
            logger.info("relay reconnected to PostgreSQL")
            self.stats.database_failing_since = None
        redis_backoff = _Backoff()
        while True:
            if not self.stats.is_leader and not await self._take_leadership(connection):
                if self._stopping:
                    return
                # Followers ignore NOTIFY: only a stop, or the poll interval, ends the wait.
                await self._wait_for(self._stop_requested, FOLLOWER_POLL_SECONDS)
                continue
            # Cleared before the batch query, so a NOTIFY for a row the query misses still wakes us.
            self._wake.clear()
            try:
                published = await self._publish_batch(connection)
            except (RedisError, OSError, NotPersisted) as error:
                self._note_redis_failure(error)
                if self._stopping and time.monotonic() >= self._flush_deadline:
                    return
                await self._sleep(redis_backoff.next_delay())
                continue
            redis_backoff.reset()
            await self._maybe_trim()
            await self._maybe_purge_idempotency_keys(connection)
            if published == BATCH_SIZE:
                continue  # more are waiting
            if self._stopping:
                return  # the outbox is drained
            await self._pace(connection, published)

    async def _take_leadership(self, connection: asyncpg.Connection) -> bool:
        if not await connection.fetchval(TRY_LEADERSHIP, self._stream):
            return False
        self.stats.is_leader = True
        self._polling = False
        await connection.execute(SET_WRITERS_NOTIFY, self._stream, True)
        logger.info("this process now publishes stream %s", self._stream)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            # Learn (and warn about) Redis's durability now; if Redis is down, the first batch asks.
            async with asyncio.timeout(self._settings.redis_timeout):
                await self._durability()
        return True

    async def _pace(self, connection: asyncpg.Connection, published: int) -> None:
        """Between batches: poll while busy, wait for NOTIFY (or the sweep) once quiet.

        A batch that found events puts the relay in polling mode (writers told to skip NOTIFY)
        and the next fetch follows after POLL_SECONDS, so more events ride on each round trip.
        After QUIET_POLLS_BEFORE_LISTENING empty polls it asks writers to notify again and
        returns without waiting, so the loop fetches once more before it waits: what committed
        while writers were not notifying is not left for the sweep.
        """
        if published:
            self._quiet_polls = 0
            if not self._polling:
                self._polling = True
                await connection.execute(SET_WRITERS_NOTIFY, self._stream, False)
            await asyncio.sleep(POLL_SECONDS)
            return
        if self._polling:
            self._quiet_polls += 1
            if self._quiet_polls < QUIET_POLLS_BEFORE_LISTENING:
                await asyncio.sleep(POLL_SECONDS)
                return
            self._polling = False
            await connection.execute(SET_WRITERS_NOTIFY, self._stream, True)
            return
        await self._wait_for(self._wake, SWEEP_SECONDS)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    @staticmethod
    async def _wait_for(event: asyncio.Event, seconds: float) -> None:
        """Until `event` is set or `seconds` pass (for the leader: a NOTIFY, or the sweep)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    async def _sleep(self, seconds: float) -> None:
        """A backoff pause that a stop does not cut short only if we still have rows to flush."""
        if self._stopping:
            seconds = min(seconds, max(0.0, self._flush_deadline - time.monotonic()))
        await asyncio.sleep(seconds)

    async def _close_connection(self, *, graceful: bool = True) -> None:
        """End the session (and with it the advisory lock); after a failure, without waiting."""
        connection, self._connection = self._connection, None
        self.stats.is_leader = False
        if connection is None or connection.is_closed():
            return
        if not graceful:
            connection.terminate()
            return
        try:
            await asyncio.wait_for(connection.close(), timeout=2.0)
        except Exception:  # a dead socket cannot close cleanly
            connection.terminate()

    # ----------------------------------------------------------------------------- publishing

    async def _publish_batch(self, connection: asyncpg.Connection) -> int:
        rows = await connection.fetch(SELECT_OUTBOX_BATCH, self._stream, BATCH_SIZE)
        if not rows:
            return 0
        durability = await self._durability()
        commands = [pack_command(("XADD", self._stream, "*", *_xadd_args(row))) for row in rows]
        if durability is Durability.WAITAOF:
            commands.append(pack_command(("WAITAOF", 1, 0, WAITAOF_TIMEOUT_MS)))
        async with asyncio.timeout(self._settings.redis_timeout + WAITAOF_TIMEOUT_MS / 1000):
            replies = await self._pipeline(commands)
        if durability is Durability.WAITAOF and int(replies[-1][0]) < 1:
            raise NotPersisted("WAITAOF: the batch was not fsynced to the append-only file in time")
        await connection.execute(DELETE_PUBLISHED, self._stream, [row["position"] for row in rows])
        self.stats.events_published += len(rows)
        EVENTS_PUBLISHED.inc(len(rows))
        self.stats.last_publish_at = time.time()
        if self.stats.redis_failing_since is not None:
            logger.info("Redis is back; the relay is publishing again")
            self.stats.redis_failing_since = None
        return len(rows)

    async def _pipeline(self, commands: list[bytes]) -> list[object]:
        """Send pre-packed commands in one write and read every reply, on one pooled connection.

        hiredis packs the commands in C; redis-py's asyncio pipeline packs them in Python, which
        cost as much as the rest of the relay together. A connection left with unread replies
        (an error part-way) is disconnected, never reused.
        """
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(b"".join(commands), check_health=False)
            return [await connection.read_response() for _ in commands]
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _durability(self) -> Durability:
        """What the server offers, asked once per connection to Redis (and after each failure)."""
        if self.stats.durability is None:
            self.stats.durability = durability = await detect_durability(self._redis)
            if not durability.is_crash_safe and not self._durability_warned:
                self._durability_warned = True
                logger.warning(
                    "Redis durability is %r: published events are not crash-safe in Redis "
                    "(turn on appendonly, with Redis 7.2+ or appendfsync always)", durability.value)
        return self.stats.durability

    def _note_redis_failure(self, error: BaseException) -> None:
        self.stats.durability = None  # the server may come back configured differently
        if self.stats.redis_failing_since is None:
            self.stats.redis_failing_since = time.monotonic()
            logger.warning("the relay cannot publish to Redis (%s: %s); events wait in the outbox",
                           type(error).__name__, error)

    # ------------------------------------------------------------------------------- trimming

    async def _maybe_purge_idempotency_keys(self, connection: asyncpg.Connection) -> None:
        """Housekeeping the leader does: forget idempotency keys past their 24 hours, a batch a minute."""
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        await connection.execute(DELETE_EXPIRED_IDEMPOTENCY_KEYS)

    async def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim < TRIM_INTERVAL_SECONDS:
            return
        self._last_trim = now
        try:
            async with asyncio.timeout(self._settings.redis_timeout * 2):
                await self.trim()
        except (RedisError, OSError, TimeoutError) as error:
            self._note_redis_failure(error)

    async def trim(self) -> None:
        """Apply the retention rule of API.md §6 once."""
        stream = self._stream
        try:
            groups = await self._redis.xinfo_groups(stream)
        except RedisError as error:
            if "no such key" in str(error).lower():
                return
            raise
        floor: str | None = None
        lags: dict[str, tuple[int, int]] = {}
        for group in groups:
            candidates = [_successor(str(group["last-delivered-id"]))]
            if int(group["pending"]) > 0:
                summary = await self._redis.xpending(stream, group["name"])
                if summary.get("min"):
                    candidates.append(str(summary["min"]))
            oldest_needed = min(candidates, key=_id_key)
            floor = oldest_needed if floor is None else min(floor, oldest_needed, key=_id_key)
            lags[str(group["name"])] = (int(group.get("lag") or 0), int(group["pending"]))
        self.stats.groups = lags
        if floor is None:
            await self._redis.xtrim(stream, maxlen=self._settings.events_maxlen, approximate=True)
        else:
            await self._redis.xtrim(stream, minid=floor, approximate=True)
        length = await self._redis.xlen(stream)
        if length > self._settings.events_hard_maxlen:
            dropped = await self._redis.xtrim(stream, maxlen=self._settings.events_hard_maxlen, approximate=False)
            self.stats.unread_dropped += dropped
            UNREAD_DROPPED.inc(dropped)
            logger.error("stream %s exceeded EVENTS_HARD_MAXLEN (%d): dropped %d entries no consumer group "
                         "has acknowledged yet", stream, self._settings.events_hard_maxlen, dropped)
            length -= dropped
        self.stats.stream_length = length


async def outbox_backlog(connection: asyncpg.Connection | asyncpg.Pool, stream: str) -> tuple[int, int | None]:
    """(rows waiting to be published, occurred_at of the oldest) for `stream`."""
    row = await connection.fetchrow(SELECT_BACKLOG, stream)
    return int(row[0]), row[1]
