"""Raw HTTP/1.1 over a socket, for what httpx would not send as it is (hostile heads, slow clients)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def read_response(conn: socket.socket) -> RawResponse:
    """One HTTP/1.1 response from `conn`: its head, then Content-Length bytes (or up to the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection without a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"]) if "content-length" in headers else None
    while length is None or len(body) < length:
        try:
            chunk = conn.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split(" ")[1]), headers, body[:length] if length is not None else body)


def closed_by_peer(conn: socket.socket, within: float) -> bool:
    """Whether the server closes `conn` (EOF or reset) within `within` seconds; data is read and dropped."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            if not conn.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False
