"""The OpenAPI 3.1 document's paths, at /schema/openapi.json (its schemas are openapi_schemas.py's, the docs
page that shows it docs_page.py's).

The document is assembled here rather than inferred by Litestar, because the mount decodes
bodies and queries itself (decoding.py) and Litestar would describe neither the form encoding
nor the contract's error bodies. The schemas are openapi_schemas.py's; the tests check the paths
against the app's dispatch table and real responses against the schemas.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from litestar import MediaType, get
from litestar.response.base import ASGIResponse

from service.http import openapi_schemas
from service.http.decoding import FORM_MEDIA_TYPE, JSON_MEDIA_TYPE
from service.http.idempotency import KEY_PATTERN
from service.http.limits import MAX_BODY_BYTES
from service.http.openapi_schemas import REF, json_content, ref
from service.ids import EVENT_ID_PREFIX, ID_REGEX
from service.model import EventListParams, ListParams
from service.settings import Settings
from service.store.idempotency_keys import LOCK_WAIT_SECONDS

OPENAPI_PATH = "/schema/openapi.json"
DESCRIPTION = """\
Conversations between an account and its contacts or groups.

**Authentication**: every `/v1` call needs `Authorization: Bearer <token>` (issued with
`python -m service tokens create --account <id>`).

**Bodies** are accepted as JSON or as form data (`curl -d`): in form data, booleans are
`true`/`false`, integers are decimal digits, and an empty value means null. Unknown attributes,
in a body or a query string, are a 400 naming the attribute.

**Errors** are `{"type", "message", "param"}`: `type` is `invalid_request` for 4xx and
`api_error` for 5xx; `param` names the offending attribute, or is null.

**Retries and concurrency**: send `Idempotency-Key` with a write to make its retry safe (the
first response is replayed, nothing changes twice); responses carry the conversation's version
as `ETag`, and `If-Match` makes a write fail with 412 if someone changed it meanwhile.

**Pagination** is by cursor: in the list's creation order `starting_after` / `ending_before` take a
conversation id, which is a position in the list (newest first), so pages never skip or repeat
items; in activity order (`order=activity`) they take the `next_cursor` / `previous_cursor` a page
returned, and in the events feed an event id.

Every create, effective update and delete is also published as an event on a Redis stream:
see docs/asyncapi.yaml.
"""


_DEFAULTS = Settings()  # the document states the defaults of the settings it names
_ERROR_DESCRIPTIONS = {
    400: "A bad attribute, body or query string (`param` names the attribute).",
    401: "Missing, unknown or revoked token.",
    404: "No such conversation in this account (or no such route).",
    409: ("The account already has a conversation with this contact or group, or a request with the same "
          "Idempotency-Key is still running."),
    410: "The cursor names an event older than the feed's window: resync (list the conversations again).",
    408: "The request head did not arrive within HTTP_HEADER_TIMEOUT; the connection is closed.",
    412: "If-Match names a version the conversation no longer has (nothing was changed).",
    413: f"The body is over {MAX_BODY_BYTES // 1024} KiB.",
    414: f"The request line is over HTTP_MAX_URL_BYTES ({_DEFAULTS.http_max_url_bytes // 1024} KiB by default); "
         "the connection is closed.",
    415: "The body is neither JSON nor form data.",
    429: ("More writes with an Idempotency-Key a second than the account may send (IDEMPOTENCY_KEYS_PER_SECOND); "
          "nothing was stored: retry after Retry-After seconds, with the same key."),
    431: (f"The header block is over HTTP_MAX_HEADER_BYTES ({_DEFAULTS.http_max_header_bytes // 1024} KiB by "
          f"default) or has more than HTTP_MAX_HEADERS ({_DEFAULTS.http_max_headers}) headers; the connection is "
          "closed."),
    500: "An unexpected error on our side (logged; the body has no details).",
    503: ("PostgreSQL is unreachable or too slow, a write with an Idempotency-Key waited over "
          f"{LOCK_WAIT_SECONDS:g} s for another "
          "write to the conversation, or the process is at its limit of requests or connections; retry after the "
          "Retry-After seconds."),
}


# What the server's front door may answer to any request before the app sees it (protocol.py).
FRONT_DOOR_STATUSES = (408, 414, 431)


def _errors(*statuses: int, authenticated: bool = True) -> dict[str, Any]:
    """The error responses of an operation: `statuses`, the front door's, and (for /v1) 401, 500, 503."""
    responses: dict[str, Any] = {}
    for status in sorted({*statuses, *FRONT_DOOR_STATUSES, *((401, 500, 503) if authenticated else ())}):
        response: dict[str, Any] = {"description": _ERROR_DESCRIPTIONS[status],
                                    "content": json_content("ConflictErrorBody" if status == 409 else "ErrorBody")}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
        responses[str(status)] = response
    return responses


def _request_body(name: str, required: bool) -> dict[str, Any]:
    return {"required": required,
            "content": {JSON_MEDIA_TYPE: {"schema": ref(name)}, FORM_MEDIA_TYPE: {"schema": ref(name + "Form")}}}


_IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": f"^{KEY_PATTERN.pattern.decode()}$"},
    "description": ("Makes a retry safe: the first response to this key (per account) is stored for 24 hours "
                    "with the change, and a retry of the same request gets it back (with Idempotent-Replayed: "
                    "true) without changing anything again. The same key with another method, path or body "
                    "is a 400; a retry while the first still runs waits for it, then 409."),
}
_IF_MATCH_PARAMETER = {
    "name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
    "example": '"3"',
    "description": ("Apply the write only if the conversation's version (its ETag) is one of these strong "
                    "entity tags, or `*`; otherwise 412 and nothing changes."),
}
_ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "required": True,
                         "description": "The conversation's version, changed by every effective update."}}
_REPLAYED_HEADER = {"Idempotent-Replayed": {"schema": {"type": "string", "const": "true"},
                                            "description": "Present on a response replayed for an Idempotency-Key."}}

_CONVERSATION_ID_PARAMETER = {
    "name": "conversation_id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": f"^{ID_REGEX}$"}, "example": "xgQQXg3hrtjh7AvZ",
    "description": "A conversation id; anything that cannot be one is a 404.",
}


def _query_parameters(query_schema: dict[str, Any], descriptions: dict[str, str]) -> list[dict[str, Any]]:
    """A query Struct's schema as the operation's parameters, each with its description."""
    return [{"name": name, "in": "query", "required": False, "description": descriptions[name],
             "schema": {key: value for key, value in schema.items() if key != "examples"}}
            for name, schema in query_schema["properties"].items()]


def _list_parameters(list_schema: dict[str, Any]) -> list[dict[str, Any]]:
    return _query_parameters(list_schema, {
        "limit": "Page size, 1 to 100 (default 10).",
        "muted": "true: only muted conversations; false: only not muted ones.",
        "pinned": "true: only pinned conversations; false: only not pinned ones.",
        "archived": "true: only archived conversations; false: only not archived ones.",
        "contact_id": "Only the conversation with this contact.",
        "group_id": "Only the conversation with this group.",
        "starting_after": ("A position: the page of conversations that come after it. In creation order, a "
                           "conversation id (the page holds older ones); in activity order, a page's next_cursor."),
        "ending_before": ("A position: the page of conversations that come before it. In creation order, a "
                          "conversation id (the page holds newer ones); in activity order, a page's "
                          "previous_cursor."),
        "order": ("`created` (the default): newest first, by id. `activity`: pinned first, then by "
                  "last_active_at, most recent first (never active after every active one, newest first), "
                  "ties by id; its pages carry next_cursor and previous_cursor."),
    })


_EVENT_ID_PARAMETER = {
    "name": "event_id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": f"^{EVENT_ID_PREFIX}{ID_REGEX}$"}, "example": "evt_0Vc0T5O7JeVw0mvP",
    "description": "An event id; anything that cannot be one is a 404.",
}


def _event_parameters(list_schema: dict[str, Any]) -> list[dict[str, Any]]:
    return _query_parameters(list_schema, {
        "limit": "Page size, 1 to 100 (default 10).",
        "type": "Only events of this type.",
        "conversation_id": "Only the events of this conversation.",
        "starting_after": "An event id of this feed: the page of events before it (older).",
        "ending_before": "An event id of this feed: the page of events after it (newer), the closest first in "
                         "time, listed newest first.",
    })


def build_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document, as a plain JSON-ready object."""
    schemas = openapi_schemas.schemas()
    _, list_components = msgspec.json.schema_components([ListParams], ref_template=REF)
    _, event_components = msgspec.json.schema_components([EventListParams], ref_template=REF)
    bearer = [{"bearerAuth": []}]
    conversation_200 = {"description": "The conversation.", "content": json_content("Conversation"),
                        "headers": {**_ETAG_HEADER, **_REPLAYED_HEADER}}
    tags = ["conversations"]
    item_errors = _errors(400, 404)
    paths: dict[str, Any] = {
        "/v1/conversations": {
            "get": {"operationId": "listConversations", "summary": "List conversations, newest or most active first",
                    "tags": tags, "security": bearer, "parameters": _list_parameters(list_components["ListParams"]),
                    "responses": {"200": {"description": "A page of conversations (ActivityPage with order=activity).",
                                          "content": {JSON_MEDIA_TYPE: {"schema": {"anyOf": [
                                              ref("ConversationPage"), ref("ActivityPage")]}}}},
                                  **_errors(400)}},
            "post": {"operationId": "createConversation", "summary": "Create a conversation with a contact or group",
                     "tags": tags, "security": bearer, "parameters": [_IDEMPOTENCY_KEY_PARAMETER],
                     "requestBody": _request_body("ConversationCreate", True),
                     "responses": {"201": {**conversation_200, "description": "The new conversation.",
                                           "headers": {"Location": {"schema": {"type": "string"}, "required": True,
                                                                    "description": "/v1/conversations/{id}"},
                                                       **_ETAG_HEADER, **_REPLAYED_HEADER}},
                                   **_errors(400, 409, 413, 415, 429)}},
        },
        "/v1/conversations/{conversation_id}": {
            "parameters": [_CONVERSATION_ID_PARAMETER],
            "get": {"operationId": "retrieveConversation", "summary": "Retrieve a conversation", "tags": tags,
                    "security": bearer, "responses": {"200": conversation_200, **item_errors}},
            "put": {"operationId": "updateConversation", "summary": "Update a conversation (partial)",
                    "description": ("Any subset of the attributes; null clears a nullable one. last_opened_at and "
                                    "last_active_at only move forward: a lower value is ignored. A body that changes "
                                    "nothing returns the conversation unchanged."),
                    "tags": tags, "security": bearer, "parameters": [_IDEMPOTENCY_KEY_PARAMETER, _IF_MATCH_PARAMETER],
                    "requestBody": _request_body("ConversationUpdate", False),
                    "responses": {"200": conversation_200, **_errors(400, 404, 409, 412, 413, 415, 429)}},
            "delete": {"operationId": "deleteConversation", "summary": "Delete a conversation permanently",
                       "tags": tags, "security": bearer,
                       "parameters": [_IDEMPOTENCY_KEY_PARAMETER, _IF_MATCH_PARAMETER],
                       "responses": {"204": {"description": "Deleted; no body.", "headers": _REPLAYED_HEADER},
                                     **_errors(400, 404, 409, 412, 413, 415, 429)}},
        },
        "/v1/events": {
            "get": {"operationId": "listEvents", "summary": "The events feed: every published event, newest first",
                    "description": ("The account's events in the order they became visible, newest first, kept for "
                                    "the feed's window (EVENTS_FEED_DAYS, 30 days by default). Each event is the "
                                    "stream's entry, decoded. To sync, page with ending_before=<the newest event "
                                    "you have>: nothing that commits later is ever placed before it."),
                    "tags": ["events"], "security": bearer,
                    "parameters": _event_parameters(event_components["EventListParams"]),
                    "responses": {"200": {"description": "A page of events.", "content": json_content("EventPage")},
                                  **_errors(400, 410)}},
        },
        "/v1/events/{event_id}": {
            "parameters": [_EVENT_ID_PARAMETER],
            "get": {"operationId": "retrieveEvent", "summary": "Retrieve an event of the feed", "tags": ["events"],
                    "security": bearer, "responses": {"200": {"description": "The event.",
                                                              "content": json_content("ConversationEvent")},
                                                      **_errors(400, 404)}},
        },
        "/health": {"get": {"operationId": "health", "summary": "Liveness: the process answers",
                            "tags": ["operations"], "security": [],
                            "responses": {"200": {"description": "Alive.", "content": json_content("Health")},
                                          **_errors(authenticated=False)}}},
        "/ready": {"get": {"operationId": "ready", "summary": "Readiness: PostgreSQL reachable",
                           "tags": ["operations"], "security": [],
                           "responses": {"200": {"description": "Ready.", "content": json_content("Readiness")},
                                         "503": {"description": "PostgreSQL is unreachable.",
                                                 "content": json_content("Readiness")},
                                         **_errors(authenticated=False)}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics of every worker",
                             "tags": ["operations"], "security": [],
                             "responses": {"200": {"description": "Prometheus text format.",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors(503, authenticated=False)}}},
    }
    patch = copy.deepcopy(paths["/v1/conversations/{conversation_id}"]["put"])
    patch["operationId"] = "patchConversation"
    patch["summary"] = "Update a conversation (partial; the same call as PUT)"
    paths["/v1/conversations/{conversation_id}"]["patch"] = patch
    return {
        "openapi": "3.1.0",
        "info": {"title": "Conversations API", "version": "1.0.0", "description": DESCRIPTION},
        "tags": [{"name": "conversations"}, {"name": "events"},
                 {"name": "operations", "description": "No token needed."}],
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                          "description": "An API token from `tokens create`."}}},
    }


_DOCUMENT = msgspec.json.encode(build_document())

@get(OPENAPI_PATH, sync_to_thread=False)
def openapi_document() -> ASGIResponse:
    return ASGIResponse(body=_DOCUMENT, media_type=MediaType.JSON)


SCHEMA_HANDLERS = [openapi_document]
