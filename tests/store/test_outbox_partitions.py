"""docs/api.md §6.1 partitions in the store: the writing statement records each event's partition, the
event log keeps it, and the moves of several partitions' leaders still take turns."""

from __future__ import annotations

import asyncio

import asyncpg

from service.model import ConversationUpdate
from service.partitions import partition_of
from service.store import event_log, queries
from service.store.database import Transaction

PARTITIONS = 8


async def outbox_rows(db: asyncpg.Connection, stream: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT conversation_id, stream_partition, position FROM conversation_outbox "
                          "WHERE stream = $1 ORDER BY position", stream)


async def test_every_write_records_the_partition_the_contract_computes_from_the_conversation_id(
        db: asyncpg.Connection, stream_name: str):
    account = "acct_part_" + stream_name[5:17]
    executor = Transaction(db)
    created = [await queries.insert_conversation(executor, stream_name, account, f"contact_{n}", None, PARTITIONS)
               for n in range(40)]
    ids = [conversation[0].id for conversation in created]
    await queries.update_conversation(executor, stream_name, account, ids[0], ConversationUpdate(is_muted=True),
                                      partitions=PARTITIONS)
    await queries.delete_conversation(executor, stream_name, account, ids[1], partitions=PARTITIONS)
    rows = await outbox_rows(db, stream_name)
    assert len(rows) == 42
    assert {row[0]: row[1] for row in rows} == {cid: partition_of(cid, PARTITIONS) for cid in ids}
    assert len({row[1] for row in rows}) > 4  # 40 ids fall into most of the 8 partitions


async def test_a_writer_with_one_partition_records_partition_0(db: asyncpg.Connection, stream_name: str):
    await queries.insert_conversation(Transaction(db), stream_name, "acct_one_" + stream_name[5:17], "c", None)
    assert [row[1] for row in await outbox_rows(db, stream_name)] == [0]


async def test_a_moved_event_keeps_its_partition_in_the_event_log(db: asyncpg.Connection, stream_name: str):
    account = "acct_log_" + stream_name[5:17]
    created, _ = await queries.insert_conversation(Transaction(db), stream_name, account, "c", None, PARTITIONS)
    [(_, partition, position)] = await outbox_rows(db, stream_name)
    await event_log.retire_published(db, stream_name, [position])
    assert await db.fetchval("SELECT stream_partition FROM event_log WHERE account_id = $1", account) == partition
    assert partition == partition_of(created.id, PARTITIONS)


async def test_moves_of_two_partitions_leaders_take_turns_so_batches_become_visible_in_order(
        db: asyncpg.Connection, database_url: str, stream_name: str):
    account = "acct_turns_" + stream_name[5:17]
    executor = Transaction(db)
    by_partition: dict[int, int] = {}
    n = 0
    while len(by_partition) < 2:  # one event in each of two partitions of the same stream
        created, _ = await queries.insert_conversation(executor, stream_name, account, f"c{n}", None, PARTITIONS)
        rows = await outbox_rows(db, stream_name)
        position = next(row[2] for row in rows if row[0] == created.id)
        by_partition.setdefault(partition_of(created.id, PARTITIONS), position)
        n += 1
    (_, first), (_, second) = list(by_partition.items())[:2]
    holder, other = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await event_log.retire_published(holder, stream_name, [first])
        waiting = asyncio.create_task(event_log.retire_published(other, stream_name, [second]))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the second leader's move did not wait for the first one's turn"
        await transaction.commit()
        await asyncio.wait_for(waiting, 5)
    finally:
        await holder.close()
        await other.close()
    moved = await db.fetch("SELECT position, batch FROM event_log WHERE account_id = $1 AND position = ANY($2)",
                           account, [first, second])
    batches = {row[0]: row[1] for row in moved}
    assert batches[first] < batches[second]
