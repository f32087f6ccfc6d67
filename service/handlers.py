"""HTTP endpoints of /v1/conversations (API.md §2-3): decode, apply the rules, encode.

Handlers take only `request: Request`: Litestar's own body and query parsing converts laxly
("1" becomes True) and ignores unknown query keys, which the contract forbids, so decoding is
wire.py's. They return msgspec-encoded bytes in an ASGIResponse, which Litestar sends as is.
The account comes from the /v1 router's guard (`request.auth`). No SQL, no Redis, no error
JSON built by hand.
"""

from __future__ import annotations

from litestar import Request, delete, get, post, route
from litestar.response.base import ASGIResponse

from service.auth import raw_header
from service.conversations import Conversations
from service.errors import ConversationNotFound
from service.wire import (
    CONVERSATION_ID,
    ConversationCreate,
    ConversationUpdate,
    ListParams,
    NoAttributes,
    decode_body,
    decode_query,
    encode_json,
)

COLLECTION_PATH = "/conversations"
ITEM_PATH = "/conversations/{conversation_id:str}"
LOCATION_PREFIX = "/v1/conversations/"
JSON = "application/json"
_CONTENT_TYPE = b"content-type"


def _json(payload: object, status_code: int = 200, headers: dict[str, str] | None = None) -> ASGIResponse:
    return ASGIResponse(body=encode_json(payload), media_type=JSON, status_code=status_code, headers=headers)


def _conversations(request: Request) -> Conversations:
    return request.app.state.conversations


def _content_type(request: Request) -> str | None:
    value = raw_header(request.scope["headers"], _CONTENT_TYPE)
    return None if value is None else value.decode("latin-1")


def _conversation_id(request: Request) -> str:
    """The path's id; one that cannot be an id cannot exist either, so it is a 404."""
    conversation_id: str = request.path_params["conversation_id"]
    if CONVERSATION_ID.fullmatch(conversation_id) is None:
        raise ConversationNotFound(conversation_id)
    return conversation_id


def _no_query(request: Request) -> None:
    decode_query(request.scope["query_string"], NoAttributes)


@get(COLLECTION_PATH)
async def list_conversations(request: Request) -> ASGIResponse:
    params = decode_query(request.scope["query_string"], ListParams)
    page = await _conversations(request).list(request.auth, params)
    return _json(page)


@post(COLLECTION_PATH)
async def create_conversation(request: Request) -> ASGIResponse:
    _no_query(request)
    body = decode_body(await request.body(), _content_type(request), ConversationCreate)
    conversation = await _conversations(request).create(request.auth, body)
    return _json(conversation, 201, {"location": LOCATION_PREFIX + conversation.id})


@get(ITEM_PATH)
async def retrieve_conversation(request: Request) -> ASGIResponse:
    conversation_id = _conversation_id(request)
    _no_query(request)
    conversation = await _conversations(request).retrieve(request.auth, conversation_id)
    return _json(conversation)


@route(ITEM_PATH, http_method=["PUT", "PATCH"])
async def update_conversation(request: Request) -> ASGIResponse:
    conversation_id = _conversation_id(request)
    _no_query(request)
    body = decode_body(await request.body(), _content_type(request), ConversationUpdate)
    conversation = await _conversations(request).update(request.auth, conversation_id, body)
    return _json(conversation)


@delete(ITEM_PATH)
async def delete_conversation(request: Request) -> None:
    conversation_id = _conversation_id(request)
    _no_query(request)
    decode_body(await request.body(), _content_type(request), NoAttributes)
    await _conversations(request).delete(request.auth, conversation_id)


CONVERSATION_HANDLERS = [list_conversations, create_conversation, retrieve_conversation, update_conversation,
                         delete_conversation]
