"""The shared wire model: what HTTP bodies and stream entries carry, as msgspec Structs.

The HTTP face decodes requests into these Structs and encodes responses from them; the rules
take and return them; the outbox stores a conversation column by column and the relay encodes
it back with the same encoder, so an event's `data` is the HTTP body byte for byte. Field
order is wire order (docs/api.md). Constraints live in the types, so the decoders, the OpenAPI
document and the stream's AsyncAPI description all read them from here. No I/O here.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_type_hints

import msgspec
from msgspec import UNSET, Meta, UnsetType

from service.ids import EVENT_ID_PREFIX, ID_REGEX

MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z

# `$` would accept a trailing newline (Python's `re.search` semantics, which msgspec uses);
# `(?![\s\S])` anchors the true end and reads the same in Python and in JSON Schema's ECMA regex.
FOREIGN_ID_REGEX = "[A-Za-z0-9_-]{1,64}"
ForeignId = Annotated[str, Meta(pattern=rf"^{FOREIGN_ID_REGEX}(?![\s\S])", examples=["WAz8eIbvDR60rouK"])]
Timestamp = Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP, examples=[705103200])]
Limit = Annotated[int, Meta(ge=1, le=100)]
# A position in the list: a conversation id in creation order; in activity order, the cursor a
# page returned (`act_<pinned 0|1>_<last_active_at or n>_<id>`), since an id alone no longer
# names a position once conversations move.
ACTIVITY_CURSOR_REGEX = rf"act_[01]_(?:[0-9]{{1,12}}|n)_{ID_REGEX}"
PageCursor = Annotated[str, Meta(pattern=rf"^(?:{ID_REGEX}|{ACTIVITY_CURSOR_REGEX})(?![\s\S])",
                                 examples=["xgQQXg3hrtjh7AvZ"])]
ListOrder = Literal["created", "activity"]

# ------------------------------------------------------------------------------- the resource


class Conversation(msgspec.Struct):
    """A conversation as the API returns it; the field order is the wire order."""

    id: str
    contact_id: str | None
    group_id: str | None
    pinned_message_id: str | None
    is_pinned: bool
    is_muted: bool
    last_active_at: int | None
    last_opened_at: int | None
    created_at: int
    archived_at: int | None


# A conversation and its version (the event sequence of its last change: its ETag).
Versioned = tuple[Conversation, int]


CONVERSATION_FIELDS = Conversation.__struct_fields__


class ConversationPage(msgspec.Struct):
    """One page of a list in creation order."""

    has_more: bool
    data: list[Conversation]


class ActivityPage(msgspec.Struct):
    """One page of a list in activity order, with the cursors of its two ends (null when empty)."""

    has_more: bool
    data: list[Conversation]
    next_cursor: str | None
    previous_cursor: str | None


# -------------------------------------------------------------------------------- requests


class RequestAttributes(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request body and query.

    `forbid_unknown_fields`: an unknown attribute (a typo such as `is_mute`) is a 400 naming it,
    never silently ignored. Fields that may be absent default to `UNSET`, so "not given" stays
    distinct from an explicit `null` (which clears a nullable field).
    """


class ConversationCreate(RequestAttributes):
    """POST /v1/conversations: exactly one of the two (checked by the rules, not the type)."""

    contact_id: ForeignId | None = None
    group_id: ForeignId | None = None


class ConversationUpdate(RequestAttributes):
    """PUT/PATCH /v1/conversations/{id}: any subset; `null` clears a nullable field.

    Its fields are the updatable ones: the UPDATE statement, the outbox's previous values and
    `previous_attributes` all follow this list.
    """

    pinned_message_id: ForeignId | None | UnsetType = UNSET
    is_pinned: bool | UnsetType = UNSET
    is_muted: bool | UnsetType = UNSET
    archived_at: Timestamp | None | UnsetType = UNSET
    last_opened_at: Timestamp | None | UnsetType = UNSET
    last_active_at: Timestamp | None | UnsetType = UNSET


class NoAttributes(RequestAttributes):
    """Calls that take no attributes (retrieve, delete): anything given is unknown."""


class ListParams(RequestAttributes):
    """GET /v1/conversations query attributes."""

    limit: Limit = 10
    muted: bool | UnsetType = UNSET
    pinned: bool | UnsetType = UNSET
    archived: bool | UnsetType = UNSET
    contact_id: ForeignId | UnsetType = UNSET
    group_id: ForeignId | UnsetType = UNSET
    starting_after: PageCursor | UnsetType = UNSET
    ending_before: PageCursor | UnsetType = UNSET
    order: ListOrder = "created"


# The fields an update can change, in the conversation's own order (which previous_attributes keeps).
UPDATABLE_FIELDS = tuple(name for name in CONVERSATION_FIELDS if name in ConversationUpdate.__struct_fields__)

# --------------------------------------------------------------------------------- events

EVENT_TYPES = ("conversation.created", "conversation.updated", "conversation.deleted")
EventType = Literal["conversation.created", "conversation.updated", "conversation.deleted"]
EventId = Annotated[str, Meta(pattern=rf"^{EVENT_ID_PREFIX}{ID_REGEX}(?![\s\S])",
                              examples=["evt_0Vc0T5O7JeVw0mvP"])]
ConversationIdFilter = Annotated[str, Meta(pattern=rf"^{ID_REGEX}(?![\s\S])", examples=["xgQQXg3hrtjh7AvZ"])]
# The order in which an entry's fields are written to the stream.
STREAM_FIELDS = ("id", "type", "account_id", "conversation_id", "occurred_at", "sequence", "schema_version",
                 "data", "previous_attributes")
EVENT_SCHEMA_VERSION = 1


# The old values of the fields an update changed (only those are present): one optional field
# per updatable field, typed as the conversation types it.
PreviousAttributes = msgspec.defstruct(
    "PreviousAttributes",
    [(name, get_type_hints(Conversation)[name] | UnsetType, UNSET) for name in UPDATABLE_FIELDS],
    omit_defaults=True, forbid_unknown_fields=True, module=__name__,
)


class ConversationEvent(msgspec.Struct, omit_defaults=True):
    """One event, decoded: integers as integers, `data` and `previous_attributes` as objects."""

    id: str
    type: str
    account_id: str
    conversation_id: str
    occurred_at: int
    sequence: int
    schema_version: int
    data: Conversation
    previous_attributes: PreviousAttributes | UnsetType = UNSET  # type: ignore[valid-type]


class EventListParams(RequestAttributes):
    """GET /v1/events query attributes: the feed, newest first, with event ids as cursors."""

    limit: Limit = 10
    type: EventType | UnsetType = UNSET
    conversation_id: ConversationIdFilter | UnsetType = UNSET
    starting_after: EventId | UnsetType = UNSET
    ending_before: EventId | UnsetType = UNSET


class EventPage(msgspec.Struct):
    """One page of the events feed."""

    has_more: bool
    data: list[ConversationEvent]


encode_json = msgspec.json.Encoder().encode
_decode_conversation = msgspec.json.Decoder(Conversation).decode
_decode_previous = msgspec.json.Decoder(PreviousAttributes).decode


def decode_entry(fields: dict[str, str]) -> ConversationEvent:
    """A stream entry's string fields as a ConversationEvent; raises ValueError on a malformed entry."""
    try:
        previous = fields.get("previous_attributes")
        return ConversationEvent(
            id=fields["id"],
            type=fields["type"],
            account_id=fields["account_id"],
            conversation_id=fields["conversation_id"],
            occurred_at=int(fields["occurred_at"]),
            sequence=int(fields["sequence"]),
            schema_version=int(fields["schema_version"]),
            data=_decode_conversation(fields["data"]),
            previous_attributes=UNSET if previous is None else _decode_previous(previous),
        )
    except (KeyError, ValueError, msgspec.DecodeError) as error:
        raise ValueError(f"malformed event entry: {error}") from None
