"""Cursor pagination of GET /v1/conversations (docs/api.md §4).

A cursor is a position in the list order (descending id), not a lookup: `starting_after=X` is
the items with ids below X, `ending_before=X` those above X (still newest first). The expected
pages are computed from the ids alone, so they hold whatever millisecond the ids share.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.ids import encode_millis
from tests.list_helpers import (
    CONVERSATIONS,
    all_ids,
    create,
    create_many,
    list_ids,
    list_page,
    newest_first,
)

COUNT = 41  # not a multiple of any page size below, and more than three pages of each


@pytest.fixture
async def ids(api: httpx.AsyncClient) -> list[str]:
    """COUNT conversations of `account`, created one after the other; their ids in list order."""
    created = [c["id"] for c in await create_many(api, COUNT)]
    listed = await all_ids(api)
    assert listed == newest_first(created)
    return listed


async def delete(api: httpx.AsyncClient, conversation_id: str) -> None:
    response = await api.delete(f"{CONVERSATIONS}/{conversation_id}")
    assert response.status_code == 204, response.text


async def walk_forward(api: httpx.AsyncClient, limit: int) -> list[tuple[list[str], bool]]:
    """Every page from the first, each fetched with starting_after = the previous page's last id."""
    pages = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page_ids, has_more = await list_ids(api, params)
        pages.append((page_ids, has_more))
        if not has_more:
            return pages
        assert page_ids, "has_more is true on an empty page"
        assert len(pages) <= COUNT + 1, "the walk does not end"
        params = {"limit": limit, "starting_after": page_ids[-1]}


@pytest.mark.parametrize("limit", [7, 10, 13])
async def test_forward_paging_visits_every_item_once_in_order(
        api: httpx.AsyncClient, ids: list[str], limit: int) -> None:
    pages = await walk_forward(api, limit)
    assert len(pages) > 3
    assert [i for page, _ in pages for i in page] == ids
    assert [has_more for _, has_more in pages] == [True] * (len(pages) - 1) + [False]
    assert all(len(page) == limit for page, _ in pages[:-1])


@pytest.mark.parametrize("limit", [7, 10, 13])
async def test_backward_paging_from_the_end_returns_to_the_start(
        api: httpx.AsyncClient, ids: list[str], limit: int) -> None:
    """From the oldest item, ending_before = the previous page's first id pages toward the newest;
    each page is newest first and has_more tells whether newer items exist."""
    pages = []
    cursor = ids[-1]
    while True:
        page_ids, has_more = await list_ids(api, {"limit": limit, "ending_before": cursor})
        pages.append((page_ids, has_more))
        assert page_ids == newest_first(page_ids)
        if not has_more:
            break
        assert len(pages) <= COUNT, "the walk does not end"
        cursor = page_ids[0]
    assert len(pages) > 3
    assert [i for page, _ in reversed(pages) for i in page] == ids[:-1]
    assert [has_more for _, has_more in pages] == [True] * (len(pages) - 1) + [False]
    assert all(len(page) == limit for page, _ in pages[:-1])
    assert pages[-1][0][0] == ids[0]


async def test_ending_before_first_item_of_page_two_gives_page_one(api: httpx.AsyncClient, ids: list[str]) -> None:
    first = await list_page(api, {"limit": 10})
    second = await list_page(api, {"limit": 10, "starting_after": first["data"][-1]["id"]})
    assert [c["id"] for c in second["data"]] == ids[10:20]
    back = await list_page(api, {"limit": 10, "ending_before": second["data"][0]["id"]})
    assert back == {"has_more": False, "data": first["data"]}


async def test_ending_before_from_deep_in_the_list_has_more_newer(api: httpx.AsyncClient, ids: list[str]) -> None:
    page_ids, has_more = await list_ids(api, {"limit": 5, "ending_before": ids[30]})
    assert page_ids == ids[25:30]
    assert has_more is True


@pytest.mark.parametrize("cursor", ["starting_after", "ending_before"])
async def test_deleted_conversation_id_is_still_a_valid_cursor(
        api: httpx.AsyncClient, ids: list[str], cursor: str) -> None:
    """The page around a conversation, fetched again after deleting it with its own id as the
    cursor, is the same page minus the deleted item."""
    position = 20
    deleted = ids[position]
    if cursor == "starting_after":
        before, _ = await list_ids(api, {"limit": 6, "starting_after": ids[position - 1]})
        assert before[0] == deleted
    else:
        before, _ = await list_ids(api, {"limit": 6, "ending_before": ids[position + 1]})
        assert before[-1] == deleted
    await delete(api, deleted)
    after, has_more = await list_ids(api, {"limit": 5, cursor: deleted})
    assert after == [i for i in before if i != deleted]
    assert has_more is True
    assert deleted not in await all_ids(api)


async def test_forward_walk_never_skips_or_repeats_across_inserts_and_deletes(
        api: httpx.AsyncClient, ids: list[str]) -> None:
    """Between page fetches, new conversations are created (they are newer than every cursor of
    the walk) and some are deleted, both behind and ahead of the walk. Every conversation that
    existed throughout is visited exactly once, in order; the new ones never appear."""
    limit = 6
    seen: list[str] = []
    inserted: list[str] = []
    deleted: set[str] = set()
    deleted_ahead: set[str] = set()
    page_ids, has_more = await list_ids(api, {"limit": limit})
    pages = 1
    while True:
        seen.extend(page_ids)
        if not has_more:
            break
        cursor = page_ids[-1]
        # behind the walk: the cursor itself and the first item seen; ahead: two not yet seen,
        # one of them on the very next page.
        unseen = [i for i in ids if i < cursor and i not in deleted]
        for victim in [cursor, seen[0], *unseen[1:2], *unseen[limit + 1:limit + 2]]:
            if victim not in deleted:
                await delete(api, victim)
                deleted.add(victim)
                deleted_ahead.update({victim} & set(unseen))
        inserted.extend(c["id"] for c in await create_many(api, 2))
        page_ids, has_more = await list_ids(api, {"limit": limit, "starting_after": cursor})
        pages += 1
        assert pages <= COUNT, "the walk does not end"
    assert pages > 3
    assert len(seen) == len(set(seen)), "an item was visited twice"
    assert seen == newest_first(seen), "the walk went out of order"
    assert not set(seen) & set(inserted), "a conversation created during the walk was visited"
    survivors = [i for i in ids if i not in deleted]
    missing = [i for i in survivors if i not in seen]
    assert missing == [], "conversations that existed throughout were skipped"
    assert set(seen) <= set(ids)
    assert deleted_ahead, "the walk deleted nothing ahead of itself"
    assert not deleted_ahead & set(seen), "a conversation deleted before the walk reached it was visited"
    assert all(i > ids[0] for i in inserted), "new conversations sort as newer than the old ones"


@pytest.mark.parametrize("cursor", ["starting_after", "ending_before"])
async def test_cursor_from_another_account_is_only_a_position(
        api: httpx.AsyncClient, other_api: httpx.AsyncClient, cursor: str) -> None:
    mine = [c["id"] for c in await create_many(api, 6)]
    foreign = (await create(other_api))["id"]
    mine += [c["id"] for c in await create_many(api, 6)]
    ordered = newest_first(mine)
    expected = [i for i in ordered if (i < foreign if cursor == "starting_after" else i > foreign)]
    assert 5 <= len(expected) <= 7  # the foreign id lies between the two batches
    response = await api.get(CONVERSATIONS, params={cursor: foreign, "limit": 100})
    assert response.status_code == 200, response.text
    page = response.json()
    assert [c["id"] for c in page["data"]] == expected
    assert page["has_more"] is False
    assert foreign not in [c["id"] for c in page["data"]]
    # the other account sees only its own conversation from the same position
    assert (await list_ids(other_api, {cursor: mine[0]}))[0] == ([foreign] if cursor == "ending_before" else [])


@pytest.mark.parametrize("cursor", ["starting_after", "ending_before"])
@pytest.mark.parametrize("outside", ["0000000000000000", "zzzzzzzzzzzzzzzz"])
async def test_cursor_outside_every_id_is_a_position_too(
        api: httpx.AsyncClient, ids: list[str], cursor: str, outside: str) -> None:
    page_ids, has_more = await list_ids(api, {cursor: outside, "limit": 100})
    everything = (cursor == "starting_after") == (outside == "zzzzzzzzzzzzzzzz")
    assert page_ids == (ids if everything else [])
    assert has_more is False


async def test_cursor_of_a_future_millisecond_lists_from_the_newest(api: httpx.AsyncClient, ids: list[str]) -> None:
    future = encode_millis(2**41) + "00000000"
    page_ids, has_more = await list_ids(api, {"starting_after": future, "limit": 10})
    assert page_ids == ids[:10]
    assert has_more is True


async def test_paging_from_the_last_item_onward_is_empty(api: httpx.AsyncClient, ids: list[str]) -> None:
    assert await list_page(api, {"starting_after": ids[-1]}) == {"has_more": False, "data": []}
    assert await list_page(api, {"ending_before": ids[0]}) == {"has_more": False, "data": []}


@pytest.mark.parametrize("cursor", ["starting_after", "ending_before"])
async def test_cursor_positions_compare_bytewise(api: httpx.AsyncClient, ids: list[str], cursor: str) -> None:
    """Digits < upper case < lower case, as bytes (docs/api.md §1: COLLATE "C"); a linguistic
    collation would put "a..." before "Z..." and move these positions."""
    for conversation_id in ids[::4]:
        for suffix in ("ZZZZZZZZ", "aaaaaaaa", "9zzzzzzz", "A0000000"):
            position = conversation_id[:8] + suffix
            expected = [i for i in ids if (i.encode() < position.encode()) == (cursor == "starting_after")
                        and i != position]
            page_ids, has_more = await list_ids(api, {cursor: position, "limit": 100})
            assert page_ids == expected, position
            assert has_more is False


@pytest.mark.parametrize(("cursor", "position", "limit", "has_more"), [
    (None, None, COUNT, False),
    (None, None, COUNT - 1, True),
    (None, None, COUNT + 1, False),
    ("starting_after", COUNT - 11, 10, False),
    ("starting_after", COUNT - 11, 9, True),
    ("starting_after", COUNT - 11, 11, False),
    ("starting_after", COUNT - 2, 1, False),
    ("starting_after", COUNT - 3, 1, True),
    ("ending_before", 10, 10, False),
    ("ending_before", 10, 9, True),
    ("ending_before", 10, 11, False),
    ("ending_before", 1, 1, False),
    ("ending_before", 2, 1, True),
])
async def test_has_more_is_exact_at_the_boundary(api: httpx.AsyncClient, ids: list[str], cursor: str | None,
                                                 position: int | None, limit: int, has_more: bool) -> None:
    params: dict[str, Any] = {"limit": limit}
    if cursor is None:
        expected = ids[:limit]
    else:
        assert position is not None
        params[cursor] = ids[position]
        expected = ids[position + 1:][:limit] if cursor == "starting_after" else ids[:position][-limit:]
    page_ids, actual = await list_ids(api, params)
    assert page_ids == expected
    assert actual is has_more


async def test_filtered_paging_visits_every_matching_item_once(api: httpx.AsyncClient, ids: list[str]) -> None:
    muted = ids[::3]
    for conversation_id in muted:
        response = await api.put(f"{CONVERSATIONS}/{conversation_id}", json={"is_muted": True})
        assert response.status_code == 200, response.text
    visited: list[str] = []
    params: dict[str, Any] = {"limit": 4, "muted": "true"}
    for _ in range(COUNT):
        page_ids, has_more = await list_ids(api, params)
        visited.extend(page_ids)
        if not has_more:
            break
        params = {"limit": 4, "muted": "true", "starting_after": page_ids[-1]}
    assert visited == muted
    # and back: ending_before from the oldest muted one, with the filter
    back, has_more = await list_ids(api, {"limit": 100, "muted": "true", "ending_before": muted[-1]})
    assert back == muted[:-1]
    assert has_more is False
    unmuted, _ = await list_ids(api, {"limit": 100, "muted": "false", "starting_after": muted[0]})
    assert unmuted == [i for i in ids if i < muted[0] and i not in muted]
