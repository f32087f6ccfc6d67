"""Every SQL statement on `api_tokens`: the bearer check's lookup and the token CLI's writes.

Only a token's SHA-256 is stored; lookups are by the unique `api_tokens_token_hash_key`, the CLI's
listing by `api_tokens_account_idx`, revocation by the primary key.
"""

from __future__ import annotations

import asyncpg
import msgspec

from service.store.database import NOW_SECONDS, Executor

SELECT_ACCOUNT_FOR_TOKEN = "SELECT account_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
INSERT_TOKEN = ("INSERT INTO api_tokens (id, account_id, token_hash, created_at) "
                f"VALUES ($1, $2, $3, {NOW_SECONDS}) RETURNING created_at")
SELECT_TOKENS_OF_ACCOUNT = ("SELECT id, account_id, created_at, revoked_at FROM api_tokens "
                            "WHERE account_id = $1 ORDER BY id")
REVOKE_TOKEN = (f"UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, {NOW_SECONDS}) "
                "WHERE id = $1 RETURNING id, account_id, created_at, revoked_at")


class TokenRecord(msgspec.Struct):
    """A token as stored, without its hash: what `tokens list` shows."""

    id: str
    account_id: str
    created_at: int
    revoked_at: int | None


async def fetch_account_for_token(db: Executor, token_hash: bytes) -> str | None:
    return await db.fetchval(SELECT_ACCOUNT_FOR_TOKEN, token_hash)


async def insert_token(connection: asyncpg.Connection, token_id: str, account_id: str, token_hash: bytes
                       ) -> TokenRecord:
    created_at = await connection.fetchval(INSERT_TOKEN, token_id, account_id, token_hash)
    return TokenRecord(token_id, account_id, created_at, None)


async def fetch_tokens(connection: asyncpg.Connection, account_id: str) -> list[TokenRecord]:
    return [TokenRecord(*row) for row in await connection.fetch(SELECT_TOKENS_OF_ACCOUNT, account_id)]


async def revoke_token(connection: asyncpg.Connection, token_id: str) -> TokenRecord | None:
    row = await connection.fetchrow(REVOKE_TOKEN, token_id)
    return None if row is None else TokenRecord(*row)
