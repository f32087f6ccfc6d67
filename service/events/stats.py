"""What the relay has done since the process started: read by /ready and /metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.events.durability import Durability


@dataclass
class RelayStats:
    """Written by the relay's parts (leadership, publisher, retention); read by the operations endpoints."""

    events_published: int = 0
    unread_dropped: int = 0
    is_leader: bool = False
    durability: Durability | None = None
    last_publish_at: float | None = None
    redis_failing_since: float | None = None
    database_failing_since: float | None = None
    stream_length: int | None = None
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (lag, pending)
