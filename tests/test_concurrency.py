"""docs/api.md §3 and §6 under concurrent writers: uniqueness, no lost update, gapless per-conversation events.

Every request of a burst goes on its own connection, opened beforehand, to a real `serve` with
two worker processes (two pools, two event loops, the kernel spreading connections over them),
so the writes really race in PostgreSQL rather than queueing in one client or one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from service.settings import Settings
from tests.conftest import Account, Backends, new_account, wait_for
from tests.http_helpers import item, unique
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow

BURST = 50
UPDATES = 40


@pytest.fixture(scope="module")
def stream() -> str:
    return f"test:{uuid.uuid4().hex}:events"


@pytest.fixture(scope="module")
def service(database_url: str, backend_urls: Backends, stream: str, tmp_path_factory) -> Iterator[ServiceProcess]:
    env = {"DATABASE_URL": database_url, "REDIS_URL": backend_urls.redis_url, "EVENTS_STREAM": stream}
    log = Path(tmp_path_factory.mktemp("concurrency")) / "serve.log"
    process = ServiceProcess(env, args=("--no-migrate", "--workers", "2"), log_path=log).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def stream_reader(backend_urls: Backends, stream: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(backend_urls.redis_url, decode_responses=True)
    yield client
    await client.delete(stream)
    await client.aclose()


@pytest.fixture
async def racer(database_url: str) -> Account:
    return await new_account(Settings(database_url=database_url), "race")


async def burst(service: ServiceProcess, token: str, requests: list[tuple[str, str, dict[str, Any]]]
                ) -> list[httpx.Response]:
    """Send every request at once, each on its own connection opened (and warmed) beforehand."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=service.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30))
            for _ in requests]
        warm = await asyncio.gather(*(client.get("/v1/conversations", params={"limit": 1}) for client in clients))
        assert {response.status_code for response in warm} == {200}  # connected, and the token cached
        return list(await asyncio.gather(*(client.request(method, url, **kwargs)
                                           for client, (method, url, kwargs) in zip(clients, requests, strict=True))))


async def events_of_account(db: asyncpg.Connection, reader: aioredis.Redis, stream: str, account_id: str
                            ) -> list[dict[str, str]]:
    """The account's events, first copy of each event id, once the outbox holds none of them."""
    await wait_for(lambda: _outbox_empty(db, account_id), timeout=10)
    first_copies: dict[str, dict[str, str]] = {}
    for _, fields in await reader.xrange(stream, "-", "+"):
        if fields["account_id"] == account_id:
            first_copies.setdefault(fields["id"], fields)
    return list(first_copies.values())


async def _outbox_empty(db: asyncpg.Connection, account_id: str) -> bool:
    return await db.fetchval("SELECT count(*) FROM conversation_outbox WHERE account_id = $1", account_id) == 0


def etag(response: httpx.Response) -> int:
    return int(response.headers["etag"].strip('"'))


def decoded(event: dict[str, str], name: str) -> Any:
    return msgspec.json.decode(event[name])


@pytest.mark.parametrize("param", ["contact_id", "group_id"])
async def test_concurrent_creates_for_one_party_make_exactly_one_conversation(
        service: ServiceProcess, racer: Account, param: str, db: asyncpg.Connection, stream_reader, stream: str):
    party = unique(param.removesuffix("_id"))
    responses = await burst(service, racer.token, [("POST", "/v1/conversations", {"json": {param: party}})] * BURST)
    assert Counter(r.status_code for r in responses) == {201: 1, 409: BURST - 1}
    [created] = [r.json() for r in responses if r.status_code == 201]
    conflicts = [r.json() for r in responses if r.status_code == 409]
    assert all(body["param"] == param and body["conversation_id"] == created["id"] for body in conflicts), \
        [body for body in conflicts if body.get("conversation_id") != created["id"]][:3]
    rows = await db.fetch(f"SELECT id FROM conversations WHERE account_id = $1 AND {param} = $2",
                          racer.id, party)
    assert [row["id"] for row in rows] == [created["id"]]
    events = await events_of_account(db, stream_reader, stream, racer.id)
    assert [(e["type"], e["conversation_id"], e["sequence"]) for e in events] == \
        [("conversation.created", created["id"], "1")]
    assert decoded(events[0], "data") == created


async def test_concurrent_updates_of_one_conversation_lose_no_update_that_returned_200(
        service: ServiceProcess, racer: Account, db: asyncpg.Connection, stream_reader, stream: str):
    async with httpx.AsyncClient(base_url=service.base_url, headers={"Authorization": f"Bearer {racer.token}"}) as api:
        created = (await api.post("/v1/conversations", json={"contact_id": unique()})).json()
        bodies = [{"pinned_message_id": f"msg_{n}", "last_active_at": 1_700_000_000 + n} for n in range(UPDATES)]
        responses = await burst(service, racer.token, [("PUT", item(created["id"]), {"json": b}) for b in bodies])
        assert [r.status_code for r in responses] == [200] * UPDATES, [r.text for r in responses
                                                                         if r.status_code != 200]
        final = await api.get(item(created["id"]))
    # Every update changed something, so each got its own version: 2 .. UPDATES + 1, none shared.
    by_version = {etag(r): (body, r.json()) for body, r in zip(bodies, responses, strict=True)}
    assert sorted(by_version) == list(range(2, UPDATES + 2))
    # Applied one after another in version order, the updates give exactly the responses they got.
    state = created
    for version in sorted(by_version):
        body, answered = by_version[version]
        state = {**state, "pinned_message_id": body["pinned_message_id"],
                 "last_active_at": max(state["last_active_at"] or 0, body["last_active_at"])}
        assert answered == state, (version, answered, state)
    assert (final.status_code, etag(final), final.json()) == (200, UPDATES + 1, by_version[UPDATES + 1][1])
    assert await db.fetchval("SELECT version FROM conversations WHERE account_id = $1 AND id = $2",
                             racer.id, created["id"]) == UPDATES + 1
    events = await events_of_account(db, stream_reader, stream, racer.id)
    assert [int(e["sequence"]) for e in events] == list(range(1, UPDATES + 2))  # no gap, in order
    assert decoded(events[0], "data") == created
    for previous, event in itertools.pairwise(events):
        version = int(event["sequence"])
        assert decoded(event, "data") == by_version[version][1]
        changed = {k: v for k, v in decoded(previous, "data").items() if decoded(event, "data")[k] != v}
        assert decoded(event, "previous_attributes") == changed
    assert decoded(events[-1], "data") == final.json()


async def test_concurrent_conditional_updates_on_one_version_let_exactly_one_win(
        service: ServiceProcess, racer: Account, db: asyncpg.Connection, stream_reader, stream: str):
    async with httpx.AsyncClient(base_url=service.base_url, headers={"Authorization": f"Bearer {racer.token}"}) as api:
        created = await api.post("/v1/conversations", json={"group_id": unique("group")})
        conversation = created.json()
        requests = [("PUT", item(conversation["id"]), {"json": {"pinned_message_id": f"msg_{n}"},
                                                       "headers": {"If-Match": created.headers["etag"]}})
                    for n in range(UPDATES)]
        responses = await burst(service, racer.token, requests)
        final = (await api.get(item(conversation["id"]))).json()
    assert Counter(r.status_code for r in responses) == {200: 1, 412: UPDATES - 1}
    [winner] = [r for r in responses if r.status_code == 200]
    assert etag(winner) == 2 and final == winner.json()
    assert all(r.json()["param"] == "If-Match" for r in responses if r.status_code == 412)
    events = await events_of_account(db, stream_reader, stream, racer.id)
    assert [(e["type"], e["sequence"]) for e in events] == [("conversation.created", "1"),
                                                             ("conversation.updated", "2")]
    assert decoded(events[-1], "data") == final


async def test_a_delete_racing_updates_is_the_last_event_and_no_update_is_lost(
        service: ServiceProcess, racer: Account, db: asyncpg.Connection, stream_reader, stream: str):
    async with httpx.AsyncClient(base_url=service.base_url, headers={"Authorization": f"Bearer {racer.token}"}) as api:
        created = (await api.post("/v1/conversations", json={"contact_id": unique()})).json()
    path = item(created["id"])
    requests = [("PUT", path, {"json": {"pinned_message_id": f"msg_{n}"}}) for n in range(UPDATES)]
    requests.insert(UPDATES // 2, ("DELETE", path, {}))
    responses = await burst(service, racer.token, requests)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 204, 404} and statuses[204] == 1, statuses
    updated = {etag(r): r.json() for r in responses if r.status_code == 200}
    assert sorted(updated) == list(range(2, len(updated) + 2))  # every 200 is its own effective update
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = $1", created["id"]) == 0
    events = await events_of_account(db, stream_reader, stream, racer.id)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(updated) + 3))
    assert [e["type"] for e in events] == ["conversation.created", *["conversation.updated"] * len(updated),
                                           "conversation.deleted"]
    assert all(decoded(e, "data") == updated[int(e["sequence"])] for e in events[1:-1])
    assert decoded(events[-1], "data") == (updated[max(updated)] if updated else created)


async def test_creates_racing_the_delete_of_their_party_leave_at_most_one_conversation_and_name_it(
        service: ServiceProcess, racer: Account, db: asyncpg.Connection, stream_reader, stream: str):
    contact = unique()
    async with httpx.AsyncClient(base_url=service.base_url, headers={"Authorization": f"Bearer {racer.token}"}) as api:
        old = (await api.post("/v1/conversations", json={"contact_id": contact})).json()
    requests = [("POST", "/v1/conversations", {"json": {"contact_id": contact}}) for _ in range(BURST - 1)]
    requests.insert(BURST // 4, ("DELETE", item(old["id"]), {}))
    responses = await burst(service, racer.token, requests)
    statuses = Counter(r.status_code for r in responses)
    created = [r.json() for r in responses if r.status_code == 201]
    assert set(statuses) <= {201, 204, 409} and statuses[204] == 1 and len(created) <= 1, statuses
    stored = [row["id"] for row in await db.fetch(
        "SELECT id FROM conversations WHERE account_id = $1 AND contact_id = $2", racer.id, contact)]
    assert stored == [c["id"] for c in created]
    named = {r.json().get("conversation_id") for r in responses if r.status_code == 409}
    assert named <= {old["id"], *stored}, [r.json() for r in responses if r.status_code == 409][:3]
    events = await events_of_account(db, stream_reader, stream, racer.id)
    by_conversation: dict[str, list[str]] = {}
    for event in events:  # events of different conversations carry no order promise
        by_conversation.setdefault(event["conversation_id"], []).append(event["type"])
    assert by_conversation == {old["id"]: ["conversation.created", "conversation.deleted"],
                               **{c["id"]: ["conversation.created"] for c in created}}
