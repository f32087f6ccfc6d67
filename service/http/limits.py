"""The bounds of the HTTP front door that the contract fixes, each stated once."""

from __future__ import annotations

from service.errors import PayloadTooLarge

MAX_BODY_BYTES = 64 * 1024


def body_too_large() -> PayloadTooLarge:
    return PayloadTooLarge(MAX_BODY_BYTES)
