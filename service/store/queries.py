"""Every SQL statement on `conversations`, each beside the thin function that sends it.

Each write is ONE statement, so one round trip in autocommit: data-modifying CTEs lock or
change the conversation's row, then insert its event into the outbox (outbox.py's fragment,
after the row lock, so per-conversation outbox order is commit order), whose RETURNING sends
the relay's NOTIFY, so a statement that writes no event sends no notification. Every statement
is a fixed string, so asyncpg prepares it once per connection; `$n` follow the argument order
of the function below it. Every lookup is by the primary key (account_id, id), one of the
account's unique party indexes, or a list filter's partial index (schema.sql).
"""

from __future__ import annotations

from functools import cache
from types import NoneType
from typing import NamedTuple, get_args, get_type_hints

import asyncpg
from msgspec import UNSET

from service.ids import EVENT_ID_PREFIX, new_event_id, random_part
from service.model import CONVERSATION_FIELDS, UPDATABLE_FIELDS, Conversation, ConversationUpdate, Versioned
from service.store.database import NOW_SECONDS, Executor
from service.store.outbox import insert_event

_COLUMNS = ", ".join(CONVERSATION_FIELDS)


def _columns(alias: str) -> str:
    return ", ".join(f"{alias}.{field}" for field in CONVERSATION_FIELDS)


_VERSION = len(CONVERSATION_FIELDS)  # the column after the conversation's


def _versioned(row: asyncpg.Record) -> Versioned:
    return Conversation(*row[:_VERSION]), row[_VERSION]


# ------------------------------------------------------------------------------------- reads

SELECT_CONVERSATION = f"SELECT {_COLUMNS}, version FROM conversations WHERE account_id = $1 AND id = $2"


async def fetch_conversation(db: Executor, account_id: str, conversation_id: str) -> Versioned | None:
    row = await db.fetchrow(SELECT_CONVERSATION, account_id, conversation_id)
    return None if row is None else _versioned(row)


SELECT_ID_BY_CONTACT = "SELECT id FROM conversations WHERE account_id = $1 AND contact_id = $2"
SELECT_ID_BY_GROUP = "SELECT id FROM conversations WHERE account_id = $1 AND group_id = $2"


async def fetch_id_by_party(db: Executor, account_id: str, param: str, party_id: str) -> str | None:
    """The id of the account's conversation with this contact (`param` contact_id) or group."""
    query = SELECT_ID_BY_CONTACT if param == "contact_id" else SELECT_ID_BY_GROUP
    return await db.fetchval(query, account_id, party_id)


# A flag filter's value is written into the statement, (condition if true, condition if false),
# so that the planner can match the partial index of exactly that value (schema.sql): a page
# filtered on a value few of the account's conversations have is then a keyset scan of the few.
FLAG_FILTERS = {
    "muted": ("is_muted", "NOT is_muted"),
    "pinned": ("is_pinned", "NOT is_pinned"),
    "archived": ("archived_at IS NOT NULL", "archived_at IS NULL"),
}
# A party filter's value is the next parameter; the account's unique party indexes serve it.
PARTY_FILTERS = {
    "contact_id": "contact_id = ${n}",
    "group_id": "group_id = ${n}",
}


class ListFilters(NamedTuple):
    """A list's optional filters (None: not filtering), in FLAG_FILTERS and PARTY_FILTERS terms."""

    muted: bool | None = None
    pinned: bool | None = None
    archived: bool | None = None
    contact_id: str | None = None
    group_id: str | None = None


def _split_filters(filters: ListFilters) -> tuple[tuple[tuple[str, bool], ...], tuple[str, ...], list[object]]:
    """(flag filters with their values, party filter names, party values) of a list's filters."""
    given = {name: value for name, value in filters._asdict().items() if value is not None}
    flags = tuple((name, bool(value)) for name, value in given.items() if name in FLAG_FILTERS)
    parties = tuple(name for name in given if name in PARTY_FILTERS)
    return flags, parties, [given[name] for name in parties]


def _filter_conditions(flags: tuple[tuple[str, bool], ...], parties: tuple[str, ...], first_param: int) -> list[str]:
    conditions = [FLAG_FILTERS[name][0 if value else 1] for name, value in flags]
    conditions += [PARTY_FILTERS[name].format(n=first_param + offset) for offset, name in enumerate(parties)]
    return conditions


@cache
def list_statement(cursor: str | None, flags: tuple[tuple[str, bool], ...] = (), parties: tuple[str, ...] = ()
                   ) -> str:
    """One page as a keyset scan of (account_id, id), newest first: conversations_pkey, or with a flag
    filter the partial index of its value, or with a party filter that party's unique index.

    `cursor` is None (first page), "starting_after" (ids below $3, descending) or
    "ending_before" (ids above $3, ascending: the caller reverses the page). A cursor is a
    position, never looked up, so a deleted conversation's id, or another account's, is just a
    place in this account's order. $1 account, $2 page size + 1 (the extra row answers
    has_more), then $3 the cursor if any, then one parameter per party filter, in the order of
    `parties`. Each distinct combination is its own statement, prepared once per connection.
    """
    conditions = ["account_id = $1"]
    if cursor is not None:
        conditions.append("id < $3" if cursor == "starting_after" else "id > $3")
    conditions += _filter_conditions(flags, parties, 3 if cursor is None else 4)
    order = "ASC" if cursor == "ending_before" else "DESC"
    return (f"SELECT {_COLUMNS} FROM conversations WHERE {' AND '.join(conditions)} "
            f"ORDER BY id {order} LIMIT $2")


async def fetch_page(db: Executor, account_id: str, size: int, cursor: str | None, cursor_id: str | None,
                     filters: ListFilters) -> tuple[list[Conversation], bool]:
    """Up to `size` conversations in creation order, and whether more exist beyond them."""
    flags, parties, party_values = _split_filters(filters)
    query = list_statement(cursor, flags, parties)
    if cursor is None:
        rows = await db.fetch(query, account_id, size + 1, *party_values)
    else:
        rows = await db.fetch(query, account_id, size + 1, cursor_id, *party_values)
    has_more = len(rows) > size
    page = [Conversation(*row) for row in rows[:size]]
    if cursor == "ending_before":
        page.reverse()
    return page, has_more


class ActivityPosition(NamedTuple):
    """A place in activity order: the sort key of conversations_activity_idx."""

    is_pinned: bool
    last_active_at: int | None
    id: str


# conversations_activity_idx's key; never-active conversations (NULL) sort below every active one.
_ACTIVITY_KEY = "(is_pinned, COALESCE(last_active_at, -1), id)"


@cache
def activity_statement(direction: str | None, flags: tuple[tuple[str, bool], ...] = (),
                       parties: tuple[str, ...] = ()) -> str:
    """One page in activity order as a keyset scan of conversations_activity_idx, highest key first.

    As list_statement, with the cursor a position (three parameters, $3 to $5) instead of an id:
    a conversation that moved since the cursor was made is simply found at its new position.
    """
    conditions = ["account_id = $1"]
    if direction is not None:
        conditions.append(f"{_ACTIVITY_KEY} {'<' if direction == 'starting_after' else '>'} ($3, $4, $5)")
    conditions += _filter_conditions(flags, parties, 3 if direction is None else 6)
    order = "ASC" if direction == "ending_before" else "DESC"
    return (f"SELECT {_COLUMNS} FROM conversations WHERE {' AND '.join(conditions)} "
            f"ORDER BY is_pinned {order}, COALESCE(last_active_at, -1) {order}, id {order} LIMIT $2")


async def fetch_activity_page(db: Executor, account_id: str, size: int, direction: str | None,
                              position: ActivityPosition | None, filters: ListFilters
                              ) -> tuple[list[Conversation], bool]:
    """Up to `size` conversations in activity order from `position`, and whether more exist beyond them."""
    flags, parties, party_values = _split_filters(filters)
    query = activity_statement(direction, flags, parties)
    cursor: tuple[object, ...] = ()
    if position is not None:
        active = -1 if position.last_active_at is None else position.last_active_at
        cursor = (position.is_pinned, active, position.id)
    rows = await db.fetch(query, account_id, size + 1, *cursor, *party_values)
    has_more = len(rows) > size
    page = [Conversation(*row) for row in rows[:size]]
    if direction == "ending_before":
        page.reverse()
    return page, has_more


# ------------------------------------------------------------------------------------ writes

INSERT_CONVERSATION_UNLESS_EXISTS = f"""
WITH inserted AS (
    INSERT INTO conversations (account_id, id, contact_id, group_id, created_at)
    VALUES ($1, base62_millis(now()) || $2, $3, $4, {NOW_SECONDS})
    ON CONFLICT DO NOTHING
    RETURNING {_COLUMNS}, version
), event AS (
    {insert_event("conversation.created", stream="$6", partitions="$7", account_id="$1",
                  event_id=f"'{EVENT_ID_PREFIX}' || left(i.id, 8) || $5", occurred_at="i.created_at",
                  sequence="i.version", source="inserted i", row="i")}
)
SELECT {_COLUMNS}, version FROM inserted
"""


async def insert_conversation(db: Executor, stream: str, account_id: str, contact_id: str | None,
                              group_id: str | None, partitions: int = 1) -> Versioned | None:
    """The new conversation and its created event, or None if the contact or group is taken.

    The id's time part and the event id's come from the database clock (base62_millis), so the
    id, `created_at` and `occurred_at` agree; the random parts from this process.
    """
    row = await db.fetchrow(INSERT_CONVERSATION_UNLESS_EXISTS, account_id, random_part(), contact_id, group_id,
                            random_part(), stream, partitions)
    return None if row is None else _versioned(row)


# Each updatable field as the statement's parameters: a nullable field takes two, ("given",
# value), so that "clear it" (null) and "leave it" stay apart; another one, its value or NULL.
_FORWARD_ONLY = ("last_active_at", "last_opened_at")  # a lower value than the stored one is ignored
_PYTHON_TO_SQL = {str: "text", bool: "boolean", int: "bigint"}
_FIELD_TYPES = get_type_hints(Conversation)
_NULLABLE_UPDATES = tuple(name for name in UPDATABLE_FIELDS if NoneType in get_args(_FIELD_TYPES[name]))


def _sql_type(name: str) -> str:
    kinds = [kind for kind in get_args(_FIELD_TYPES[name]) or (_FIELD_TYPES[name],) if kind is not NoneType]
    return _PYTHON_TO_SQL[kinds[0]]


def _proposed_values() -> tuple[str, int]:
    """The `proposed` CTE's select list over `current c`, and the next free parameter number."""
    items, n = [], 3
    for name in UPDATABLE_FIELDS:
        sql_type = _sql_type(name)
        if name not in _NULLABLE_UPDATES:
            items.append(f"COALESCE(${n}::{sql_type}, c.{name}) AS {name}")
            n += 1
            continue
        value = f"${n + 1}::{sql_type}"
        if name in _FORWARD_ONLY:
            value = f"CASE WHEN {value} IS NULL THEN NULL ELSE GREATEST(c.{name}, {value}) END"
        items.append(f"CASE WHEN ${n}::boolean THEN {value} ELSE c.{name} END AS {name}")
        n += 2
    return ",\n           ".join(items), n


def update_arguments(update: ConversationUpdate) -> list[object]:
    """The parameters that UPDATE_CONVERSATION_IF_CHANGED takes for `update`, from $3 on."""
    arguments: list[object] = []
    for name in UPDATABLE_FIELDS:
        value = getattr(update, name)
        if name in _NULLABLE_UPDATES:
            arguments += (False, None) if value is UNSET else (True, value)
        else:
            arguments.append(None if value is UNSET else value)
    return arguments


_PROPOSED, _EVENT_ID = _proposed_values()
_STREAM, _EXPECTED, _PARTITIONS = _EVENT_ID + 1, _EVENT_ID + 2, _EVENT_ID + 3
_UNCHANGED = (f"({', '.join(f'p.{f}' for f in UPDATABLE_FIELDS)}) "
              f"IS DISTINCT FROM ({', '.join(f'c.{f}' for f in UPDATABLE_FIELDS)})")

UPDATE_CONVERSATION_IF_CHANGED = f"""
WITH current AS (
    SELECT {_COLUMNS}, version FROM conversations WHERE account_id = $1 AND id = $2 FOR UPDATE
), proposed AS (
    SELECT {_PROPOSED}
    FROM current c
), updated AS (
    UPDATE conversations t
    SET {", ".join(f"{f} = p.{f}" for f in UPDATABLE_FIELDS)}, version = t.version + 1
    FROM proposed p, current c
    WHERE t.account_id = $1 AND t.id = $2
      AND (${_EXPECTED}::bigint[] IS NULL OR c.version = ANY(${_EXPECTED}::bigint[]))
      AND {_UNCHANGED}
    RETURNING {_columns("t")}, t.version
), event AS (
    {insert_event("conversation.updated", stream=f"${_STREAM}", partitions=f"${_PARTITIONS}::integer",
                  account_id="$1", event_id=f"${_EVENT_ID}::text",
                  occurred_at=NOW_SECONDS, sequence="u.version", source="updated u, current c", row="u",
                  previous="c")}
)
SELECT {_COLUMNS}, version, true FROM updated
UNION ALL
SELECT {_COLUMNS}, version, (${_EXPECTED}::bigint[] IS NULL OR version = ANY(${_EXPECTED}::bigint[])) FROM current
WHERE NOT EXISTS (SELECT FROM updated)
"""


async def update_conversation(db: Executor, stream: str, account_id: str, conversation_id: str,
                              update: ConversationUpdate, expected_versions: list[int] | None = None,
                              partitions: int = 1) -> tuple[Versioned, bool] | None:
    """Apply `update`; None if there is no such conversation.

    The statement writes, bumps `version` and emits an event only if a value really changes;
    `last_active_at` / `last_opened_at` never move backwards (GREATEST), though null clears them.
    With `expected_versions` (If-Match), it changes nothing unless the locked row's version is
    one of them. Returns the conversation as it now is, and whether the precondition held.
    """
    row = await db.fetchrow(UPDATE_CONVERSATION_IF_CHANGED, account_id, conversation_id, *update_arguments(update),
                            new_event_id(), stream, expected_versions, partitions)
    return None if row is None else (_versioned(row), row[_VERSION + 1])


DELETE_CONVERSATION = f"""
WITH target AS (
    SELECT version FROM conversations WHERE account_id = $1 AND id = $2 FOR UPDATE
), deleted AS (
    DELETE FROM conversations c USING target t
    WHERE c.account_id = $1 AND c.id = $2 AND ($5::bigint[] IS NULL OR t.version = ANY($5::bigint[]))
    RETURNING {_columns("c")}, c.version
), event AS (
    {insert_event("conversation.deleted", stream="$4", partitions="$6::integer", account_id="$1",
                  event_id="$3::text",
                  occurred_at=NOW_SECONDS, sequence="d.version + 1", source="deleted d", row="d")}
)
SELECT (SELECT version FROM target), EXISTS (SELECT FROM deleted)
"""


async def delete_conversation(db: Executor, stream: str, account_id: str, conversation_id: str,
                              expected_versions: list[int] | None = None, partitions: int = 1) -> bool | None:
    """Delete the conversation and emit its deleted event.

    None if there is no such conversation; False if `expected_versions` (If-Match) did not
    include its version, so nothing was deleted; True once deleted.
    """
    row = await db.fetchrow(DELETE_CONVERSATION, account_id, conversation_id, new_event_id(), stream,
                            expected_versions, partitions)
    return None if row[0] is None else row[1]
