"""Bearer-token authentication for /v1: SHA-256 lookup, cached for at most 5 seconds.

A token is looked up by the SHA-256 of its bytes (only hashes are stored). A hit is kept in
this process for `token_cache_seconds` (at most 5, the contract's revocation window), so most
requests cost no database round trip. Misses are never cached: a new token works at once.
Never reads request bodies, and never logs or echoes a token.
"""

from __future__ import annotations

import time

from service.errors import Unauthenticated
from service.store import api_tokens
from service.store.database import Database
from service.tokens import hash_token

MAX_CACHED_TOKENS = 10_000
REVOCATION_WINDOW_SECONDS = 5.0


class TokenAuthenticator:
    """Maps an Authorization header to the account its token belongs to."""

    def __init__(self, db: Database, cache_seconds: float = REVOCATION_WINDOW_SECONDS) -> None:
        self._db = db
        self._cache_seconds = min(cache_seconds, REVOCATION_WINDOW_SECONDS)
        self._cache: dict[bytes, tuple[str, float]] = {}

    async def account_for(self, authorization: bytes | None) -> str:
        """The account of the bearer token in `authorization`, or Unauthenticated."""
        if authorization is None:
            raise Unauthenticated("send your API token as Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        account_id = await api_tokens.fetch_account_for_token(self._db, digest)
        if account_id is None:
            self._cache.pop(digest, None)
            raise Unauthenticated("the API token is unknown or has been revoked")
        if len(self._cache) >= MAX_CACHED_TOKENS:
            self._evict_expired(now)
        self._cache[digest] = (account_id, now + self._cache_seconds)
        return account_id

    def _evict_expired(self, now: float) -> None:
        expired = [digest for digest, (_, until) in self._cache.items() if until <= now]
        for digest in expired:
            del self._cache[digest]
        if len(self._cache) >= MAX_CACHED_TOKENS:
            self._cache.clear()

