"""GET /v1/conversations?order=activity (docs/api.md §4): the inbox order and its cursors.

Pinned conversations first, then by last_active_at, most recent first, conversations never active
after every active one (newest first), ties by id. Pages are walked with the cursors each page
returns, which carry a position; a conversation that moves while a client pages may be seen twice
or not at all, but every conversation that did not move is seen exactly once.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from service.settings import Settings
from tests.asgi import client_for
from tests.conftest import new_account
from tests.http_helpers import assert_error
from tests.list_helpers import CONVERSATIONS, create

ACTIVITY_PAGE_KEYS = ["has_more", "data", "next_cursor", "previous_cursor"]


def activity_key(conversation: dict[str, Any]) -> tuple[bool, int, bytes]:
    """The contract's activity order as a sort key (sorted descending)."""
    active = conversation["last_active_at"]
    return conversation["is_pinned"], -1 if active is None else active, conversation["id"].encode()


def in_activity_order(conversations: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in sorted(conversations, key=activity_key, reverse=True)]


async def put(api: httpx.AsyncClient, conversation_id: str, **body: Any) -> dict[str, Any]:
    response = await api.put(f"{CONVERSATIONS}/{conversation_id}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def page(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get(CONVERSATIONS, params={"order": "activity", **params})
    assert response.status_code == 200, response.text
    return response.json()


async def walk_forward(api: httpx.AsyncClient, limit: int, **params: Any) -> list[str]:
    seen: list[str] = []
    body = await page(api, limit=limit, **params)
    seen += [c["id"] for c in body["data"]]
    for _ in range(100):
        if not body["has_more"]:
            return seen
        body = await page(api, limit=limit, starting_after=body["next_cursor"], **params)
        seen += [c["id"] for c in body["data"]]
    raise AssertionError(f"the walk did not end: {seen}")


@pytest.fixture
async def inbox(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Nine conversations: pinned or not, active at various times or never, some sharing a time."""
    shapes = [(False, None), (True, 50), (False, 300), (False, 100), (True, None), (False, 300), (False, None),
              (True, 700), (False, 100)]
    conversations = []
    for pinned, active in shapes:
        created = await create(api)
        body: dict[str, Any] = {"is_pinned": pinned}
        if active is not None:
            body["last_active_at"] = active
        conversations.append(await put(api, created["id"], **body))
    return conversations


async def test_activity_order_puts_pinned_first_then_most_recently_active_then_never_active_by_creation(
        api: httpx.AsyncClient, inbox: list[dict[str, Any]]):
    body = await page(api, limit=100)
    assert [c["id"] for c in body["data"]] == in_activity_order(inbox)
    pinned = [c["is_pinned"] for c in body["data"]]
    assert pinned == sorted(pinned, reverse=True)


async def test_an_activity_page_has_its_keys_in_order_and_cursors_of_its_two_ends(
        api: httpx.AsyncClient, inbox: list[dict[str, Any]]):
    body = await page(api, limit=3)
    assert list(body) == ACTIVITY_PAGE_KEYS
    assert body["has_more"] is True
    assert body["next_cursor"].endswith(body["data"][-1]["id"])
    assert body["previous_cursor"].endswith(body["data"][0]["id"])


async def test_the_default_order_keeps_the_creation_order_page_shape(api: httpx.AsyncClient,
                                                                   inbox: list[dict[str, Any]]):
    response = await api.get(CONVERSATIONS, params={"limit": 100})
    assert list(response.json()) == ["has_more", "data"]
    assert [c["id"] for c in response.json()["data"]] == sorted((c["id"] for c in inbox), reverse=True)


async def test_next_cursors_walk_every_conversation_once_in_activity_order(api: httpx.AsyncClient,
                                                                           inbox: list[dict[str, Any]]):
    assert await walk_forward(api, limit=2) == in_activity_order(inbox)


async def test_previous_cursors_walk_back_to_the_first_page(api: httpx.AsyncClient, inbox: list[dict[str, Any]]):
    order = in_activity_order(inbox)
    last = await page(api, limit=4, starting_after=(await page(api, limit=5))["next_cursor"])
    assert [c["id"] for c in last["data"]] == order[5:9]
    back = await page(api, limit=3, ending_before=last["previous_cursor"])
    assert [c["id"] for c in back["data"]] == order[2:5]
    assert back["has_more"] is True  # two newer ones remain
    first = await page(api, limit=3, ending_before=back["previous_cursor"])
    assert [c["id"] for c in first["data"]] == order[0:2]
    assert first["has_more"] is False


async def test_the_last_page_says_there_is_no_more(api: httpx.AsyncClient, inbox: list[dict[str, Any]]):
    body = await page(api, limit=9)
    assert body["has_more"] is False
    empty = await page(api, limit=9, starting_after=body["next_cursor"])
    assert empty == {"has_more": False, "data": [], "next_cursor": None, "previous_cursor": None}


async def test_filters_combine_with_activity_order(api: httpx.AsyncClient, inbox: list[dict[str, Any]]):
    body = await page(api, limit=100, pinned="false")
    assert [c["id"] for c in body["data"]] == in_activity_order([c for c in inbox if not c["is_pinned"]])


async def test_a_conversation_id_is_not_a_cursor_in_activity_order(api: httpx.AsyncClient,
                                                                   inbox: list[dict[str, Any]]):
    for cursor in ("starting_after", "ending_before"):
        response = await api.get(CONVERSATIONS, params={"order": "activity", cursor: inbox[0]["id"]})
        body = assert_error(response, 400, cursor)
        assert "next_cursor" in body["message"]


async def test_an_activity_cursor_is_not_a_cursor_in_creation_order(api: httpx.AsyncClient,
                                                                    inbox: list[dict[str, Any]]):
    cursor = (await page(api, limit=2))["next_cursor"]
    response = await api.get(CONVERSATIONS, params={"starting_after": cursor})
    assert_error(response, 400, "starting_after")


@pytest.mark.parametrize("cursor", ["act_2_5_xgQQXg3hrtjh7AvZ", "act_0_x_xgQQXg3hrtjh7AvZ", "act_0_5_short",
                                    "act_0_1234567890123_xgQQXg3hrtjh7AvZ", "act_0_5_xgQQXg3hrtjh7AvZ\n", "act_"])
async def test_a_malformed_activity_cursor_is_a_400_naming_it(api: httpx.AsyncClient, cursor: str):
    response = await api.get(CONVERSATIONS, params={"order": "activity", "starting_after": cursor})
    assert_error(response, 400, "starting_after")


@pytest.mark.parametrize("order", ["Activity", "recent", "", "created,activity"])
async def test_an_unknown_order_is_a_400_naming_it(api: httpx.AsyncClient, order: str):
    response = await api.get(CONVERSATIONS, params={"order": order})
    body = assert_error(response, 400, "order")
    assert "created or activity" in body["message"]


async def test_order_created_is_the_default_order(api: httpx.AsyncClient, inbox: list[dict[str, Any]]):
    explicit = await api.get(CONVERSATIONS, params={"order": "created", "limit": 100})
    default = await api.get(CONVERSATIONS, params={"limit": 100})
    assert explicit.json() == default.json()


# ------------------------------------------------------------------- pages under concurrent moves

MOVES = st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["pin", "unpin", "activate", "clear"]),
                           st.integers(1, 1000)), max_size=4)


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves_between_pages=st.lists(MOVES, min_size=1, max_size=6), page_size=st.integers(1, 4))
async def test_a_walk_sees_every_conversation_that_did_not_move_exactly_once_and_no_duplicates_of_them(
        app, settings: Settings, moves_between_pages: list[list[tuple[int, str, int]]], page_size: int):
    account = await new_account(settings, "moves")
    async with client_for(app, account.token) as api:
        conversations = [await create(api) for _ in range(12)]
        ids = [c["id"] for c in conversations]
        moved: set[str] = set()
        seen: list[str] = []
        body = await page(api, limit=page_size)
        seen += [c["id"] for c in body["data"]]
        steps = iter(moves_between_pages)
        for _ in range(50):  # 12 conversations, each seen at most twice: a walk that goes on is a bug
            if not body["has_more"]:
                break
            for index, move, value in next(steps, []):
                changes = {"pin": {"is_pinned": True}, "unpin": {"is_pinned": False},
                           "activate": {"last_active_at": value}, "clear": {"last_active_at": None}}[move]
                before = await api.get(f"{CONVERSATIONS}/{ids[index]}")
                after = await put(api, ids[index], **changes)
                if activity_key(before.json()) != activity_key(after):
                    moved.add(ids[index])
            body = await page(api, limit=page_size, starting_after=body["next_cursor"])
            seen += [c["id"] for c in body["data"]]
        assert not body["has_more"], f"the walk did not end: {seen}"
    still = [i for i in ids if i not in moved]
    assert all(seen.count(i) == 1 for i in still), (seen, moved)
    assert all(seen.count(i) <= 2 for i in moved), (seen, moved)
