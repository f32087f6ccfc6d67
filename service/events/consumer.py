"""`python -m service events tail`: the reference consumer of the event stream.

It joins a consumer group (created with XGROUP CREATE ... MKSTREAM if missing), first finishes
what this consumer name left pending before a restart, then reads new entries. Each event is
printed as one JSON line and only then acknowledged (at least once). Every so often it claims
entries that other consumers left pending too long (XAUTOCLAIM, walked until its cursor comes
back to 0-0), logs as lost any ids XAUTOCLAIM reports deleted (trimmed while pending), and
moves an entry delivered more than --max-deliveries times to `<stream>:dead`, acknowledging it,
so one poison entry cannot stall the group. Never touches PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import TextIO

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.events.redis_client import create_redis
from service.model import ConversationEvent, decode_entry
from service.settings import Settings

logger = logging.getLogger("service.events.consumer")

BLOCK_MS = 2000
READ_COUNT = 100
CLAIM_EVERY_SECONDS = 5.0
_encode = msgspec.json.Encoder().encode


class TailOptions(msgspec.Struct, kw_only=True):
    group: str = "events-tail"
    consumer: str | None = None
    from_start: bool = False
    max_deliveries: int = 5
    claim_idle_ms: int = 60_000
    count: int | None = None  # stop after this many printed events (None: run until cancelled)


class TailedEvent(ConversationEvent, kw_only=True):
    """A printed line: the event's fields, decoded, and the id of the stream entry it came in."""

    stream_id: str


class Tail:
    """One consumer of one group; `run()` prints events until `count` is reached or it is cancelled."""

    def __init__(self, redis: aioredis.Redis, stream: str, options: TailOptions, out: TextIO) -> None:
        self.redis = redis
        self.stream = stream
        self.dead_letter_stream = stream + ":dead"
        self.options = options
        self.consumer = options.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.out = out
        self.printed = 0
        self.dead_lettered = 0
        self.lost: list[str] = []

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.options.group,
                                           id="0" if self.options.from_start else "$", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _done(self) -> bool:
        return self.options.count is not None and self.printed >= self.options.count

    async def run(self) -> None:
        await self.ensure_group()
        await self._read("0")  # what this consumer name had pending before a restart
        last_claim = 0.0
        while not self._done():
            if time.monotonic() - last_claim >= CLAIM_EVERY_SECONDS:
                await self.claim_stale()
                last_claim = time.monotonic()
            if not self._done():
                await self._read(">", block=BLOCK_MS)

    async def _read(self, start: str, block: int | None = None) -> None:
        reply = await self.redis.xreadgroup(self.options.group, self.consumer, {self.stream: start},
                                            count=READ_COUNT, block=block)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                if fields is None:  # pending, but trimmed from the stream
                    await self._lost([entry_id])
                    continue
                # Entries re-read from our own pending list count as delivered again.
                await self._handle(entry_id, fields, deliveries=1 if start == ">" else await self._deliveries(entry_id))
                if self._done():
                    return

    async def claim_stale(self) -> None:
        """Take over entries idle on any consumer for --claim-idle-ms (XAUTOCLAIM, to 0-0)."""
        cursor = "0-0"
        while True:
            reply = await self.redis.xautoclaim(self.stream, self.options.group, self.consumer,
                                                min_idle_time=self.options.claim_idle_ms, start_id=cursor,
                                                count=READ_COUNT)
            cursor, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                await self._lost(deleted)
            for entry_id, fields in entries:
                await self._handle(entry_id, fields, deliveries=await self._deliveries(entry_id))
                if self._done():
                    return
            if cursor == "0-0":
                return

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self.redis.xpending_range(self.stream, self.options.group, min=entry_id, max=entry_id,
                                                  count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _lost(self, entry_ids: list[str]) -> None:
        for entry_id in entry_ids:
            logger.warning("entry %s of %s was pending in group %s but is gone from the stream: lost",
                           entry_id, self.stream, self.options.group)
        self.lost.extend(entry_ids)

    async def _handle(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        if deliveries > self.options.max_deliveries:
            await self._dead_letter(entry_id, fields, deliveries)
            return
        try:
            event = decode_entry(fields)
        except ValueError as error:
            # Left pending: it will be claimed again, and dead-lettered once it has been
            # delivered --max-deliveries times.
            logger.error("entry %s is not a valid event (%s); leaving it pending", entry_id, error)
            return
        line = TailedEvent(**msgspec.structs.asdict(event), stream_id=entry_id)
        self.out.write(_encode(line).decode() + "\n")
        self.out.flush()
        await self.redis.xack(self.stream, self.options.group, entry_id)
        self.printed += 1

    async def _dead_letter(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_letter_stream, {**fields, "dead_letter_of": entry_id, "group": self.options.group,
                                            "deliveries": str(deliveries)})
        pipe.xack(self.stream, self.options.group, entry_id)
        await pipe.execute()
        self.dead_lettered += 1
        logger.error("entry %s was delivered %d times; moved to %s", entry_id, deliveries, self.dead_letter_stream)


async def tail(settings: Settings, options: TailOptions, out: TextIO | None = None) -> int:
    """Run `events tail` until --count events are printed, or SIGTERM / SIGINT arrives."""
    # The socket timeout must outlast the blocking read (redis-py would time it out otherwise).
    redis = create_redis(settings, timeout=BLOCK_MS / 1000 + settings.redis_timeout)
    reader = asyncio.create_task(Tail(redis, settings.events_stream, options, out or sys.stdout).run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # As PID 1 in a container there is no default SIGTERM action: stop on it ourselves.
        loop.add_signal_handler(signum, reader.cancel)
    try:
        await reader
    except asyncio.CancelledError:
        pass  # stopped by a signal: what was printed was acknowledged, the rest stays pending
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await redis.aclose()
    return 0
