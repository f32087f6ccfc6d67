"""docs/api.md §3, update: PUT (and PATCH) /v1/conversations/{id}, a strictly typed partial update."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.http_helpers import (
    CONVERSATION_FIELDS,
    ENCODINGS,
    MAX_TIMESTAMP,
    assert_error,
    create_conversation,
    item,
    retrieve,
    send,
    send_raw,
    stored_row,
    unique,
    unknown_id,
)

METHODS = ["PUT", "PATCH"]
FORWARD_ONLY = ["last_opened_at", "last_active_at"]
TIMESTAMPS = ["archived_at", "last_opened_at", "last_active_at"]
BOOLEANS = ["is_pinned", "is_muted"]
FORM = "application/x-www-form-urlencoded"


async def update(api, conversation_id: str, body: dict[str, Any], encoding: str = "json",
                 method: str = "PUT") -> dict[str, Any]:
    response = await send(api, method, item(conversation_id), body, encoding)
    assert response.status_code == 200, response.text
    conversation = response.json()
    assert list(conversation) == CONVERSATION_FIELDS
    return conversation


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {field: after[field] for field in CONVERSATION_FIELDS if after[field] != before[field]}


@pytest.mark.parametrize("method", METHODS)
async def test_put_and_patch_are_the_same_partial_update(api, method) -> None:
    created = await create_conversation(api)
    response = await api.request(method, item(created["id"]), json={"is_muted": True})
    assert response.status_code == 200, response.text
    assert response.json() == {**created, "is_muted": True}
    assert await retrieve(api, created["id"]) == response.json()


async def test_put_and_patch_give_identical_results_for_the_same_body(api) -> None:
    body = {"is_pinned": True, "pinned_message_id": "msg_1", "last_active_at": 705103200, "archived_at": 1}
    by_put = await update(api, (await create_conversation(api))["id"], body, method="PUT")
    by_patch = await update(api, (await create_conversation(api))["id"], body, method="PATCH")
    assert {k: v for k, v in by_put.items() if k in body} == body
    assert {k: v for k, v in by_patch.items() if k in body} == body


ALL_FIELDS = {"pinned_message_id": "msg_42", "is_pinned": True, "is_muted": True, "archived_at": 692233200,
              "last_opened_at": 705103200, "last_active_at": 705103201}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_update_accepts_json_and_form_bodies(api, encoding, method) -> None:
    created = await create_conversation(api)
    updated = await update(api, created["id"], ALL_FIELDS, encoding, method)
    assert updated == {**created, **ALL_FIELDS}
    assert await retrieve(api, created["id"]) == updated


async def test_seed_curl_put_with_a_form_body_mutes(api) -> None:
    # curl -X PUT https://.../v1/conversations/xgQQXg3hrtjh7AvZ -d 'is_muted'=true sends exactly this.
    created = await create_conversation(api)
    response = await send_raw(api, "PUT", item(created["id"]), "is_muted=true", FORM)
    assert response.status_code == 200, response.text
    assert response.json() == {**created, "is_muted": True}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("field", "value"), list(ALL_FIELDS.items()))
async def test_only_given_fields_change(api, account, db, encoding, field, value) -> None:
    created = await create_conversation(api)
    base = {"pinned_message_id": "msg_1", "is_pinned": False, "is_muted": False, "archived_at": 100,
            "last_opened_at": 100, "last_active_at": 100}
    before = await update(api, created["id"], base)
    after = await update(api, created["id"], {field: value}, encoding)
    assert changed(before, after) == {field: value}
    row = await stored_row(db, account.id, created["id"])
    assert {f: row[f] for f in CONVERSATION_FIELDS} == after


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("field", ["pinned_message_id", "archived_at"])
async def test_null_clears_pinned_message_id_and_archived_at(api, encoding, field) -> None:
    created = await create_conversation(api)
    before = await update(api, created["id"], {"pinned_message_id": "msg_1", "archived_at": 705103200})
    # JSON null, or in form data an empty value (-d pinned_message_id=)
    after = await update(api, created["id"], {field: None}, encoding)
    assert after == {**before, field: None}
    assert (await retrieve(api, created["id"]))[field] is None


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("field", FORWARD_ONLY)
async def test_a_lower_value_of_last_opened_at_or_last_active_at_is_ignored(api, account, db, encoding,
                                                                           field) -> None:
    created = await create_conversation(api)
    before = await update(api, created["id"], {field: 705103200})
    version = (await stored_row(db, account.id, created["id"]))["version"]
    for lower in (705103199, 1, 0):
        response = await send(api, "PUT", item(created["id"]), {field: lower}, encoding)
        assert response.status_code == 200, response.text
        assert response.json() == before
    assert await retrieve(api, created["id"]) == before
    assert (await stored_row(db, account.id, created["id"]))["version"] == version


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("field", FORWARD_ONLY)
async def test_last_opened_at_and_last_active_at_move_forward(api, encoding, field) -> None:
    created = await create_conversation(api)
    assert (await update(api, created["id"], {field: 0}, encoding))[field] == 0
    assert (await update(api, created["id"], {field: 705103200}, encoding))[field] == 705103200
    assert (await update(api, created["id"], {field: 705103201}, encoding))[field] == 705103201
    assert (await update(api, created["id"], {field: MAX_TIMESTAMP}, encoding))[field] == MAX_TIMESTAMP


async def test_a_lower_value_is_ignored_while_other_fields_of_the_same_body_apply(api) -> None:
    created = await create_conversation(api)
    before = await update(api, created["id"], {"last_active_at": 2000, "last_opened_at": 2000})
    after = await update(api, created["id"], {"last_active_at": 1000, "last_opened_at": 3000, "is_muted": True})
    assert after == {**before, "last_opened_at": 3000, "is_muted": True}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("field", FORWARD_ONLY)
async def test_null_clears_last_opened_at_and_last_active_at(api, encoding, field) -> None:
    created = await create_conversation(api)
    before = await update(api, created["id"], {"last_opened_at": 705103200, "last_active_at": 705103200})
    after = await update(api, created["id"], {field: None}, encoding)
    assert after == {**before, field: None}
    # Once cleared, any value moves it again (even one below the old value).
    assert (await update(api, created["id"], {field: 5}))[field] == 5


@pytest.mark.parametrize("archived_at", [None, 705103200])
async def test_advancing_last_active_at_never_changes_archived_at(api, archived_at) -> None:
    created = await create_conversation(api)
    await update(api, created["id"], {"archived_at": archived_at, "last_active_at": 705103000})
    for later in (705103200, 705103300, MAX_TIMESTAMP):
        after = await update(api, created["id"], {"last_active_at": later})
        assert after["last_active_at"] == later
        assert after["archived_at"] == archived_at
    assert (await retrieve(api, created["id"]))["archived_at"] == archived_at


@pytest.mark.parametrize(("content", "content_type"), [
    (b"", None),
    (b"", "application/json"),
    (b"", FORM),
    (b"{}", "application/json"),
])
async def test_empty_body_returns_200_with_the_unchanged_conversation(api, account, db, content,
                                                                      content_type) -> None:
    created = await create_conversation(api)
    before = await update(api, created["id"], {"is_muted": True, "last_active_at": 50})
    row = await stored_row(db, account.id, created["id"])
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await api.put(item(created["id"]), content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == before
    assert await stored_row(db, account.id, created["id"]) == row


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_equal_values_return_200_with_the_unchanged_conversation(api, account, db, encoding) -> None:
    created = await create_conversation(api)
    before = await update(api, created["id"], ALL_FIELDS)
    row = await stored_row(db, account.id, created["id"])
    response = await send(api, "PUT", item(created["id"]), ALL_FIELDS, encoding)
    assert response.status_code == 200, response.text
    assert response.json() == before
    # Nothing written: not even the version the events' sequence counts.
    assert await stored_row(db, account.id, created["id"]) == row


async def test_clearing_what_is_already_null_changes_nothing(api, account, db) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    nulls = {"pinned_message_id": None, "archived_at": None, "last_opened_at": None, "last_active_at": None}
    for encoding in ENCODINGS:
        response = await send(api, "PUT", item(created["id"]), nulls, encoding)
        assert response.status_code == 200, response.text
        assert response.json() == created
    assert await stored_row(db, account.id, created["id"]) == row


async def test_ignored_lower_values_return_200_with_the_unchanged_conversation(api, account, db) -> None:
    created = await create_conversation(api)
    before = await update(api, created["id"], {"last_active_at": 1000, "last_opened_at": 1000})
    row = await stored_row(db, account.id, created["id"])
    response = await api.put(item(created["id"]), json={"last_active_at": 999, "last_opened_at": 0})
    assert response.status_code == 200, response.text
    assert response.json() == before
    assert await stored_row(db, account.id, created["id"]) == row


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("attribute", ["is_mute", "muted", "pinned", "isMuted", "is_archived", "archived",
                                       "last_read_at", "id", "created_at", "account_id", "version", ""])
async def test_unknown_attribute_on_update_is_400_naming_it(api, account, db, encoding, attribute) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await send(api, "PUT", item(created["id"]), {"is_pinned": True, attribute: "true"}, encoding)
    assert_error(response, 400, attribute)
    assert await stored_row(db, account.id, created["id"]) == row


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("field", ["contact_id", "group_id"])
async def test_contact_id_and_group_id_are_not_updatable(api, account, db, encoding, field) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await send(api, "PUT", item(created["id"]), {field: unique(field)}, encoding)
    assert_error(response, 400, field)
    assert await stored_row(db, account.id, created["id"]) == row


STRICT_JSON_TYPING = [
    ("is_muted", '"1"'),
    ("is_muted", '"true"'),
    ("is_muted", '"false"'),
    ("is_muted", "1"),
    ("is_muted", "0"),
    ("is_muted", "1.0"),
    ("is_muted", "1e3"),
    ("is_muted", "null"),
    ("is_muted", '""'),
    ("is_muted", "[]"),
    ("is_muted", "{}"),
    ("is_pinned", '"true"'),
    ("is_pinned", "1"),
    ("is_pinned", "null"),
    ("last_active_at", '"5"'),
    ("last_active_at", "5.0"),
    ("last_active_at", "1e3"),
    ("last_active_at", "1E3"),
    ("last_active_at", "5.5"),
    ("last_active_at", "true"),
    ("last_active_at", '""'),
    ("last_active_at", "[5]"),
    ("last_opened_at", '"5"'),
    ("last_opened_at", "5.0"),
    ("last_opened_at", "1e3"),
    ("archived_at", '"5"'),
    ("archived_at", "5.0"),
    ("archived_at", "1e3"),
    ("archived_at", "false"),
    ("pinned_message_id", "123"),
    ("pinned_message_id", "true"),
    ("pinned_message_id", '""'),
    ("pinned_message_id", '"a b"'),
    ("pinned_message_id", '"abc\\n"'),
    ("pinned_message_id", '"a\\u0000b"'),
    ("pinned_message_id", '"caf\\u00e9"'),
    ("pinned_message_id", json.dumps("a" * 65)),
    ("pinned_message_id", '["msg"]'),
]


@pytest.mark.parametrize(("field", "raw"), STRICT_JSON_TYPING)
async def test_json_values_are_typed_strictly(api, account, db, field, raw) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await send_raw(api, "PUT", item(created["id"]), f'{{"{field}": {raw}}}')
    assert_error(response, 400, field)
    assert await stored_row(db, account.id, created["id"]) == row


OUT_OF_RANGE = ["-1", "-705103200", str(MAX_TIMESTAMP + 1), "99999999999999999999", str(2**63),
                "1" + "0" * 40]


@pytest.mark.parametrize("raw", OUT_OF_RANGE)
@pytest.mark.parametrize("field", TIMESTAMPS)
async def test_timestamps_outside_0_to_253402300799_are_400_in_json(api, account, db, field, raw) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await send_raw(api, "PUT", item(created["id"]), f'{{"{field}": {raw}}}')
    assert_error(response, 400, field)
    assert await stored_row(db, account.id, created["id"]) == row


@pytest.mark.parametrize("raw", OUT_OF_RANGE)
@pytest.mark.parametrize("field", TIMESTAMPS)
async def test_timestamps_outside_0_to_253402300799_are_400_in_form(api, account, db, field, raw) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await send_raw(api, "PUT", item(created["id"]), urlencode({field: raw}), FORM)
    assert_error(response, 400, field)
    assert await stored_row(db, account.id, created["id"]) == row


@pytest.mark.parametrize("field", TIMESTAMPS)
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_timestamp_bounds_0_and_253402300799_are_accepted(api, field, encoding) -> None:
    created = await create_conversation(api)
    assert (await update(api, created["id"], {field: 0}, encoding))[field] == 0
    assert (await update(api, created["id"], {field: MAX_TIMESTAMP}, encoding))[field] == MAX_TIMESTAMP


FORM_TYPING = [
    ("is_muted", "TRUE"),
    ("is_muted", "True"),
    ("is_muted", "FALSE"),
    ("is_muted", "1"),
    ("is_muted", "0"),
    ("is_muted", "yes"),
    ("is_muted", "on"),
    ("is_muted", " true"),
    ("is_muted", "true "),
    ("is_muted", "null"),
    ("is_muted", ""),
    ("is_pinned", ""),
    ("is_pinned", "t"),
    ("last_active_at", "1.0"),
    ("last_active_at", "1e3"),
    ("last_active_at", "+5"),
    ("last_active_at", " 5"),
    ("last_active_at", "5 "),
    ("last_active_at", "0x10"),
    ("last_active_at", "1_000"),
    ("last_active_at", "\uff15"),      # fullwidth digit five
    ("last_active_at", "\u0665"),      # Arabic-Indic digit five
    ("last_active_at", "true"),
    ("last_active_at", "null"),
    ("last_opened_at", "1.0"),
    ("last_opened_at", "abc"),
    ("archived_at", "1e3"),
    ("archived_at", "false"),
    ("pinned_message_id", "a b"),
    ("pinned_message_id", "abc\n"),
    ("pinned_message_id", "a" * 65),
    ("pinned_message_id", "caf\u00e9"),
]


@pytest.mark.parametrize(("field", "value"), FORM_TYPING, ids=repr)
async def test_form_values_are_typed_strictly(api, account, db, field, value) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await send_raw(api, "PUT", item(created["id"]), urlencode({field: value}), FORM)
    assert_error(response, 400, field)
    assert await stored_row(db, account.id, created["id"]) == row


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("is_muted", "true", True),
    ("is_pinned", "true", True),
    ("archived_at", "705103200", 705103200),
    ("last_active_at", "0", 0),
    ("pinned_message_id", "msg_1-A", "msg_1-A"),
])
async def test_form_true_false_digits_and_strings_are_accepted(api, field, value, expected) -> None:
    created = await create_conversation(api)
    response = await send_raw(api, "PUT", item(created["id"]), urlencode({field: value}), FORM)
    assert response.status_code == 200, response.text
    assert response.json()[field] == expected


@pytest.mark.parametrize(("body", "key"), [
    ("is_muted=true&is_muted=false", "is_muted"),
    ("is_muted=true&is_muted=true", "is_muted"),
    ("pinned_message_id=a&pinned_message_id=", "pinned_message_id"),
    ("is_pinned=true&archived_at=&is_muted=true&archived_at=", "archived_at"),
])
async def test_duplicate_form_keys_are_400(api, account, db, body, key) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await send_raw(api, "PUT", item(created["id"]), body, FORM)
    assert_error(response, 400, key)
    assert await stored_row(db, account.id, created["id"]) == row


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("body", [{}, {"is_muted": True}])
async def test_update_of_an_unknown_conversation_is_404(api, method, body) -> None:
    await create_conversation(api)
    response = await send(api, method, item(unknown_id()), body)
    assert_error(response, 404)


@pytest.mark.parametrize("method", METHODS)
async def test_update_of_a_deleted_conversation_is_404(api, method) -> None:
    created = await create_conversation(api)
    assert (await api.delete(item(created["id"]))).status_code == 204
    response = await send(api, method, item(created["id"]), {"is_muted": True})
    assert_error(response, 404)


@pytest.mark.parametrize("query", ["is_muted=true", "foo=bar"])
async def test_query_attributes_on_update_are_400(api, account, db, query) -> None:
    created = await create_conversation(api)
    row = await stored_row(db, account.id, created["id"])
    response = await api.put(f"{item(created['id'])}?{query}", json={"is_pinned": True})
    assert_error(response, 400, query.partition("=")[0])
    assert await stored_row(db, account.id, created["id"]) == row
