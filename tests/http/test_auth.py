"""docs/api.md §2: bearer tokens, stored only as SHA-256, issued, listed and revoked by the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from service.http.app import create_app
from service.tokens import new_token
from tests.asgi import Lifespan, client_for
from tests.conftest import wait_for
from tests.http_helpers import CONVERSATIONS, assert_error, create_conversation, item, unique

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT = 60


async def cli(settings, *args: str) -> tuple[int, str, str]:
    """Run `python -m service <args>` against the test database: (exit code, stdout, stderr)."""
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def cli_create_token(settings, account_id: str) -> str:
    code, stdout, stderr = await cli(settings, "tokens", "create", "--account", account_id)
    assert code == 0, stderr
    return stdout.removesuffix("\n")


def new_account_id() -> str:
    return f"cli_{uuid.uuid4().hex[:12]}"


async def token_id_of(db, token: str) -> str:
    token_id = await db.fetchval("SELECT id FROM api_tokens WHERE token_hash = $1",
                                 hashlib.sha256(token.encode()).digest())
    assert token_id is not None
    return token_id


# ---------------------------------------------------------------------------------------- 401


@pytest.mark.parametrize("authorization", [
    None,
    "",
    "Basic dXNlcjpwYXNz",
    "Token abc",
    "Bearer",
    "Bearer ",
    "Bearer    ",
    "Bearer unknown-token",
    "Bearer cvk_" + "0" * 40,
    "bearer",
])
async def test_missing_malformed_or_unknown_token_is_401_with_www_authenticate_bearer(app, authorization) -> None:
    async with client_for(app) as client:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await client.get(CONVERSATIONS, headers=headers)
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_the_token_under_another_scheme_is_401(app, account) -> None:
    async with client_for(app) as client:
        response = await client.get(CONVERSATIONS, headers={"Authorization": f"Basic {account.token}"})
        assert_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.get(CONVERSATIONS, headers={"Authorization": f"Bearer {account.token}"})
                ).status_code == 200


async def test_a_token_with_one_character_changed_is_401(app, account) -> None:
    tampered = account.token[:-1] + ("A" if account.token[-1] != "A" else "B")
    async with client_for(app, tampered) as client:
        response = await client.get(CONVERSATIONS)
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/conversations/0000000000000000"),
                                              ("PUT", "/v1/conversations/0000000000000000"),
                                              ("PATCH", "/v1/conversations/0000000000000000"),
                                              ("DELETE", "/v1/conversations/0000000000000000"),
                                              ("POST", CONVERSATIONS)])
async def test_every_v1_call_needs_a_token(anonymous, method, path) -> None:
    response = await anonymous.request(method, path)
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_an_unauthenticated_create_stores_nothing(anonymous, db) -> None:
    contact = unique()
    response = await anonymous.post(CONVERSATIONS, json={"contact_id": contact})
    assert_error(response, 401)
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE contact_id = $1", contact) == 0


async def issue_directly(db, token: str, account_id: str) -> None:
    """Store `token` as issued, as `tokens create` would, after a client already tried it."""
    await db.execute("INSERT INTO api_tokens (id, account_id, token_hash, created_at) VALUES ($1, $2, $3, 0)",
                     f"tok_{uuid.uuid4().hex[:16]}", account_id, hashlib.sha256(token.encode()).digest())


async def test_an_unknown_token_is_remembered_as_unknown_for_the_cache_window(settings, db) -> None:
    """A repeated bad token costs one lookup per window. Safe, since a token that no one has issued
    yet cannot have been tried: here one is issued behind the service's back to make it visible."""
    settings = msgspec.structs.replace(settings, token_cache_seconds=1.0)
    token = new_token()
    async with Lifespan(app := create_app(settings)), client_for(app, token) as client:
        assert_error(await client.get(CONVERSATIONS), 401)
        await issue_directly(db, token, new_account_id())
        tried = time.monotonic()
        assert_error(await client.get(CONVERSATIONS), 401)  # still remembered as unknown
        await wait_for(lambda: _answers(client, 200), timeout=3.0)
        assert time.monotonic() - tried >= 0.5


async def _answers(client, status: int) -> bool:
    return (await client.get(CONVERSATIONS)).status_code == status


async def test_the_unknown_token_cache_forgets_the_oldest_past_its_size(settings, db) -> None:
    settings = msgspec.structs.replace(settings, token_cache_size=5)
    tokens = [new_token() for _ in range(6)]
    async with Lifespan(app := create_app(settings)), client_for(app) as client:
        for token in tokens:
            assert_error(await client.get(CONVERSATIONS, headers={"Authorization": f"Bearer {token}"}), 401)
        for token in (tokens[0], tokens[-1]):
            await issue_directly(db, token, new_account_id())
        oldest = await client.get(CONVERSATIONS, headers={"Authorization": f"Bearer {tokens[0]}"})
        newest = await client.get(CONVERSATIONS, headers={"Authorization": f"Bearer {tokens[-1]}"})
    assert oldest.status_code == 200  # forgotten: looked up again, and found
    assert_error(newest, 401)  # still remembered as unknown


async def test_health_needs_no_token(anonymous) -> None:
    response = await anonymous.get("/health")
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
async def test_tokens_create_prints_exactly_one_line_the_token(app, settings, db) -> None:
    account_id = new_account_id()
    code, stdout, stderr = await cli(settings, "tokens", "create", "--account", account_id)
    assert code == 0, stderr
    assert stdout.endswith("\n")
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    token = lines[0]
    assert token == token.strip()
    assert re.fullmatch(r"\S{20,}", token), token
    assert token not in stderr
    # The token is real: it authenticates as that account.
    async with client_for(app, token) as client:
        created = await create_conversation(client)
    owner = await db.fetchval("SELECT account_id FROM conversations WHERE id = $1", created["id"])
    assert owner == account_id


@pytest.mark.slow
async def test_tokens_create_issues_a_different_token_each_time(settings) -> None:
    account_id = new_account_id()
    first = await cli_create_token(settings, account_id)
    second = await cli_create_token(settings, account_id)
    assert first != second


@pytest.mark.slow
async def test_tokens_list_shows_ids_and_times_but_never_the_secret(settings, db) -> None:
    account_id = new_account_id()
    tokens = [await cli_create_token(settings, account_id) for _ in range(2)]
    other = await cli_create_token(settings, new_account_id())
    code, stdout, stderr = await cli(settings, "tokens", "list", "--account", account_id)
    assert code == 0, stderr
    for token in tokens:
        token_id = await token_id_of(db, token)
        created_at = await db.fetchval("SELECT created_at FROM api_tokens WHERE id = $1", token_id)
        line = next((line for line in stdout.splitlines() if token_id in line), None)
        assert line is not None, stdout
        assert str(created_at) in line, line
        assert token not in stdout
        assert token not in stderr
        assert hashlib.sha256(token.encode()).hexdigest() not in stdout
    # Only this account's tokens are listed.
    assert await token_id_of(db, other) not in stdout
    assert len([line for line in stdout.splitlines() if line.strip()]) == 2, stdout


@pytest.mark.slow
async def test_tokens_list_shows_the_revocation_time(settings, db) -> None:
    account_id = new_account_id()
    token = await cli_create_token(settings, account_id)
    token_id = await token_id_of(db, token)
    code, _, stderr = await cli(settings, "tokens", "revoke", token_id)
    assert code == 0, stderr
    revoked_at = await db.fetchval("SELECT revoked_at FROM api_tokens WHERE id = $1", token_id)
    assert revoked_at is not None
    code, stdout, stderr = await cli(settings, "tokens", "list", "--account", account_id)
    assert code == 0, stderr
    line = next(line for line in stdout.splitlines() if token_id in line)
    assert str(revoked_at) in line
    assert token not in stdout


@pytest.mark.slow
async def test_tokens_revoke_makes_the_token_stop_working_within_5_seconds(app, settings, db) -> None:
    account_id = new_account_id()
    token = await cli_create_token(settings, account_id)
    token_id = await token_id_of(db, token)
    async with client_for(app, token) as client:
        # It works right before the revocation (and is now in any cache there is).
        assert (await client.get(CONVERSATIONS)).status_code == 200
        created = await create_conversation(client)
        assert (await client.get(CONVERSATIONS)).status_code == 200
        code, _, stderr = await cli(settings, "tokens", "revoke", token_id)
        assert code == 0, stderr

        async def rejected() -> bool:
            return (await client.get(CONVERSATIONS)).status_code == 401

        await wait_for(rejected, timeout=6.0, interval=0.1)
        for method, url in (("GET", CONVERSATIONS), ("GET", item(created["id"])),
                            ("DELETE", item(created["id"]))):
            response = await client.request(method, url)
            assert_error(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
    assert await db.fetchval("SELECT count(*) FROM conversations WHERE id = $1", created["id"]) == 1


@pytest.mark.slow
async def test_revoking_one_token_leaves_the_accounts_other_tokens_working(app, settings, db) -> None:
    account_id = new_account_id()
    revoked, kept = await cli_create_token(settings, account_id), await cli_create_token(settings, account_id)
    async with client_for(app, revoked) as revoked_client, client_for(app, kept) as kept_client:
        assert (await revoked_client.get(CONVERSATIONS)).status_code == 200
        code, _, stderr = await cli(settings, "tokens", "revoke", await token_id_of(db, revoked))
        assert code == 0, stderr

        async def rejected() -> bool:
            return (await revoked_client.get(CONVERSATIONS)).status_code == 401

        await wait_for(rejected, timeout=6.0, interval=0.1)
        assert (await kept_client.get(CONVERSATIONS)).status_code == 200


@pytest.mark.slow
async def test_tokens_revoke_of_an_unknown_id_fails(settings) -> None:
    code, stdout, stderr = await cli(settings, "tokens", "revoke", "tok_doesnotexist")
    assert code != 0
    assert stderr.strip()
    assert stdout == ""


# ------------------------------------------------------------------------------------ storage


async def test_tokens_are_stored_only_as_sha256(account, db) -> None:
    row = await db.fetchrow("SELECT * FROM api_tokens WHERE account_id = $1", account.id)
    assert row is not None
    assert bytes(row["token_hash"]) == hashlib.sha256(account.token.encode()).digest()
    forms = {account.token, account.token.encode().hex(), account.token[4:]}
    for column, value in dict(row).items():
        text = value.hex() if isinstance(value, bytes) else str(value)
        for form in forms:
            assert form not in text, column


@pytest.mark.slow
async def test_cli_issued_tokens_are_stored_only_as_sha256(settings, db) -> None:
    account_id = new_account_id()
    token = await cli_create_token(settings, account_id)
    rows = await db.fetch("SELECT *, row_to_json(t)::text AS everything FROM api_tokens t WHERE account_id = $1",
                          account_id)
    assert len(rows) == 1
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert token not in rows[0]["everything"]
    assert token.encode().hex() not in rows[0]["everything"]
    # And nowhere else in the table either.
    assert await db.fetchval("SELECT count(*) FROM api_tokens t WHERE row_to_json(t)::text LIKE '%' || $1 || '%'",
                             token) == 0
