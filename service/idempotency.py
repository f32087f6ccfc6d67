"""Idempotency keys (the Stripe convention) for POST, PUT, PATCH and DELETE on /v1.

A write sent with `Idempotency-Key` runs in one transaction that first claims the key (per
account), then makes the change (and its outbox event), then stores the response, and commits
all three together. A retry with the same key and the same request gets the stored status,
body and headers back, and changes nothing (so no second event); the same key with another
method, path or body is a 400 naming the header. A retry that arrives while the first is still
running waits for it (up to LOCK_WAIT), then replays its answer; past that it is a 409. Keys
are kept 24 hours.

Only outcomes of carrying out the write are stored (success, and the errors marked
`is_outcome`: 404, 409 conflicts, 412); a request refused before it started (validation) or
that failed on our side stores nothing, so it can be retried with the same key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable

import asyncpg

from service.db import Database, Executor, Transaction
from service.errors import ApiError, IdempotencyKeyInUse, InvalidRequest, encode_error
from service.wire import Reply

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(rb"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe accepts
RETENTION = "24 hours"
LOCK_WAIT = "2s"

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
DELETE_EXPIRED = f"""
DELETE FROM idempotency_keys WHERE ctid IN (
    SELECT ctid FROM idempotency_keys WHERE created_at < now() - interval '{RETENTION}' LIMIT 10000)
"""

Work = Callable[[Executor], Awaitable[Reply]]


def checked_key(raw: bytes) -> str:
    if KEY_PATTERN.fullmatch(raw) is None:
        raise InvalidRequest(f"{HEADER} must be 1 to 255 visible ASCII characters", param=HEADER)
    return raw.decode("ascii")


def fingerprint(method: str, path: str, media_type: bytes | None, body: bytes) -> bytes:
    """What a retry must repeat exactly: method, path, body and its media type."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), media_type or b"", body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _reply_of(error: ApiError) -> Reply:
    return Reply(status=error.status_code, body=encode_error(error))


async def _claim(transaction: Transaction, account_id: str, key: str, request_fingerprint: bytes) -> bool:
    try:
        return bool(await transaction.fetchval(CLAIM_KEY, account_id, key, request_fingerprint))
    except asyncpg.LockNotAvailableError:
        raise IdempotencyKeyInUse from None


async def run_once(db: Database, account_id: str, key: str, request_fingerprint: bytes, work: Work) -> Reply:
    """`work`'s reply, run at most once per (account, key); later calls get it replayed."""
    async with db.transaction() as transaction:
        await transaction.fetchval(SET_LOCK_WAIT)
        if not await _claim(transaction, account_id, key, request_fingerprint):
            stored = await transaction.fetchrow(SELECT_STORED, account_id, key)
            if stored["fingerprint"] != request_fingerprint:
                raise InvalidRequest(f"this {HEADER} was already used with a different request (method, path or "
                                     "body); use a new key for a new request", param=HEADER)
            return Reply(status=stored["status"], body=stored["body"], location=stored["location"],
                         etag=stored["etag"], replayed=True)
        try:
            reply = await work(transaction)
        except ApiError as error:
            if not error.is_outcome:
                raise  # nothing is stored: the transaction, and the claim, roll back
            reply = _reply_of(error)
        await transaction.fetchval(STORE_REPLY, account_id, key, reply.status, reply.body, reply.location,
                                   reply.etag)
        return reply
