"""When each event reaches the stream: the event-latency probes' shared reader and their summary."""

from __future__ import annotations

import asyncio
import statistics
import time

import redis.asyncio as aioredis


class StreamArrivals:
    """Reads a stream from its end (XREAD BLOCK on a connection of its own), noting when each
    conversation's first new entry arrived, on the clock the writers note their answers with."""

    def __init__(self, redis_url: str, stream: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.stream = stream
        self.arrived: dict[str, float] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StreamArrivals:
        self._task = asyncio.create_task(self._read())
        await asyncio.sleep(0.3)  # the first XREAD is waiting before anything is written
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.redis.aclose()

    async def _read(self) -> None:
        last = "$"
        while not self._stop.is_set():
            reply = await self.redis.xread({self.stream: last}, block=200, count=1000)
            now = time.perf_counter()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
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
