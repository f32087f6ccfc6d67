"""The conversation events on the Redis stream (API.md §6): their fields and their decoded form.

`STREAM_FIELDS` is the order in which the relay writes an entry's fields; `ConversationEvent`
is what a consumer gets after decoding one. docs/asyncapi.yaml describes the same messages, and
tests/test_asyncapi.py holds the two in step.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from service.wire import Conversation

EVENT_TYPES = ("conversation.created", "conversation.updated", "conversation.deleted")
STREAM_FIELDS = ("id", "type", "account_id", "conversation_id", "occurred_at", "sequence", "schema_version",
                 "data", "previous_attributes")


class PreviousAttributes(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """The old values of the fields an update changed (only those are present)."""

    pinned_message_id: str | None | UnsetType = UNSET
    is_pinned: bool | UnsetType = UNSET
    is_muted: bool | UnsetType = UNSET
    last_active_at: int | None | UnsetType = UNSET
    last_opened_at: int | None | UnsetType = UNSET
    archived_at: int | None | UnsetType = UNSET


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
    previous_attributes: PreviousAttributes | UnsetType = UNSET


_decode_conversation = msgspec.json.Decoder(Conversation).decode
_decode_previous = msgspec.json.Decoder(PreviousAttributes).decode


def decode_entry(fields: dict[str, str]) -> ConversationEvent:
    """An entry's string fields as a ConversationEvent; raises ValueError on a malformed entry."""
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
