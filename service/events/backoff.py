"""Bounded exponential delays between retries of the relay (docs/api.md §6.2: 50 ms doubling to 5 s)."""

from __future__ import annotations

BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 5.0


class Backoff:
    """Bounded exponential delays, reset by the first success."""

    def __init__(self) -> None:
        self._next = BACKOFF_FIRST_SECONDS

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, BACKOFF_MAX_SECONDS)
        return delay

    def reset(self) -> None:
        self._next = BACKOFF_FIRST_SECONDS
