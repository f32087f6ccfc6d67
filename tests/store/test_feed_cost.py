"""docs/api.md §6.6: a filtered page of the events feed reads what it shows, however rare the filter's matches.

Without an index of the filter's column, a page filtered on a value few of the account's events
have scans the account's whole log until it has found a page of them. The account here has
50,000 events in this week's partition, of which RARE share one conversation and one type;
each page is measured by PostgreSQL itself (EXPLAIN ANALYZE, shared buffers touched) for the
very statement the service sends, against the same page unfiltered.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.store.event_log import feed_statement
from tests.conftest import Backends, migrated_database

pytestmark = pytest.mark.slow

EVENTS = 50_000
RARE = 10
PAGE = 10
ACCOUNT = "acct_feed_cost"
RARE_CONVERSATION = "rare000000000000"
# A page's own rows (one heap page each at worst) and an index descent per weekly partition.
BUFFERS_LIMIT = 30  # measured: 14 with the filter indexes, 1,064 without


@pytest.fixture(scope="module")
async def busy_log(backend_urls: Backends) -> AsyncIterator[str]:
    async with migrated_database(backend_urls, "feed_cost") as url:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("""
                INSERT INTO event_log (batch, stream, position, event_id, type, account_id, conversation_id,
                                       occurred_at, sequence, schema_version)
                SELECT g, 'events', g, 'evt_' || lpad(g::text, 26, '0'),
                       CASE WHEN g % ($2 / $3) = 0 THEN 'conversation.deleted' ELSE 'conversation.updated' END,
                       $1, CASE WHEN g % ($2 / $3) = 0 THEN $4 ELSE lpad((g % 5000)::text, 16, '0') END,
                       floor(extract(epoch FROM now()))::bigint, g, 1
                FROM generate_series(1, $2) AS g""", ACCOUNT, EVENTS, RARE, RARE_CONVERSATION)
            await connection.execute("VACUUM ANALYZE event_log")
        finally:
            await connection.close()
        yield url


async def page_cost(url: str, filters: dict[str, str]) -> tuple[int, int]:
    """(shared buffers touched, rows returned) of the newest page with `filters`."""
    statement = feed_statement(None, tuple(filters))
    arguments = (ACCOUNT, PAGE + 1, *filters.values(), int(time.time()) - 86_400)
    connection = await asyncpg.connect(url)
    try:
        await connection.fetch(statement, *arguments)  # warm, as a busy feed is
        plan = json.loads(await connection.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}",
                                                    *arguments))
    finally:
        await connection.close()
    top = plan[0]["Plan"]
    return top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0), top["Actual Rows"]


@pytest.mark.parametrize("filters", [{"type": "conversation.deleted"}, {"conversation_id": RARE_CONVERSATION}],
                         ids=["type", "conversation_id"])
async def test_a_feed_page_filtered_on_a_rare_value_reads_only_what_it_shows(busy_log: str, filters: dict[str, str]):
    buffers, rows = await page_cost(busy_log, filters)
    unfiltered, _ = await page_cost(busy_log, {})
    print(f"\nMEASURED feed page filtered on a rare {next(iter(filters))}: {buffers} buffers "
          f"({rows} rows of {EVENTS:,} events); unfiltered {unfiltered}")
    assert rows == RARE
    assert buffers <= BUFFERS_LIMIT, (buffers, unfiltered)
