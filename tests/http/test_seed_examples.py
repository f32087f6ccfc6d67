"""The seed page's five curl commands, run verbatim (host, token and id replaced) against `serve`.

The commands are read from the seed page itself (tests/data holds a copy of the public docs
page the contract grew from), so this test breaks if the page and the service part ways.
They send form bodies (`curl -d`), as docs/api.md §3 requires us to accept.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from service.model import CONVERSATION_FIELDS
from service.settings import Settings
from tests.conftest import Account
from tests.servers import ServiceProcess

SEED = Path(__file__).resolve().parents[1] / "data" / "conversations-api-seed.txt"
SEED_HOST = "https://api.protocol.chat"
SEED_ID = "xgQQXg3hrtjh7AvZ"


def seed_commands() -> dict[str, str]:
    """The seed's curl commands (continuation lines joined), keyed by what they do."""
    commands: list[str] = []
    lines = SEED.read_text().splitlines()
    for start, line in enumerate(lines):
        if line.startswith("curl "):
            end = start
            while lines[end].endswith("\\"):
                end += 1
            commands.append("\n".join(lines[start:end + 1]))
    by_action = {}
    for command in commands:
        if "-X PUT" in command:
            by_action["update"] = command
        elif "-X DELETE" in command:
            by_action["delete"] = command
        elif "-G" in command:
            by_action["list"] = command
        elif " -d " in command:
            by_action["create"] = command
        else:
            by_action["retrieve"] = command
    return by_action


def run(command: str, base_url: str, token: str, conversation_id: str | None = None) -> str:
    command = command.replace(SEED_HOST, base_url).replace("{token}", token)
    if conversation_id is not None:
        command = command.replace(SEED_ID, conversation_id)
    result = subprocess.run(["bash", "-c", command + " --silent --show-error --fail-with-body"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def service(settings: Settings, tmp_path: Path):
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "EVENTS_STREAM": settings.events_stream}
    process = ServiceProcess(env, log_path=tmp_path / "serve.log").start()
    yield process
    process.stop()


def test_the_seed_has_the_five_calls():
    assert sorted(seed_commands()) == ["create", "delete", "list", "retrieve", "update"]


def test_seed_curl_examples_work_as_written(service: ServiceProcess, account: Account):
    commands = seed_commands()
    created = json.loads(run(commands["create"], service.base_url, account.token))
    assert list(created) == list(CONVERSATION_FIELDS)
    assert created["contact_id"] == "WAz8eIbvDR60rouK"
    assert (created["group_id"], created["pinned_message_id"], created["is_pinned"], created["is_muted"],
            created["last_active_at"], created["last_opened_at"], created["archived_at"]) == (
        None, None, False, False, None, None, None)
    assert re.fullmatch(r"[0-9A-Za-z]{16}", created["id"])

    page = json.loads(run(commands["list"], service.base_url, account.token))
    assert list(page) == ["has_more", "data"]
    assert page == {"has_more": False, "data": [created]}

    retrieved = json.loads(run(commands["retrieve"], service.base_url, account.token, created["id"]))
    assert retrieved == created

    updated = json.loads(run(commands["update"], service.base_url, account.token, created["id"]))
    assert updated == {**created, "is_muted": True}

    assert run(commands["delete"], service.base_url, account.token, created["id"]) == ""
    gone = subprocess.run(["curl", "--silent", "--output", "/dev/null", "--write-out", "%{http_code}",
                           "-H", f"Authorization: Bearer {account.token}",
                           f"{service.base_url}/v1/conversations/{created['id']}"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert gone.stdout == "404"
