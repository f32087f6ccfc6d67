"""Optimistic concurrency: ETag on every response with one conversation, If-Match on writes."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service.settings import Settings
from tests.conftest import wait_for
from tests.stream_helpers import events_of


async def create(api) -> tuple[str, str]:
    response = await api.post("/v1/conversations", json={"contact_id": "c"})
    return response.json()["id"], response.headers["etag"]


async def test_responses_with_a_conversation_carry_its_version_as_etag(api):
    conversation_id, etag = await create(api)
    assert etag == '"1"'
    path = f"/v1/conversations/{conversation_id}"
    assert (await api.get(path)).headers["etag"] == '"1"'
    assert (await api.put(path, json={"is_muted": True})).headers["etag"] == '"2"'
    assert (await api.put(path, json={"is_muted": True})).headers["etag"] == '"2"'  # a no-op keeps it
    assert (await api.patch(path, json={"is_pinned": True})).headers["etag"] == '"3"'


async def test_a_write_with_the_current_etag_succeeds(api):
    conversation_id, etag = await create(api)
    path = f"/v1/conversations/{conversation_id}"
    updated = await api.put(path, json={"is_muted": True}, headers={"If-Match": etag})
    assert updated.status_code == 200
    assert (await api.delete(path, headers={"If-Match": updated.headers["etag"]})).status_code == 204


async def test_if_match_sent_as_several_header_lines_is_one_list(api):
    """RFC 9110 §5.3: repeated lines of a list header are one comma-separated list."""
    conversation_id, _ = await create(api)
    path = f"/v1/conversations/{conversation_id}"
    stale_then_current = [("If-Match", '"7"'), ("If-Match", '"1"')]
    assert (await api.put(path, json={"is_muted": True}, headers=stale_then_current)).status_code == 200
    only_stale = [("If-Match", '"1"'), ("If-Match", '"7"')]
    assert (await api.put(path, json={"is_muted": False}, headers=only_stale)).status_code == 412


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_a_stale_write_is_a_412_and_changes_nothing(api, method: str, db: asyncpg.Connection):
    conversation_id, stale = await create(api)
    path = f"/v1/conversations/{conversation_id}"
    await api.put(path, json={"is_pinned": True})  # someone else's change: now version 2
    response = await api.request(method, path, json={"is_muted": True} if method != "DELETE" else None,
                                 headers={"If-Match": stale})
    assert response.status_code == 412
    assert response.json() == {"type": "invalid_request", "message": response.json()["message"], "param": "If-Match"}
    assert '"2"' in response.json()["message"]
    row = await db.fetchrow("SELECT is_muted, version FROM conversations WHERE id = $1", conversation_id)
    assert tuple(row) == (False, 2)


@pytest.mark.parametrize(("header", "status"), [
    ('"1", "7"', 200),   # any of a list
    ("*", 200),          # any existing version
    ('W/"1"', 412),      # weak validators never match a write's precondition
    ("1", 412),          # not a quoted entity tag
    ('"abc"', 412),
])
async def test_if_match_lists_star_and_weak_tags(api, header: str, status: int):
    conversation_id, _ = await create(api)
    response = await api.put(f"/v1/conversations/{conversation_id}", json={"is_muted": True},
                             headers={"If-Match": header})
    assert response.status_code == status


async def test_if_match_on_a_missing_conversation_is_404(api):
    response = await api.put("/v1/conversations/AAAAAAAAAAAAAAAA", json={"is_muted": True},
                             headers={"If-Match": '"1"'})
    assert response.status_code == 404


async def test_a_stale_write_emits_no_event(api, settings: Settings, redis_client):
    conversation_id, stale = await create(api)
    path = f"/v1/conversations/{conversation_id}"
    await api.put(path, json={"is_pinned": True})
    await api.put(path, json={"is_muted": True}, headers={"If-Match": stale})
    await api.put(path, json={"last_opened_at": 5})
    await wait_for(lambda: _count(redis_client, settings.events_stream, conversation_id, 3))
    events = await events_of(redis_client, settings.events_stream, conversation_id)
    assert [e["sequence"] for e in events] == ["1", "2", "3"]


async def _count(redis, stream: str, conversation_id: str, expected: int) -> bool:
    return len(await events_of(redis, stream, conversation_id)) == expected


async def test_concurrent_conditional_writes_let_exactly_one_win(api):
    conversation_id, etag = await create(api)
    path = f"/v1/conversations/{conversation_id}"
    responses = await asyncio.gather(*(
        api.put(path, json={"pinned_message_id": f"m{n}"}, headers={"If-Match": etag}) for n in range(10)))
    assert sorted(r.status_code for r in responses) == [200] + [412] * 9


async def test_without_if_match_behaviour_is_unchanged(api):
    conversation_id, _ = await create(api)
    path = f"/v1/conversations/{conversation_id}"
    await api.put(path, json={"is_pinned": True})
    assert (await api.put(path, json={"is_muted": True})).status_code == 200


@pytest.mark.parametrize(("header", "status"), [
    ('"9223372036854775808"', 412),              # 2**63: one past the largest version PostgreSQL can hold
    ('"99999999999999999999"', 412),             # 20 digits
    ('"01"', 412),                               # strong comparison is by characters: "01" is not "1"
    ('"1", "9223372036854775808"', 200),         # the other tag of the list matches
    ('"18446744073709551616", "7"', 412),
])
async def test_a_version_no_conversation_can_have_is_a_412_never_a_500(api, header: str, status: int):
    conversation_id, _ = await create(api)
    for method in ("PATCH", "DELETE"):
        response = await api.request(method, f"/v1/conversations/{conversation_id}",
                                     json={"is_muted": True} if method == "PATCH" else None,
                                     headers={"If-Match": header})
        if status == 412:
            assert response.status_code == 412, response.text
            assert response.json()["param"] == "If-Match"
        else:
            assert response.status_code == (200 if method == "PATCH" else 204), response.text
            return
