"""docs/api.md §3, retrieve: GET /v1/conversations/{id}."""

from __future__ import annotations

import pytest

from tests.http_helpers import (
    CONVERSATION_FIELDS,
    assert_error,
    create_conversation,
    item,
    unique,
    unknown_id,
)


@pytest.mark.parametrize("party", ["contact_id", "group_id"])
async def test_retrieve_is_200_with_the_conversation(api, party) -> None:
    created = await create_conversation(api, **{party: unique(party)})
    response = await api.get(item(created["id"]))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert list(response.json()) == CONVERSATION_FIELDS
    assert response.json() == created


async def test_retrieve_shows_the_updated_state(api) -> None:
    created = await create_conversation(api)
    updated = await api.put(item(created["id"]), json={"is_muted": True, "last_active_at": 705103200})
    assert updated.status_code == 200, updated.text
    response = await api.get(item(created["id"]))
    assert response.status_code == 200
    assert response.json() == updated.json()
    assert response.json()["is_muted"] is True


async def test_unknown_well_formed_id_is_404_in_the_error_shape(api) -> None:
    await create_conversation(api)
    missing = unknown_id()
    response = await api.get(item(missing))
    assert_error(response, 404)


async def test_an_id_differing_in_case_only_is_another_id(api) -> None:
    created = await create_conversation(api)
    swapped = created["id"].swapcase()
    if swapped == created["id"]:  # all digits: cannot happen with a random part, but keep it able to fail
        pytest.fail("the id has no letters")
    assert_error(await api.get(item(swapped)), 404)


MALFORMED_IDS = [
    "abc",                       # too short
    "x",
    "0000000000000000a",         # 17: too long
    "0000000000000000000000000000000000000000",
    "%00",
    "%0A",
    "000000000000000%0A",        # 15 + a newline = 16 characters
    "0000000000000000%0A",       # 16 + a trailing newline
    "00000000000000%00",
    "abcdefgh-jklmnop",          # 16, but not alphanumeric
    "abcdefgh_jklmnop",
    "abcdefgh.jklmnop",
    "abcdefgh%20jklmno",
    "%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9",
    "%D9%A1" * 16,               # Arabic-Indic digits
    "%FF%FE",                    # not UTF-8
    "%25",
    "..",
    "null",
    "a" * 5000,
]


@pytest.mark.parametrize("conversation_id", MALFORMED_IDS, ids=lambda i: i[:40])
async def test_malformed_ids_are_404_never_500(api, conversation_id) -> None:
    response = await api.get(item(conversation_id))
    assert_error(response, 404)


@pytest.mark.parametrize("query", ["expand=contact", "limit=10", "id=abc", "x="])
async def test_query_attributes_on_retrieve_are_400_naming_them(api, query) -> None:
    created = await create_conversation(api)
    response = await api.get(f"{item(created['id'])}?{query}")
    assert_error(response, 400, query.partition("=")[0])
