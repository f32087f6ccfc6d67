"""docs/api.md §3-5: hostile input gets a clean 4xx in the contract's error shape, stores nothing, leaks nothing.

"No input, however malformed, produces a 500" (docs/api.md §5). For every kind of hostile input
below, the answer is a 4xx whose body is exactly {"type": "invalid_request", "message", "param"},
which names the attribute where there is one, echoes no more than a short excerpt of what was
sent, and carries no stack trace, SQL, file path or software name; and nothing is stored: the
account's conversations and idempotency keys are what they were before.

Most requests go to the app in this process (httpx on ASGI); what only a real server can show
(huge bodies, slow clients, raw HTTP, log files, response headers) goes to `python -m service
serve` in a subprocess, on raw sockets where httpx would not send the request as it is.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from service.settings import Settings
from tests.conftest import Account, Backends, new_account
from tests.http_helpers import ANY, CONVERSATIONS, assert_error_body, create_conversation, item, unique
from tests.raw_http import RawResponse, read_response
from tests.servers import ServiceProcess

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
VICTIM = "{victim}"  # stands for the path of a conversation the account has
LONG = 60_000  # characters: big, but the body stays under the 64 KiB limit
MAX_ERROR_BODY = 2048  # an error echoes at most a short excerpt of what was sent
SOFTWARE_NAMES = ("uvicorn", "litestar", "starlette", "python", "cpython", "msgspec", "asyncpg", "httptools",
                  "uvloop", "hypercorn", "granian", "gunicorn", "werkzeug")
LEAK_MARKERS = (*SOFTWARE_NAMES, "traceback", "exception", 'file "', ".py", "site-packages", "/work/", "postgres",
                "sqlstate", "syntax error", "select ", "insert into", "delete from", "pg_catalog")


# ------------------------------------------------------------------------------------ the checks


def assert_clean_error(status: int, headers: Mapping[str, str], content: bytes, expected_status: int,
                       param: Any = ANY, *, sent: bytes = b"") -> dict[str, Any]:
    """The contract's error body (docs/api.md §5), short, with nothing in it the client did not send."""
    body = assert_error_body(status, headers, content, expected_status, param)
    assert len(content) <= MAX_ERROR_BODY, f"the error echoes {len(content)} bytes"
    text, request = content.decode().lower(), sent.lower()
    leaked = [marker for marker in LEAK_MARKERS if marker in text and marker.encode() not in request]
    assert not leaked, (leaked, body)
    return body


def assert_clean_response_error(response: httpx.Response, expected_status: int, param: Any = ANY) -> dict[str, Any]:
    request = response.request
    headers = (value for _, value in request.headers.raw)
    sent = b" ".join([unquote_to_bytes(str(request.url)), *headers, request.content])
    return assert_clean_error(response.status_code, response.headers, response.content, expected_status, param,
                              sent=sent)


async def stored_state(db: asyncpg.Connection, account_id: str) -> tuple[list[dict[str, Any]], int]:
    """Everything a write could leave behind for the account: its conversations and idempotency keys."""
    rows = await db.fetch("SELECT * FROM conversations WHERE account_id = $1 ORDER BY id", account_id)
    keys = await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE account_id = $1", account_id)
    return [dict(row) for row in rows], keys


# --------------------------------------------------------------------------- hostile calls (ASGI)


@dataclass(frozen=True)
class Call:
    """One request; VICTIM in its path stands for a conversation the account has."""

    method: str
    path: str
    query: str = ""  # already percent-encoded
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    def __str__(self) -> str:
        shown = self.path + ("?" + self.query if self.query else "") + " " + repr((self.body or b"")[:40])
        shown += "".join(f" {name}: {value[:20]!r}" for name, value in self.headers)
        return f"{self.method} {shown[:90]}"


def json_body(method: str, path: str, raw: bytes) -> Call:
    return Call(method, path, body=raw, content_type=JSON)


def json_attribute(method: str, path: str, name: str, value: Any) -> Call:
    return json_body(method, path, json.dumps({name: value}).encode())


def form_attribute(method: str, path: str, name: str, value: str) -> Call:
    return Call(method, path, body=f"{quote(name, safe='')}={quote(value, safe='')}".encode(), content_type=FORM)


def query_attribute(name: str, value: str, method: str = "GET", path: str = CONVERSATIONS) -> Call:
    return Call(method, path, query=f"{quote(name, safe='')}={quote(value, safe='')}")


def path_id(method: str, conversation_id: str) -> Call:
    return Call(method, f"{CONVERSATIONS}/{quote(conversation_id, safe='')}")


def header(method: str, path: str, name: str, value: bytes) -> Call:
    body = json.dumps({"contact_id": "c" + uuid.uuid4().hex} if method == "POST" else {"is_muted": True}).encode()
    return Call(method, path, body=body, content_type=JSON, headers=((name, value),))


async def send(api: httpx.AsyncClient, call: Call, victim_id: str) -> httpx.Response:
    path = call.path.replace(VICTIM, item(victim_id))
    headers: dict[str, Any] = dict(call.headers)
    if call.content_type is not None:
        headers["Content-Type"] = call.content_type
    url = httpx.URL(path, query=call.query.encode()) if call.query else path
    return await api.request(call.method, url, content=call.body, headers=headers)


@pytest.fixture
async def victim(api: httpx.AsyncClient) -> str:
    """A conversation the account has, which no hostile request may change."""
    return (await create_conversation(api, contact_id=unique("victim")))["id"]


async def assert_refused_and_nothing_stored(api: httpx.AsyncClient, db: asyncpg.Connection, account: Account,
                                            victim: str, call: Call, status: int, param: Any) -> dict[str, Any]:
    before = await stored_state(db, account.id)
    response = await send(api, call, victim)
    error = assert_clean_response_error(response, status, param)
    assert await stored_state(db, account.id) == before
    return error


def cases(*rows: tuple[Call, int, Any]) -> list[Any]:
    return [pytest.param(call, status, param, id=str(call)) for call, status, param in rows]


# --------------------------------------------------------------------------- 60 KB strings


BIG = "n" * LONG

LONG_STRINGS = cases(
    (json_attribute("POST", CONVERSATIONS, "contact_id", BIG), 400, "contact_id"),
    (json_attribute("POST", CONVERSATIONS, "group_id", BIG), 400, "group_id"),
    (json_attribute("PATCH", VICTIM, "pinned_message_id", BIG), 400, "pinned_message_id"),
    (form_attribute("POST", CONVERSATIONS, "contact_id", BIG), 400, "contact_id"),
    (form_attribute("PUT", VICTIM, "pinned_message_id", BIG), 400, "pinned_message_id"),
    (json_attribute("POST", CONVERSATIONS, BIG, "x"), 400, BIG[:100]),
    (json_attribute("PATCH", VICTIM, BIG, True), 400, BIG[:100]),
    (form_attribute("POST", CONVERSATIONS, BIG, "x"), 400, BIG[:100]),
    (query_attribute("contact_id", BIG), 400, "contact_id"),
    (query_attribute("group_id", BIG), 400, "group_id"),
    (query_attribute("starting_after", BIG), 400, "starting_after"),
    (query_attribute("ending_before", BIG), 400, "ending_before"),
    (query_attribute(BIG, "1"), 400, BIG[:100]),
    (query_attribute(BIG, "1", "GET", VICTIM), 400, BIG[:100]),
    (query_attribute(BIG, "1", "DELETE", VICTIM), 400, BIG[:100]),
    (path_id("GET", BIG), 404, "id"),
    (path_id("PATCH", BIG), 404, "id"),
    (path_id("DELETE", BIG), 404, "id"),
    (header("POST", CONVERSATIONS, "Idempotency-Key", BIG.encode()), 400, "Idempotency-Key"),
    (header("PATCH", VICTIM, "If-Match", b'"' + b"1" * LONG + b'"'), 412, "If-Match"),
    (header("PATCH", VICTIM, "Authorization", b"Bearer " + BIG.encode()), 401, None),
)


@pytest.mark.parametrize(("call", "status", "param"), LONG_STRINGS)
async def test_very_long_strings_are_refused_and_nothing_is_stored(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ------------------------------------------------------------- NUL bytes and control characters

CONTROL_CHARACTERS = {"NUL": "\x00", "SOH": "\x01", "US": "\x1f", "DEL": "\x7f", "LF": "\n", "CRLF": "\r\n",
                      "TAB": "\t", "NEL": "\x85", "LINE-SEPARATOR": "\u2028", "RTL-OVERRIDE": "\u202e", "BOM": "\ufeff"}


def control_character_calls(c: str) -> list[tuple[Call, int, Any]]:
    """Every field of every call, with `c` appended to an otherwise valid value (a trailing LF is the
    classic escape from a regex anchored with `$`)."""
    cursor = "0000000000000000"[:15] + c
    return [
        (json_attribute("POST", CONVERSATIONS, "contact_id", "abc" + c), 400, "contact_id"),
        (json_attribute("POST", CONVERSATIONS, "group_id", "abc" + c), 400, "group_id"),
        (json_attribute("PATCH", VICTIM, "pinned_message_id", "abc" + c), 400, "pinned_message_id"),
        (json_attribute("POST", CONVERSATIONS, "contact_id" + c, "abc"), 400, "contact_id" + c),
        (form_attribute("POST", CONVERSATIONS, "contact_id", "abc" + c), 400, "contact_id"),
        (form_attribute("POST", CONVERSATIONS, "group_id", "abc" + c), 400, "group_id"),
        (form_attribute("PATCH", VICTIM, "pinned_message_id", "abc" + c), 400, "pinned_message_id"),
        (form_attribute("PATCH", VICTIM, "is_muted", "true" + c), 400, "is_muted"),
        (form_attribute("PATCH", VICTIM, "last_active_at", "5" + c), 400, "last_active_at"),
        (form_attribute("POST", CONVERSATIONS, "contact_id" + c, "abc"), 400, "contact_id" + c),
        (query_attribute("contact_id", "abc" + c), 400, "contact_id"),
        (query_attribute("group_id", "abc" + c), 400, "group_id"),
        (query_attribute("starting_after", cursor), 400, "starting_after"),
        (query_attribute("ending_before", cursor), 400, "ending_before"),
        (query_attribute("limit", "5" + c), 400, "limit"),
        (query_attribute("muted", "true" + c), 400, "muted"),
        (query_attribute("limit" + c, "5"), 400, "limit" + c),
        (path_id("GET", cursor), 404, "id"),
        (path_id("PUT", cursor), 404, "id"),
        (path_id("DELETE", cursor), 404, "id"),
        (header("POST", CONVERSATIONS, "Idempotency-Key", ("key" + c).encode()), 400, "Idempotency-Key"),
    ]


CONTROL_CHARACTER_CASES = [pytest.param(call, status, param, id=f"{name}-{call}")
                           for name, c in CONTROL_CHARACTERS.items()
                           for call, status, param in control_character_calls(c)]


@pytest.mark.parametrize(("call", "status", "param"), CONTROL_CHARACTER_CASES)
async def test_nul_bytes_and_control_characters_are_refused_in_every_field(api, db, account, victim, call, status,
                                                                             param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ------------------------------------------------------------------------------ invalid UTF-8

INVALID_UTF8 = {"lone-continuation": b"\x80", "xff": b"\xff", "overlong-slash": b"\xc0\xaf",
                "encoded-surrogate": b"\xed\xa0\x80", "five-bytes": b"\xf8\x88\x80\x80\x80", "truncated": b"\xe2\x82"}
INVALID_UTF8_PERCENT = {"xff": "%FF", "overlong-slash": "%C0%AF", "encoded-surrogate": "%ED%A0%80",
                        "truncated": "%E2%82"}


def invalid_utf8_rows() -> Iterator[tuple[Call, int, Any]]:
    for raw in INVALID_UTF8.values():
        yield json_body("POST", CONVERSATIONS, b'{"contact_id": "abc' + raw + b'"}'), 400, ANY
        yield json_body("PATCH", VICTIM, b'{"pinned_message_id": "' + raw + b'"}'), 400, ANY
        yield json_body("POST", CONVERSATIONS, b'{"contact_id' + raw + b'": "abc"}'), 400, ANY
        yield Call("POST", CONVERSATIONS, body=b"contact_id=abc" + raw, content_type=FORM), 400, ANY
    yield json_body("POST", CONVERSATIONS, b'{"contact_id": "abc\\ud800"}'), 400, ANY  # escaped lone surrogate
    for encoded in INVALID_UTF8_PERCENT.values():
        yield Call("POST", CONVERSATIONS, body=f"contact_id=abc{encoded}".encode(), content_type=FORM), 400, ANY
        yield Call("PATCH", VICTIM, body=f"pinned_message_id={encoded}".encode(), content_type=FORM), 400, ANY
        yield Call("POST", CONVERSATIONS, body=f"{encoded}=abc".encode(), content_type=FORM), 400, ANY
        yield Call("GET", CONVERSATIONS, query=f"contact_id=abc{encoded}"), 400, ANY
        yield Call("GET", CONVERSATIONS, query=f"starting_after={encoded}"), 400, ANY
        yield Call("GET", CONVERSATIONS, query=f"{encoded}=1"), 400, ANY
        yield Call("DELETE", VICTIM, query=f"{encoded}=1"), 400, ANY


@pytest.mark.parametrize(("call", "status", "param"), cases(*invalid_utf8_rows()))
async def test_invalid_utf8_is_refused_in_json_form_and_query(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ------------------------------------------------------------------------- integers out of range

TIMESTAMPS = ("archived_at", "last_opened_at", "last_active_at")
OUT_OF_RANGE_JSON = [b"-1", b"253402300800", b"9223372036854775807", b"9223372036854775808", b"18446744073709551616",
                     b"-9223372036854775809", b"1" + b"0" * 400, b"-" + b"9" * 400, b"1e400", b"-1e400"]
OUT_OF_RANGE_TEXT = ["-1", "253402300800", "9223372036854775808", "99999999999999999999", "9" * 400]


def out_of_range_rows() -> Iterator[tuple[Call, int, Any]]:
    for name in TIMESTAMPS:
        for raw in OUT_OF_RANGE_JSON:
            yield json_body("PATCH", VICTIM, b'{"' + name.encode() + b'": ' + raw + b"}"), 400, name
        for text in OUT_OF_RANGE_TEXT:
            yield form_attribute("PATCH", VICTIM, name, text), 400, name
    for text in ["0", "101", *OUT_OF_RANGE_TEXT]:
        yield query_attribute("limit", text), 400, "limit"


@pytest.mark.parametrize(("call", "status", "param"), cases(*out_of_range_rows()))
async def test_huge_and_negative_integers_are_refused(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ---------------------------------------------------------------------------- floats for integers

FLOATS_JSON = [b"1.0", b"1.5", b"1e3", b"1E3", b"-0.0", b"0.0", b"5e-1", b"7.05103200e8"]
NOT_DECIMAL_DIGITS = ["1.0", "1e1", "+5", " 5", "5 ", "0x10", "1_000", "\u0665", "\uff15", "\u00b2"]


def float_rows() -> Iterator[tuple[Call, int, Any]]:
    for name in TIMESTAMPS:
        for raw in FLOATS_JSON:
            yield json_body("PATCH", VICTIM, b'{"' + name.encode() + b'": ' + raw + b"}"), 400, name
        for text in NOT_DECIMAL_DIGITS:
            yield form_attribute("PATCH", VICTIM, name, text), 400, name
    for text in NOT_DECIMAL_DIGITS:
        yield query_attribute("limit", text), 400, "limit"


@pytest.mark.parametrize(("call", "status", "param"), cases(*float_rows()))
async def test_floats_and_other_spellings_are_refused_for_integers(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ------------------------------------------------------------- arrays and objects for scalars

NOT_A_STRING = [b"[]", b'["abc"]', b"{}", b'{"$ne": null}', b'{"$gt": ""}', b"true", b"1", b"1.5"]
NOT_A_BOOLEAN = [b"[]", b"[true]", b"{}", b'"true"', b"1", b"0", b"null"]
NOT_A_TIMESTAMP = [b"[]", b"[5]", b"{}", b'"5"', b"true"]


def wrong_kind_rows() -> Iterator[tuple[Call, int, Any]]:
    for raw in NOT_A_STRING:
        yield json_body("POST", CONVERSATIONS, b'{"contact_id": ' + raw + b"}"), 400, "contact_id"
        yield json_body("POST", CONVERSATIONS, b'{"group_id": ' + raw + b"}"), 400, "group_id"
        yield json_body("PATCH", VICTIM, b'{"pinned_message_id": ' + raw + b"}"), 400, "pinned_message_id"
    for raw in NOT_A_BOOLEAN:
        yield json_body("PATCH", VICTIM, b'{"is_muted": ' + raw + b"}"), 400, "is_muted"
        yield json_body("PATCH", VICTIM, b'{"is_pinned": ' + raw + b"}"), 400, "is_pinned"
    for raw in NOT_A_TIMESTAMP:
        yield json_body("PATCH", VICTIM, b'{"last_active_at": ' + raw + b"}"), 400, "last_active_at"
    for raw in (b"[]", b'"x"', b"1", b"null", b"true"):
        yield json_body("POST", CONVERSATIONS, raw), 400, None  # the body is not an object
    for name in ("contact_id[]", "contact_id[$ne]", "muted[]", "limit[]"):
        yield query_attribute(name, "1"), 400, name
        yield form_attribute("POST", CONVERSATIONS, name, "abc"), 400, name


@pytest.mark.parametrize(("call", "status", "param"), cases(*wrong_kind_rows()))
async def test_arrays_and_objects_are_refused_where_scalars_belong(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ------------------------------------------------------------------------------- repeated keys


def form(method: str, path: str, encoded: str) -> Call:
    return Call(method, path, body=encoded.encode(), content_type=FORM)


REPEATED = cases(
    (form("POST", CONVERSATIONS, "contact_id=a&contact_id=b"), 400, "contact_id"),
    (form("POST", CONVERSATIONS, "contact_id=a&contact_id=a"), 400, "contact_id"),
    (form("POST", CONVERSATIONS, "contact_id=a&group_id=&group_id=g"), 400, "group_id"),
    (form("PATCH", VICTIM, "is_muted=true&is_muted=false"), 400, "is_muted"),
    (form("PUT", VICTIM, "pinned_message_id=&pinned_message_id=m"), 400, "pinned_message_id"),
    (Call("GET", CONVERSATIONS, query="limit=1&limit=2"), 400, "limit"),
    (Call("GET", CONVERSATIONS, query="muted=true&muted=true"), 400, "muted"),
    (Call("GET", CONVERSATIONS, query="starting_after=0000000000000000&starting_after=zzzzzzzzzzzzzzzz"), 400,
     "starting_after"),
    # docs/api.md/README: "repeated ones" are a 400 in a body, JSON as much as form data: a JSON object with
    # a name twice means one thing to one parser and another to the next.
    (json_body("POST", CONVERSATIONS, b'{"contact_id": "a", "contact_id": "b"}'), 400, "contact_id"),
    (json_body("POST", CONVERSATIONS, b'{"contact_id": "a", "group_id": "g", "group_id": null}'), 400, "group_id"),
    (json_body("PATCH", VICTIM, b'{"is_muted": true, "is_muted": false}'), 400, "is_muted"),
)


@pytest.mark.parametrize(("call", "status", "param"), REPEATED)
async def test_repeated_attributes_are_refused(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ------------------------------------------------------------------------------ deep nesting


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


DEEPLY_NESTED = cases(
    (json_body("POST", CONVERSATIONS, nested_arrays(100_000)), 413, None),  # 200 KB: over the limit first
    (json_body("PATCH", VICTIM, nested_objects(100_000)), 413, None),
    (json_body("POST", CONVERSATIONS, nested_arrays(32_000)), 400, None),  # 64,000 bytes, within it
    (json_body("POST", CONVERSATIONS, nested_objects(9_000)), 400, "a"),
    (json_body("POST", CONVERSATIONS, b'{"contact_id": ' + nested_arrays(30_000) + b"}"), 400, "contact_id"),
    (json_body("PATCH", VICTIM, b'{"is_muted": ' + nested_objects(9_000) + b"}"), 400, "is_muted"),
    (json_body("PATCH", VICTIM, b'{"is_muted": true, "x": ' + nested_arrays(30_000) + b"}"), 400, "x"),
)


@pytest.mark.parametrize(("call", "status", "param"), DEEPLY_NESTED)
async def test_deeply_nested_json_is_refused(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# -------------------------------------------------------------------- 10,000 query parameters


def many_query_attributes(count: int = 10_000) -> str:
    """`count` distinct attributes in under 64 KiB (a request line any server accepts)."""
    return "&".join(f"{i:x}=" for i in range(count))


TEN_THOUSAND_ATTRIBUTES = cases(
    (Call("GET", CONVERSATIONS, query=many_query_attributes()), 400, None),
    (Call("GET", CONVERSATIONS, query="&".join(["limit=1"] * 7_000)), 400, ANY),
    (Call("POST", CONVERSATIONS, query=many_query_attributes(), body=b'{"contact_id": "q"}', content_type=JSON),
     400, None),
    (Call("GET", VICTIM, query=many_query_attributes()), 400, None),
    (Call("PATCH", VICTIM, query=many_query_attributes(), body=b'{"is_muted": true}', content_type=JSON), 400, None),
    (Call("DELETE", VICTIM, query=many_query_attributes()), 400, None),
    (form("POST", CONVERSATIONS, many_query_attributes()), 400, None),
)


@pytest.mark.parametrize(("call", "status", "param"), TEN_THOUSAND_ATTRIBUTES)
async def test_ten_thousand_query_parameters_are_refused(api, db, account, victim, call, status, param):
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)


# ------------------------------------------------------------------------------ SQL injection

SQL_INJECTION = ["' OR 1=1 --", "x'); DROP TABLE conversations; --", "1; SELECT pg_sleep(5); --", '" OR ""="',
                 "%' OR '1'='1", "' UNION SELECT token_hash FROM api_tokens --", "$$; DROP TABLE conversations; $$",
                 "\\'; DROP TABLE conversations; --"]


def sql_injection_calls(payload: str) -> list[tuple[Call, int, Any]]:
    return [
        (json_attribute("POST", CONVERSATIONS, "contact_id", payload), 400, "contact_id"),
        (json_attribute("POST", CONVERSATIONS, "group_id", payload), 400, "group_id"),
        (json_attribute("PATCH", VICTIM, "pinned_message_id", payload), 400, "pinned_message_id"),
        (json_attribute("POST", CONVERSATIONS, payload, "abc"), 400, payload),
        (form_attribute("POST", CONVERSATIONS, "contact_id", payload), 400, "contact_id"),
        (form_attribute("PATCH", VICTIM, "pinned_message_id", payload), 400, "pinned_message_id"),
        (form_attribute("PATCH", VICTIM, "last_active_at", payload), 400, "last_active_at"),
        (query_attribute("contact_id", payload), 400, "contact_id"),
        (query_attribute("group_id", payload), 400, "group_id"),
        (query_attribute("starting_after", payload), 400, "starting_after"),
        (query_attribute("ending_before", payload), 400, "ending_before"),
        (query_attribute("limit", payload), 400, "limit"),
        (query_attribute("muted", payload), 400, "muted"),
        (query_attribute(payload, "1"), 400, payload),
        (path_id("GET", payload), 404, "id"),
        (path_id("DELETE", payload), 404, "id"),
        (header("POST", CONVERSATIONS, "Idempotency-Key", payload.encode()), 400, "Idempotency-Key"),
    ]


SQL_INJECTION_CASES = [pytest.param(call, status, param, id=f"{index}-{call}")
                       for index, payload in enumerate(SQL_INJECTION)
                       for call, status, param in sql_injection_calls(payload)]


@pytest.mark.parametrize(("call", "status", "param"), SQL_INJECTION_CASES)
async def test_sql_injection_is_refused_and_the_conversations_table_stays_intact(api, db, account, victim, call,
                                                                                 status, param):
    started = time.monotonic()
    await assert_refused_and_nothing_stored(api, db, account, victim, call, status, param)
    assert time.monotonic() - started < 2, "a pg_sleep ran"
    assert await db.fetchval("SELECT to_regclass('conversations') IS NOT NULL")
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE account_id = $1 AND id = $2",
                             account.id, victim) == 1


# =============================================================== against a real server

@dataclass(frozen=True)
class Server:
    process: ServiceProcess
    account: Account
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.process.base_url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.account.token}"}

    def assert_up(self) -> None:
        """Still running, and still serving a write as it should."""
        assert self.process.process is not None and self.process.process.poll() is None, "serve exited"
        with httpx.Client(base_url=self.base_url, headers=self.auth, timeout=5) as client:
            assert client.get("/health").status_code == 200
            assert client.post(CONVERSATIONS, json={"contact_id": unique("alive")}).status_code == 201


@pytest.fixture(scope="module")
async def server(database_url: str, backend_urls: Backends,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One `serve` for this module's real-server tests, logging at debug into a file."""
    settings = Settings(database_url=database_url, redis_url=backend_urls.redis_url,
                        events_stream=f"test:{uuid.uuid4().hex}:events")
    account = await new_account(settings, "hostile")
    log_path = tmp_path_factory.mktemp("hostile") / "serve.log"
    process = ServiceProcess({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
                              "EVENTS_STREAM": settings.events_stream, "LOG_LEVEL": "debug"}, log_path=log_path)
    process.start()
    try:
        yield Server(process, account, log_path)
    finally:
        process.stop()
        client = aioredis.Redis.from_url(settings.redis_url)
        await client.delete(settings.events_stream)
        await client.aclose()


def send_quietly(conn: socket.socket, chunks: Iterable[bytes]) -> None:
    """Send what the server may stop reading at any point (it answered 413 and closed)."""
    try:
        for chunk in chunks:
            conn.sendall(chunk)
    except OSError:
        pass


def raw_exchange(server: Server, request: bytes, body_chunks: Iterable[bytes] = (), timeout: float = 10
                 ) -> RawResponse:
    with socket.create_connection(("127.0.0.1", server.process.port), timeout=timeout) as conn:
        conn.sendall(request)
        sender = threading.Thread(target=send_quietly, args=(conn, body_chunks), daemon=True)
        sender.start()
        try:
            return read_response(conn)
        finally:
            sender.join(timeout)


def request_head(server: Server, method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {server.account.token}",
             *headers, "", ""]
    return "\r\n".join(lines).encode()


TEN_MB = 10 * 1024 * 1024


def ten_mb_in_chunks(chunked_encoding: bool) -> Iterator[bytes]:
    piece = b"[" * 65536
    for _ in range(TEN_MB // len(piece)):
        yield (b"10000\r\n" + piece + b"\r\n") if chunked_encoding else piece
    if chunked_encoding:
        yield b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_10_mb_body_is_413_and_the_server_stays_up(server: Server, framing: str):
    framing_header = f"Content-Length: {TEN_MB}" if framing == "content-length" else "Transfer-Encoding: chunked"
    head = request_head(server, "POST", CONVERSATIONS, f"Content-Type: {JSON}", framing_header)
    response = raw_exchange(server, head, ten_mb_in_chunks(framing == "chunked"))
    assert_clean_error(response.status, response.headers, response.body, 413, None)
    server.assert_up()


def test_a_client_trickling_its_body_does_not_hold_up_others(server: Server):
    body = json.dumps({"contact_id": unique("trickle")}).encode()
    latencies = []
    with socket.create_connection(("127.0.0.1", server.process.port), timeout=10) as slow, \
            httpx.Client(base_url=server.base_url, headers=server.auth, timeout=5) as others:
        slow.sendall(request_head(server, "POST", CONVERSATIONS, f"Content-Type: {JSON}",
                                  f"Content-Length: {len(body)}"))
        for byte in body:  # one byte at a time, with others' requests in between
            slow.sendall(bytes([byte]))
            started = time.monotonic()
            assert others.get(CONVERSATIONS).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
        assert read_response(slow).status == 201
    assert max(latencies) < 1.0, latencies
    server.assert_up()


def test_clients_that_send_nothing_do_not_hold_up_others(server: Server):
    idle = [socket.create_connection(("127.0.0.1", server.process.port), timeout=10) for _ in range(200)]
    try:
        with httpx.Client(base_url=server.base_url, headers=server.auth, timeout=5) as others:
            for _ in range(20):  # a new connection each time: accepting is what idle clients would starve
                started = time.monotonic()
                assert others.get(CONVERSATIONS, headers={"Connection": "close"}).status_code == 200
                assert time.monotonic() - started < 1.0
    finally:
        for conn in idle:
            conn.close()
    server.assert_up()


MALFORMED_HTTP = {
    "not-http": b"GARBAGE\r\n\r\n",
    "content-length-not-a-number": b"POST /v1/conversations HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "content-length-and-chunked": (b"POST /v1/conversations HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "raw-non-ascii-in-query": b"GET /v1/conversations?contact_id=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    "control-character-in-path": b"GET /v1/conversations/\x01abc HTTP/1.1\r\nHost: x\r\n\r\n",
    "request-line-over-64-kib": b"GET /v1/conversations?x=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(MALFORMED_HTTP.values()), ids=list(MALFORMED_HTTP))
def test_malformed_http_is_a_4xx_in_the_error_shape(server: Server, request_bytes: bytes):
    response = raw_exchange(server, request_bytes)
    assert 400 <= response.status < 500, response
    assert "server" not in response.headers
    assert_clean_error(response.status, response.headers, response.body, response.status, sent=request_bytes)
    server.assert_up()


# The calls of test_tokens_never_appear_in_logs_or_error_bodies: every kind of outcome, with the token.
TOKEN_CALLS = [
    ("GET", CONVERSATIONS, {}, None),
    ("POST", CONVERSATIONS, {"Content-Type": JSON}, b'{"contact_id": "tokens-in-logs"}'),
    ("POST", CONVERSATIONS, {"Content-Type": JSON}, b'{"contact_id": "tokens-in-logs"}'),  # 409
    ("POST", CONVERSATIONS, {"Content-Type": JSON}, b'{"contact_id": '),  # 400
    ("POST", CONVERSATIONS, {"Content-Type": "text/plain"}, b"x"),  # 415
    ("POST", CONVERSATIONS, {"Content-Type": JSON}, b"[" * 70_000),  # 413
    ("GET", f"{CONVERSATIONS}/0000000000000000", {}, None),  # 404
    ("PATCH", f"{CONVERSATIONS}/0000000000000000", {"If-Match": '"1"', "Content-Type": JSON}, b"{}"),
    ("TRACE", CONVERSATIONS, {}, None),  # 405
    ("GET", "/nowhere", {}, None),  # 404 route
    ("GET", CONVERSATIONS + "?limit=0", {}, None),
    ("GET", CONVERSATIONS + "?access_token={token}", {}, None),  # the token where it does not belong
]
AUTHORIZATION_SPELLINGS = ["Bearer {token}", "bearer {token}", "Bearer   {token}", "Bearer {token} extra",
                           "Basic {token}", "Token {token}", "Bearer{token}", "Bearer {token}x"]


def test_tokens_never_appear_in_logs_or_error_bodies(server: Server):
    token = server.account.token
    secret = token.removeprefix("cvk_")
    forms = [token, secret, hashlib.sha256(token.encode()).hexdigest()]
    responses = []
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for spelling in AUTHORIZATION_SPELLINGS:
            authorization = spelling.format(token=token)
            for method, path, headers, body in TOKEN_CALLS:
                responses.append(client.request(method, path.format(token=token), content=body,
                                                headers={**headers, "Authorization": authorization}))
    assert {response.status_code for response in responses} >= {200, 201, 400, 401, 404, 405, 409, 413, 415}
    for response in responses:
        shown = response.content + repr(response.headers.raw).encode()
        assert not [form for form in forms if form.encode() in shown], (response.request.method,
                                                                        response.status_code)
    log = server.log_path.read_text()
    assert log.count('"logger":"service.requests"') >= len(responses), "the requests were not logged"
    assert not [form for form in forms if form in log], "a token (or its hash) is in the log"


SOFTWARE_PROBES = [
    ("GET", "/health", {}, None),
    ("GET", "/ready", {}, None),
    ("GET", "/metrics", {}, None),
    ("GET", "/schema", {}, None),
    ("GET", "/schema/openapi.json", {}, None),
    ("OPTIONS", CONVERSATIONS, {}, None),
    ("HEAD", "/health", {}, None),
    ("GET", CONVERSATIONS, {"Authorization": "Bearer nope"}, None),
    ("GET", "/nowhere", {}, None),
    ("DELETE", "/health", {}, None),
    ("TRACE", CONVERSATIONS, {}, None),
    ("POST", CONVERSATIONS, {"Content-Type": JSON}, b"{"),
    ("POST", CONVERSATIONS, {"Content-Type": "text/xml"}, b"<a/>"),
    ("POST", CONVERSATIONS, {"Content-Type": JSON}, b"[" * 70_000),
    ("GET", f"{CONVERSATIONS}/0000000000000000", {}, None),
    ("GET", f"{CONVERSATIONS}/%00%ff", {}, None),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), SOFTWARE_PROBES,
                         ids=[f"{method} {path} {(body or b'')[:10]!r}" for method, path, _, body in SOFTWARE_PROBES])
def test_responses_never_reveal_the_server_software(server: Server, method, path, headers, body):
    with httpx.Client(base_url=server.base_url, headers=server.auth, timeout=10) as client:
        response = client.request(method, path, headers=headers, content=body)
    assert "server" not in response.headers
    assert "x-powered-by" not in response.headers
    for name, value in response.headers.raw:
        revealed = [word for word in SOFTWARE_NAMES if word.encode() in name.lower() + b": " + value.lower()]
        assert not revealed, (name, value)
    if response.status_code >= 400:
        revealed = [word for word in SOFTWARE_NAMES if word.encode() in response.content.lower()]
        assert not revealed, response.text[:300]
