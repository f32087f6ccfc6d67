"""HTTP endpoints of /v1/conversations (API.md §2-3): decode, apply the rules, encode.

The whole resource is one Litestar ASGI route handler (`@asgi`, mounted at /v1/conversations)
that picks the operation from `ROUTES` by path and method. Litestar still routes to it, owns the
lifespan and renders every raised ApiError through the app's exception handler; what the mount
skips is Litestar's per-call HTTP machinery (a Request object, a signature model, guards that
copy the handler, a Response object), which measured ~60 µs of a ~200 µs retrieve: more than the
whole budget above the bare-ASGI limit (README, "Performance").

An operation decodes its query and body with wire.py (Litestar's own parsing converts laxly and
ignores unknown query keys, which the contract forbids), then hands its database work to
`Call.run`, which runs it on the pool, or, for a write with an Idempotency-Key, exactly once in
a transaction that stores its reply (idempotency.py). Responses carrying one conversation have
an ETag (its version); If-Match makes a write conditional on it. No SQL, no Redis, no error
JSON built by hand here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from litestar import asgi
from litestar.types import Receive, Scope, Send

from service import idempotency
from service.auth import raw_header
from service.conversations import Conversations
from service.db import Database, Executor
from service.errors import ConversationNotFound, MethodNotAllowed, PayloadTooLarge, RouteNotFound
from service.queries import Versioned
from service.wire import (
    CONVERSATION_ID,
    ConversationCreate,
    ConversationUpdate,
    ListParams,
    NoAttributes,
    Reply,
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
_IDEMPOTENCY_KEY = b"idempotency-key"
_IF_MATCH = b"if-match"
_JSON_HEADER = (b"content-type", b"application/json")
_REPLAYED_HEADER = (b"idempotent-replayed", b"true")
_TOO_LARGE = "the request body must be at most 64 KiB"

T = TypeVar("T", bound=RequestAttributes)
Work = Callable[[Executor], Awaitable[Reply]]


def etag_of(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: bytes | None) -> list[int] | None:
    """The versions an If-Match header allows (None: any, as without the header or with `*`).

    Only strong validators can match (RFC 9110 §13.1.1): a weak or malformed one matches
    nothing, so a write conditioned on it fails its precondition.
    """
    if value is None or value.strip() == b"*":
        return None
    versions = []
    for candidate in value.split(b","):
        tag = candidate.strip()
        if len(tag) >= 3 and tag[:1] == b'"' and tag[-1:] == b'"' and tag[1:-1].isdigit() and len(tag) < 22:
            versions.append(int(tag[1:-1]))
    return versions


def conversation_reply(status: int, found: Versioned, location: str | None = None) -> Reply:
    conversation, version = found
    return Reply(status=status, body=encode_json(conversation), location=location, etag=etag_of(version))


class Call:
    """One call to /v1/conversations: what an operation reads from it and how its work runs."""

    __slots__ = ("_body", "account_id", "conversation_id", "conversations", "db", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, conversations: Conversations, db: Database,
                 account_id: str, conversation_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.conversations = conversations
        self.db = db
        self.account_id = account_id
        self.conversation_id = conversation_id
        self._body = b""

    def query(self, struct_type: type[T]) -> T:
        return decode_query(self.scope["query_string"], struct_type)

    def header(self, name: bytes) -> bytes | None:
        return raw_header(self.scope["headers"], name)

    async def body(self, struct_type: type[T]) -> T:
        content_type = self.header(_CONTENT_TYPE)
        self._body = await self._read_body()
        return decode_body(self._body, None if content_type is None else content_type.decode("latin-1"),
                           struct_type)

    async def _read_body(self) -> bytes:
        declared = self.header(_CONTENT_LENGTH)
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

    def if_match(self) -> list[int] | None:
        return parse_if_match(self.header(_IF_MATCH))

    async def run(self, work: Work) -> Reply:
        """`work` on the pool; with an Idempotency-Key, at most once, its reply stored with the key."""
        raw_key = self.header(_IDEMPOTENCY_KEY)
        if raw_key is None or self.scope["method"] == "GET":
            return await work(self.db)
        key = idempotency.checked_key(raw_key)
        path = self.scope.get("raw_path") or self.scope["path"].encode()
        request_fingerprint = idempotency.fingerprint(self.scope["method"], path.decode("latin-1"),
                                                      self.header(_CONTENT_TYPE), self._body)
        return await idempotency.run_once(self.db, self.account_id, key, request_fingerprint, work)


async def send_reply(send: Send, reply: Reply) -> None:
    headers = [_JSON_HEADER, (b"content-length", b"%d" % len(reply.body))] if reply.body else []
    if reply.location is not None:
        headers.append((b"location", reply.location.encode()))
    if reply.etag is not None:
        headers.append((b"etag", reply.etag.encode()))
    if reply.replayed:
        headers.append(_REPLAYED_HEADER)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


# ------------------------------------------------------------------------------------ operations


async def list_conversations(call: Call) -> Reply:
    page = await call.conversations.list(call.db, call.account_id, call.query(ListParams))
    return Reply(status=200, body=encode_json(page))


async def create_conversation(call: Call) -> Reply:
    call.query(NoAttributes)
    request = await call.body(ConversationCreate)

    async def work(db: Executor) -> Reply:
        created = await call.conversations.create(db, call.account_id, request)
        return conversation_reply(201, created, location=f"{MOUNT_PATH}/{created[0].id}")

    return await call.run(work)


async def retrieve_conversation(call: Call) -> Reply:
    call.query(NoAttributes)
    return conversation_reply(200, await call.conversations.retrieve(call.db, call.account_id, call.conversation_id))


async def update_conversation(call: Call) -> Reply:
    """PUT and PATCH alike: a partial update (API.md §2)."""
    call.query(NoAttributes)
    request = await call.body(ConversationUpdate)
    expected_versions = call.if_match()

    async def work(db: Executor) -> Reply:
        updated = await call.conversations.update(db, call.account_id, call.conversation_id, request,
                                                  expected_versions)
        return conversation_reply(200, updated)

    return await call.run(work)


async def delete_conversation(call: Call) -> Reply:
    call.query(NoAttributes)
    await call.body(NoAttributes)
    expected_versions = call.if_match()

    async def work(db: Executor) -> Reply:
        await call.conversations.delete(db, call.account_id, call.conversation_id, expected_versions)
        return Reply(status=204)

    return await call.run(work)


Operation = Callable[[Call], Awaitable[Reply]]

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
    call = Call(scope, receive, state.conversations, state.db, account_id, conversation_id)
    await send_reply(send, await operation(call))


CONVERSATION_HANDLERS = [conversations_endpoint]
