"""How the service's Redis clients are made (the relay's, the status probes', the consumer's).

Every call is bounded by `REDIS_TIMEOUT` (connect and socket), and redis-py's own retries are
off: the relay owns its backoff (docs/api.md §6.2), and `/ready` wants a quick answer.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.settings import Settings


def create_redis(settings: Settings, *, timeout: float | None = None,
                 max_connections: int | None = None) -> aioredis.Redis:
    """A client whose pool holds at most `max_connections` (redis-py's default, 100, if None);
    a command past that fails at once with MaxConnectionsError instead of opening another."""
    seconds = settings.redis_timeout if timeout is None else timeout
    return aioredis.Redis.from_url(
        settings.redis_url,
        max_connections=max_connections,
        socket_timeout=seconds,
        socket_connect_timeout=seconds,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        client_name="conversations-service",
    )
