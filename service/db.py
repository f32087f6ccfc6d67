"""PostgreSQL access: the pool, with a timeout on every wait, and one exception for "unreachable".

Every call acquires a pooled connection within `db_acquire_timeout` (asyncpg waits forever by
default), runs one statement bounded by `db_statement_timeout`, and turns any sign that the
database cannot be reached in time into `DatabaseUnavailable` (a 503 with Retry-After). No
domain SQL here: that is `queries.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import asyncpg

from service.errors import DatabaseUnavailable
from service.settings import Settings


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means "PostgreSQL cannot be reached in time" rather than a bug of ours."""
    if isinstance(error, (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                          asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError,
                          asyncpg.exceptions.ConnectionFailureError)):
        return True
    # asyncpg reports use of a connection or pool that was closed under it as an InterfaceError.
    return isinstance(error, asyncpg.InterfaceError) and "clos" in str(error)


async def rollback_leftover_transaction(connection: asyncpg.Connection) -> None:
    """The pool's reset hook: roll back only a transaction a cancelled request left open.

    asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release, a second round trip per request. Pooled connections never carry session
    state here (no SET, LISTEN or advisory lock: those live on the relay's and the migrator's
    own connections), so nothing else needs undoing.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_pool(settings: Settings, *, size: int | None = None, application_name: str = "conversations-api"
                      ) -> asyncpg.Pool:
    """The request pool. Connects eagerly, so a service that cannot reach PostgreSQL fails to start."""
    size = size or settings.db_pool_size
    statement_ms = int(settings.db_statement_timeout * 1000)
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=size,
        max_size=size,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_statement_timeout,
        max_inactive_connection_lifetime=300.0,
        reset=rollback_leftover_transaction,
        server_settings={
            "application_name": application_name,
            # The server stops what the client has given up on, and never keeps a row lock
            # for a client that vanished mid-transaction.
            "statement_timeout": str(statement_ms * 2),
            "idle_in_transaction_session_timeout": str(statement_ms * 2),
        },
    )


class Executor(Protocol):
    """What the queries need: a Database (a statement per pooled call) or a Transaction."""

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None: ...

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...


def _drop_if_suspect(connection: asyncpg.Connection, error: BaseException) -> None:
    """Close at once a connection whose statement timed out, was cancelled or lost its server.

    Released as it is, asyncpg would first wait for the cancel request it sent to a server that
    may be hung (up to the statement timeout again), and the 503 would wait with it. A closed
    connection is released immediately, and the pool opens a fresh one when it is next needed.
    """
    if isinstance(error, asyncio.CancelledError) or is_unavailable(error):
        with contextlib.suppress(asyncpg.InterfaceError):  # already closed and handed back
            connection.terminate()


def _raise_if_unavailable(error: Exception) -> None:
    if is_unavailable(error):
        raise DatabaseUnavailable from error


class _Statements:
    """fetchrow / fetch / fetchval, each one statement through the subclass's `_run`."""

    __slots__ = ()

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._run("fetchrow", query, args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run("fetch", query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, args)


class Transaction(_Statements):
    """Statements on one connection inside BEGIN ... COMMIT, errors mapped as Database maps them."""

    __slots__ = ("connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        try:
            return await getattr(self.connection, method)(query, *args)
        except Exception as error:
            _raise_if_unavailable(error)
            raise


class Database(_Statements):
    """The pool behind the handlers: one statement per call, every wait bounded."""

    __slots__ = ("_checked_out", "acquire_timeout", "pool", "size")

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.size = pool.get_max_size()
        self._checked_out = 0

    async def acquire(self) -> asyncpg.Connection:
        """A pooled connection within `acquire_timeout` (release it with `release`).

        While fewer than `size` connections are out, a free one is certain, and acquiring it
        can at most (re)connect, which the connect timeout bounds; only past that does the call
        queue, and only then is it wrapped in asyncio.timeout (which costs several µs a call,
        a few per cent of a request). The count is taken before the first await, so concurrent
        callers cannot both count on the last free connection.
        """
        self._checked_out += 1
        try:
            if self._checked_out <= self.size:
                return await self.pool.acquire()
            async with asyncio.timeout(self.acquire_timeout):
                return await self.pool.acquire()
        except BaseException:
            self._checked_out -= 1
            raise

    async def release(self, connection: asyncpg.Connection) -> None:
        self._checked_out -= 1
        await self.pool.release(connection)

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        try:
            connection = await self.acquire()
            try:
                return await getattr(connection, method)(query, *args)
            except BaseException as error:
                _drop_if_suspect(connection, error)
                raise
            finally:
                await self.release(connection)
        except Exception as error:
            _raise_if_unavailable(error)
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction on one pooled connection: committed if the block ends normally."""
        try:
            connection = await self.acquire()
        except Exception as error:
            _raise_if_unavailable(error)
            raise
        try:
            transaction = connection.transaction()
            try:
                await transaction.start()
            except Exception as error:
                _raise_if_unavailable(error)
                raise
            try:
                yield Transaction(connection)
            except BaseException as error:
                _drop_if_suspect(connection, error.__cause__ or error)
                if not connection.is_closed():
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except Exception as error:
                _raise_if_unavailable(error)
                raise
        finally:
            await self.release(connection)

    async def close(self) -> None:
        await self.pool.close()
