"""docs/api.md §3, create: POST /v1/conversations with exactly one of contact_id / group_id."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest

from tests.http_helpers import (
    CONVERSATION_FIELDS,
    CONVERSATIONS,
    ENCODINGS,
    assert_error,
    create_conversation,
    encode,
    item,
    outbox_count,
    send,
    send_raw,
    stored_count,
    stored_row,
    unique,
)

PARTIES = ["contact_id", "group_id"]


async def test_create_is_201_with_a_location_header_pointing_at_the_new_id(api) -> None:
    response = await api.post(CONVERSATIONS, json={"contact_id": unique()})
    assert response.status_code == 201, response.text
    conversation = response.json()
    assert urlsplit(response.headers["location"]).path == item(conversation["id"])
    followed = await api.get(response.headers["location"])
    assert followed.status_code == 200, followed.text
    assert followed.json() == conversation


async def test_created_body_lists_the_fields_in_contract_order_with_defaults(api, account, db) -> None:
    contact = unique()
    before = int(time.time())
    response = await api.post(CONVERSATIONS, json={"contact_id": contact})
    after = int(time.time())
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    conversation = response.json()
    assert list(conversation) == CONVERSATION_FIELDS
    # The raw bytes too: the order is the wire's, not only the parsed dict's.
    positions = [response.text.index(f'"{field}"') for field in CONVERSATION_FIELDS]
    assert positions == sorted(positions)
    assert conversation == {
        "id": conversation["id"],
        "contact_id": contact,
        "group_id": None,
        "pinned_message_id": None,
        "is_pinned": False,
        "is_muted": False,
        "last_active_at": None,
        "last_opened_at": None,
        "created_at": conversation["created_at"],
        "archived_at": None,
    }
    assert isinstance(conversation["created_at"], int)
    assert before - 1 <= conversation["created_at"] <= after + 1
    row = await stored_row(db, account.id, conversation["id"])
    assert row is not None
    assert {field: row[field] for field in CONVERSATION_FIELDS} == conversation


async def test_create_with_group_id_makes_a_group_conversation(api) -> None:
    group = unique("group")
    conversation = await create_conversation(api, group_id=group)
    assert list(conversation) == CONVERSATION_FIELDS
    assert conversation["group_id"] == group
    assert conversation["contact_id"] is None
    assert conversation["is_pinned"] is False
    assert conversation["is_muted"] is False
    assert conversation["last_active_at"] is None
    assert conversation["last_opened_at"] is None
    assert conversation["archived_at"] is None


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("party", PARTIES)
async def test_create_accepts_json_and_form_bodies(api, encoding, party) -> None:
    party_id = unique(party)
    response = await send(api, "POST", CONVERSATIONS, {party: party_id}, encoding)
    assert response.status_code == 201, response.text
    assert response.json()[party] == party_id


async def test_seed_curl_form_body_creates_a_conversation(api) -> None:
    # curl https://.../v1/conversations -d 'contact_id'="WAz8eIbvDR60rouK" sends exactly this.
    contact = unique()
    response = await send_raw(api, "POST", CONVERSATIONS, f"contact_id={contact}",
                              "application/x-www-form-urlencoded")
    assert response.status_code == 201, response.text
    assert response.json()["contact_id"] == contact


@pytest.mark.parametrize("foreign_id", ["a", "a" * 64, "A-z_09", "-", "_", "WAz8eIbvDR60rouK"])
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_foreign_ids_of_1_to_64_allowed_characters_are_accepted(api, account, foreign_id, encoding) -> None:
    response = await send(api, "POST", CONVERSATIONS, {"contact_id": foreign_id}, encoding)
    assert response.status_code == 201, response.text
    assert response.json()["contact_id"] == foreign_id


@pytest.mark.parametrize(("body", "encoding"), [
    ({"contact_id": "c1", "group_id": None}, "json"),
    ({"contact_id": None, "group_id": "g1"}, "json"),
    ({"contact_id": "c1", "group_id": ""}, "form"),
    ({"contact_id": "", "group_id": "g1"}, "form"),
])
async def test_the_other_party_may_be_given_as_null(api, body, encoding) -> None:
    response = await send(api, "POST", CONVERSATIONS, body, encoding)
    assert response.status_code == 201, response.text
    conversation = response.json()
    assert {k: conversation[k] for k in PARTIES} == {k: v or None for k, v in body.items()}


@pytest.mark.parametrize(("body", "encoding"), [
    ({}, "json"),
    ({"contact_id": None}, "json"),
    ({"group_id": None}, "json"),
    ({"contact_id": None, "group_id": None}, "json"),
    ({"contact_id": "c1", "group_id": "g1"}, "json"),
    ({"contact_id": "", "group_id": ""}, "form"),
    ({"contact_id": ""}, "form"),
    ({"contact_id": "c1", "group_id": "g1"}, "form"),
])
async def test_create_needs_exactly_one_of_contact_id_and_group_id(api, account, db, body, encoding) -> None:
    response = await send(api, "POST", CONVERSATIONS, body, encoding)
    error = assert_error(response, 400)
    assert error["param"] in PARTIES
    assert await stored_count(db, account.id) == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
async def test_create_with_an_empty_body_is_400_naming_the_missing_party(api, content_type) -> None:
    response = await send_raw(api, "POST", CONVERSATIONS, b"", content_type)
    error = assert_error(response, 400)
    assert error["param"] in PARTIES


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_second_conversation_with_same_contact_is_409_naming_the_existing_one(api, account, db,
                                                                                    encoding) -> None:
    contact = unique()
    existing = await create_conversation(api, contact_id=contact)
    response = await send(api, "POST", CONVERSATIONS, {"contact_id": contact}, encoding)
    error = assert_error(response, 409, "contact_id")
    assert error["conversation_id"] == existing["id"]
    assert await stored_count(db, account.id) == 1


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_second_conversation_with_same_group_is_409_naming_the_existing_one(api, account, db,
                                                                                  encoding) -> None:
    group = unique("group")
    existing = await create_conversation(api, group_id=group)
    response = await send(api, "POST", CONVERSATIONS, {"group_id": group}, encoding)
    error = assert_error(response, 409, "group_id")
    assert error["conversation_id"] == existing["id"]
    assert await stored_count(db, account.id) == 1


async def test_a_contact_id_equal_to_a_group_id_is_not_a_conflict(api) -> None:
    shared = unique("party")
    await create_conversation(api, contact_id=shared)
    response = await api.post(CONVERSATIONS, json={"group_id": shared})
    assert response.status_code == 201, response.text


async def test_after_delete_the_same_contact_can_be_created_again(api) -> None:
    contact = unique()
    first = await create_conversation(api, contact_id=contact)
    assert (await api.delete(item(first["id"]))).status_code == 204
    second = await create_conversation(api, contact_id=contact)
    assert second["id"] != first["id"]


@pytest.mark.parametrize("party", PARTIES)
async def test_the_same_contact_in_another_account_is_fine(api, other_api, party) -> None:
    party_id = unique(party)
    mine = await create_conversation(api, **{party: party_id})
    theirs = await create_conversation(other_api, **{party: party_id})
    assert mine["id"] != theirs["id"]
    assert mine[party] == theirs[party] == party_id


MALFORMED_JSON_IDS = [
    "",
    "a" * 65,
    "a b",
    " abc",
    "abc\n",
    "abc\r\n",
    "\nabc",
    "a\x00b",
    "caf\u00e9",
    "\u0661\u0662",  # Arabic-Indic digits: digits to Unicode, not to the contract
    "a.b",
    "a/b",
    "a+b",
    123,
    0,
    1.5,
    True,
    False,
    [],
    ["abc"],
    {},
    {"id": "abc"},
]


@pytest.mark.parametrize("value", MALFORMED_JSON_IDS, ids=repr)
@pytest.mark.parametrize("party", PARTIES)
async def test_malformed_foreign_ids_in_json_are_400_naming_the_field(api, account, db, party, value) -> None:
    response = await send(api, "POST", CONVERSATIONS, {party: value}, "json")
    assert_error(response, 400, party)
    assert await stored_count(db, account.id) == 0


MALFORMED_FORM_IDS = ["a" * 65, "a b", "abc\n", "abc\r", "a\x00b", "caf\u00e9", "a.b", "a/b", "\t"]


@pytest.mark.parametrize("value", MALFORMED_FORM_IDS, ids=repr)
@pytest.mark.parametrize("party", PARTIES)
async def test_malformed_foreign_ids_in_form_are_400_naming_the_field(api, account, db, party, value) -> None:
    response = await send(api, "POST", CONVERSATIONS, {party: value}, "form")
    assert_error(response, 400, party)
    assert await stored_count(db, account.id) == 0


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("attribute", ["contactid", "contact", "is_muted", "is_pinned", "archived_at", "id",
                                       "created_at", "account_id"])
async def test_unknown_attribute_on_create_is_400_naming_it(api, account, db, encoding, attribute) -> None:
    body = {"contact_id": unique(), attribute: True if attribute.startswith("is_") else "x"}
    response = await send(api, "POST", CONVERSATIONS, body, encoding)
    assert_error(response, 400, attribute)
    assert await stored_count(db, account.id) == 0


@pytest.mark.parametrize("query", ["contact_id=abc", "foo=bar", "limit=10", "expand=contact"])
async def test_query_attributes_on_post_are_400_naming_them(api, account, db, query) -> None:
    content, headers = encode({"contact_id": unique()}, "json")
    response = await api.post(f"{CONVERSATIONS}?{query}", content=content, headers=headers)
    assert_error(response, 400, query.partition("=")[0])
    assert await stored_count(db, account.id) == 0


@pytest.mark.parametrize("body", [
    '{"contact_id": "abc"',
    '{"contact_id": abc}',
    "[]",
    '["contact_id", "abc"]',
    '"abc"',
    "null",
    "42",
    "{'contact_id': 'abc'}",
    '{"contact_id": "abc"} {}',
])
async def test_create_with_a_body_that_is_not_a_json_object_is_400(api, account, db, body) -> None:
    response = await send_raw(api, "POST", CONVERSATIONS, body)
    assert_error(response, 400)
    assert await stored_count(db, account.id) == 0


async def test_nothing_is_stored_when_a_create_is_rejected(api, account, db) -> None:
    contact = unique()
    rejected = [
        await send(api, "POST", CONVERSATIONS, {}, "json"),
        await send(api, "POST", CONVERSATIONS, {"contact_id": contact, "group_id": unique("group")}, "json"),
        await send(api, "POST", CONVERSATIONS, {"contact_id": contact + " "}, "json"),
        await send(api, "POST", CONVERSATIONS, {"contact_id": contact, "is_muted": True}, "json"),
        await send(api, "POST", CONVERSATIONS, {"contact_id": contact, "is_mute": "true"}, "form"),
        await send_raw(api, "POST", CONVERSATIONS, json.dumps({"contact_id": contact}), "text/plain"),
        await api.post(f"{CONVERSATIONS}?x=1", json={"contact_id": contact}),
    ]
    assert [r.status_code // 100 for r in rejected] == [4] * len(rejected), [r.text for r in rejected]
    assert await stored_count(db, account.id) == 0
    assert await outbox_count(db, account.id) == 0
    # And the contact is still free: the rejected calls reserved nothing.
    assert (await create_conversation(api, contact_id=contact))["contact_id"] == contact


async def test_a_409_stores_nothing_and_leaves_the_existing_conversation_unchanged(api, account, db) -> None:
    contact = unique()
    existing = await create_conversation(api, contact_id=contact)
    before = await stored_row(db, account.id, existing["id"])
    response = await api.post(CONVERSATIONS, json={"contact_id": contact})
    assert_error(response, 409, "contact_id")
    assert await stored_count(db, account.id) == 1
    assert await stored_row(db, account.id, existing["id"]) == before
