"""A property of the whole API (docs/api.md §3-4): any sequence of creates, updates, deletes,
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
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar

from service.ids import ID_PATTERN, decode_millis, encode_millis
from service.model import CONVERSATION_FIELDS, MAX_TIMESTAMP
from service.settings import Settings
from tests.asgi import client_for
from tests.conftest import new_account
from tests.list_helpers import CONVERSATIONS, ERROR_KEYS

PARTIES = ["p0", "p1", "p2", "p3"]  # small, so that creates collide (409) and filters hit
MESSAGES = ["m0", "m1", "msg_2-x"]
# Few, so that updates go lower, equal and higher; highest first, because Hypothesis favours
# the first choice of a sampled_from and nothing can go below 0.
TIMES = [MAX_TIMESTAMP, 1_700_000_000, 1_000, 0]
# Well-formed ids no conversation has: before every real id, after every one, and a
# millisecond of today with an impossible random part.
UNKNOWN_IDS = ["0000000000000000", "zzzzzzzzzzzzzzzz", encode_millis(1_750_000_000_000) + "00000000"]
FORWARD_ONLY = ("last_opened_at", "last_active_at")
MIN_STEPS, MAX_STEPS = 20, 30

# ------------------------------------------------------------------------------------ the model


@dataclass
class Model:
    """The account's conversations as the contract says they must be."""

    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # every id ever created, deleted ones too

    def holder(self, kind: str, party: str) -> str | None:
        return next((c["id"] for c in self.conversations.values() if c[kind] == party), None)

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
# Each step is drawn knowing the model's state (st.data()), so that targets are mostly live
# conversations, creates mostly take a free contact or group (and sometimes a taken one, for the
# 409), and timestamps land just below, on and just above the stored ones. A choice listed n
# times is drawn about n times as often; Hypothesis also favours the first choice of a
# sampled_from or one_of (its "simplest"), so the choice that matters most comes first (measured:
# with "create" first, a lower last_opened_at was met in no example at all for some seeds).

OPERATIONS = ["update"] * 4 + ["create"] * 3 + ["delete", "retrieve"] + ["list"] * 3
parties = st.tuples(st.sampled_from(["contact_id", "group_id"]), st.sampled_from(PARTIES))
boolean_filters = st.fixed_dictionaries({}, optional={
    "muted": st.booleans(),
    "pinned": st.booleans(),
    "archived": st.booleans(),
})
one_boolean_filter = st.builds(lambda name, value: {name: value}, st.sampled_from(["muted", "pinned", "archived"]),
                               st.booleans())
party_filter = parties.map(lambda kind_party: {kind_party[0]: kind_party[1]})
# mostly none or one filter, so that pages are rarely empty; sometimes several, combined
list_filters = st.one_of(st.just({}), st.just({}), one_boolean_filter, one_boolean_filter, party_filter,
                         st.builds(lambda b, p: {**b, **p}, boolean_filters, st.one_of(st.just({}), party_filter)))
limits = st.one_of(st.none(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 12))


def creation_parties(model: Model) -> st.SearchStrategy[tuple[str, str]]:
    free = [(kind, party) for kind in ("contact_id", "group_id") for party in PARTIES
            if model.holder(kind, party) is None]
    return st.one_of(st.sampled_from(free), st.sampled_from(free), parties) if free else parties


def targets(model: Model) -> st.SearchStrategy[str]:
    """Mostly a live conversation; sometimes a deleted one, or an id nobody has (last: Hypothesis
    favours the first branch)."""
    options: list[st.SearchStrategy[str]] = []
    if model.conversations:
        options += [st.sampled_from(sorted(model.conversations))] * 4
    deleted = [i for i in model.seen if i not in model.conversations]
    if deleted:
        options.append(st.sampled_from(deleted))
    return st.one_of(*options, st.sampled_from(UNKNOWN_IDS))


def timestamps(stored: int | None) -> st.SearchStrategy[int | None]:
    """null, any of TIMES, or just below, on or just above the stored value."""
    options: list[st.SearchStrategy[int | None]] = []
    if stored is not None:
        near = sorted({max(0, stored - 1), stored, min(MAX_TIMESTAMP, stored + 1)})
        options += [st.sampled_from(near)] * 2
    return st.one_of(*options, st.sampled_from(TIMES), st.sampled_from(TIMES), st.none())


def update_attributes(current: dict[str, Any] | None) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the updatable attributes, or (twice as often) one forward-only field alone.
    Values before null, so that a field is usually set before it is cleared."""
    stored = current or dict.fromkeys(FORWARD_ONLY)
    every = st.fixed_dictionaries({}, optional={
        "pinned_message_id": st.one_of(st.sampled_from(MESSAGES), st.none()),
        "is_pinned": st.booleans(),
        "is_muted": st.booleans(),
        "archived_at": st.one_of(st.sampled_from(TIMES), st.none()),
        "last_opened_at": timestamps(stored["last_opened_at"]),
        "last_active_at": timestamps(stored["last_active_at"]),
    })
    alone = [st.fixed_dictionaries({name: timestamps(stored[name])}) for name in FORWARD_ONLY]
    return st.one_of(every, *alone, *alone)


def draw_operation(data: st.DataObject, model: Model) -> tuple[Any, ...]:
    kind = data.draw(st.sampled_from(OPERATIONS), label="operation")
    if kind == "create":
        return (kind, *data.draw(creation_parties(model), label="party"))
    if kind == "list":
        cursor = data.draw(st.one_of(st.none(), st.tuples(st.sampled_from(["starting_after", "ending_before"]),
                                                          targets(model))), label="cursor")
        return (kind, data.draw(limits, label="limit"), data.draw(list_filters, label="filters"), cursor)
    target = data.draw(targets(model), label="id")
    if kind == "update":
        return (kind, target, data.draw(update_attributes(model.conversations.get(target)), label="attributes"))
    return (kind, target)


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
                   cursor: tuple[str, str] | None) -> None:
    params: dict[str, str] = {name: str(value).lower() if isinstance(value, bool) else value
                              for name, value in filters.items()}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params[cursor[0]] = cursor[1]
    response = await api.get(CONVERSATIONS, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["has_more", "data"]
    assert all(list(c) == list(CONVERSATION_FIELDS) for c in body["data"])
    assert body == model.page(10 if limit is None else limit, filters, cursor), params


async def run(api: httpx.AsyncClient, model: Model, operation: tuple[Any, ...]) -> None:
    match operation:
        case ("create", kind, party):
            await run_create(api, model, kind, party)
        case ("update", conversation_id, attributes):
            await run_update(api, model, conversation_id, attributes)
        case ("delete", conversation_id):
            await run_delete(api, model, conversation_id)
        case ("retrieve", conversation_id):
            await run_retrieve(api, model, conversation_id)
        case ("list", limit, filters, cursor):
            await run_list(api, model, limit, filters, cursor)
        case _:
            raise AssertionError(f"unknown operation {operation!r}")


# No Phase.explain: it reruns a failing example hundreds of times (minutes here, each run a
# fresh account) to annotate the report; shrinking alone gives a short, readable example.
@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                     phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])
@given(data=st.data())
async def test_every_answer_equals_the_contract_model(app: Litestar, settings: Settings, data: st.DataObject) -> None:
    account = await new_account(settings, "prop")
    model = Model()
    steps = data.draw(st.integers(MIN_STEPS, MAX_STEPS), label="steps")
    async with client_for(app, account.token) as api:
        for _ in range(steps):
            await run(api, model, draw_operation(data, model))
        # and finally the whole account, in one page
        await run_list(api, model, 100, {}, None)
