"""`python -m service events tail`: the reference consumer of the event stream.

It joins a consumer group (created with XGROUP CREATE ... MKSTREAM if missing), first finishes
what this consumer name left pending before a restart, then reads new entries. Each event is
printed as one JSON line and only then acknowledged (at least once). Every so often it claims
entries that other consumers left pending too long (XAUTOCLAIM, walked until its cursor comes
back to 0-0), logs as lost any ids XAUTOCLAIM reports deleted (trimmed while pending), and
moves an entry delivered more than --max-deliveries times to `<stream>:dead`, acknowledging it,
so one poison entry cannot stall the group. Never touches PostgreSQL.

With EVENTS_PARTITIONS > 1 it runs one such reader per partition's stream key (all of them, or
those --partitions names), each with the group of that name on its key, so a group can be spread
over processes that each take some partitions (`--partitions 0-7` here, `8-15` there); --count
then counts the events of all of them. Each partition's dead-letter stream is its key + `:dead`,
which shares the key's hash tag, so the move is one MULTI on one cluster slot; with a single
partition on a cluster (no hash tag) it is an XADD, then the XACK.
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
from redis.crc import key_slot
from redis.exceptions import ResponseError

from service.events.redis_client import StreamNodes, create_redis
from service.model import ConversationEvent, decode_entry
from service.partitions import dead_letter_key, stream_keys
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
    partitions: list[int] | None = None  # the partitions to read (None: every one)


class TailedEvent(ConversationEvent, kw_only=True):
    """A printed line: the event's fields, decoded, and the id of the stream entry it came in."""

    stream_id: str
    partition: int  # required, so that it is printed even when 0 (the Struct omits defaults)


class Tally:
    """Events printed by every reader of one `events tail`, against its --count."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        self.printed = 0

    def done(self) -> bool:
        return self.count is not None and self.printed >= self.count


class Tail:
    """One consumer of one group on one stream key; `run()` prints events until the count is reached or it
    is cancelled."""

    def __init__(self, redis: aioredis.Redis, stream: str, options: TailOptions, out: TextIO, *,
                 partition: int = 0, tally: Tally | None = None, atomic_dead_letter: bool = True) -> None:
        self.redis = redis
        self.stream = stream
        self.partition = partition
        self.dead_letter_stream = dead_letter_key(stream)
        self.options = options
        self.consumer = options.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.out = out
        self.tally = tally or Tally(options.count)
        self.dead_lettered = 0
        self.lost: list[str] = []
        self._atomic_dead_letter = atomic_dead_letter

    @property
    def printed(self) -> int:
        return self.tally.printed

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.options.group,
                                           id="0" if self.options.from_start else "$", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _done(self) -> bool:
        return self.tally.done()

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
        line = TailedEvent(**msgspec.structs.asdict(event), stream_id=entry_id, partition=self.partition)
        self.out.write(_encode(line).decode() + "\n")
        self.out.flush()
        await self.redis.xack(self.stream, self.options.group, entry_id)
        self.tally.printed += 1

    async def _dead_letter(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        pipe = self.redis.pipeline(transaction=self._atomic_dead_letter)
        pipe.xadd(self.dead_letter_stream, {**fields, "dead_letter_of": entry_id, "group": self.options.group,
                                            "deliveries": str(deliveries)})
        pipe.xack(self.stream, self.options.group, entry_id)
        await pipe.execute()
        self.dead_lettered += 1
        logger.error("entry %s was delivered %d times; moved to %s", entry_id, deliveries, self.dead_letter_stream)


async def tail(settings: Settings, options: TailOptions, out: TextIO | None = None) -> int:
    """Run `events tail` until --count events are printed, or SIGTERM / SIGINT arrives."""
    # The socket timeout must outlast the blocking read (redis-py would time it out otherwise).
    timeout = BLOCK_MS / 1000 + settings.redis_timeout
    redis = create_redis(settings, timeout=timeout)
    # In a cluster each reader talks to the master of its key through a plain client (blocking reads
    # of several keys at once on one cluster client proved unreliable); an outage ends the command.
    nodes = StreamNodes(redis, timeout)
    keys = stream_keys(settings.events_stream, settings.events_partitions)
    chosen = range(len(keys)) if options.partitions is None else options.partitions
    tally = Tally(options.count)
    readers = [Tail(await nodes.client_for(keys[index]), keys[index], options, out or sys.stdout, partition=index,
                    tally=tally, atomic_dead_letter=_one_slot(keys[index]) or not nodes.is_cluster)
               for index in chosen]
    reader = asyncio.create_task(_read_all(readers))
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
        await nodes.aclose()
        await redis.aclose()
    return 0


def _one_slot(key: str) -> bool:
    """Whether a key and its dead-letter stream share a cluster slot, so that MULTI may move an entry."""
    return key_slot(key.encode()) == key_slot(dead_letter_key(key).encode())


async def _read_all(readers: list[Tail]) -> None:
    """Every reader at once, until the count is reached (the others are then stopped) or one fails."""
    tasks = [asyncio.create_task(reader.run(), name=f"tail-{reader.stream}") for reader in readers]
    try:
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                task.result()  # a failed reader ends the command with its error
            if readers[0].tally.done():
                return
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
