"""docs/api.md §3-4: one account never sees, changes or learns about another account's conversations."""

from __future__ import annotations

from typing import Any

import pytest

from tests.http_helpers import (
    CONVERSATIONS,
    after_millisecond_of,
    assert_error,
    create_conversation,
    item,
    listed_ids,
    send,
    stored_row,
    unique,
    unknown_id,
)

WRITE_BODIES: dict[str, dict[str, Any] | None] = {
    "GET": None,
    "PUT": {"is_muted": True, "archived_at": 1},
    "PATCH": {"pinned_message_id": "msg_1"},
    "DELETE": None,
}


def without_id(body: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    return {key: value.replace(conversation_id, "<id>") if isinstance(value, str) else value
            for key, value in body.items()}


@pytest.mark.parametrize("method", list(WRITE_BODIES))
async def test_another_accounts_conversation_is_the_same_404_as_a_nonexistent_one(api, other_api, method) -> None:
    theirs = await create_conversation(other_api)
    await create_conversation(api)
    missing = unknown_id()
    cross = await send(api, method, item(theirs["id"]), WRITE_BODIES[method])
    absent = await send(api, method, item(missing), WRITE_BODIES[method])
    cross_body = assert_error(cross, 404)
    absent_body = assert_error(absent, 404)
    assert without_id(cross_body, theirs["id"]) == without_id(absent_body, missing)
    assert cross_body["param"] == absent_body["param"]
    assert cross.headers.get("content-type") == absent.headers.get("content-type")
    assert sorted(cross.headers) == sorted(absent.headers)
    # Nothing of theirs leaks into the body.
    for value in (theirs["contact_id"], str(theirs["created_at"])):
        assert value not in cross.text


async def test_another_accounts_conversation_is_404_with_any_body_and_encoding(api, other_api) -> None:
    theirs = await create_conversation(other_api)
    cases = [(body, encoding) for encoding in ("json", "form")
             for body in ({}, {"is_pinned": True}, {"pinned_message_id": None}, {"archived_at": None})]
    cases.append(({"last_active_at": 5}, "json"))
    for body, encoding in cases:
        response = await send(api, "PUT", item(theirs["id"]), body, encoding)
        assert_error(response, 404)


async def test_another_accounts_conversation_never_appears_in_the_list(api, other_api) -> None:
    contact, group = unique(), unique("group")
    theirs = [await create_conversation(other_api, contact_id=contact),
              await create_conversation(other_api, group_id=group)]
    mine = await create_conversation(api)
    their_ids = {c["id"] for c in theirs}
    assert await listed_ids(api) == [mine["id"]]
    for params in ({"contact_id": contact}, {"group_id": group}, {"muted": "false"}, {"pinned": "false"},
                   {"archived": "false"}, {"limit": 1}):
        response = await api.get(CONVERSATIONS, params=params)
        assert response.status_code == 200, response.text
        assert not their_ids & {c["id"] for c in response.json()["data"]}, params
    response = await api.get(CONVERSATIONS, params={"contact_id": contact})
    assert response.json() == {"has_more": False, "data": []}
    response = await api.get(CONVERSATIONS, params={"group_id": group})
    assert response.json() == {"has_more": False, "data": []}


async def test_a_new_account_sees_an_empty_list(api, other_api) -> None:
    await create_conversation(other_api)
    response = await api.get(CONVERSATIONS)
    assert response.status_code == 200, response.text
    assert response.json() == {"has_more": False, "data": []}


async def test_another_accounts_id_as_a_cursor_is_only_a_position(api, other_api) -> None:
    older = await create_conversation(api)
    await after_millisecond_of(older["id"])
    theirs = await create_conversation(other_api)
    await after_millisecond_of(theirs["id"])
    newer = await create_conversation(api)
    assert older["id"] < theirs["id"] < newer["id"]

    after = await api.get(CONVERSATIONS, params={"starting_after": theirs["id"]})
    assert after.status_code == 200, after.text
    assert after.json() == {"has_more": False, "data": [older]}

    before = await api.get(CONVERSATIONS, params={"ending_before": theirs["id"]})
    assert before.status_code == 200, before.text
    assert before.json() == {"has_more": False, "data": [newer]}

    for response in (after, before):
        assert theirs["id"] not in response.text
        assert theirs["contact_id"] not in response.text


async def test_a_cursor_from_another_account_with_a_filter_leaks_nothing(api, other_api) -> None:
    contact = unique()
    theirs = await create_conversation(other_api, contact_id=contact)
    for cursor in ("starting_after", "ending_before"):
        response = await api.get(CONVERSATIONS, params={cursor: theirs["id"], "contact_id": contact})
        assert response.status_code == 200, response.text
        assert response.json() == {"has_more": False, "data": []}


@pytest.mark.parametrize("party", ["contact_id", "group_id"])
async def test_the_same_contact_may_exist_in_both_accounts(api, other_api, account, other_account, db,
                                                           party) -> None:
    party_id = unique(party)
    mine = await create_conversation(api, **{party: party_id})
    theirs = await create_conversation(other_api, **{party: party_id})
    assert (await stored_row(db, account.id, mine["id"]))[party] == party_id
    assert (await stored_row(db, other_account.id, theirs["id"]))[party] == party_id
    assert await listed_ids(api, {party: party_id}) == [mine["id"]]
    assert await listed_ids(other_api, {party: party_id}) == [theirs["id"]]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_a_failed_cross_account_write_leaves_the_row_unchanged(api, other_api, other_account, db,
                                                                     method) -> None:
    theirs = await create_conversation(other_api)
    before = await stored_row(db, other_account.id, theirs["id"])
    response = await send(api, method, item(theirs["id"]), WRITE_BODIES[method])
    assert_error(response, 404)
    assert await stored_row(db, other_account.id, theirs["id"]) == before
    assert (await other_api.get(item(theirs["id"]))).json() == theirs
    # No event either: the only outbox row for it (if not yet published) is its create.
    types = await db.fetch("SELECT type FROM conversation_outbox WHERE conversation_id = $1", theirs["id"])
    assert {row["type"] for row in types} <= {"conversation.created"}


@pytest.mark.parametrize("party", ["contact_id", "group_id"])
async def test_a_conflict_names_the_accounts_own_conversation_never_another_accounts(
        api, other_api, party) -> None:
    """Both accounts hold a conversation with the same party, and each creates it again: each 409
    names its own. A lookup of the holder that forgot the account would name the same one twice."""
    party_id = unique(party)
    theirs_before = await create_conversation(other_api, **{party: party_id})
    mine = await create_conversation(api, **{party: party_id})
    for client, own, foreign in ((api, mine, theirs_before), (other_api, theirs_before, mine)):
        response = await client.post(CONVERSATIONS, json={party: party_id})
        body = assert_error(response, 409, party)
        assert body["conversation_id"] == own["id"]
        assert foreign["id"] not in response.text
