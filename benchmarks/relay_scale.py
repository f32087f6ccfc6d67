"""How far the event path scales: relay events/s by partitions and processes, where a leader's time goes,
and event latency at a steady write rate.

    python benchmarks/relay_scale.py                        # everything below, README's table
    python benchmarks/relay_scale.py --only drain --partitions 1,4,16 --processes 1,2
    python benchmarks/relay_scale.py --checkout ../before --only drain,writers --partitions 1 --processes 1

What a run does (each part on a throwaway database migrated by the checkout's own code, a stream of
its own on --redis, deleted afterwards):

  drain    for each partitions x processes: starts that many `serve --workers 1` with
           EVENTS_PARTITIONS, waits until their relays lead every partition between them, inserts
           --backlog outbox rows in one SQL statement (each row's partition as the writers compute it;
           then a NOTIFY), and times until the outbox is empty: events/s, and the CPU the servers and
           PostgreSQL used per event;
  writers  one `serve --workers W` (W writer processes, each with its relay) under wrk's creates
           (-c32) for --duration seconds: writes/s, events/s on the stream(s), the backlog left;
  profile  one leader's steps timed in this process over a --backlog drain: the batch SELECT, the
           XADD pipeline, and WAITAOF (against a private AOF server, compose's flags), the move into
           the event log; per batch of 500;
  latency  creates open-loop at --rate a second for --duration seconds, EVENTS_PARTITIONS 1 and 4,
           each event timed from its create's answer to its arrival on its partition's stream key
           (XREAD BLOCK on every key, from a separate connection), against one `serve` with
           --latency-workers workers whose relays publish; --writers: `http` sends the creates
           through that server's API (on 2 cores the front door, not the event path, caps the
           rate: the rate kept up is reported beside it), `sql` runs the service's own create
           (service/conversations.py, the same statement and outbox row) on --concurrency database
           connections from this process, so the event path sees the full rate.

With --checkout DIR (another checkout of the project, e.g. the commit before partitions) the
servers and migrations are that checkout's (drain and writers only; a checkout without partitions
runs its single leader whatever --partitions says).

Needs PostgreSQL (127.0.0.1:5432, trust auth), Redis (--redis), wrk, and the test extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arrivals import Creator, HttpCreator, SqlCreator, StreamArrivals, open_loop, percentiles  # noqa: E402
from processes import cpu_seconds, postgres_pids  # noqa: E402
from run import Server, run_wrk, write_load_data  # noqa: E402
from scratch import delete_stream, drop_database  # noqa: E402

from service.events.durability import Durability  # noqa: E402
from service.events.publisher import Publisher  # noqa: E402
from service.events.stats import RelayStats  # noqa: E402
from service.partitions import partition_sql, stream_keys  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store import event_log, outbox  # noqa: E402
from service.tokens import create_token  # noqa: E402
from tests.backends import private_aof_server  # noqa: E402

BATCH = 500


def migrate_checkout(checkout: Path, url: str) -> None:
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=checkout, check=True, timeout=120,
                   env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(checkout)}, capture_output=True)


class Scratch:
    """A throwaway database and stream name, dropped (and the stream's keys deleted) at the end."""

    def __init__(self, args: argparse.Namespace, label: str, checkout: Path = ROOT) -> None:
        stamp = f"{int(time.time() * 1000) % 10**10}_{label}"
        self.admin = args.database
        self.name = f"relay_bench_{stamp}"
        self.url = args.database.rsplit("/", 1)[0] + f"/{self.name}"
        self.stream = f"bench:{stamp}:events"
        self.redis_url = args.redis
        self.checkout = checkout

    async def __aenter__(self) -> Scratch:
        await asyncio.to_thread(migrate_checkout, self.checkout, self.url)
        connection = await asyncpg.connect(self.url)
        try:
            self.partitioned = bool(await connection.fetchval(
                "SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_name = 'conversation_outbox' "
                "AND column_name = 'stream_partition')"))
        finally:
            await connection.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await delete_stream(self.redis_url, self.stream)
        await drop_database(self.admin, self.name)

    def env(self, partitions: int) -> dict[str, str]:
        env = {"DATABASE_URL": self.url, "REDIS_URL": self.redis_url, "EVENTS_STREAM": self.stream}
        if self.partitioned:
            env["EVENTS_PARTITIONS"] = str(partitions)
        return env


def insert_backlog(partitioned: bool, partitions: int) -> str:
    partition = f"{partition_sql('id', '$3')}, " if partitioned else ""
    return f"""
    INSERT INTO conversation_outbox (stream, {"stream_partition, " if partitioned else ""}event_id, type, account_id,
                                     conversation_id, occurred_at, sequence, schema_version, contact_id, is_pinned,
                                     is_muted, created_at)
    SELECT $1, {partition}'evt_' || id, 'conversation.created', 'acct_bench', id,
           floor(extract(epoch FROM now()))::bigint, 1, 1, 'contact_' || g, false, false,
           floor(extract(epoch FROM now()))::bigint
    FROM (SELECT g, lpad(to_hex(g), 16, '0') AS id FROM generate_series(1, $2) AS g) AS rows
    """


def leadership_settled(servers: list[Server], partitions: int, partitioned: bool) -> bool:
    led = []
    for server in servers:
        body = httpx.get(f"http://127.0.0.1:{server.port}/ready", timeout=2).json()
        led.append(len(body["relay_partitions"]) if partitioned else int(body["relay_is_leader"]))
    partitions = partitions if partitioned else 1
    return sum(led) == partitions and sum(1 for count in led if count) == min(partitions, len(servers))


async def drain(args: argparse.Namespace, partitions: int, processes: int, checkout: Path) -> dict:
    async with Scratch(args, f"drain{partitions}x{processes}", checkout) as scratch:
        servers = [Server(scratch.env(partitions), 1, checkout) for _ in range(processes)]
        try:
            for server in servers:
                await asyncio.to_thread(server.start)
            deadline = time.monotonic() + 30
            while not await asyncio.to_thread(leadership_settled, servers, partitions, scratch.partitioned):
                if time.monotonic() > deadline:
                    raise RuntimeError("the relays did not settle on their partitions")
                await asyncio.sleep(0.2)
            connection = await asyncpg.connect(scratch.url)
            try:
                statement = insert_backlog(scratch.partitioned, partitions)
                arguments = (scratch.stream, args.backlog, partitions) if scratch.partitioned else (
                    scratch.stream, args.backlog)
                async with connection.transaction():
                    await connection.execute(statement, *arguments)
                    await connection.execute("SELECT pg_notify('conversation_outbox', '')")
                pids = [pid for server in servers for pid in server.pids]
                server_before, pg_before = cpu_seconds(pids), cpu_seconds(postgres_pids())
                started = time.perf_counter()
                while await connection.fetchval("SELECT EXISTS (SELECT FROM conversation_outbox WHERE stream = $1)",
                                                scratch.stream):
                    await asyncio.sleep(0.02)
                seconds = time.perf_counter() - started
                server_cpu, pg_cpu = cpu_seconds(pids) - server_before, cpu_seconds(postgres_pids()) - pg_before
            finally:
                await connection.close()
        finally:
            for server in servers:
                await asyncio.to_thread(server.stop)
    return {"partitions": partitions if scratch.partitioned else 1, "processes": processes, "events": args.backlog,
            "seconds": round(seconds, 2), "events_per_s": round(args.backlog / seconds),
            "server_us_per_event": round(server_cpu / args.backlog * 1e6, 1),
            "postgres_us_per_event": round(pg_cpu / args.backlog * 1e6, 1)}


async def stream_total(redis_url: str, keys: list[str]) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return sum([await client.xlen(key) for key in keys])
    finally:
        await client.aclose()


async def writers(args: argparse.Namespace, partitions: int, workers: int, checkout: Path) -> dict:
    async with Scratch(args, f"writers{partitions}x{workers}", checkout) as scratch:
        token, _ = await create_token(Settings(database_url=scratch.url), "acct_bench")
        data = write_load_data(Path(tempfile.mkdtemp(prefix="relay-bench-")), [token], [["0000000000000000"]])
        server = Server(scratch.env(partitions), workers, checkout)
        keys = stream_keys(scratch.stream, partitions if scratch.partitioned else 1)
        try:
            await asyncio.to_thread(server.start)
            before = await stream_total(scratch.redis_url, keys)
            started = time.perf_counter()
            result = await asyncio.to_thread(run_wrk, server.port, "create", data, args.duration, 32)
            seconds = time.perf_counter() - started
            published = await stream_total(scratch.redis_url, keys) - before
            connection = await asyncpg.connect(scratch.url)
            try:
                backlog = await connection.fetchval("SELECT count(*) FROM conversation_outbox")
            finally:
                await connection.close()
        finally:
            await asyncio.to_thread(server.stop)
            shutil.rmtree(data, ignore_errors=True)
    return {"partitions": partitions if scratch.partitioned else 1, "writer_processes": workers,
            "writes_per_s": round(result["requests"] / result["seconds"]),
            "events_per_s": round(published / seconds), "backlog_at_end": backlog}


async def profile(args: argparse.Namespace, durability: str) -> dict:
    """One leader's steps, timed: the batch SELECT, the XADD pipeline (+ WAITAOF), the move."""
    directory = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    aof = private_aof_server(directory).start() if durability == "waitaof" else None
    try:
        async with Scratch(args, f"profile_{durability}") as scratch:
            redis_url = aof.url if aof is not None else scratch.redis_url
            redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
            connection = await asyncpg.connect(scratch.url, server_settings={"synchronous_commit": "off"})
            try:
                await connection.execute(insert_backlog(True, 1), scratch.stream, args.backlog, 1)
                stats = RelayStats()
                publisher = Publisher(redis, scratch.stream, 5.0, stats)
                assert (await publisher.durability()).value == durability
                timings: dict[str, list[float]] = {"select": [], "xadd": [], "waitaof": [], "move": []}
                waitaof = Durability.WAITAOF
                started = time.perf_counter()
                while True:
                    t0 = time.perf_counter()
                    rows = await outbox.fetch_batch(connection, scratch.stream, 0, BATCH)
                    t1 = time.perf_counter()
                    if not rows:
                        break
                    if durability == "waitaof":  # the XADDs alone, then the WAITAOF alone: their shares
                        stats.durability = Durability.NONE
                        await publisher.publish(rows)
                        t2 = time.perf_counter()
                        await redis.execute_command("WAITAOF", 1, 0, 1000)
                        stats.durability = waitaof
                    else:
                        await publisher.publish(rows)
                        t2 = time.perf_counter()
                    t3 = time.perf_counter()
                    await event_log.retire_published(connection, scratch.stream, [row[0] for row in rows])
                    t4 = time.perf_counter()
                    for name, seconds in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                        timings[name].append(seconds)
                total = time.perf_counter() - started
            finally:
                await connection.close()
                await redis.aclose()
    finally:
        if aof is not None:
            aof.stop()
        shutil.rmtree(directory, ignore_errors=True)
    spent = {name: sum(values) for name, values in timings.items()}
    return {"durability": durability, "events": args.backlog, "seconds": round(total, 2),
            "events_per_s": round(args.backlog / total),
            **{f"{name}_ms_per_batch": round(statistics.mean(values) * 1000, 2) for name, values in timings.items()},
            **{f"{name}_share": round(spent[name] / total, 2) for name in spent}}


async def latency(args: argparse.Namespace, writer: str, partitions: int) -> dict:
    async with Scratch(args, f"latency_{writer}{partitions}") as scratch:
        token, _ = await create_token(Settings(database_url=scratch.url), "acct_bench")
        server = Server(scratch.env(partitions), args.latency_workers)
        keys = stream_keys(scratch.stream, partitions)
        creators: list[Creator] = (
            [HttpCreator(server.port, token) for _ in range(args.concurrency)] if writer == "http"
            else [SqlCreator(scratch.url, scratch.stream, partitions, "acct_bench") for _ in range(args.concurrency)])
        try:
            await asyncio.to_thread(server.start)
            async with StreamArrivals(scratch.redis_url, keys) as arrivals:
                sent = await open_loop(creators, args.rate, args.duration)
                await arrivals.wait_for(sent.answered, 10)
            delays = arrivals.delays_ms(sent.answered)
            return {"writer": writer, "partitions": partitions, "writes_per_s": sent.rate, "statuses": sent.statuses,
                    "events": len(delays), **percentiles(delays)}
        finally:
            await asyncio.to_thread(server.stop)


def tables(report: dict) -> str:
    lines = []
    if report.get("drain"):
        lines += [f"drain: {report['backlog']:,} outbox rows inserted by SQL, time until the outbox is empty",
                  "partitions  processes  seconds  events/s  server us/event  postgres us/event", "-" * 74]
        lines += [f"{r['partitions']:>10}  {r['processes']:>9}  {r['seconds']:>7.2f}  {r['events_per_s']:>8}  "
                  f"{r['server_us_per_event']:>14}  {r['postgres_us_per_event']:>17}" for r in report["drain"]]
    if report.get("writers"):
        lines += ["", "writers: wrk creates (-c32), one serve process with W workers",
                  "partitions  writers  writes/s  events/s  backlog at end", "-" * 52]
        lines += [f"{r['partitions']:>10}  {r['writer_processes']:>7}  {r['writes_per_s']:>8}  {r['events_per_s']:>8}  "
                  f"{r['backlog_at_end']:>14}" for r in report["writers"]]
    if report.get("profile"):
        lines += ["", "one leader's time per batch of 500 (ms) and its share of the drain",
                  "durability  events/s  select      xadd        waitaof     move", "-" * 74]
        lines += [f"{r['durability']:<10}  {r['events_per_s']:>8}  "
                  + "  ".join(f"{r[f'{n}_ms_per_batch']:>5.2f} {r[f'{n}_share']:>4.0%}"
                              for n in ("select", "xadd", "waitaof", "move")) for r in report["profile"]]
    if report.get("latency"):
        lines += ["", f"event latency (create answered -> entry on its stream key), creates at {report['rate']}/s "
                      f"open-loop, one serve --workers {report['latency_workers']}",
                  "writer  partitions  writes/s  events  p50 ms  p99 ms  max ms", "-" * 58]
        lines += [f"{r['writer']:<6}  {r['partitions']:>10}  {r['writes_per_s']:>8}  {r['events']:>6}  "
                  f"{r['p50_ms']:>6.2f}  {r['p99_ms']:>6.2f}  {r['max_ms']:>6.2f}" for r in report["latency"]]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict:
    parts = set(args.only.split(","))
    partitions = [int(n) for n in args.partitions.split(",")]
    processes = [int(n) for n in args.processes.split(",")]
    checkout = args.checkout or ROOT
    report: dict = {"backlog": args.backlog, "rate": args.rate, "checkout": str(checkout),
                    "latency_workers": args.latency_workers}
    if "drain" in parts:
        report["drain"] = [await drain(args, n, p, checkout) for n in partitions for p in processes]
    if "writers" in parts:
        report["writers"] = [await writers(args, n, w, checkout) for n in partitions[:2] for w in (1, 2)]
    if "profile" in parts:
        report["profile"] = [await profile(args, mode) for mode in ("none", "waitaof")]
    if "latency" in parts:
        report["latency"] = [await latency(args, writer, n) for writer in args.writers.split(",") for n in (1, 4)]
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL; each part creates and drops a database next to it")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis the servers publish to")
    parser.add_argument("--only", default="drain,writers,profile,latency")
    parser.add_argument("--partitions", default="1,4,16")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--backlog", type=int, default=200_000, help="outbox rows for drain and profile")
    parser.add_argument("--duration", type=float, default=10, help="seconds of writes (writers, latency)")
    parser.add_argument("--rate", type=float, default=2000, help="creates a second (latency)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections of the open-loop sender")
    parser.add_argument("--writers", default="http,sql",
                        help="latency's writers: http (creates through the API) and/or sql (the service's create "
                             "statement from this process, the HTTP front door left out)")
    parser.add_argument("--latency-workers", type=int, default=2, help="serve's workers for latency")
    parser.add_argument("--checkout", type=Path, default=None, help="another checkout's servers and migrations")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args()
    args.checkout = args.checkout.resolve() if args.checkout else None
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in vars(arguments).items() if k != "json"}
    print(f"benchmarks/relay_scale.py: {json.dumps(shown)}\n")
    print(tables(result))
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
