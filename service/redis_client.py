"""The one Redis client of a process, and what the server it talks to promises about durability.

Every call is bounded by `REDIS_TIMEOUT` (connect and socket), and redis-py's own retries are
off: the relay owns its backoff (API.md §6, "Redis outage"), and `/ready` wants a quick answer.
"""

from __future__ import annotations

import enum

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from service.settings import Settings


def create_redis(settings: Settings, *, timeout: float | None = None) -> aioredis.Redis:
    seconds = settings.redis_timeout if timeout is None else timeout
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=seconds,
        socket_connect_timeout=seconds,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        client_name="conversations-service",
    )


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
    server = await client.info("server")
    if _version(str(server.get("redis_version", "0"))) >= (7, 2):
        return Durability.WAITAOF
    try:
        config = await client.config_get("appendfsync")
    except ResponseError:  # CONFIG is often disabled on managed Redis
        return Durability.AOF_UNCONFIRMED
    return Durability.FSYNC_ALWAYS if config.get("appendfsync") == "always" else Durability.AOF_UNCONFIRMED
