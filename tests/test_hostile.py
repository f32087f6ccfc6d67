"""A hostile-client run (benchmarks/hostile.py): one worker under attack keeps serving its normal clients.

The script runs as it would by hand, against the test run's PostgreSQL and Redis: 32 normal
clients for HOSTILE_SECONDS without, then with, slow-header connections, 1 MB headers, random bad
tokens and keyed DELETEs of conversations that do not exist, all at once. Its table is the
evidence, printed into CI's output. This test holds the run to what must hold on any machine: RSS
under 150 MB, the request pool within its size, no 5xx anywhere, every normal call answered as
the contract says, every hostile one refused as documented. The script's own verdict also compares
the normal clients' p99 with and without the attack (within 2x); on a 2-core machine that other
work shares, two 20 s windows can differ by more than the attack does, so that ratio is reported
here, and judged on the benchmark's runs (README, "Performance").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import Backends
from tests.servers import ROOT

pytestmark = pytest.mark.slow

# Each run lasts past the 10 s header timeout, so slow-header connections are cut and come back.
HOSTILE_SECONDS = float(os.environ.get("HOSTILE_SECONDS", "20"))


def test_hostile_clients_leave_normal_clients_served_within_the_bounds(
        backend_urls: Backends, capsys: pytest.CaptureFixture[str], tmp_path):
    report = tmp_path / "hostile.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "hostile.py"), "--duration", str(HOSTILE_SECONDS),
         "--database-url", backend_urls.admin_database_url, "--redis-url", backend_urls.redis_url,
         "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=2 * HOSTILE_SECONDS + 180, check=False)
    with capsys.disabled():  # the table belongs in CI's output, passed or failed
        print("\nHOSTILE\n" + result.stdout)
    assert report.exists(), result.stderr[-3000:]
    checks = json.loads(report.read_text())["checks"]
    timing = [check for check in checks if check.startswith("normal p99")]
    assert all(held for check, held in checks.items() if check not in timing), checks
    attacked = json.loads(report.read_text())["phases"][1]["attack"]["statuses"]
    assert set(attacked["1 MB header"]) <= {"431", "closed"}
    assert "401" in attacked["bad token"] and set(attacked["bad token"]) <= {"401"}
    assert set(attacked["keyed 404 DELETE"]) <= {"404", "429"}
    assert set(attacked["slow header"]) <= {"408", "closed"} and attacked["slow header"]
