"""A property of the whole API (API.md §2-3): any sequence of creates, updates, deletes,
retrieves and lists gives, at every step, exactly the answer of a small in-memory model of the
contract.

The model knows nothing of the service: 409 on a second conversation with a contact or group,
partial updates where `last_opened_at` / `last_active_at` only move forward (null clears
them), 404 for an id it does not hold, and lists as positions in descending-id order with
filters and `has_more`. Ids and `created_at` come from the server, so the model takes them from
each create's response (after checking them). Every example runs in a fresh account.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar

from service.ids import ID_PATTERN, decode_millis, encode_millis
from service.settings import Settings
from service.wire import CONVERSATION_FIELDS, MAX_TIMESTAMP
from tests.asgi import client_for
from tests.conftest import new_account
from tests.list_helpers import CONVERSATIONS, ERROR_KEYS

PARTIES = ["p0", "p1", "p2", "p3"]  # small, so that creates collide (409) and filters hit
MESSAGES = ["m0", "m1", "msg_2-x"]
TIMES = [0, 1_000, 1_700_000_000, MAX_TIMESTAMP]  # few, so that updates go lower, equal and higher
# Well-formed ids no conversation has: before every real id, after every one, and a
# millisecond of today with an impossible random part.
UNKNOWN_IDS = ["0000000000000000", "zzzzzzzzzzzzzzzz", encode_millis(1_750_000_000_000) + "00000000"]
FORWARD_ONLY = ("last_opened_at", "last_active_at")

# ------------------------------------------------------------------------------------ the model


@dataclass
class Model:
    """The account's conversations as the contract says they must be."""

    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # every id ever created, deleted ones too

    def holder(self, kind: str, party: str) -> str | None:
        return next((c["id"] for c in self.conversations.values() if c[kind] == party), None)

    def resolve(self, target: tuple[str, Any]) -> str:
        """A target drawn before the ids existed: ("known", n) is the n-th id ever created
        (modulo), ("unknown", id) an id nobody has."""
        kind, value = target
        if kind == "known" and self.seen:
            return self.seen[value % len(self.seen)]
        return UNKNOWN_IDS[value % len(UNKNOWN_IDS)] if kind == "known" else value

    @staticmethod
    def updated(current: dict[str, Any], attributes: dict[str, Any]) -> dict[str, Any]:
        result = dict(current)
        for name, value in attributes.items():
            if name in FORWARD_ONLY and value is not None and current[name] is not None and value < current[name]:
                continue  # a lower value is ignored, not an error
            result[name] = value
        return result

    def page(self, limit: int, filters: dict[str, Any], cursor: tuple[str, str] | None) -> dict[str, Any]:
        items = sorted(self.conversations.values(), key=lambda c: c["id"].encode(), reverse=True)
        for name, value in filters.items():
            if name == "muted":
                items = [c for c in items if c["is_muted"] is value]
            elif name == "pinned":
                items = [c for c in items if c["is_pinned"] is value]
            elif name == "archived":
                items = [c for c in items if (c["archived_at"] is not None) is value]
            else:
                items = [c for c in items if c[name] == value]
        if cursor is None:
            return {"has_more": len(items) > limit, "data": items[:limit]}
        name, position = cursor
        if name == "starting_after":
            older = [c for c in items if c["id"].encode() < position.encode()]
            return {"has_more": len(older) > limit, "data": older[:limit]}
        newer = [c for c in items if c["id"].encode() > position.encode()]
        return {"has_more": len(newer) > limit, "data": newer[-limit:]}


# ------------------------------------------------------------------------------- the operations

known_targets = st.tuples(st.just("known"), st.integers(0, 50))
targets = st.one_of(known_targets, known_targets, known_targets,
                    st.tuples(st.just("unknown"), st.sampled_from(UNKNOWN_IDS)))
parties = st.tuples(st.sampled_from(["contact_id", "group_id"]), st.sampled_from(PARTIES))
timestamps = st.one_of(st.none(), st.sampled_from(TIMES))
update_attributes = st.fixed_dictionaries({}, optional={
    "pinned_message_id": st.one_of(st.none(), st.sampled_from(MESSAGES)),
    "is_pinned": st.booleans(),
    "is_muted": st.booleans(),
    "archived_at": timestamps,
    "last_opened_at": timestamps,
    "last_active_at": timestamps,
})
list_filters = st.fixed_dictionaries({}, optional={
    "muted": st.booleans(),
    "pinned": st.booleans(),
    "archived": st.booleans(),
    "contact_id": st.sampled_from(PARTIES),
    "group_id": st.sampled_from(PARTIES),
})
cursors = st.one_of(st.none(), st.tuples(st.sampled_from(["starting_after", "ending_before"]), targets))

creates = st.tuples(st.just("create"), parties)
updates = st.tuples(st.just("update"), targets, update_attributes)
lists = st.tuples(st.just("list"), st.one_of(st.none(), st.integers(1, 4), st.integers(1, 12)), list_filters, cursors)
# one_of picks a branch uniformly: a branch given twice is drawn twice as often
operations = st.one_of(
    creates, creates, creates,
    updates, updates, updates,
    st.tuples(st.just("delete"), targets),
    st.tuples(st.just("retrieve"), targets),
    lists, lists, lists,
)


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body)[:3] == ERROR_KEYS, body
    assert body["type"] == "invalid_request", body
    assert body["param"] == param, body
    return body


def assert_conversation(response: httpx.Response, status: int, expected: dict[str, Any]) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == list(CONVERSATION_FIELDS), body
    assert body == expected


async def run_create(api: httpx.AsyncClient, model: Model, kind: str, party: str) -> None:
    response = await api.post(CONVERSATIONS, json={kind: party})
    existing = model.holder(kind, party)
    if existing is not None:
        body = assert_error(response, 409, kind)
        assert body["conversation_id"] == existing
        return
    assert response.status_code == 201, response.text
    created = response.json()
    assert list(created) == list(CONVERSATION_FIELDS)
    assert ID_PATTERN.fullmatch(created["id"]), created
    assert created["id"] not in model.seen, "an id was given out twice"
    assert created["created_at"] == decode_millis(created["id"]) // 1000, "the id and created_at disagree"
    assert response.headers["location"] == f"{CONVERSATIONS}/{created['id']}"
    assert created == {
        "id": created["id"], "contact_id": party if kind == "contact_id" else None,
        "group_id": party if kind == "group_id" else None, "pinned_message_id": None, "is_pinned": False,
        "is_muted": False, "last_active_at": None, "last_opened_at": None, "created_at": created["created_at"],
        "archived_at": None,
    }
    model.conversations[created["id"]] = created
    model.seen.append(created["id"])


async def run_update(api: httpx.AsyncClient, model: Model, conversation_id: str, attributes: dict[str, Any]) -> None:
    response = await api.put(f"{CONVERSATIONS}/{conversation_id}", json=attributes)
    current = model.conversations.get(conversation_id)
    if current is None:
        assert_error(response, 404, "id")
        return
    expected = model.updated(current, attributes)
    assert_conversation(response, 200, expected)
    model.conversations[conversation_id] = expected


async def run_delete(api: httpx.AsyncClient, model: Model, conversation_id: str) -> None:
    response = await api.delete(f"{CONVERSATIONS}/{conversation_id}")
    if model.conversations.pop(conversation_id, None) is None:
        assert_error(response, 404, "id")
        return
    assert response.status_code == 204, response.text
    assert response.content == b""


async def run_retrieve(api: httpx.AsyncClient, model: Model, conversation_id: str) -> None:
    response = await api.get(f"{CONVERSATIONS}/{conversation_id}")
    current = model.conversations.get(conversation_id)
    if current is None:
        assert_error(response, 404, "id")
    else:
        assert_conversation(response, 200, current)


async def run_list(api: httpx.AsyncClient, model: Model, limit: int | None, filters: dict[str, Any],
                   cursor: tuple[str, tuple[str, Any]] | None) -> None:
    params: dict[str, str] = {name: str(value).lower() if isinstance(value, bool) else value
                              for name, value in filters.items()}
    if limit is not None:
        params["limit"] = str(limit)
    position = None
    if cursor is not None:
        position = (cursor[0], model.resolve(cursor[1]))
        params[position[0]] = position[1]
    response = await api.get(CONVERSATIONS, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["has_more", "data"]
    assert all(list(c) == list(CONVERSATION_FIELDS) for c in body["data"])
    assert body == model.page(10 if limit is None else limit, filters, position), params


async def run(api: httpx.AsyncClient, model: Model, operation: tuple[Any, ...]) -> None:
    match operation:
        case ("create", (kind, party)):
            await run_create(api, model, kind, party)
        case ("update", target, attributes):
            await run_update(api, model, model.resolve(target), attributes)
        case ("delete", target):
            await run_delete(api, model, model.resolve(target))
        case ("retrieve", target):
            await run_retrieve(api, model, model.resolve(target))
        case ("list", limit, filters, cursor):
            await run_list(api, model, limit, filters, cursor)
        case _:
            raise AssertionError(f"unknown operation {operation!r}")


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(operations, min_size=15, max_size=30))
async def test_every_answer_equals_the_contract_model(app: Litestar, settings: Settings,
                                                      script: list[tuple[Any, ...]]) -> None:
    account = await new_account(settings, "prop")
    model = Model()
    async with client_for(app, account.token) as api:
        for operation in script:
            await run(api, model, operation)
        # and finally the whole account, in one page
        await run_list(api, model, 100, {}, None)
