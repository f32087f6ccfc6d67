"""Event partitions (docs/api.md §6.1): which partition a conversation's events go to, and each one's stream key.

This module is the one owner of both rules, which are part of the published contract, so a
consumer in any language can compute them:

* partition(conversation_id, N) = the first 4 bytes of MD5(conversation_id as ASCII), read as an
  unsigned big-endian integer, modulo N. MD5 because PostgreSQL computes it natively inside the
  writing statement, where a create's id is made (a hash written in PL/pgSQL would cost every
  write far more); it is a spreading function here, not a security one.
* the stream key of partition i of N: with N = 1, EVENTS_STREAM itself (unchanged); with N > 1,
  `<EVENTS_STREAM>:{<tag>}`, where the tag is the first string `i.k` (k = 0, 1, 2, ...) whose
  Redis Cluster key slot (CRC16-XMODEM of the tag, modulo 16384) lies in
  [i * 16384 // N, (i + 1) * 16384 // N). Partition i thus owns the i-th N-th of the slot space,
  so however a cluster splits its slots into contiguous ranges, the partitions spread over its
  masters as evenly as the ranges do (plain `{0}`, `{1}`, ... land on arbitrary slots).

A partition's dead-letter stream is its key + `:dead`, which shares the key's hash tag (N > 1).
"""

from __future__ import annotations

import hashlib
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

MAX_PARTITIONS = 1024


def partition_of(conversation_id: str, partitions: int) -> int:
    """The partition of a conversation's events among `partitions` (the reference of partition_sql)."""
    digest = hashlib.md5(conversation_id.encode("ascii"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % partitions


def partition_sql(id_expression: str, partitions_expression: str) -> str:
    """partition_of as a SQL expression over the id and the partition count (both SQL expressions)."""
    return (f"((('x' || substr(md5({id_expression}), 1, 8))::bit(32)::bigint % {partitions_expression})::integer)")


def slot_range(index: int, partitions: int) -> range:
    """The cluster slots partition `index` of `partitions` owns."""
    return range(index * REDIS_CLUSTER_HASH_SLOTS // partitions, (index + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions)


@cache
def hash_tag(index: int, partitions: int) -> str:
    """The first tag `index.k` whose key slot lies in the partition's slot range."""
    owned = slot_range(index, partitions)
    k = 0
    while key_slot(f"{index}.{k}".encode()) not in owned:
        k += 1
    return f"{index}.{k}"


def stream_key(stream: str, index: int, partitions: int) -> str:
    """The Redis key partition `index` of `partitions` is published to."""
    if partitions == 1:
        return stream
    return f"{stream}:{{{hash_tag(index, partitions)}}}"


def stream_keys(stream: str, partitions: int) -> list[str]:
    return [stream_key(stream, index, partitions) for index in range(partitions)]


def dead_letter_key(key: str) -> str:
    return key + ":dead"


def parse_selection(text: str, partitions: int) -> list[int]:
    """`0-7`, `3,5`, `0-3,9`: the partitions named, each below `partitions`; raises ValueError otherwise."""
    chosen: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a list of partitions such as 0-7 or 3,5")
        low, high = int(first), int(last or first)
        if low > high or high >= partitions:
            raise ValueError(f"{part.strip()!r}: partitions run from 0 to {partitions - 1} (EVENTS_PARTITIONS)")
        chosen.update(range(low, high + 1))
    return sorted(chosen)
