"""Logs and per-request observation (API.md §7).

Logs are one JSON object per line on stderr, at LOG_LEVEL, uvicorn's own loggers included.
`RequestObserver` wraps the whole ASGI app (so it also sees the 404s and 405s that never reach
a route): it takes the request's X-Request-ID when it is a sane token, or makes one, echoes it
in the response, counts the request and its latency by route template, and writes one log line
per request at INFO. A log line never carries a request body, a query string, a token or an
Authorization header.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
from typing import Any

import msgspec

from service.metrics import observe_request


class LogLine(msgspec.Struct, omit_defaults=True):
    """One log line; request fields are present only on request lines."""

    time: str
    level: str
    logger: str
    message: str
    method: str | None = None
    route: str | None = None
    path: str | None = None
    status: int | None = None
    duration_ms: float | None = None
    request_id: str | None = None
    account_id: str | None = None
    error: str | None = None


_REQUEST_FIELDS = ("method", "route", "path", "status", "duration_ms", "request_id", "account_id")
_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"
        line = LogLine(time=stamp, level=record.levelname.lower(), logger=record.name, message=record.getMessage(),
                       **{name: getattr(record, name) for name in _REQUEST_FIELDS if hasattr(record, name)})
        if record.exc_info:
            line.error = self.formatException(record.exc_info)
        return _encode(line).decode()


def configure_logging(level: str) -> None:
    """Send every logger (ours and uvicorn's) to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    # uvicorn's access log would repeat our request lines (without the route or request id).
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True


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
            route = scope.get("path_template") or UNMATCHED_ROUTE
            observe_request(scope["method"], route, status, seconds)
            if request_logger.isEnabledFor(logging.INFO):
                request_logger.info("%s %s %d", scope["method"], route, status, extra={
                    "method": scope["method"], "route": route, "path": path[:200], "status": status,
                    "duration_ms": round(seconds * 1000, 3), "request_id": request_id.decode(),
                    "account_id": scope.get("auth")})
