"""Shared helpers of the listing tests (test_list.py, test_pagination.py, test_property.py)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from service.ids import decode_millis

CONVERSATIONS = "/v1/conversations"
ERROR_KEYS = ["type", "message", "param"]


def party(prefix: str = "c") -> str:
    """A fresh foreign id (contact or group), unique across the run."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


async def create(api: httpx.AsyncClient, **body: str) -> dict[str, Any]:
    """Create a conversation (a fresh contact unless `body` names one) and return it."""
    response = await api.post(CONVERSATIONS, json=body or {"contact_id": party()})
    assert response.status_code == 201, response.text
    return response.json()


async def create_many(api: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """`count` conversations, created one after the other (so their ids follow creation time)."""
    return [await create(api) for _ in range(count)]


def newest_first(ids: list[str]) -> list[str]:
    """The contract's list order: descending id, compared bytewise."""
    return sorted(ids, key=lambda i: i.encode(), reverse=True)


async def list_raw(api: httpx.AsyncClient, params: dict[str, Any] | str | None = None) -> httpx.Response:
    return await api.get(CONVERSATIONS, params=params)


async def list_page(api: httpx.AsyncClient, params: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """One page, which must be a 200 in the contract's shape."""
    response = await list_raw(api, params)
    assert response.status_code == 200, response.text
    page = response.json()
    assert list(page) == ["has_more", "data"], page
    return page


async def list_ids(api: httpx.AsyncClient, params: dict[str, Any] | str | None = None) -> tuple[list[str], bool]:
    page = await list_page(api, params)
    return [c["id"] for c in page["data"]], page["has_more"]


async def all_ids(api: httpx.AsyncClient) -> list[str]:
    """Every conversation of the account in list order (the account holds at most 100 in these tests)."""
    ids, has_more = await list_ids(api, {"limit": 100})
    assert not has_more
    return ids


def assert_invalid(response: httpx.Response, param: str | None, message_start: str | None = None) -> dict[str, Any]:
    """A 400 in the contract's error shape, naming `param`."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert list(body) == ERROR_KEYS, body
    assert body["type"] == "invalid_request", body
    assert body["param"] == param, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    if message_start is not None:
        assert body["message"].startswith(message_start), body
    return body


def millis(conversation_id: str) -> int:
    return decode_millis(conversation_id)
