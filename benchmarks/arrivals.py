"""The event-latency probes' shared parts: an open-loop sender of creates, the reader that notes when
each event reaches its stream key, and their summary."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import redis.asyncio as aioredis

from service.conversations import Conversations
from service.model import ConversationCreate


class StreamArrivals:
    """Reads stream keys (XREAD BLOCK on a connection of its own), noting when each conversation's
    first new entry arrived, on the clock the writers note their answers with."""

    def __init__(self, redis_url: str, keys: list[str]) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.keys = keys
        self.arrived: dict[str, float] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StreamArrivals:
        # Each key read from its last entry as it is now: "$" would be taken afresh at every XREAD
        # for a key that has had no entry yet, skipping what reached it between two reads.
        last = {key: (found[0][0] if (found := await self.redis.xrevrange(key, count=1)) else "0-0")
                for key in self.keys}
        self._task = asyncio.create_task(self._read(last))
        await asyncio.sleep(0.3)  # the first XREAD is waiting before anything is written
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.redis.aclose()

    async def _read(self, last: dict[str, str]) -> None:
        while not self._stop.is_set():
            reply = await self.redis.xread(last, block=200, count=1000)
            now = time.perf_counter()
            for key, entries in reply or []:
                for entry_id, fields in entries:
                    last[key] = entry_id
                    self.arrived.setdefault(fields["conversation_id"], now)

    async def wait_for(self, answered: dict[str, float], seconds: float) -> None:
        """Until every answered conversation's event arrived, or `seconds` passed."""
        deadline = time.monotonic() + seconds
        while len(self.arrived.keys() & answered.keys()) < len(answered) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def delays_ms(self, answered: dict[str, float]) -> list[float]:
        """Sorted milliseconds from each answer to its event's arrival (events that arrived only)."""
        return sorted((self.arrived[cid] - at) * 1000 for cid, at in answered.items() if cid in self.arrived)


def percentiles(delays: list[float]) -> dict[str, float]:
    """p50, p99 and max of sorted `delays`, rounded for a report."""
    return {"p50_ms": round(statistics.median(delays), 2), "p99_ms": round(delays[int(len(delays) * 0.99) - 1], 2),
            "max_ms": round(delays[-1], 2)}


class Creator(Protocol):
    """One sender's way to create conversation number n: its status and, on success, the id."""

    async def create(self, n: int) -> tuple[int, str | None]: ...

    async def close(self) -> None: ...


class HttpCreator:
    """POST /v1/conversations on one keep-alive HTTP/1.1 connection (httpx costs too much CPU here)."""

    def __init__(self, port: int, token: str) -> None:
        self._port, self._token = port, token.encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def create(self, n: int) -> tuple[int, str | None]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self._port)
        reader, writer = self._streams
        body = json.dumps({"contact_id": f"c{n}"}).encode()
        writer.write(b"POST /v1/conversations HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer " + self._token
                     + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        reply = await reader.readexactly(length)
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(reply)["id"] if status == 201 else None

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


class SqlCreator:
    """The service's own create (service/conversations.py: the conversation and its outbox row in one
    statement) on one database connection, without the HTTP front door."""

    def __init__(self, database_url: str, stream: str, partitions: int, account_id: str) -> None:
        self._url, self._account = database_url, account_id
        self._conversations = Conversations(stream, partitions)
        self._connection: asyncpg.Connection | None = None

    async def create(self, n: int) -> tuple[int, str | None]:
        if self._connection is None:
            self._connection = await asyncpg.connect(self._url)
        conversation, _ = await self._conversations.create(self._connection, self._account,
                                                           ConversationCreate(contact_id=f"c{n}"))
        return 201, conversation.id

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


@dataclass
class Sent:
    """What an open-loop run answered: each created id with the moment its answer came back."""

    answered: dict[str, float] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> int:
        return round(len(self.answered) / self.seconds)


async def open_loop(creators: list[Creator], rate: float, duration: float) -> Sent:
    """Creates at `rate` a second for `duration` seconds, each queued at its scheduled time whatever
    the server's pace (open loop), taken by the first free creator."""
    sent = Sent()
    jobs: asyncio.Queue[int | None] = asyncio.Queue()

    async def work(creator: Creator) -> None:
        try:
            while (n := await jobs.get()) is not None:
                status, conversation_id = await creator.create(n)
                sent.statuses[status] = sent.statuses.get(status, 0) + 1
                if conversation_id is not None:
                    sent.answered[conversation_id] = time.perf_counter()
        finally:
            await creator.close()

    workers = [asyncio.create_task(work(creator)) for creator in creators]
    started = time.perf_counter()
    for n in range(int(rate * duration)):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.put_nowait(n)
    for _ in workers:
        jobs.put_nowait(None)
    await asyncio.gather(*workers)
    sent.seconds = time.perf_counter() - started
    return sent
