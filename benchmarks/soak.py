"""A bounded soak: 32 clients, a realistic mix of calls, then PostgreSQL, the clients and the stream must agree.

    python benchmarks/soak.py                       # 60 s, 32 clients, 4 accounts, serve's default workers
    python benchmarks/soak.py --duration 20 --clients 32 --workers 2

What a run does:
  1. creates a throwaway database `soak_<stamp>` with the service's own migrate code, and one
     token per account with its tokens code;
  2. starts `python -m service serve --no-migrate` (its own process group, LOG_LEVEL=warning) on
     a free port, publishing to a stream of its own, and samples the VmRSS of every process in
     that group (/proc/<pid>/status) every 0.2 s;
  3. runs the clients for --duration seconds, each bound to an account that several clients share,
     each picking its next call at random: retrieve 32 %, list 24 % (first pages with a random
     limit and filters, then `starting_after` / `ending_before` pages), update 26 % (PUT or PATCH,
     JSON or form, a random subset of the attributes, some conditional on the ETag the client last
     saw), create 12 % (a contact or group from a small pool per account, so some already have one),
     delete 6 %. A 404 for a conversation another client deleted, a 409 for a party that already has
     a conversation and a 412 for a stale If-Match are expected; anything else that is not a 2xx, a
     transport error, or a response that breaks the contract's invariants is an unexpected error;
  4. waits for in-flight calls, then for the outbox to drain, and compares three views:
     PostgreSQL's rows; the clients' own view (for every conversation a 201 created, the body of
     the 2xx response with the highest ETag, or gone if a DELETE answered 204); and the stream,
     deduplicated by event id (per conversation the event with the highest sequence: its data
     and sequence, or gone if it is a delete). They must agree exactly;
  5. prints one JSON object (requests, statuses, errors by kind, latency, agreement, peak RSS) on
     stdout, stops the server, drops the database and deletes the stream. Exit code 0 only with
     exact agreement and no unexpected error.

Needs PostgreSQL (trust auth) and Redis; --database-url is a maintenance URL (the run's database
is created next to it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processes import free_port, group_pids  # noqa: E402
from scratch import drop_database  # noqa: E402

from service.settings import Settings  # noqa: E402
from service.store.migrate import migrate  # noqa: E402
from service.tokens import create_token  # noqa: E402
from tests.http_helpers import form_value  # noqa: E402

FIELDS = ["id", "contact_id", "group_id", "pinned_message_id", "is_pinned", "is_muted", "last_active_at",
          "last_opened_at", "created_at", "archived_at"]
MIX = {"retrieve": 32, "list": 24, "update": 26, "create": 12, "delete": 6}
CONTACTS_PER_ACCOUNT = 400
GROUPS_PER_ACCOUNT = 80
RSS_SAMPLE_SECONDS = 0.2
NOW = 1_760_000_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- the server


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass
class RssSampler:
    """Peak VmRSS of a process group: of the sum over its processes, and of each process."""

    pgid: int
    samples: int = 0
    peak_total_kib: int = 0
    peak_by_pid: dict[int, int] = field(default_factory=dict)
    first_total_kib: int | None = None
    last_total_kib: int | None = None
    most_processes: int = 0

    def sample(self) -> None:
        sizes = {pid: size for pid in group_pids(self.pgid) if (size := rss_kib(pid)) is not None}
        if not sizes:
            return
        total = sum(sizes.values())
        self.samples += 1
        self.peak_total_kib = max(self.peak_total_kib, total)
        self.most_processes = max(self.most_processes, len(sizes))
        for pid, size in sizes.items():
            self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), size)
        if self.first_total_kib is None:
            self.first_total_kib = total
        self.last_total_kib = total

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_SAMPLE_SECONDS)
        self.sample()

    def report(self) -> dict[str, Any]:
        mib = 1024
        return {"peak_total_mib": round(self.peak_total_kib / mib, 1),
                "peak_per_process_mib": sorted((round(v / mib, 1) for v in self.peak_by_pid.values()), reverse=True),
                "first_total_mib": round((self.first_total_kib or 0) / mib, 1),
                "last_total_mib": round((self.last_total_kib or 0) / mib, 1),
                "processes": self.most_processes, "samples": self.samples}


class Server:
    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "warning"}
        self.workers = workers
        self.log_path = Path(tempfile.mkstemp(prefix="soak-serve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        args = [sys.executable, "-m", "service", "serve", "--no-migrate"]
        if self.workers:
            args += ["--workers", str(self.workers)]
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    async def wait_ready(self, within: float = 30) -> None:
        assert self.process is not None
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base_url, timeout=1) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"serve exited with {self.process.returncode}; see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"serve did not become ready within {within} s; see {self.log_path}")

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(5)


# ------------------------------------------------------------------------------- the clients' view


@dataclass
class Known:
    """Everything the clients learned from their responses."""

    # conversation -> (ETag, body) of the 2xx response with the highest ETag
    latest: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)  # named by a 201
    deleted_at: dict[str, float] = field(default_factory=dict)  # 204 received (monotonic time)
    not_found: set[str] = field(default_factory=set)  # named by a 404
    named_by_conflict: set[str] = field(default_factory=set)  # named by a 409's conversation_id
    live: dict[str, dict[str, None]] = field(default_factory=lambda: defaultdict(dict))  # account -> ids to try
    owner: dict[str, str] = field(default_factory=dict)  # conversation -> account

    def learn(self, account: str, conversation_id: str) -> None:
        if conversation_id not in self.deleted_at:
            self.live[account][conversation_id] = None
            self.owner.setdefault(conversation_id, account)

    def forget(self, account: str, conversation_id: str) -> None:
        self.live[account].pop(conversation_id, None)


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # operation -> count
    statuses: Counter = field(default_factory=Counter)  # status -> count
    expected: Counter = field(default_factory=Counter)  # "404 retrieve" -> count
    unexpected: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def wrong(self, kind: str, detail: str) -> None:
        self.unexpected[kind] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {detail[:300]}")


class Client:
    """One simulated client: an account, a keep-alive connection, a random sequence of calls."""

    def __init__(self, number: int, account: str, token: str, base_url: str, known: Known, tally: Tally) -> None:
        self.rng = random.Random(number)
        self.account = account
        self.known = known
        self.tally = tally
        self.http = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.operations = list(MIX)
        self.weights = list(MIX.values())

    async def run(self, deadline: float) -> None:
        async with self.http:
            while time.monotonic() < deadline:
                operation = self.rng.choices(self.operations, self.weights)[0]
                await getattr(self, "listing" if operation == "list" else operation)()

    # ---- plumbing

    async def call(self, operation: str, method: str, url: str, body: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> tuple[httpx.Response | None, float]:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if body is not None:
            if self.rng.random() < 0.1:
                kwargs["content"] = urlencode({k: form_value(v) for k, v in body.items()})
                kwargs["headers"]["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                kwargs["json"] = body
        started = time.monotonic()
        self.tally.requests[operation] += 1
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            self.tally.wrong(f"transport {type(error).__name__}", f"{method} {url}: {error}")
            return None, started
        self.tally.latency[operation].append(time.monotonic() - started)
        self.tally.statuses[response.status_code] += 1
        return response, started

    def unexpected_status(self, operation: str, response: httpx.Response) -> None:
        self.tally.wrong(f"{response.status_code} {operation}", response.text)

    def pick(self) -> str | None:
        live = self.known.live[self.account]
        if not live:
            return None
        # Mostly recent conversations (as a chat client would), sometimes any.
        ids = list(live)
        return ids[-1 - int(self.rng.expovariate(1 / 20)) % len(ids)] if self.rng.random() < 0.7 \
            else self.rng.choice(ids)

    def saw(self, response: httpx.Response, started: float) -> None:
        """A 200/201 with one conversation: the client's view keeps the highest version."""
        body = response.json()
        if list(body) != FIELDS:
            self.tally.wrong("invariant: field order", str(body))
        version = int(response.headers["etag"].strip('"'))
        conversation_id = body["id"]
        deleted_at = self.known.deleted_at.get(conversation_id)
        if deleted_at is not None and started > deleted_at:
            self.tally.wrong("invariant: 2xx after its delete answered 204", conversation_id)
        previous = self.known.latest.get(conversation_id)
        if previous is not None and previous[0] == version and previous[1] != body:
            self.tally.wrong("invariant: one version, two bodies", f"{conversation_id} v{version}")
        if previous is None or version > previous[0]:
            self.known.latest[conversation_id] = (version, body)

    def gone(self, conversation_id: str, operation: str) -> None:
        self.tally.expected[f"404 {operation}"] += 1
        self.known.not_found.add(conversation_id)
        self.known.forget(self.account, conversation_id)

    # ---- the calls

    async def retrieve(self) -> None:
        conversation_id = self.pick()
        if conversation_id is None:
            return await self.create()
        response, started = await self.call("retrieve", "GET", f"/v1/conversations/{conversation_id}")
        if response is None:
            return None
        if response.status_code == 200:
            self.saw(response, started)
        elif response.status_code == 404:
            self.gone(conversation_id, "retrieve")
        else:
            self.unexpected_status("retrieve", response)
        return None

    async def listing(self) -> None:
        params: dict[str, Any] = {"limit": self.rng.choice([1, 5, 10, 10, 20, 50, 100])}
        for name in ("muted", "pinned", "archived"):
            if self.rng.random() < 0.15:
                params[name] = self.rng.choice(["true", "false"])
        if self.rng.random() < 0.05:
            params["contact_id"] = f"contact_{self.rng.randrange(CONTACTS_PER_ACCOUNT)}"
        elif self.rng.random() < 0.03:
            params["group_id"] = f"group_{self.rng.randrange(GROUPS_PER_ACCOUNT)}"
        pages = 1 + (self.rng.random() < 0.4) * self.rng.randrange(1, 4)
        backwards = self.rng.random() < 0.25
        for _ in range(pages):
            response, _ = await self.call("list", "GET", "/v1/conversations?" + urlencode(params))
            if response is None:
                return
            if response.status_code != 200:
                self.unexpected_status("list", response)
                return
            page = response.json()
            self.check_page(params, page)
            for conversation in page["data"]:
                self.known.learn(self.account, conversation["id"])
            if not page["has_more"] or not page["data"]:
                return
            params.pop("starting_after", None)
            params.pop("ending_before", None)
            if backwards:
                params["ending_before"] = page["data"][0]["id"]
            else:
                params["starting_after"] = page["data"][-1]["id"]

    def check_page(self, params: dict[str, Any], page: dict[str, Any]) -> None:
        data = page["data"]
        ids = [c["id"] for c in data]
        problems = []
        if list(page) != ["has_more", "data"]:
            problems.append("keys")
        if len(data) > params["limit"]:
            problems.append("longer than limit")
        if ids != sorted(ids, reverse=True) or len(set(ids)) != len(ids):
            problems.append("not newest first")
        if "starting_after" in params and any(i >= params["starting_after"] for i in ids):
            problems.append("starting_after")
        if "ending_before" in params and any(i <= params["ending_before"] for i in ids):
            problems.append("ending_before")
        checks = {"muted": lambda c: c["is_muted"], "pinned": lambda c: c["is_pinned"],
                  "archived": lambda c: c["archived_at"] is not None}
        for name, test in checks.items():
            if name in params and any(test(c) != (params[name] == "true") for c in data):
                problems.append(f"filter {name}")
        for name in ("contact_id", "group_id"):
            if name in params and (len(data) > 1 or any(c[name] != params[name] for c in data)):
                problems.append(f"filter {name}")
        for problem in problems:
            self.tally.wrong(f"invariant: list {problem}", json.dumps(params))

    async def create(self) -> None:
        if self.rng.random() < 0.8:
            param, party = "contact_id", f"contact_{self.rng.randrange(CONTACTS_PER_ACCOUNT)}"
        else:
            param, party = "group_id", f"group_{self.rng.randrange(GROUPS_PER_ACCOUNT)}"
        response, started = await self.call("create", "POST", "/v1/conversations", {param: party})
        if response is None:
            return
        if response.status_code == 201:
            body = response.json()
            if body[param] != party or response.headers.get("location") != f"/v1/conversations/{body['id']}":
                self.tally.wrong("invariant: create", response.text)
            self.known.created.add(body["id"])
            self.known.learn(self.account, body["id"])
            self.saw(response, started)
        elif response.status_code == 409 and response.json().get("param") == param \
                and response.json().get("conversation_id"):
            self.tally.expected["409 create"] += 1
            self.known.named_by_conflict.add(response.json()["conversation_id"])
            self.known.learn(self.account, response.json()["conversation_id"])
        else:
            self.unexpected_status("create", response)

    def update_body(self) -> dict[str, Any]:
        choices: dict[str, Any] = {
            "is_muted": lambda: self.rng.random() < 0.3,
            "is_pinned": lambda: self.rng.random() < 0.2,
            "pinned_message_id": lambda: None if self.rng.random() < 0.3 else f"msg_{self.rng.randrange(10**6)}",
            "last_active_at": lambda: NOW + self.rng.randrange(10**6),
            "last_opened_at": lambda: None if self.rng.random() < 0.05 else NOW + self.rng.randrange(10**6),
            "archived_at": lambda: None if self.rng.random() < 0.7 else NOW + self.rng.randrange(10**6),
        }
        names = self.rng.sample(list(choices), self.rng.choice([1, 1, 1, 2, 2, 3]))
        return {name: choices[name]() for name in names}

    async def update(self) -> None:
        conversation_id = self.pick()
        if conversation_id is None:
            return await self.create()
        headers = {}
        conditional = self.rng.random() < 0.15 and conversation_id in self.known.latest
        if conditional:
            headers["If-Match"] = f'"{self.known.latest[conversation_id][0]}"'
        method = self.rng.choice(["PUT", "PUT", "PATCH"])
        response, started = await self.call("update", method, f"/v1/conversations/{conversation_id}",
                                            self.update_body(), headers)
        if response is None:
            return None
        if response.status_code == 200:
            self.saw(response, started)
        elif response.status_code == 404:
            self.gone(conversation_id, "update")
        elif response.status_code == 412 and conditional:
            self.tally.expected["412 update"] += 1
        else:
            self.unexpected_status("update", response)
        return None

    async def delete(self) -> None:
        conversation_id = self.pick()
        if conversation_id is None:
            return await self.create()
        response, _ = await self.call("delete", "DELETE", f"/v1/conversations/{conversation_id}")
        if response is None:
            return None
        if response.status_code == 204:
            if conversation_id in self.known.deleted_at:
                self.tally.wrong("invariant: deleted twice", conversation_id)
            self.known.deleted_at[conversation_id] = time.monotonic()
            self.known.forget(self.account, conversation_id)
        elif response.status_code == 404:
            self.gone(conversation_id, "delete")
        else:
            self.unexpected_status("delete", response)
        return None


# --------------------------------------------------------------------------------------- agreement


async def read_stream(redis: aioredis.Redis, stream: str) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    start = "-"
    while True:
        batch = await redis.xrange(stream, start, "+", count=10_000)
        if not batch:
            return entries
        entries.extend(fields for _, fields in batch)
        last = batch[-1][0]
        millis, sequence = last.split("-")
        start = f"{millis}-{int(sequence) + 1}"


def compare(rows: dict[str, dict[str, Any]], known: Known, entries: list[dict[str, str]], tally: Tally
            ) -> dict[str, Any]:
    """Exact agreement of PostgreSQL, the clients' view and the deduplicated stream."""
    mismatches: Counter = Counter()
    examples: list[str] = []

    def mismatch(kind: str, detail: str) -> None:
        mismatches[kind] += 1
        if len(examples) < 10:
            examples.append(f"{kind}: {detail[:300]}")

    # The stream, deduplicated: first copy of each event id; per conversation in stream order.
    first: dict[str, dict[str, str]] = {}
    for fields in entries:
        first.setdefault(fields["id"], fields)
    per_conversation: dict[str, list[dict[str, str]]] = defaultdict(list)
    for fields in first.values():
        per_conversation[fields["conversation_id"]].append(fields)
    stream_live: dict[str, tuple[int, dict[str, Any]]] = {}
    stream_deleted: set[str] = set()
    for conversation_id, events in per_conversation.items():
        sequences = [int(e["sequence"]) for e in events]
        if sequences != list(range(1, len(sequences) + 1)):
            mismatch("stream: sequences not 1..n in stream order", f"{conversation_id} {sequences[:20]}")
        last = max(events, key=lambda e: int(e["sequence"]))
        if last["type"] == "conversation.deleted":
            stream_deleted.add(conversation_id)
        else:
            stream_live[conversation_id] = (int(last["sequence"]), json.loads(last["data"]))

    client_live = {cid: known.latest[cid] for cid in known.created if cid not in known.deleted_at}
    client_deleted = set(known.deleted_at)
    for conversation_id in client_live.keys() | rows.keys() | stream_live.keys():
        stored = rows.get(conversation_id)
        db_view = None if stored is None else (stored["version"], {f: stored[f] for f in FIELDS})
        views = {"database": db_view, "clients": client_live.get(conversation_id),
                 "stream": stream_live.get(conversation_id)}
        if len({json.dumps(v, sort_keys=True) for v in views.values()}) != 1:
            differing = ", ".join(f"{name}={'absent' if v is None else 'v' + str(v[0])}" for name, v in views.items())
            mismatch("live conversation differs", f"{conversation_id}: {differing}")
    for conversation_id in client_deleted | stream_deleted:
        if conversation_id in rows:
            mismatch("deleted but stored", conversation_id)
        if conversation_id not in stream_deleted:
            mismatch("deleted but the stream's last event is not a delete", conversation_id)
        if conversation_id not in client_deleted:
            mismatch("deleted on the stream, no client saw its 204", conversation_id)
    # What the clients were told must fit what happened.
    for conversation_id in known.not_found - client_deleted:
        tally.wrong("invariant: 404 for a conversation nobody deleted", conversation_id)
    for conversation_id in known.named_by_conflict - known.created:
        tally.wrong("invariant: 409 named a conversation no 201 created", conversation_id)
    return {"ok": not mismatches, "live_conversations": len(rows), "deleted_conversations": len(client_deleted),
            "stream_entries": len(entries), "duplicate_entries": len(entries) - len(first),
            "mismatches": dict(mismatches), "examples": examples}


# ------------------------------------------------------------------------------------------- main


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 2)


async def outbox_rows(url: str, stream: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval("SELECT count(*) FROM conversation_outbox WHERE stream = $1", stream)
    finally:
        await connection.close()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d%H%M%S") + f"_{os.getpid()}"
    url = urlunsplit(urlsplit(args.database_url)._replace(path=f"/soak_{stamp}"))
    stream = f"soak:{stamp}:events"
    settings = Settings(database_url=url, redis_url=args.redis_url, events_stream=stream)
    await migrate(settings)
    accounts = {f"acct_soak_{n}": (await create_token(settings, f"acct_soak_{n}"))[0] for n in range(args.accounts)}
    server = Server({"DATABASE_URL": url, "REDIS_URL": args.redis_url, "EVENTS_STREAM": stream}, args.workers)
    redis = aioredis.Redis.from_url(args.redis_url, decode_responses=True)
    known, tally = Known(), Tally()
    try:
        server.launch()
        await server.wait_ready()
        assert server.process is not None
        sampler = RssSampler(server.process.pid)
        sampling_done = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(sampling_done))
        names = list(accounts)
        clients = [Client(n, names[n % len(names)], accounts[names[n % len(names)]], server.base_url, known, tally)
                   for n in range(args.clients)]
        log(f"soak: {args.clients} clients, {len(accounts)} accounts, {args.duration:.0f} s against {server.base_url}")
        started = time.monotonic()
        deadline = started + args.duration
        progress = asyncio.create_task(report_progress(tally, sampler, started))
        await asyncio.gather(*(client.run(deadline) for client in clients))
        elapsed = time.monotonic() - started
        progress.cancel()
        drain_started = time.monotonic()
        while await outbox_rows(url, stream) and time.monotonic() - drain_started < 30:
            await asyncio.sleep(0.1)
        drained_in = time.monotonic() - drain_started
        sampling_done.set()
        await sampling
        backlog = await outbox_rows(url, stream)
        connection = await asyncpg.connect(url)
        try:
            rows = {row["id"]: dict(row) for row in await connection.fetch(
                "SELECT * FROM conversations WHERE account_id = ANY($1::text[])", names)}
        finally:
            await connection.close()
        entries = await read_stream(redis, stream)
        agreement = compare(rows, known, entries, tally)
        if backlog:
            agreement["ok"] = False
            agreement["mismatches"]["outbox not drained"] = backlog
    finally:
        exit_code = server.stop()
        await redis.delete(stream)
        await redis.aclose()
        await drop_database(args.database_url, f"soak_{stamp}")
    total = sum(tally.requests.values())
    unexpected = sum(tally.unexpected.values())
    return {
        "ok": agreement["ok"] and unexpected == 0,
        "duration_seconds": round(elapsed, 1),
        "clients": args.clients,
        "accounts": args.accounts,
        "workers": args.workers or "default (one per CPU)",
        "requests": {"total": total, "per_second": round(total / elapsed, 1),
                     "by_operation": dict(tally.requests.most_common())},
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": {"expected": dict(tally.expected.most_common()), "unexpected": dict(tally.unexpected.most_common()),
                   "unexpected_total": unexpected, "unexpected_examples": tally.examples},
        "latency_ms": {op: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": percentile(v, 1.0),
                            "mean": round(statistics.fmean(v) * 1000, 2)} for op, v in tally.latency.items()},
        "agreement": agreement,
        "outbox_drained_in_seconds": round(drained_in, 2),
        "server_rss": sampler.report(),
        "server_exit_code": exit_code,
    }


async def report_progress(tally: Tally, sampler: RssSampler, started: float) -> None:
    while True:
        await asyncio.sleep(10)
        total = sum(tally.requests.values())
        log(f"  {time.monotonic() - started:5.0f} s: {total} requests, {sum(tally.unexpected.values())} unexpected, "
            f"server RSS {(sampler.last_total_kib or 0) / 1024:.0f} MiB (peak {sampler.peak_total_kib / 1024:.0f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--accounts", type=int, default=4, help="accounts the clients share (default 4)")
    parser.add_argument("--workers", type=int, default=0, help="serve's workers (default: its own, one per CPU)")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a maintenance database URL; the run's database is created beside it")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    summary = asyncio.run(soak(args))
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
