"""Strict decoding of what a client sends: JSON and form bodies, query strings, into the model's Structs.

Bodies arrive as JSON or as form data (the seed's `curl -d` sends a form), query strings as
form-encoded pairs; all three are decoded into the same Structs (service/model.py) with the same
rules, and every failure becomes an `InvalidRequest` naming the attribute with a sentence a
developer can act on. Litestar's own parsing converts laxly and ignores unknown query keys,
which the contract forbids, so the mount never uses it. No I/O here.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from service.errors import InvalidRequest, UnsupportedMediaType
from service.ids import EVENT_ID_PREFIX, ID_LENGTH
from service.model import EVENT_TYPES, MAX_TIMESTAMP, EventListParams, RequestAttributes

MAX_QUERY_ATTRIBUTES = 32

# What each attribute must be, as the end of a sentence "<attribute> must be ...": by attribute,
# and where a call gives a name another meaning (the feed's cursors are event ids), by call.
_FOREIGN_ID_RULE = "a string of 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
_TIMESTAMP_RULE = f"an integer Unix timestamp from 0 to {MAX_TIMESTAMP}"
_CONVERSATION_ID_RULE = f"a conversation id ({ID_LENGTH} characters from A-Z, a-z and 0-9)"
_CURSOR_RULE = f"{_CONVERSATION_ID_RULE}, or with order=activity a next_cursor or previous_cursor that a page returned"
_EVENT_ID_RULE = f"an event id ({EVENT_ID_PREFIX} and {ID_LENGTH} characters from A-Z, a-z and 0-9)"
ATTRIBUTE_RULES: dict[str, str] = {
    "contact_id": _FOREIGN_ID_RULE,
    "group_id": _FOREIGN_ID_RULE,
    "pinned_message_id": _FOREIGN_ID_RULE + ", or null",
    "is_pinned": "true or false",
    "is_muted": "true or false",
    "archived_at": _TIMESTAMP_RULE + ", or null",
    "last_opened_at": _TIMESTAMP_RULE + ", or null",
    "last_active_at": _TIMESTAMP_RULE + ", or null",
    "limit": "an integer between 1 and 100",
    "muted": "true or false",
    "pinned": "true or false",
    "archived": "true or false",
    "starting_after": _CURSOR_RULE,
    "ending_before": _CURSOR_RULE,
    "order": "created or activity",
}
CALL_RULES: dict[type[RequestAttributes], dict[str, str]] = {
    EventListParams: {
        "type": ", ".join(EVENT_TYPES[:-1]) + " or " + EVENT_TYPES[-1],
        "conversation_id": _CONVERSATION_ID_RULE,
        "starting_after": _EVENT_ID_RULE,
        "ending_before": _EVENT_ID_RULE,
    },
}


def attribute_rule(struct_type: type[RequestAttributes], name: str) -> str:
    return CALL_RULES.get(struct_type, {}).get(name) or ATTRIBUTE_RULES.get(name, "of another type")


T = TypeVar("T", bound=RequestAttributes)

_AT_PATH = re.compile(r"at `\$\.([A-Za-z0-9_]+)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `(.*)`", re.DOTALL)


def translate_validation_error(error: msgspec.MsgspecError, struct_type: type[RequestAttributes]) -> InvalidRequest:
    """Turn msgspec's message (its only error interface) into the contract's sentence and param."""
    text = str(error)
    if match := _UNKNOWN_FIELD.search(text):
        name = match.group(1)
        accepted = ", ".join(struct_type.__struct_fields__) or "no attributes"
        return InvalidRequest(f"{name[:100]!r} is not an attribute of this call; it accepts: {accepted}",
                              param=name[:100])
    if match := _AT_PATH.search(text):
        name = match.group(1)
        return InvalidRequest(f"{name} must be {attribute_rule(struct_type, name)}", param=name)
    # ValidationError is a DecodeError too: only a decode error that is not one means broken JSON.
    if isinstance(error, msgspec.ValidationError):
        return InvalidRequest("the request body must be a JSON object")
    return InvalidRequest("the request body is not valid JSON")


@cache
def _json_decoder(struct_type: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(struct_type)


class _FieldKinds(msgspec.Struct, frozen=True):
    takes_bool: bool
    takes_int: bool
    takes_null: bool


@cache
def _field_kinds(struct_type: type[RequestAttributes]) -> dict[str, _FieldKinds]:
    """Which JSON kinds each field accepts, read once from the Struct's type information."""
    kinds: dict[str, _FieldKinds] = {}
    for field in msgspec.inspect.type_info(struct_type).fields:  # type: ignore[attr-defined]
        members = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        # Annotated[int, Meta(...)] arrives wrapped in Metadata: judge the type inside it.
        members = tuple(m.type if isinstance(m, msgspec.inspect.Metadata) else m for m in members)
        kinds[field.name] = _FieldKinds(
            takes_bool=any(isinstance(m, msgspec.inspect.BoolType) for m in members),
            takes_int=any(isinstance(m, msgspec.inspect.IntType) for m in members),
            takes_null=any(isinstance(m, msgspec.inspect.NoneType) for m in members),
        )
    return kinds


_DIGITS = re.compile(r"[0-9]{1,20}")
_TOO_BIG = 10**20  # stands for any longer run of digits: out of every range, never a huge int()


def _typed_value(value: str, kinds: _FieldKinds | None) -> Any:
    """A form value as the JSON value it spells, where the field accepts that kind (docs/api.md §3)."""
    if kinds is None:
        return value
    if kinds.takes_bool and value in ("true", "false"):
        return value == "true"
    if kinds.takes_int and value.isascii() and value.isdigit():
        return int(value) if _DIGITS.fullmatch(value) else _TOO_BIG
    if kinds.takes_null and value == "":
        return None
    return value


def decode_pairs(pairs: list[tuple[str, str]], struct_type: type[T]) -> T:
    """Decode form or query pairs with the same strictness as JSON: one key once, typed values."""
    kinds = _field_kinds(struct_type)
    values: dict[str, Any] = {}
    for key, value in pairs:
        if key in values:
            raise InvalidRequest(f"{key[:100]} is given more than once", param=key[:100])
        values[key] = _typed_value(value, kinds.get(key))
    try:
        return msgspec.convert(values, struct_type, strict=True)
    except msgspec.ValidationError as error:
        raise translate_validation_error(error, struct_type) from None


def _parse_pairs(encoded: str, what: str) -> list[tuple[str, str]]:
    # The attributes are counted once parsed: parse_qsl's own limit counts separators, so a run of
    # `&` would count as attributes. What it parses is bounded by the body and URL limits.
    try:
        pairs = parse_qsl(encoded, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest(f"the {what} must be UTF-8 once percent-decoded") from None
    if len(pairs) > MAX_QUERY_ATTRIBUTES:
        raise InvalidRequest(f"the {what} has more than {MAX_QUERY_ATTRIBUTES} attributes")
    return pairs


def decode_query(query_string: bytes, struct_type: type[T]) -> T:
    """Decode a raw ASGI query string into `struct_type` (an empty one gives the defaults)."""
    if not query_string:
        return struct_type()
    try:
        encoded = query_string.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequest("the query string must be percent-encoded ASCII") from None
    return decode_pairs(_parse_pairs(encoded, "query string"), struct_type)


# A name of the top-level object: once the body decoded into a Struct, every value is a bool,
# an integer, null or a string of [A-Za-z0-9_-], so a quoted run followed by a colon is a name.
_JSON_NAME = re.compile(rb'"([A-Za-z0-9_]{1,64})"\s*:')


def _top_level_names(body: bytes) -> list[str]:
    """The names of the decoded body's top-level object, as a JSON parser reads them."""
    if b"\\" not in body:  # no escape anywhere: each name is spelled as it reads
        return [name.decode() for name in _JSON_NAME.findall(body)]
    # A name may be spelled with escapes ("is_mute\u0064"): let a parser read them (rare, so its cost
    # stays off the usual path). The body already decoded into a flat Struct, so it is one object.
    try:
        pairs: list[tuple[str, Any]] = json.loads(body, object_pairs_hook=list)
    except ValueError:  # what msgspec read, this parser should too; if not, the body is not plain JSON
        raise InvalidRequest("the request body must be UTF-8 JSON") from None
    return [name for name, _ in pairs]


def _reject_repeated_names(body: bytes) -> None:
    """A JSON object that names an attribute twice is ambiguous: a 400, as for form data.

    msgspec keeps the last value silently (RFC 8259 leaves repeated names undefined).
    """
    seen: set[str] = set()
    for name in _top_level_names(body):
        if name in seen:
            raise InvalidRequest(f"{name} is given more than once", param=name)
        seen.add(name)


JSON_MEDIA_TYPE = "application/json"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"


def decode_body(body: bytes, content_type: str | None, struct_type: type[T]) -> T:
    """Decode a request body sent as JSON or as form data; an empty body is an empty object."""
    if not body:
        return struct_type()
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type == JSON_MEDIA_TYPE:
        try:
            decoded = _json_decoder(struct_type).decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise translate_validation_error(error, struct_type) from None
        except UnicodeDecodeError:
            raise InvalidRequest("the request body must be UTF-8 JSON") from None
        _reject_repeated_names(body)
        return decoded
    if media_type == FORM_MEDIA_TYPE:
        try:
            encoded = body.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidRequest("a form body must be percent-encoded ASCII") from None
        return decode_pairs(_parse_pairs(encoded, "form body"), struct_type)
    raise UnsupportedMediaType(
        f"send the body as {JSON_MEDIA_TYPE} or {FORM_MEDIA_TYPE}, not {media_type or 'without a Content-Type'}"
    )

