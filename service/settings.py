"""The service's configuration: read from the environment once, at start-up, into a frozen Struct.

Nothing else in the package reads `os.environ`; tests build a `Settings` directly. The
variables and defaults of the contract (docs/api.md §7) come first, then the tuning knobs this implementation adds
(all documented in README.md, "Configuration").
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from service.partitions import MAX_PARTITIONS

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# A revoked token stops working within this on every replica (docs/api.md §2): the most any
# process may remember a token's answer.
TOKEN_REVOCATION_WINDOW_SECONDS = 5.0


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service is configured with; see README.md for each variable."""

    database_url: str = "postgresql://postgres@localhost:5432/conversations"
    redis_url: str = "redis://localhost:6379/0"
    events_stream: str = "conversations:events"
    # The relay's lock and LISTEN connection: must reach PostgreSQL directly (no transaction
    # pooler), so it has its own URL. Empty means DATABASE_URL.
    relay_database_url: str = ""
    events_maxlen: int = 1_000_000
    events_hard_maxlen: int = 10_000_000
    # Off: the relay publishes whatever durability Redis offers (and says which). On: while Redis
    # cannot confirm that a published entry survives its crash, events wait in the outbox.
    events_require_durable: bool = False
    # Replicas that must have an entry in their append-only file (WAITAOF) before its outbox row
    # goes: 1 or more keeps what the relay deleted on a replica that a failover promotes.
    events_waitaof_replicas: int = 0
    # Partitions of the event stream (service/partitions.py): 1 is the single stream key EVENTS_STREAM;
    # more spread the events, their relay leaders and their consumers (docs/scaling.md).
    events_partitions: int = 1
    # REDIS_URL names one node of a Redis Cluster (any of them): the client learns the others.
    redis_cluster: bool = False
    host: str = "0.0.0.0"  # noqa: S104 - a container's server listens on every interface
    port: int = 8000
    log_level: str = "info"

    workers: int = 0  # 0: one per CPU
    # Per worker, measured at 32 concurrent clients on 2 cores: 12 keeps p99 below the bare
    # limit's; 16 gives ~4 % more writes a second but a p99 25 % higher, 32 no more throughput
    # and twice the p99, 6-10 fewer requests a second (README, "Performance").
    db_pool_size: int = 12
    # Together these bound how long a call can wait on an unreachable PostgreSQL before its 503:
    # opening a connection 3 s, waiting in line for a pooled one 2 s, a statement 4 s.
    db_connect_timeout: float = 3.0
    db_acquire_timeout: float = 2.0
    db_statement_timeout: float = 4.0
    # A pooled connection older than this is ended when next idle and replaced: servers behind a
    # DNS name or a failover are picked up again, and no session lives for ever.
    db_max_connection_lifetime: float = 3600.0
    redis_timeout: float = 2.0
    shutdown_timeout: float = 20.0
    token_cache_seconds: float = TOKEN_REVOCATION_WINDOW_SECONDS
    # How long GET /v1/events keeps published events (whole days: the log drops a day at a time).
    events_feed_days: int = 30
    # Writes with an Idempotency-Key an account may send each second, per process (429 past it):
    # with 24 h retention, this bounds the keys an account can make the service store.
    idempotency_keys_per_second: int = 50
    idempotency_purge_seconds: float = 60.0
    # Tokens remembered per process, known and unknown alike (each its own cache of this size).
    token_cache_size: int = 10_000
    # The HTTP front door (service/http/protocol.py): a client's request head is bounded in size
    # and in time, and so is what one process takes on at once (docs/api.md §7.5).
    http_max_url_bytes: int = 8 * 1024
    http_max_header_bytes: int = 16 * 1024
    http_max_headers: int = 100
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keep_alive_timeout: float = 5.0
    http_max_requests: int = 256
    http_max_connections: int = 1000

    @property
    def relay_url(self) -> str:
        return self.relay_database_url or self.database_url

    @property
    def worker_count(self) -> int:
        return self.workers or available_cpus()


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to respect
    return max(1, cpus)


def _positive_int(name: str, raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def _non_negative_int(name: str, raw: str) -> int:
    if not raw.isdigit():
        raise SettingsError(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise SettingsError(f"{name} must be a number of seconds above 0, got {raw!r}")
    return value


def _partitions(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > MAX_PARTITIONS:
        raise SettingsError(f"{name} must be at most {MAX_PARTITIONS}, got {raw!r}")
    return value


def _port(name: str, raw: str) -> int:
    value = _non_negative_int(name, raw)
    if value > 65535:
        raise SettingsError(f"{name} must be a TCP port (0 to 65535), got {raw!r}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(name: str, raw: str) -> bool:
    if raw.lower() not in _TRUE + _FALSE:
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    return raw.lower() in _TRUE


def _log_level(name: str, raw: str) -> str:
    if raw.lower() not in LOG_LEVELS:
        raise SettingsError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return raw.lower()


def _text(name: str, raw: str) -> str:
    if not raw:
        raise SettingsError(f"{name} must not be empty")
    return raw


def _optional_text(name: str, raw: str) -> str:
    return raw


# environment variable -> (Settings field, parser)
_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "DATABASE_URL": ("database_url", _text),
    "REDIS_URL": ("redis_url", _text),
    "EVENTS_STREAM": ("events_stream", _text),
    "RELAY_DATABASE_URL": ("relay_database_url", _optional_text),
    "EVENTS_MAXLEN": ("events_maxlen", _positive_int),
    "EVENTS_HARD_MAXLEN": ("events_hard_maxlen", _positive_int),
    "EVENTS_REQUIRE_DURABLE": ("events_require_durable", _boolean),
    "EVENTS_WAITAOF_REPLICAS": ("events_waitaof_replicas", _non_negative_int),
    "EVENTS_PARTITIONS": ("events_partitions", _partitions),
    "REDIS_CLUSTER": ("redis_cluster", _boolean),
    "HOST": ("host", _text),
    "PORT": ("port", _port),
    "LOG_LEVEL": ("log_level", _log_level),
    "WORKERS": ("workers", _non_negative_int),
    "DB_POOL_SIZE": ("db_pool_size", _positive_int),
    "DB_CONNECT_TIMEOUT": ("db_connect_timeout", _positive_float),
    "DB_ACQUIRE_TIMEOUT": ("db_acquire_timeout", _positive_float),
    "DB_STATEMENT_TIMEOUT": ("db_statement_timeout", _positive_float),
    "DB_MAX_CONNECTION_LIFETIME": ("db_max_connection_lifetime", _positive_float),
    "REDIS_TIMEOUT": ("redis_timeout", _positive_float),
    "SHUTDOWN_TIMEOUT": ("shutdown_timeout", _positive_float),
    "EVENTS_FEED_DAYS": ("events_feed_days", _positive_int),
    "TOKEN_CACHE_SIZE": ("token_cache_size", _positive_int),
    "IDEMPOTENCY_KEYS_PER_SECOND": ("idempotency_keys_per_second", _positive_int),
    "IDEMPOTENCY_PURGE_SECONDS": ("idempotency_purge_seconds", _positive_float),
    "HTTP_MAX_URL_BYTES": ("http_max_url_bytes", _positive_int),
    "HTTP_MAX_HEADER_BYTES": ("http_max_header_bytes", _positive_int),
    "HTTP_MAX_HEADERS": ("http_max_headers", _positive_int),
    "HTTP_HEADER_TIMEOUT": ("http_header_timeout", _positive_float),
    "HTTP_BODY_TIMEOUT": ("http_body_timeout", _positive_float),
    "HTTP_KEEP_ALIVE_TIMEOUT": ("http_keep_alive_timeout", _positive_float),
    "HTTP_MAX_REQUESTS": ("http_max_requests", _positive_int),
    "HTTP_MAX_CONNECTIONS": ("http_max_connections", _positive_int),
}

ENVIRONMENT_VARIABLES = tuple(_VARIABLES)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the Settings from `environ` (default: the process environment), checking every value."""
    source = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for variable, (field, parse) in _VARIABLES.items():
        raw = source.get(variable)
        if raw is not None:
            values[field] = parse(variable, raw.strip())
    settings = Settings(**values)
    if settings.events_hard_maxlen < settings.events_maxlen:
        raise SettingsError("EVENTS_HARD_MAXLEN must be at least EVENTS_MAXLEN")
    return settings
