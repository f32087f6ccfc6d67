"""docs/api.md §4: a filtered page costs the same whether the account has 1,000 or 1,000,000 conversations.

The worst case for a filter is a value few of the account's conversations have: without an index
of that value, the page scans the account until it has found a page of them. In an account the
rare values are the set ones (muted, pinned, archived: every conversation starts without them),
and each has a partial index. Both accounts here have exactly 20 conversations with each, spread
evenly through their ids; each page is measured by PostgreSQL itself (EXPLAIN ANALYZE, shared
buffers touched), for the very statement the service sends. The unset values, which nearly every
conversation has, are found at once on the primary key (a test below shows that too).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.store.queries import list_statement
from tests.conftest import Backends, migrated_database

pytestmark = pytest.mark.slow

SIZES = {"acct_small": 1_000, "acct_big": 1_000_000}
RARE = 20  # conversations with each rare value, per account
PAGE = 10
RATIO_LIMIT = 1.2
RARE_FILTERS = [("muted", True), ("pinned", True), ("archived", True)]
COMMON_FILTERS = [("muted", False), ("pinned", False), ("archived", False)]


NEIGHBOURS_PER_ROW = 49  # rows of other accounts between two of the small account's, as in a shared table


@pytest.fixture(scope="module")
async def scaled_database(backend_urls: Backends) -> AsyncIterator[str]:
    """Both accounts, ids in creation order as the service makes them; every size/RARE-th conversation
    has the rare value of each flag (muted; pinned; archived), at three offsets.

    The big account fills its heap pages alone, so its rare conversations each sit on a page of
    their own. The small account's are interleaved with a neighbour account's rows, as conversations
    of many accounts are in a shared table: without that, its 1,000 rows would fill a dozen pages
    and its rare ones share pages by an accident of the seed, which the comparison would credit to
    the account's size.
    """
    async with migrated_database(backend_urls, "conversations_scale") as url:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("""
                INSERT INTO conversations (account_id, id, contact_id, is_muted, is_pinned, created_at, archived_at)
                SELECT account, lpad(g::text, 16, '0'), 'contact' || g,
                       account = $1 AND n % ($2 / $3) = 0, account = $1 AND n % ($2 / $3) = 1, 1700000000,
                       CASE WHEN account = $1 AND n % ($2 / $3) = 2 THEN 1700000000 END
                FROM generate_series(1, $2 * ($4 + 1)) AS g,
                     LATERAL (SELECT CASE WHEN g % ($4 + 1) = 0 THEN $1 ELSE 'acct_neighbour' END AS account,
                                     g / ($4 + 1) AS n) AS row""",
                                     "acct_small", SIZES["acct_small"], RARE, NEIGHBOURS_PER_ROW)
            await connection.execute("""
                INSERT INTO conversations (account_id, id, contact_id, is_muted, is_pinned, created_at, archived_at)
                SELECT $1, lpad(g::text, 16, '0'), 'contact' || g, g % ($2 / $3) = 0, g % ($2 / $3) = 1,
                       1700000000, CASE WHEN g % ($2 / $3) = 2 THEN 1700000000 END
                FROM generate_series(1, $2) AS g""", "acct_big", SIZES["acct_big"], RARE)
            await connection.execute("VACUUM ANALYZE conversations")
        finally:
            await connection.close()
        yield url


async def page_cost(connection: asyncpg.Connection, account: str, flag: tuple[str, bool], cursor: str | None
                    ) -> tuple[int, int]:
    """(shared buffers touched, rows returned) of one filtered page, newest first."""
    statement = list_statement("starting_after" if cursor else None, (flag,))
    arguments = (account, PAGE + 1, *((cursor,) if cursor else ()))
    await connection.fetch(statement, *arguments)  # warm: both accounts measured with hot caches
    plan = json.loads(await connection.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", *arguments))
    top = plan[0]["Plan"]
    return top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0), top["Actual Rows"]


@pytest.mark.parametrize("flag", RARE_FILTERS, ids=[f"{name}={str(value).lower()}" for name, value in RARE_FILTERS])
@pytest.mark.parametrize("where", ["first page", "a page from the middle"])
async def test_a_page_filtered_on_a_rare_value_costs_no_more_at_1_000_000_conversations_than_at_1_000(
        scaled_database: str, flag: tuple[str, bool], where: str):
    connection = await asyncpg.connect(scaled_database)
    try:
        costs = {}
        for account, size in SIZES.items():
            cursor = None if where == "first page" else await connection.fetchval(
                "SELECT id FROM conversations WHERE account_id = $1 ORDER BY id OFFSET $2 LIMIT 1", account, size // 2)
            costs[account] = await page_cost(connection, account, flag, cursor)
    finally:
        await connection.close()
    (small_buffers, small_rows), (big_buffers, big_rows) = costs["acct_small"], costs["acct_big"]
    assert small_rows == big_rows > 0, costs
    print(f"\nMEASURED {flag[0]}={str(flag[1]).lower()} {where}: {small_buffers} buffers at 1,000, "
          f"{big_buffers} at 1,000,000")
    assert big_buffers <= RATIO_LIMIT * small_buffers, costs


@pytest.mark.parametrize("flag", COMMON_FILTERS, ids=[f"{name}={str(value).lower()}" for name, value in COMMON_FILTERS])
async def test_a_page_filtered_on_a_common_value_costs_no_more_at_1_000_000_conversations_than_at_1_000(
        scaled_database: str, flag: tuple[str, bool]):
    connection = await asyncpg.connect(scaled_database)
    try:
        costs = {account: await page_cost(connection, account, flag, None) for account in SIZES}
    finally:
        await connection.close()
    (small_buffers, small_rows), (big_buffers, big_rows) = costs["acct_small"], costs["acct_big"]
    assert small_rows == big_rows == PAGE + 1, costs
    print(f"\nMEASURED {flag[0]}={str(flag[1]).lower()}: {small_buffers} buffers at 1,000, {big_buffers} at 1,000,000")
    assert big_buffers <= RATIO_LIMIT * small_buffers, costs
