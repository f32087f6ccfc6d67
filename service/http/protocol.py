"""uvicorn's httptools protocol, with the front door's bounds and every refusal in the contract's shape.

uvicorn with httptools answers an unparsable request with a text/plain 400, and bounds neither the
size of a request head nor the time a client may take to send one (docs/api.md §7.5). This
subclass, per connection:

* answers an unparsable request with the contract's JSON 400;
* refuses a request line over `max_url_bytes` (414), and a header block over `max_header_bytes`
  or with more than `max_headers` headers (431), as soon as the excess arrives: a head is fed to
  the parser only up to its byte budget, so an oversized one is never buffered whole. The
  connection is then closed (the rest of the request cannot be read reliably);
* closes a connection that has not sent a complete request head within `header_timeout` of being
  ready for one (with a 408 if it sent part of one), and one whose body has not arrived within
  `body_timeout` of its head;
* answers a request beyond `max_requests` in progress in this process with a 503 and
  Retry-After (/health and /ready excepted, so that probes see an overloaded process as alive),
  and a connection beyond `max_connections` with a 503 before closing it.

A response leaves in one write: uvicorn writes a response's head and its body separately, two
sends and two TCP segments per response; `_OneWriteResponses` holds the head until the body's first
write joins it (README, "Performance").

No request arms a timer: one watch per process (`_ConnectionWatch`) reads the clock and checks
every connection a few times per timeout. Idle keep-alive connections are closed by uvicorn's own
timer (`timeout_keep_alive`, set by server.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service import metrics
from service.errors import (
    ApiError,
    AtCapacity,
    InvalidRequest,
    RequestHeadersTooLarge,
    RequestHeadTimeout,
    RequestLineTooLong,
    encode_error,
)
from service.settings import Settings

# What a request head holds besides its URL and header lines: method, spaces, version, CRLFs.
_HEAD_FRAMING_BYTES = 64
# Paths a probe must reach even when the process is at capacity.
_PROBE_PATHS = (b"/health", b"/ready")


class HeadLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_url_bytes: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    max_requests: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HeadLimits:
        return cls(max_url_bytes=settings.http_max_url_bytes, max_header_bytes=settings.http_max_header_bytes,
                   max_headers=settings.http_max_headers, header_timeout=settings.http_header_timeout,
                   body_timeout=settings.http_body_timeout, max_requests=settings.http_max_requests,
                   max_connections=settings.http_max_connections)

    @property
    def head_bytes(self) -> int:
        """The most a request head may take on the wire: the parser is never fed more of one."""
        return self.max_url_bytes + self.max_header_bytes + _HEAD_FRAMING_BYTES


class _Refusal(Exception):
    """Raised in a parser callback to stop parsing; the protocol answers `status` and closes."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _response(error: ApiError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = encode_error(error)
    head = [STATUS_LINE[error.status_code]]
    for name, value in [*default_headers, *((k.encode(), v.encode()) for k, v in error.headers.items())]:
        head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body), body]
    return b"".join(head)


class _ConnectionWatch:
    """This process's coarse clock, and the check of every connection against its time limits."""

    def __init__(self) -> None:
        self.now = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[Any] = set()
        self.interval = 1.0

    def start(self, loop: asyncio.AbstractEventLoop, connections: set[Any], limits: HeadLimits) -> None:
        if self._loop is loop:
            return
        self._loop, self._connections = loop, connections
        self.interval = max(0.05, min(1.0, limits.header_timeout / 4, limits.body_timeout / 4))
        self.now = loop.time()
        loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        self.now = self._loop.time()
        for connection in list(self._connections):
            check = getattr(connection, "close_if_overdue", None)
            if check is not None:
                check(self.now)
        if not self._loop.is_closed():
            self._loop.call_later(self.interval, self._tick)


_watch = _ConnectionWatch()


async def _at_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The whole app for a request past max_requests: a 503 (the connection stays usable)."""
    metrics.HTTP_REFUSED.labels("503").inc()
    error = AtCapacity()
    body = encode_error(error)
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                            *((k.lower().encode(), v.encode()) for k, v in error.headers.items())]})
    await send({"type": "http.response.body", "body": body})


class _OneWriteResponses:
    """A connection's transport as its response cycles see it: each response's head is held and sent
    with the first write of its body, in one send.

    A head is held only until its response's next write, its close, or its completion (a HEAD
    request's response has no body write), all of which come from the same synchronous run of the
    cycle's `send` except for a streamed body. Responses on a connection are written one at a time
    (uvicorn queues pipelined requests), so one holder per connection is enough.
    """

    __slots__ = ("_head", "_in_body", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head = b""
        self._in_body = False  # the current response's head has gone out

    def write(self, data: bytes) -> None:
        if self._in_body:
            self._transport.write(data)
        elif self._head:
            self._in_body = True
            self._transport.write(self._head + data)
            self._head = b""
        else:
            self._head = data

    def end_of_response(self) -> None:
        self.flush()
        self._in_body = False

    def flush(self) -> None:
        if self._head:
            self._transport.write(self._head)
            self._head = b""
            self._in_body = True

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class ContractHttpToolsProtocol(HttpToolsProtocol):
    # The documented defaults until server.py's worker factory sets this process's Settings.
    limits: ClassVar[HeadLimits] = HeadLimits.from_settings(Settings())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the next bytes belong to a request head
        self._head_left = self.limits.head_bytes
        self._heads = 0  # request heads completed on this connection
        self._waiting_since = 0.0  # when the connection became ready for a head, or got its last head

    @classmethod
    def configure(cls, settings: Settings) -> None:
        cls.limits = HeadLimits.from_settings(settings)

    # ------------------------------------------------------------------ connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._responses = _OneWriteResponses(transport)
        _watch.start(self.loop, self.connections, self.limits)
        self._waiting_since = _watch.now
        if len(self.connections) > self.limits.max_connections:
            self._refuse(AtCapacity("open connections"))

    def close_if_overdue(self, now: float) -> None:
        """Called by the watch: end a connection stuck before a complete head, or in a slow body.

        `_waiting_since` is read from the coarse clock, which may lag by one interval: allowing
        that interval on top means no connection is ever cut before its timeout.
        """
        if self.transport.is_closing():
            return
        cycle = self.cycle
        waited = now - self._waiting_since - _watch.interval
        if self._in_head:
            if (cycle is None or cycle.response_complete) and waited > self.limits.header_timeout:
                if self._head_left < self.limits.head_bytes:  # part of a head came: say why we hang up
                    self._refuse(RequestHeadTimeout(self.limits.header_timeout))
                else:
                    self.transport.close()
        elif cycle is not None and cycle.more_body and waited > self.limits.body_timeout:
            self.transport.close()  # the app reads a disconnect: the call ends before any work (call.py)

    def _refuse(self, error: ApiError) -> None:
        metrics.HTTP_REFUSED.labels(str(error.status_code)).inc()
        self._responses.flush()  # a response being written goes out before the refusal
        self.transport.write(_response(error, self.server_state.default_headers))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidRequest("the HTTP request is malformed and could not be parsed"))

    # ------------------------------------------------------------------ parsing

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head:
            if len(data) > self._head_left:
                # Feed the head only up to its budget; if it has not ended there, it is too large.
                allowed, heads = self._head_left, self._heads
                if not self._feed(data[:allowed]):
                    return
                if self._heads == heads:
                    # Not the request line: on_url refuses a URL past its limit as it arrives.
                    self._refuse(RequestHeadersTooLarge(self.limits.max_header_bytes, self.limits.max_headers))
                    return
                if len(data) > allowed:
                    self.data_received(data[allowed:])
                return
            self._head_left -= len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False (and the connection answered and closed) if it cannot be served."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _Refusal):
                self._refuse(RequestLineTooLong(self.limits.max_url_bytes) if error.__context__.status == 414
                             else RequestHeadersTooLarge(self.limits.max_header_bytes, self.limits.max_headers))
            else:
                self.send_400_response("")
            return False
        except httptools.HttpParserError:
            self.send_400_response("")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            raise _Refusal(414)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        self._waiting_since = _watch.now
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            raise _Refusal(431)
        # Most heads arrive whole in a read far below the limit; only a longer read needs the sum.
        if (limits.head_bytes - self._head_left > limits.max_header_bytes
                and sum(len(name) + len(value) + 4 for name, value in self.headers) > limits.max_header_bytes):
            raise _Refusal(431)
        previous = self.cycle
        if len(self.tasks) >= limits.max_requests and self.url.partition(b"?")[0] not in _PROBE_PATHS:
            self.app, app = _at_capacity, self.app
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        # A client that sent "Expect: 100-continue" waits for the interim response before its body,
        # which must therefore not be held.
        if self.cycle is not previous and not self.expect_100_continue:
            self.cycle.transport = self._responses  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_left = self.limits.head_bytes

    def on_response_complete(self) -> None:
        self._responses.end_of_response()
        super().on_response_complete()
        self._waiting_since = _watch.now
