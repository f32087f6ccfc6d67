"""The one exception handler: every error leaves in the contract's shape.

Litestar raises its own HTTPExceptions for unknown routes (404), methods (405) and bodies over
the limit (413); they reach the app-level handler only, and are reworded here into the error
tree of service/errors.py. A database that cannot be reached is a 503 wherever it surfaced;
anything else is a 500 with a fixed body, its traceback logged, never sent.
"""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from service.errors import (
    ApiError,
    DatabaseUnavailable,
    InternalError,
    MethodNotAllowed,
    RouteNotFound,
    encode_error,
)
from service.http.limits import body_too_large
from service.store.database import is_unavailable

logger = logging.getLogger("service.http.errors")


def as_api_error(method: str, path: str, error: Exception) -> ApiError:
    """The contract's error for anything raised while serving a request."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, NotFoundException):
        return RouteNotFound(f"there is no route {method} {path[:200]}")
    if isinstance(error, MethodNotAllowedException):
        allow = (error.headers or {}).get("allow", "")
        return MethodNotAllowed(f"{method} is not allowed on {path[:200]}; allowed: {allow}",
                                headers={"Allow": allow} if allow else None)
    if isinstance(error, RequestEntityTooLarge):
        return body_too_large()
    if isinstance(error, HTTPException) and 400 <= error.status_code < 500:
        return ApiError("the request is malformed", status_code=error.status_code)
    if is_unavailable(error):
        return DatabaseUnavailable()
    return InternalError()


def render_error(request: Request, error: Exception) -> Response:
    # raw_path: the path as sent (a mounted handler sees scope["path"] rewritten to its remainder).
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.scope.get("path", "")
    api_error = as_api_error(request.method, path, error)
    if isinstance(api_error, InternalError):
        logger.error("unhandled error serving %s %s", request.method, path, exc_info=error)
    return Response(content=encode_error(api_error), status_code=api_error.status_code,
                    media_type="application/json", headers=api_error.headers or None)
