"""API.md §7 `migrate`: creates the database, applies schema.sql, idempotent, safe in parallel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.migrate import migrate
from service.queries import SELECT_CONVERSATION, SELECT_ID_BY_CONTACT, SELECT_ID_BY_GROUP, list_statement
from service.relay import SELECT_OUTBOX_BATCH
from service.settings import Settings
from tests.conftest import Backends, database_url_for, drop_database
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
    assert any(line.startswith("conversation_outbox.data:text") for line in tables)


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


@pytest.mark.parametrize(("statement", "arguments", "index"), [
    (SELECT_CONVERSATION, ("a", "0000000000000000"), "conversations_pkey"),
    (list_statement(None, ()), ("a", 11), "conversations_pkey"),
    (list_statement("starting_after", ()), ("a", 11, "0000000000000000"), "conversations_pkey"),
    (list_statement("ending_before", ("muted",)), ("a", 11, "0000000000000000", True), "conversations_pkey"),
    (list_statement(None, ("contact_id",)), ("a", 11, "c"), "conversations_account_contact_key"),
    (list_statement(None, ("group_id",)), ("a", 11, "g"), "conversations_account_group_key"),
    (SELECT_ID_BY_CONTACT, ("a", "c"), "conversations_account_contact_key"),
    (SELECT_ID_BY_GROUP, ("a", "g"), "conversations_account_group_key"),
    (SELECT_OUTBOX_BATCH, ("s", 500), "conversation_outbox_pkey"),
    ("SELECT account_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL", (b"x",),
     "api_tokens_token_hash_key"),
])
async def test_every_hot_query_is_served_by_a_named_index(db: asyncpg.Connection, statement: str,
                                                         arguments: tuple, index: str):
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")  # an empty table would rather be scanned
        plan = "\n".join(row[0] for row in await db.fetch(f"EXPLAIN {statement}", *arguments))
    assert index in plan, plan


# The outbox as the first releases created it: each event's data as JSON text.
JSON_LAYOUT_OUTBOX = """
CREATE TABLE conversation_outbox (
    stream text COLLATE "C" NOT NULL, position bigint GENERATED ALWAYS AS IDENTITY,
    event_id text COLLATE "C" NOT NULL, type text NOT NULL, account_id text NOT NULL,
    conversation_id text NOT NULL, occurred_at bigint NOT NULL, sequence bigint NOT NULL,
    schema_version integer NOT NULL, data text NOT NULL, previous_attributes text,
    CONSTRAINT conversation_outbox_pkey PRIMARY KEY (stream, position)
)
"""


async def test_migrate_upgrades_an_outbox_of_the_json_layout_keeping_its_rows(
        fresh_database: str, backend_urls: Backends):
    admin = await asyncpg.connect(backend_urls.admin_database_url)
    await admin.execute(f'CREATE DATABASE "{fresh_database.rsplit("/", 1)[1]}"')
    await admin.close()
    connection = await asyncpg.connect(fresh_database)
    try:
        await connection.execute(JSON_LAYOUT_OUTBOX)
        await connection.execute(
            "INSERT INTO conversation_outbox (stream, event_id, type, account_id, conversation_id, occurred_at, "
            "sequence, schema_version, data) VALUES ('s', 'evt_1', 'conversation.created', 'acct', 'c1', 1, 1, 1, "
            "'{\"id\":\"c1\"}')")
        await migrate(Settings(database_url=fresh_database))
        row = await connection.fetchrow("SELECT data, contact_id, previous_is_muted FROM conversation_outbox")
        assert dict(row) == {"data": '{"id":"c1"}', "contact_id": None, "previous_is_muted": None}
        columns = {line.split(":")[0] for line in await snapshot(fresh_database)}
        assert {"conversation_outbox.is_muted", "conversation_outbox.previous_archived_at"} <= columns
    finally:
        await connection.close()
    first = await snapshot(fresh_database)
    await migrate(Settings(database_url=fresh_database))
    assert await snapshot(fresh_database) == first
