"""docs/api.md §3.4 and §7.5: what Idempotency-Key can make the service store is bounded.

Keys expire after 24 hours and a purge deletes every expired one on its own schedule, whatever
Redis does and however many there are; an account's keyed writes are limited per second (a 429
past it, storing nothing); a keyed write for a conversation that does not exist stores nothing;
and /metrics tells how many keys are stored and how old the oldest is.
"""

from __future__ import annotations

import time
import uuid

import asyncpg
import msgspec
import pytest

from service.http.app import create_app
from service.settings import Settings
from service.store import idempotency_keys
from tests.asgi import Lifespan, client_for
from tests.conftest import Account, wait_for
from tests.http_helpers import CONVERSATIONS, assert_error, create_conversation, item, unknown_id

pytestmark = pytest.mark.slow

EXPIRED = 25_000  # two and a half purge batches


async def store_keys(db: asyncpg.Connection, account_id: str, count: int, age: str) -> None:
    await db.execute("""
        INSERT INTO idempotency_keys (account_id, key, fingerprint, created_at, status)
        SELECT $1, 'k' || g, '\\x00'::bytea, now() - $3::text::interval, 201 FROM generate_series(1, $2) AS g""",
                     account_id, count, age)


async def keys_of(db: asyncpg.Connection, account_id: str) -> int:
    return await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE account_id = $1", account_id)


async def test_one_purge_deletes_every_expired_key_however_many_and_keeps_the_live_ones(db: asyncpg.Connection):
    expired_account, live_account = f"acct_purge_{uuid.uuid4().hex[:8]}", f"acct_live_{uuid.uuid4().hex[:8]}"
    await store_keys(db, expired_account, EXPIRED, "25 hours")
    await store_keys(db, live_account, 10, "23 hours")
    deleted = await idempotency_keys.purge_expired(db)
    assert deleted >= EXPIRED
    assert await keys_of(db, expired_account) == 0
    assert await keys_of(db, live_account) == 10
    await db.execute("DELETE FROM idempotency_keys WHERE account_id = $1", live_account)


async def test_the_purge_runs_on_its_own_schedule_while_redis_is_down(settings: Settings, db: asyncpg.Connection):
    settings = msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:9/0", idempotency_purge_seconds=0.2)
    account_id = f"acct_purge_{uuid.uuid4().hex[:8]}"
    async with Lifespan(create_app(settings)):
        await store_keys(db, account_id, EXPIRED, "25 hours")
        await wait_for(lambda: _none_left(db, account_id), timeout=15)


async def _none_left(db: asyncpg.Connection, account_id: str) -> bool:
    return await keys_of(db, account_id) == 0


async def test_a_keyed_write_to_a_conversation_that_does_not_exist_stores_nothing(api, account: Account, db):
    missing = item(unknown_id())
    for method in ("DELETE", "PUT", "PATCH"):
        key = {"Idempotency-Key": f"missing-{method}"}
        body = None if method == "DELETE" else {"is_muted": True}
        first = await api.request(method, missing, json=body, headers=key)
        retry = await api.request(method, missing, json=body, headers=key)
        assert_error(first, 404, "id")
        assert (retry.status_code, retry.content) == (first.status_code, first.content)  # the same answer again
    assert await keys_of(db, account.id) == 0


async def test_keyed_writes_past_the_accounts_rate_are_429_and_store_nothing(settings: Settings, account: Account,
                                                                              db: asyncpg.Connection):
    settings = msgspec.structs.replace(settings, idempotency_keys_per_second=5)
    async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
        conversation = await create_conversation(api)
        await wait_for(lambda: time.monotonic() % 1 < 0.5, timeout=2, interval=0.01)  # room within one second
        answers = [await api.patch(item(conversation["id"]), json={"last_opened_at": n},
                                   headers={"Idempotency-Key": f"rate-{n}"}) for n in range(8)]
        statuses = [answer.status_code for answer in answers]
        assert statuses[:5] == [200] * 5
        assert 429 in statuses[5:]
        refused = next(answer for answer in answers if answer.status_code == 429)
        assert_error(refused, 429, "Idempotency-Key")
        assert refused.headers["retry-after"].isdigit()
        assert await keys_of(db, account.id) == statuses.count(200)
        assert (await api.get(CONVERSATIONS)).status_code == 200  # reads and unkeyed writes are not limited
        assert (await api.patch(item(conversation["id"]), json={"is_muted": True})).status_code == 200
        await wait_for(lambda: _status_of(api, conversation["id"], "rate-again"), timeout=3)


async def _status_of(api, conversation_id: str, key: str) -> bool:
    response = await api.patch(item(conversation_id), json={"is_pinned": True}, headers={"Idempotency-Key": key})
    return response.status_code == 200


async def test_metrics_tell_how_many_keys_are_stored_and_how_old_the_oldest_is(api, db: asyncpg.Connection):
    account_id = f"acct_metric_{uuid.uuid4().hex[:8]}"
    await store_keys(db, account_id, 1_000, "2 hours")
    await db.execute("SELECT pg_stat_force_next_flush()")  # else this idle session reports its inserts in 10 s
    try:
        await wait_for(lambda: _metric_at_least(api, "conversations_idempotency_keys_stored", 1_000), timeout=15)
        assert await _metric_at_least(api, "conversations_idempotency_keys_oldest_age_seconds", 7_000)
    finally:
        await db.execute("DELETE FROM idempotency_keys WHERE account_id = $1", account_id)


async def _metric_at_least(api, name: str, least: float) -> bool:
    text = (await api.get("/metrics")).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return bool(values) and values[0] >= least
