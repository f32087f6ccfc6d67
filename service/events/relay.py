"""The outbox relay of one partition: moves its committed events from the outbox to its stream key.

Invariants (docs/api.md, "Events"), per partition (service/partitions.py; with one partition, the
stream itself):

* One publisher per partition: the holder of the partition's lock (leadership.py), taken by the
  process whose coordinator (coordinator.py) chose it; a released leader finishes the batch in
  hand, then ends its session and with it the lock, so the next leader starts after its last move.
* A row leaves the outbox only after Redis acknowledged its XADD and, where the server can say
  so, persisted it (publisher.py, on the node that owns the partition's key); each published row
  is moved into the feed's event log by its own position, never up to a high-water mark
  (positions are not assigned in commit order).
* Per-conversation order: a conversation's outbox rows are inserted after its row lock, so
  their positions follow commit order, all of them in its one partition, and a batch is
  published in position order. A crash between XADD and the move publishes the batch again:
  duplicates with the same id and sequence.
* Redis down (or a cluster failing over): writes keep landing in the outbox; the leader backs off
  (bounded, exponential, logged once per outage), asks a cluster for its slot map again, and
  drains the backlog when Redis returns. PostgreSQL down: the session fails, the leader ends, and
  the coordinator takes the partition again once it can.
* Stop: the leader publishes what is committed within the flush deadline, then ends its session.
* EVENTS_REQUIRE_DURABLE: while the partition's Redis node cannot confirm that an entry survives
  its crash (durability.hold_reason), the leader publishes nothing, asks again every
  HOLD_RECHECK_SECONDS, and resumes by itself once it can; the events wait in the outbox.
* Strays: rows recorded under a partition at or above this relay's count (written by a process
  configured with more partitions, during a change of EVENTS_PARTITIONS) have no leader of their
  own; the leader of their partition modulo the count publishes them, at most once a
  STRAY_CHECK_SECONDS, so none is left behind.

Between batches the pacer decides when to fetch again (pacing.py); retention runs at most once
a TRIM_INTERVAL_SECONDS, the first one an interval after taking the partition (retention.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import asyncpg

from service.events.backoff import Backoff
from service.events.durability import Warner, hold_reason
from service.events.leadership import close_session, open_session
from service.events.pacing import Pacer
from service.events.publisher import NotPersisted, Publisher
from service.events.redis_client import REDIS_FAILURES, StreamNodes
from service.events.retention import Retention
from service.events.stats import RelayStats
from service.settings import Settings
from service.store import event_log, outbox

logger = logging.getLogger("service.events.relay")

BATCH_SIZE = 500
TRIM_INTERVAL_SECONDS = 1.0
HOLD_RECHECK_SECONDS = 1.0
STRAY_CHECK_SECONDS = 1.0


class DatabaseTimeout(RuntimeError):
    """A relay statement outlasted DB_STATEMENT_TIMEOUT: its session is in doubt and ends."""


@contextlib.contextmanager
def _timeouts_as_database_failures() -> Iterator[None]:
    """asyncpg's statement timeout raises TimeoutError, an OSError like a Redis connection's failures:
    re-raised as DatabaseTimeout, it ends the leader's session instead of reading as Redis failing
    (which would publish the batch again)."""
    try:
        yield
    except TimeoutError as error:
        raise DatabaseTimeout("a relay statement outlasted DB_STATEMENT_TIMEOUT") from error


class PartitionLeader:
    """Partition `partition`'s leader in this process: `take()` its lock, then `start()` publishing."""

    def __init__(self, settings: Settings, partition: int, key: str, nodes: StreamNodes, stats: RelayStats,
                 warner: Warner) -> None:
        self.partition = partition
        self.key = key
        self.stats = stats
        self.failure: BaseException | None = None  # why the session ended, if it failed
        self._settings = settings
        self._stream = settings.events_stream
        self._partitions = settings.events_partitions
        self._nodes = nodes
        self._warner = warner
        self._publisher: Publisher | None = None
        self._retention: Retention | None = None
        self._pacer = Pacer(self._stream, partition)
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._released = False
        self._stopping = False
        self._flush_deadline = 0.0
        self._holding = False
        self._last_trim = 0.0
        self._last_stray_check = 0.0

    # ------------------------------------------------------------------------------ lifecycle

    async def take(self) -> bool:
        """Open a session and take the partition's lock; False (and the session closed) if another holds it."""
        connection = await open_session(self._settings, self._pacer.on_notify)
        try:
            if not await outbox.try_lock_stream(connection, self.key):
                await close_session(connection, graceful=True)
                return False
            await self._pacer.start_listening(connection)
        except BaseException:
            await close_session(connection, graceful=False)
            raise
        self._connection = connection
        self.stats.is_leader = True
        # Ask Redis afresh (docs/api.md §6.3): the partition's figures outlive a leadership, and what
        # an earlier one found may no longer hold (a server reconfigured without any failure).
        self.stats.durability = None
        # Leadership often begins as writes arrive (a process starting): the first batches go out before
        # the first retention pass, as they did with one leader per stream.
        self._last_trim = time.monotonic()
        logger.info("this process now publishes stream %s", self.key)
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.partition}")

    @property
    def released(self) -> bool:
        return self._released

    @property
    def done(self) -> bool:
        return self._task is None or self._task.done()

    def release(self) -> None:
        """Hand the partition back: finish the batch in hand, then end the session."""
        self._released = True
        self._pacer.woken.set()

    def stop(self, flush_deadline: float) -> None:
        """Publish what is committed until the outbox's partition is drained or `flush_deadline` passes."""
        self._stopping = True
        self._flush_deadline = flush_deadline
        self._pacer.woken.set()

    async def wait(self, seconds: float) -> None:
        """Until the leader has ended its session; cancelled after `seconds`."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=max(seconds, 0.0))
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._end_session(graceful=True)

    async def _run(self) -> None:
        try:
            await self._lead(self._connection)
        except Exception as error:  # the session failed (PostgreSQL), or something unforeseen
            self.failure = error
            await self._end_session(graceful=False)
            return
        await self._end_session(graceful=True)

    async def _end_session(self, *, graceful: bool) -> None:
        connection, self._connection = self._connection, None
        self.stats.is_leader = False
        await close_session(connection, graceful=graceful)

    def _flushing_time_left(self) -> bool:
        return time.monotonic() < self._flush_deadline

    async def _sleep(self, seconds: float) -> None:
        """A backoff pause; while stopping, never past the flush deadline."""
        if self._stopping:
            seconds = min(seconds, max(0.0, self._flush_deadline - time.monotonic()))
        await asyncio.sleep(seconds)

    # ------------------------------------------------------------------------- publishing

    def hold_reason(self) -> str | None:
        return hold_reason(self.stats.durability, require_durable=self._settings.events_require_durable,
                           replicas=self._settings.events_waitaof_replicas)

    async def _route(self) -> Publisher:
        """The publisher, through the node that serves the partition's key now."""
        client = await self._nodes.client_for(self.key)
        if self._publisher is None or self._retention is None:
            self._publisher = Publisher(client, self.key, self._settings.redis_timeout, self.stats,
                                        self._settings.events_waitaof_replicas, self.partition, self._warner)
            self._retention = Retention(client, self.key, self._settings.events_maxlen,
                                        self._settings.events_hard_maxlen, self.stats)
        else:
            self._publisher.retarget(client)
            self._retention.retarget(client)
        return self._publisher

    async def _lead(self, connection: asyncpg.Connection) -> None:
        """Publish batch after batch until released, or stopped and drained (or out of flush time)."""
        redis_backoff = Backoff()
        while not (self._released and not self._stopping):
            self._pacer.before_fetch()
            try:
                publisher = await self._route()
                if await self._must_hold(publisher):
                    if self._stopping:
                        return  # they wait in the outbox for a leader whose Redis is crash-safe
                    await self._sleep(HOLD_RECHECK_SECONDS)
                    continue
                await self._publish_strays(connection, publisher)
                published = await self._publish_batch(connection, publisher)
            except (*REDIS_FAILURES, NotPersisted) as error:
                if self._publisher is not None:
                    self._publisher.note_failure(error)
                with contextlib.suppress(*REDIS_FAILURES):
                    await self._nodes.refresh()  # a cluster may have moved the slot (failover)
                if self._stopping and not self._flushing_time_left():
                    return
                await self._sleep(redis_backoff.next_delay())
                continue
            redis_backoff.reset()
            await self._maybe_trim()
            if published == BATCH_SIZE:
                continue  # more are waiting
            if self._stopping:
                return  # the partition is drained
            await self._pacer.after_batch(connection, published)

    async def _must_hold(self, publisher: Publisher) -> bool:
        """Whether EVENTS_REQUIRE_DURABLE keeps events in the outbox now (Redis is asked again while it does)."""
        await publisher.durability(refresh=self._holding)
        reason = self.hold_reason()
        if (reason is not None) != self._holding:
            self._holding = reason is not None
            if reason is not None:
                logger.warning("events of %s stay in the outbox: %s", self.key, reason)
            else:
                logger.info("Redis is crash-safe now (%s): publishing %s", self.stats.durability.value, self.key)
        return self._holding

    async def _publish_batch(self, connection: asyncpg.Connection, publisher: Publisher) -> int:
        with _timeouts_as_database_failures():
            rows = await outbox.fetch_batch(connection, self._stream, self.partition, BATCH_SIZE)
        if not rows:
            return 0
        await publisher.publish(rows)
        await self._retire(connection, rows)
        return len(rows)

    async def _retire(self, connection: asyncpg.Connection, rows: list[asyncpg.Record]) -> None:
        with _timeouts_as_database_failures():
            await event_log.retire_published(connection, self._stream, [outbox.position_of(row) for row in rows])

    async def _publish_strays(self, connection: asyncpg.Connection, publisher: Publisher) -> None:
        """Rows of a larger partition count whose partition is this one modulo ours (at most once a second)."""
        now = time.monotonic()
        if now - self._last_stray_check < STRAY_CHECK_SECONDS and not self._stopping:
            return
        self._last_stray_check = now
        while True:
            with _timeouts_as_database_failures():
                rows = await outbox.fetch_strays(connection, self._stream, self._partitions, self.partition,
                                                 BATCH_SIZE)
            if not rows:
                return
            await publisher.publish(rows)
            await self._retire(connection, rows)
            if len(rows) < BATCH_SIZE:
                return

    async def _maybe_trim(self) -> None:
        now = time.monotonic()
        if now - self._last_trim < TRIM_INTERVAL_SECONDS or self._retention is None:
            return
        self._last_trim = now
        try:
            async with asyncio.timeout(self._settings.redis_timeout * 2):
                await self._retention.trim()
        except REDIS_FAILURES as error:  # a TimeoutError is an OSError
            if self._publisher is not None:
                self._publisher.note_failure(error)
