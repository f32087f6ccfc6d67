"""docs/api.md §5 and §6 with PostgreSQL itself stopped and started again, under a real `serve` process.

tests/store/test_faults.py cuts a TCP proxy in front of the shared server; here the server goes away for
real: a private PostgreSQL 15 cluster (tests/private_postgres.py) is stopped with
`pg_ctl stop -m immediate` (every backend killed, crash recovery on the next start) while a
`python -m service serve` process with the default timeouts keeps serving. Meanwhile every
call must be a 503 with Retry-After within 5 s (never a hang, never a 500), /ready a 503 and
/health a 200. Once the cluster accepts connections again, on the same port, that same
process (no restart) must answer 2xx and /ready 200 within 10 s, and publish the events of
the writes that succeed from then on. A hung server (every cluster process SIGSTOPped: the
connections stay open, nothing answers) must also give 503s within 5 s, the bound docs/api.md §7's
"every wait has a timeout" is for. The times are measured, asserted and printed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from service.settings import Settings
from service.store.migrate import migrate
from tests.backends import private_aof_server
from tests.conftest import Account, database_url_for, new_account, wait_for
from tests.private_postgres import PrivatePostgres
from tests.servers import ServiceProcess
from tests.stream_helpers import entries

pytestmark = pytest.mark.slow

CALL_LIMIT_SECONDS = 5.0
RECOVERY_LIMIT_SECONDS = 10.0
# Longer than the token cache (5 s): calls authenticated from the cache, and calls whose token must
# be looked up again, both meet the outage.
OUTAGE_SECONDS = 7.0
CONCURRENT_CLIENTS = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as private:
        yield private


@pytest.fixture(scope="module")
async def private_database_url(cluster: PrivatePostgres) -> str:
    url = database_url_for(cluster.url, "conversations")
    await migrate(Settings(database_url=url))
    return url


@pytest.fixture
def outage_settings(settings: Settings, private_database_url: str) -> Settings:
    return msgspec.structs.replace(settings, database_url=private_database_url)


@pytest.fixture
async def service(outage_settings: Settings, cluster: PrivatePostgres, redis_client, tmp_path: Path
                  ) -> AsyncIterator[ServiceProcess]:
    """`serve` with the documented default timeouts, against the private cluster."""
    env = {"DATABASE_URL": outage_settings.database_url, "REDIS_URL": outage_settings.redis_url,
           "EVENTS_STREAM": outage_settings.events_stream}
    process = ServiceProcess(env, log_path=tmp_path / "serve.log").start()
    try:
        yield process
    finally:
        process.stop()
        cluster.thaw()
        if not cluster.is_running():  # a test that failed mid-outage leaves the next one a server
            await asyncio.to_thread(cluster.start)


@pytest.fixture
async def outage_account(outage_settings: Settings) -> Account:
    return await new_account(outage_settings)


@pytest.fixture
async def client(service: ServiceProcess, outage_account: Account) -> AsyncIterator[httpx.AsyncClient]:
    # The client's own timeout is far above the limit, so a hang is measured as one, not cut short.
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {outage_account.token}"}) as http:
        yield http


@dataclass
class Call:
    what: str
    status: int
    seconds: float
    retry_after: str | None
    body: str


async def timed(http: httpx.AsyncClient, what: str, method: str, url: str, body: dict | None = None) -> Call:
    started = time.monotonic()
    response = await http.request(method, url, json=body)
    return Call(what, response.status_code, time.monotonic() - started, response.headers.get("retry-after"),
                response.text)


def operations(conversation_id: str) -> list[tuple[str, str, str, dict | None]]:
    """One of each call: retrieve, list (plain, filtered, with a cursor), update, create, delete."""
    path = f"/v1/conversations/{conversation_id}"
    return [
        ("retrieve", "GET", path, None),
        ("list", "GET", "/v1/conversations?limit=5", None),
        ("list filtered", "GET", f"/v1/conversations?muted=false&starting_after={conversation_id}", None),
        ("update", "PUT", path, {"is_muted": True, "last_active_at": 1_700_000_000}),
        ("create", "POST", "/v1/conversations", {"contact_id": f"during_{uuid.uuid4().hex[:12]}"}),
        ("delete", "DELETE", path, None),
    ]


async def test_while_postgres_is_down_calls_answer_503_with_retry_after_within_5_seconds(
        service: ServiceProcess, cluster: PrivatePostgres, client: httpx.AsyncClient):
    created = await client.post("/v1/conversations", json={"contact_id": "before_the_outage"})
    assert created.status_code == 201, created.text
    conversation_id = created.json()["id"]
    await asyncio.to_thread(cluster.stop, "immediate")
    stopped_at = time.monotonic()
    calls: list[Call] = []

    async def caller(offset: int) -> None:
        cycle = itertools.islice(itertools.cycle(operations(conversation_id)), offset, None)
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            what, method, url, body = next(cycle)
            calls.append(await timed(client, what, method, url, body))

    async def operator() -> None:
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            calls.append(await timed(client, "/ready", "GET", "/ready"))
            calls.append(await timed(client, "/health", "GET", "/health"))
            await asyncio.sleep(0.1)

    await asyncio.gather(operator(), *(caller(n) for n in range(CONCURRENT_CLIENTS)))
    assert service.process.poll() is None

    api_calls = [call for call in calls if not call.what.startswith("/")]
    wrong = [call for call in api_calls if call.status != 503 or not (call.retry_after or "").isdigit()]
    assert wrong == [], wrong[:5]
    assert all(msgspec.json.decode(call.body)["type"] == "api_error" for call in api_calls)
    slowest = max(api_calls, key=lambda call: call.seconds)
    assert slowest.seconds < CALL_LIMIT_SECONDS, slowest
    assert {call.what for call in api_calls} == {what for what, *_ in operations(conversation_id)}
    readiness = [call for call in calls if call.what == "/ready"]
    assert readiness and all(call.status == 503 and call.seconds < CALL_LIMIT_SECONDS for call in readiness), \
        readiness[:5]
    health = [call for call in calls if call.what == "/health"]
    assert health and all(call.status == 200 for call in health), health[:5]
    print(f"\nMEASURED outage: {len(api_calls)} API calls over {OUTAGE_SECONDS:.0f} s, all 503; slowest "
          f"{slowest.seconds * 1000:.0f} ms ({slowest.what}); by call: "
          f"{dict(Counter(call.what for call in api_calls))}; /ready slowest "
          f"{max(call.seconds for call in readiness) * 1000:.0f} ms")


async def test_after_postgres_returns_the_same_process_recovers_within_10_seconds_and_publishes_new_events(
        service: ServiceProcess, cluster: PrivatePostgres, client: httpx.AsyncClient, outage_settings: Settings,
        redis_client):
    stream = outage_settings.events_stream
    created = await client.post("/v1/conversations", json={"contact_id": "survivor"})
    assert created.status_code == 201, created.text
    conversation_id = created.json()["id"]
    path = f"/v1/conversations/{conversation_id}"
    await wait_for(lambda: _published(redis_client, stream, {(conversation_id, "1")}), timeout=5)
    pid = service.process.pid

    await asyncio.to_thread(cluster.stop, "immediate")
    stopped_at = time.monotonic()
    during = []
    while time.monotonic() - stopped_at < OUTAGE_SECONDS:  # the pool and the relay keep failing meanwhile
        during.append((await client.get(path)).status_code)
        await asyncio.sleep(0.05)
    assert set(during) == {503}

    await asyncio.to_thread(cluster.start)
    back_at = time.monotonic()
    acknowledged: set[tuple[str, str]] = set()  # (conversation, sequence) of every 2xx write from here on
    last_active = itertools.count(1_700_000_000)

    async def everything_answers() -> bool:
        update = await client.put(path, json={"last_active_at": next(last_active)})
        create = await client.post("/v1/conversations", json={"contact_id": f"after_{uuid.uuid4().hex[:12]}"})
        for response in (update, create):
            if response.is_success:
                acknowledged.add((response.json()["id"], response.headers["etag"].strip('"')))
        statuses = [update.status_code, create.status_code, (await client.get(path)).status_code,
                    (await client.get("/v1/conversations", params={"limit": 3})).status_code,
                    (await client.get("/ready")).status_code]
        return statuses == [200, 201, 200, 200, 200]

    await wait_for(everything_answers, timeout=RECOVERY_LIMIT_SECONDS + 5, interval=0.1)
    recovered_in = time.monotonic() - back_at
    assert service.process.poll() is None and service.process.pid == pid  # the same process, never restarted
    assert recovered_in < RECOVERY_LIMIT_SECONDS

    written_at = time.monotonic()
    update = await client.put(path, json={"is_pinned": True})
    create = await client.post("/v1/conversations", json={"group_id": f"after_{uuid.uuid4().hex[:12]}"})
    assert (update.status_code, create.status_code) == (200, 201)
    acknowledged |= {(r.json()["id"], r.headers["etag"].strip('"')) for r in (update, create)}
    await wait_for(lambda: _published(redis_client, stream, acknowledged), timeout=RECOVERY_LIMIT_SECONDS,
                   interval=0.05)
    published_in = time.monotonic() - written_at
    published_since_back = time.monotonic() - back_at
    found = await entries(redis_client, stream)
    # A crash may publish an event again (docs/api.md §6: the relay's deletes commit asynchronously, so
    # some are lost with PostgreSQL): the first copies count, and they have no gap and are in order.
    first_copies: dict[str, int] = {}
    for _, fields in found:
        if fields["conversation_id"] == conversation_id:
            first_copies.setdefault(fields["id"], int(fields["sequence"]))
    assert list(first_copies.values()) == list(range(1, len(first_copies) + 1))
    duplicates = sum(fields["conversation_id"] == conversation_id for _, fields in found) - len(first_copies)
    assert any(msgspec.json.decode(fields["data"]) == create.json() for _, fields in found)  # what the API said
    print(f"\nMEASURED recovery: 2xx and /ready 200 {recovered_in:.2f} s after PostgreSQL accepted connections "
          f"(outage {OUTAGE_SECONDS:.0f} s); the last writes' events on the stream {published_in:.2f} s after "
          f"their responses ({published_since_back:.2f} s after PostgreSQL returned); "
          f"{len(acknowledged)} writes since recovery, all published; {duplicates} duplicate(s) after the crash")


async def _published(redis, stream: str, expected: set[tuple[str, str]]) -> bool:
    found = {(fields["conversation_id"], fields["sequence"]) for _, fields in await entries(redis, stream)}
    return expected <= found


async def test_while_postgres_hangs_calls_answer_503_with_retry_after_within_5_seconds(
        service: ServiceProcess, cluster: PrivatePostgres, client: httpx.AsyncClient):
    created = await client.post("/v1/conversations", json={"contact_id": "before_the_hang"})
    assert created.status_code == 201, created.text
    path = f"/v1/conversations/{created.json()['id']}"
    # No delete here: a statement the frozen server has in its socket may still run when it thaws.
    hung = [op for op in operations(created.json()["id"]) if op[0] != "delete"]
    cluster.freeze()
    try:
        frozen_at = time.monotonic()
        calls = await asyncio.gather(*(timed(client, what, method, url, body) for what, method, url, body in hung),
                                     timed(client, "/ready", "GET", "/ready"), _health_meanwhile(client, frozen_at))
        health = calls.pop()
    finally:
        cluster.thaw()
    thawed_at = time.monotonic()
    await wait_for(lambda: _status_is(client, path, 200), timeout=RECOVERY_LIMIT_SECONDS + 5, interval=0.1)
    recovered_in = time.monotonic() - thawed_at
    slowest = max(calls, key=lambda call: call.seconds)
    print(f"\nMEASURED hang: {', '.join(f'{c.what} {c.status} in {c.seconds:.2f} s' for c in calls)}; "
          f"/health during it: {sorted({c.status for c in health})}, slowest {max(c.seconds for c in health):.2f} s; "
          f"recovered {recovered_in:.2f} s after the thaw")
    assert [(call.what, call.status) for call in calls if call.status != 503 or not call.retry_after] == []
    assert health and all(call.status == 200 and call.seconds < 1 for call in health)
    assert slowest.seconds < CALL_LIMIT_SECONDS, slowest
    assert service.process.poll() is None
    assert recovered_in < RECOVERY_LIMIT_SECONDS


async def _health_meanwhile(client: httpx.AsyncClient, since: float) -> list[Call]:
    """/health, every 0.2 s for the first 3 s of the hang: the process itself stays responsive."""
    calls = []
    while time.monotonic() - since < 3:
        calls.append(await timed(client, "/health", "GET", "/health"))
        await asyncio.sleep(0.2)
    return calls


async def _status_is(client: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await client.get(path)).status_code == status


BACKLOG_WRITES = 300


async def test_a_postgres_crash_with_committed_unpublished_events_loses_none_of_them(
        cluster: PrivatePostgres, outage_settings: Settings, outage_account: Account, tmp_path: Path, ci_report):
    """Redis down, so every write's event waits in the outbox; then PostgreSQL crashes (immediate stop).

    After both are back, every acknowledged write's event is on the stream (with the response's body).
    """
    (tmp_path / "redis").mkdir()
    redis_server = private_aof_server(tmp_path / "redis").start()
    stream = outage_settings.events_stream
    env = {"DATABASE_URL": outage_settings.database_url, "REDIS_URL": redis_server.url, "EVENTS_STREAM": stream}
    process = ServiceProcess(env, log_path=tmp_path / "serve.log").start()
    acknowledged: dict[tuple[str, int], dict] = {}
    try:
        redis_server.kill()
        async with httpx.AsyncClient(base_url=process.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {outage_account.token}"}) as http:

            async def writer(number: int) -> None:
                created = await http.post("/v1/conversations", json={"contact_id": f"backlog_{number}"})
                assert created.status_code == 201, created.text
                acknowledged[(created.json()["id"], 1)] = created.json()
                updated = await http.put(f"/v1/conversations/{created.json()['id']}", json={"is_muted": True})
                assert updated.status_code == 200, updated.text
                acknowledged[(updated.json()["id"], 2)] = updated.json()

            await asyncio.gather(*(writer(n) for n in range(BACKLOG_WRITES // 2)))
        backlog = await _outbox_rows(outage_settings.database_url, stream)
        await asyncio.to_thread(cluster.stop, "immediate")  # a crash, with the backlog committed
        redis_server.start()  # the same directory
        await asyncio.to_thread(cluster.start)
        await wait_for(lambda: _outbox_rows_are(outage_settings.database_url, stream, 0), timeout=20, interval=0.2)
        reader = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            found = await entries(reader, stream)
        finally:
            await reader.aclose()
    finally:
        process.stop()
        redis_server.stop()
        if not cluster.is_running():
            await asyncio.to_thread(cluster.start)
    first_copies: dict[str, dict[str, str]] = {}
    for _, fields in found:
        first_copies.setdefault(fields["id"], fields)
    published = {(f["conversation_id"], int(f["sequence"])): msgspec.json.decode(f["data"])
                 for f in first_copies.values()}
    lost = [key for key, body in acknowledged.items() if published.get(key) != body]
    ci_report(f"POSTGRES CRASH WITH BACKLOG: {len(acknowledged)} writes acknowledged while Redis was down "
              f"(outbox backlog {backlog} at the crash), {len(first_copies)} events found, {len(lost)} lost, "
              f"{len(found) - len(first_copies)} duplicated")
    assert backlog >= len(acknowledged)
    assert lost == []


async def _outbox_rows(database_url: str, stream: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT count(*) FROM conversation_outbox WHERE stream = $1", stream)
    finally:
        await connection.close()


async def _outbox_rows_are(database_url: str, stream: str, expected: int) -> bool:
    try:
        return await _outbox_rows(database_url, stream) == expected
    except (OSError, asyncpg.PostgresError):  # not accepting connections yet
        return False
