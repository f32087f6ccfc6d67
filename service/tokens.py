"""API tokens: issue, list and revoke; only SHA-256 hashes are stored.

A token is `cvk_` and 40 base62 characters from `secrets` (about 238 bits). `create` returns it
once; nothing can show it again. Revocation takes effect within the authenticator's cache
window (5 s) on every replica.
"""

from __future__ import annotations

import hashlib
import re

import asyncpg

from service.ids import new_id, random_part
from service.settings import Settings
from service.store import api_tokens
from service.store.api_tokens import TokenRecord

TOKEN_PREFIX = "cvk_"
TOKEN_RANDOM_LENGTH = 40
TOKEN_ID_PREFIX = "tok_"
ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The shape of every token `new_token` makes: anything else is unknown without asking the database.
TOKEN_SHAPE = re.compile(rb"cvk_[0-9A-Za-z]{%d}" % TOKEN_RANDOM_LENGTH)


class TokenError(ValueError):
    """A token command that cannot be carried out as asked."""


def hash_token(token: bytes) -> bytes:
    """What is stored of a token, and what a bearer check looks up."""
    return hashlib.sha256(token).digest()


def new_token() -> str:
    return TOKEN_PREFIX + random_part(TOKEN_RANDOM_LENGTH)


def check_account_id(account_id: str) -> str:
    if ACCOUNT_ID.fullmatch(account_id) is None:
        raise TokenError("an account id is 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
    return account_id


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout,
                                 command_timeout=settings.db_statement_timeout)


async def create_token(settings: Settings, account_id: str) -> tuple[str, TokenRecord]:
    """A new token for `account_id`: (the token, shown only now; its stored record)."""
    check_account_id(account_id)
    token = new_token()
    connection = await _connect(settings)
    try:
        record = await api_tokens.insert_token(connection, TOKEN_ID_PREFIX + new_id(), account_id,
                                               hash_token(token.encode()))
    finally:
        await connection.close()
    return token, record


async def list_tokens(settings: Settings, account_id: str) -> list[TokenRecord]:
    check_account_id(account_id)
    connection = await _connect(settings)
    try:
        return await api_tokens.fetch_tokens(connection, account_id)
    finally:
        await connection.close()


async def revoke_token(settings: Settings, token_id: str) -> TokenRecord:
    """Revoke a token by id (revoking it again keeps the first revocation time)."""
    connection = await _connect(settings)
    try:
        record = await api_tokens.revoke_token(connection, token_id)
    finally:
        await connection.close()
    if record is None:
        raise TokenError(f"there is no token {token_id!r}")
    return record
