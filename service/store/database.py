"""PostgreSQL access: statements and transactions on the pool, and one exception for "unreachable".

Every call acquires a pooled connection (pool.py) within `db_acquire_timeout`, runs one
statement bounded by `db_statement_timeout`, and turns any sign that the database cannot be
reached in time into `DatabaseUnavailable` (a 503 with Retry-After): a lost or shut-down server,
a read-only one (a demoted primary after a failover), no writable host among DATABASE_URL's.
No domain SQL here: each table's statements live in their own module of this package.

Cancellation-safe: a connection is handed back to the pool only when its state is certain
(`_state_is_known`): the server answered the last message, or the error came from our own rules
between statements. After anything else (a cancellation or a timeout while BEGIN, a statement or
COMMIT was in flight, a driver error, a lost or read-only server) it is terminated, which makes
the server roll back whatever it still runs, and the next borrower gets a fresh connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import asyncpg

from service.errors import ApiError, DatabaseUnavailable
from service.settings import Settings
from service.store.pool import ConnectionPool

# The database's clock in Unix seconds, as every stored timestamp is written: one clock for all rows.
NOW_SECONDS = "floor(extract(epoch FROM now()))::bigint"


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means "PostgreSQL cannot be reached in time" rather than a bug of ours."""
    if isinstance(error, (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                          asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError,
                          asyncpg.exceptions.ConnectionFailureError,
                          # A failover: the server became a standby, or no host of the DSN is writable
                          # (TargetServerAttributeNotMatched), or a connection that sat idle in the pool
                          # got a shutting-down server's last message before its socket closed, so the
                          # driver refuses to use it ("another operation is in progress").
                          asyncpg.exceptions.ReadOnlySQLTransactionError,
                          asyncpg.exceptions.InternalClientError)):
        return True
    # asyncpg reports use of a connection or pool that was closed under it as an InterfaceError.
    return isinstance(error, asyncpg.InterfaceError) and "clos" in str(error)


async def create_pool(settings: Settings, *, size: int | None = None, application_name: str = "conversations-api"
                      ) -> ConnectionPool:
    """The request pool, filled at once, so a service that cannot reach PostgreSQL fails to start."""
    statement_ms = int(settings.db_statement_timeout * 1000)

    def connect() -> Awaitable[asyncpg.Connection]:
        return asyncpg.connect(
            settings.database_url,
            timeout=settings.db_connect_timeout,
            server_settings={
                "application_name": application_name,
                # The server stops what the client has given up on, and never keeps a row lock
                # for a client that vanished mid-transaction.
                "statement_timeout": str(statement_ms * 2),
                "idle_in_transaction_session_timeout": str(statement_ms * 2),
            },
        )

    # The statement timeout is the pool's hold limit (its watchdog ends a connection held longer),
    # not asyncpg's command_timeout, which arms a timer for every statement.
    pool = ConnectionPool(connect, size or settings.db_pool_size, hold_seconds=settings.db_statement_timeout,
                          max_lifetime=settings.db_max_connection_lifetime)
    try:
        await pool.fill()
    except BaseException:
        await pool.close()
        raise
    return pool


class Executor(Protocol):
    """What the queries need: a Database (a statement per pooled call) or a Transaction."""

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None: ...

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...


def _state_is_known(error: BaseException) -> bool:
    """Whether a connection is certainly usable (idle, or in a transaction that can be rolled back) after `error`.

    A server-reported error comes with the server's ReadyForQuery, and an error of our own rules
    is raised between statements; anything else may leave a message in flight.
    """
    cause = error.__cause__ if isinstance(error, DatabaseUnavailable) else error
    if isinstance(cause, asyncpg.PostgresError):
        return not is_unavailable(cause)  # a server going away, or read-only, is not kept
    return isinstance(error, ApiError) and not isinstance(error, DatabaseUnavailable)


def _terminate(connection: asyncpg.Connection) -> None:
    """End a connection at once (the server rolls back); it leaves the pool on release."""
    with contextlib.suppress(asyncpg.InterfaceError):  # already closed and handed back
        connection.terminate()


def _raise_if_unavailable(error: Exception) -> None:
    if is_unavailable(error):
        raise DatabaseUnavailable from error


class _Statements:
    """fetchrow / fetch / fetchval / execute, each one statement through the subclass's `_run`."""

    __slots__ = ()

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._run("fetchrow", query, args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run("fetch", query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, args)

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; its status tag (e.g. "DELETE 3")."""
        return await self._run("execute", query, args)


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

    __slots__ = ("acquire_timeout", "pool")

    def __init__(self, pool: ConnectionPool, acquire_timeout: float) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout

    async def acquire(self) -> asyncpg.Connection:
        """A pooled connection, waiting at most `acquire_timeout` for one (release it with `release`).

        Opening a connection is bounded by the connect timeout instead.
        """
        return await self.pool.acquire(self.acquire_timeout)

    def release(self, connection: asyncpg.Connection) -> None:
        self.pool.release(connection)

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        try:
            connection = await self.pool.acquire(self.acquire_timeout)
            try:
                return await getattr(connection, method)(query, *args)
            except BaseException as error:
                if not _state_is_known(error):
                    _terminate(connection)
                raise
            finally:
                self.pool.release(connection)
        except Exception as error:
            _raise_if_unavailable(error)
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction on one pooled connection: committed if the block ends normally.

        BEGIN and COMMIT are plain statements (no driver-side transaction object to keep in step);
        errors of BEGIN and COMMIT are mapped like a statement's, the block's own pass through.
        """
        try:
            connection = await self.acquire()
        except Exception as error:
            _raise_if_unavailable(error)
            raise
        in_block = False
        try:
            await connection.execute("BEGIN")
            in_block = True
            try:
                yield Transaction(connection)
            except BaseException as error:
                if _state_is_known(error):
                    await connection.execute("ROLLBACK")
                raise
            in_block = False
            await connection.execute("COMMIT")
        except BaseException as error:
            if not _state_is_known(error) or connection.is_in_transaction():
                _terminate(connection)
            if not in_block and isinstance(error, Exception):
                _raise_if_unavailable(error)
            raise
        finally:
            self.pool.release(connection)
