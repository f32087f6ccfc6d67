"""Stream retention: never trim what a consumer group still needs, and guard Redis's memory.

XTRIM MINID to the oldest entry some consumer group has not acknowledged (the lowest of each
group's oldest pending id and the entry after its last-delivered id); with no group, the newest
EVENTS_MAXLEN entries. Past EVENTS_HARD_MAXLEN (the memory guard) unread entries are dropped,
logged and counted. Each pass also records every group's lag and pending count for /metrics.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.events.stats import RelayStats
from service.metrics import UNREAD_DROPPED

logger = logging.getLogger("service.events.retention")


def _successor(stream_id: str) -> str:
    millis, _, sequence = stream_id.partition("-")
    return f"{millis}-{int(sequence or 0) + 1}"


def _id_key(stream_id: str) -> tuple[int, int]:
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)


class Retention:
    """Trims one stream by the retention rule; `trim()` is one pass."""

    def __init__(self, redis: aioredis.Redis, stream: str, maxlen: int, hard_maxlen: int, stats: RelayStats) -> None:
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen
        self._hard_maxlen = hard_maxlen
        self._stats = stats

    def retarget(self, redis: aioredis.Redis) -> None:
        """Trim through `redis` from now on (the node that serves the stream now)."""
        self._redis = redis

    async def _oldest_needed(self) -> str | None:
        """The oldest entry id some consumer group still needs (None: no group), recording their lags."""
        try:
            groups = await self._redis.xinfo_groups(self._stream)
        except RedisError as error:
            if "no such key" in str(error).lower():
                return None
            raise
        floor: str | None = None
        lags: dict[str, tuple[int, int]] = {}
        for group in groups:
            candidates = [_successor(str(group["last-delivered-id"]))]
            if int(group["pending"]) > 0:
                summary = await self._redis.xpending(self._stream, group["name"])
                if summary.get("min"):
                    candidates.append(str(summary["min"]))
            oldest_needed = min(candidates, key=_id_key)
            floor = oldest_needed if floor is None else min(floor, oldest_needed, key=_id_key)
            lags[str(group["name"])] = (int(group.get("lag") or 0), int(group["pending"]))
        self._stats.groups = lags
        return floor

    async def trim(self) -> None:
        """Apply the retention rule once."""
        floor = await self._oldest_needed()
        if floor is None:
            await self._redis.xtrim(self._stream, maxlen=self._maxlen, approximate=True)
        else:
            await self._redis.xtrim(self._stream, minid=floor, approximate=True)
        length = await self._redis.xlen(self._stream)
        if length > self._hard_maxlen:
            dropped = await self._redis.xtrim(self._stream, maxlen=self._hard_maxlen, approximate=False)
            self._stats.unread_dropped += dropped
            UNREAD_DROPPED.inc(dropped)
            logger.error("stream %s exceeded EVENTS_HARD_MAXLEN (%d): dropped %d entries no consumer group "
                         "has acknowledged yet", self._stream, self._hard_maxlen, dropped)
            length -= dropped
        self._stats.stream_length = length
