"""Every SQL statement on `idempotency_keys`: claim a key, replay its stored reply, purge expired keys.

A key is claimed by inserting its row inside the write's own transaction, so the change, its
event and the stored reply commit together; a concurrent retry waits on that uncommitted row
(bounded by LOCK_WAIT). Lookups are by the primary key (account_id, key); the purge and the
oldest key's age walk `idempotency_keys_created_at_idx`.
"""

from __future__ import annotations

import msgspec

from service.store.database import Executor, Transaction

RETENTION = "24 hours"
LOCK_WAIT_SECONDS = 2.0
LOCK_WAIT = f"{LOCK_WAIT_SECONDS:g}s"
PURGE_BATCH = 10_000

SET_LOCK_WAIT = f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"
CLAIM_KEY = f"""
INSERT INTO idempotency_keys (account_id, key, fingerprint) VALUES ($1, $2, $3)
ON CONFLICT (account_id, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, created_at = now(), status = 0, body = ''::bytea,
        location = NULL, etag = NULL
    WHERE idempotency_keys.created_at < now() - interval '{RETENTION}'
RETURNING true
"""
SELECT_STORED = ("SELECT fingerprint, status, body, location, etag FROM idempotency_keys "
                 "WHERE account_id = $1 AND key = $2")
STORE_REPLY = ("UPDATE idempotency_keys SET status = $3, body = $4, location = $5, etag = $6 "
               "WHERE account_id = $1 AND key = $2")
# Replicas purge side by side: SKIP LOCKED lets each take rows the others are not deleting.
DELETE_EXPIRED = f"""
DELETE FROM idempotency_keys WHERE ctid IN (
    SELECT ctid FROM idempotency_keys WHERE created_at < now() - interval '{RETENTION}'
    LIMIT {PURGE_BATCH} FOR UPDATE SKIP LOCKED)
"""


# For /metrics: PostgreSQL's own running count of live rows (no scan), and the oldest key by
# idempotency_keys_created_at_idx: whether the purge keeps up shows as an age past RETENTION.
SELECT_FIGURES = """
SELECT (SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'idempotency_keys'::regclass),
       (SELECT floor(extract(epoch FROM now() - min(created_at)))::bigint FROM idempotency_keys)
"""


class StoredReply(msgspec.Struct):
    """What a key's first request answered (and the request's fingerprint, to match retries)."""

    fingerprint: bytes
    status: int
    body: bytes
    location: str | None
    etag: str | None


async def bound_lock_wait(transaction: Transaction) -> None:
    """Make the claim wait at most LOCK_WAIT for a concurrent request with the same key."""
    await transaction.fetchval(SET_LOCK_WAIT)


async def claim_key(transaction: Transaction, account_id: str, key: str, fingerprint: bytes) -> bool:
    """Claim (account, key) for this transaction; False if a live claim already holds it.

    Raises asyncpg.LockNotAvailableError when another transaction holds it past LOCK_WAIT.
    """
    return bool(await transaction.fetchval(CLAIM_KEY, account_id, key, fingerprint))


async def fetch_stored(transaction: Transaction, account_id: str, key: str) -> StoredReply:
    row = await transaction.fetchrow(SELECT_STORED, account_id, key)
    return StoredReply(*row)


async def store_reply(transaction: Transaction, account_id: str, key: str, status: int, body: bytes,
                      location: str | None, etag: str | None) -> None:
    await transaction.fetchval(STORE_REPLY, account_id, key, status, body, location, etag)


async def purge_expired(db: Executor) -> int:
    """Delete every key past RETENTION, a batch per statement; the number deleted."""
    deleted = 0
    while True:
        status = await db.execute(DELETE_EXPIRED)
        count = int(status.rsplit(" ", 1)[-1])
        deleted += count
        if count < PURGE_BATCH:
            return deleted


async def fetch_figures(db: Executor) -> tuple[int, int | None]:
    """(keys stored, by PostgreSQL's statistics; age in seconds of the oldest, or None if none)."""
    row = await db.fetchrow(SELECT_FIGURES)
    return int(row[0] or 0), row[1]
