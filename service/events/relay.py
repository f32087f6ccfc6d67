"""The outbox relay: moves committed events from the outbox to the Redis stream.

Invariants (docs/api.md, "Events"):

* One publisher per stream: the holder of the stream's lock (leadership.py); the others try
  the lock every FOLLOWER_POLL_SECONDS.
* A row leaves the outbox only after Redis acknowledged its XADD and, where the server can say
  so, persisted it (publisher.py); each published row is moved into the feed's event log by its
  own position, never up to a high-water mark (positions are not assigned in commit order).
* Per-conversation order: a conversation's outbox rows are inserted after its row lock, so
  their positions follow commit order, and a batch is published in position order. A crash
  between XADD and the move publishes the batch again: duplicates with the same id and sequence.
* Redis down: writes keep landing in the outbox; the relay backs off (bounded, exponential,
  logged once per outage) and drains the backlog when Redis returns. PostgreSQL down: the same.
* Stop: after the server stopped taking requests, the leader (or a process that can take the
  lock) publishes what is committed within the flush deadline, then ends its session. A
  follower does not leave its own last events to the next start: every write of this process
  has committed by then, so each of its rows is at or below the outbox's highest position; the
  follower waits until no row up to that mark is left (the leader published them), or takes the
  lock when the leader lets it go (which a leader that is stopping too does at its own flush
  deadline) and publishes them itself, within its flush deadline.
* EVENTS_REQUIRE_DURABLE: while Redis cannot confirm that an entry survives its crash
  (durability.hold_reason), the leader publishes nothing, asks Redis again every
  HOLD_RECHECK_SECONDS, and resumes by itself once it can; the events wait in the outbox.

Between batches the pacer decides when to fetch again (pacing.py); retention runs at most once
a TRIM_INTERVAL_SECONDS (retention.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.events.durability import hold_reason
from service.events.leadership import close_session, open_session
from service.events.pacing import Pacer, wait_for
from service.events.publisher import NotPersisted, Publisher
from service.events.retention import Retention
from service.events.stats import RelayStats
from service.settings import Settings
from service.store import event_log, outbox
from service.store.database import is_unavailable

logger = logging.getLogger("service.events.relay")

BATCH_SIZE = 500
FOLLOWER_POLL_SECONDS = 1.0
STOPPING_FOLLOWER_POLL_SECONDS = 0.05
TRIM_INTERVAL_SECONDS = 1.0
BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 5.0
HOLD_RECHECK_SECONDS = 1.0


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
    """One process's relay task: its session, leadership of the stream, and the publish loop."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self._settings = settings
        self._stream = settings.events_stream
        self.stats = RelayStats()
        self._publisher = Publisher(redis, self._stream, settings.redis_timeout, self.stats,
                                    settings.events_waitaof_replicas)
        self._retention = Retention(redis, self._stream, settings.events_maxlen, settings.events_hard_maxlen,
                                    self.stats)
        self._pacer = Pacer(self._stream)
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._flush_deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._last_trim = 0.0
        self._holding = False

    # ------------------------------------------------------------------------------ lifecycle

    def hold_reason(self) -> str | None:
        """Why events stay in the outbox although Redis answers (EVENTS_REQUIRE_DURABLE), or None."""
        return hold_reason(self.stats.durability, require_durable=self._settings.events_require_durable,
                           replicas=self._settings.events_waitaof_replicas)

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
        self._pacer.woken.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=flush_seconds + 1.0)
        except TimeoutError:
            logger.warning("relay did not finish flushing within %.1f s; the rest stays in the outbox",
                           flush_seconds)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_session(graceful=True)

    def _flushing_time_left(self) -> bool:
        return time.monotonic() < self._flush_deadline

    async def _sleep(self, seconds: float) -> None:
        """A backoff pause; while stopping, never past the flush deadline."""
        if self._stopping:
            seconds = min(seconds, max(0.0, self._flush_deadline - time.monotonic()))
        await asyncio.sleep(seconds)

    async def _end_session(self, *, graceful: bool) -> None:
        connection, self._connection = self._connection, None
        self.stats.is_leader = False
        await close_session(connection, graceful=graceful)

    # ------------------------------------------------------------------------- the session

    async def _run(self) -> None:
        """Serve a session; after a failure, a new one with bounded backoff."""
        backoff = _Backoff()
        while not self._stopping or (self.stats.is_leader and self._flushing_time_left()):
            try:
                await self._serve()
                return
            except Exception as error:
                await self._end_session(graceful=False)
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
        """Follow until the lock is ours, then lead, on one session; returns once stopped."""
        connection = self._connection = await open_session(self._settings, self._pacer.on_notify)
        if self.stats.database_failing_since is not None:
            logger.info("relay reconnected to PostgreSQL")
            self.stats.database_failing_since = None
        stop_mark: int | None = None
        while not self.stats.is_leader:
            if await self._take_leadership(connection):
                break
            if self._stopping:
                if stop_mark is None:
                    stop_mark = await outbox.fetch_last_position(connection, self._stream)
                if stop_mark is None or not await outbox.has_rows_up_to(connection, self._stream, stop_mark):
                    return  # nothing of ours is left to publish
                if not self._flushing_time_left():
                    logger.warning("stopping with events still in the outbox: the leader did not publish them and "
                                   "did not let go of the stream in time; the next relay to lead publishes them")
                    return
                await asyncio.sleep(STOPPING_FOLLOWER_POLL_SECONDS)
                continue
            await self._learn_durability()
            # Followers ignore NOTIFY: only a stop, or the poll interval, ends the wait.
            await wait_for(self._stop_requested, FOLLOWER_POLL_SECONDS)
        await self._lead(connection)

    async def _take_leadership(self, connection: asyncpg.Connection) -> bool:
        if not await outbox.try_lock_stream(connection, self._stream):
            return False
        self.stats.is_leader = True
        await self._pacer.start_listening(connection)
        logger.info("this process now publishes stream %s", self._stream)
        await self._learn_durability()
        return True

    async def _learn_durability(self) -> None:
        """Ask (and warn about) Redis's durability now, so /ready can say it; if Redis is down, later.

        A follower asks at every poll (it holds no connection state that a failure would reset).
        """
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self._settings.redis_timeout):
                await self._publisher.durability(refresh=not self.stats.is_leader)

    # ------------------------------------------------------------------------- the leader

    async def _lead(self, connection: asyncpg.Connection) -> None:
        """Publish batch after batch until stopped and drained (or out of flush time)."""
        redis_backoff = _Backoff()
        while True:
            self._pacer.before_fetch()
            try:
                if await self._must_hold():
                    if self._stopping:
                        return  # they wait in the outbox for a leader whose Redis is crash-safe
                    await self._sleep(HOLD_RECHECK_SECONDS)
                    continue
                published = await self._publish_batch(connection)
            except (RedisError, OSError, NotPersisted) as error:
                self._publisher.note_failure(error)
                if self._stopping and not self._flushing_time_left():
                    return
                await self._sleep(redis_backoff.next_delay())
                continue
            redis_backoff.reset()
            await self._maybe_trim()
            if published == BATCH_SIZE:
                continue  # more are waiting
            if self._stopping:
                return  # the outbox is drained
            await self._pacer.after_batch(connection, published)

    async def _must_hold(self) -> bool:
        """Whether EVENTS_REQUIRE_DURABLE keeps events in the outbox now (Redis is asked again while it does)."""
        await self._publisher.durability(refresh=self._holding)
        reason = self.hold_reason()
        if (reason is not None) != self._holding:
            self._holding = reason is not None
            if reason is not None:
                logger.warning("events stay in the outbox: %s", reason)
            else:
                logger.info("Redis is crash-safe now (%s): publishing the outbox", self.stats.durability.value)
        return self._holding

    async def _publish_batch(self, connection: asyncpg.Connection) -> int:
        rows = await outbox.fetch_batch(connection, self._stream, BATCH_SIZE)
        if not rows:
            return 0
        await self._publisher.publish(rows)
        await event_log.retire_published(connection, self._stream, [outbox.position_of(row) for row in rows])
        return len(rows)

    async def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim < TRIM_INTERVAL_SECONDS:
            return
        self._last_trim = now
        try:
            async with asyncio.timeout(self._settings.redis_timeout * 2):
                await self._retention.trim()
        except (RedisError, OSError, TimeoutError) as error:
            self._publisher.note_failure(error)
