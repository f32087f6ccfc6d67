"""The transactional outbox, `conversation_outbox`: its columns, and every statement that touches it.

A write inserts its event here in the same statement as the change (`insert_event`, a CTE
fragment the write statements embed), after the change has locked the conversation's row, so a
conversation's rows are in commit order. A row carries the event's envelope, the conversation
column by column as `data` shows it, and for an update the previous values of the updatable
fields. The relay reads a stream's rows in position order (`fetch_batch`), turns each into a
stream entry (`entry_fields`: `data` encoded by the HTTP response's own encoder, so the bytes
are equal), and retires each published row by its own position (event_log.retire_published
moves it into the feed's log): positions are not assigned in commit order, so no high-water mark
is ever kept.

Each row records its partition (`stream_partition`, service/partitions.py), computed by the
writing statement from the conversation id and the writer's EVENTS_PARTITIONS; each partition has
its own relay leader, which reads its rows in position order (`fetch_batch`, on
conversation_outbox_partition_idx). Rows recorded under another partition count (a change of
EVENTS_PARTITIONS) are `fetch_strays`: a partition at or above the relay's count is published by
the leader of that number modulo the count.

Writers NOTIFY the relay on commit unless the partition's leader said it is polling
(`outbox_wakeups`, `set_writers_notify`): NOTIFY takes a database-wide lock at commit, which under
load cost a quarter of the write throughput.
"""

from __future__ import annotations

import asyncpg
from msgspec import UNSET

from service.model import (
    CONVERSATION_FIELDS,
    EVENT_SCHEMA_VERSION,
    STREAM_FIELDS,
    UPDATABLE_FIELDS,
    Conversation,
    ConversationEvent,
    PreviousAttributes,
    encode_json,
)
from service.partitions import partition_sql

CHANNEL = "conversation_outbox"

# The entry's envelope (its fields before `data`), column by column; the event id's column is
# `event_id`. Then the conversation as `data` shows it (its id is `conversation_id`), then the
# previous values of the updatable fields (updates only; NULL otherwise).
ENVELOPE_FIELDS = STREAM_FIELDS[:STREAM_FIELDS.index("data")]
ENVELOPE_COLUMNS = tuple("event_id" if name == "id" else name for name in ENVELOPE_FIELDS)
DATA_COLUMNS = CONVERSATION_FIELDS[1:]
PREVIOUS_COLUMNS = tuple(f"previous_{name}" for name in UPDATABLE_FIELDS)
COLUMNS = (*ENVELOPE_COLUMNS, *DATA_COLUMNS, *PREVIOUS_COLUMNS)
# Where a row is published: its stream (EVENTS_STREAM), its partition, its place in the outbox's order.
# The event log keeps them too (event_log.py moves KEY_COLUMNS + COLUMNS).
PARTITION_COLUMN = "stream_partition"
KEY_COLUMNS = ("stream", PARTITION_COLUMN, "position")

# Where each part sits in a row whose COLUMNS start at `first` (SELECT_BATCH reads `position` first).
class _Layout:
    __slots__ = ("conversation_id", "data", "envelope", "previous", "type")

    def __init__(self, first: int) -> None:
        self.envelope = slice(first, first + len(ENVELOPE_COLUMNS))
        self.data = slice(self.envelope.stop, self.envelope.stop + len(DATA_COLUMNS))
        self.previous = slice(self.data.stop, self.data.stop + len(PREVIOUS_COLUMNS))
        self.type = first + ENVELOPE_COLUMNS.index("type")
        self.conversation_id = first + ENVELOPE_COLUMNS.index("conversation_id")


_LAYOUTS = {first: _Layout(first) for first in range(3)}

# --------------------------------------------------------------------------------- writing


# In the RETURNING clause: the inserted row's stream and partition pick its leader's wakeup row.
_NOTIFY_UNLESS_POLLED = (
    "CASE WHEN (SELECT w.notify FROM outbox_wakeups w WHERE w.stream = conversation_outbox.stream "
    f"AND w.{PARTITION_COLUMN} = conversation_outbox.{PARTITION_COLUMN}) IS NOT FALSE "
    f"THEN pg_notify('{CHANNEL}', '') END")


def insert_event(event_type: str, *, stream: str, partitions: str, account_id: str, event_id: str,
                 occurred_at: str, sequence: str, source: str, row: str, previous: str | None = None) -> str:
    """A data-modifying CTE body: one `event_type` event per row of `source`, and the relay's NOTIFY.

    The arguments are SQL expressions of the embedding statement: `partitions` the writer's
    EVENTS_PARTITIONS, `row` the alias (within `source`) of the conversation as the write left
    it, `previous` that of the conversation before an update. The RETURNING clause notifies only
    if a row was inserted.
    """
    values = [stream, partition_sql(f"{row}.id", partitions), event_id, f"'{event_type}'", account_id,
              f"{row}.id", occurred_at, sequence, str(EVENT_SCHEMA_VERSION)]
    values += [f"{row}.{name}" for name in DATA_COLUMNS]
    values += [f"{previous}.{name}" if previous else "NULL" for name in UPDATABLE_FIELDS]
    return (f"INSERT INTO conversation_outbox (stream, {PARTITION_COLUMN}, {', '.join(COLUMNS)})\n"
            f"    SELECT {', '.join(values)}\n"
            f"    FROM {source}\n"
            f"    RETURNING {_NOTIFY_UNLESS_POLLED}")


# --------------------------------------------------------------------------------- relaying

# One partition's rows in position order: conversation_outbox_partition_idx (stream, stream_partition,
# position). Strays (rows recorded under a larger partition count) by the same index, partition by partition.
SELECT_BATCH = (f"SELECT position, {', '.join(COLUMNS)} FROM conversation_outbox "
                f"WHERE stream = $1 AND {PARTITION_COLUMN} = $2 ORDER BY position LIMIT $3")
SELECT_STRAYS = (f"SELECT position, {', '.join(COLUMNS)} FROM conversation_outbox "
                 f"WHERE stream = $1 AND {PARTITION_COLUMN} >= $2 AND {PARTITION_COLUMN} % $2 = $3 "
                 f"ORDER BY {PARTITION_COLUMN}, position LIMIT $4")
# Both walk conversation_outbox_pkey (stream, position): the count stops at $2 rows, and the
# oldest is the next row the relay will publish, so the cost stays flat however large the backlog.
# The planner is held to that index: with statistics older than a burst (a backlog grows by
# millions within one autovacuum round), it would otherwise pick a bitmap scan, which reads every
# row of the stream before the LIMIT applies (measured: 0.4 s at 1,000,000 rows).
HOLD_TO_INDEX_SCANS = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off"
SELECT_BACKLOG = """
SELECT (SELECT count(*) FROM (SELECT FROM conversation_outbox WHERE stream = $1 LIMIT $2) AS w),
       (SELECT occurred_at FROM conversation_outbox WHERE stream = $1 ORDER BY position LIMIT 1)
"""
# The same per partition, two descents of conversation_outbox_partition_idx each.
SELECT_PARTITION_BACKLOG = f"""
SELECT (SELECT count(*) FROM (SELECT FROM conversation_outbox
                              WHERE stream = $1 AND {PARTITION_COLUMN} = p LIMIT $3) AS w),
       (SELECT occurred_at FROM conversation_outbox WHERE stream = $1 AND {PARTITION_COLUMN} = p
        ORDER BY position LIMIT 1)
FROM generate_series(0, $2 - 1) AS p ORDER BY p
"""
# A stopping follower's mark, and whether anything up to it still waits (conversation_outbox_pkey).
SELECT_LAST_POSITION = "SELECT max(position) FROM conversation_outbox WHERE stream = $1"
SELECT_WAITING_UP_TO = "SELECT EXISTS (SELECT FROM conversation_outbox WHERE stream = $1 AND position <= $2)"
SET_WRITERS_NOTIFY = (f"INSERT INTO outbox_wakeups (stream, {PARTITION_COLUMN}, notify) VALUES ($1, $2, $3) "
                      f"ON CONFLICT (stream, {PARTITION_COLUMN}) DO UPDATE SET notify = EXCLUDED.notify")
# One publisher per partition: a session-level advisory lock keyed by the partition's stream key
# (with one partition, the stream's name, as before partitions existed).
TRY_LOCK_STREAM = "SELECT pg_try_advisory_lock(hashtextextended('conversations-relay:' || $1, 0))"
# The relays alive for a stream: each holds this shared lock on its own session while it runs.
JOIN_RELAYS = "SELECT pg_advisory_lock_shared(hashtextextended('conversations-relay-members:' || $1, 0))"
# How many relays are alive, and which of the partition keys $2 no session holds the lock of.
SURVEY_RELAYS = """
WITH held AS (
    SELECT (l.classid::bigint << 32) | l.objid::bigint AS key, l.mode
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT (SELECT count(*) FROM held
        WHERE mode = 'ShareLock' AND key = hashtextextended('conversations-relay-members:' || $1, 0)),
       ARRAY(SELECT k.ordinality - 1 FROM unnest($2::text[]) WITH ORDINALITY AS k (name, ordinality)
             WHERE NOT EXISTS (SELECT FROM held WHERE held.mode = 'ExclusiveLock'
                               AND held.key = hashtextextended('conversations-relay:' || k.name, 0))
             ORDER BY k.ordinality)
"""


async def fetch_batch(connection: asyncpg.Connection, stream: str, partition: int, limit: int
                      ) -> list[asyncpg.Record]:
    """Up to `limit` of the partition's rows, in position order."""
    return await connection.fetch(SELECT_BATCH, stream, partition, limit)


async def fetch_strays(connection: asyncpg.Connection, stream: str, partitions: int, partition: int, limit: int
                       ) -> list[asyncpg.Record]:
    """Up to `limit` rows recorded under a partition at or above `partitions` that is `partition` modulo
    `partitions`, by recorded partition, then position."""
    return await connection.fetch(SELECT_STRAYS, stream, partitions, partition, limit)


def position_of(row: asyncpg.Record) -> int:
    return row[0]


def _parts(row: asyncpg.Record, first: int) -> tuple[Conversation, PreviousAttributes | None]:  # type: ignore[valid-type]
    """The conversation as `data` shows it, and for an update the old values of what changed."""
    layout = _LAYOUTS[first]
    conversation = Conversation(row[layout.conversation_id], *row[layout.data])
    if row[layout.type] != "conversation.updated":
        return conversation, None
    changed = {name: old for name, old in zip(UPDATABLE_FIELDS, row[layout.previous], strict=True)
               if old != getattr(conversation, name)}
    return conversation, PreviousAttributes(**changed)


def entry_fields(row: asyncpg.Record, first: int = 1) -> list[str | bytes]:
    """A row as its stream entry: field, value, ... in STREAM_FIELDS order; COLUMNS start at `first`.

    `data` is the conversation encoded by the HTTP response's own encoder; `previous_attributes`
    (updates only) holds the old value of each updatable field that differs, in field order.
    """
    fields: list[str | bytes] = []
    for name, value in zip(ENVELOPE_FIELDS, row[_LAYOUTS[first].envelope], strict=True):
        fields += (name, value if isinstance(value, str) else str(value))
    conversation, previous = _parts(row, first)
    fields += ("data", encode_json(conversation))
    if previous is not None:
        fields += ("previous_attributes", encode_json(previous))
    return fields


def event_of(row: asyncpg.Record, first: int) -> ConversationEvent:
    """A row as the decoded event a consumer would make of its entry; COLUMNS start at `first`."""
    conversation, previous = _parts(row, first)
    envelope = dict(zip(ENVELOPE_FIELDS, row[_LAYOUTS[first].envelope], strict=True))
    return ConversationEvent(**envelope, data=conversation,
                             previous_attributes=UNSET if previous is None else previous)


async def fetch_backlog(connection: asyncpg.Connection, stream: str, count_limit: int) -> tuple[int, int | None]:
    """(rows waiting to be published, counted up to `count_limit`; occurred_at of the next to go) for `stream`."""
    async with connection.transaction(readonly=True):
        await connection.execute(HOLD_TO_INDEX_SCANS)
        row = await connection.fetchrow(SELECT_BACKLOG, stream, count_limit)
    return int(row[0]), row[1]


async def fetch_partition_backlogs(connection: asyncpg.Connection, stream: str, partitions: int, count_limit: int
                                   ) -> list[tuple[int, int | None]]:
    """fetch_backlog for each partition below `partitions`, in partition order."""
    async with connection.transaction(readonly=True):
        await connection.execute(HOLD_TO_INDEX_SCANS)
        rows = await connection.fetch(SELECT_PARTITION_BACKLOG, stream, partitions, count_limit)
    return [(int(row[0]), row[1]) for row in rows]


async def fetch_last_position(connection: asyncpg.Connection, stream: str) -> int | None:
    """The highest position of the stream's rows now in the outbox, or None if there are none."""
    return await connection.fetchval(SELECT_LAST_POSITION, stream)


async def has_rows_up_to(connection: asyncpg.Connection, stream: str, position: int) -> bool:
    """Whether any of the stream's rows at or below `position` still waits to be published."""
    return bool(await connection.fetchval(SELECT_WAITING_UP_TO, stream, position))


async def set_writers_notify(connection: asyncpg.Connection, stream: str, partition: int, notify: bool) -> None:
    """Tell writers of the partition whether to NOTIFY on commit (false while its leader polls)."""
    await connection.execute(SET_WRITERS_NOTIFY, stream, partition, notify)


async def try_lock_stream(connection: asyncpg.Connection, key: str) -> bool:
    """Take the publisher lock of stream key `key` for this session, if no other session holds it."""
    return bool(await connection.fetchval(TRY_LOCK_STREAM, key))


async def join_relays(connection: asyncpg.Connection, stream: str) -> None:
    """Count this session among the stream's live relays until it ends."""
    await connection.execute(JOIN_RELAYS, stream)


async def survey_relays(connection: asyncpg.Connection, stream: str, keys: list[str]) -> tuple[int, list[int]]:
    """(live relays of the stream, indexes of the `keys` whose publisher lock nobody holds)."""
    row = await connection.fetchrow(SURVEY_RELAYS, stream, keys)
    return int(row[0]), list(row[1])
