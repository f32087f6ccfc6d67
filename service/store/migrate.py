"""`python -m service migrate`: create the database if needed, then apply schema.sql.

Safe when several replicas start at once: the database is created by whoever gets there first
(the others see it exists), and schema.sql runs under a session advisory lock on a connection
of its own, so two migrators never interleave their DDL. Every statement in schema.sql is
idempotent, so applying it again changes nothing. The event log is created LIKE the outbox, which
copies the outbox's columns once: a column the outbox gains later (stream_partition, say) is added
to an existing log here, after schema.sql.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service.settings import Settings
from service.store import event_log

logger = logging.getLogger("service.store.migrate")

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema.sql"
MIGRATION_LOCK_KEY = 0x636F6E7665727361  # "conversa" in ASCII: a fixed key shared by every replica


def schema_sql() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def _maintenance_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres"))


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(settings: Settings) -> bool:
    """Create the database DATABASE_URL names if it does not exist; True if this call created it."""
    try:
        connection = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        return False
    name = _database_name(settings.database_url)
    admin = await asyncpg.connect(_maintenance_url(settings.database_url), timeout=settings.db_connect_timeout)
    try:
        # Replicas starting together take turns (concurrent CREATE DATABASE of one name fails
        # with a unique violation in the catalog, not with "already exists").
        await admin.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await admin.execute(f"CREATE DATABASE {_quote_identifier(name)}")
    finally:
        await admin.close()  # ends the session, and with it the lock
    logger.info("created database %s", name)
    return True


async def apply_schema(settings: Settings) -> None:
    """Run schema.sql under the migration lock (held by this session until it closes), then give the
    event log this week's partition and the coming weeks', so the relay never moves rows into its default."""
    connection = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await connection.execute(schema_sql())
            for name in await event_log.adopt_outbox_columns(connection):
                logger.info("the event log now has the outbox's column %s", name)
            await event_log.maintain(connection, settings.events_feed_days)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await connection.close()


async def migrate(settings: Settings) -> None:
    await ensure_database(settings)
    await apply_schema(settings)
    logger.info("schema is up to date")
