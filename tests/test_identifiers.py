"""docs/api.md §1, identifiers: 16 base62 characters, the first 8 the creation time in milliseconds."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from service.ids import ALPHABET, decode_millis, encode_millis
from tests.http_helpers import after_millisecond_of, create_conversation, unique

ID = re.compile(r"[0-9A-Za-z]{16}")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_alphabet_is_digits_then_upper_then_lower_case() -> None:
    assert ALPHABET == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("party", ["contact_id", "group_id"])
async def test_ids_are_16_characters_of_0_9_A_Z_a_z(api, party) -> None:
    ids = [(await create_conversation(api, **{party: unique(party)}))["id"] for _ in range(5)]
    for conversation_id in ids:
        assert ID.fullmatch(conversation_id), conversation_id
    assert len(set(ids)) == len(ids)


async def test_first_8_characters_are_the_creation_time_in_milliseconds(api) -> None:
    before = time.time()
    conversation = await create_conversation(api)
    after = time.time()
    millis = decode_millis(conversation["id"])
    # The database's clock made the id; it is this host's clock (give it a little slack).
    assert before * 1000 - 1000 <= millis <= after * 1000 + 1000
    assert millis // 1000 == conversation["created_at"]


async def test_id_time_agrees_with_created_at_for_many_conversations(api) -> None:
    for _ in range(10):
        conversation = await create_conversation(api)
        assert decode_millis(conversation["id"]) // 1000 == conversation["created_at"], conversation


async def test_ids_of_conversations_created_one_after_another_sort_bytewise_in_creation_order(api) -> None:
    ids = []
    for _ in range(6):
        ids.append((await create_conversation(api))["id"])
        await after_millisecond_of(ids[-1])
    assert sorted(ids, key=str.encode) == ids
    assert [decode_millis(i) for i in ids] == sorted(decode_millis(i) for i in ids)


async def test_the_database_orders_ids_bytewise(api, account, db) -> None:
    ids = []
    for _ in range(6):
        ids.append((await create_conversation(api))["id"])
        await after_millisecond_of(ids[-1])
    stored = await db.fetch("SELECT id FROM conversations WHERE account_id = $1 ORDER BY id", account.id)
    assert [row["id"] for row in stored] == ids
    # Byte order differs from most locales' order where case differs ("Z" < "a" in "C" only).
    collation = await db.fetchval(
        "SELECT collation_name FROM information_schema.columns "
        "WHERE table_name = 'conversations' AND column_name = 'id'")
    assert collation == "C"


@pytest.mark.parametrize("millis", [0, 1, 61, 62, 3843, 3844, 692233200000, 705103200999, 1700000000123,
                                    1764091288456, 62**8 - 1])
def test_encode_millis_round_trips_through_decode_millis(millis) -> None:
    encoded = encode_millis(millis)
    assert len(encoded) == 8
    assert decode_millis(encoded) == millis


def test_encode_millis_is_zero_padded_so_that_byte_order_is_time_order() -> None:
    values = [0, 1, 61, 62, 3844, 10**9, 10**12, 1764091288456, 62**8 - 1]
    encoded = [encode_millis(v) for v in values]
    assert encoded[0] == "00000000"
    assert encoded[-1] == "zzzzzzzz"
    assert sorted(encoded, key=str.encode) == encoded


@pytest.mark.parametrize(("millis", "micros"), [
    (0, 0),
    (1, 0),
    (61, 0),
    (62, 0),
    (692233200000, 0),
    (705103200999, 999),
    (1700000000123, 456),
    (1764091288456, 999),
    (62**8 - 1, 0),
])
async def test_sql_base62_millis_agrees_with_encode_millis(db, millis, micros) -> None:
    timestamp = EPOCH + timedelta(milliseconds=millis, microseconds=micros)
    assert await db.fetchval("SELECT base62_millis($1::timestamptz)", timestamp) == encode_millis(millis)


async def test_sql_base62_millis_of_now_decodes_to_now(db) -> None:
    row = await db.fetchrow("SELECT base62_millis(now()) AS encoded, "
                            "floor(extract(epoch FROM now()) * 1000)::bigint AS millis")
    assert decode_millis(row["encoded"]) == row["millis"]
