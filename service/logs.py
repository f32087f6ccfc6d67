"""Logs: one JSON object per line on stderr, at LOG_LEVEL, uvicorn's own loggers included.

Every process configures this once (the CLI, and each server worker). A request's line carries
the fields of REQUEST_FIELDS (http/observability.py fills them); no line ever carries a request
body, a query string, a token or an Authorization header.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec


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


REQUEST_FIELDS = ("method", "route", "path", "status", "duration_ms", "request_id", "account_id")
_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"
        line = LogLine(time=stamp, level=record.levelname.lower(), logger=record.name, message=record.getMessage(),
                       **{name: getattr(record, name) for name in REQUEST_FIELDS if hasattr(record, name)})
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
