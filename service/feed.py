"""The rules of the events feed (GET /v1/events): an account's published events, newest first.

Cursors are event ids, and a cursor is looked up to find its place in the feed's order (the
order in which events became visible, which the store keeps commit-order safe). An id from
before the feed's window is a 410 telling the client to resync; an id the account's feed does
not hold (another account's, or never issued) is a 400 naming the cursor, so nothing tells one
account about another's events. No SQL text, no Litestar types.
"""

from __future__ import annotations

import time

from msgspec import UNSET

from service.errors import CursorExpired, EventNotFound, InvalidRequest
from service.ids import EVENT_ID_PREFIX, decode_millis
from service.model import ConversationEvent, EventListParams, EventPage
from service.store import event_log
from service.store.database import Executor
from service.store.event_log import FeedPosition

DAY_SECONDS = 86_400


class Feed:
    """The events feed of one account at a time, keeping events for `window_days`."""

    __slots__ = ("window_days",)

    def __init__(self, window_days: int) -> None:
        self.window_days = window_days

    def _happened_at(self, event_id: str) -> int:
        return decode_millis(event_id.removeprefix(EVENT_ID_PREFIX)) // 1000

    def _window_start(self) -> int:
        return int(time.time()) - self.window_days * DAY_SECONDS

    def _is_past_window(self, seconds: int) -> bool:
        return seconds < self._window_start()

    async def list(self, db: Executor, account_id: str, params: EventListParams) -> EventPage:
        if params.starting_after is not UNSET and params.ending_before is not UNSET:
            raise InvalidRequest("give starting_after or ending_before, not both", param="ending_before")
        direction: str | None = None
        position: FeedPosition | None = None
        if params.starting_after is not UNSET:
            direction = "starting_after"
            position = await self._position_of(db, account_id, params.starting_after, direction)
        elif params.ending_before is not UNSET:
            direction = "ending_before"
            position = await self._position_of(db, account_id, params.ending_before, direction)
        filters = event_log.FeedFilters(type=None if params.type is UNSET else params.type,
                                        conversation_id=None if params.conversation_id is UNSET
                                        else params.conversation_id)
        data, has_more = await event_log.fetch_feed(db, account_id, params.limit, direction, position, filters,
                                                    self._window_start())
        return EventPage(has_more=has_more, data=data)

    async def _position_of(self, db: Executor, account_id: str, event_id: str, param: str) -> FeedPosition:
        happened_at = self._happened_at(event_id)
        if self._is_past_window(happened_at):
            raise CursorExpired(param, self.window_days)
        found = await event_log.fetch_event(db, account_id, event_id, happened_at)
        if found is None:
            raise InvalidRequest(f"{param} must be the id of an event in this account's feed; there is no event "
                                 f"{event_id!r} in it", param=param)
        return found[0]

    async def retrieve(self, db: Executor, account_id: str, event_id: str) -> ConversationEvent:
        happened_at = self._happened_at(event_id)
        found = None if self._is_past_window(happened_at) else await event_log.fetch_event(
            db, account_id, event_id, happened_at)
        if found is None:
            raise EventNotFound(event_id)
        return found[1]
