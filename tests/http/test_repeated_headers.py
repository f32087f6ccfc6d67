"""docs/api.md §3.1: a header that names one thing (Authorization, Content-Type, Idempotency-Key) sent
twice with different values is refused, never read by its first line; the same value twice is one."""

from __future__ import annotations

import asyncpg
import httpx

from tests.conftest import Account
from tests.http_helpers import CONVERSATIONS, assert_error

JSON = ("content-type", "application/json")


async def _count(db: asyncpg.Connection, account: Account) -> int:
    return await db.fetchval("SELECT count(*) FROM conversations WHERE account_id = $1", account.id)


async def test_two_different_authorization_headers_are_a_401(anonymous: httpx.AsyncClient, account: Account,
                                                            other_account: Account) -> None:
    response = await anonymous.get(CONVERSATIONS, headers=[("authorization", f"Bearer {account.token}"),
                                                          ("authorization", f"Bearer {other_account.token}")])
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_the_same_authorization_header_twice_is_one(anonymous: httpx.AsyncClient, account: Account) -> None:
    line = ("authorization", f"Bearer {account.token}")
    assert (await anonymous.get(CONVERSATIONS, headers=[line, line])).status_code == 200


async def test_two_different_content_types_are_a_400_naming_the_header(
        api: httpx.AsyncClient, db: asyncpg.Connection, account: Account) -> None:
    response = await api.post(CONVERSATIONS, content=b'{"contact_id":"ct"}',
                              headers=[JSON, ("content-type", "application/x-www-form-urlencoded")])
    assert_error(response, 400, "Content-Type")
    assert await _count(db, account) == 0


async def test_the_same_content_type_twice_is_one(api: httpx.AsyncClient) -> None:
    response = await api.post(CONVERSATIONS, content=b'{"contact_id":"ct"}', headers=[JSON, JSON])
    assert response.status_code == 201


async def test_two_different_idempotency_keys_are_a_400_naming_the_header(
        api: httpx.AsyncClient, db: asyncpg.Connection, account: Account) -> None:
    response = await api.post(CONVERSATIONS, json={"contact_id": "keys"},
                              headers=[("idempotency-key", "first"), ("idempotency-key", "second")])
    assert_error(response, 400, "Idempotency-Key")
    assert await _count(db, account) == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE account_id = $1", account.id) == 0


async def test_the_same_idempotency_key_twice_is_one(api: httpx.AsyncClient) -> None:
    line = ("idempotency-key", "twice")
    first = await api.post(CONVERSATIONS, json={"contact_id": "twice"}, headers=[line, line])
    retry = await api.post(CONVERSATIONS, json={"contact_id": "twice"}, headers=[line])
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.headers["idempotent-replayed"] == "true"
