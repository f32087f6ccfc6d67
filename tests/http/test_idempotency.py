"""Idempotency-Key on POST, PUT, PATCH and DELETE (the Stripe convention; README "Idempotency")."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import pytest

from service.settings import Settings
from tests.conftest import Account, wait_for
from tests.stream_helpers import entries, events_of, wait_for_entries


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_a_retried_create_replays_the_first_response_exactly_and_creates_nothing_more(
        api, settings: Settings, redis_client, db: asyncpg.Connection, account: Account):
    first = await api.post("/v1/conversations", json={"contact_id": "once"}, headers=key("create-1"))
    retry = await api.post("/v1/conversations", json={"contact_id": "once"}, headers=key("create-1"))
    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["etag"] == first.headers["etag"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE account_id = $1", account.id) == 1
    await wait_for_entries(redis_client, settings.events_stream, 1)
    marker = await api.post("/v1/conversations", json={"contact_id": "marker"})
    await wait_for_entries(redis_client, settings.events_stream, 2)
    assert [f["conversation_id"] for _, f in await entries(redis_client, settings.events_stream)] == [
        first.json()["id"], marker.json()["id"]]


async def test_a_retried_update_emits_no_second_event(api, settings: Settings, redis_client):
    created = (await api.post("/v1/conversations", json={"contact_id": "c"})).json()
    path = f"/v1/conversations/{created['id']}"
    first = await api.put(path, json={"last_opened_at": 10}, headers=key("update-1"))
    await api.put(path, json={"last_opened_at": 20})  # a later change by someone else
    retry = await api.put(path, json={"last_opened_at": 10}, headers=key("update-1"))
    assert retry.status_code == 200
    assert retry.json() == first.json()  # the stored answer, not the current state
    assert retry.json()["last_opened_at"] == 10
    await wait_for(lambda: _count(redis_client, settings.events_stream, created["id"], 3))
    await api.put(path, json={"is_pinned": True})
    await wait_for(lambda: _count(redis_client, settings.events_stream, created["id"], 4))
    assert [e["sequence"] for e in await events_of(redis_client, settings.events_stream, created["id"])] == [
        "1", "2", "3", "4"]


async def _count(redis, stream: str, conversation_id: str, expected: int) -> bool:
    return len(await events_of(redis, stream, conversation_id)) == expected


async def test_a_retried_delete_replays_204(api):
    created = (await api.post("/v1/conversations", json={"contact_id": "c"})).json()
    path = f"/v1/conversations/{created['id']}"
    first = await api.delete(path, headers=key("delete-1"))
    retry = await api.delete(path, headers=key("delete-1"))
    assert (first.status_code, retry.status_code) == (204, 204)
    assert retry.content == b""
    assert (await api.delete(path)).status_code == 404  # without the key it is a new request


async def test_outcomes_that_are_errors_are_replayed_too(api):
    await api.post("/v1/conversations", json={"contact_id": "taken"})
    first = await api.post("/v1/conversations", json={"contact_id": "taken"}, headers=key("conflict"))
    retry = await api.post("/v1/conversations", json={"contact_id": "taken"}, headers=key("conflict"))
    assert first.status_code == retry.status_code == 409
    assert retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true"


async def test_a_request_refused_by_validation_stores_nothing(api):
    refused = await api.post("/v1/conversations", json={"contact_id": ""}, headers=key("fix-me"))
    assert refused.status_code == 400
    fixed = await api.post("/v1/conversations", json={"contact_id": "fixed"}, headers=key("fix-me"))
    assert fixed.status_code == 201


@pytest.mark.parametrize(("method", "path_suffix", "body"), [
    ("POST", "", {"contact_id": "other"}),
    ("PUT", "/AAAAAAAAAAAAAAAA", {"is_muted": True}),
])
async def test_the_same_key_with_another_body_or_path_is_a_400_naming_the_header(
        api, method: str, path_suffix: str, body: dict):
    first = await api.post("/v1/conversations", json={"contact_id": "original"}, headers=key("reused"))
    assert first.status_code == 201
    response = await api.request(method, "/v1/conversations" + path_suffix, json=body, headers=key("reused"))
    assert response.status_code == 400
    assert response.json()["param"] == "Idempotency-Key"


async def test_keys_belong_to_one_account(api, other_api):
    mine = await api.post("/v1/conversations", json={"contact_id": "c"}, headers=key("shared-key"))
    theirs = await other_api.post("/v1/conversations", json={"contact_id": "c"}, headers=key("shared-key"))
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("bad", ["", "x" * 256, "has space", "tab\tin"])
async def test_a_malformed_key_is_a_400_naming_the_header(api, bad: str):
    response = await api.post("/v1/conversations", json={"contact_id": "c"}, headers={"Idempotency-Key": bad})
    assert response.status_code == 400
    assert response.json()["param"] == "Idempotency-Key"


async def test_concurrent_requests_with_one_key_run_once(api, account: Account, db: asyncpg.Connection):
    responses = await asyncio.gather(*(
        api.post("/v1/conversations", json={"contact_id": "raced"}, headers=key("race")) for _ in range(8)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE account_id = $1", account.id) == 1


async def test_a_retry_while_the_first_is_still_running_waits_then_gets_409(
        api, account: Account, database_url: str):
    """The first request's transaction holds the key; a retry waits up to 2 s for it, then 409s."""
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("INSERT INTO idempotency_keys (account_id, key, fingerprint) VALUES ($1, $2, $3)",
                                  account.id, "held", b"x")
            response = await api.post("/v1/conversations", json={"contact_id": "c"}, headers=key("held"))
            assert response.status_code == 409
            assert response.json()["param"] == "Idempotency-Key"
    finally:
        await blocker.close()


async def test_a_key_older_than_24_hours_is_forgotten(api, account: Account, db: asyncpg.Connection):
    first = await api.post("/v1/conversations", json={"contact_id": "old"}, headers=key("aging"))
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                     "WHERE account_id = $1 AND key = 'aging'", account.id)
    again = await api.post("/v1/conversations", json={"contact_id": "old"}, headers=key("aging"))
    assert again.status_code == 409  # executed anew: the conversation exists now
    assert json.loads(again.content)["conversation_id"] == first.json()["id"]


async def test_get_ignores_the_header(api):
    assert (await api.get("/v1/conversations", headers=key("not-for-reads"))).status_code == 200


async def test_the_stored_reply_commits_with_the_change(api, account: Account, db: asyncpg.Connection):
    created = await api.post("/v1/conversations", json={"contact_id": "atomic"}, headers=key("atomic"))
    stored = await db.fetchrow("SELECT status, body, location FROM idempotency_keys WHERE account_id = $1 "
                               "AND key = 'atomic'", account.id)
    assert (stored["status"], bytes(stored["body"]), stored["location"]) == (
        201, created.content, created.headers["location"])


async def test_the_outcome_is_the_same_over_a_real_server(api, account: Account):
    """The header is read from the raw ASGI scope: httpx sends it capitalised, servers lower-case it."""
    response = await api.post("/v1/conversations", json={"contact_id": "h"},
                               headers=httpx.Headers({"IDEMPOTENCY-KEY": "caps"}))
    retry = await api.post("/v1/conversations", json={"contact_id": "h"}, headers={"idempotency-key": "caps"})
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.content == response.content


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_a_keyed_write_that_waits_over_2_s_for_the_conversations_lock_is_a_503_and_stores_nothing(
        api, account: Account, database_url: str, method: str):
    created = (await api.post("/v1/conversations", json={"contact_id": "locked"})).json()
    path = f"/v1/conversations/{created['id']}"
    body = {"is_muted": True} if method == "PUT" else None
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():  # another writer holds the row for longer than the 2 s wait
            await blocker.execute("SELECT FROM conversations WHERE account_id = $1 AND id = $2 FOR UPDATE",
                                  account.id, created["id"])
            response = await api.request(method, path, json=body, headers=key("lock-wait"))
        assert response.status_code == 503, response.text
        assert response.json()["type"] == "api_error"
        assert response.headers["retry-after"].isdigit()
        assert await blocker.fetchval("SELECT count(*) FROM idempotency_keys WHERE account_id = $1 "
                                      "AND key = 'lock-wait'", account.id) == 0
    finally:
        await blocker.close()
    retry = await api.request(method, path, json=body, headers=key("lock-wait"))
    assert retry.status_code == (200 if method == "PUT" else 204), retry.text
    assert "idempotent-replayed" not in retry.headers
