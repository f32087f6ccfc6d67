"""/v1 as one mounted Litestar ASGI route handler: route, authenticate, run, reply.

Litestar still routes to the mount, owns the lifespan and renders every raised ApiError through
the app's exception handler; what the mount skips is Litestar's per-call HTTP machinery (a
Request object, a signature model, guards that copy the handler, a Response object), which
measured more than the whole budget above the bare-ASGI limit (README, "Performance"). The
operations themselves are endpoints.py's.
"""

from __future__ import annotations

from litestar import asgi
from litestar.types import Receive, Scope, Send

from service.errors import MethodNotAllowed, RouteNotFound, Unauthenticated
from service.http.call import Call, RepeatedHeader, raw_header
from service.http.endpoints import COLLECTION_ROUTE, EVENT_ROUTE, EVENTS_ROUTE, ITEM_IDS, ITEM_ROUTE, MOUNT_PATH, ROUTES
from service.http.observability import ACCOUNT_SCOPE_KEY, ROUTE_SCOPE_KEY
from service.http.reply import send_reply

_AUTHORIZATION = b"authorization"
_ALLOW = {route: ", ".join(["OPTIONS", *operations]) for route, operations in ROUTES.items()}
# The first segment below /v1 -> (its collection route, its item route).
_RESOURCES = {"conversations": (COLLECTION_ROUTE, ITEM_ROUTE), "events": (EVENTS_ROUTE, EVENT_ROUTE)}


def _route_of(remaining_path: str) -> tuple[str, str]:
    """(route template, item id or "") of the path below the mount, or RouteNotFound.

    Litestar hands a mount what follows its path, with a slash at each end ("/conversations/",
    "/conversations/<id>/").
    """
    segments = remaining_path.strip("/").split("/")
    routes = _RESOURCES.get(segments[0])
    if routes is None or len(segments) > 2 or remaining_path[:1] != "/":
        raise RouteNotFound(f"there is no route {MOUNT_PATH}{remaining_path.rstrip('/')[:200]}")
    if len(segments) == 1:
        return routes[0], ""
    return routes[1], segments[1]


def _check_as_sent(scope: Scope) -> None:
    """RouteNotFound for a path that reached /v1 only once normalised: an empty segment ("//"), or
    a slash sent percent-encoded. Litestar's router merges both away, so the path as sent decides.
    """
    raw = scope.get("raw_path")
    if raw is None:
        return
    path = raw.split(b"?", 1)[0]
    if b"//" in path or b"%2f" in path.lower():
        raise RouteNotFound(f"there is no route {path[:200].decode('latin-1')}")


@asgi(MOUNT_PATH, is_mount=True, copy_scope=False)
async def v1_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """Every call under /v1: route, authenticate, run the operation."""
    _check_as_sent(scope)
    route, item_id = _route_of(scope["path"])
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
    try:
        authorization = raw_header(scope["headers"], _AUTHORIZATION)
    except RepeatedHeader:
        raise Unauthenticated("send one Authorization header: these differ") from None
    account_id = await state.authenticator.account_for(authorization)
    scope[ACCOUNT_SCOPE_KEY] = account_id  # type: ignore[literal-required]
    if item_id:
        pattern, not_found = ITEM_IDS[route]
        if pattern.fullmatch(item_id) is None:
            raise not_found(item_id)  # it cannot be an id, so it cannot exist
    await send_reply(send, await operation(Call(scope, receive, state.services, account_id, item_id)))


V1_HANDLERS = [v1_endpoint]
