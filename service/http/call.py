"""One call under /v1 (conversations and the events feed): what an operation reads from it and how its work runs.

An operation decodes its query and body through the Call (decoding.py's strict rules, the body
bounded by MAX_BODY_BYTES while it is read), then hands its database work to `Call.run`, which
runs it on the pool, or, for a write with an Idempotency-Key, exactly once in a transaction
that stores its reply (idempotency.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from litestar.types import Receive, Scope

from service.conversations import Conversations
from service.errors import BodyNotReceived, InvalidRequest
from service.feed import Feed
from service.http import idempotency
from service.http.decoding import decode_body, decode_query
from service.http.limits import MAX_BODY_BYTES, body_too_large
from service.http.reply import Reply
from service.model import RequestAttributes
from service.store.database import Database, Executor

CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_IDEMPOTENCY_KEY = b"idempotency-key"
_IF_MATCH = b"if-match"
# The spelling an error's `param` uses for each header a call reads.
_HEADER_LABELS = {CONTENT_TYPE: "Content-Type", _CONTENT_LENGTH: "Content-Length", _IDEMPOTENCY_KEY: idempotency.HEADER}

# A version is the conversation's event sequence, a PostgreSQL bigint.
MAX_VERSION = 2**63 - 1
_MAX_VERSION_DIGITS = len(str(MAX_VERSION))

T = TypeVar("T", bound=RequestAttributes)
Work = Callable[[Executor], Awaitable[Reply]]


class RepeatedHeader(Exception):
    """A header that names one thing was sent twice with different values: which one to honour is
    anyone's guess, so the call is refused (as a 400 naming it, or a 401 for Authorization)."""


def raw_header(scope_headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of header `name` (lower case) straight from the ASGI scope; RepeatedHeader if it
    came more than once with different values (the same value twice is one header)."""
    found = None
    for key, value in scope_headers:
        if key == name:
            if found is not None and value != found:
                raise RepeatedHeader(name.decode("latin-1"))
            found = value
    return found


def parse_if_match(value: bytes | None) -> list[int] | None:
    """The versions an If-Match header allows (None: any, as without the header or with `*`).

    Only strong validators can match, compared character by character (RFC 9110 §8.8.3.2): a
    weak or malformed tag, one with leading zeros, or a number no version can reach (a bigint
    holds versions) matches nothing, so a write conditioned on it fails its precondition (412).
    """
    if value is None or value.strip() == b"*":
        return None
    versions = []
    for candidate in value.split(b","):
        tag = candidate.strip()
        digits = tag[1:-1]
        if (tag[:1] == b'"' and tag[-1:] == b'"' and 0 < len(digits) <= _MAX_VERSION_DIGITS and digits.isdigit()
                and digits[:1] != b"0" and int(digits) <= MAX_VERSION):
            versions.append(int(digits))
    return versions


class Services:
    """What the operations work with, built once by the app's lifespan."""

    __slots__ = ("conversations", "db", "feed", "keyed_writes")

    def __init__(self, db: Database, conversations: Conversations, feed: Feed,
                 keyed_writes: idempotency.KeyedWriteBudget) -> None:
        self.db = db
        self.conversations = conversations
        self.feed = feed
        self.keyed_writes = keyed_writes


class Call:
    __slots__ = ("_body", "account_id", "conversations", "db", "feed", "item_id", "keyed_writes", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, services: Services, account_id: str, item_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.db = services.db
        self.conversations = services.conversations
        self.feed = services.feed
        self.keyed_writes = services.keyed_writes
        self.account_id = account_id
        self.item_id = item_id  # the {id} of an item route, else ""
        self._body = b""

    def query(self, struct_type: type[T]) -> T:
        return decode_query(self.scope["query_string"], struct_type)

    def header(self, name: bytes) -> bytes | None:
        try:
            return raw_header(self.scope["headers"], name)
        except RepeatedHeader:
            label = _HEADER_LABELS[name]
            raise InvalidRequest(f"{label} was sent more than once with different values; send it once",
                                 param=label) from None

    async def body(self, struct_type: type[T]) -> T:
        content_type = self.header(CONTENT_TYPE)
        self._body = await self._read_body()
        return decode_body(self._body, None if content_type is None else content_type.decode("latin-1"),
                           struct_type)

    async def _read_body(self) -> bytes:
        declared = self.header(_CONTENT_LENGTH)
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise body_too_large()
        message = await self.receive()
        body = message.get("body", b"")
        while message.get("more_body"):  # chunked, or split by the server
            message = await self.receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                raise body_too_large()
        # A disconnect (the client's, or the body timeout's) ends the body early: what came may
        # still decode (a form cut mid-value), so it must never reach the write.
        if message["type"] != "http.request":
            raise BodyNotReceived()
        if len(body) > MAX_BODY_BYTES:
            raise body_too_large()
        return body

    def if_match(self) -> list[int] | None:
        # Several If-Match lines are one list (RFC 9110 §5.3), as if sent joined by commas.
        lines = [value for key, value in self.scope["headers"] if key == _IF_MATCH]
        return parse_if_match(b", ".join(lines) if lines else None)

    async def run(self, work: Work) -> Reply:
        """`work` on the pool; with an Idempotency-Key, at most once, its reply stored with the key."""
        raw_key = self.header(_IDEMPOTENCY_KEY)
        if raw_key is None or self.scope["method"] == "GET":
            return await work(self.db)
        key = idempotency.checked_key(raw_key)
        self.keyed_writes.spend(self.account_id)
        path = self.scope.get("raw_path") or self.scope["path"].encode()
        request_fingerprint = idempotency.fingerprint(self.scope["method"], path.decode("latin-1"),
                                                      self.header(CONTENT_TYPE), self._body)
        return await idempotency.run_once(self.db, self.account_id, key, request_fingerprint, work)
