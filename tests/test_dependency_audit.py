"""The CI dependency audit (.ci/audit.py) fails on a known vulnerability.

The real vulnerability databases cannot be reached from this sandbox, so these tests run the real
pip-audit, over the real installed packages, against a local server that speaks OSV's query API
(https://google.github.io/osv.dev/post-v1-query/) and knows one advisory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path

import pytest

AUDIT = Path(__file__).resolve().parent.parent / ".ci" / "audit.py"
ADVISORY_ID = "GHSA-test-0000-0000"


class OsvDatabase(ThreadingHTTPServer):
    """An OSV query endpoint whose only advisory affects `vulnerable_package`."""

    def __init__(self, vulnerable_package: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _OsvHandler)
        self.vulnerable_package = vulnerable_package
        self.queried: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/query"


class _OsvHandler(BaseHTTPRequestHandler):
    server: OsvDatabase

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = query["package"]["name"]
        self.server.queried.append(name)
        answer: dict[str, object] = {}
        if name == self.server.vulnerable_package:
            answer = {"vulns": [{
                "id": ADVISORY_ID,
                "summary": "A test advisory",
                "affected": [{"package": {"name": name, "ecosystem": "PyPI"},
                              "ranges": [{"type": "ECOSYSTEM",
                                          "events": [{"introduced": "0"}, {"fixed": "9999.0"}]}]}],
            }]}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(database: OsvDatabase) -> Iterator[OsvDatabase]:
    thread = threading.Thread(target=database.serve_forever, daemon=True)
    thread.start()
    try:
        yield database
    finally:
        database.shutdown()
        database.server_close()


@pytest.fixture
def database_with_msgspec_advisory() -> Iterator[OsvDatabase]:
    yield from serve(OsvDatabase("msgspec"))


@pytest.fixture
def database_without_advisories() -> Iterator[OsvDatabase]:
    yield from serve(OsvDatabase(None))


def run_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(AUDIT), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_audit_fails_on_a_known_vulnerability(database_with_msgspec_advisory: OsvDatabase) -> None:
    result = run_audit("--service", "osv", "--osv-url", database_with_msgspec_advisory.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"VULNERABLE msgspec {version('msgspec')}: {ADVISORY_ID} (fixed in 9999.0)" in result.stdout


def test_audit_asks_about_every_installed_dependency(database_without_advisories: OsvDatabase) -> None:
    result = run_audit("--service", "osv", "--osv-url", database_without_advisories.url)
    assert result.returncode == 0, result.stdout + result.stderr
    for dependency in ("litestar", "msgspec", "asyncpg", "redis", "uvicorn"):
        assert dependency in database_without_advisories.queried
    assert f"{len(database_without_advisories.queried)} packages audited, no known vulnerabilities" in result.stdout


def test_audit_says_when_no_database_answers() -> None:
    unreachable = "http://127.0.0.1:1/v1/query"
    result = run_audit("--service", "osv", "--osv-url", unreachable)
    assert result.returncode == 0
    assert "proved nothing about known vulnerabilities" in result.stdout


def test_audit_requiring_a_database_fails_when_none_answers() -> None:
    result = run_audit("--service", "osv", "--osv-url", "http://127.0.0.1:1/v1/query", "--require-database")
    assert result.returncode == 1
