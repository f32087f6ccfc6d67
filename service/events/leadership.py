"""The relay's own PostgreSQL sessions: one that counts the process among the live relays, and one
per partition it leads, which carries that partition's publisher lock.

One publisher per partition: every process runs a relay, and only the holder of a session-level
advisory lock keyed by the partition's stream key publishes it (outbox.try_lock_stream). Each lock
lives on a dedicated connection from RELAY_DATABASE_URL, never a pooled one (a pool's reset and
release would drop it), so the lock's lifetime is the session's: it is freed when the leader
process dies (the server sees the socket close) and, through the server-side TCP keepalives
below, when the leader's host or network dies. The same session LISTENs for the writers'
NOTIFY and runs the partition's batch queries, so a dead session stops a batch before anything is
published. The membership session (outbox.join_relays) ends the same ways, so the count of live
relays, by which a process takes its share of the partitions (relay.py), forgets a dead process
as quickly as its locks are freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from service.settings import Settings
from service.store import outbox

# A silent peer is declared dead after idle + interval * count = 5 + 2 * 3 = 11 s, and
# unacknowledged data after 10 s: well inside the 30 s takeover promise for a dead host or network.
KEEPALIVE_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "10000",
}
CLOSE_SECONDS = 2.0


LEADER_APPLICATION_NAME = "conversations-relay"
MEMBER_APPLICATION_NAME = "conversations-relay-member"  # pg_stat_activity tells the two kinds apart


async def open_session(settings: Settings, on_notify: Callable[..., None] | None,
                       application_name: str = LEADER_APPLICATION_NAME) -> asyncpg.Connection:
    """A new session, listening for the writers' notifications if `on_notify` is given."""
    connection = await asyncpg.connect(
        settings.relay_url,
        timeout=settings.db_connect_timeout,
        command_timeout=settings.db_statement_timeout,
        # Its moves commit durably (the server's default, stated here so no configuration turns it
        # off): a moved row is a feed position a client may have read, and a move lost in a crash
        # would move its rows again in a later batch, behind that client's cursor.
        server_settings={"application_name": application_name, "synchronous_commit": "on",
                         **KEEPALIVE_SETTINGS},
    )
    if on_notify is not None:
        try:
            await connection.add_listener(outbox.CHANNEL, on_notify)
        except BaseException:
            connection.terminate()
            raise
    return connection


async def close_session(connection: asyncpg.Connection | None, *, graceful: bool) -> None:
    """End the session, and with it the lock; after a failure, without waiting on the server."""
    if connection is None or connection.is_closed():
        return
    if not graceful:
        connection.terminate()
        return
    try:
        await asyncio.wait_for(connection.close(), timeout=CLOSE_SECONDS)
    except Exception:  # a dead socket cannot close cleanly
        connection.terminate()
