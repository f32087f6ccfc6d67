"""docs/api.md §6: every create, effective update and delete puts exactly one event on the stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import asyncpg
import httpx
import redis.asyncio as aioredis

from service.ids import ID_PATTERN, decode_millis
from service.model import STREAM_FIELDS, decode_entry
from service.settings import Settings
from tests.conftest import Account, wait_for
from tests.stream_helpers import entries, events_of, wait_for_entries

COMMON_FIELDS = [field for field in STREAM_FIELDS if field != "previous_attributes"]


async def create(api: httpx.AsyncClient, contact_id: str = "WAz8eIbvDR60rouK") -> httpx.Response:
    response = await api.post("/v1/conversations", json={"contact_id": contact_id})
    assert response.status_code == 201, response.text
    return response


async def conversation_events(redis: aioredis.Redis, stream: str, conversation_id: str, count: int
                              ) -> list[dict[str, str]]:
    async def enough() -> list[dict[str, str]] | None:
        found = await events_of(redis, stream, conversation_id)
        return found if len(found) >= count else None

    return await wait_for(enough)


async def test_create_emits_one_created_event_with_every_field(api, account: Account, settings: Settings,
                                                                redis_client):
    response = await create(api)
    body = response.json()
    [event] = await conversation_events(redis_client, settings.events_stream, body["id"], 1)
    assert list(event) == COMMON_FIELDS
    assert event["id"].startswith("evt_") and ID_PATTERN.fullmatch(event["id"][4:])
    assert event["type"] == "conversation.created"
    assert event["account_id"] == account.id
    assert event["conversation_id"] == body["id"]
    assert event["occurred_at"] == str(body["created_at"])
    assert event["sequence"] == "1"
    assert event["schema_version"] == "1"
    assert event["data"].encode() == response.content


async def test_update_emits_updated_event_with_data_and_previous_attributes(api, settings: Settings, redis_client):
    conversation = (await create(api)).json()
    await api.put(f"/v1/conversations/{conversation['id']}", json={"last_active_at": 100, "is_pinned": True})
    before = time.time()
    response = await api.patch(f"/v1/conversations/{conversation['id']}",
                               json={"is_muted": True, "last_active_at": 200, "is_pinned": True})
    assert response.status_code == 200
    events = await conversation_events(redis_client, settings.events_stream, conversation["id"], 3)
    event = events[2]
    assert list(event) == list(STREAM_FIELDS)
    assert event["type"] == "conversation.updated"
    assert event["sequence"] == "3"
    assert event["data"].encode() == response.content
    assert json.loads(event["previous_attributes"]) == {"is_muted": False, "last_active_at": 100}
    assert list(json.loads(event["previous_attributes"])) == ["is_muted", "last_active_at"]
    assert int(before) - 1 <= int(event["occurred_at"]) <= time.time() + 1


async def test_clearing_a_field_records_its_old_value(api, settings: Settings, redis_client):
    conversation = (await create(api)).json()
    await api.put(f"/v1/conversations/{conversation['id']}", json={"pinned_message_id": "msg_1"})
    await api.put(f"/v1/conversations/{conversation['id']}", json={"pinned_message_id": None})
    events = await conversation_events(redis_client, settings.events_stream, conversation["id"], 3)
    assert json.loads(events[1]["previous_attributes"]) == {"pinned_message_id": None}
    assert json.loads(events[2]["previous_attributes"]) == {"pinned_message_id": "msg_1"}
    assert json.loads(events[2]["data"])["pinned_message_id"] is None


async def test_delete_emits_deleted_event_with_the_last_state(api, settings: Settings, redis_client):
    conversation = (await create(api)).json()
    updated = await api.put(f"/v1/conversations/{conversation['id']}", json={"archived_at": 1700000000})
    assert (await api.delete(f"/v1/conversations/{conversation['id']}")).status_code == 204
    events = await conversation_events(redis_client, settings.events_stream, conversation["id"], 3)
    deleted = events[2]
    assert list(deleted) == COMMON_FIELDS
    assert deleted["type"] == "conversation.deleted"
    assert deleted["sequence"] == "3"
    assert deleted["data"].encode() == updated.content


async def test_update_that_changes_nothing_emits_no_event_and_keeps_the_sequence(api, settings: Settings,
                                                                                  redis_client):
    conversation = (await create(api)).json()
    path = f"/v1/conversations/{conversation['id']}"
    await api.put(path, json={"last_opened_at": 500})
    for no_op in ({}, {"is_muted": False}, {"last_opened_at": 400}, {"last_opened_at": 500}):
        assert (await api.put(path, json=no_op)).status_code == 200
    await api.put(path, json={"is_pinned": True})
    # The last update's event comes after any event the no-ops could have written.
    events = await conversation_events(redis_client, settings.events_stream, conversation["id"], 3)
    assert [e["sequence"] for e in await events_of(redis_client, settings.events_stream, conversation["id"])] == [
        "1", "2", "3"]
    assert json.loads(events[2]["previous_attributes"]) == {"is_pinned": False}


async def test_failed_requests_emit_no_event(api, other_api, settings: Settings, redis_client,
                                             db: asyncpg.Connection):
    conversation = (await create(api, "contact_a")).json()
    path = f"/v1/conversations/{conversation['id']}"
    failures = [
        await api.post("/v1/conversations", json={"contact_id": "contact_a"}),  # 409
        await api.post("/v1/conversations", json={}),  # 400
        await api.put(path, json={"is_muted": "yes"}),  # 400
        await api.put("/v1/conversations/AAAAAAAAAAAAAAAA", json={"is_muted": True}),  # 404
        await api.delete("/v1/conversations/AAAAAAAAAAAAAAAA"),  # 404
        await other_api.put(path, json={"is_muted": True}),  # 404: another account's
        await other_api.delete(path),  # 404: another account's
    ]
    assert [r.status_code for r in failures] == [409, 400, 400, 404, 404, 404, 404]
    marker = (await create(api, "contact_b")).json()
    await conversation_events(redis_client, settings.events_stream, marker["id"], 1)
    found = await entries(redis_client, settings.events_stream)
    assert [fields["conversation_id"] for _, fields in found] == [conversation["id"], marker["id"]]
    # The marker's row leaves the outbox just after its XADD; nothing else may be left behind.
    await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM conversation_outbox WHERE stream = $1",
                                       settings.events_stream))


async def test_event_ids_are_time_ordered_with_the_evt_prefix(api, settings: Settings, redis_client):
    before = int(time.time() * 1000)
    conversation = (await create(api)).json()
    [event] = await conversation_events(redis_client, settings.events_stream, conversation["id"], 1)
    millis = decode_millis(event["id"][4:])
    assert before - 1000 <= millis <= int(time.time() * 1000) + 1000
    assert event["id"][4:12] == conversation["id"][:8]  # one clock, one transaction


async def test_update_and_delete_event_ids_are_time_ordered_with_the_evt_prefix(api, settings: Settings,
                                                                                redis_client):
    conversation = (await create(api)).json()
    before = int(time.time() * 1000)
    await api.put(f"/v1/conversations/{conversation['id']}", json={"is_muted": True})
    await api.delete(f"/v1/conversations/{conversation['id']}")
    after = int(time.time() * 1000)
    events = await conversation_events(redis_client, settings.events_stream, conversation["id"], 3)
    for event in events[1:]:
        assert event["id"].startswith("evt_") and ID_PATTERN.fullmatch(event["id"][4:])
        assert before - 1000 <= decode_millis(event["id"][4:]) <= after + 1000
    assert len({event["id"] for event in events}) == 3


async def test_published_rows_leave_the_outbox(api, settings: Settings, redis_client, db: asyncpg.Connection):
    for n in range(5):
        await create(api, f"contact_{n}")
    await wait_for_entries(redis_client, settings.events_stream, 5)
    await wait_for(lambda: db.fetchval("SELECT count(*) = 0 FROM conversation_outbox WHERE stream = $1",
                                       settings.events_stream))


async def test_every_entry_decodes_as_a_conversation_event(api, settings: Settings, redis_client):
    conversation = (await create(api)).json()
    await api.put(f"/v1/conversations/{conversation['id']}", json={"is_muted": True})
    await api.delete(f"/v1/conversations/{conversation['id']}")
    found = await wait_for_entries(redis_client, settings.events_stream, 3)
    decoded = [decode_entry(fields) for _, fields in found]
    assert [e.type for e in decoded] == ["conversation.created", "conversation.updated", "conversation.deleted"]
    assert [e.sequence for e in decoded] == [1, 2, 3]
    assert decoded[1].previous_attributes.is_muted is False


async def test_a_write_that_fails_after_its_outbox_insert_leaves_neither_change_nor_event(
        api, account: Account, settings: Settings, redis_client, db: asyncpg.Connection):
    """Atomicity: a trigger on the outbox makes the statement fail after the event row is inserted."""
    conversation = (await create(api)).json()
    path = f"/v1/conversations/{conversation['id']}"
    function = f"fail_outbox_{account.id}"
    await db.execute(f"""
        CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.account_id = '{account.id}' AND NEW.type <> 'conversation.created' THEN
                RAISE EXCEPTION 'injected failure after the outbox insert';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {function} AFTER INSERT ON conversation_outbox
            FOR EACH ROW EXECUTE FUNCTION {function}();
    """)
    try:
        update = await api.put(path, json={"is_muted": True, "last_opened_at": 9})
        delete = await api.delete(path)
    finally:
        await db.execute(f"DROP TRIGGER {function} ON conversation_outbox; DROP FUNCTION {function}();")
    assert update.status_code == 500 and delete.status_code == 500
    for failed in (update, delete):
        assert failed.json() == {"type": "api_error", "message": failed.json()["message"], "param": None}
        assert "injected" not in failed.text and "Traceback" not in failed.text
    stored = await db.fetchrow("SELECT is_muted, last_opened_at, version FROM conversations WHERE id = $1",
                               conversation["id"])
    assert tuple(stored) == (False, None, 1)
    marker = (await create(api, "marker")).json()
    await conversation_events(redis_client, settings.events_stream, marker["id"], 1)
    assert [e["type"] for e in await events_of(redis_client, settings.events_stream, conversation["id"])] == [
        "conversation.created"]


async def test_concurrent_updates_yield_events_in_commit_order(api, settings: Settings, redis_client,
                                                              db: asyncpg.Connection):
    conversation = (await create(api)).json()
    path = f"/v1/conversations/{conversation['id']}"
    writers = 24
    responses = await asyncio.gather(*(
        api.put(path, json={"pinned_message_id": f"msg_{n}", "last_active_at": 1000 + n}) for n in range(writers)))
    assert all(r.status_code == 200 for r in responses)
    events = await conversation_events(redis_client, settings.events_stream, conversation["id"], writers + 1)
    assert [int(e["sequence"]) for e in events] == list(range(1, writers + 2))
    for earlier, later in itertools.pairwise(events):
        previous = json.loads(later["previous_attributes"])
        earlier_data = json.loads(earlier["data"])
        assert previous, "every concurrent update changed pinned_message_id"
        assert all(earlier_data[field] == value for field, value in previous.items())
    final = await db.fetchrow("SELECT pinned_message_id, last_active_at, version FROM conversations WHERE id = $1",
                              conversation["id"])
    last = json.loads(events[-1]["data"])
    assert (final["pinned_message_id"], final["last_active_at"], final["version"]) == (
        last["pinned_message_id"], last["last_active_at"], writers + 1)
    assert last["last_active_at"] == 1000 + writers - 1  # forward-only: the highest value wins
