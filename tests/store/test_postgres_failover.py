"""docs/api.md §6 and §7 across a PostgreSQL failover: the standby is promoted while writes run.

A private primary and a streaming standby (pg_basebackup -R); `serve` gets both hosts in
DATABASE_URL and RELAY_DATABASE_URL with `target_session_attrs=read-write`, so every connection
it opens goes to whichever host accepts writes. While clients create conversations, the standby
is promoted and the old primary stopped (`pg_ctl stop -m fast`: its sessions get "admin
shutdown"). Then, without a restart:

* calls answer 503 (with Retry-After) for a while and 2xx again within 10 s of the stop;
* the relay takes the stream's lock on the new primary and publishes there;
* every create that got a 201 and exists on the new primary has its event (data = the response).

With asynchronous replication, a 201 the old primary gave just before the promotion may be
missing on the new primary (the documented caveat); with a synchronous standby
(`synchronous_standby_names`), a commit is acknowledged only once the standby has it, so every
201 exists on the new primary: zero loss. Each mode prints its counts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from service import tokens
from service.settings import Settings
from service.store.migrate import migrate
from tests.conftest import Backends, database_url_for, wait_for
from tests.private_postgres import PrivatePostgres
from tests.servers import ServiceProcess
from tests.write_storm import outbox_is_empty

pytestmark = pytest.mark.slow

CLIENTS = 8
WRITES_BEFORE_SECONDS = 1.5
RECOVERY_LIMIT_SECONDS = 10.0
WRITES_AFTER_RECOVERY_SECONDS = 1.5


@dataclass
class Traffic:
    created: dict[str, dict] = field(default_factory=dict)  # id -> the 201's body
    created_at: dict[str, float] = field(default_factory=dict)  # id -> when the 201 arrived
    unavailable: list[float] = field(default_factory=list)  # when each 503 arrived
    failures: list[str] = field(default_factory=list)  # anything else


@dataclass
class Pair:
    primary: PrivatePostgres
    standby: PrivatePostgres

    def url(self, database: str, *, first: PrivatePostgres | None = None) -> str:
        """Both hosts, the writable one wanted (asyncpg tries them in order)."""
        hosts = ",".join(f"127.0.0.1:{cluster.port}" for cluster in (self.primary, self.standby))
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"


@pytest.fixture(params=["asynchronous", "synchronous"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def pair(mode: str) -> Iterator[Pair]:
    primary = PrivatePostgres()
    standby = PrivatePostgres()
    try:
        primary.start()
        yield Pair(primary, standby)
    finally:
        standby.remove()
        primary.remove()


@pytest.fixture
async def prepared(pair: Pair, mode: str, backend_urls: Backends, stream_name: str
                   ) -> AsyncIterator[tuple[Settings, str]]:
    """The schema and a token on the primary, then the standby made from it and started; (settings, token)."""
    url = database_url_for(pair.primary.url, "conversations")
    await migrate(Settings(database_url=url))
    token, _ = await tokens.create_token(Settings(database_url=url), "acct_failover")
    pair.standby.replica_of(pair.primary).start()
    if mode == "synchronous":
        pair.primary.configure(synchronous_standby_names="'*'")
    await wait_for(lambda: _replication_is(pair.primary, "sync" if mode == "synchronous" else "async"), timeout=20)
    settings = Settings(database_url=pair.url("conversations"), redis_url=backend_urls.redis_url,
                        events_stream=stream_name)
    yield settings, token
    client = aioredis.Redis.from_url(backend_urls.redis_url)
    await client.delete(stream_name)
    await client.aclose()


async def _replication_is(primary: PrivatePostgres, state: str) -> bool:
    connection = await asyncpg.connect(primary.url)
    try:
        return await connection.fetchval("SELECT bool_or(sync_state = $1 AND state = 'streaming') "
                                         "FROM pg_stat_replication", state) or False
    finally:
        await connection.close()


async def client(number: int, http: httpx.AsyncClient, traffic: Traffic, stop: asyncio.Event) -> None:
    for n in itertools.count():
        if stop.is_set():
            return
        try:
            response = await http.post("/v1/conversations", json={"contact_id": f"failover_{number}_{n}"})
        except httpx.HTTPError as error:
            traffic.failures.append(f"{type(error).__name__}: {error}")
            await asyncio.sleep(0.05)
            continue
        if response.status_code == 201:
            traffic.created[response.json()["id"]] = response.json()
            traffic.created_at[response.json()["id"]] = time.monotonic()
        elif response.status_code == 503 and response.headers.get("retry-after"):
            traffic.unavailable.append(time.monotonic())
            await asyncio.sleep(0.05)
        else:
            traffic.failures.append(f"{response.status_code}: {response.text}")


async def test_a_promoted_standby_takes_over_without_a_restart_and_every_write_it_has_keeps_its_event(
        pair: Pair, prepared: tuple[Settings, str], mode: str, tmp_path: Path, ci_report):
    settings, token = prepared
    env = {"DATABASE_URL": settings.database_url, "RELAY_DATABASE_URL": settings.database_url,
           "REDIS_URL": settings.redis_url, "EVENTS_STREAM": settings.events_stream}
    service = ServiceProcess(env, log_path=tmp_path / "serve.log").start()
    traffic, stop = Traffic(), asyncio.Event()
    try:
        async with httpx.AsyncClient(base_url=service.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            clients = [asyncio.create_task(client(n, http, traffic, stop)) for n in range(CLIENTS)]
            try:
                await asyncio.sleep(WRITES_BEFORE_SECONDS)
                await asyncio.to_thread(pair.standby.promote)  # while the writes run
                stopped_at = time.monotonic()  # from the moment the old primary starts shutting down
                await asyncio.to_thread(pair.primary.stop, "fast")
                await wait_for(lambda: any(at > stopped_at + 0.5 for at in traffic.created_at.values()),
                               timeout=RECOVERY_LIMIT_SECONDS + 10, interval=0.05)
                await asyncio.sleep(WRITES_AFTER_RECOVERY_SECONDS)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
            ready = await http.get("/ready")
        new_primary = await asyncpg.connect(database_url_for(pair.standby.url, "conversations"))
        try:
            await wait_for(lambda: outbox_is_empty(new_primary, settings.events_stream), timeout=20)
            on_new_primary = {row[0] for row in await new_primary.fetch("SELECT id FROM conversations")}
            relay_leads = await new_primary.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
                "AND l.granted AND a.application_name = 'conversations-relay'")
        finally:
            await new_primary.close()
        reader = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            entries = [fields for _, fields in await reader.xrange(settings.events_stream, "-", "+")]
        finally:
            await reader.aclose()
    finally:
        service.stop()

    assert traffic.failures == [], traffic.failures[:5]
    after_stop = [at - stopped_at for at in traffic.unavailable if at > stopped_at]
    last_503 = max(after_stop, default=0.0)
    recovered_in = min(at for at in traffic.created_at.values() if at - stopped_at > last_503) - stopped_at
    missing_on_new_primary = [cid for cid in traffic.created if cid not in on_new_primary]
    first_copies: dict[str, dict[str, str]] = {}
    for fields in entries:
        first_copies.setdefault(fields["id"], fields)
    published = {f["conversation_id"]: msgspec.json.decode(f["data"]) for f in first_copies.values()}
    present = [cid for cid in traffic.created if cid in on_new_primary]
    lost_events = [cid for cid in present if published.get(cid) != traffic.created[cid]]
    ci_report(f"POSTGRES FAILOVER ({mode} standby): {len(traffic.created)} creates acknowledged, "
              f"{len(missing_on_new_primary)} of them missing on the promoted standby (acknowledged by the old "
              f"primary after the promotion or before they were replicated), {len(present)} present; "
              f"{len(first_copies)} events found, {len(lost_events)} lost, {len(entries) - len(first_copies)} "
              f"duplicated; {len(traffic.unavailable)} 503s, the last {last_503:.2f} s after the old primary began "
              f"its shutdown; "
              f"2xx again {recovered_in:.2f} s after it (limit {RECOVERY_LIMIT_SECONDS:.0f} s), no restart")
    assert ready.status_code == 200
    assert recovered_in < RECOVERY_LIMIT_SECONDS
    assert relay_leads == 1  # the relay holds the stream's lock on the new primary
    assert any(at > stopped_at for at in traffic.created_at.values())  # writes made on the new primary
    assert lost_events == []
    if mode == "synchronous":
        assert missing_on_new_primary == []  # zero loss: every 201 was on the standby before it was sent
