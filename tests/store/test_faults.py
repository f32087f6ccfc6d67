"""docs/api.md §5: 503 with Retry-After when PostgreSQL is unreachable, 500 without details otherwise."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import msgspec
import pytest

from service.http.app import create_app
from service.settings import Settings
from service.tokens import new_token
from tests.asgi import Lifespan, client_for
from tests.conftest import Account, Backends, migrated_database, new_account, wait_for
from tests.tcp_proxy import TcpProxy, url_through


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[TcpProxy]:
    target = urlsplit(settings.database_url)
    tcp_proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    yield tcp_proxy
    await tcp_proxy.close()


def through(settings: Settings, proxy: TcpProxy) -> Settings:
    """The same settings, with the request pool (not the relay) reaching PostgreSQL via `proxy`."""
    proxied = url_through(settings.database_url, proxy)
    return msgspec.structs.replace(settings, database_url=proxied, relay_database_url=settings.database_url,
                                   db_connect_timeout=1.0, db_acquire_timeout=2.0, db_statement_timeout=2.0)


async def test_calls_answer_503_with_retry_after_while_postgres_is_unreachable_and_recover(
        settings: Settings, account: Account, proxy: TcpProxy):
    async with Lifespan(app := create_app(through(settings, proxy))), client_for(app, account.token) as api:
        created = await api.post("/v1/conversations", json={"contact_id": "before_the_outage"})
        assert created.status_code == 201
        path = f"/v1/conversations/{created.json()['id']}"
        await proxy.cut()
        for method, url, body in [("GET", path, None), ("GET", "/v1/conversations", None),
                                  ("PUT", path, {"is_muted": True}), ("POST", "/v1/conversations",
                                                                       {"contact_id": "during"})]:
            started = time.monotonic()
            response = await api.request(method, url, json=body)
            assert time.monotonic() - started < 5
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"type": "api_error", "message": response.json()["message"], "param": None}
        ready = await api.get("/ready")
        assert ready.status_code == 503 and ready.json()["postgres"] == "unreachable"
        assert (await api.get("/health")).status_code == 200
        await proxy.restore()
        recovered_at = time.monotonic()
        await wait_for(lambda: _status(api, path, 200), timeout=10)
        assert time.monotonic() - recovered_at < 10
        assert (await api.get("/ready")).status_code == 200


async def _status(api, path: str, expected: int) -> bool:
    return (await api.get(path)).status_code == expected


async def test_an_unknown_token_during_an_outage_is_503_not_401(settings: Settings, proxy: TcpProxy):
    async with Lifespan(app := create_app(through(settings, proxy))), client_for(app, new_token()) as api:
        await proxy.cut()
        response = await api.get("/v1/conversations")
        assert response.status_code == 503  # we cannot tell a bad token from a good one right now


@pytest.mark.parametrize("token", ["cvk_unknown", "nope", "cvk_" + "0" * 39 + "!", "x" * 44])
async def test_a_token_that_cannot_be_one_is_401_without_asking_the_database(settings: Settings, proxy: TcpProxy,
                                                                              token: str):
    """Not the shape of an issued token: unknown for sure, so no lookup, even with PostgreSQL gone."""
    async with Lifespan(app := create_app(through(settings, proxy))), client_for(app, token) as api:
        await proxy.cut()
        response = await api.get("/v1/conversations")
        assert response.status_code == 401, response.text


@pytest.fixture
async def broken_database(backend_urls: Backends) -> AsyncIterator[str]:
    """A migrated database whose conversations table the test renames away: every query fails."""
    async with migrated_database(backend_urls, "conversations_broken") as url:
        yield url


async def test_an_unexpected_error_is_a_500_without_details_and_logged_with_its_traceback(
        settings: Settings, broken_database: str, caplog):
    settings = msgspec.structs.replace(settings, database_url=broken_database)
    account = await new_account(settings)
    connection = await asyncpg.connect(broken_database)
    await connection.execute("ALTER TABLE conversations RENAME TO conversations_moved")
    await connection.close()
    caplog.set_level(logging.ERROR, logger="service.http.errors")
    async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
        response = await api.get("/v1/conversations")
    assert response.status_code == 500
    assert response.json() == {"type": "api_error",
                               "message": "an unexpected error occurred on our side; it has been logged",
                               "param": None}
    assert "conversations" not in response.text and "SELECT" not in response.text
    [record] = [r for r in caplog.records if r.name == "service.http.errors"]
    assert record.exc_info is not None and "UndefinedTable" in type(record.exc_info[1]).__name__
    assert "/v1/conversations" in record.getMessage()


async def test_a_call_that_cannot_get_a_pooled_connection_in_time_is_a_503(settings: Settings, account: Account):
    settings = msgspec.structs.replace(settings, db_pool_size=2, db_acquire_timeout=0.5)
    async with Lifespan(app := create_app(settings)), client_for(app, account.token) as api:
        assert (await api.get("/v1/conversations")).status_code == 200  # the token is cached now
        database = app.state.db
        held = [await database.acquire(), await database.acquire()]  # the whole pool, checked out
        try:
            started = time.monotonic()
            response = await api.get("/v1/conversations")
            waited = time.monotonic() - started
        finally:
            for connection in held:
                database.release(connection)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert 0.4 < waited < 2
        assert (await api.get("/v1/conversations")).status_code == 200
