"""Shared helpers of the HTTP contract tests (tests/http/: create, update, errors, hostile input, ...)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx

from service.ids import decode_millis
from tests.conftest import wait_for

CONVERSATIONS = "/v1/conversations"
CONVERSATION_FIELDS = ["id", "contact_id", "group_id", "pinned_message_id", "is_pinned", "is_muted",
                       "last_active_at", "last_opened_at", "created_at", "archived_at"]
ERROR_KEYS = ["type", "message", "param"]
CONFLICT_KEYS = [*ERROR_KEYS, "conversation_id"]
JSON_TYPE = {"Content-Type": "application/json"}
FORM_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}
ENCODINGS = ["json", "form"]
MAX_TIMESTAMP = 253402300799
ANY = object()
"""`param=ANY`: do not check the error's param."""


def unique(prefix: str = "contact") -> str:
    """A fresh foreign id (contact, group or message), unique across the run."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def item(conversation_id: str) -> str:
    return f"{CONVERSATIONS}/{conversation_id}"


def unknown_id() -> str:
    """A well-formed conversation id that no account has."""
    return "0000" + uuid.uuid4().hex[:12]


def form_value(value: Any) -> str:
    """A JSON value as the contract spells it in form data (docs/api.md §3)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode(body: dict[str, Any], encoding: str) -> tuple[bytes, dict[str, str]]:
    """(content, headers) of `body` sent as JSON or as form data."""
    if encoding == "json":
        return json.dumps(body).encode(), JSON_TYPE
    return urlencode({k: form_value(v) for k, v in body.items()}).encode(), FORM_TYPE


async def send(api: httpx.AsyncClient, method: str, url: str, body: dict[str, Any] | None = None,
               encoding: str = "json") -> httpx.Response:
    """`method url` with `body` in `encoding` (no body at all when `body` is None)."""
    if body is None:
        return await api.request(method, url)
    content, headers = encode(body, encoding)
    return await api.request(method, url, content=content, headers=headers)


async def send_raw(api: httpx.AsyncClient, method: str, url: str, content: bytes | str,
                   content_type: str = "application/json") -> httpx.Response:
    if isinstance(content, str):
        content = content.encode()
    return await api.request(method, url, content=content, headers={"Content-Type": content_type})


async def create_conversation(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    """Create a conversation (with a fresh contact unless `body` names the party) and return it."""
    response = await api.post(CONVERSATIONS, json=body or {"contact_id": unique()})
    assert response.status_code == 201, response.text
    return response.json()


async def retrieve(api: httpx.AsyncClient, conversation_id: str) -> dict[str, Any]:
    response = await api.get(item(conversation_id))
    assert response.status_code == 200, response.text
    return response.json()


async def listed_ids(api: httpx.AsyncClient, params: dict[str, Any] | None = None) -> list[str]:
    response = await api.get(CONVERSATIONS, params={"limit": 100, **(params or {})})
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


def assert_error_body(status: int, headers: Mapping[str, str], content: bytes, expected_status: int,
                      param: Any = ANY, *, error_type: str = "invalid_request") -> dict[str, Any]:
    """An error in the contract's shape (docs/api.md §5): JSON with exactly type, message, param."""
    assert status == expected_status, (status, content[:300])
    assert headers.get("content-type", "").startswith("application/json"), (headers, content[:300])
    body = json.loads(content)
    assert list(body) == (CONFLICT_KEYS if status == 409 else ERROR_KEYS), body
    assert body["type"] == error_type, body
    assert isinstance(body["message"], str), body
    assert body["message"].strip(), body
    assert body["param"] is None or isinstance(body["param"], str), body
    if param is not ANY:
        assert body["param"] == param, body
    assert b"Traceback" not in content, content
    return body


def assert_error(response: httpx.Response, status: int, param: Any = ANY, *,
                 error_type: str = "invalid_request") -> dict[str, Any]:
    """`response` is an error in the contract's shape, with this status (and param, if given)."""
    return assert_error_body(response.status_code, response.headers, response.content, status, param,
                             error_type=error_type)


async def stored_row(db: asyncpg.Connection, account_id: str, conversation_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM conversations WHERE account_id = $1 AND id = $2",
                            account_id, conversation_id)
    return None if row is None else dict(row)


async def stored_count(db: asyncpg.Connection, account_id: str) -> int:
    return await db.fetchval("SELECT count(*) FROM conversations WHERE account_id = $1", account_id)


async def outbox_count(db: asyncpg.Connection, account_id: str) -> int:
    return await db.fetchval("SELECT count(*) FROM conversation_outbox WHERE account_id = $1", account_id)


async def after_millisecond_of(conversation_id: str) -> None:
    """Wait until the clock is past the millisecond in `conversation_id`, so the next id sorts after it."""
    created = decode_millis(conversation_id)
    await wait_for(lambda: time.time() * 1000 >= created + 2, timeout=2.0, interval=0.001)
