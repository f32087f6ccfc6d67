"""docs/api.md §7 operations: request ids, one JSON log line per request, metrics over all workers."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from pathlib import Path

import httpx
import pytest

from service.logs import JsonFormatter
from service.settings import Settings
from tests.conftest import Account, wait_for
from tests.servers import ServiceProcess


def request_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.requests"]


async def test_every_response_carries_a_generated_request_id(api):
    response = await api.get("/v1/conversations")
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])
    assert (await api.get("/nowhere")).headers["x-request-id"] != response.headers["x-request-id"]


async def test_a_request_id_sent_by_the_client_is_echoed(api):
    response = await api.get("/v1/conversations", headers={"X-Request-ID": "trace-42.a:b_c"})
    assert response.headers["x-request-id"] == "trace-42.a:b_c"


@pytest.mark.parametrize("unsafe", ["has space", "x" * 129, "new\\nline", "quote\""])
async def test_an_unsafe_request_id_is_replaced_not_echoed(api, unsafe: str):
    response = await api.get("/v1/conversations", headers={"X-Request-ID": unsafe})
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])


async def test_each_request_is_logged_once_with_its_route_status_duration_id_and_account(
        api, account: Account, caplog):
    caplog.set_level(logging.INFO, logger="service.requests")
    created = await api.post("/v1/conversations", json={"contact_id": "logged"}, headers={"X-Request-ID": "req-1"})
    [record] = request_records(caplog)
    assert (record.method, record.route, record.status, record.request_id, record.account_id) == (
        "POST", "/v1/conversations", 201, "req-1", account.id)
    assert record.duration_ms > 0
    caplog.clear()
    await api.get(f"/v1/conversations/{created.json()['id']}")
    [record] = request_records(caplog)
    assert record.route == "/v1/conversations/{conversation_id}"
    assert record.path == f"/v1/conversations/{created.json()['id']}"


async def test_unrouted_and_unauthenticated_requests_are_logged_too(anonymous, caplog):
    caplog.set_level(logging.INFO, logger="service.requests")
    await anonymous.get("/no/such/route")
    await anonymous.get("/v1/conversations")
    assert [(r.route, r.status) for r in request_records(caplog)] == [("unmatched", 404), ("/v1/conversations", 401)]


async def test_log_lines_are_json_and_never_contain_the_token(api, account: Account, caplog):
    caplog.set_level(logging.DEBUG)
    await api.post("/v1/conversations?x=1", json={"contact_id": "secretive"})
    await api.get("/v1/conversations", headers={"Authorization": f"Bearer {account.token}x"})
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert lines
    for line in lines:
        parsed = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(parsed)
        assert account.token not in line
        assert "Bearer" not in line


def test_the_json_formatter_writes_one_line_with_the_traceback_inside():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.formatter")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.error("it failed", exc_info=True)
    finally:
        logger.removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    parsed = json.loads(line)
    assert parsed["level"] == "error"
    assert parsed["message"] == "it failed"
    assert "ValueError: boom" in parsed["error"]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


async def test_metrics_report_requests_latency_outbox_events_stream_groups_and_pool(
        api, anonymous, settings: Settings, redis_client):
    for n in range(3):
        await api.post("/v1/conversations", json={"contact_id": f"m{n}"})
    await redis_client.xgroup_create(settings.events_stream, "billing", id="0", mkstream=True)
    await api.get("/nope")

    async def with_the_group() -> str | None:  # the groups are read at the relay's retention pass, each second
        response = await anonymous.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        found = metric_value(response.text, "conversations_consumer_group_pending", group="billing") is not None
        return response.text if found else None

    text = await wait_for(with_the_group, timeout=5)
    assert metric_value(text, "conversations_http_requests_total", method="POST", route="/v1/conversations",
                        status="201") >= 3
    assert metric_value(text, "conversations_http_requests_total", route="unmatched", status="404") >= 1
    assert metric_value(text, "conversations_http_request_duration_seconds_count", method="POST",
                        route="/v1/conversations") >= 3
    assert metric_value(text, "conversations_outbox_backlog") is not None
    assert metric_value(text, "conversations_outbox_oldest_age_seconds") is not None
    assert metric_value(text, "conversations_events_published_total") is not None
    assert metric_value(text, "conversations_stream_length") >= 0
    assert metric_value(text, "conversations_consumer_group_pending", group="billing") == 0
    assert metric_value(text, "conversations_consumer_group_lag", group="billing") is not None
    assert metric_value(text, "conversations_db_pool_connections_in_use") is not None
    assert "conversations_stream_unread_dropped_total" in text


async def test_metrics_add_up_every_worker_of_serve(settings: Settings, account: Account, tmp_path: Path):
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "EVENTS_STREAM": settings.events_stream}
    service = ServiceProcess(env, args=("--no-migrate", "--workers", "2"), log_path=tmp_path / "serve.log").start()
    try:
        requests = 40
        for _ in range(requests):  # a new connection each time, so both workers get some
            async with httpx.AsyncClient(base_url=service.base_url) as client:
                response = await client.get("/v1/conversations",
                                            headers={"Authorization": f"Bearer {account.token}"})
                assert response.status_code == 200

        async def scraped_total() -> float:
            async with httpx.AsyncClient(base_url=service.base_url) as client:
                text = (await client.get("/metrics")).text
            return metric_value(text, "conversations_http_requests_total", method="GET",
                                route="/v1/conversations", status="200")

        # Each worker hands its request counts to the shared series once a second (and the one
        # answering a scrape, at once), so within about a second every scrape sees them all.
        await wait_for(lambda: _equals(scraped_total(), float(requests)), timeout=3)
        totals = {await scraped_total() for _ in range(6)}
        assert totals == {float(requests)}  # the same sum, whichever worker answered the scrape
    finally:
        assert service.stop() == 0


async def _equals(value, expected: float) -> bool:
    return (await value) == expected


def test_request_latencies_land_in_the_buckets_prometheus_would_put_them_in_once_flushed():
    from prometheus_client import generate_latest
    from prometheus_client.registry import REGISTRY

    from service import metrics

    route = f"/test/{uuid.uuid4().hex}"
    for seconds in (0.001, 0.0011, 0.3, 10.0):  # on a bound, just above one, mid-range, past the last
        metrics.observe_request("GET", route, 200, seconds)
    metrics.flush_requests()
    text = generate_latest(REGISTRY).decode()
    assert metric_value(text, "conversations_http_requests_total", method="GET", route=route, status="200") == 4
    buckets = {le: metric_value(text, "conversations_http_request_duration_seconds_bucket", method="GET",
                                route=route, le=le) for le in ("0.001", "0.0025", "0.25", "0.5", "5.0", "+Inf")}
    assert buckets == {"0.001": 1, "0.0025": 2, "0.25": 2, "0.5": 3, "5.0": 3, "+Inf": 4}
    assert metric_value(text, "conversations_http_request_duration_seconds_sum", method="GET",
                        route=route) == pytest.approx(10.3021)
