"""When the relay leader fetches its next batch: poll while busy, wait for NOTIFY once quiet.

Each write's statement sends NOTIFY on commit, and the leader LISTENs on its session; because
notifications are lost across reconnects, it also sweeps at least once a second. Under load it
polls instead: once a batch has found events, it fetches again every POLL_SECONDS (so each round
trip carries more events), and tells writers to skip their NOTIFY, whose commit-time lock
serialises every notifying commit (measured: a quarter of the write throughput). After ~0.1 s
without events it asks writers to notify again and lets the loop fetch once more before it
waits, so what committed meanwhile is not left for the sweep; a write whose statement outlasted
that hand-over (its snapshot saw notify=false, its commit came after that last fetch) is picked
up by the sweep, within a second.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from service.store import outbox

POLL_SECONDS = 0.010
QUIET_POLLS_BEFORE_LISTENING = 10  # ~0.1 s without an event: back to waiting for NOTIFY
SWEEP_SECONDS = 1.0


async def wait_for(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class Pacer:
    """The leader's rhythm between batches, for one partition of a stream."""

    def __init__(self, stream: str, partition: int = 0) -> None:
        self._stream = stream
        self._partition = partition
        self.woken = asyncio.Event()  # set by a NOTIFY, or by a stop
        self._polling = False
        self._quiet_polls = 0

    def on_notify(self, *_: object) -> None:
        self.woken.set()

    async def start_listening(self, connection: asyncpg.Connection) -> None:
        """On taking leadership: writers notify, and the loop waits for them."""
        self._polling = False
        await outbox.set_writers_notify(connection, self._stream, self._partition, True)

    def before_fetch(self) -> None:
        """Cleared before the batch query, so a NOTIFY for a row the query misses still wakes us."""
        self.woken.clear()

    async def after_batch(self, connection: asyncpg.Connection, published: int) -> None:
        """Between batches: poll while busy, wait for NOTIFY (or the sweep) once quiet."""
        if published:
            self._quiet_polls = 0
            if not self._polling:
                self._polling = True
                await outbox.set_writers_notify(connection, self._stream, self._partition, False)
            await asyncio.sleep(POLL_SECONDS)
            return
        if self._polling:
            self._quiet_polls += 1
            if self._quiet_polls < QUIET_POLLS_BEFORE_LISTENING:
                await asyncio.sleep(POLL_SECONDS)
                return
            self._polling = False
            await outbox.set_writers_notify(connection, self._stream, self._partition, True)
            return  # fetch once more before waiting
        await wait_for(self.woken, SWEEP_SECONDS)
