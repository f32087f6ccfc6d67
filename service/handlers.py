"""HTTP endpoints of /v1/conversations (API.md §2-3): decode, apply the rules, encode.

The whole resource is one Litestar ASGI route handler (`@asgi`, mounted at /v1/conversations)
that picks the operation from `ROUTES` by path and method. Litestar still routes to it, owns the
lifespan and renders every raised ApiError through the app's exception handler; what the mount
skips is Litestar's per-call HTTP machinery (a Request object, a signature model, guards that
copy the handler, a Response object), which measured ~60 µs of a ~200 µs retrieve: more than the
whole budget above the bare-ASGI limit (README, "Performance").

Operations decode bodies and queries with wire.py (Litestar's own parsing converts laxly and
ignores unknown query keys, which the contract forbids), call the rules in conversations.py and
answer with msgspec-encoded bytes. No SQL, no Redis, no error JSON built by hand here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from litestar import asgi
from litestar.types import Receive, Scope, Send

from service.auth import raw_header
from service.conversations import Conversations
from service.errors import ConversationNotFound, MethodNotAllowed, PayloadTooLarge, RouteNotFound
from service.wire import (
    CONVERSATION_ID,
    ConversationCreate,
    ConversationUpdate,
    ListParams,
    NoAttributes,
    RequestAttributes,
    decode_body,
    decode_query,
    encode_json,
)

MOUNT_PATH = "/v1/conversations"
COLLECTION_ROUTE = "/v1/conversations"
ITEM_ROUTE = "/v1/conversations/{conversation_id}"
MAX_BODY_BYTES = 64 * 1024

_AUTHORIZATION = b"authorization"
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_JSON_HEADER = (b"content-type", b"application/json")
_TOO_LARGE = "the request body must be at most 64 KiB"

T = TypeVar("T", bound=RequestAttributes)


class Call:
    """One call to /v1/conversations: what an operation reads from it and how it answers."""

    __slots__ = ("account_id", "conversation_id", "conversations", "receive", "scope", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send, conversations: Conversations,
                 account_id: str, conversation_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.conversations = conversations
        self.account_id = account_id
        self.conversation_id = conversation_id

    def query(self, struct_type: type[T]) -> T:
        return decode_query(self.scope["query_string"], struct_type)

    async def body(self, struct_type: type[T]) -> T:
        content_type = raw_header(self.scope["headers"], _CONTENT_TYPE)
        return decode_body(await self._read_body(), None if content_type is None else content_type.decode("latin-1"),
                           struct_type)

    async def _read_body(self) -> bytes:
        declared = raw_header(self.scope["headers"], _CONTENT_LENGTH)
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise PayloadTooLarge(_TOO_LARGE)
        message = await self.receive()
        body = message.get("body", b"")
        while message.get("more_body"):  # chunked, or split by the server
            message = await self.receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(_TOO_LARGE)
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(_TOO_LARGE)
        return body

    async def respond(self, status: int, payload: object | None = None, location: str | None = None) -> None:
        body = b"" if payload is None else encode_json(payload)
        headers = [_JSON_HEADER, (b"content-length", b"%d" % len(body))] if payload is not None else []
        if location is not None:
            headers.append((b"location", location.encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------ operations


async def list_conversations(call: Call) -> None:
    page = await call.conversations.list(call.account_id, call.query(ListParams))
    await call.respond(200, page)


async def create_conversation(call: Call) -> None:
    call.query(NoAttributes)
    conversation = await call.conversations.create(call.account_id, await call.body(ConversationCreate))
    await call.respond(201, conversation, location=f"{MOUNT_PATH}/{conversation.id}")


async def retrieve_conversation(call: Call) -> None:
    call.query(NoAttributes)
    await call.respond(200, await call.conversations.retrieve(call.account_id, call.conversation_id))


async def update_conversation(call: Call) -> None:
    """PUT and PATCH alike: a partial update (API.md §2)."""
    call.query(NoAttributes)
    request = await call.body(ConversationUpdate)
    await call.respond(200, await call.conversations.update(call.account_id, call.conversation_id, request))


async def delete_conversation(call: Call) -> None:
    call.query(NoAttributes)
    await call.body(NoAttributes)
    await call.conversations.delete(call.account_id, call.conversation_id)
    await call.respond(204)


Operation = Callable[[Call], Awaitable[None]]

# Route template -> method -> operation: the dispatch table, and what openapi.py documents.
ROUTES: dict[str, dict[str, Operation]] = {
    COLLECTION_ROUTE: {"GET": list_conversations, "POST": create_conversation},
    ITEM_ROUTE: {"GET": retrieve_conversation, "PUT": update_conversation, "PATCH": update_conversation,
                 "DELETE": delete_conversation},
}
_ALLOW = {route: ", ".join(["OPTIONS", *operations]) for route, operations in ROUTES.items()}


def _route_of(remaining_path: str) -> tuple[str, str]:
    """(route template, conversation id or "") of the path below the mount, or RouteNotFound.

    Litestar hands a mount what follows its path, with a slash at each end ("/", "/<id>/").
    """
    if remaining_path == "/":
        return COLLECTION_ROUTE, ""
    if remaining_path[:1] != "/" or remaining_path.count("/") != 2:  # /v1/conversationsX, /<id>/more
        raise RouteNotFound(f"there is no route {MOUNT_PATH}{remaining_path.rstrip('/')[:200]}")
    return ITEM_ROUTE, remaining_path[1:-1]


@asgi(MOUNT_PATH, is_mount=True, copy_scope=False)
async def conversations_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """Every call under /v1/conversations: route, authenticate, run the operation."""
    route, conversation_id = _route_of(scope["path"])
    method = scope["method"]
    operation = ROUTES[route].get(method)
    if operation is None:
        if method == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", _ALLOW[route].encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        raise MethodNotAllowed(f"{method} is not allowed on {route}; allowed: {_ALLOW[route]}",
                               headers={"Allow": _ALLOW[route]})
    scope["path_template"] = route  # the request observer's metric and log label
    state = scope["app"].state
    account_id = await state.authenticator.account_for(raw_header(scope["headers"], _AUTHORIZATION))
    scope["auth"] = account_id
    if conversation_id and CONVERSATION_ID.fullmatch(conversation_id) is None:
        raise ConversationNotFound(conversation_id)  # it cannot be an id, so it cannot exist
    await operation(Call(scope, receive, send, state.conversations, account_id, conversation_id))


CONVERSATION_HANDLERS = [conversations_endpoint]
