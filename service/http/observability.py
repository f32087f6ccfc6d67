"""Per-request observation: request ids, metrics and the request log line.

`RequestObserver` wraps the whole ASGI app (so it also sees the 404s and 405s that never reach
a route): it takes the request's X-Request-ID when it is a sane token, or makes one, echoes it
in the response, counts the request and its latency by route template, and writes one log line
per request at INFO. The route template and the account come from the scope keys below, which
the /v1 mount writes once it has routed and authenticated the call.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

from service.metrics import observe_request

# Written by the /v1 mount, read here after the call.
ROUTE_SCOPE_KEY = "path_template"
ACCOUNT_SCOPE_KEY = "auth"

request_logger = logging.getLogger("service.requests")

_REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "unmatched"  # 404s share one series: paths nobody routes must not mint new ones


# Generated ids: 8 random hex digits per process, then a counter: unique across processes and
# restarts without a getrandom() system call per request.
_ID_PREFIX = os.urandom(4).hex()
_id_counter = itertools.count(1)


def _request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            if _SANE_REQUEST_ID.fullmatch(value):
                return value
            break
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFF:08x}".encode()


class RequestObserver:
    """ASGI wrapper around the app: request id, metrics and the request log line."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        # `state`, `openapi_schema`...: the wrapped Litestar app's, for tests and tools.
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]  # as sent: a mounted handler rewrites it to what follows the mount
        request_id = _request_id(scope["headers"])
        status = 500

        async def send_with_request_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get(ROUTE_SCOPE_KEY) or UNMATCHED_ROUTE
            observe_request(scope["method"], route, status, seconds)
            if request_logger.isEnabledFor(logging.INFO):
                request_logger.info("%s %s %d", scope["method"], route, status, extra={
                    "method": scope["method"], "route": route, "path": path[:200], "status": status,
                    "duration_ms": round(seconds * 1000, 3), "request_id": request_id.decode(),
                    "account_id": scope.get(ACCOUNT_SCOPE_KEY)})
