"""/v1/conversations as one mounted Litestar ASGI route handler: route, authenticate, run, reply.

Litestar still routes to the mount, owns the lifespan and renders every raised ApiError through
the app's exception handler; what the mount skips is Litestar's per-call HTTP machinery (a
Request object, a signature model, guards that copy the handler, a Response object), which
measured more than the whole budget above the bare-ASGI limit (README, "Performance"). The
operations themselves are endpoints.py's.
"""

from __future__ import annotations

from litestar import asgi
from litestar.types import Receive, Scope, Send

from service.errors import ConversationNotFound, MethodNotAllowed, RouteNotFound
from service.http.call import Call, raw_header
from service.http.endpoints import COLLECTION_ROUTE, ITEM_ROUTE, MOUNT_PATH, ROUTES
from service.http.observability import ACCOUNT_SCOPE_KEY, ROUTE_SCOPE_KEY
from service.http.reply import send_reply
from service.ids import ID_PATTERN

_AUTHORIZATION = b"authorization"
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
    scope[ROUTE_SCOPE_KEY] = route  # type: ignore[literal-required]
    state = scope["app"].state
    account_id = await state.authenticator.account_for(raw_header(scope["headers"], _AUTHORIZATION))
    scope[ACCOUNT_SCOPE_KEY] = account_id  # type: ignore[literal-required]
    if conversation_id and ID_PATTERN.fullmatch(conversation_id) is None:
        raise ConversationNotFound(conversation_id)  # it cannot be an id, so it cannot exist
    call = Call(scope, receive, state.conversations, state.db, state.keyed_writes, account_id, conversation_id)
    await send_reply(send, await operation(call))


CONVERSATION_HANDLERS = [conversations_endpoint]
