"""Bearer-token authentication for /v1: SHA-256 lookup, with answers remembered for at most 5 seconds.

A token is looked up by the SHA-256 of its bytes (only hashes are stored). A token that does not
have the shape of the ones `tokens create` makes is unknown without a lookup. An answer is kept
in this process for `token_cache_seconds` (at most 5, the contract's revocation window): a known
token's account, so most requests cost no database round trip, and an unknown token's absence,
so a client repeating a bad token costs one lookup per window, not one per request. Caching
absence is safe because tokens are unguessable: a token nobody has issued yet cannot have been
tried. Each cache holds at most `cache_size` tokens, the oldest forgotten first, keyed by the
token itself, so a cached answer costs no hash (only tokens of the issued shape, 44 bytes, are
ever kept). Never reads request bodies, and never logs or echoes a token.
"""

from __future__ import annotations

import time

from service.errors import Unauthenticated
from service.settings import TOKEN_REVOCATION_WINDOW_SECONDS
from service.store import api_tokens
from service.store.database import Database
from service.tokens import TOKEN_SHAPE, hash_token

_UNKNOWN_TOKEN = "the API token is unknown or has been revoked"


def _remember(cache: dict[bytes, tuple[str | None, float]], size: int, token: bytes,
              answer: tuple[str | None, float]) -> None:
    """Insert at the end; entries share one lifetime, so the first is the oldest to forget."""
    cache.pop(token, None)
    while len(cache) >= size:
        del cache[next(iter(cache))]
    cache[token] = answer


class TokenAuthenticator:
    """Maps an Authorization header to the account its token belongs to."""

    def __init__(self, db: Database, cache_seconds: float, cache_size: int) -> None:
        self._db = db
        self._cache_seconds = min(cache_seconds, TOKEN_REVOCATION_WINDOW_SECONDS)
        self._cache_size = cache_size
        self._known: dict[bytes, tuple[str | None, float]] = {}
        self._unknown: dict[bytes, tuple[str | None, float]] = {}

    async def account_for(self, authorization: bytes | None) -> str:
        """The account of the bearer token in `authorization`, or Unauthenticated."""
        if authorization is None:
            raise Unauthenticated("send your API token as Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        now = time.monotonic()
        cached = self._known.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]  # type: ignore[return-value]
        if TOKEN_SHAPE.fullmatch(token) is None:  # checked off the hot path: known tokens have the shape
            raise Unauthenticated(_UNKNOWN_TOKEN)
        absent = self._unknown.get(token)
        if absent is not None and absent[1] > now:
            raise Unauthenticated(_UNKNOWN_TOKEN)
        account_id = await api_tokens.fetch_account_for_token(self._db, hash_token(token))
        until = now + self._cache_seconds
        if account_id is None:
            self._known.pop(token, None)
            _remember(self._unknown, self._cache_size, token, (None, until))
            raise Unauthenticated(_UNKNOWN_TOKEN)
        self._unknown.pop(token, None)
        _remember(self._known, self._cache_size, token, (account_id, until))
        return account_id
