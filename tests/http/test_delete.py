"""docs/api.md §3, delete: DELETE /v1/conversations/{id} is a permanent delete, 204 with an empty body."""

from __future__ import annotations

import pytest

from tests.http_helpers import (
    CONVERSATIONS,
    assert_error,
    create_conversation,
    item,
    listed_ids,
    send,
    send_raw,
    stored_row,
    unique,
    unknown_id,
)


async def test_delete_is_204_with_an_empty_body(api) -> None:
    created = await create_conversation(api)
    response = await api.delete(item(created["id"]))
    assert response.status_code == 204, response.text
    assert response.content == b""


@pytest.mark.parametrize("party", ["contact_id", "group_id"])
async def test_a_deleted_conversation_is_gone(api, account, db, party) -> None:
    party_id = unique(party)
    created = await create_conversation(api, **{party: party_id})
    kept = await create_conversation(api)
    assert (await api.delete(item(created["id"]))).status_code == 204
    assert_error(await api.get(item(created["id"])), 404)
    assert created["id"] not in await listed_ids(api)
    assert await listed_ids(api, {party: party_id}) == []
    assert await listed_ids(api) == [kept["id"]]
    assert await stored_row(db, account.id, created["id"]) is None


async def test_deleting_again_is_404(api) -> None:
    created = await create_conversation(api)
    assert (await api.delete(item(created["id"]))).status_code == 204
    assert_error(await api.delete(item(created["id"])), 404)


async def test_deleting_an_unknown_conversation_is_404(api) -> None:
    await create_conversation(api)
    assert_error(await api.delete(item(unknown_id())), 404)


@pytest.mark.parametrize("conversation_id", ["abc", "0000000000000000a", "000000000000000%0A", "abcdefgh-jklmnop"])
async def test_deleting_a_malformed_id_is_404(api, conversation_id) -> None:
    assert_error(await api.delete(item(conversation_id)), 404)


async def test_delete_only_deletes_the_one_conversation(api) -> None:
    conversations = [await create_conversation(api) for _ in range(3)]
    assert (await api.delete(item(conversations[1]["id"]))).status_code == 204
    assert set(await listed_ids(api)) == {conversations[0]["id"], conversations[2]["id"]}
    assert (await api.get(item(conversations[0]["id"]))).json() == conversations[0]


@pytest.mark.parametrize("encoding", ["json", "form"])
@pytest.mark.parametrize(("attribute", "value"), [("is_muted", True), ("id", "x"), ("force", "true")])
async def test_a_body_with_an_attribute_on_delete_is_400(api, account, db, encoding, attribute, value) -> None:
    created = await create_conversation(api)
    response = await send(api, "DELETE", item(created["id"]), {attribute: value}, encoding)
    assert_error(response, 400, attribute)
    assert await stored_row(db, account.id, created["id"]) is not None
    assert (await api.get(item(created["id"]))).status_code == 200


@pytest.mark.parametrize(("content", "content_type"), [(b"{}", "application/json"),
                                                       (b"", "application/x-www-form-urlencoded")])
async def test_an_empty_body_on_delete_is_accepted(api, content, content_type) -> None:
    created = await create_conversation(api)
    response = await send_raw(api, "DELETE", item(created["id"]), content, content_type)
    assert response.status_code == 204, response.text


@pytest.mark.parametrize("query", ["force=true", "id=abc"])
async def test_query_attributes_on_delete_are_400(api, account, db, query) -> None:
    created = await create_conversation(api)
    response = await api.delete(f"{item(created['id'])}?{query}")
    assert_error(response, 400, query.partition("=")[0])
    assert await stored_row(db, account.id, created["id"]) is not None


async def test_delete_of_the_collection_is_not_a_bulk_delete(api) -> None:
    created = await create_conversation(api)
    response = await api.delete(CONVERSATIONS)
    assert_error(response, 405)
    assert (await api.get(item(created["id"]))).status_code == 200
