"""GET /v1/conversations (docs/api.md §4): the response's shape, its order, `limit`, the filters and
the validation of every query attribute. Paging with cursors is in test_pagination.py."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from service.model import CONVERSATION_FIELDS
from tests.conftest import wait_for
from tests.list_helpers import (
    CONVERSATIONS,
    assert_invalid,
    create,
    create_many,
    list_ids,
    list_page,
    list_raw,
    millis,
    newest_first,
    party,
)

WELL_FORMED_ID = "0Vc0TSNTRfnxWfSu"
CURSORS = ["starting_after", "ending_before"]
BOOLEAN_FILTERS = {"muted": "is_muted", "pinned": "is_pinned", "archived": "archived_at"}


async def put(api: httpx.AsyncClient, conversation_id: str, **body: Any) -> dict[str, Any]:
    response = await api.put(f"{CONVERSATIONS}/{conversation_id}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def is_set(conversation: dict[str, Any], filter_name: str) -> bool:
    """Whether `conversation` is muted / pinned / archived, read from its fields."""
    value = conversation[BOOLEAN_FILTERS[filter_name]]
    return value is not None if filter_name == "archived" else bool(value)


@pytest.fixture
async def states(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Eight conversations (four contacts, four groups), one per combination of muted, pinned
    and archived, their states set through PUT; returned as they are stored now."""
    conversations = []
    for index in range(8):
        muted, pinned, archived = bool(index & 1), bool(index & 2), bool(index & 4)
        kind = "contact_id" if index % 2 == 0 else "group_id"
        created = await create(api, **{kind: party(kind[0])})
        body: dict[str, Any] = {"is_muted": muted, "is_pinned": pinned}
        if archived:
            body["archived_at"] = 1_700_000_000 + index
        conversations.append(await put(api, created["id"], **body))
    return conversations


def expected_ids(conversations: list[dict[str, Any]], **filters: bool) -> list[str]:
    """The ids the boolean filters select, in list order."""
    return newest_first([c["id"] for c in conversations
                         if all(is_set(c, name) is value for name, value in filters.items())])


def query(**params: str) -> str:
    """A query string written out as is, so that each test controls the exact bytes sent."""
    return "&".join(f"{name}={value}" for name, value in params.items())


async def get_raw_query(api: httpx.AsyncClient, raw: str) -> httpx.Response:
    return await api.get(f"{CONVERSATIONS}?{raw}")


# ------------------------------------------------------------------------------------- response


async def test_empty_account_lists_nothing(api: httpx.AsyncClient) -> None:
    response = await list_raw(api)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"has_more": False, "data": []}
    assert list(response.json()) == ["has_more", "data"]


async def test_response_keys_are_has_more_then_data(api: httpx.AsyncClient) -> None:
    await create(api)
    response = await list_raw(api)
    assert response.status_code == 200
    assert list(response.json()) == ["has_more", "data"]
    assert response.content.startswith(b'{"has_more":')


async def test_listed_conversations_are_the_stored_ones_with_fields_in_contract_order(
        api: httpx.AsyncClient) -> None:
    created = await create(api, group_id=party("g"))
    stored = await put(api, created["id"], is_muted=True, last_active_at=5, pinned_message_id="m1")
    page = await list_page(api)
    assert page["data"] == [stored]
    assert list(page["data"][0]) == list(CONVERSATION_FIELDS)


async def test_list_is_newest_first_in_creation_order(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    """Each conversation is created in a later millisecond of the database's clock than the
    previous one, so creation order is unambiguous; the list must be its reverse."""
    created: list[str] = []
    for _ in range(6):
        if created:
            last = millis(created[-1])
            await wait_for(lambda last=last: _database_millis_after(db, last))
        created.append((await create(api))["id"])
    assert [millis(i) for i in created] == sorted({millis(i) for i in created})
    ids, has_more = await list_ids(api)
    assert ids == list(reversed(created))
    assert ids == newest_first(ids)
    assert has_more is False


async def _database_millis_after(db: asyncpg.Connection, last: int) -> bool:
    now = await db.fetchval("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    return now > last


# ---------------------------------------------------------------------------------------- limit


async def test_default_limit_is_10(api: httpx.AsyncClient) -> None:
    created = [c["id"] for c in await create_many(api, 12)]
    ids, has_more = await list_ids(api)
    assert ids == newest_first(created)[:10]
    assert has_more is True


@pytest.mark.parametrize("limit", [1, 2, 99, 100])
async def test_limit_from_1_to_100_is_accepted(api: httpx.AsyncClient, limit: int) -> None:
    created = [c["id"] for c in await create_many(api, 101)]
    ids, has_more = await list_ids(api, {"limit": str(limit)})
    assert ids == newest_first(created)[:limit]
    assert has_more is True


@pytest.mark.parametrize("value", [
    "0", "101", "-1", "abc", "", "1.5", "10abc", "+1", " 1", "1 ", "1e1", "0x10", "true", "null",
    "%D9%A1",  # ARABIC-INDIC DIGIT ONE: a digit to str.isdigit(), not to the contract
    "%C2%B2",  # SUPERSCRIPT TWO
    "99999999999999999999999999", "1000",
])
async def test_limit_outside_1_to_100_is_400(api: httpx.AsyncClient, value: str) -> None:
    response = await get_raw_query(api, query(limit=value))
    assert_invalid(response, "limit", "limit must be ")


async def test_bare_limit_without_value_is_400(api: httpx.AsyncClient) -> None:
    assert_invalid(await get_raw_query(api, "limit"), "limit", "limit must be ")


# -------------------------------------------------------------------------------------- filters


@pytest.mark.parametrize("value", ["true", "false", None])
@pytest.mark.parametrize("name", list(BOOLEAN_FILTERS))
async def test_boolean_filter_selects_those_that_are_or_are_not(
        api: httpx.AsyncClient, states: list[dict[str, Any]], name: str, value: str | None) -> None:
    params = {} if value is None else {name: value}
    ids, has_more = await list_ids(api, {**params, "limit": "100"})
    if value is None:
        assert ids == newest_first([c["id"] for c in states])
    else:
        assert ids == expected_ids(states, **{name: value == "true"})
        assert len(ids) == 4
    assert has_more is False


@pytest.mark.parametrize("value", ["1", "0", "True", "TRUE", "False", "yes", "no", "t", "", "true%20", "%20true",
                                   "null", "true%0A", "%22true%22"])
@pytest.mark.parametrize("name", list(BOOLEAN_FILTERS))
async def test_boolean_filter_other_than_true_or_false_is_400(api: httpx.AsyncClient, name: str, value: str) -> None:
    response = await get_raw_query(api, query(**{name: value}))
    assert_invalid(response, name, f"{name} must be ")


@pytest.mark.parametrize("kind", ["contact_id", "group_id"])
async def test_party_filter_returns_only_that_conversation(
        api: httpx.AsyncClient, states: list[dict[str, Any]], kind: str) -> None:
    target = next(c for c in reversed(states) if c[kind] is not None)
    page = await list_page(api, {kind: target[kind]})
    assert page == {"has_more": False, "data": [target]}


@pytest.mark.parametrize("kind", ["contact_id", "group_id"])
async def test_party_filter_of_unknown_party_returns_nothing(
        api: httpx.AsyncClient, states: list[dict[str, Any]], kind: str) -> None:
    assert await list_page(api, {kind: party("nobody")}) == {"has_more": False, "data": []}


async def test_party_filter_does_not_match_the_other_kind(api: httpx.AsyncClient) -> None:
    """A contact and a group may share an id string; contact_id= selects only the contact."""
    shared = party("x")
    contact = await create(api, contact_id=shared)
    group = await create(api, group_id=shared)
    assert (await list_page(api, {"contact_id": shared}))["data"] == [contact]
    assert (await list_page(api, {"group_id": shared}))["data"] == [group]


@pytest.mark.parametrize("value", ["", "a%20b", "a.b", "a/b", "x" * 65, "%C3%A9", "abc%0A", "%00", "a%2Bb"])
@pytest.mark.parametrize("kind", ["contact_id", "group_id"])
async def test_malformed_party_filter_is_400(api: httpx.AsyncClient, kind: str, value: str) -> None:
    response = await get_raw_query(api, query(**{kind: value}))
    assert_invalid(response, kind, f"{kind} must be ")


@pytest.mark.parametrize("filters", [
    {"muted": True, "pinned": True},
    {"muted": True, "pinned": False},
    {"muted": False, "archived": True},
    {"pinned": False, "archived": False},
    {"muted": True, "pinned": True, "archived": True},
    {"muted": False, "pinned": False, "archived": False},
    {"muted": True, "pinned": False, "archived": True},
], ids=lambda f: "&".join(f"{k}={str(v).lower()}" for k, v in f.items()))
async def test_boolean_filters_combine(api: httpx.AsyncClient, states: list[dict[str, Any]],
                                       filters: dict[str, bool]) -> None:
    params = {name: str(value).lower() for name, value in filters.items()}
    ids, has_more = await list_ids(api, params)
    assert ids == expected_ids(states, **filters)
    assert len(ids) == 2 ** (3 - len(filters))
    assert has_more is False


@pytest.mark.parametrize("kind", ["contact_id", "group_id"])
@pytest.mark.parametrize("name", list(BOOLEAN_FILTERS))
async def test_party_filter_combines_with_boolean_filters(
        api: httpx.AsyncClient, states: list[dict[str, Any]], kind: str, name: str) -> None:
    for target in (c for c in states if c[kind] is not None):
        for value in (True, False):
            page = await list_page(api, {kind: target[kind], name: str(value).lower()})
            expected = [target] if is_set(target, name) is value else []
            assert page == {"has_more": False, "data": expected}, (target, name, value)


async def test_filters_apply_before_limit(api: httpx.AsyncClient, states: list[dict[str, Any]]) -> None:
    ids, has_more = await list_ids(api, {"muted": "true", "limit": "3"})
    matching = expected_ids(states, muted=True)
    assert ids == matching[:3]
    assert has_more is True
    ids, has_more = await list_ids(api, {"muted": "true", "limit": "4"})
    assert ids == matching
    assert has_more is False


# ------------------------------------------------------------------------------ query validation


@pytest.mark.parametrize("name", ["is_muted", "is_pinned", "mute", "Limit", "LIMIT", "offset", "page", "cursor",
                                  "starting_before", "ending_after", "id", "foo", "limit_", "archived_at"])
async def test_unknown_query_attribute_is_400_naming_it(api: httpx.AsyncClient, name: str) -> None:
    response = await get_raw_query(api, f"limit=5&{name}=true")
    body = assert_invalid(response, name)
    assert name in body["message"]


async def test_unknown_query_attribute_is_400_even_with_empty_value(api: httpx.AsyncClient) -> None:
    assert_invalid(await get_raw_query(api, "is_mute="), "is_mute")


@pytest.mark.parametrize("raw", [
    "limit=5&limit=5",
    "limit=5&limit=6",
    "muted=true&muted=true",
    "muted=true&muted=false",
    "pinned=false&pinned=false",
    "archived=true&archived=false",
    "contact_id=a&contact_id=a",
    "group_id=a&group_id=b",
    f"starting_after={WELL_FORMED_ID}&starting_after={WELL_FORMED_ID}",
    f"ending_before={WELL_FORMED_ID}&limit=2&ending_before={WELL_FORMED_ID}",
])
async def test_repeated_query_attribute_is_400(api: httpx.AsyncClient, raw: str) -> None:
    await create(api)
    name = raw.split("=", 1)[0]
    assert_invalid(await get_raw_query(api, raw), name)


@pytest.mark.parametrize("raw", [
    f"starting_after={WELL_FORMED_ID}&ending_before={WELL_FORMED_ID}",
    f"ending_before={WELL_FORMED_ID}&starting_after={WELL_FORMED_ID}",
    f"starting_after={WELL_FORMED_ID}&ending_before=zzzzzzzzzzzzzzzz&limit=5",
])
async def test_starting_after_with_ending_before_is_400(api: httpx.AsyncClient, raw: str) -> None:
    await create(api)
    response = await get_raw_query(api, raw)
    assert response.status_code == 400, response.text
    body = response.json()
    assert list(body) == ["type", "message", "param"]
    assert body["type"] == "invalid_request"
    assert body["param"] in CURSORS
    assert "starting_after" in body["message"]
    assert "ending_before" in body["message"]


@pytest.mark.parametrize("value", [
    "",
    WELL_FORMED_ID[:15],
    WELL_FORMED_ID + "a",
    "x",
    WELL_FORMED_ID[:15] + "-",
    WELL_FORMED_ID[:15] + "_",
    WELL_FORMED_ID[:8] + "%20" + WELL_FORMED_ID[9:],
    WELL_FORMED_ID[:15] + "%00",
    "%00" * 16,
    WELL_FORMED_ID + "%0A",
    "%0A" + WELL_FORMED_ID,
    WELL_FORMED_ID[:15] + "%0A",
    WELL_FORMED_ID[:15] + "%C3%A9",
    "evt_" + WELL_FORMED_ID[:12],
    "x" * 200,
])
@pytest.mark.parametrize("cursor", CURSORS)
async def test_malformed_cursor_is_400_naming_the_cursor(api: httpx.AsyncClient, cursor: str, value: str) -> None:
    await create(api)
    response = await get_raw_query(api, query(**{cursor: value}))
    assert_invalid(response, cursor, f"{cursor} must be ")


async def test_odd_query_strings_are_200_or_400(api: httpx.AsyncClient) -> None:
    """A sweep over odd query strings: each is a 200 or a 400, never anything else."""
    await create(api)
    odd = ["&", "&&", "=", "==", "limit==5", "&limit=5", "limit=5&", "%", "%zz=1", "limit=%", "a=%FF",
           "limit=5;muted=true", "muted=true%26pinned=true", "%6Cimit=5", "limit%3D5"]
    for raw in odd:
        response = await get_raw_query(api, raw)
        assert response.status_code in (200, 400), (raw, response.status_code, response.text)
        if response.status_code == 400:
            assert list(response.json()) == ["type", "message", "param"], raw

