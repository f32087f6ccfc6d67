"""A response of a /v1 call, already encoded, and how it is sent.

A write with an Idempotency-Key stores its Reply and replays it to retries, so a Reply holds
everything a client sees: status, body, and the headers that carry meaning.
"""

from __future__ import annotations

import msgspec
from litestar.types import Send

_JSON_HEADER = (b"content-type", b"application/json")
_REPLAYED_HEADER = (b"idempotent-replayed", b"true")


class Reply(msgspec.Struct, kw_only=True):
    status: int
    body: bytes = b""
    location: str | None = None
    etag: str | None = None
    replayed: bool = False  # an idempotent retry's stored answer


async def send_reply(send: Send, reply: Reply) -> None:
    headers = [_JSON_HEADER, (b"content-length", b"%d" % len(reply.body))] if reply.body else []
    if reply.location is not None:
        headers.append((b"location", reply.location.encode()))
    if reply.etag is not None:
        headers.append((b"etag", reply.etag.encode()))
    if reply.replayed:
        headers.append(_REPLAYED_HEADER)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
