"""The event log behind GET /v1/events: published events, kept for the feed's window.

The relay retires each published outbox row by moving it here (one statement: DELETE ...
RETURNING into INSERT), stamped with a batch number. The moves of every relay take turns (a
transaction-level advisory lock, held until commit) and draw their batch number inside their
turn, so batch numbers become visible in increasing order: the rows a reader sees are always a
prefix of the feed's order (batch, position), and a row that becomes visible later sorts after
every row already shown. A client that continues from its last event therefore misses nothing,
whatever commits meanwhile. That holds however many leaders move at once (one per partition of
each stream): the turn is one lock for every relay of the database, and a batch number is drawn
only inside it. A conversation's rows belong to one partition, whose one leader moves them batch
after batch in commit order, so the feed keeps each conversation's events in sequence order.

The log is partitioned by week of `occurred_at`; `maintain` (run by migrate, then by each process
at start and hourly) creates the coming weeks' partitions and drops those past the window, so
expiry costs no per-row deletes. Lookups: the feed's order is `event_log_feed_idx` (account_id,
batch, position), filtered by type `event_log_type_idx` and by conversation
`event_log_conversation_idx` (the same order after the filter's column); an event by id is
`event_log_event_idx` (account_id, event_id), pruned to the partitions around the id's time.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import cache
from typing import NamedTuple

import asyncpg

from service.model import ConversationEvent
from service.store import outbox
from service.store.database import Executor

logger = logging.getLogger("service.store.event_log")

PARTITIONS_AHEAD_WEEKS = 2
MAINTENANCE_LOCK_KEY = 0x6C6F672D6D61696E  # "log-main": one maintainer at a time across replicas
MOVE_LOCK_KEY = 0x6C6F672D6D6F7665  # "log-move": relays move their batches one at a time
# A row's partition follows occurred_at (the database's clock); an event id's time part is the
# writer's clock. This much slack covers any skew between the two when looking an id up.
CLOCK_SLACK_SECONDS = 3600

_COLUMNS = ", ".join(outbox.COLUMNS)

_MOVED = (*outbox.KEY_COLUMNS, *outbox.COLUMNS)
# The DELETE walks conversation_outbox_pkey (stream, position).
RETIRE_PUBLISHED = f"""
WITH published AS (
    DELETE FROM conversation_outbox WHERE stream = $1 AND position = ANY($2::bigint[])
    RETURNING {", ".join(_MOVED)}
), turn AS (
    SELECT nextval('event_log_batch_seq') AS batch FROM (SELECT pg_advisory_xact_lock({MOVE_LOCK_KEY})) AS queued
)
INSERT INTO event_log (batch, {", ".join(_MOVED)})
SELECT turn.batch, {", ".join(f"published.{c}" for c in _MOVED)}
FROM published, turn
"""


async def retire_published(connection: asyncpg.Connection, stream: str, positions: list[int]) -> None:
    """Move published outbox rows into the log, in one statement (so one transaction)."""
    await connection.execute(RETIRE_PUBLISHED, stream, positions)


class FeedPosition(NamedTuple):
    """A place in the feed's order: the key of event_log_feed_idx after the account."""

    batch: int
    position: int


class FeedFilters(NamedTuple):
    """The feed's optional filters (None: not filtering); each has an index (schema.sql)."""

    type: str | None = None
    conversation_id: str | None = None


# Filter -> the condition it adds; its value is the next parameter.
_FEED_CONDITIONS = {"type": "type = ${n}", "conversation_id": "conversation_id = ${n}"}


@cache
def feed_statement(direction: str | None, filters: tuple[str, ...]) -> str:
    """One page of an account's feed, newest first, as a keyset scan of event_log_feed_idx (or,
    filtered, of event_log_type_idx / event_log_conversation_idx).

    `direction` None (the newest page), "starting_after" (older than $3, $4, descending) or
    "ending_before" (newer than $3, $4, ascending: the caller reverses). $1 account, $2 page
    size + 1, then the position if any, then one parameter per filter, then the window's start:
    a week's partition is dropped only once all of it is past the window, and until then its
    older events must not show (their ids are no cursors any more).
    """
    conditions = ["account_id = $1"]
    if direction is not None:
        conditions.append(f"(batch, position) {'<' if direction == 'starting_after' else '>'} ($3, $4)")
    first_filter = 3 if direction is None else 5
    for offset, name in enumerate(filters):
        conditions.append(_FEED_CONDITIONS[name].format(n=first_filter + offset))
    conditions.append(f"occurred_at >= ${first_filter + len(filters)}")
    order = "ASC" if direction == "ending_before" else "DESC"
    return (f"SELECT {_COLUMNS} FROM event_log WHERE {' AND '.join(conditions)} "
            f"ORDER BY batch {order}, position {order} LIMIT $2")


async def fetch_feed(db: Executor, account_id: str, size: int, direction: str | None,
                     position: FeedPosition | None, filters: FeedFilters, since_seconds: int
                     ) -> tuple[list[ConversationEvent], bool]:
    """Up to `size` events at or after `since_seconds`, newest first, from `position`; and whether
    more exist beyond them."""
    given = {name: value for name, value in filters._asdict().items() if value is not None}
    query = feed_statement(direction, tuple(given))
    cursor: tuple[object, ...] = () if position is None else (position.batch, position.position)
    rows = await db.fetch(query, account_id, size + 1, *cursor, *given.values(), since_seconds)
    has_more = len(rows) > size
    page = [outbox.event_of(row, 0) for row in rows[:size]]
    if direction == "ending_before":
        page.reverse()
    return page, has_more


SELECT_EVENT = (f"SELECT batch, position, {_COLUMNS} FROM event_log "
                "WHERE account_id = $1 AND event_id = $2 AND occurred_at BETWEEN $3 AND $4")


async def fetch_event(db: Executor, account_id: str, event_id: str, around_seconds: int
                      ) -> tuple[FeedPosition, ConversationEvent] | None:
    """The account's event `event_id` and its feed position, if the feed shows it.

    `around_seconds` is when the event happened, as its id says; only the partitions within
    CLOCK_SLACK_SECONDS of it are searched.
    """
    row = await db.fetchrow(SELECT_EVENT, account_id, event_id, around_seconds - CLOCK_SLACK_SECONDS,
                            around_seconds + CLOCK_SLACK_SECONDS)
    if row is None:
        return None
    return FeedPosition(row[0], row[1]), outbox.event_of(row, 2)


# ------------------------------------------------------------------------------- maintenance

# The outbox's columns the log lacks (LIKE copied the outbox's columns when the log was created),
# with each one's type, default and nullability as the outbox has them.
SELECT_COLUMNS_TO_ADOPT = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid), a.attnotnull
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = 'conversation_outbox'::regclass AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attidentity = ''
  AND NOT EXISTS (SELECT FROM pg_attribute l WHERE l.attrelid = 'event_log'::regclass AND l.attname = a.attname
                  AND NOT l.attisdropped)
ORDER BY a.attnum
"""


async def adopt_outbox_columns(connection: asyncpg.Connection) -> list[str]:
    """Give the log every column the outbox gained since the log was created; the names added.

    A NOT NULL column needs its default for the rows already in the log (every outbox column added
    after the first release has one, so that writers of the previous release keep working).
    """
    added = []
    for name, sql_type, default, not_null in await connection.fetch(SELECT_COLUMNS_TO_ADOPT):
        clause = f"ADD COLUMN {name} {sql_type}"
        if default is not None:
            clause += f" DEFAULT {default}"
            if not_null:
                clause += " NOT NULL"
        await connection.execute(f"ALTER TABLE event_log {clause}")
        added.append(name)
    return added



def _week_of(day: dt.date) -> dt.date:
    """The Monday that starts `day`'s partition."""
    return day - dt.timedelta(days=day.weekday())


def _partition_name(monday: dt.date) -> str:
    return f"event_log_{monday:%Y%m%d}"


def _epoch(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


async def maintain(connection: asyncpg.Connection, window_days: int, today: dt.date | None = None) -> None:
    """Create the partitions of this week and the coming ones; drop those wholly past the window.

    A partition holds a week (Monday to Monday, UTC), so a page of the feed reads a handful of
    partitions, and events stay at least `window_days` (at most a week more). One maintainer at
    a time (a transaction-level advisory lock): replicas skip while another works. Rows that
    landed in the default partition (a week without a partition) are deleted past the window.
    """
    today = today or dt.datetime.now(dt.UTC).date()
    oldest_kept = today - dt.timedelta(days=window_days)
    async with connection.transaction():
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", MAINTENANCE_LOCK_KEY):
            return
        # Creating or dropping a partition locks the log briefly; never queue behind a long holder.
        await connection.execute("SET LOCAL lock_timeout = '1s'")
        existing = {row[0] for row in await connection.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'event_log'")}
        for weeks in range(PARTITIONS_AHEAD_WEEKS + 1):
            monday = _week_of(today) + dt.timedelta(weeks=weeks)
            start, end = _epoch(monday), _epoch(monday + dt.timedelta(weeks=1))
            if _partition_name(monday) in existing:
                continue
            # A week whose events already went to the default partition keeps them there (a
            # partition for it could not be created) until they leave the window.
            if await connection.fetchval("SELECT EXISTS (SELECT FROM event_log_default "
                                         "WHERE occurred_at >= $1 AND occurred_at < $2)", start, end):
                continue
            await connection.execute(f"CREATE TABLE IF NOT EXISTS {_partition_name(monday)} PARTITION OF event_log "
                                     f"FOR VALUES FROM ({start}) TO ({end})")
        for name in sorted(existing - {"event_log_default"}):
            week_ends = dt.datetime.strptime(name[10:], "%Y%m%d").replace(tzinfo=dt.UTC).date() + dt.timedelta(weeks=1)
            if week_ends <= oldest_kept:
                await connection.execute(f"DROP TABLE IF EXISTS {name}")
                logger.info("dropped %s: its events are past the feed's %d-day window", name, window_days)
        await connection.execute("DELETE FROM event_log_default WHERE occurred_at < $1", _epoch(oldest_kept))
