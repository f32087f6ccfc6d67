"""The request pool is cancellation-safe: a connection whose state is uncertain is ended, never reused.

A caller may be cancelled (a shutdown, a future request timeout) at any await point of a call:
waiting for a connection, opening one, BEGIN, a statement, COMMIT. Wherever it happens, the next
borrower's write must commit. The run's PostgreSQL sits behind a TCP proxy that can stop forwarding
(`freeze`) so that a cancellation lands while a message is really in flight; a pool of one
connection makes the next borrower take whatever the cancelled caller left.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import pytest

from service.errors import ConversationNotFound, DatabaseUnavailable
from service.settings import Settings
from service.store.database import Database, create_pool
from tests.tcp_proxy import TcpProxy

IN_FLIGHT_SECONDS = 0.2  # how long a frozen message stays in flight before the cancellation


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[TcpProxy]:
    target = urlsplit(settings.database_url)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    yield proxy
    proxy.thaw()
    await proxy.close()


@pytest.fixture
async def database(settings: Settings, proxy: TcpProxy) -> AsyncIterator[Database]:
    target = urlsplit(settings.database_url)
    proxied = urlunsplit(target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}"))
    pool = await create_pool(msgspec.structs.replace(settings, database_url=proxied, db_statement_timeout=5.0),
                             size=1, application_name="pool-cancellation-test")
    yield Database(pool, acquire_timeout=5.0)
    await pool.close()


@pytest.fixture
async def probe(db: asyncpg.Connection) -> AsyncIterator[str]:
    """A table of the test's own for the writes."""
    table = f"pool_probe_{uuid.uuid4().hex[:12]}"
    await db.execute(f"CREATE TABLE {table} (id text PRIMARY KEY)")
    yield table
    await db.execute(f"DROP TABLE {table}")


async def cancelled(task: asyncio.Task[object]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def the_next_write_commits(database: Database, db: asyncpg.Connection, table: str) -> int:
    """The next borrower writes outside any transaction; a direct connection must see the row. Its pid."""
    pid = await database.fetchval(f"INSERT INTO {table} VALUES ('next') RETURNING pg_backend_pid()")
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE id = 'next'") == 1
    return pid


async def test_cancelled_while_waiting_in_line_the_next_write_commits(database: Database, db: asyncpg.Connection,
                                                                     probe: str):
    held = await database.acquire()
    waiting = asyncio.create_task(database.acquire())
    await asyncio.sleep(0.05)
    await cancelled(waiting)
    database.release(held)
    await the_next_write_commits(database, db, probe)
    assert database.pool.open_count() == 1


async def test_cancelled_while_opening_a_connection_the_next_write_commits(
        database: Database, db: asyncpg.Connection, probe: str, proxy: TcpProxy):
    idle = await database.acquire()
    idle.terminate()
    database.release(idle)  # the next acquire must open a connection
    proxy.freeze()
    opening = asyncio.create_task(database.acquire())
    await asyncio.sleep(IN_FLIGHT_SECONDS)
    await cancelled(opening)
    proxy.thaw()
    assert database.pool.open_count() == 0
    await the_next_write_commits(database, db, probe)


async def test_cancelled_during_begin_the_next_write_commits_on_another_connection(
        database: Database, db: asyncpg.Connection, probe: str, proxy: TcpProxy):
    before = await database.fetchval("SELECT pg_backend_pid()")

    async def write() -> None:
        async with database.transaction() as transaction:
            await transaction.execute(f"INSERT INTO {probe} VALUES ('cancelled')")

    proxy.freeze()
    task = asyncio.create_task(write())
    await asyncio.sleep(IN_FLIGHT_SECONDS)  # BEGIN sent, its answer held
    await cancelled(task)
    proxy.thaw()
    assert await the_next_write_commits(database, db, probe) != before


@pytest.mark.parametrize("point", ["statement", "commit"])
async def test_cancelled_inside_a_transaction_the_next_write_commits_on_another_connection(
        database: Database, db: asyncpg.Connection, probe: str, proxy: TcpProxy, point: str):
    before = await database.fetchval("SELECT pg_backend_pid()")
    inside, go_on = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        async with database.transaction() as transaction:
            if point == "commit":
                await transaction.execute(f"INSERT INTO {probe} VALUES ('cancelled')")
            inside.set()
            await go_on.wait()
            if point == "statement":
                await transaction.execute(f"INSERT INTO {probe} VALUES ('cancelled')")

    task = asyncio.create_task(write())
    await inside.wait()
    proxy.freeze()
    go_on.set()
    await asyncio.sleep(IN_FLIGHT_SECONDS)  # the statement (or COMMIT) sent, its answer held
    await cancelled(task)
    proxy.thaw()
    assert await the_next_write_commits(database, db, probe) != before


async def test_cancelled_during_a_single_statement_the_next_write_commits_on_another_connection(
        database: Database, db: asyncpg.Connection, probe: str, proxy: TcpProxy):
    before = await database.fetchval("SELECT pg_backend_pid()")
    proxy.freeze()
    task = asyncio.create_task(database.execute(f"INSERT INTO {probe} VALUES ('cancelled')"))
    await asyncio.sleep(IN_FLIGHT_SECONDS)
    await cancelled(task)
    proxy.thaw()
    assert await the_next_write_commits(database, db, probe) != before


async def test_a_domain_error_inside_a_transaction_rolls_back_and_keeps_the_connection(
        database: Database, db: asyncpg.Connection, probe: str):
    """Certain state (the error came between statements): rolled back, and the connection stays pooled."""
    before = await database.fetchval("SELECT pg_backend_pid()")

    async def refused_write() -> None:
        async with database.transaction() as transaction:
            await transaction.execute(f"INSERT INTO {probe} VALUES ('rolled-back')")
            raise ConversationNotFound("AAAAAAAAAAAAAAAA")

    with pytest.raises(ConversationNotFound):
        await refused_write()
    assert await db.fetchval(f"SELECT count(*) FROM {probe}") == 0
    assert await the_next_write_commits(database, db, probe) == before


async def test_a_connection_that_answers_read_only_is_a_503_and_is_dropped(
        database: Database, db: asyncpg.Connection, probe: str):
    """What a demoted primary answers (SQLSTATE 25006): the next borrower gets a fresh connection."""
    connection = await database.acquire()
    before = await connection.fetchval("SELECT pg_backend_pid()")
    await connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    database.release(connection)
    with pytest.raises(DatabaseUnavailable):
        await database.execute(f"INSERT INTO {probe} VALUES ('refused')")
    assert connection.is_closed()
    assert await the_next_write_commits(database, db, probe) != before


async def test_a_connection_whose_server_session_is_shut_down_mid_statement_is_a_503_and_is_dropped(
        database: Database, db: asyncpg.Connection, probe: str):
    """What a server stopping for a failover answers (SQLSTATE 57P01, admin shutdown)."""
    before = await database.fetchval("SELECT pg_backend_pid()")
    sleeping = asyncio.create_task(database.execute("SELECT pg_sleep(5)"))
    await asyncio.sleep(0.2)
    assert await db.fetchval("SELECT pg_terminate_backend($1)", before)
    with pytest.raises(DatabaseUnavailable):
        await sleeping
    assert await the_next_write_commits(database, db, probe) != before
