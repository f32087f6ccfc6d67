"""The rules of the conversations API, between the decoded request and the store.

Exactly one of contact_id / group_id on create, 409 naming the field and the existing
conversation, updates that change nothing write nothing, If-Match preconditions, the list's
cursor and filter attributes. Every write and its event go to PostgreSQL as one statement
(store/queries.py), so they commit or roll back together. Each operation runs on the executor
it is given: the pool, or the transaction of an idempotent request. No SQL text, no Litestar types.
"""

from __future__ import annotations

from msgspec import UNSET

from service.errors import (
    ConcurrentChange,
    ConversationNotFound,
    DuplicateConversation,
    InvalidRequest,
    PreconditionFailed,
)
from service.ids import ID_PATTERN
from service.model import (
    ActivityPage,
    Conversation,
    ConversationCreate,
    ConversationPage,
    ConversationUpdate,
    ListParams,
    Versioned,
)
from service.store import queries
from service.store.database import Executor
from service.store.queries import ActivityPosition

# A create whose contact was taken, but whose holder is gone by the time we look it up (deleted
# in between), is simply tried again; this many times before giving up.
CREATE_ATTEMPTS = 5


class Conversations:
    """The API's operations on one account's conversations, writing events to `events_stream` (in
    `events_partitions` partitions).

    `expected_versions` is an If-Match precondition: None for none, else the versions a write
    may apply to (an empty list matches nothing).
    """

    __slots__ = ("events_partitions", "events_stream")

    def __init__(self, events_stream: str, events_partitions: int = 1) -> None:
        self.events_stream = events_stream
        self.events_partitions = events_partitions

    async def create(self, db: Executor, account_id: str, request: ConversationCreate) -> Versioned:
        if (request.contact_id is None) == (request.group_id is None):
            both = request.contact_id is not None
            raise InvalidRequest(
                "give either contact_id or group_id, not both" if both else "give either contact_id or group_id",
                param="group_id" if both else "contact_id",
            )
        param, party_id = (("contact_id", request.contact_id) if request.contact_id is not None
                           else ("group_id", request.group_id))
        for _ in range(CREATE_ATTEMPTS):
            created = await queries.insert_conversation(db, self.events_stream, account_id,
                                                        request.contact_id, request.group_id, self.events_partitions)
            if created is not None:
                return created
            existing = await queries.fetch_id_by_party(db, account_id, param, party_id)  # type: ignore[arg-type]
            if existing is not None:
                raise DuplicateConversation(param, existing)
        raise ConcurrentChange(
            f"the conversation with this {param} is being created and deleted concurrently; retry", param=param)

    async def retrieve(self, db: Executor, account_id: str, conversation_id: str) -> Versioned:
        found = await queries.fetch_conversation(db, account_id, conversation_id)
        if found is None:
            raise ConversationNotFound(conversation_id)
        return found

    async def update(self, db: Executor, account_id: str, conversation_id: str, request: ConversationUpdate,
                     expected_versions: list[int] | None = None) -> Versioned:
        """Apply the given attributes; a body that changes nothing returns the stored conversation."""
        outcome = await queries.update_conversation(db, self.events_stream, account_id, conversation_id, request,
                                                    expected_versions, self.events_partitions)
        if outcome is None:
            raise ConversationNotFound(conversation_id)
        current, precondition_held = outcome
        if not precondition_held:
            raise PreconditionFailed(current[1])
        return current

    async def delete(self, db: Executor, account_id: str, conversation_id: str,
                     expected_versions: list[int] | None = None) -> None:
        deleted = await queries.delete_conversation(db, self.events_stream, account_id, conversation_id,
                                                    expected_versions, self.events_partitions)
        if deleted is None:
            raise ConversationNotFound(conversation_id)
        if not deleted:
            found = await queries.fetch_conversation(db, account_id, conversation_id)
            raise PreconditionFailed(found[1]) if found is not None else ConversationNotFound(conversation_id)

    async def list(self, db: Executor, account_id: str, params: ListParams) -> ConversationPage | ActivityPage:
        """A page in creation order (cursors are ids) or activity order (cursors are the pages' own)."""
        if params.starting_after is not UNSET and params.ending_before is not UNSET:
            raise InvalidRequest("give starting_after or ending_before, not both", param="ending_before")
        direction: str | None = None
        cursor: str | None = None
        if params.starting_after is not UNSET:
            direction, cursor = "starting_after", params.starting_after
        elif params.ending_before is not UNSET:
            direction, cursor = "ending_before", params.ending_before
        filters = queries.ListFilters(*(None if getattr(params, name) is UNSET else getattr(params, name)
                                        for name in queries.ListFilters._fields))
        if params.order == "activity":
            position = None if cursor is None else parse_activity_cursor(cursor, direction)  # type: ignore[arg-type]
            data, has_more = await queries.fetch_activity_page(db, account_id, params.limit, direction, position,
                                                               filters)
            return ActivityPage(has_more=has_more, data=data,
                                next_cursor=activity_cursor(data[-1]) if data else None,
                                previous_cursor=activity_cursor(data[0]) if data else None)
        if cursor is not None and ID_PATTERN.fullmatch(cursor) is None:
            raise InvalidRequest(f"{direction} must be a conversation id in creation order; the cursors that "
                                 "order=activity pages return only page that order", param=direction)
        data, has_more = await queries.fetch_page(db, account_id, params.limit, direction, cursor, filters)
        return ConversationPage(has_more=has_more, data=data)


# Activity order: pinned first, then by last_active_at, newest first (never-active ones after
# every active one), then by id, newest first. A page's cursor carries its end's position in
# that order, since a conversation's position changes when it is pinned or becomes active.
_NEVER_ACTIVE = "n"


def activity_cursor(conversation: Conversation) -> str:
    active = _NEVER_ACTIVE if conversation.last_active_at is None else str(conversation.last_active_at)
    return f"act_{int(conversation.is_pinned)}_{active}_{conversation.id}"


def parse_activity_cursor(cursor: str, param: str) -> ActivityPosition:
    """The position an activity cursor names; its shape was checked by the ListParams type."""
    if not cursor.startswith("act_"):
        raise InvalidRequest(f"with order=activity, {param} must be a next_cursor or previous_cursor that a page "
                             "returned, not a conversation id", param=param)
    _, pinned, active, conversation_id = cursor.split("_")
    return ActivityPosition(pinned == "1", None if active == _NEVER_ACTIVE else int(active), conversation_id)
