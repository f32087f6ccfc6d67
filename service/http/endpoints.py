"""The operations of /v1: decode, apply the rules, encode the reply.

Each takes the Call, decodes what it accepts (an unknown query or body attribute is a 400),
and hands its database work to `call.run`. Responses carrying one conversation have an ETag
(its version); If-Match makes a write conditional on it. `ROUTES` is the dispatch table the
mount routes by and the OpenAPI document describes, `ITEM_IDS` the shape of each item route's
id (one that cannot be an id cannot exist: a 404). No SQL, no Redis, no error JSON by hand.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from service.errors import ApiError, ConversationNotFound, EventNotFound
from service.http.call import Call
from service.http.reply import Reply
from service.ids import EVENT_ID_PREFIX, ID_PATTERN, ID_REGEX
from service.model import (
    ConversationCreate,
    ConversationUpdate,
    EventListParams,
    ListParams,
    NoAttributes,
    Versioned,
    encode_json,
)
from service.store.database import Executor

MOUNT_PATH = "/v1"
COLLECTION_ROUTE = "/v1/conversations"
ITEM_ROUTE = COLLECTION_ROUTE + "/{conversation_id}"
EVENTS_ROUTE = "/v1/events"
EVENT_ROUTE = EVENTS_ROUTE + "/{event_id}"


def etag_of(version: int) -> str:
    return f'"{version}"'


def conversation_reply(status: int, found: Versioned, location: str | None = None) -> Reply:
    conversation, version = found
    return Reply(status=status, body=encode_json(conversation), location=location, etag=etag_of(version))


async def list_conversations(call: Call) -> Reply:
    page = await call.conversations.list(call.db, call.account_id, call.query(ListParams))
    return Reply(status=200, body=encode_json(page))


async def create_conversation(call: Call) -> Reply:
    call.query(NoAttributes)
    request = await call.body(ConversationCreate)

    async def work(db: Executor) -> Reply:
        created = await call.conversations.create(db, call.account_id, request)
        return conversation_reply(201, created, location=f"{COLLECTION_ROUTE}/{created[0].id}")

    return await call.run(work)


async def retrieve_conversation(call: Call) -> Reply:
    call.query(NoAttributes)
    return conversation_reply(200, await call.conversations.retrieve(call.db, call.account_id, call.item_id))


async def update_conversation(call: Call) -> Reply:
    """PUT and PATCH alike: a partial update."""
    call.query(NoAttributes)
    request = await call.body(ConversationUpdate)
    expected_versions = call.if_match()

    async def work(db: Executor) -> Reply:
        updated = await call.conversations.update(db, call.account_id, call.item_id, request,
                                                  expected_versions)
        return conversation_reply(200, updated)

    return await call.run(work)


async def delete_conversation(call: Call) -> Reply:
    call.query(NoAttributes)
    await call.body(NoAttributes)
    expected_versions = call.if_match()

    async def work(db: Executor) -> Reply:
        await call.conversations.delete(db, call.account_id, call.item_id, expected_versions)
        return Reply(status=204)

    return await call.run(work)


async def list_events(call: Call) -> Reply:
    page = await call.feed.list(call.db, call.account_id, call.query(EventListParams))
    return Reply(status=200, body=encode_json(page))


async def retrieve_event(call: Call) -> Reply:
    call.query(NoAttributes)
    return Reply(status=200, body=encode_json(await call.feed.retrieve(call.db, call.account_id, call.item_id)))


Operation = Callable[[Call], Awaitable[Reply]]

# Route template -> method -> operation.
ROUTES: dict[str, dict[str, Operation]] = {
    COLLECTION_ROUTE: {"GET": list_conversations, "POST": create_conversation},
    ITEM_ROUTE: {"GET": retrieve_conversation, "PUT": update_conversation, "PATCH": update_conversation,
                 "DELETE": delete_conversation},
    EVENTS_ROUTE: {"GET": list_events},
    EVENT_ROUTE: {"GET": retrieve_event},
}
# Item route -> (the pattern of its id, the 404 for an id that cannot be one).
ITEM_IDS: dict[str, tuple[re.Pattern[str], Callable[[str], ApiError]]] = {
    ITEM_ROUTE: (ID_PATTERN, ConversationNotFound),
    EVENT_ROUTE: (re.compile(EVENT_ID_PREFIX + ID_REGEX), EventNotFound),
}
