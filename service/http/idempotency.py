"""Idempotency keys (the Stripe convention) for POST, PUT, PATCH and DELETE on /v1.

A write sent with `Idempotency-Key` runs in one transaction that first claims the key (per
account), then makes the change (and its outbox event), then stores the reply, and commits all
three together. A retry with the same key and the same request gets the stored status, body and
headers back, and changes nothing (so no second event); the same key with another method, path
or body is a 400 naming the header. A retry that arrives while the first is still running waits
for it (up to the store's LOCK_WAIT), then replays its answer; past that it is a 409. A write
that waits longer than LOCK_WAIT for another write's lock on its conversation is a 503. Keys are
kept for the store's RETENTION; `purge_forever` deletes expired ones on its own schedule.

Only outcomes of carrying out the write are stored (success, and the errors marked
`is_outcome`: 409 conflicts, 412); a request refused before it started (validation, the rate
below), one for a conversation that does not exist (404: ids are never reused, so a retry gets
the same 404 anew), or one that failed on our side stores nothing, so it can be retried with the
same key.

What keys can cost is bounded: `KeyedWriteBudget` lets an account send at most N keyed writes a
second to this process (429 past it), and with 24 h retention that bounds the rows an account
can make the service keep.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable

import asyncpg

from service import metrics
from service.errors import (
    ApiError,
    ConversationBusy,
    IdempotencyKeyInUse,
    InvalidRequest,
    TooManyKeyedWrites,
    encode_error,
)
from service.http.reply import Reply
from service.store import idempotency_keys
from service.store.database import Database, Executor

logger = logging.getLogger("service.http.idempotency")

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(rb"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe accepts

Work = Callable[[Executor], Awaitable[Reply]]


def checked_key(raw: bytes) -> str:
    if KEY_PATTERN.fullmatch(raw) is None:
        raise InvalidRequest(f"{HEADER} must be 1 to 255 visible ASCII characters", param=HEADER)
    return raw.decode("ascii")


class KeyedWriteBudget:
    """At most `per_second` keyed writes per account in each second of this process's clock.

    One count per account for the current second, all dropped when the second turns: memory is
    bounded by the accounts active within one second, and a write costs a dict lookup.
    """

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._second = 0
        self._counts: dict[str, int] = {}

    def spend(self, account_id: str) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._counts = second, {}
        count = self._counts.get(account_id, 0) + 1
        if count > self._per_second:
            raise TooManyKeyedWrites(self._per_second)
        self._counts[account_id] = count


def fingerprint(method: str, path: str, media_type: bytes | None, body: bytes) -> bytes:
    """What a retry must repeat exactly: method, path, body and its media type."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), media_type or b"", body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


async def run_once(db: Database, account_id: str, key: str, request_fingerprint: bytes, work: Work) -> Reply:
    """`work`'s reply, run at most once per (account, key); later calls get it replayed."""
    async with db.transaction() as transaction:
        await idempotency_keys.bound_lock_wait(transaction)
        try:
            claimed = await idempotency_keys.claim_key(transaction, account_id, key, request_fingerprint)
        except asyncpg.LockNotAvailableError:
            raise IdempotencyKeyInUse from None
        if not claimed:
            stored = await idempotency_keys.fetch_stored(transaction, account_id, key)
            if stored.fingerprint != request_fingerprint:
                raise InvalidRequest(f"this {HEADER} was already used with a different request (method, path or "
                                     "body); use a new key for a new request", param=HEADER)
            return Reply(status=stored.status, body=stored.body, location=stored.location, etag=stored.etag,
                         replayed=True)
        try:
            reply = await work(transaction)
        except asyncpg.LockNotAvailableError:
            # The transaction's lock wait bound also covers the conversation's row: a retry may
            # succeed, and nothing is stored, so it may reuse the key.
            raise ConversationBusy from None
        except ApiError as error:
            if not error.is_outcome:
                raise  # nothing is stored: the transaction, and the claim, roll back
            reply = Reply(status=error.status_code, body=encode_error(error))
        await idempotency_keys.store_reply(transaction, account_id, key, reply.status, reply.body, reply.location,
                                           reply.etag)
        return reply


async def purge_forever(db: Database, interval_seconds: float) -> None:
    """Delete expired keys every `interval_seconds`, whatever else (Redis, say) is failing."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            metrics.IDEMPOTENCY_KEYS_PURGED.inc(await idempotency_keys.purge_expired(db))
        except Exception:  # PostgreSQL unreachable, say: try again next time
            logger.warning("could not purge expired idempotency keys; retrying in %.0f s", interval_seconds,
                           exc_info=True)
