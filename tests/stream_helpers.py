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


def first_of_each(found: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    """Each event once, at its first entry; a later entry with its id must repeat it exactly (the
    only duplicates the contract allows: a batch published again, same id and sequence)."""
    first: dict[str, dict[str, str]] = {}
    for _, fields in found:
        seen = first.setdefault(fields["id"], fields)
        assert seen == fields, (seen, fields)
    return list(first.values())


async def wait_for_events(redis: aioredis.Redis, stream: str, count: int, timeout: float = 5.0
                          ) -> list[dict[str, str]]:
    """The stream's distinct events (first_of_each) once there are at least `count` of them."""

    async def enough() -> list[dict[str, str]] | None:
        events = first_of_each(await entries(redis, stream))
        return events if len(events) >= count else None

    return await wait_for(enough, timeout=timeout)


async def events_of(redis: aioredis.Redis, stream: str, conversation_id: str) -> list[dict[str, str]]:
    return [fields for _, fields in await entries(redis, stream) if fields["conversation_id"] == conversation_id]
