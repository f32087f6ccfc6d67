"""Fixtures: a throwaway database per run, a stream per test, an app, accounts and their clients.

Isolation is by construction: every test makes its own accounts (and tokens, through the real
tokens code) and its own stream name, so tests never see each other's rows or events and no
cleanup between tests is needed. The run's database is created through the real migrate code
and dropped at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from litestar import Litestar

from service import tokens
from service.http.app import create_app
from service.settings import Settings
from service.store.migrate import migrate
from tests import backends
from tests.asgi import Lifespan, client_for
from tests.backends import RedisBackend


@dataclass(frozen=True)
class Backends:
    admin_database_url: str
    redis_url: str


@dataclass(frozen=True)
class Account:
    id: str
    token: str


def database_url_for(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def backend_urls() -> Iterator[Backends]:
    with ExitStack() as stack:
        database, redis_url = backends.resolve(stack)
        yield Backends(database, redis_url)


@pytest.fixture(scope="session")
def aof_redis_url() -> Iterator[str]:
    """The run's AOF server (started only if a test asks for it)."""
    with ExitStack() as stack:
        yield backends.resolve_aof(stack)


REDIS_BACKENDS = ("none", "waitaof")


@pytest.fixture(params=REDIS_BACKENDS)
def redis_backend(request: pytest.FixtureRequest, backend_urls: Backends) -> RedisBackend:
    """Each backend in turn: the tests that take it run once per relay publishing path."""
    if request.param == "none":
        return RedisBackend("none", backend_urls.redis_url)
    return RedisBackend("waitaof", request.getfixturevalue("aof_redis_url"))


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@asynccontextmanager
async def migrated_database(backend_urls: Backends, prefix: str) -> AsyncIterator[str]:
    """A fresh database, created and migrated by the service's own migrate code, dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = database_url_for(backend_urls.admin_database_url, name)
    await migrate(Settings(database_url=url))
    try:
        yield url
    finally:
        await drop_database(backend_urls.admin_database_url, name)


@pytest.fixture(scope="session")
async def database_url(backend_urls: Backends) -> AsyncIterator[str]:
    """The database of this run."""
    async with migrated_database(backend_urls, "conversations_test") as url:
        yield url


@pytest.fixture
def stream_name() -> str:
    return f"test:{uuid.uuid4().hex}:events"


@pytest.fixture
def settings(database_url: str, backend_urls: Backends, stream_name: str) -> Settings:
    return Settings(database_url=database_url, redis_url=backend_urls.redis_url, events_stream=stream_name,
                    db_pool_size=4, shutdown_timeout=4.0)


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.delete(settings.events_stream, settings.events_stream + ":dead")
    await client.aclose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Litestar]:
    application = create_app(settings)
    async with Lifespan(application):
        yield application


async def new_account(settings: Settings, prefix: str = "acct") -> Account:
    account_id = f"{prefix}_{uuid.uuid4().hex[:12]}"
    token, _ = await tokens.create_token(settings, account_id)
    return Account(account_id, token)


@pytest.fixture
async def account(settings: Settings) -> Account:
    return await new_account(settings)


@pytest.fixture
async def other_account(settings: Settings) -> Account:
    return await new_account(settings, "other")


@pytest.fixture
async def api(app: Litestar, account: Account) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` that authenticates as `account`."""
    async with client_for(app, account.token) as client:
        yield client


@pytest.fixture
async def other_api(app: Litestar, other_account: Account) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, other_account.token) as client:
        yield client


@pytest.fixture
async def anonymous(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the run's database, for checking what was (not) stored."""
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
def ci_report(capsys: pytest.CaptureFixture[str]):
    """A print that reaches CI's output whatever pytest captures (-q or not, passed or failed)."""

    def report(line: str) -> None:
        with capsys.disabled():
            print(f"\n{line}")

    return report


async def wait_for(condition, timeout: float = 5.0, interval: float = 0.02):
    """Poll `condition()` (sync or async) until it returns a truthy value or `timeout` passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
