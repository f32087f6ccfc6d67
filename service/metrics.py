"""Prometheus metrics (docs/api.md §7), one view across every worker of `serve`.

Per-process counters and histograms use prometheus_client; `serve` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start, so each worker writes
its values there and a scrape, whichever worker answers it, adds them all up
(MultiProcessCollector). Facts that belong to no worker (outbox backlog, stream length,
consumer-group lag) are read from PostgreSQL and Redis at scrape time.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PLATFORM_COLLECTOR
from prometheus_client.registry import REGISTRY, Collector
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# /metrics needs no token: it must not tell the world which Python this is (python_info).
REGISTRY.unregister(PLATFORM_COLLECTOR)
SCRAPE_CHECK_SECONDS = 1.0

REQUESTS = Counter("conversations_http_requests_total",
                   "HTTP requests served, by method, route template and status.",
                   ["method", "route", "status"])
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_SECONDS = Histogram("conversations_http_request_duration_seconds",
                            "Time from the request's arrival to the end of its response, by method and route.",
                            ["method", "route"], buckets=LATENCY_BUCKETS)
EVENTS_PUBLISHED = Counter("conversations_events_published_total",
                           "Events the relay put on the stream (and removed from the outbox).")
EVENTS_PUBLISHED_BY_PARTITION = Counter("conversations_events_published_by_partition_total",
                                        "Events the relay put on each partition's stream key.", ["partition"])
UNREAD_DROPPED = Counter("conversations_stream_unread_dropped_total",
                         "Stream entries a consumer group had not acknowledged, dropped past EVENTS_HARD_MAXLEN.")
HTTP_REFUSED = Counter("conversations_http_refused_total",
                       "Requests and connections the server refused before the app saw them, by status "
                       "(408 head too slow, 414 and 431 head too large, 503 at capacity).", ["status"])
IDEMPOTENCY_KEYS_PURGED = Counter("conversations_idempotency_keys_purged_total",
                                  "Idempotency keys deleted by the purge once past their 24 hours.")
POOL_IN_USE = Gauge("conversations_db_pool_connections_in_use",
                    "Request-pool connections checked out, summed over live workers.",
                    multiprocess_mode="livesum")
POOL_SIZE = Gauge("conversations_db_pool_connections",
                  "Request-pool connections open, summed over live workers.", multiprocess_mode="livesum")

class _Tally:
    """One series' requests since the last flush: count, summed seconds, count per latency bucket."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound (+Inf)


# Requests are counted here in plain Python, and handed to prometheus_client (whose every inc and
# observe takes a lock, and in multi-worker mode writes a shared file) by flush_requests: once a
# second from the app's sampler, and before this process renders /metrics. Per request that is a
# dict lookup and a bisect instead of two locked updates (measured: ~4 % of a retrieve's CPU).
_tallies: dict[tuple[str, str, int], _Tally] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one request and its latency (flushed to the Prometheus series by flush_requests)."""
    key = (method, route, status)
    tally = _tallies.get(key)
    if tally is None:
        tally = _tallies[key] = _Tally()
    tally.count += 1
    tally.seconds += seconds
    tally.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1


def flush_requests() -> None:
    """Add what observe_request counted since the last flush to the Prometheus series."""
    for (method, route, status), tally in _tallies.items():
        if not tally.count:
            continue
        REQUESTS.labels(method, route, str(status)).inc(tally.count)
        histogram = REQUEST_SECONDS.labels(method, route)
        # A histogram child's own parts, as its observe() updates them (one bucket per value,
        # the cumulative counts are computed at exposition): here a whole tally at once.
        histogram._sum.inc(tally.seconds)
        for index, count in enumerate(tally.buckets):
            if count:
                histogram._buckets[index].inc(count)
        tally.count, tally.seconds = 0, 0.0
        tally.buckets = [0] * len(tally.buckets)


def is_multiprocess() -> bool:
    """Whether values live in PROMETHEUS_MULTIPROC_DIR (decided when prometheus_client was imported)."""
    return values.ValueClass is not values.MutexValue


def forget_this_process() -> None:
    """On a worker's shutdown: its last requests counted, its live gauges stop counting."""
    flush_requests()
    if is_multiprocess():
        mark_process_dead(os.getpid())


class _Snapshot(Collector):
    """Gauges measured once, at scrape time."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    if value is not None:
        family.add_metric([], value)
    return family


def _partition_gauge(name: str, documentation: str, values: list[float | None]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["partition"])
    for index, value in enumerate(values):
        if value is not None:
            family.add_metric([str(index)], value)
    return family


def _age(now: int, oldest: int | None) -> int:
    return max(0, now - oldest) if oldest is not None else 0


async def _stream_figures(redis: Redis | RedisCluster, keys: list[str]
                          ) -> tuple[list[int], list[list[dict[str, object]]]]:
    """Each key's length and consumer groups, in two pipelines of single-key commands (a cluster
    client sends each command to its key's node)."""
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.xlen(key)
    lengths = [int(length) for length in await pipe.execute()]
    groups: list[list[dict[str, object]]] = [[] for _ in keys]
    present = [index for index, length in enumerate(lengths) if length]
    if present:
        pipe = redis.pipeline(transaction=False)
        for index in present:
            pipe.xinfo_groups(keys[index])
        for index, found in zip(present, await pipe.execute(), strict=True):
            groups[index] = found
    return lengths, groups


async def scrape_families(db_backlog: tuple[int, int | None] | None, db_keys: tuple[int, int | None] | None,
                          redis: Redis | RedisCluster, keys: list[str], durability: list[tuple[str, bool]], *,
                          held: bool, partition_backlogs: list[tuple[int, int | None]] | None = None,
                          relay_processes: int | None = None, partitions_led: int = 0) -> list[Metric]:
    """The scrape-time gauges: outbox backlog and age (`db_backlog`, and per partition
    `partition_backlogs`), idempotency keys stored and the oldest's age (`db_keys`), each partition's
    stream and groups (Redis, `keys`: the partitions' stream keys), and the relay's view: each
    durability mode with 1 for the one it detected (`durability`; all 0 while unknown), whether
    EVENTS_REQUIRE_DURABLE keeps events in the outbox (`held`), how many relays are alive and how many
    partitions this process leads. A None means PostgreSQL did not answer."""
    now = int(time.time())
    backlog, oldest = db_backlog if db_backlog is not None else (None, None)
    keys_stored, oldest_key_age = db_keys if db_keys is not None else (None, None)
    modes = GaugeMetricFamily("conversations_events_durability",
                              "Durability of published events the relay detected on Redis (1: this mode).",
                              labels=["mode"])
    for mode, detected in durability:
        modes.add_metric([mode], 1.0 if detected else 0.0)
    by_partition = partition_backlogs or []
    families = [
        modes,
        _gauge("conversations_events_held", "1 while EVENTS_REQUIRE_DURABLE keeps events in the outbox "
               "because Redis is not crash-safe.", 1.0 if held else 0.0),
        _gauge("conversations_outbox_backlog",
               "Events committed but not yet on the stream, counted up to a fixed limit (the oldest's age tells "
               "the rest).",
               backlog),
        _gauge("conversations_outbox_oldest_age_seconds", "Age of the oldest unpublished event (0 if none).",
               None if backlog is None else _age(now, oldest)),
        _partition_gauge("conversations_outbox_partition_backlog",
                         "Events of each partition not yet on its stream key, counted up to a fixed limit.",
                         [count for count, _ in by_partition]),
        _partition_gauge("conversations_outbox_partition_oldest_age_seconds",
                         "Age of each partition's oldest unpublished event (0 if none).",
                         [_age(now, first) for _, first in by_partition]),
        _gauge("conversations_relay_processes", "Relays alive for this stream, as this process last counted them.",
               relay_processes),
        _gauge("conversations_relay_partitions_led", "Partitions this process publishes.", partitions_led),
    ]
    families += [
        _gauge("conversations_idempotency_keys_stored",
               "Idempotency keys stored, as PostgreSQL's statistics count live rows.", keys_stored),
        _gauge("conversations_idempotency_keys_oldest_age_seconds",
               "Age of the oldest stored idempotency key (past 24 h + the purge interval: the purge lags).",
               None if keys_stored is None else (oldest_key_age or 0)),
    ]
    lengths: list[int] | None = None
    lag = GaugeMetricFamily("conversations_consumer_group_lag",
                            "Entries not yet delivered to the group (summed over partitions).", labels=["group"])
    pending = GaugeMetricFamily("conversations_consumer_group_pending",
                                "Entries delivered to the group but not acknowledged (summed over partitions).",
                                labels=["group"])
    partition_lag = GaugeMetricFamily("conversations_consumer_group_partition_lag",
                                      "Entries of a partition not yet delivered to the group.",
                                      labels=["group", "partition"])
    partition_pending = GaugeMetricFamily("conversations_consumer_group_partition_pending",
                                          "Entries of a partition delivered to the group but not acknowledged.",
                                          labels=["group", "partition"])
    try:
        async with asyncio.timeout(SCRAPE_CHECK_SECONDS):
            lengths, groups = await _stream_figures(redis, keys)
        totals: dict[str, list[float]] = {}
        for index, found in enumerate(groups):
            for group in found:
                name = str(group["name"])
                group_lag, group_pending = float(group.get("lag") or 0), float(group["pending"])
                partition_lag.add_metric([name, str(index)], group_lag)
                partition_pending.add_metric([name, str(index)], group_pending)
                total = totals.setdefault(name, [0.0, 0.0])
                total[0] += group_lag
                total[1] += group_pending
        for name, (group_lag, group_pending) in totals.items():
            lag.add_metric([name], group_lag)
            pending.add_metric([name], group_pending)
    except (RedisError, RedisClusterException, OSError):  # Redis down: those gauges are absent from this scrape
        lengths = None
    families += [_gauge("conversations_stream_length", "Entries in the event stream (all partitions).",
                        None if lengths is None else sum(lengths)),
                 _partition_gauge("conversations_stream_partition_length", "Entries in each partition's stream key.",
                                  list(lengths or [])),
                 lag, pending, partition_lag, partition_pending]
    return families


def render(families: Iterable[Metric]) -> bytes:
    """The whole exposition: every worker's series, then the scrape-time gauges."""
    flush_requests()  # this worker's latest; the others flush theirs every second
    if is_multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    snapshot = CollectorRegistry()
    snapshot.register(_Snapshot(list(families)))
    return body + generate_latest(snapshot)
