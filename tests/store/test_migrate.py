"""docs/api.md §7 `migrate`: creates the database, applies schema.sql, idempotent, safe in parallel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.settings import Settings
from service.store.migrate import migrate
from service.store.outbox import SELECT_BATCH as SELECT_OUTBOX_BATCH
from service.store.outbox import SELECT_PARTITION_BACKLOG
from service.store.outbox import SELECT_STRAYS as SELECT_OUTBOX_STRAYS
from service.store.queries import (
    SELECT_CONVERSATION,
    SELECT_ID_BY_CONTACT,
    SELECT_ID_BY_GROUP,
    activity_statement,
    list_statement,
)
from tests.conftest import Backends, database_url_for, drop_database, migrated_database
from tests.servers import ROOT

SCHEMA_SNAPSHOT = """
SELECT table_name || '.' || column_name || ':' || data_type || ':' || coalesce(collation_name, '')
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1
"""


@pytest.fixture
async def fresh_database(backend_urls: Backends) -> AsyncIterator[str]:
    """The URL of a database that does not exist yet (dropped afterwards if a test created it)."""
    name = f"conversations_migrate_{uuid.uuid4().hex[:10]}"
    yield database_url_for(backend_urls.admin_database_url, name)
    await drop_database(backend_urls.admin_database_url, name)


async def snapshot(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        return [row[0] for row in await connection.fetch(SCHEMA_SNAPSHOT)]
    finally:
        await connection.close()


async def test_migrate_creates_the_database_when_it_does_not_exist(fresh_database: str):
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncpg.connect(fresh_database)
    await migrate(Settings(database_url=fresh_database))
    tables = await snapshot(fresh_database)
    assert any(line.startswith("conversations.id:text:C") for line in tables)
    assert any(line.startswith("api_tokens.token_hash:bytea") for line in tables)
    assert any(line.startswith("conversation_outbox.previous_is_muted:boolean") for line in tables)


async def test_migrate_is_idempotent(fresh_database: str):
    await migrate(Settings(database_url=fresh_database))
    first = await snapshot(fresh_database)
    await migrate(Settings(database_url=fresh_database))
    assert await snapshot(fresh_database) == first


async def test_replicas_migrating_at_once_all_succeed(fresh_database: str):
    settings = Settings(database_url=fresh_database)
    await asyncio.gather(*(migrate(settings) for _ in range(6)))
    assert "conversations_pkey" in "\n".join(await snapshot(fresh_database))


def test_migrate_command_reads_database_url_from_the_environment(fresh_database: str):
    env = {**os.environ, "DATABASE_URL": fresh_database}
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, check=True, timeout=60,
                   capture_output=True)
    assert asyncio.run(snapshot(fresh_database))


@pytest.fixture(scope="module")
async def empty_database(backend_urls: Backends) -> AsyncIterator[str]:
    """A migrated database of this module's own: its tables' statistics are the same in every run,
    whatever the rest of the suite wrote into the shared one (which changes the planner's choices)."""
    async with migrated_database(backend_urls, "conversations_plans") as url:
        yield url


@pytest.mark.parametrize(("statement", "arguments", "index"), [
    (SELECT_CONVERSATION, ("a", "0000000000000000"), "conversations_pkey"),
    (list_statement(None, ()), ("a", 11), "conversations_pkey"),
    (list_statement("starting_after", ()), ("a", 11, "0000000000000000"), "conversations_pkey"),
    (list_statement("ending_before", (("muted", True),)), ("a", 11, "0000000000000000"), "conversations_muted_idx"),
    (list_statement(None, (("muted", False),)), ("a", 11), "conversations_pkey"),
    (list_statement(None, (("pinned", True),)), ("a", 11), "conversations_pinned_idx"),
    (list_statement("starting_after", (("pinned", False),)), ("a", 11, "0"), "conversations_pkey"),
    (list_statement(None, (("archived", True),)), ("a", 11), "conversations_archived_idx"),
    (list_statement(None, (("archived", False),)), ("a", 11), "conversations_pkey"),
    (list_statement(None, (), ("contact_id",)), ("a", 11, "c"), "conversations_account_contact_key"),
    (list_statement(None, (), ("group_id",)), ("a", 11, "g"), "conversations_account_group_key"),
    (activity_statement(None), ("a", 11), "conversations_activity_idx"),
    (activity_statement("starting_after"), ("a", 11, False, 5, "0000000000000000"), "conversations_activity_idx"),
    (activity_statement("ending_before"), ("a", 11, True, -1, "0000000000000000"), "conversations_activity_idx"),
    (SELECT_ID_BY_CONTACT, ("a", "c"), "conversations_account_contact_key"),
    (SELECT_ID_BY_GROUP, ("a", "g"), "conversations_account_group_key"),
    (SELECT_OUTBOX_BATCH, ("s", 0, 500), "conversation_outbox_partition_idx"),
    (SELECT_OUTBOX_STRAYS, ("s", 4, 1, 500), "conversation_outbox_partition_idx"),
    (SELECT_PARTITION_BACKLOG, ("s", 4, 10_000), "conversation_outbox_partition_idx"),
    ("SELECT account_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL", (b"x",),
     "api_tokens_token_hash_key"),
])
async def test_every_hot_query_is_served_by_a_named_index(empty_database: str, statement: str,
                                                         arguments: tuple, index: str):
    db = await asyncpg.connect(empty_database)
    try:
        async with db.transaction():
            # A nearly empty table would rather be scanned, or bitmap-scanned and sorted: the question
            # is whether an index serves the statement.
            await db.execute("SET LOCAL enable_seqscan = off")
            await db.execute("SET LOCAL enable_bitmapscan = off")
            plan = "\n".join(row[0] for row in await db.fetch(f"EXPLAIN {statement}", *arguments))
    finally:
        await db.close()
    assert index in plan, plan


async def test_migrate_drops_the_json_columns_that_outboxes_before_the_column_layout_carried(
        fresh_database: str):
    await migrate(Settings(database_url=fresh_database))
    connection = await asyncpg.connect(fresh_database)
    try:
        await connection.execute("ALTER TABLE conversation_outbox ADD COLUMN data text, "
                                 "ADD COLUMN previous_attributes text")
    finally:
        await connection.close()
    await migrate(Settings(database_url=fresh_database))
    columns = {line.split(":")[0] for line in await snapshot(fresh_database)}
    assert "conversation_outbox.data" not in columns
    assert "conversation_outbox.previous_attributes" not in columns
    first = await snapshot(fresh_database)
    await migrate(Settings(database_url=fresh_database))
    assert await snapshot(fresh_database) == first


async def test_a_database_from_before_partitions_gets_the_partition_column_on_the_outbox_the_log_and_wakeups(
        fresh_database: str):
    await migrate(Settings(database_url=fresh_database))
    connection = await asyncpg.connect(fresh_database)
    try:  # the tables as the release before partitions left them
        await connection.execute("""
            DROP INDEX conversation_outbox_partition_idx;
            ALTER TABLE conversation_outbox DROP COLUMN stream_partition;
            ALTER TABLE event_log DROP COLUMN stream_partition;
            DROP TABLE outbox_wakeups;
            CREATE TABLE outbox_wakeups (stream text COLLATE "C" PRIMARY KEY, notify boolean NOT NULL);
            INSERT INTO outbox_wakeups VALUES ('s', true);
            INSERT INTO event_log (batch, stream, position, event_id, type, account_id, conversation_id,
                                   occurred_at, sequence, schema_version)
            VALUES (1, 's', 1, 'evt_old', 'conversation.created', 'a', 'c',
                    floor(extract(epoch FROM now()))::bigint, 1, 1)""")
    finally:
        await connection.close()
    await migrate(Settings(database_url=fresh_database))
    lines = await snapshot(fresh_database)
    for table in ("conversation_outbox", "event_log", "outbox_wakeups"):
        assert f"{table}.stream_partition:integer:" in lines
    assert any(line.startswith("conversation_outbox_partition_idx:") for line in lines)
    connection = await asyncpg.connect(fresh_database)
    try:
        assert await connection.fetchval("SELECT stream_partition FROM event_log WHERE event_id = 'evt_old'") == 0
        assert await connection.fetchval("SELECT stream_partition FROM outbox_wakeups WHERE stream = 's'") == 0
        key = await connection.fetchval("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                        "WHERE conname = 'outbox_wakeups_pkey'")
        assert key == "PRIMARY KEY (stream, stream_partition)"
    finally:
        await connection.close()
    first = await snapshot(fresh_database)
    await migrate(Settings(database_url=fresh_database))
    assert await snapshot(fresh_database) == first
