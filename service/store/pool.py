"""The request connection pool: a fixed number of asyncpg connections, every wait bounded, no timers per call.

asyncpg's own Pool costs each request a Task (`asyncio.shield` around every release), two
`asyncio.timeout` scopes and a queue round trip, and a per-statement `command_timeout` arms a
timer for every statement: together about a third of a retrieve's CPU in the profile (README,
"Performance"). This pool does what the service needs, with one watchdog task instead of
timers per call:

* `acquire` takes an idle connection at once (LIFO: the warmest), opens one while fewer than
  `size` exist (bounded by the connect timeout), and otherwise waits in line for
  `wait_seconds` at most, then raises TimeoutError.
* A checkout is bounded by `hold_seconds`: the watchdog terminates a connection held longer
  (a statement that a hung or overloaded server does not answer), which fails the statement
  awaiting it with ConnectionDoesNotExistError at once; database.py turns that into a 503. The
  server's own statement_timeout, set at connect, stops the statement on its side.
* `release` is synchronous: the connection goes to the first waiter or back to the idle list.
  A connection that is closed, or was left inside a transaction (a request cancelled during its
  COMMIT), is terminated instead, which makes the server roll back; its slot goes to the next
  waiter, who opens a fresh connection. Pooled connections carry no session state (no SET,
  LISTEN or advisory lock: those live on the relay's and the migrator's own connections), so
  there is nothing else to reset, and no reset round trip.
* A connection whose server went away while it was idle is noticed (asyncpg marks it closed
  when the socket drops) and replaced on the next acquire.
* A connection lives at most `max_lifetime` seconds: an idle one past it is terminated (it is
  idle, so the server has nothing to roll back) by the acquire that would have taken it, or by
  the watchdog, and a fresh one opened in its slot. So a pool follows a failover or a DNS change
  within that time even if no error ever told it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import asyncpg

logger = logging.getLogger("service.store.pool")

Connect = Callable[[], Awaitable[asyncpg.Connection]]
WATCH_SECONDS = 0.1  # the watchdog's period: how late a timeout may fire


class PoolClosedError(asyncpg.InterfaceError):
    """Raised to callers that acquire from, or wait on, a pool that is closing."""


class ConnectionPool:
    __slots__ = ("_born", "_busy", "_closing", "_connect", "_idle", "_loop", "_open", "_waiters", "_watchdog",
                 "hold_seconds", "max_lifetime", "size")

    def __init__(self, connect: Connect, size: int, hold_seconds: float, max_lifetime: float = 3600.0) -> None:
        """A pool for the running event loop; `fill` opens its connections."""
        self._loop = asyncio.get_running_loop()
        self._connect = connect
        self.size = size
        self.hold_seconds = hold_seconds
        self.max_lifetime = max_lifetime
        self._idle: list[asyncpg.Connection] = []
        self._busy: dict[asyncpg.Connection, float] = {}  # checked out -> loop time of the checkout
        self._born: dict[asyncpg.Connection, float] = {}  # open -> loop time it was opened
        # In line for a connection: a future that gets one, or None ("a slot is free: open a
        # connection"), and the loop time at which its wait ends.
        self._waiters: deque[tuple[asyncio.Future[asyncpg.Connection | None], float]] = deque()
        self._open = 0  # connections open or being opened, idle or checked out
        self._closing = False
        self._watchdog: asyncio.Task[None] | None = None

    async def fill(self) -> None:
        """Open every connection and start the watchdog; raises if PostgreSQL cannot be reached."""
        opened = await asyncio.gather(*(self._open_connection() for _ in range(self.size - self._open)),
                                      return_exceptions=True)
        for result in opened:
            if isinstance(result, asyncpg.Connection):
                self.release(result)  # idle, so that close() ends it if another one failed
        for result in opened:
            if isinstance(result, BaseException):
                raise result
        self._watchdog = asyncio.create_task(self._watch(), name="pool-watchdog")

    def open_count(self) -> int:
        return self._open

    def idle_count(self) -> int:
        return len(self._idle)

    async def acquire(self, wait_seconds: float) -> asyncpg.Connection:
        """A connection of the pool; waiting in line for one (not opening one) is bounded by `wait_seconds`."""
        if self._closing:
            raise PoolClosedError("the connection pool is closing")
        idle = self._idle
        while idle:
            connection = idle.pop()
            now = self._loop.time()
            if not connection.is_closed() and now - self._born[connection] <= self.max_lifetime:
                self._busy[connection] = now
                return connection
            self._end(connection)  # its server went away while it was idle, or it is too old
        if self._open < self.size:
            return await self._open_connection()
        return await self._wait_in_line(wait_seconds)

    async def _wait_in_line(self, wait_seconds: float) -> asyncpg.Connection:
        loop = self._loop
        waiter: asyncio.Future[asyncpg.Connection | None] = loop.create_future()
        self._waiters.append((waiter, loop.time() + wait_seconds))
        try:
            connection = await waiter
        except asyncio.CancelledError:
            # Cancelled just after being handed a connection or a slot: pass it on.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is None:
                    self._open -= 1
                    self._pass_free_slot()
                else:
                    self.release(handed)
            raise
        if connection is None:
            return await self._connect_counted()  # _pass_free_slot counted the slot as ours
        return connection

    async def _open_connection(self) -> asyncpg.Connection:
        self._open += 1
        return await self._connect_counted()

    async def _connect_counted(self) -> asyncpg.Connection:
        """Open a connection for a slot already counted in `_open`; give the slot back on failure."""
        try:
            connection = await self._connect()
        except BaseException:
            self._open -= 1
            self._pass_free_slot()
            raise
        self._busy[connection] = self._born[connection] = self._loop.time()
        return connection

    def _pass_free_slot(self) -> None:
        """Tell the first live waiter to open a connection in a slot that has just come free."""
        while self._waiters and self._open < self.size:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                self._open += 1  # the waiter's, from now on
                waiter.set_result(None)
                return

    def release(self, connection: asyncpg.Connection) -> None:
        """Give a connection back: to the first waiter, else to the idle list (or end it; see module)."""
        self._busy.pop(connection, None)
        if self._closing or connection.is_closed() or connection.is_in_transaction():
            self._end(connection)
            return
        waiters = self._waiters
        while waiters:
            waiter, _ = waiters.popleft()
            if not waiter.done():
                self._busy[connection] = self._loop.time()
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _end(self, connection: asyncpg.Connection) -> None:
        """Terminate a connection that leaves the pool, and give its slot to the next in line."""
        if not connection.is_closed():
            connection.terminate()
        self._born.pop(connection, None)
        self._open -= 1
        self._pass_free_slot()

    async def _watch(self) -> None:
        """Every WATCH_SECONDS: time out waiters whose wait is over, end checkouts held too long."""
        loop = self._loop
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            now = loop.time()
            if self._waiters:
                waiting = [(waiter, deadline) for waiter, deadline in self._waiters if not waiter.done()]
                self._waiters = deque(entry for entry in waiting if entry[1] > now)
                for waiter, deadline in waiting:
                    if deadline <= now:
                        waiter.set_exception(TimeoutError("no pooled connection came free in time"))
            expired = [connection for connection in self._idle if now - self._born[connection] > self.max_lifetime]
            for connection in expired:
                self._idle.remove(connection)
                self._end(connection)
            overdue = [connection for connection, since in self._busy.items() if now - since > self.hold_seconds]
            for connection in overdue:
                del self._busy[connection]
                if not connection.is_closed():
                    logger.warning("ending a PostgreSQL connection held over %.1f s (unresponsive server?)",
                                   self.hold_seconds)
                    connection.terminate()

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Close the idle connections gracefully; connections still checked out end on release."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolClosedError("the connection pool is closing"))
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        for connection in idle:
            self._born.pop(connection, None)
        results = await asyncio.gather(*(connection.close(timeout=grace_seconds) for connection in idle),
                                       return_exceptions=True)
        for connection, result in zip(idle, results, strict=True):
            if isinstance(result, BaseException):
                with contextlib.suppress(Exception):
                    connection.terminate()
