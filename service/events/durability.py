"""What a Redis server promises about a published entry surviving its crash, asked of the server itself.

The relay deletes an outbox row only once its entry is as safe as the server can make it: with
WAITAOF (AOF on, Redis 7.2 or newer) it waits for the fsync of each batch (and, with
EVENTS_WAITAOF_REPLICAS, for that many replicas' fsync); with `appendfsync always` the XADD's
reply already means it is on disk; otherwise it warns that a Redis crash can lose published
events, and with EVENTS_REQUIRE_DURABLE it publishes nothing (`hold_reason`).
"""

from __future__ import annotations

import enum
import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

logger = logging.getLogger("service.events.publisher")


class Durability(enum.Enum):
    """How a published entry survives a Redis crash, from the safest to the weakest."""

    WAITAOF = "waitaof"            # AOF on and Redis >= 7.2: WAITAOF confirms each batch is fsynced
    FSYNC_ALWAYS = "fsync-always"  # AOF with appendfsync always: the XADD reply means it is on disk
    AOF_UNCONFIRMED = "aof-unconfirmed"  # AOF, but fsync is periodic and cannot be confirmed
    NONE = "none"                  # no AOF: a Redis crash loses what it held

    @property
    def is_crash_safe(self) -> bool:
        return self in (Durability.WAITAOF, Durability.FSYNC_ALWAYS)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


async def detect_durability(client: aioredis.Redis) -> Durability:
    """Ask the server which durability it offers (INFO, and CONFIG where it is allowed)."""
    persistence = await client.info("persistence")
    if not int(persistence.get("aof_enabled", 0)):
        return Durability.NONE
    try:
        appendfsync: str | None = (await client.config_get("appendfsync")).get("appendfsync")
    except ResponseError:  # CONFIG is often disabled on managed Redis
        appendfsync = None
    server = await client.info("server")
    if _version(str(server.get("redis_version", "0"))) >= (7, 2):
        # With `appendfsync no` the server never fsyncs, so WAITAOF could never confirm a batch.
        return Durability.AOF_UNCONFIRMED if appendfsync == "no" else Durability.WAITAOF
    return Durability.FSYNC_ALWAYS if appendfsync == "always" else Durability.AOF_UNCONFIRMED


def hold_reason(durability: Durability | None, *, require_durable: bool, replicas: int) -> str | None:
    """Why the relay keeps events in the outbox rather than publish them, or None if it publishes.

    Only with EVENTS_REQUIRE_DURABLE: then an entry must survive a crash of the Redis server (and,
    with EVENTS_WAITAOF_REPLICAS, be on that many replicas, which only WAITAOF can confirm).
    """
    if not require_durable or durability is None:
        return None
    if not durability.is_crash_safe:
        return (f"EVENTS_REQUIRE_DURABLE is on and Redis durability is {durability.value}: a Redis crash "
                "would lose published events (turn on appendonly, with Redis 7.2+ or appendfsync always)")
    if replicas and durability is not Durability.WAITAOF:
        return (f"EVENTS_REQUIRE_DURABLE is on and EVENTS_WAITAOF_REPLICAS is {replicas}, but Redis durability "
                f"is {durability.value}: only WAITAOF (Redis 7.2+ with appendonly) confirms replicas")
    return None


class Warner:
    """Warns once per process that published events are not crash-safe, whichever partition finds out first."""

    def __init__(self) -> None:
        self._warned = False

    def note(self, durability: Durability) -> None:
        if not durability.is_crash_safe and not self._warned:
            self._warned = True
            logger.warning("Redis durability is %r: published events are not crash-safe in Redis "
                           "(turn on appendonly, with Redis 7.2+ or appendfsync always)", durability.value)


def weakest(modes: list[Durability]) -> Durability | None:
    """The least crash-safe of `modes` (None if there are none)."""
    order = list(Durability)
    return max(modes, key=order.index) if modes else None
