"""Time-ordered identifiers (docs/api.md §1): 8 base62 characters of milliseconds, then 8 random ones.

Conversation ids get their time part from the database clock inside the writing statement
(`base62_millis()` in schema.sql), so that the id and `created_at` come from one clock; their
created event reuses that time part. The ids of update and delete events, which nothing orders
by, are made here from this process's clock, sparing the writing statement a PL/pgSQL call.
The application supplies every random part, from os.urandom. This module holds the Python side
of the scheme: the random part, the encoding for ids made outside the database, and the
decoding tests use to check both agree.
"""

from __future__ import annotations

import os
import re
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TIME_LENGTH = 8
RANDOM_LENGTH = 8
ID_LENGTH = TIME_LENGTH + RANDOM_LENGTH
# The one spelling of an id's shape: the HTTP path check, the cursor type and the documents use it.
ID_REGEX = f"[0-9A-Za-z]{{{ID_LENGTH}}}"
ID_PATTERN = re.compile(ID_REGEX)

_ALPHABET_BYTES = ALPHABET.encode()
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


def encode_millis(millis: int) -> str:
    """The 8-character, zero-padded base62 form of `millis`, so that byte order is time order."""
    if not 0 <= millis < 62**TIME_LENGTH:
        raise ValueError(f"{millis} ms does not fit in {TIME_LENGTH} base62 characters")
    digits = []
    for _ in range(TIME_LENGTH):
        millis, digit = divmod(millis, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def decode_millis(identifier: str) -> int:
    """The creation time in milliseconds that an id's first 8 characters carry."""
    millis = 0
    for char in identifier[:TIME_LENGTH]:
        millis = millis * 62 + _INDEX[char]
    return millis


class _RandomBytes:
    """os.urandom read 4 KiB at a time: one getrandom() call per ~200 ids, not one per id.

    The bytes are as random as os.urandom's; a forked child drops what its parent had read,
    so no two processes hand out the same bytes.
    """

    __slots__ = ("_buffer", "_offset")

    def __init__(self) -> None:
        self._buffer = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        if self._offset + count > len(self._buffer):
            self._buffer, self._offset = os.urandom(max(4096, count)), 0
        start = self._offset
        self._offset += count
        return self._buffer[start:self._offset]

    def forget(self) -> None:
        self._buffer, self._offset = b"", 0


_random_bytes = _RandomBytes()
os.register_at_fork(after_in_child=_random_bytes.forget)
# Byte b < 248 (= 4 * 62) becomes ALPHABET[b % 62]; bytes 248-255 are dropped, which keeps
# every character equally likely.
_TO_ALPHABET = bytes(_ALPHABET_BYTES[b % 62] for b in range(256))
_REJECTED = bytes(range(248, 256))


def random_part(length: int = RANDOM_LENGTH) -> str:
    """`length` characters of the base62 alphabet, uniformly random, from the OS's CSPRNG."""
    out = b""
    while len(out) < length:
        out += _random_bytes.take(length + 4).translate(_TO_ALPHABET, _REJECTED)
    return out[:length].decode()


_last_time_part = [-1, ""]  # [millisecond, its encoding]: requests share it under load


def _time_part(millis: int) -> str:
    """encode_millis, remembered for the last millisecond asked for."""
    if _last_time_part[0] != millis:
        _last_time_part[:] = millis, encode_millis(millis)
    return _last_time_part[1]  # type: ignore[return-value]


def new_id(now: float | None = None) -> str:
    """A 16-character id made from this process's clock (for ids the database does not make)."""
    return _time_part(int((time.time() if now is None else now) * 1000)) + random_part()


EVENT_ID_PREFIX = "evt_"


def new_event_id() -> str:
    """`evt_` and a 16-character id from this process's clock (docs/api.md §6)."""
    return EVENT_ID_PREFIX + new_id()
