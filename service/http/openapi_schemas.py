"""The OpenAPI document's components: the schemas of every body, read from the Structs themselves.

Schemas come from the very Structs the code decodes and encodes (msgspec.json.schema_components),
so they cannot drift from the code; what a Struct cannot say (exactly one party on create, the
form-data spelling of each value) is added here.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from service.errors import ConflictErrorBody, ErrorBody
from service.http.decoding import JSON_MEDIA_TYPE
from service.http.status import Health, Readiness
from service.model import (
    MAX_TIMESTAMP,
    ActivityPage,
    Conversation,
    ConversationCreate,
    ConversationEvent,
    ConversationPage,
    ConversationUpdate,
    EventPage,
)

REF = "#/components/schemas/{name}"

SEED_CONVERSATION = {
    "id": "xgQQXg3hrtjh7AvZ", "contact_id": "WAz8eIbvDR60rouK", "group_id": None, "pinned_message_id": None,
    "is_pinned": False, "is_muted": False, "last_active_at": 705103200, "last_opened_at": 705103200,
    "created_at": 692233200, "archived_at": None,
}

def schemas() -> dict[str, Any]:
    structs = [Conversation, ConversationPage, ActivityPage, ConversationEvent, EventPage, ErrorBody,
               ConflictErrorBody, ConversationCreate,
               ConversationUpdate, Health, Readiness]
    _, components = msgspec.json.schema_components(structs, ref_template=REF)
    create = components["ConversationCreate"]
    # docs/api.md §3: exactly one of the two; the Struct cannot say it, the schema can.
    create["oneOf"] = [{"required": [name], "properties": {name: {"type": "string"}}}
                       for name in ("contact_id", "group_id")]
    components["ConversationCreateForm"] = _form_schema(create)
    components["ConversationUpdateForm"] = _form_schema(components["ConversationUpdate"])
    components["Conversation"]["examples"] = [SEED_CONVERSATION]
    components["ConversationPage"]["examples"] = [{"has_more": False, "data": [SEED_CONVERSATION]}]
    components["ActivityPage"]["examples"] = [{
        "has_more": False, "data": [SEED_CONVERSATION], "next_cursor": "act_0_705103200_xgQQXg3hrtjh7AvZ",
        "previous_cursor": "act_0_705103200_xgQQXg3hrtjh7AvZ"}]
    components["ErrorBody"]["examples"] = [
        {"type": "invalid_request", "message": "limit must be an integer between 1 and 100", "param": "limit"}]
    return components


def digits_at_most(limit: int) -> str:
    """A regex for decimal numbers from 0 to `limit` (leading zeros allowed, 20 digits at most).

    The form decoder reads any run of up to 20 digits as an integer; JSON Schema has no
    `maximum` for a string, so the bound is spelt out digit by digit.
    """
    digits = str(limit)
    alternatives = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    for position, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - position - 1
            lower, upper = (0 if position else 1), int(digit) - 1
            if upper >= lower:
                below = str(upper) if upper == lower else f"[{lower}-{upper}]"
                alternatives.append(digits[:position] + below + (f"[0-9]{{{rest}}}" if rest else ""))
    alternatives.append(digits)
    return f"^(?=[0-9]{{1,20}}$)0*(?:{'|'.join(alternatives)})$"


_FORM_BOOLEAN = {"type": "string", "enum": ["true", "false"]}
_FORM_TIMESTAMP = {"type": "string", "pattern": digits_at_most(MAX_TIMESTAMP),
                   "description": f"decimal digits, 0 to {MAX_TIMESTAMP}"}
_FORM_NULL = {"type": "string", "enum": [""], "description": "an empty value means null"}


def _form_value(schema: dict[str, Any]) -> dict[str, Any]:
    """The form-data spelling of one JSON value schema (docs/api.md §3: true/false, digits, empty = null)."""
    if "anyOf" in schema:
        return {"anyOf": [_form_value(member) for member in schema["anyOf"]]}
    kind = schema.get("type")
    if kind == "boolean":
        return dict(_FORM_BOOLEAN)
    if kind == "integer":
        return dict(_FORM_TIMESTAMP)
    if kind == "null":
        return dict(_FORM_NULL)
    return {key: value for key, value in schema.items() if key != "examples"}


def _form_schema(json_schema: dict[str, Any]) -> dict[str, Any]:
    form = copy.deepcopy(json_schema)
    form["title"] = json_schema["title"] + "Form"
    form["properties"] = {name: _form_value(value) for name, value in json_schema["properties"].items()}
    if "oneOf" in json_schema:  # exactly one party; in a form, an empty value is no value
        form["oneOf"] = [{"required": [name], "properties": {name: {"minLength": 1}}}
                         for name in ("contact_id", "group_id")]
    return form


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def json_content(name: str) -> dict[str, Any]:
    return {JSON_MEDIA_TYPE: {"schema": ref(name)}}
