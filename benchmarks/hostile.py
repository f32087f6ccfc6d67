"""Hostile clients against one worker while 32 normal clients run the soak's mix: does the service hold?

    python benchmarks/hostile.py                     # 2 x 30 s: without, then with the hostile clients
    python benchmarks/hostile.py --duration 20 --slow-headers 300

What a run does:
  1. creates a throwaway database `hostile_<stamp>` with the service's own migrate code, a token per
     normal account and one for the attacker's account;
  2. starts `python -m service serve --no-migrate --workers 1` (LOG_LEVEL=warning), alone in its
     process group;
  3. runs the soak's 32 normal clients (benchmarks/soak.py: retrieve, list, update, create, delete,
     with their checks) for --duration seconds, measuring their latency, then again for --duration
     seconds while a second process attacks the same worker with, all at once:
       * --slow-headers connections sending a request head one byte a second (each is cut by the
         header timeout, and opened again),
       * requests with a 1 MB header (--big-header-rate a second),
       * requests with a random bad token (--bad-token-rate a second, half of them in the shape of
         a real token, so that each costs a lookup),
       * DELETEs of ids that do not exist, each with a new Idempotency-Key (--keyed-404-rate a second);
  4. samples, in both phases, the server's RSS (/proc) and its PostgreSQL connections
     (pg_stat_activity, by application name) every 0.2 s;
  5. prints the table, and exits 0 only if the normal clients' p99 with the attack is within 2x of
     the one without, the RSS stayed under 150 MB, the request pool's connections within
     DB_POOL_SIZE, and no response, normal or hostile, was a 5xx.

Needs PostgreSQL (trust auth) and Redis on this machine; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scratch import delete_stream, drop_database  # noqa: E402
from soak import Client, Known, RssSampler, Server, Tally, log, percentile  # noqa: E402

from service.ids import random_part  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.store.migrate import migrate  # noqa: E402
from service.tokens import create_token  # noqa: E402

POOL_SIZE = Settings().db_pool_size
P99_RATIO_LIMIT = 2.0
RSS_LIMIT_MB = 150
SAMPLE_SECONDS = 0.2
ONE_MB = 1024 * 1024
THIS_SCRIPT = str(Path(__file__).resolve())


# ------------------------------------------------------------------------------------ the attack


@dataclass
class AttackTally:
    statuses: dict[str, Counter] = field(default_factory=dict)  # kind -> status (or "closed") -> count
    opened: Counter = field(default_factory=Counter)

    def saw(self, kind: str, status: int | str) -> None:
        self.statuses.setdefault(kind, Counter())[str(status)] += 1


async def read_status(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, connection closed after it) of one response; its body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)
    return int(lines[0].split(" ")[1]), headers.get("connection", "").lower() == "close"


async def paced(rate: float, deadline: float, step: Any) -> None:
    """Call `step()` `rate` times a second until the deadline (as fast as it can, if it cannot keep up)."""
    interval, next_at = 1 / rate, time.monotonic()
    while time.monotonic() < deadline:
        await step()
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def slow_header_connection(host: str, port: int, deadline: float, tally: AttackTally) -> None:
    """One connection at a time that sends its head a byte a second; opened again whenever it is cut."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally.saw("slow header", "refused")
            await asyncio.sleep(0.5)
            continue
        tally.opened["slow header"] += 1
        try:
            writer.write(b"GET /v1/conversations HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while time.monotonic() < deadline:
                try:  # a second's wait for the server's answer, else one more byte
                    status, _ = await asyncio.wait_for(read_status(reader), 1.0)
                except TimeoutError:
                    writer.write(b"a")
                    await writer.drain()
                    continue
                tally.saw("slow header", status)
                break
        except (OSError, asyncio.IncompleteReadError):
            tally.saw("slow header", "closed")
        finally:
            writer.close()


async def _status_or_close(reader: asyncio.StreamReader) -> int | str:
    try:
        async with asyncio.timeout(5):
            return (await read_status(reader))[0]
    except (asyncio.IncompleteReadError, OSError, TimeoutError):
        return "closed"


async def big_header(host: str, port: int, tally: AttackTally) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        tally.saw("1 MB header", "refused")
        return
    tally.opened["1 MB header"] += 1
    try:
        writer.write(b"GET /v1/conversations HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(16):
            writer.write(b"b" * (ONE_MB // 16))
            await writer.drain()
        writer.write(b"\r\n\r\n")
        await writer.drain()
    except OSError:
        pass  # the server answered and closed before we were done: read what it said
    tally.saw("1 MB header", await _status_or_close(reader))
    writer.close()


class KeepAlive:
    """One keep-alive connection for a stream of small requests, reopened when the server closes it."""

    def __init__(self, host: str, port: int, kind: str, tally: AttackTally) -> None:
        self.host, self.port, self.kind, self.tally = host, port, kind, tally
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> None:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                self.tally.opened[self.kind] += 1
            assert self.reader is not None
            self.writer.write(request)
            status, closed = await read_status(self.reader)
            self.tally.saw(self.kind, status)
            if closed:
                self.close()
        except (OSError, asyncio.IncompleteReadError):
            self.tally.saw(self.kind, "closed")
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def attack(args: argparse.Namespace) -> dict[str, Any]:
    target = urlsplit(args.attack)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    deadline = time.monotonic() + args.duration
    tally = AttackTally()
    rng = random.Random(7)
    tokens = KeepAlive(host, port, "bad token", tally)
    deletes = KeepAlive(host, port, "keyed 404 DELETE", tally)

    async def bad_token() -> None:
        token = ("cvk_" + random_part(40)) if rng.random() < 0.5 else uuid.uuid4().hex
        await tokens.send(f"GET /v1/conversations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
                          .encode())

    async def keyed_404_delete() -> None:
        await deletes.send((f"DELETE /v1/conversations/{random_part(16)} HTTP/1.1\r\nHost: x\r\n"
                            f"Authorization: Bearer {args.token}\r\nIdempotency-Key: {uuid.uuid4()}\r\n\r\n").encode())

    async def one_big_header() -> None:
        await big_header(host, port, tally)

    await asyncio.gather(
        *(slow_header_connection(host, port, deadline, tally) for _ in range(args.slow_headers)),
        paced(args.big_header_rate, deadline, one_big_header),
        paced(args.bad_token_rate, deadline, bad_token),
        paced(args.keyed_404_rate, deadline, keyed_404_delete),
    )
    tokens.close()
    deletes.close()
    return {"statuses": {kind: dict(counts) for kind, counts in tally.statuses.items()},
            "connections_opened": dict(tally.opened)}


# ----------------------------------------------------------------------------------- the two runs


@dataclass
class Phase:
    name: str
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    peak_rss_mb: float = 0.0
    peak_pool_connections: int = 0
    peak_connections: int = 0
    attack: dict[str, Any] = field(default_factory=dict)


async def sample_postgres(url: str, database: str, phase: Phase, stop: asyncio.Event) -> None:
    connection = await asyncpg.connect(url)
    try:
        while not stop.is_set():
            pool, total = await connection.fetchrow(
                "SELECT count(*) FILTER (WHERE application_name = 'conversations-api'), count(*) "
                "FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database)
            phase.peak_pool_connections = max(phase.peak_pool_connections, pool)
            phase.peak_connections = max(phase.peak_connections, total)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)
    finally:
        await connection.close()


async def run_phase(name: str, server: Server, url: str, database: str, accounts: dict[str, str],
                    args: argparse.Namespace, attacker_token: str | None) -> Phase:
    phase = Phase(name)
    known, tally = Known(), Tally()
    names = list(accounts)
    clients = [Client(n, names[n % len(names)], accounts[names[n % len(names)]], server.base_url, known, tally)
               for n in range(args.clients)]
    assert server.process is not None
    sampler = RssSampler(server.process.pid)
    stop = asyncio.Event()
    samplers = [asyncio.create_task(sampler.run(stop)),
                asyncio.create_task(sample_postgres(url, database, phase, stop))]
    attacker = None
    if attacker_token is not None:
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, THIS_SCRIPT, "--attack", server.base_url, "--token", attacker_token,
            "--duration", str(args.duration), "--slow-headers", str(args.slow_headers),
            "--big-header-rate", str(args.big_header_rate), "--bad-token-rate", str(args.bad_token_rate),
            "--keyed-404-rate", str(args.keyed_404_rate), stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(1.0)  # the attack is under way before the measured load starts
    log(f"{name}: {args.clients} clients for {args.duration:.0f} s" + (" under attack" if attacker else ""))
    started = time.monotonic()
    await asyncio.gather(*(client.run(started + args.duration) for client in clients))
    phase.seconds = time.monotonic() - started
    if attacker is not None:
        stdout, _ = await asyncio.wait_for(attacker.communicate(), args.duration + 60)
        phase.attack = json.loads(stdout)
    stop.set()
    await asyncio.gather(*samplers)
    phase.requests = sum(tally.requests.values())
    phase.latencies = [seconds for values in tally.latency.values() for seconds in values]
    phase.statuses = tally.statuses
    phase.unexpected = tally.unexpected
    phase.peak_rss_mb = sampler.peak_total_kib / 1024
    return phase


def server_errors(phase: Phase) -> int:
    normal = sum(count for status, count in phase.statuses.items() if int(status) >= 500)
    hostile = sum(count for counts in phase.attack.get("statuses", {}).values()
                  for status, count in counts.items() if status.isdigit() and int(status) >= 500)
    return normal + hostile


def table(phases: list[Phase], args: argparse.Namespace) -> str:
    lines = [f"benchmarks/hostile.py: 1 worker, {args.clients} normal clients (the soak's mix), "
             f"{args.duration:.0f} s per run",
             "",
             f"{'run':<10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'5xx':>6}{'other bad':>11}"
             f"{'peak RSS MB':>13}{'pool conns':>12}{'all conns':>11}",
             "-" * 98]
    for phase in phases:
        lines.append(f"{phase.name:<10}{phase.requests / phase.seconds:>8.0f}{percentile(phase.latencies, 0.5):>9}"
                     f"{percentile(phase.latencies, 0.99):>9}{percentile(phase.latencies, 1.0):>9}"
                     f"{server_errors(phase):>6}{sum(phase.unexpected.values()):>11}{phase.peak_rss_mb:>13.1f}"
                     f"{phase.peak_pool_connections:>12}{phase.peak_connections:>11}")
    attacked = phases[-1].attack
    lines += ["", f"hostile traffic during the second run ({args.slow_headers} slow-header connections at a time, "
                  f"1 MB headers {args.big_header_rate:g}/s, bad tokens {args.bad_token_rate:g}/s, "
                  f"keyed 404 DELETEs {args.keyed_404_rate:g}/s):"]
    opened = attacked.get("connections_opened", {})
    for kind in sorted({*attacked.get("statuses", {}), *opened}):
        counts = attacked.get("statuses", {}).get(kind, {})
        lines.append(f"  {kind:<18} {sum(counts.values()):>7} answers {dict(sorted(counts.items()))}"
                     f"  ({opened.get(kind, 0)} connections opened)")
    return "\n".join(lines)


def verdict(phases: list[Phase]) -> dict[str, bool]:
    calm, attacked = phases
    ratio = (percentile(attacked.latencies, 0.99) or 0) / max(percentile(calm.latencies, 0.99) or 0, 0.001)
    return {
        f"normal p99 within {P99_RATIO_LIMIT:g}x of the calm run ({ratio:.2f}x)": ratio <= P99_RATIO_LIMIT,
        f"server RSS under {RSS_LIMIT_MB} MB": all(p.peak_rss_mb < RSS_LIMIT_MB for p in phases),
        f"request-pool connections within DB_POOL_SIZE ({POOL_SIZE})":
            all(p.peak_pool_connections <= POOL_SIZE for p in phases),
        "no 5xx, normal or hostile": all(server_errors(p) == 0 for p in phases),
        "no unexpected answer to a normal client": all(not p.unexpected for p in phases),
    }


async def main(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d%H%M%S") + f"_{os.getpid()}"
    database = f"hostile_{stamp}"
    url = urlunsplit(urlsplit(args.database_url)._replace(path=f"/{database}"))
    stream = f"hostile:{stamp}:events"
    settings = Settings(database_url=url, redis_url=args.redis_url, events_stream=stream)
    await migrate(settings)
    accounts = {f"acct_normal_{n}": (await create_token(settings, f"acct_normal_{n}"))[0] for n in range(4)}
    attacker_token = (await create_token(settings, "acct_attacker"))[0]
    server = Server({"DATABASE_URL": url, "REDIS_URL": args.redis_url, "EVENTS_STREAM": stream}, 1)
    phases: list[Phase] = []
    try:
        server.launch()
        await server.wait_ready()
        phases.append(await run_phase("calm", server, args.database_url, database, accounts, args, None))
        phases.append(await run_phase("hostile", server, args.database_url, database, accounts, args,
                                      attacker_token))
    finally:
        server.stop()
        await delete_stream(args.redis_url, stream)
        await drop_database(args.database_url, database)
    print(table(phases, args))
    checks = verdict(phases)
    print()
    for check, held in checks.items():
        print(f"  {'ok  ' if held else 'FAIL'} {check}")
    if args.json:
        args.json.write_text(json.dumps({"phases": [{**phase.__dict__, "latencies": None} for phase in phases],
                                         "checks": checks}, indent=2, default=str))
    return 0 if all(checks.values()) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each run (default 30)")
    parser.add_argument("--clients", type=int, default=32, help="normal clients (default 32)")
    parser.add_argument("--slow-headers", type=int, default=200, help="slow-header connections at a time")
    parser.add_argument("--big-header-rate", type=float, default=5.0, help="1 MB-header requests a second")
    parser.add_argument("--bad-token-rate", type=float, default=200.0, help="bad-token requests a second")
    parser.add_argument("--keyed-404-rate", type=float, default=100.0, help="keyed DELETEs of no conversation a second")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a maintenance database URL; the run's database is created beside it")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--attack", default=None, help=argparse.SUPPRESS)  # the attacker process: the server's URL
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.attack:
        print(json.dumps(asyncio.run(attack(arguments))))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
