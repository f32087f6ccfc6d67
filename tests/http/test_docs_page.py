"""docs/api.md §7: the /schema docs page works in a real browser with no request leaving the machine.

Headless Chromium (Debian's `chromium`, which .ci/run installs) loads the page from a real
`serve`, with its background networking off and every host name but 127.0.0.1 made unresolvable,
and records every request (its net log). The rendered page must list every operation of the
OpenAPI document, and every request the page made must have gone to the service itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.settings import Settings
from tests.conftest import Backends
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow

CHROMIUM = "chromium"
BROWSER_SECONDS = 90
# Chromium's own traffic off: updates, sync, metrics, safe browsing, default apps, and the rest.
QUIET_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--disable-breakpad", "--metrics-recording-only",
    "--no-first-run", "--no-default-browser-check", "--no-pings", "--safebrowsing-disable-auto-update",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,NetworkTimeServiceQuerying",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which(CHROMIUM)
    if path is None:
        pytest.fail("headless Chromium is needed for this test: apt-get install chromium (.ci/run does)")
    return path


@pytest.fixture(scope="module")
async def docs_server(database_url: str, backend_urls: Backends, tmp_path_factory: pytest.TempPathFactory
                      ) -> AsyncIterator[ServiceProcess]:
    settings = Settings(database_url=database_url, redis_url=backend_urls.redis_url,
                        events_stream=f"test:{uuid.uuid4().hex}:events")
    process = ServiceProcess({"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
                              "EVENTS_STREAM": settings.events_stream},
                             log_path=tmp_path_factory.mktemp("docs") / "serve.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def page_requests(net_log: Path) -> list[str]:
    """The URL of every request the page made, from the browser's net log (JSON, possibly cut short
    at exit). Chromium's own housekeeping (its updater, account checks: some go on in headless mode
    whatever the flags) starts with no origin; the host resolver rule keeps it on the machine too."""
    text = net_log.read_text()
    if not text.rstrip().endswith("}"):
        text = text.rstrip().rstrip(",") + "]}"
    log = json.loads(text)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [event["params"]["url"] for event in log.get("events", [])
            if event["type"] == start_job and "url" in event.get("params", {})
            and event["params"].get("initiator") != "not an origin"]


def test_the_docs_page_lists_every_operation_with_no_request_leaving_the_machine(
        chromium: str, docs_server: ServiceProcess, tmp_path: Path):
    document = httpx.get(docs_server.base_url + "/schema/openapi.json", timeout=10).json()
    summaries = [operation["summary"] for item in document["paths"].values()
                 for method, operation in item.items() if method != "parameters"]
    net_log = tmp_path / "net-log.json"
    result = subprocess.run(
        [chromium, *QUIET_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--log-net-log={net_log}",
         "--virtual-time-budget=20000", "--dump-dom", f"{docs_server.base_url}/schema"],
        capture_output=True, text=True, timeout=BROWSER_SECONDS, check=False)
    dom = result.stdout
    missing = [summary for summary in summaries if summary not in dom]
    assert not missing, (missing, dom[:500], result.stderr[-2000:])
    assert "opblock" in dom  # Swagger UI rendered the operations, not just a page that names them
    urls = page_requests(net_log)
    assert any(url.endswith("/schema/openapi.json") for url in urls), urls
    own = urlsplit(docs_server.base_url).netloc
    assert sorted({url for url in urls if urlsplit(url).netloc != own}) == []
