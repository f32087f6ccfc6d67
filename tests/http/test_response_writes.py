"""The front door sends each response in one write (service/http/protocol.py, `_OneWriteResponses`).

uvicorn writes a response's head and body separately: two sends, two TCP segments. The protocol
holds the head until the body joins it; these tests serve a small ASGI app with the service's
protocol on a loopback socket, record every write its transport takes, and read the responses with
a raw client.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from service.http.protocol import ContractHttpToolsProtocol
from tests.raw_http import RawResponse, read_response

BODY = b'{"id":"conv_1"}'


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Answers like the service: a head, then the whole body. A request with a body gets it echoed."""
    received = b""
    more = True
    while more:
        message = await receive()
        received += message.get("body", b"")
        more = message.get("more_body", False)
    body = received or BODY
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class _RecordingTransport:
    """The real transport, with a record of each write."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Served:
    def __init__(self, port: int, writes: list[bytes]) -> None:
        self.port = port
        self.writes = writes

    def exchange(self, request: bytes, responses: int = 1) -> list[RawResponse]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(request)
            return [read_response(conn) for _ in range(responses)]


@pytest.fixture
async def served() -> AsyncIterator[_Served]:
    config = uvicorn.Config(_app, http=ContractHttpToolsProtocol, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    writes: list[bytes] = []

    class Recording(ContractHttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_RecordingTransport(transport, writes))  # type: ignore[arg-type]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Recording(config, state, {}), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield _Served(port, writes)
    finally:
        server.close()
        for connection in list(state.connections):
            connection.shutdown()
        await server.wait_closed()


async def _in_thread(served: _Served, request: bytes, responses: int = 1) -> list[RawResponse]:
    return await asyncio.to_thread(served.exchange, request, responses)


async def test_a_response_leaves_in_one_write(served: _Served) -> None:
    [response] = await _in_thread(served, b"GET /v1/conversations/conv_1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (response.status, response.body) == (200, BODY)
    assert len(served.writes) == 1
    assert served.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and served.writes[0].endswith(b"\r\n\r\n" + BODY)


async def test_a_head_request_gets_its_head_without_a_body(served: _Served) -> None:
    await _in_thread(served, b"HEAD /v1/conversations/conv_1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert len(served.writes) == 1
    assert served.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and served.writes[0].endswith(b"\r\n\r\n")


async def test_pipelined_responses_leave_in_order_one_write_each(served: _Served) -> None:
    requests = b"".join(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d" % n for n in range(3))

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
            conn.sendall(requests + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            return data

    data = await asyncio.to_thread(exchange)
    bodies = [response.partition(b"\r\n\r\n")[2] for response in data.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert bodies == [b"0", b"1", b"2", BODY]
    assert len(served.writes) == 4


async def test_a_client_expecting_100_continue_gets_it_before_sending_its_body(served: _Served) -> None:
    def exchange() -> tuple[bytes, RawResponse]:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as conn:
            conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            interim = conn.recv(65536)  # a held interim response would leave this waiting until the timeout
            conn.sendall(b"hi")
            return interim, read_response(conn)

    interim, response = await asyncio.to_thread(exchange)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (response.status, response.body) == (200, b"hi")
