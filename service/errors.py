"""The errors a client can see (docs/api.md §5), and the one place that renders them.

    ApiError                      status, message, param, headers
    ├── InvalidRequest            400  a bad attribute, body or query
    │   └── BodyNotReceived       400  the connection ended (or the body timed out) before the whole body came
    ├── Unauthenticated           401  missing, unknown or revoked token (WWW-Authenticate: Bearer)
    ├── ConversationNotFound      404  no such conversation in the caller's account
    ├── EventNotFound             404  no such event in the caller's feed
    ├── RouteNotFound             404  no such path
    ├── MethodNotAllowed          405  the path exists, the method does not (Allow: ...)
    ├── RequestHeadTimeout        408  the request head did not arrive in time (connection closed)
    ├── DuplicateConversation     409  the account already has one with this contact or group
    ├── ConcurrentChange          409  the conversation changed under the request (created and deleted meanwhile)
    ├── IdempotencyKeyInUse       409  a request with the same Idempotency-Key is still running
    ├── CursorExpired             410  a feed cursor older than the feed's window: resync
    ├── PreconditionFailed        412  If-Match names a version the conversation no longer has
    ├── PayloadTooLarge           413  body over the limit (64 KiB)
    ├── RequestLineTooLong        414  request line over the limit (connection closed)
    ├── UnsupportedMediaType      415  a body that is neither JSON nor form data
    ├── TooManyKeyedWrites        429  more writes with an Idempotency-Key a second than the account may send
    ├── RequestHeadersTooLarge    431  header block over the limit, or too many headers (connection closed)
    ├── DatabaseUnavailable       503  PostgreSQL unreachable or too slow (Retry-After)
    ├── AtCapacity                503  the process has as many requests or connections as it takes (Retry-After)
    └── ConversationBusy          503  a keyed write waited too long for another write's row lock (Retry-After)

Anything else that escapes a handler is a 500 with a fixed body; its traceback goes to the log
with the request id, never to the client. This module imports no other part of the service:
mapping framework and driver exceptions onto this tree is the HTTP face's (http/error_handler.py).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

RETRY_AFTER_SECONDS = "1"


class ErrorBody(msgspec.Struct):
    """Every error response (docs/api.md §5); `param` is null when no single attribute is at fault."""

    type: str
    message: str
    param: str | None


class ConflictErrorBody(ErrorBody):
    """A 409 also names the conversation that already exists with the contact or group."""

    conversation_id: str


class ApiError(Exception):
    """An error answered with the contract's body; subclasses fix the status."""

    status_code: int = 400
    error_type: ClassVar[str] = "invalid_request"
    # An outcome of carrying out a write (not a refusal to start one): stored with its
    # Idempotency-Key and replayed to retries, like a success.
    is_outcome: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None,
                 status_code: int | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r})"

    def body(self) -> ErrorBody:
        return ErrorBody(type=self.error_type, message=self.message, param=self.param)


class InvalidRequest(ApiError):
    status_code = 400


class BodyNotReceived(InvalidRequest):
    """Nobody reads this answer (the connection is gone): raising it ends the call before any work."""

    def __init__(self) -> None:
        super().__init__("the connection closed before the whole request body arrived")


class Unauthenticated(ApiError):
    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ConversationNotFound(ApiError):
    # Not stored with an Idempotency-Key: ids are never reused, so a retry gets the same 404
    # anew, and a key that met no conversation costs no stored row.
    status_code = 404

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"there is no conversation {conversation_id[:100]!r} in this account", param="id")


class EventNotFound(ApiError):
    status_code = 404

    def __init__(self, event_id: str) -> None:
        super().__init__(f"there is no event {event_id[:100]!r} in this account's feed", param="id")


class CursorExpired(ApiError):
    status_code = 410

    def __init__(self, param: str, window_days: int) -> None:
        super().__init__(f"{param} names an event older than the feed's {window_days}-day window; resync: list the "
                         "conversations again, then read the feed from its newest event", param=param)


class RouteNotFound(ApiError):
    status_code = 404


class MethodNotAllowed(ApiError):
    status_code = 405


class DuplicateConversation(ApiError):
    status_code = 409
    is_outcome = True

    def __init__(self, param: str, conversation_id: str) -> None:
        super().__init__(
            f"this account already has a conversation with this {param.removesuffix('_id')}: {conversation_id}",
            param=param,
        )
        self.conversation_id = conversation_id

    def body(self) -> ErrorBody:
        return ConflictErrorBody(type=self.error_type, message=self.message, param=self.param,
                                 conversation_id=self.conversation_id)


class ConcurrentChange(ApiError):
    status_code = 409
    is_outcome = True


class IdempotencyKeyInUse(ApiError):
    status_code = 409

    def __init__(self) -> None:
        super().__init__("a request with this Idempotency-Key is still being processed; retry shortly",
                         param="Idempotency-Key")


class PreconditionFailed(ApiError):
    status_code = 412
    is_outcome = True

    def __init__(self, current_version: int) -> None:
        super().__init__(f'the conversation is now at version "{current_version}", not the one If-Match names; '
                         "retrieve it and retry", param="If-Match")


class PayloadTooLarge(ApiError):
    status_code = 413

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"the request body must be at most {limit_bytes // 1024} KiB")


class UnsupportedMediaType(ApiError):
    status_code = 415


class TooManyKeyedWrites(ApiError):
    status_code = 429

    def __init__(self, per_second: int) -> None:
        super().__init__(f"this account sends more than {per_second} writes with an Idempotency-Key a second; "
                         "retry after Retry-After seconds (with the same key: nothing was stored)",
                         param="Idempotency-Key", headers={"Retry-After": RETRY_AFTER_SECONDS})


class RequestHeadTimeout(ApiError):
    status_code = 408

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request head (request line and headers) must arrive within {seconds:g} s")


class RequestLineTooLong(ApiError):
    status_code = 414

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"the request line (method, path and query) must be at most {limit_bytes} bytes")


class RequestHeadersTooLarge(ApiError):
    status_code = 431

    def __init__(self, limit_bytes: int, limit_count: int) -> None:
        super().__init__(f"the request headers must be at most {limit_bytes} bytes in all, and at most "
                         f"{limit_count} of them")


class AtCapacity(ApiError):
    status_code = 503
    error_type = "api_error"

    def __init__(self, limit: str = "requests in progress") -> None:
        super().__init__(f"the server is at its limit of {limit}; retry shortly",
                         headers={"Retry-After": RETRY_AFTER_SECONDS})


class DatabaseUnavailable(ApiError):
    status_code = 503
    error_type = "api_error"

    def __init__(self) -> None:
        super().__init__("the database is unavailable; retry shortly",
                         headers={"Retry-After": RETRY_AFTER_SECONDS})


class ConversationBusy(ApiError):
    """A keyed write's transaction bounds its lock waits; another write held the row past that."""

    status_code = 503
    error_type = "api_error"

    def __init__(self) -> None:
        super().__init__("another write to this conversation is taking long; retry shortly",
                         headers={"Retry-After": RETRY_AFTER_SECONDS})


class InternalError(ApiError):
    status_code = 500
    error_type = "api_error"

    def __init__(self) -> None:
        super().__init__("an unexpected error occurred on our side; it has been logged")


_encode = msgspec.json.Encoder().encode


def encode_error(error: ApiError) -> bytes:
    return _encode(error.body())
