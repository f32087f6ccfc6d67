"""The event log behind the feed (service/store/event_log.py): moves take turns, partitions come and go.

Moves of published outbox rows take turns, so batch numbers become visible in increasing order:
what a reader sees of the log is always a prefix of the feed's order. These tests hold a move's
transaction open to show it.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg

from service.store import event_log

INSERT_OUTBOX_ROW = """
INSERT INTO conversation_outbox (stream, event_id, type, account_id, conversation_id, occurred_at, sequence,
                                 schema_version)
VALUES ($1, $2, 'conversation.created', $3, $4, floor(extract(epoch FROM now()))::bigint, 1, 1)
RETURNING position
"""


async def outbox_row(db: asyncpg.Connection, stream: str, account_id: str, n: int) -> int:
    return await db.fetchval(INSERT_OUTBOX_ROW, stream, f"evt_{n:016d}", account_id, f"{n:016d}")


async def batches(db: asyncpg.Connection, account_id: str) -> list[int]:
    return [row[0] for row in await db.fetch("SELECT batch FROM event_log WHERE account_id = $1 ORDER BY batch",
                                             account_id)]


async def test_a_move_waits_for_the_move_before_it_to_commit_and_gets_a_later_batch(
        db: asyncpg.Connection, database_url: str, stream_name: str):
    account = "acct_turns_" + stream_name[-8:]
    first = await outbox_row(db, stream_name + ":a", account, 1)
    second = await outbox_row(db, stream_name + ":b", account, 2)
    holder = await asyncpg.connect(database_url)
    other = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await event_log.retire_published(holder, stream_name + ":a", [first])
        waiting = asyncio.create_task(event_log.retire_published(other, stream_name + ":b", [second]))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the second move did not wait for the first one's turn"
        assert await batches(db, account) == []  # neither is visible yet
        await transaction.commit()
        await asyncio.wait_for(waiting, 5)
    finally:
        await holder.close()
        await other.close()
    first_batch, second_batch = await batches(db, account)
    assert first_batch < second_batch


async def test_moved_rows_leave_the_outbox_in_the_same_statement(db: asyncpg.Connection, stream_name: str):
    account = "acct_move_" + stream_name[-8:]
    position = await outbox_row(db, stream_name, account, 3)
    await event_log.retire_published(db, stream_name, [position])
    assert await db.fetchval("SELECT count(*) FROM conversation_outbox WHERE stream = $1", stream_name) == 0
    assert len(await batches(db, account)) == 1


async def partitions(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                          "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'event_log'")
    return {row[0] for row in rows}


async def test_maintenance_creates_this_and_the_coming_weeks_and_drops_weeks_past_the_window(
        db: asyncpg.Connection):
    today = dt.datetime.now(dt.UTC).date()
    monday = today - dt.timedelta(days=today.weekday())
    await event_log.maintain(db, 30, today=today)
    names = await partitions(db)
    for weeks in range(event_log.PARTITIONS_AHEAD_WEEKS + 1):
        assert f"event_log_{monday + dt.timedelta(weeks=weeks):%Y%m%d}" in names
    week_ends = monday + dt.timedelta(weeks=1)
    await event_log.maintain(db, 30, today=week_ends + dt.timedelta(days=29))  # its last events: 30 days old
    assert f"event_log_{monday:%Y%m%d}" in await partitions(db)
    await event_log.maintain(db, 30, today=week_ends + dt.timedelta(days=30))
    assert f"event_log_{monday:%Y%m%d}" not in await partitions(db)
    await event_log.maintain(db, 30, today=today)  # back as it was, for the tests that follow
    assert f"event_log_{monday:%Y%m%d}" in await partitions(db)


async def test_a_day_whose_rows_went_to_the_default_partition_gets_no_partition_and_nothing_fails(
        db: asyncpg.Connection):
    far = dt.date(2200, 1, 6)  # a Monday
    start = int(dt.datetime(2200, 1, 6, tzinfo=dt.UTC).timestamp())
    await db.execute(
        "INSERT INTO event_log (batch, stream, position, event_id, type, account_id, conversation_id, occurred_at, "
        "sequence, schema_version) VALUES (0, 's', 0, 'evt_far', 'conversation.created', 'acct_far', 'c', $1, 1, 1)",
        start + 10)
    try:
        await event_log.maintain(db, 30, today=far)
        assert "event_log_22000106" not in await partitions(db)
        assert await db.fetchval("SELECT count(*) FROM event_log_default WHERE account_id = 'acct_far'") == 1
    finally:
        await db.execute("DELETE FROM event_log WHERE account_id = 'acct_far'")
        for name in await partitions(db):
            if name.startswith("event_log_22"):
                await db.execute(f"DROP TABLE {name}")
