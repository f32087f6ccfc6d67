"""A write storm: concurrent clients creating and updating conversations, tracking every 2xx reply.

Each client writes only to the conversations it created, so it knows each one's last acknowledged
state and version (the ETag), and the one update in flight if the server vanished under it. The
crash and failover tests compare these replies with what PostgreSQL and the stream hold afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx


@dataclass
class Tracked:
    """What one client knows of one of its conversations (only its creator writes to it)."""

    acknowledged: dict[str, Any]  # the last 2xx response body
    version: int  # its ETag
    in_flight: dict[str, Any] | None = None  # the update body sent when the process died, if any


@dataclass
class Storm:
    tracked: dict[str, Tracked] = field(default_factory=dict)
    acknowledged_writes: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # (id, ETag, body)
    creates_in_flight: int = 0
    failures: list[str] = field(default_factory=list)  # anything but a 2xx or a dropped connection
    dropped: int = 0


def etag(response: httpx.Response) -> int:
    return int(response.headers["etag"].strip('"'))


def applied(conversation: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The conversation after `update` (every update here sets fields; last_active_at only moves forward)."""
    result = {**conversation, **update}
    if "last_active_at" in update and conversation["last_active_at"] is not None:
        result["last_active_at"] = max(conversation["last_active_at"], update["last_active_at"])
    return result


async def client_loop(number: int, base_url: str, token: str, storm: Storm, stop: asyncio.Event) -> None:
    chooser = random.Random(number)
    mine: list[str] = []
    counter = itertools.count(1)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=10) as http:
        while not stop.is_set():
            n = next(counter)
            if not mine or chooser.random() < 0.35:
                storm.creates_in_flight += 1
                try:
                    response = await http.post("/v1/conversations", json={"contact_id": f"storm_{number}_{n}"})
                except httpx.TransportError:
                    storm.dropped += 1
                    return  # the process is gone; this create's outcome is unknown
                finally:
                    storm.creates_in_flight -= 1
                if response.status_code != 201:
                    storm.failures.append(f"POST {response.status_code} {response.text}")
                    continue
                body = response.json()
                mine.append(body["id"])
                storm.tracked[body["id"]] = Tracked(body, etag(response))
                storm.acknowledged_writes.append((body["id"], etag(response), body))
                continue
            conversation_id = chooser.choice(mine)
            tracked = storm.tracked[conversation_id]
            update: dict[str, Any] = {"pinned_message_id": f"msg_{number}_{n}",  # always an effective change
                                      "last_active_at": 1_700_000_000 + n}
            if chooser.random() < 0.5:
                update["is_muted"] = not tracked.acknowledged["is_muted"]
            tracked.in_flight = update
            try:
                response = await http.put(f"/v1/conversations/{conversation_id}", json=update)
            except httpx.TransportError:
                storm.dropped += 1
                return  # tracked.in_flight stays: it may or may not have committed
            tracked.in_flight = None
            if response.status_code != 200:
                storm.failures.append(f"PUT {response.status_code} {response.text}")
                continue
            tracked.acknowledged, tracked.version = response.json(), etag(response)
            storm.acknowledged_writes.append((conversation_id, tracked.version, tracked.acknowledged))


async def outbox_waiting(db: asyncpg.Connection, stream: str) -> int:
    """The stream's rows still in the outbox (not yet published and retired by the relay)."""
    return await db.fetchval("SELECT count(*) FROM conversation_outbox WHERE stream = $1", stream)


async def outbox_is_empty(db: asyncpg.Connection, stream: str) -> bool:
    return await outbox_waiting(db, stream) == 0


async def published_at_least(db: asyncpg.Connection, stream: str, storm: Storm, acknowledged: int, published: int
                             ) -> bool:
    """Whether the storm has `acknowledged` writes and `published` of them (committed: their rows were
    in the outbox) have left the outbox."""
    writes = len(storm.acknowledged_writes)
    return writes >= acknowledged and writes - await outbox_waiting(db, stream) >= published
