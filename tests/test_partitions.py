"""docs/api.md §6.1 partitions: the hash and the stream keys a consumer computes, and how the keys spread
over a Redis Cluster's slots. No server needed."""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from service.partitions import (
    MAX_PARTITIONS,
    parse_selection,
    partition_of,
    slot_range,
    stream_key,
    stream_keys,
)
from service.settings import SettingsError, load_settings

# How `redis-cli --cluster create` splits the slots over 3 masters.
THREE_MASTERS = (range(0, 5461), range(5461, 10923), range(10923, 16384))


def test_a_conversations_partition_is_the_first_four_bytes_of_its_ids_md5_modulo_the_count():
    # The contract's own example (docs/api.md §6.1), computed from its definition.
    digest = hashlib.md5(b"0Vc0T5O7v2M7cFWX", usedforsecurity=False).hexdigest()
    assert digest.startswith("6da7cb99")
    assert partition_of("0Vc0T5O7v2M7cFWX", 16) == 0x6DA7CB99 % 16 == 9
    assert partition_of("0Vc0T5O7v2M7cFWX", 1) == 0


def test_partitions_are_used_about_equally_by_random_ids():
    ids = [f"{n:08d}{zlib.crc32(str(n).encode()):08x}" for n in range(16_000)]
    counts = Counter(partition_of(conversation_id, 16) for conversation_id in ids)
    assert set(counts) == set(range(16))
    assert max(counts.values()) < 1.15 * 1000 and min(counts.values()) > 0.85 * 1000


def test_one_partition_is_the_stream_itself():
    assert stream_keys("conversations:events", 1) == ["conversations:events"]


@pytest.mark.parametrize("partitions", [2, 3, 4, 8, 16, 64, 256, MAX_PARTITIONS])
def test_partition_i_of_n_hashes_into_the_i_th_n_th_of_the_slots(partitions: int):
    keys = stream_keys("conversations:events", partitions)
    assert len(set(keys)) == partitions
    for index, key in enumerate(keys):
        assert key.startswith("conversations:events:{") and key.endswith("}")
        assert key_slot(key.encode()) in slot_range(index, partitions)
        assert key_slot((key + ":dead").encode()) == key_slot(key.encode())  # dead letters: the same slot


def per_master(keys: list[str]) -> list[int]:
    return [sum(key_slot(key.encode()) in owned for key in keys) for owned in THREE_MASTERS]


@pytest.mark.parametrize("partitions", [3, 6, 16, 64])
def test_partitions_spread_evenly_over_three_masters(partitions: int):
    spread = per_master(stream_keys("conversations:events", partitions))
    assert max(spread) - min(spread) <= 1, spread


def test_plain_numeric_tags_would_leave_a_master_without_a_partition():
    # Why the tags are searched for: {0}, {1}, {2} hash to two of three masters.
    assert per_master([f"conversations:events:{{{index}}}" for index in range(3)]) == [0, 2, 1]
    assert per_master(stream_keys("conversations:events", 3)) == [1, 1, 1]


def test_the_tag_search_is_deterministic_and_documented():
    # docs/api.md §6.1: the first `i.k` whose slot is in [i*16384/N, (i+1)*16384/N).
    for index in range(4):
        k = 0
        while key_slot(f"{index}.{k}".encode()) not in range(index * REDIS_CLUSTER_HASH_SLOTS // 4,
                                                             (index + 1) * REDIS_CLUSTER_HASH_SLOTS // 4):
            k += 1
        assert stream_key("s", index, 4) == f"s:{{{index}.{k}}}"


def test_a_partition_selection_takes_ranges_and_lists_below_the_count():
    assert parse_selection("0-7", 16) == list(range(8))
    assert parse_selection("3,5", 16) == [3, 5]
    assert parse_selection("0-1,9,9", 16) == [0, 1, 9]
    for bad in ("16", "7-3", "a", "1-", "", "-1"):
        with pytest.raises(ValueError, match=r"partitions|list"):
            parse_selection(bad, 16)


def test_events_partitions_is_a_count_from_1_to_1024():
    assert load_settings({}).events_partitions == 1
    assert load_settings({"EVENTS_PARTITIONS": "16"}).events_partitions == 16
    for bad in ("0", "1025", "-1", "x"):
        with pytest.raises(SettingsError, match="EVENTS_PARTITIONS"):
            load_settings({"EVENTS_PARTITIONS": bad})


def test_redis_cluster_is_off_unless_set():
    assert load_settings({}).redis_cluster is False
    assert load_settings({"REDIS_CLUSTER": "true"}).redis_cluster is True

