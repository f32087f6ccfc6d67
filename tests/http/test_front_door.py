"""docs/api.md §7.5: the HTTP front door bounds what a client can make one process hold.

A request head is bounded in size (414 for a request line over HTTP_MAX_URL_BYTES, 431 for a
header block over HTTP_MAX_HEADER_BYTES or more than HTTP_MAX_HEADERS headers; both in the error
shape, the connection closed) and in time (HTTP_HEADER_TIMEOUT; HTTP_BODY_TIMEOUT for its body;
HTTP_KEEP_ALIVE_TIMEOUT between requests); a process takes at most HTTP_MAX_REQUESTS requests
and HTTP_MAX_CONNECTIONS connections at once (503 with Retry-After beyond). Each runs against a
real `serve`, on raw sockets: httpx would not send these requests as they are.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass

import httpx
import pytest

from service.settings import Settings
from tests.conftest import Account, Backends, new_account
from tests.http_helpers import CONVERSATIONS, assert_error_body
from tests.raw_http import RawResponse, closed_by_peer, read_response
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow

# Short timeouts and small caps, so that the tests of time and capacity take seconds.
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
KEEP_ALIVE_TIMEOUT = 1.0
MAX_REQUESTS = 3
MAX_CONNECTIONS = 30
# A deadline for each of those to take effect: the timeout plus the watch's granularity and a margin.
CUT_WITHIN = 3.0


@dataclass(frozen=True)
class Front:
    process: ServiceProcess
    account: Account

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.process.port), timeout=10)

    def head(self, method: str, target: str, *headers: str) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {self.account.token}",
                 *headers, "", ""]
        return "\r\n".join(lines).encode()

    def exchange(self, request: bytes) -> tuple[RawResponse, socket.socket]:
        conn = self.connect()
        send_quietly(conn, request)
        return read_response(conn), conn

    def assert_serving(self) -> None:
        with httpx.Client(base_url=self.process.base_url, timeout=5,
                          headers={"Authorization": f"Bearer {self.account.token}"}) as client:
            assert client.get(CONVERSATIONS).status_code == 200


def send_quietly(conn: socket.socket, data: bytes) -> None:
    """Send what the server may stop reading at any point (it answered and closed)."""
    with suppress(OSError):
        conn.sendall(data)


@pytest.fixture(scope="module")
async def front(database_url: str, backend_urls: Backends, tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[Front]:
    settings = Settings(database_url=database_url, redis_url=backend_urls.redis_url,
                        events_stream=f"test:{uuid.uuid4().hex}:events")
    account = await new_account(settings, "front")
    process = ServiceProcess({
        "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
        "EVENTS_STREAM": settings.events_stream, "HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT), "HTTP_KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE_TIMEOUT),
        "HTTP_MAX_REQUESTS": str(MAX_REQUESTS), "HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }, log_path=tmp_path_factory.mktemp("front") / "serve.log")
    process.start()
    try:
        yield Front(process, account)
    finally:
        process.stop()


def assert_refused(response: RawResponse, conn: socket.socket, status: int) -> None:
    """The contract's error, then the connection closed (what followed the head cannot be trusted)."""
    assert_error_body(response.status, response.headers, response.body, status,
                      error_type="api_error" if status >= 500 else "invalid_request")
    assert response.headers.get("connection") == "close"
    assert closed_by_peer(conn, 5)


# ---------------------------------------------------------------------------------- sizes


def test_a_request_line_over_8_kib_is_414_and_the_connection_is_closed(front: Front):
    target = CONVERSATIONS + "?contact_id=" + "a" * (8 * 1024)
    response, conn = front.exchange(front.head("GET", target))
    with conn:
        assert_refused(response, conn, 414)
    front.assert_serving()


def test_a_request_line_just_under_8_kib_reaches_the_app(front: Front):
    target = CONVERSATIONS + "?contact_id=" + "a" * (8 * 1024 - 100)
    response, conn = front.exchange(front.head("GET", target))
    with conn:
        assert response.status == 400  # the app's answer: a contact id is at most 64 characters
        assert b"contact_id" in response.body


def test_a_32_mb_url_is_refused_before_it_is_read(front: Front):
    """The 414 comes once the 8 KiB are exceeded, while the client is still sending."""
    conn = front.connect()
    with conn:
        conn.sendall(b"GET /v1/conversations?x=")
        sender = threading.Thread(target=send_quietly, args=(conn, b"a" * (32 * 1024 * 1024)), daemon=True)
        started = time.monotonic()
        sender.start()
        response = read_response(conn)
        assert time.monotonic() - started < 2.0
        assert_refused(response, conn, 414)
        sender.join(10)
    front.assert_serving()


@pytest.mark.parametrize("headers", [
    pytest.param(["X-Big: " + "b" * (16 * 1024)], id="one header over 16 KiB"),
    pytest.param([f"X-Part-{n}: " + "p" * 400 for n in range(45)], id="45 headers of 400 bytes"),
    pytest.param([f"X-Small-{n}: 1" for n in range(100)], id="101 headers with Host"),
])
def test_a_header_block_over_16_kib_or_over_100_headers_is_431_and_the_connection_is_closed(
        front: Front, headers: list[str]):
    response, conn = front.exchange(front.head("GET", CONVERSATIONS, *headers))
    with conn:
        assert_refused(response, conn, 431)
    front.assert_serving()


def test_100_headers_within_16_kib_reach_the_app(front: Front):
    response, conn = front.exchange(front.head("GET", CONVERSATIONS, *(f"X-Small-{n}: 1" for n in range(97))))
    with conn:
        assert response.status == 200


def test_a_1_mb_header_is_refused_before_it_is_read(front: Front):
    conn = front.connect()
    with conn:
        conn.sendall(front.head("GET", CONVERSATIONS)[:-2] + b"X-Huge: ")
        sender = threading.Thread(target=send_quietly, args=(conn, b"h" * (1024 * 1024) + b"\r\n\r\n"), daemon=True)
        sender.start()
        response = read_response(conn)
        assert_refused(response, conn, 431)
        sender.join(10)
    front.assert_serving()


# ----------------------------------------------------------------------------------- time


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(front: Front):
    with front.connect() as conn:
        started = time.monotonic()
        assert closed_by_peer(conn, HEADER_TIMEOUT + CUT_WITHIN)
        assert time.monotonic() - started >= HEADER_TIMEOUT


def test_half_a_request_line_gets_408_after_the_header_timeout(front: Front):
    with front.connect() as conn:
        conn.sendall(b"GET /v1/conversa")
        started = time.monotonic()
        conn.settimeout(HEADER_TIMEOUT + CUT_WITHIN)
        response = read_response(conn)
        assert time.monotonic() - started >= HEADER_TIMEOUT
        assert_refused(response, conn, 408)


def test_a_head_trickled_a_byte_at_a_time_is_cut_at_the_header_timeout(front: Front):
    """Every byte arrives in time for the next, but the whole head does not."""
    head = front.head("GET", CONVERSATIONS)
    with front.connect() as conn:
        started = time.monotonic()
        for byte in head[:-1]:
            if not send_and_still_open(conn, bytes([byte])):
                break
            time.sleep(0.1)
            if time.monotonic() - started > HEADER_TIMEOUT + CUT_WITHIN:
                raise AssertionError("the trickling client was not cut off")
        assert time.monotonic() - started >= HEADER_TIMEOUT


def send_and_still_open(conn: socket.socket, data: bytes) -> bool:
    """Send `data`; False once the server has answered or closed (it cut the client off)."""
    try:
        conn.sendall(data)
        conn.settimeout(0.001)
        conn.recv(65536)  # an answer (408) or EOF: either way, cut off
    except TimeoutError:
        return True
    except OSError:
        pass
    return False


def test_a_body_that_does_not_arrive_is_cut_at_the_body_timeout(front: Front):
    with front.connect() as conn:
        conn.sendall(front.head("POST", CONVERSATIONS, "Content-Type: application/json", "Content-Length: 40")
                     + b'{"contact_id":')
        started = time.monotonic()
        assert closed_by_peer(conn, BODY_TIMEOUT + CUT_WITHIN)
        assert time.monotonic() - started >= BODY_TIMEOUT
    front.assert_serving()


def _conversations_with_contact(front: Front, contact_id: str) -> list[object]:
    with httpx.Client(base_url=front.process.base_url, timeout=5,
                      headers={"Authorization": f"Bearer {front.account.token}"}) as client:
        response = client.get(CONVERSATIONS, params={"contact_id": contact_id})
        assert response.status_code == 200
        return response.json()["data"]


def _form_head_and_part(front: Front) -> tuple[bytes, str]:
    """A create whose form body declares 60 bytes and sends only a well-formed prefix of them."""
    contact_id = "cut" + uuid.uuid4().hex[:12]
    head = front.head("POST", CONVERSATIONS, "Content-Type: application/x-www-form-urlencoded", "Content-Length: 60")
    return head + f"contact_id={contact_id}".encode(), contact_id


def test_a_body_cut_off_by_the_body_timeout_changes_nothing(front: Front):
    request, partial_contact = _form_head_and_part(front)
    with front.connect() as conn:
        conn.sendall(request)
        assert closed_by_peer(conn, BODY_TIMEOUT + CUT_WITHIN)
    assert _conversations_with_contact(front, partial_contact) == []


def test_a_body_cut_off_by_the_client_disconnecting_changes_nothing(front: Front):
    request, partial_contact = _form_head_and_part(front)
    with front.connect() as conn:
        conn.sendall(request)
        time.sleep(0.2)  # the head has been read and the app waits for the rest of the body
    time.sleep(0.5)
    assert _conversations_with_contact(front, partial_contact) == []
    front.assert_serving()


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(front: Front):
    response, conn = front.exchange(front.head("GET", CONVERSATIONS))
    with conn:
        assert response.status == 200
        started = time.monotonic()
        assert closed_by_peer(conn, KEEP_ALIVE_TIMEOUT + CUT_WITHIN)
        assert time.monotonic() - started >= KEEP_ALIVE_TIMEOUT * 0.9


# ------------------------------------------------------------------------------- capacity


class HeldRequests:
    """MAX_REQUESTS creates the app is working on: heads sent, bodies still to come."""

    def __init__(self, front: Front, stack: ExitStack) -> None:
        self.connections = []
        for _ in range(MAX_REQUESTS):
            conn = stack.enter_context(front.connect())
            conn.sendall(front.head("POST", CONVERSATIONS, "Content-Type: application/json", "Content-Length: 40"))
            self.connections.append(conn)
        self.finished = False

    def finish(self) -> list[int]:
        """Send the bodies and read the answers: the server is then done with all of them."""
        statuses = []
        if not self.finished:
            self.finished = True
            for conn in self.connections:
                conn.sendall(b'{"contact_id": "c' + uuid.uuid4().hex[:21].encode() + b'"}')  # 40 bytes
                statuses.append(read_response(conn).status)
        return statuses


@pytest.fixture
def requests_in_progress(front: Front) -> Iterator[HeldRequests]:
    with ExitStack() as stack:
        held = HeldRequests(front, stack)
        time.sleep(0.3)  # let each reach the app
        yield held
        held.finish()  # not merely closed: the next test must find no request of this one in progress


def test_a_request_past_the_limit_in_progress_is_a_503_with_retry_after(front: Front, requests_in_progress):
    response, conn = front.exchange(front.head("GET", CONVERSATIONS))
    with conn:
        assert_error_body(response.status, response.headers, response.body, 503, None, error_type="api_error")
        assert response.headers["retry-after"].isdigit()


def test_health_and_ready_answer_even_at_the_limit(front: Front, requests_in_progress):
    for path in ("/health", "/ready"):
        response, conn = front.exchange(front.head("GET", path))
        with conn:
            assert response.status == 200, (path, response)


def test_the_limit_frees_up_as_requests_finish(front: Front, requests_in_progress: HeldRequests):
    assert requests_in_progress.finish() == [201] * MAX_REQUESTS
    front.assert_serving()


def test_a_connection_past_the_limit_gets_a_503_and_is_closed(front: Front):
    with ExitStack() as stack:
        idle = [stack.enter_context(front.connect()) for _ in range(MAX_CONNECTIONS)]
        time.sleep(0.2)
        extra = stack.enter_context(front.connect())
        send_quietly(extra, front.head("GET", CONVERSATIONS))
        response = read_response(extra)
        assert_refused(response, extra, 503)
        assert response.headers["retry-after"].isdigit()
        assert "open connections" in json.loads(response.body)["message"]
        for conn in idle:
            conn.close()
        time.sleep(0.2)
    front.assert_serving()
