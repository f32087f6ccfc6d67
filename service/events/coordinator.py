"""A process's relay: which partitions of the stream it leads, and its part in publishing when it stops.

Every process runs one. Its membership session counts it among the stream's live relays (a shared
advisory lock, leadership.py); once a FOLLOWER_POLL_SECONDS it asks PostgreSQL how many relays are
alive and which partitions nobody leads (one query on pg_locks), and then:

* it takes free partitions up to its fair share, ceil(partitions / live relays), each with a
  session and lock of its own (relay.py);
* it takes any partition that has stayed free for ORPHAN_SECONDS whatever its share (a dead
  process's membership may outlive its locks for a moment; nothing waits on the count);
* it hands back what it leads beyond its share (a process joined), so the newcomer takes it
  within a poll.

A process that dies frees its locks and its membership together: within a poll the others count
one relay fewer, and take its partitions within a second or two (5 s promised); a silent host's
sessions end by the keepalives, in about 11 s (30 s promised). With one partition this is today's
single leader: whoever holds the stream's lock publishes, the others try it every second.

Stop: after the server stopped taking requests, the partitions it leads publish what is
committed within the flush deadline, then end their sessions. A process does not leave its own
last events to the next start: every write of this process has committed by then, so each of
its rows is at or below the outbox's highest position; it waits until no row up to that mark is
left (their leaders published them), taking any partition that is let go (a leader that is
stopping too lets go at its own flush deadline) and publishing it itself, within its flush time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time

import asyncpg

from service.events.backoff import Backoff
from service.events.durability import Durability, Warner, detect_durability, hold_reason, weakest
from service.events.leadership import MEMBER_APPLICATION_NAME, close_session, open_session
from service.events.pacing import wait_for
from service.events.redis_client import REDIS_FAILURES, Client, StreamNodes
from service.events.relay import PartitionLeader
from service.events.stats import RelayStats
from service.partitions import stream_keys
from service.settings import Settings
from service.store import outbox
from service.store.database import is_unavailable

logger = logging.getLogger("service.events.relay")

FOLLOWER_POLL_SECONDS = 1.0
STOPPING_FOLLOWER_POLL_SECONDS = 0.05
ORPHAN_SECONDS = 2.0


class Relay:
    """One process's relay: its membership session, the partition leaders it runs, and their figures."""

    def __init__(self, settings: Settings, redis: Client) -> None:
        self._settings = settings
        self._stream = settings.events_stream
        self.keys = stream_keys(settings.events_stream, settings.events_partitions)
        self._nodes = StreamNodes(redis, settings.redis_timeout)
        self._warner = Warner()
        # Per partition, for the life of the process (a partition led, let go and led again adds up).
        self.partition_stats = [RelayStats() for _ in self.keys]
        self._leaders: dict[int, PartitionLeader] = {}
        self._process = RelayStats()  # the membership session's failures; a follower's view of durability
        self.live_relays: int | None = None
        self._free_since: dict[int, float] = {}
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._flush_deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None

    # ------------------------------------------------------------------------------ figures

    @property
    def led_partitions(self) -> list[int]:
        return [index for index, stats in enumerate(self.partition_stats) if stats.is_leader]

    @property
    def stats(self) -> RelayStats:
        """The process's figures, summed over its partitions (durability: the weakest of those it leads)."""
        parts = self.partition_stats
        led = [parts[index] for index in self.led_partitions]
        known = [stats.durability for stats in led if stats.durability is not None]
        lengths = [stats.stream_length for stats in led if stats.stream_length is not None]
        groups: dict[str, tuple[int, int]] = {}
        for stats in led:
            for name, (lag, pending) in stats.groups.items():
                total_lag, total_pending = groups.get(name, (0, 0))
                groups[name] = (total_lag + lag, total_pending + pending)
        failing = [stats.redis_failing_since for stats in led if stats.redis_failing_since is not None]
        published_at = [stats.last_publish_at for stats in parts if stats.last_publish_at is not None]
        return RelayStats(
            events_published=sum(stats.events_published for stats in parts),
            unread_dropped=sum(stats.unread_dropped for stats in parts),
            is_leader=bool(led),
            durability=weakest(known) if led else self._process.durability,
            last_publish_at=max(published_at, default=None),
            redis_failing_since=min(failing, default=None),
            database_failing_since=self._process.database_failing_since,
            stream_length=sum(lengths) if lengths else None,
            groups=groups,
        )

    def hold_reason(self) -> str | None:
        """Why events stay in the outbox although Redis answers (EVENTS_REQUIRE_DURABLE), or None."""
        return hold_reason(self.stats.durability, require_durable=self._settings.events_require_durable,
                           replicas=self._settings.events_waitaof_replicas)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, flush_seconds: float) -> None:
        """Publish what is committed (as leader, or by taking over), then end every session.

        Called after the server stopped taking requests, so every write that will ever come
        from this process is already in the outbox.
        """
        if self._task is None:
            return
        self._stopping = True
        self._flush_deadline = time.monotonic() + flush_seconds
        self._stop_requested.set()
        for leader in self._leaders.values():
            leader.stop(self._flush_deadline)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=flush_seconds + 1.0)
        except TimeoutError:
            logger.warning("relay did not finish flushing within %.1f s; the rest stays in the outbox",
                           flush_seconds)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for leader in list(self._leaders.values()):
            await leader.wait(self._flush_deadline + 1.0 - time.monotonic())
        self._leaders.clear()
        await self._end_membership(graceful=True)
        await self._nodes.aclose()

    def _flushing_time_left(self) -> bool:
        return time.monotonic() < self._flush_deadline

    async def _end_membership(self, *, graceful: bool) -> None:
        connection, self._connection = self._connection, None
        await close_session(connection, graceful=graceful)

    async def _run(self) -> None:
        """Coordinate on a membership session; after a failure, a new one with bounded backoff."""
        backoff = Backoff()
        while True:
            try:
                await self._coordinate()
                return
            except Exception as error:
                await self._end_membership(graceful=False)
                self._note_database_failure(error, backoff)
                if self._stopping and not self._flushing_time_left():
                    return
                await self._sleep(backoff.next_delay())

    def _note_database_failure(self, error: BaseException, backoff: Backoff | None = None) -> None:
        if self._process.database_failing_since is None and backoff is not None:
            backoff.reset()  # a new outage: start again from the shortest delay
        if not (is_unavailable(error) or isinstance(error, asyncpg.PostgresError)):
            logger.error("relay failed unexpectedly; restarting it", exc_info=error)
        elif self._process.database_failing_since is None:
            logger.warning("relay lost PostgreSQL (%s); retrying with backoff", type(error).__name__)
        if self._process.database_failing_since is None:
            self._process.database_failing_since = time.monotonic()

    async def _sleep(self, seconds: float) -> None:
        """A backoff pause; while stopping, never past the flush deadline."""
        if self._stopping:
            seconds = min(seconds, max(0.0, self._flush_deadline - time.monotonic()))
        await asyncio.sleep(seconds)

    # ------------------------------------------------------------------------- coordinating

    async def _coordinate(self) -> None:
        connection = self._connection = await open_session(self._settings, None, MEMBER_APPLICATION_NAME)
        await outbox.join_relays(connection, self._stream)
        if self._process.database_failing_since is not None:
            logger.info("relay reconnected to PostgreSQL")
            self._process.database_failing_since = None
        while not self._stopping:
            self._reap()
            live, free = await outbox.survey_relays(connection, self._stream, self.keys)
            self.live_relays = live
            await self._rebalance(live, free)
            if not self._leaders:
                await self._learn_durability()
            await wait_for(self._stop_requested, FOLLOWER_POLL_SECONDS)
        await self._flush(connection)

    def _reap(self) -> None:
        """Forget leaders whose session ended (released, or failed: then say why)."""
        for index, leader in list(self._leaders.items()):
            if leader.done:
                del self._leaders[index]
                if leader.failure is not None:
                    self._note_database_failure(leader.failure)

    async def _rebalance(self, live: int, free: list[int]) -> None:
        now = time.monotonic()
        self._free_since = {index: self._free_since.get(index, now) for index in free}
        active = [index for index, leader in self._leaders.items() if not leader.released]
        share = math.ceil(len(self.keys) / max(live, 1))
        if len(active) > share:
            for index in sorted(active)[share:]:
                logger.info("handing %s back: %d relays alive, this process's share is %d",
                            self.keys[index], live, share)
                self._leaders[index].release()
            return
        # Start from a place of our own, so that relays starting together try different partitions.
        start = os.getpid() % len(free) if free else 0
        for index in free[start:] + free[:start]:
            orphaned = now - self._free_since[index] >= ORPHAN_SECONDS
            if index in self._leaders or (len(active) >= share and not orphaned):
                continue
            if await self._take(index):
                active.append(index)

    async def _take(self, index: int) -> bool:
        leader = PartitionLeader(self._settings, index, self.keys[index], self._nodes, self.partition_stats[index],
                                 self._warner)
        if not await leader.take():
            return False
        if self._process.database_failing_since is not None:
            self._process.database_failing_since = None
        self._leaders[index] = leader
        if self._stopping:
            leader.stop(self._flush_deadline)
        leader.start()
        return True

    async def _learn_durability(self) -> None:
        """A follower asks Redis (the node of the first partition) at every poll, so /ready can say it."""
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(self._settings.redis_timeout):
                client = await self._nodes.client_for(self.keys[0])
                durability: Durability = await detect_durability(client)
                self._process.durability = durability
                self._warner.note(durability)

    async def _flush(self, connection: asyncpg.Connection) -> None:
        """Stopping: until nothing this process wrote is left, or the flush deadline passes."""
        mark = await outbox.fetch_last_position(connection, self._stream)
        drained: set[int] = set()  # partitions this flush took and published: none of ours is left in them
        while True:
            self._reap()
            if not self._leaders and (mark is None or not await outbox.has_rows_up_to(connection, self._stream, mark)):
                return  # nothing of ours is left to publish
            if not self._flushing_time_left():
                if mark is not None and await outbox.has_rows_up_to(connection, self._stream, mark):
                    logger.warning("stopping with events still in the outbox: the leader did not publish them and "
                                   "did not let go of the stream in time; the next relay to lead publishes them")
                return
            _, free = await outbox.survey_relays(connection, self._stream, self.keys)
            for index in free:
                if index not in self._leaders and index not in drained and await self._take(index):
                    drained.add(index)
            await asyncio.sleep(STOPPING_FOLLOWER_POLL_SECONDS)
