"""The request connection pool (service/pool.py), against the run's real PostgreSQL.

Its rules: at most `size` connections; a caller waits in line, first come first served, for at
most its wait; a checkout held past the hold limit is ended; a connection that is closed or
left in a transaction never goes back into use; closing the pool ends its connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from service.settings import Settings
from service.store.database import create_pool
from service.store.pool import ConnectionPool, PoolClosedError


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[ConnectionPool]:
    pool = await create_pool(msgspec.structs.replace(settings, db_statement_timeout=1.0), size=2,
                             application_name="pool-test")
    yield pool
    await pool.close()


async def backend_pid(connection: asyncpg.Connection) -> int:
    return await connection.fetchval("SELECT pg_backend_pid()")


async def test_the_pool_opens_its_connections_at_start(pool: ConnectionPool):
    assert pool.open_count() == 2 and pool.idle_count() == 2


async def test_a_pool_that_cannot_reach_postgres_fails_to_start(settings: Settings):
    unreachable = msgspec.structs.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/nowhere",
                                          db_connect_timeout=1.0)
    with pytest.raises(ConnectionRefusedError):
        await create_pool(unreachable, size=2)


async def test_a_released_connection_is_reused_not_reopened(pool: ConnectionPool):
    first = await pool.acquire(1.0)
    pid = await backend_pid(first)
    pool.release(first)
    again = await pool.acquire(1.0)
    assert again is first and await backend_pid(again) == pid
    pool.release(again)
    assert pool.open_count() == 2


async def test_callers_beyond_the_size_wait_in_line_first_come_first_served(pool: ConnectionPool):
    held = [await pool.acquire(1.0), await pool.acquire(1.0)]
    first = asyncio.create_task(pool.acquire(5.0))
    second = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0.05)
    assert not first.done() and not second.done()
    pool.release(held[0])
    assert await first is held[0]
    assert not second.done()
    pool.release(held[1])
    assert await second is held[1]
    assert pool.open_count() == 2
    pool.release(held[0])
    pool.release(held[1])


async def test_a_wait_in_line_ends_with_timeout_after_its_wait(pool: ConnectionPool):
    held = [await pool.acquire(1.0), await pool.acquire(1.0)]
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await pool.acquire(0.3)
    waited = time.monotonic() - started
    assert 0.29 < waited < 0.8
    for connection in held:
        pool.release(connection)
    assert pool.idle_count() == 2  # the timed-out caller took nothing


async def test_a_checkout_held_past_the_hold_limit_is_ended(pool: ConnectionPool):
    connection = await pool.acquire(1.0)
    started = time.monotonic()
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await connection.execute("SELECT pg_sleep(10)")
    assert time.monotonic() - started < 1.5  # hold limit 1 s, watchdog every 0.1 s
    pool.release(connection)
    assert pool.open_count() == 1
    both = [await pool.acquire(1.0), await pool.acquire(1.0)]  # the free slot opens a new connection
    assert connection not in both and [await c.fetchval("SELECT 1") for c in both] == [1, 1]
    assert pool.open_count() == 2
    for other in both:
        pool.release(other)


async def test_a_connection_released_inside_a_transaction_is_ended_not_reused(pool: ConnectionPool):
    connection = await pool.acquire(1.0)
    await connection.execute("BEGIN")
    await connection.execute("SELECT 1")
    pool.release(connection)
    assert connection.is_closed()
    others = [await pool.acquire(1.0), await pool.acquire(1.0)]
    assert connection not in others
    assert not any(other.is_in_transaction() for other in others)
    for other in others:
        pool.release(other)


async def test_a_closed_connection_frees_its_slot_for_the_next_in_line(pool: ConnectionPool):
    held = [await pool.acquire(1.0), await pool.acquire(1.0)]
    waiting = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0.05)
    held[0].terminate()
    pool.release(held[0])
    replacement = await waiting
    assert replacement is not held[0] and await replacement.fetchval("SELECT 1") == 1
    pool.release(replacement)
    pool.release(held[1])
    assert pool.open_count() == 2


async def test_an_idle_connection_whose_server_session_ended_is_replaced(pool: ConnectionPool, db: asyncpg.Connection):
    connection = await pool.acquire(1.0)
    pid = await backend_pid(connection)
    pool.release(connection)
    await db.execute("SELECT pg_terminate_backend($1)", pid)
    for _ in range(100):  # asyncpg notices the dropped socket on its own
        if connection.is_closed():
            break
        await asyncio.sleep(0.01)
    replacement = await pool.acquire(1.0)
    assert replacement is not connection and await backend_pid(replacement) != pid
    pool.release(replacement)


async def test_a_caller_cancelled_just_after_being_handed_a_connection_passes_it_on(pool: ConnectionPool):
    held = [await pool.acquire(1.0), await pool.acquire(1.0)]
    waiting = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0.05)
    pool.release(held[0])  # handed to the waiter, which has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool.idle_count() == 1 and pool.open_count() == 2
    pool.release(held[1])


async def test_closing_the_pool_ends_its_connections_and_its_waiters(settings: Settings):
    pool = await create_pool(settings, size=1)
    held = await pool.acquire(1.0)
    waiting = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0.05)
    await pool.close()
    with pytest.raises(PoolClosedError):
        await waiting
    with pytest.raises(PoolClosedError):
        await pool.acquire(1.0)
    pool.release(held)
    assert held.is_closed() and pool.open_count() == 0


async def test_a_pool_that_fails_to_fill_closes_the_connections_it_opened(settings: Settings):
    opened: list[asyncpg.Connection] = []
    calls = 0

    async def connect_twice() -> asyncpg.Connection:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionRefusedError("the third connection is refused")
        connection = await asyncpg.connect(settings.database_url)
        opened.append(connection)
        return connection

    pool = ConnectionPool(connect_twice, size=3, hold_seconds=1.0)
    with pytest.raises(ConnectionRefusedError):
        await pool.fill()
    await pool.close()
    assert len(opened) == 2 and all(connection.is_closed() for connection in opened)
    assert pool.open_count() == 0


async def test_a_connection_past_its_lifetime_is_not_handed_out_again(settings: Settings):
    pool = await create_pool(msgspec.structs.replace(settings, db_max_connection_lifetime=0.3), size=1)
    try:
        first = await pool.acquire(1.0)
        pid = await backend_pid(first)
        await asyncio.sleep(0.4)  # checked out meanwhile: the watchdog leaves it alone
        pool.release(first)
        second = await pool.acquire(1.0)
        assert first.is_closed() and await backend_pid(second) != pid
        assert pool.open_count() == 1
        pool.release(second)
    finally:
        await pool.close()


async def test_an_idle_connection_past_its_lifetime_is_ended_by_the_watchdog(settings: Settings):
    pool = await create_pool(msgspec.structs.replace(settings, db_max_connection_lifetime=0.3), size=2)
    try:
        idle = [await pool.acquire(1.0), await pool.acquire(1.0)]
        for connection in idle:
            pool.release(connection)
        await asyncio.sleep(0.6)  # lifetime, plus a watchdog period or two
        assert all(connection.is_closed() for connection in idle)
        assert pool.open_count() == 0 and pool.idle_count() == 0
        fresh = await pool.acquire(1.0)
        assert fresh not in idle and await fresh.fetchval("SELECT 1") == 1
        pool.release(fresh)
    finally:
        await pool.close()
