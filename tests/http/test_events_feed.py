"""GET /v1/events (docs/api.md §6.6): the events feed, for delta sync and replay.

Every published event of the account, newest first, each exactly the stream's entry decoded;
cursors are event ids; a cursor older than the window is a 410; another account's events never
appear, and its event ids are no cursors here. A client that syncs, goes offline while writes
commit (some in transactions that began before its last read) and syncs again ends with exactly
the server's state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from service.ids import encode_millis, random_part
from service.model import ConversationUpdate, decode_entry
from service.settings import Settings
from service.store import event_log, queries
from service.store.database import Transaction
from tests.conftest import Account, wait_for
from tests.http_helpers import CONVERSATIONS, assert_error, create_conversation, item, unique
from tests.stream_helpers import entries

EVENTS = "/v1/events"
README = Path(__file__).resolve().parents[2] / "README.md"
EVENT_KEYS = ["id", "type", "account_id", "conversation_id", "occurred_at", "sequence", "schema_version", "data"]


async def feed(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get(EVENTS, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def stream_events(redis: aioredis.Redis, stream: str) -> list[dict[str, Any]]:
    """The stream's events, decoded as a consumer would, oldest first."""
    return [msgspec.to_builtins(decode_entry(fields)) for _, fields in await entries(redis, stream)]


async def settled_feed(api: httpx.AsyncClient, redis: aioredis.Redis, stream: str, count: int) -> list[dict]:
    """The whole feed, newest first, once it shows every one of the stream's `count` events."""

    async def whole() -> list[dict] | None:
        body = await feed(api, limit=100)
        return body["data"] if len(body["data"]) >= count and len(await entries(redis, stream)) >= count else None

    return await wait_for(whole, timeout=10)


async def test_every_event_of_the_stream_is_in_the_feed_exactly_as_a_consumer_decodes_it_newest_first(
        api: httpx.AsyncClient, settings: Settings, redis_client):
    created = await create_conversation(api)
    await api.put(item(created["id"]), json={"is_muted": True})
    other = await create_conversation(api)
    await api.delete(item(created["id"]))
    data = await settled_feed(api, redis_client, settings.events_stream, 4)
    assert list(reversed(data)) == await stream_events(redis_client, settings.events_stream)
    assert [e["type"] for e in data] == ["conversation.deleted", "conversation.created", "conversation.updated",
                                         "conversation.created"]
    assert list(data[2]) == [*EVENT_KEYS, "previous_attributes"]
    assert data[2]["previous_attributes"] == {"is_muted": False}
    assert data[1]["data"]["id"] == other["id"]


async def test_a_no_op_update_and_a_refused_write_add_nothing_to_the_feed(api, settings: Settings, redis_client):
    created = await create_conversation(api)
    await api.put(item(created["id"]), json={"is_muted": False})
    await api.post(CONVERSATIONS, json={"contact_id": created["contact_id"]})  # 409
    [event] = await settled_feed(api, redis_client, settings.events_stream, 1)
    await asyncio.sleep(0.3)
    assert (await feed(api))["data"] == [event]


async def test_starting_after_pages_older_and_ending_before_pages_newer(api, settings: Settings, redis_client):
    for _ in range(5):
        await create_conversation(api)
    data = await settled_feed(api, redis_client, settings.events_stream, 5)
    ids = [e["id"] for e in data]
    older = await feed(api, limit=2, starting_after=ids[1])
    assert [e["id"] for e in older["data"]] == ids[2:4] and older["has_more"] is True
    last = await feed(api, limit=2, starting_after=ids[3])
    assert [e["id"] for e in last["data"]] == ids[4:] and last["has_more"] is False
    newer = await feed(api, limit=2, ending_before=ids[4])
    assert [e["id"] for e in newer["data"]] == ids[2:4] and newer["has_more"] is True
    newest = await feed(api, limit=2, ending_before=ids[2])
    assert [e["id"] for e in newest["data"]] == ids[:2] and newest["has_more"] is False


async def test_type_and_conversation_id_filter_the_feed(api, settings: Settings, redis_client):
    first = await create_conversation(api)
    second = await create_conversation(api)
    await api.put(item(first["id"]), json={"is_pinned": True})
    await settled_feed(api, redis_client, settings.events_stream, 3)
    updates = await feed(api, type="conversation.updated")
    assert [e["conversation_id"] for e in updates["data"]] == [first["id"]]
    of_second = await feed(api, conversation_id=second["id"])
    assert [e["type"] for e in of_second["data"]] == ["conversation.created"]


async def test_an_event_is_retrieved_by_its_id(api, settings: Settings, redis_client):
    await create_conversation(api)
    [event] = await settled_feed(api, redis_client, settings.events_stream, 1)
    response = await api.get(f"{EVENTS}/{event['id']}")
    assert response.status_code == 200 and response.json() == event


async def test_an_unknown_or_malformed_event_id_is_a_404(api):
    for event_id in ("evt_" + encode_millis(int(time.time() * 1000)) + random_part(), "evt_short", "nope"):
        assert_error(await api.get(f"{EVENTS}/{event_id}"), 404)


async def test_another_accounts_events_never_appear_and_their_ids_are_no_cursors_here(
        api, other_api, settings: Settings, redis_client):
    await create_conversation(api)
    await create_conversation(other_api)
    await wait_for(lambda: _count(redis_client, settings.events_stream, 2))
    [mine] = await settled_feed(api, redis_client, settings.events_stream, 1)
    [theirs] = (await feed(other_api))["data"]
    assert mine["account_id"] != theirs["account_id"]
    assert_error(await api.get(f"{EVENTS}/{theirs['id']}"), 404)
    for cursor in ("starting_after", "ending_before"):
        assert_error(await api.get(EVENTS, params={cursor: theirs["id"]}), 400, cursor)


async def _count(redis: aioredis.Redis, stream: str, count: int) -> bool:
    return len(await entries(redis, stream)) >= count


async def test_a_cursor_older_than_the_window_is_a_410_telling_the_client_to_resync(api, settings: Settings):
    long_ago = int((time.time() - (settings.events_feed_days + 1) * 86_400) * 1000)
    cursor = "evt_" + encode_millis(long_ago) + random_part()
    for name in ("starting_after", "ending_before"):
        body = assert_error(await api.get(EVENTS, params={name: cursor}), 410, name)
        assert "resync" in body["message"]


async def test_events_leave_the_feed_when_their_week_leaves_the_window(api, settings: Settings, redis_client, db):
    await create_conversation(api)
    [event] = await settled_feed(api, redis_client, settings.events_stream, 1)
    later = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=settings.events_feed_days + 8)
    await event_log.maintain(db, settings.events_feed_days, today=later)
    assert (await feed(api))["data"] == []
    assert_error(await api.get(f"{EVENTS}/{event['id']}"), 404)
    await event_log.maintain(db, settings.events_feed_days)  # today's partitions back, for the tests that follow


async def test_an_event_older_than_the_window_is_not_listed_even_before_its_week_is_dropped(
        api, settings: Settings, redis_client, db):
    await create_conversation(api)
    await create_conversation(api)
    newer, older = await settled_feed(api, redis_client, settings.events_stream, 2)
    await db.execute("UPDATE event_log SET occurred_at = occurred_at - $1 WHERE event_id = $2",
                     (settings.events_feed_days + 1) * 86_400, older["id"])
    assert [event["id"] for event in (await feed(api))["data"]] == [newer["id"]]
    after_newer = await feed(api, starting_after=newer["id"])
    assert after_newer == {"has_more": False, "data": []}


# ---------------------------------------------------------------------------------- delta sync


class OfflineCopy:
    """A client's copy of the account: conversations by id, kept in sync from the feed.

    The sequence rule of docs/api.md §6.2: an event is applied only if its sequence is above the
    one last applied for its conversation, so overlaps and duplicates change nothing.
    """

    def __init__(self) -> None:
        self.conversations: dict[str, dict[str, Any]] = {}
        self.sequences: dict[str, int] = {}
        self.last_event_id: str | None = None

    async def download(self, api: httpx.AsyncClient) -> None:
        """Start: note the feed's newest event first, then list everything."""
        head = (await feed(api, limit=1))["data"]
        self.last_event_id = head[0]["id"] if head else None
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["starting_after"] = cursor
            page = (await api.get(CONVERSATIONS, params=params)).json()
            for conversation in page["data"]:
                self.conversations[conversation["id"]] = conversation
            if not page["has_more"]:
                return
            cursor = page["data"][-1]["id"]

    async def sync(self, api: httpx.AsyncClient) -> None:
        """Every event after the last one applied, oldest first, page by page.

        Without a last event (the feed was empty at download), every event the feed holds is new:
        the whole feed, read newest first back to its oldest, then applied oldest first.
        """
        if self.last_event_id is None:
            events: list[dict[str, Any]] = []
            params: dict[str, Any] = {"limit": 7}
            while True:
                page = await feed(api, **params)
                events += page["data"]
                if not page["has_more"]:
                    break
                params["starting_after"] = page["data"][-1]["id"]
            for event in reversed(events):
                self.apply(event)
            if not events:
                return
            self.last_event_id = events[0]["id"]
        while True:
            page = await feed(api, limit=7, ending_before=self.last_event_id)
            for event in reversed(page["data"]):
                self.apply(event)
            if page["data"]:
                self.last_event_id = page["data"][0]["id"]
            if not page["has_more"]:
                return

    def apply(self, event: dict[str, Any]) -> None:
        conversation_id = event["conversation_id"]
        if event["sequence"] <= self.sequences.get(conversation_id, 0):
            return
        self.sequences[conversation_id] = event["sequence"]
        if event["type"] == "conversation.deleted":
            self.conversations.pop(conversation_id, None)
        else:
            self.conversations[conversation_id] = event["data"]


async def server_state(api: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    copy = OfflineCopy()
    await copy.download(api)
    return copy.conversations


async def test_a_client_that_downloaded_before_any_event_reached_the_feed_gets_every_event_on_its_first_sync(
        api: httpx.AsyncClient, settings: Settings, redis_client):
    client = OfflineCopy()
    await client.download(api)  # a fresh account: no event to remember yet
    assert client.last_event_id is None
    for _ in range(10):  # more than one of the client's pages (7)
        await create_conversation(api)
    await settled_feed(api, redis_client, settings.events_stream, 10)
    await client.sync(api)
    assert client.conversations == await server_state(api)
    assert len(client.conversations) == 10


async def feed_caught_up(api: httpx.AsyncClient, redis: aioredis.Redis, stream: str, count: int) -> None:
    """Until the stream has `count` events and the feed's newest is the stream's last (however many)."""

    async def caught_up() -> bool:
        found = await entries(redis, stream)
        if len(found) < count:
            return False
        newest = (await feed(api, limit=1))["data"]
        return bool(newest) and newest[0]["id"] == found[-1][1]["id"]

    await wait_for(caught_up, timeout=10)


def readme_sync_recipe() -> Any:
    """README's `sync(api, copy)`, the code block as a reader copies it."""
    text = README.read_text()
    start = text.index("```python\ndef sync(api, copy)") + len("```python\n")
    namespace: dict[str, Any] = {}
    # The README's own example, run as written.
    exec(text[start:text.index("```", start)], namespace)  # noqa: S102
    return namespace["sync"]


class BlockingApi:
    """What README's recipe calls `api`: a blocking `get`, here run on the test's loop from a thread."""

    def __init__(self, api: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._api, self._loop = api, loop

    def get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        return asyncio.run_coroutine_threadsafe(self._api.get(path, params=params), self._loop).result(timeout=10)


async def test_readmes_sync_recipe_keeps_a_copy_equal_to_the_servers_state(
        api: httpx.AsyncClient, settings: Settings, redis_client):
    sync = readme_sync_recipe()
    blocking = BlockingApi(api, asyncio.get_running_loop())
    copy: dict[str, Any] = {"last_event_id": None, "conversations": {}, "sequences": {}}  # the feed is empty
    created = [await create_conversation(api) for _ in range(120)]  # more than one of the recipe's pages (100)
    await api.put(item(created[0]["id"]), json={"is_muted": True})
    await api.delete(item(created[1]["id"]))
    await feed_caught_up(api, redis_client, settings.events_stream, 122)
    await asyncio.to_thread(sync, blocking, copy)
    assert copy["conversations"] == await server_state(api)
    for conversation in created[2:5]:  # then from its last event
        await api.patch(item(conversation["id"]), json={"archived_at": 1_700_000_000})
    await api.delete(item(created[5]["id"]))
    await feed_caught_up(api, redis_client, settings.events_stream, 126)
    await asyncio.to_thread(sync, blocking, copy)
    assert copy["conversations"] == await server_state(api)


async def test_a_client_that_syncs_goes_offline_and_syncs_again_ends_with_the_servers_state(
        api: httpx.AsyncClient, account: Account, settings: Settings, redis_client, database_url: str):
    existing = [await create_conversation(api) for _ in range(6)]
    await api.put(item(existing[0]["id"]), json={"is_muted": True})
    client = OfflineCopy()
    await client.download(api)
    await client.sync(api)
    # Writes whose transactions begin before the client's next read and commit after it.
    connection = await asyncpg.connect(database_url)
    try:
        late = connection.transaction()
        await late.start()
        held = Transaction(connection)
        await queries.update_conversation(held, settings.events_stream, account.id, existing[1]["id"],
                                          ConversationUpdate(is_pinned=True))
        await queries.delete_conversation(held, settings.events_stream, account.id, existing[2]["id"])
        # While they are open: creates, updates and deletes commit, and the client reads.
        async def activity() -> None:
            for n in range(3):
                await api.put(item(existing[3]["id"]), json={"last_active_at": 10 + n})

        await asyncio.gather(*(create_conversation(api) for _ in range(4)), activity(),
                             api.delete(item(existing[4]["id"])))
        await client.sync(api)
        await late.commit()
    finally:
        await connection.close()
    await api.patch(item(existing[5]["id"]), json={"archived_at": 1_700_000_000})
    stream_count = 6 + 1 + 2 + 4 + 3 + 1 + 1
    await settled_feed(api, redis_client, settings.events_stream, stream_count)
    await client.sync(api)
    assert client.conversations == await server_state(api)
    assert existing[2]["id"] not in client.conversations and existing[1]["id"] in client.conversations
    assert client.conversations[existing[1]["id"]]["is_pinned"] is True


async def test_a_fresh_account_feed_is_empty(api):
    assert await feed(api) == {"has_more": False, "data": []}


async def test_both_cursors_together_are_a_400(api):
    cursor = "evt_" + encode_millis(int(time.time() * 1000)) + random_part()
    assert_error(await api.get(EVENTS, params={"starting_after": cursor, "ending_before": cursor}), 400,
                 "ending_before")


@pytest.mark.parametrize(("name", "value", "rule"), [
    ("type", "conversation.archived", "conversation.created, conversation.updated or conversation.deleted"),
    ("conversation_id", "not an id", "a conversation id"),
    ("starting_after", "xgQQXg3hrtjh7AvZ", "an event id"),
    ("ending_before", "evt_", "an event id"),
])
async def test_a_bad_feed_attribute_is_a_400_that_states_the_feeds_own_rule(api, name: str, value: str, rule: str):
    body = assert_error(await api.get(EVENTS, params={name: value}), 400, name)
    assert body["message"].startswith(f"{name} must be {rule}"), body["message"]
    assert "order=activity" not in body["message"] and "another type" not in body["message"]


async def test_unknown_feed_attributes_and_bad_values_are_400s_naming_them(api):
    assert_error(await api.get(EVENTS, params={"kind": "x"}), 400, "kind")
    assert_error(await api.get(EVENTS, params={"type": "conversation.archived"}), 400, "type")
    assert_error(await api.get(EVENTS, params={"limit": 0}), 400, "limit")
    assert_error(await api.get(EVENTS, params={"starting_after": unique()}), 400, "starting_after")
