"""What a benchmark run leaves behind, removed: its throwaway database and its stream's keys."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` (ending its sessions first), connecting to the server at `admin_url`."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def delete_stream(redis_url: str, stream: str) -> None:
    """Delete the stream key and its partitions' keys (`<stream>:{tag}`)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [stream, *[key async for key in client.scan_iter(match=stream + ":*")]]
        await client.delete(*keys)
    finally:
        await client.aclose()
