"""Reading what the relay put on a test's stream."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.conftest import wait_for


async def entries(redis: aioredis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    return list(await redis.xrange(stream, "-", "+"))


async def wait_for_entries(redis: aioredis.Redis, stream: str, count: int, timeout: float = 5.0
                           ) -> list[tuple[str, dict[str, str]]]:
    """The stream's entries once there are at least `count` of them."""

    async def enough() -> list[tuple[str, dict[str, str]]] | None:
        found = await entries(redis, stream)
        return found if len(found) >= count else None

    return await wait_for(enough, timeout=timeout)


async def events_of(redis: aioredis.Redis, stream: str, conversation_id: str) -> list[dict[str, str]]:
    return [fields for _, fields in await entries(redis, stream) if fields["conversation_id"] == conversation_id]
