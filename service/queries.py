"""Every SQL statement the API runs, each beside the thin function that sends it.

Each write is ONE statement, so one round trip in autocommit: data-modifying CTEs lock or
change the conversation's row, then insert its event into `conversation_outbox` (after the row
lock, so per-conversation outbox order is commit order; API.md §6) and NOTIFY the relay from
the outbox insert's RETURNING, so a statement that writes no event sends no notification.
The event row carries the conversation's columns as the write left them (and, for an update,
the updatable fields as they were); the relay encodes them with the response's own encoder,
so the event's `data` is the HTTP body byte for byte (tests/test_events.py). Each outbox row
names the stream it is for (the writer's EVENTS_STREAM). Every statement is a fixed string,
so asyncpg prepares it once per connection; `$n` follow the argument order of the function
below it.
"""

from __future__ import annotations

from functools import cache

import asyncpg
import msgspec

from service.db import Executor
from service.events import PreviousAttributes
from service.ids import new_event_id, random_part
from service.wire import CONVERSATION_FIELDS, Conversation

EVENT_SCHEMA_VERSION = 1
OUTBOX_CHANNEL = "conversation_outbox"

_COLUMNS = ", ".join(CONVERSATION_FIELDS)
# The only fields an update can change, in API order (previous_attributes keeps that order).
UPDATABLE_FIELDS = PreviousAttributes.__struct_fields__


def _columns(alias: str) -> str:
    return ", ".join(f"{alias}.{field}" for field in CONVERSATION_FIELDS)


# The outbox columns every event fills (schema.sql): the envelope, then the conversation as
# `data` shows it (its id is conversation_id), then the previous values of the updatable fields.
# The relay reads them back in this order.
OUTBOX_DATA_COLUMNS = CONVERSATION_FIELDS[1:]
OUTBOX_PREVIOUS_COLUMNS = tuple(f"previous_{f}" for f in UPDATABLE_FIELDS)
_OUTBOX_COLUMNS = ", ".join(("stream", "event_id", "type", "account_id", "conversation_id", "occurred_at",
                             "sequence", "schema_version", *OUTBOX_DATA_COLUMNS, *OUTBOX_PREVIOUS_COLUMNS))


def _event_values(alias: str, previous: str | None = None) -> str:
    """The conversation columns of `alias`, then the updatable ones of `previous` (or NULLs)."""
    values = [f"{alias}.{f}" for f in OUTBOX_DATA_COLUMNS]
    values += [f"{previous}.{f}" if previous else "NULL" for f in UPDATABLE_FIELDS]
    return ", ".join(values)


_NOW_SECONDS = "floor(extract(epoch FROM now()))::bigint"


def _notify_unless_polled(stream_param: str) -> str:
    """NOTIFY the relay, unless it has said it is polling this stream (relay.py, outbox_wakeups)."""
    return (f"CASE WHEN (SELECT w.notify FROM outbox_wakeups w WHERE w.stream = {stream_param}) IS NOT FALSE "
            f"THEN pg_notify('{OUTBOX_CHANNEL}', '') END")

# ----------------------------------------------------------------------------------------- reads

SELECT_CONVERSATION = f"SELECT {_COLUMNS}, version FROM conversations WHERE account_id = $1 AND id = $2"

# A conversation and its version (the event sequence of its last change: the ETag).
Versioned = tuple[Conversation, int]


def _versioned(row: asyncpg.Record) -> Versioned:
    return Conversation(*row[:10]), row[10]


async def fetch_conversation(db: Executor, account_id: str, conversation_id: str) -> Versioned | None:
    row = await db.fetchrow(SELECT_CONVERSATION, account_id, conversation_id)
    return None if row is None else _versioned(row)


SELECT_ID_BY_CONTACT = "SELECT id FROM conversations WHERE account_id = $1 AND contact_id = $2"
SELECT_ID_BY_GROUP = "SELECT id FROM conversations WHERE account_id = $1 AND group_id = $2"


async def fetch_id_by_party(db: Executor, account_id: str, param: str, party_id: str) -> str | None:
    """The id of the account's conversation with this contact (`param` contact_id) or group."""
    query = SELECT_ID_BY_CONTACT if param == "contact_id" else SELECT_ID_BY_GROUP
    return await db.fetchval(query, account_id, party_id)


# Filter attribute -> the condition it adds; its value is the next parameter.
LIST_FILTERS = {
    "muted": "is_muted = ${n}",
    "pinned": "is_pinned = ${n}",
    "archived": "(archived_at IS NOT NULL) = ${n}",
    "contact_id": "contact_id = ${n}",
    "group_id": "group_id = ${n}",
}


@cache
def list_statement(cursor: str | None, filters: tuple[str, ...]) -> str:
    """One page as a keyset scan of conversations_pkey (account_id, id), newest first.

    `cursor` is None (first page), "starting_after" (ids below $3, descending) or
    "ending_before" (ids above $3, ascending: the caller reverses the page). A cursor is a
    position, never looked up, so a deleted conversation's id, or another account's, is just a
    place in this account's order (API.md §3). $1 account, $2 page size + 1 (the extra row
    answers has_more), then $3 the cursor if any, then one parameter per filter, in the order
    of `filters`. Each distinct combination is its own statement, prepared once per connection.
    """
    conditions = ["account_id = $1"]
    if cursor is not None:
        conditions.append("id < $3" if cursor == "starting_after" else "id > $3")
    first_filter = 3 if cursor is None else 4
    for offset, name in enumerate(filters):
        conditions.append(LIST_FILTERS[name].format(n=first_filter + offset))
    order = "ASC" if cursor == "ending_before" else "DESC"
    return (f"SELECT {_COLUMNS} FROM conversations WHERE {' AND '.join(conditions)} "
            f"ORDER BY id {order} LIMIT $2")


async def fetch_page(db: Executor, account_id: str, size: int, cursor: str | None, cursor_id: str | None,
                     filters: dict[str, object]) -> tuple[list[Conversation], bool]:
    """Up to `size` conversations in list order, and whether more exist beyond them."""
    names = tuple(filters)
    query = list_statement(cursor, names)
    if cursor is None:
        rows = await db.fetch(query, account_id, size + 1, *filters.values())
    else:
        rows = await db.fetch(query, account_id, size + 1, cursor_id, *filters.values())
    has_more = len(rows) > size
    page = [Conversation(*row) for row in rows[:size]]
    if cursor == "ending_before":
        page.reverse()
    return page, has_more


# ---------------------------------------------------------------------------------------- writes

INSERT_CONVERSATION_UNLESS_EXISTS = f"""
WITH inserted AS (
    INSERT INTO conversations (account_id, id, contact_id, group_id, created_at)
    VALUES ($1, base62_millis(now()) || $2, $3, $4, {_NOW_SECONDS})
    ON CONFLICT DO NOTHING
    RETURNING {_COLUMNS}, version
), event AS (
    INSERT INTO conversation_outbox ({_OUTBOX_COLUMNS})
    SELECT $6, 'evt_' || left(i.id, 8) || $5, 'conversation.created', $1, i.id, i.created_at, i.version,
           {EVENT_SCHEMA_VERSION}, {_event_values("i")}
    FROM inserted i
    RETURNING {_notify_unless_polled("$6")}
)
SELECT {_COLUMNS}, version FROM inserted
"""


async def insert_conversation(db: Executor, stream: str, account_id: str, contact_id: str | None,
                              group_id: str | None) -> Versioned | None:
    """The new conversation and its created event, or None if the contact or group is taken."""
    row = await db.fetchrow(INSERT_CONVERSATION_UNLESS_EXISTS, account_id, random_part(), contact_id, group_id,
                            random_part(), stream)
    return None if row is None else _versioned(row)


UPDATE_CONVERSATION_IF_CHANGED = f"""
WITH current AS (
    SELECT {_COLUMNS}, version FROM conversations WHERE account_id = $1 AND id = $2 FOR UPDATE
), proposed AS (
    SELECT CASE WHEN $3::boolean THEN $4::text ELSE c.pinned_message_id END AS pinned_message_id,
           COALESCE($5::boolean, c.is_pinned) AS is_pinned,
           COALESCE($6::boolean, c.is_muted) AS is_muted,
           CASE WHEN NOT $7::boolean THEN c.last_active_at
                WHEN $8::bigint IS NULL THEN NULL
                ELSE GREATEST(c.last_active_at, $8::bigint) END AS last_active_at,
           CASE WHEN NOT $9::boolean THEN c.last_opened_at
                WHEN $10::bigint IS NULL THEN NULL
                ELSE GREATEST(c.last_opened_at, $10::bigint) END AS last_opened_at,
           CASE WHEN $11::boolean THEN $12::bigint ELSE c.archived_at END AS archived_at
    FROM current c
), updated AS (
    UPDATE conversations t
    SET {", ".join(f"{f} = p.{f}" for f in UPDATABLE_FIELDS)}, version = t.version + 1
    FROM proposed p, current c
    WHERE t.account_id = $1 AND t.id = $2
      AND ($15::bigint[] IS NULL OR c.version = ANY($15::bigint[]))
      AND ({", ".join(f"p.{f}" for f in UPDATABLE_FIELDS)})
          IS DISTINCT FROM ({", ".join(f"c.{f}" for f in UPDATABLE_FIELDS)})
    RETURNING {_columns("t")}, t.version
), event AS (
    INSERT INTO conversation_outbox ({_OUTBOX_COLUMNS})
    SELECT $14, $13::text, 'conversation.updated', $1, u.id, {_NOW_SECONDS}, u.version,
           {EVENT_SCHEMA_VERSION}, {_event_values("u", previous="c")}
    FROM updated u, current c
    RETURNING {_notify_unless_polled("$14")}
)
SELECT {_COLUMNS}, version, true FROM updated
UNION ALL
SELECT {_COLUMNS}, version, ($15::bigint[] IS NULL OR version = ANY($15::bigint[])) FROM current
WHERE NOT EXISTS (SELECT FROM updated)
"""

_UNSET_ARGS = (False, None)


async def update_conversation(db: Executor, stream: str, account_id: str, conversation_id: str,
                              pinned_message_id: tuple[bool, str | None], is_pinned: bool | None,
                              is_muted: bool | None, last_active_at: tuple[bool, int | None],
                              last_opened_at: tuple[bool, int | None], archived_at: tuple[bool, int | None],
                              expected_versions: list[int] | None = None) -> tuple[Versioned, bool] | None:
    """Apply an update (None or (False, _): leave the field); None if there is no such conversation.

    Nullable fields come as (given, value) so that "clear it" and "leave it" stay apart. The
    statement writes, bumps `version` and emits an event only if a value really changes;
    `last_active_at` / `last_opened_at` never move backwards (GREATEST), though null clears them.
    With `expected_versions` (If-Match), it changes nothing unless the locked row's version is
    one of them. Returns the conversation as it now is, and whether the precondition held.
    """
    row = await db.fetchrow(UPDATE_CONVERSATION_IF_CHANGED, account_id, conversation_id,
                            *pinned_message_id, is_pinned, is_muted, *last_active_at, *last_opened_at,
                            *archived_at, new_event_id(), stream, expected_versions)
    return None if row is None else (_versioned(row), row[11])


DELETE_CONVERSATION = f"""
WITH target AS (
    SELECT version FROM conversations WHERE account_id = $1 AND id = $2 FOR UPDATE
), deleted AS (
    DELETE FROM conversations c USING target t
    WHERE c.account_id = $1 AND c.id = $2 AND ($5::bigint[] IS NULL OR t.version = ANY($5::bigint[]))
    RETURNING {_columns("c")}, c.version
), event AS (
    INSERT INTO conversation_outbox ({_OUTBOX_COLUMNS})
    SELECT $4, $3::text, 'conversation.deleted', $1, d.id, {_NOW_SECONDS}, d.version + 1,
           {EVENT_SCHEMA_VERSION}, {_event_values("d")}
    FROM deleted d
    RETURNING {_notify_unless_polled("$4")}
)
SELECT (SELECT version FROM target), EXISTS (SELECT FROM deleted)
"""


async def delete_conversation(db: Executor, stream: str, account_id: str, conversation_id: str,
                              expected_versions: list[int] | None = None) -> bool | None:
    """Delete the conversation and emit its deleted event.

    None if there is no such conversation; False if `expected_versions` (If-Match) did not
    include its version, so nothing was deleted; True once deleted.
    """
    row = await db.fetchrow(DELETE_CONVERSATION, account_id, conversation_id, new_event_id(), stream,
                            expected_versions)
    return None if row[0] is None else row[1]


# ---------------------------------------------------------------------------------------- tokens

SELECT_ACCOUNT_FOR_TOKEN = "SELECT account_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"


async def fetch_account_for_token(db: Executor, token_hash: bytes) -> str | None:
    return await db.fetchval(SELECT_ACCOUNT_FOR_TOKEN, token_hash)


INSERT_TOKEN = ("INSERT INTO api_tokens (id, account_id, token_hash, created_at) "
                "VALUES ($1, $2, $3, floor(extract(epoch FROM now()))::bigint) RETURNING created_at")
SELECT_TOKENS_OF_ACCOUNT = ("SELECT id, account_id, created_at, revoked_at FROM api_tokens "
                            "WHERE account_id = $1 ORDER BY id")
REVOKE_TOKEN = ("UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, floor(extract(epoch FROM now()))::bigint) "
                "WHERE id = $1 RETURNING id, account_id, created_at, revoked_at")


class TokenRecord(msgspec.Struct):
    """A token as stored, without its hash: what `tokens list` shows."""

    id: str
    account_id: str
    created_at: int
    revoked_at: int | None


async def insert_token(connection: asyncpg.Connection, token_id: str, account_id: str, token_hash: bytes
                       ) -> TokenRecord:
    created_at = await connection.fetchval(INSERT_TOKEN, token_id, account_id, token_hash)
    return TokenRecord(token_id, account_id, created_at, None)


async def fetch_tokens(connection: asyncpg.Connection, account_id: str) -> list[TokenRecord]:
    return [TokenRecord(*row) for row in await connection.fetch(SELECT_TOKENS_OF_ACCOUNT, account_id)]


async def revoke_token(connection: asyncpg.Connection, token_id: str) -> TokenRecord | None:
    row = await connection.fetchrow(REVOKE_TOKEN, token_id)
    return None if row is None else TokenRecord(*row)
