"""The project's own benchmark: seed, serve, load every scenario with wrk, report one table.

    python benchmarks/run.py                          # 3 accounts x 10,000 conversations, 1 worker
    python benchmarks/run.py --workers 2 --duration 20
    python benchmarks/run.py --scale 1000000          # also the 1k-vs-1M page probes
    python benchmarks/run.py --compare ../before      # side by side with another checkout

What a run does:
  1. creates a throwaway database `bench_<stamp>` with the service's own migrate code and COPYs
     seed rows into it (time-ordered ids, 80 % contacts / 20 % groups, some muted, pinned and
     archived), then issues one token per account with the service's own tokens code;
  2. starts `python -m service serve --no-migrate --workers N` (LOG_LEVEL=warning) on a free port;
  3. per scenario (get, list, cursor, update, create): a warm-up, then `wrk -t1 -cC -dD` with
     benchmarks/load.lua, reading req/s, p50, p99 and errors from wrk, and the CPU time the
     server's processes and PostgreSQL used from /proc (microseconds per request);
  4. the event-latency probe: creates at a light, steady rate, each timed from its HTTP response
     to its entry's arrival on the stream (XREAD BLOCK from a separate connection);
  5. with --scale N: an account with 1,000 conversations (and as many events in the feed's log)
     and one with N; on each, the cursor, activity-order and feed walks, and EXPLAIN (ANALYZE,
     BUFFERS) of a page deep in each order;
  6. the server's RSS per worker after all that; then it stops the server and drops the database.

With --compare DIR (another checkout of the project, e.g. `git worktree add ../before <commit>`),
the same is done for it with its own migrate and schema, and every scenario runs on both, the
two interleaved, so the rows compare what each version costs on the same machine at the same
moment (step 4 and 5 run for this checkout only).

Needs only PostgreSQL (127.0.0.1:5432, trust auth), Redis (127.0.0.1:6379) and wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arrivals import StreamArrivals, percentiles  # noqa: E402
from processes import cpu_seconds, free_port, group_pids, postgres_pids, rss_mb  # noqa: E402
from scratch import delete_stream, drop_database  # noqa: E402

from service.ids import encode_millis, random_part  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.tokens import create_token  # noqa: E402

SCENARIOS = ("get", "list", "cursor", "activity", "update", "create")
SCALE_SCENARIOS = ("cursor", "activity", "feed")
LOAD_SCRIPT = Path(__file__).resolve().parent / "load.lua"
SEED_NOW_MS = 1_760_000_000_000


@dataclass
class Measurement:
    scenario: str
    target: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    server_us: float
    postgres_us: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass
class Report:
    settings: dict
    runs: list[Measurement] = field(default_factory=list)
    event_latency_ms: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)
    rss_mb: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- data


def conversation_rows(account: str, count: int, rng: random.Random) -> list[tuple]:
    """`count` conversations of `account`, created over a year, with time-ordered ids."""
    rows = []
    for _ in range(count):
        created_ms = SEED_NOW_MS - rng.randrange(365 * 86400 * 1000)
        created = created_ms // 1000
        party = random_part(16)
        is_group = rng.random() < 0.2
        rows.append((account, encode_millis(created_ms) + random_part(), None if is_group else party,
                     party if is_group else None, random_part(16) if rng.random() < 0.1 else None,
                     rng.random() < 0.05, rng.random() < 0.15,
                     created + rng.randrange(30 * 86400) if rng.random() < 0.9 else None,
                     created + rng.randrange(30 * 86400) if rng.random() < 0.8 else None,
                     created, created + 86400 if rng.random() < 0.1 else None))
    return rows


COPY_COLUMNS = ["account_id", "id", "contact_id", "group_id", "pinned_message_id", "is_pinned", "is_muted",
                "last_active_at", "last_opened_at", "created_at", "archived_at"]


async def seed(url: str, sizes: dict[str, int]) -> dict[str, list[str]]:
    rng = random.Random(42)
    connection = await asyncpg.connect(url)
    ids: dict[str, list[str]] = {}
    try:
        for account, count in sizes.items():
            for start in range(0, count, 200_000):
                rows = conversation_rows(account, min(200_000, count - start), rng)
                await connection.copy_records_to_table("conversations", records=rows, columns=COPY_COLUMNS)
                ids.setdefault(account, []).extend(row[1] for row in rows[:20_000])
        await connection.execute("VACUUM ANALYZE conversations")
    finally:
        await connection.close()
    return ids


def write_load_data(folder: Path, tokens: list[str], ids: list[list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.txt").write_text("".join(token + "\n" for token in tokens))
    with open(folder / "ids.txt", "w") as out:
        for index, account_ids in enumerate(ids, 1):
            out.writelines(f"{index} {conversation_id}\n" for conversation_id in account_ids)
    return folder


# ------------------------------------------------------------------------------------- processes


class Server:
    def __init__(self, env: dict[str, str], workers: int, checkout: Path = ROOT) -> None:
        self.checkout = checkout
        self.port = free_port()
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "warning"}
        self.workers = workers
        self.log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--no-migrate", "--workers", str(self.workers)],
            cwd=self.checkout, env={**self.env, "PYTHONPATH": str(self.checkout)}, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited; see {self.log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=1).status_code == 200:
                    time.sleep(0.5)  # every worker up
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve not ready; see {self.log.name}")

    @property
    def pids(self) -> list[int]:
        assert self.process is not None
        return group_pids(self.process.pid)

    def worker_pids(self) -> list[int]:
        pids = self.pids
        return [pid for pid in pids if pid != self.process.pid] or pids  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)


def run_wrk(port: int, scenario: str, data: Path, seconds: float, connections: int) -> dict:
    env = {**os.environ, "SCENARIO": scenario, "DATA": str(data), "NONCE": f"{time.time_ns() % 10**12}"}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "5s", "-s", str(LOAD_SCRIPT),
               f"http://127.0.0.1:{port}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def measure(server: Server, scenario: str, data: Path, args: argparse.Namespace, target: str = "this") -> Measurement:
    run_wrk(server.port, scenario, data, args.warmup, args.connections)
    pids, pg = server.pids, postgres_pids()
    server_before, pg_before = cpu_seconds(pids), cpu_seconds(pg)
    result = run_wrk(server.port, scenario, data, args.duration, args.connections)
    server_cpu, pg_cpu = cpu_seconds(pids) - server_before, cpu_seconds(pg) - pg_before
    requests = max(1, result["requests"])
    return Measurement(scenario, target, result["requests"], result["seconds"], result["errors"],
                       result["p50_us"] / 1000, result["p99_us"] / 1000, server_cpu / requests * 1e6,
                       pg_cpu / requests * 1e6)


# -------------------------------------------------------------------------------------- probes


async def event_latency(port: int, token: str, redis_url: str, stream: str, count: int, rate: float) -> dict:
    """From each create's HTTP response to its entry on the stream, at `rate` creates a second."""
    answered: dict[str, float] = {}
    async with StreamArrivals(redis_url, [stream]) as arrivals:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for n in range(count):
                started = time.perf_counter()
                response = await client.post("/v1/conversations", json={"contact_id": f"probe{time.time_ns()}{n}"})
                answered[response.json()["id"]] = time.perf_counter()
                await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        await arrivals.wait_for(answered, 5)
    delays = arrivals.delays_ms(answered)
    return {"events": count, "arrived": len(delays), **percentiles(delays), "rate_per_s": rate}


async def seed_event_log(url: str, account: str, count: int) -> None:
    """`count` published events of `account` in the feed's log (today's partition), 500 a batch."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO event_log (batch, stream, position, event_id, type, account_id, conversation_id, "
            "occurred_at, sequence, schema_version, is_pinned, is_muted, created_at) "
            "SELECT 1000000000 + g / 500, 'bench', g, 'evt_' || lpad(g::text, 16, '0'), 'conversation.created', $1, "
            "lpad(g::text, 16, '0'), floor(extract(epoch FROM now()))::bigint, 1, 1, false, false, "
            "floor(extract(epoch FROM now()))::bigint FROM generate_series(1, $2) g", account, count)
        await connection.execute("VACUUM ANALYZE event_log")
    finally:
        await connection.close()


DEEP_PAGES = {
    # order -> (a page deep in it, its arguments: a position near the middle of the account's
    # conversations or seeded events, from their ids and count)
    "cursor": ("SELECT id FROM conversations WHERE account_id = $1 AND id < $2 ORDER BY id DESC LIMIT 11",
               lambda ids, size: [sorted(ids)[len(ids) // 2]]),
    "activity": ("SELECT id FROM conversations WHERE account_id = $1 "
                 "AND (is_pinned, COALESCE(last_active_at, -1), id) < ($2, $3, $4) "
                 "ORDER BY is_pinned DESC, COALESCE(last_active_at, -1) DESC, id DESC LIMIT 11",
                 lambda ids, size: [False, SEED_NOW_MS // 2000, sorted(ids)[len(ids) // 2]]),
    "feed": ("SELECT event_id FROM event_log WHERE account_id = $1 AND (batch, position) < ($2, $3) "
             "ORDER BY batch DESC, position DESC LIMIT 11", lambda ids, size: [1000000000 + size // 1000, size // 2]),
}


async def explain_deep_page(url: str, account: str, order: str, ids: list[str], size: int) -> dict:
    statement, arguments = DEEP_PAGES[order]
    connection = await asyncpg.connect(url)
    try:
        plan = await connection.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", account,
                                         *arguments(ids, size))
    finally:
        await connection.close()
    top = json.loads(plan)[0]
    return {"execution_ms": top["Execution Time"], "shared_buffers": top["Plan"].get("Shared Hit Blocks", 0)
            + top["Plan"].get("Shared Read Blocks", 0)}


# -------------------------------------------------------------------------------------- report


def table(report: Report) -> str:
    lines = [f"benchmarks/run.py: {report.settings}", "",
             f"{'scenario':<10}{'target':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'srv us':>9}{'pg us':>9}"
             f"{'errors':>8}", "-" * 73]
    for run in report.runs:
        lines.append(f"{run.scenario:<10}{run.target:<10}{run.rate:>9.0f}{run.p50_ms:>9.2f}{run.p99_ms:>9.2f}"
                     f"{run.server_us:>9.0f}{run.postgres_us:>9.0f}{run.errors:>8}")
    if report.event_latency_ms:
        e = report.event_latency_ms
        lines += ["", f"event latency (HTTP response -> entry on the stream), {e['events']} creates at "
                      f"{e['rate_per_s']:.0f}/s: p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms, max {e['max_ms']} ms, "
                      f"{e['arrived']}/{e['events']} arrived"]
    if report.scale:
        lines += ["", "pages by account size (creation-order cursor, activity order, events feed):"]
        for name, values in report.scale.items():
            lines.append(f"  {name:<22} {values}")
    if report.rss_mb:
        lines += ["", f"server RSS after the run (MB per process): {', '.join(f'{v:.0f}' for v in report.rss_mb)}"]
    return "\n".join(lines)


def migrate_checkout(checkout: Path, url: str) -> None:
    """The checkout's own `migrate` (its schema may differ from this one's)."""
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=checkout, check=True, timeout=120,
                   env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(checkout)}, capture_output=True)


async def prepare(checkout: Path, url: str, sizes: dict[str, int]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """A seeded database for `checkout`: (ids by account, token by account)."""
    migrate_checkout(checkout, url)
    ids = await seed(url, sizes)
    tokens = {account: (await create_token(Settings(database_url=url), account))[0] for account in sizes}
    return ids, tokens


async def main(args: argparse.Namespace) -> Report:
    stamp = f"{int(time.time())}_{os.getpid()}"
    admin = args.database
    checkouts = {"this": args.checkout.resolve()} | ({"compared": args.compare.resolve()} if args.compare else {})
    urls = {name: admin.rsplit("/", 1)[0] + f"/bench_{stamp}_{name}" for name in checkouts}
    streams = {name: f"bench:{stamp}:{name}:events" for name in checkouts}
    report = Report(settings={"workers": args.workers, "connections": args.connections, "duration": args.duration,
                              "accounts": args.accounts, "conversations": args.conversations,
                              **({"compared": str(args.compare)} if args.compare else {})})
    servers: dict[str, Server] = {}
    try:
        sizes = {f"acct_{n}": args.conversations for n in range(1, args.accounts + 1)}
        main_accounts = list(sizes)
        if args.scale:
            sizes |= {"acct_small": 1_000, "acct_big": args.scale}
        work = Path(tempfile.mkdtemp(prefix="bench-data-"))
        data: dict[str, Path] = {}
        for name, checkout in checkouts.items():
            # The scale accounts only in this checkout's database: its probes run on it alone.
            seeded = await prepare(checkout, urls[name], sizes if name == "this" else
                                   {a: n for a, n in sizes.items() if a in main_accounts})
            if name == "this":
                ids, tokens = seeded
            data[name] = write_load_data(work / name, [seeded[1][a] for a in main_accounts],
                                         [seeded[0][a] for a in main_accounts])
            servers[name] = Server({"DATABASE_URL": urls[name], "REDIS_URL": args.redis,
                                    "EVENTS_STREAM": streams[name]}, args.workers, checkout)
            servers[name].start()
        for scenario in args.scenarios:
            for name, server in servers.items():
                run = measure(server, scenario, data[name], args, name)
                report.runs.append(run)
                print(f"  {scenario:<8} {name:<8} {run.rate:8.0f} req/s  p50 {run.p50_ms:.2f} ms  "
                      f"p99 {run.p99_ms:.2f} ms  srv {run.server_us:.0f} us  pg {run.postgres_us:.0f} us  "
                      f"errors {run.errors}", file=sys.stderr)
        server = servers["this"]
        if args.latency_probe:
            await asyncio.sleep(2)  # let the relay drain what the write scenarios left
            report.event_latency_ms = await event_latency(server.port, tokens[main_accounts[0]], args.redis,
                                                          streams["this"], args.latency_probe, rate=50)
        if args.scale:
            for account in ("acct_small", "acct_big"):
                await seed_event_log(urls["this"], account, sizes[account])
                folder = write_load_data(work / account, [tokens[account]], [ids[account]])
                for order in SCALE_SCENARIOS:
                    run = measure(server, order, folder, args)
                    report.scale[f"{order:<8} {account} ({sizes[account]:,})"] = {
                        "req_s": round(run.rate), "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
                        "explain": await explain_deep_page(urls["this"], account, order, ids[account],
                                                           sizes[account])}
        report.rss_mb = rss_mb(server.worker_pids())
    finally:
        for server in servers.values():
            server.stop()
        for name in checkouts:
            await drop_database(admin, f"bench_{stamp}_{name}")
        for stream in streams.values():
            await delete_stream(args.redis, stream)
    return report


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL of the server to create the throwaway database on")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--accounts", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=10_000, help="per account")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--scenarios", type=lambda text: text.split(","), default=list(SCENARIOS))
    parser.add_argument("--latency-probe", type=int, default=500, help="creates timed to the stream (0: skip)")
    parser.add_argument("--scale", type=int, default=0, help="also compare cursor pages at 1,000 vs this many")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--checkout", type=Path, default=ROOT,
                        help="the checkout to measure (default: this one); --compare's runs beside it")
    parser.add_argument("--compare", type=Path, default=None,
                        help="another checkout of the project, run side by side (scenarios interleaved)")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    print(table(result))
    if arguments.json:
        arguments.json.write_text(json.dumps(asdict(result), indent=2, default=str))
