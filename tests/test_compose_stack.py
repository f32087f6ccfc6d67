"""compose.yaml started for real (docs/api.md §7): the image built, the stack up, README's session run.

Runs whenever a Docker engine answers `docker version`: builds the api image, `up`s the stack,
waits for `/ready` and for the api's health check, runs README's session word for word (token,
create, list, update, delete, the three events on the stream), checks the api's uid, stops the
api during a stream of writes (exit 0 within its grace period, no acknowledged write's event
missing), SIGKILLs Redis and starts it again (no event lost), and ends with `down --volumes`.
Each timing is printed into the test output. Without an engine the test is skipped, saying
why, except in CI (`CI` set), where .ci/run starts one and a skip would hide a stack never
started.

Compose: `docker compose` (v2) when present, else docker-compose v1, with BuildKit through the
`docker` client when that client has it built in (20.10 and older) or has buildx; otherwise v1's
legacy builder, which the Dockerfile supports too. The stack gets a project name of its own, so
a developer's own stack and its volumes are never touched; `COMPOSE_FILE`, when set, is
honoured (CI adds a file that builds on the host's network).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import ROOT
from tests.test_deployment import seconds

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

README = ROOT / "README.md"
API = "http://localhost:8000"
STREAM = "conversations:events"
SESSION_KINDS = ("token", "create", "list", "update", "delete", "events")
BUILD_TIMEOUT = 1200.0  # a cold build downloads every locked wheel
START_TIMEOUT = 180.0


# ---- the engine and the compose command ------------------------------------------------------

def _run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30.0,
         cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def engine_answer() -> tuple[bool, str]:
    """(whether a Docker engine answers, its version or why not)."""
    if shutil.which("docker") is None:
        return False, "no `docker` client on PATH"
    try:
        result = _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=20)
    except subprocess.TimeoutExpired:
        return False, "`docker version` did not answer within 20 s"
    if result.returncode != 0:
        return False, (result.stderr.strip().splitlines() or ["`docker version` failed"])[-1]
    return True, result.stdout.strip()


def client_has_buildkit() -> bool:
    """Whether `docker build` can use BuildKit: built in up to 20.10, the buildx plugin after."""
    version = _run(["docker", "version", "--format", "{{.Client.Version}}"]).stdout.strip()
    match = re.match(r"(\d+)\.", version)
    if match and int(match[1]) <= 20:
        return True
    return _run(["docker", "buildx", "version"]).returncode == 0


@dataclass
class Compose:
    """One compose project: the command that drives it, and its environment."""

    argv: list[str]
    description: str
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = _run([*self.argv, *args], env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join([*self.argv, *args])} exited with {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def container(self, service: str) -> str:
        container_id = self.run("ps", "--all", "-q", service).stdout.strip()
        assert container_id, f"no container for {service}"
        return container_id

    def inspect(self, service: str, template: str) -> str:
        result = _run(["docker", "inspect", "--format", template, self.container(service)], env=self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def shell(self, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """A README line, run by bash the way a user would (see `as_run_here` for the two changes)."""
        return subprocess.run(["bash", "-c", as_run_here(command, self.argv)], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, check=False, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def report(self, step: str, seconds: float, capsys: pytest.CaptureFixture[str], note: str = "") -> None:
        self.timings[step] = seconds
        with capsys.disabled():  # CI's log shows each timing, passed or failed, -q or not
            print(f"\nDEPLOYMENT {step}: {seconds:.1f} s{(' (' + note + ')') if note else ''}", flush=True)


def find_compose() -> tuple[list[str], str, dict[str, str]] | None:
    """(command, description, extra environment) of the compose to use, or None."""
    if _run(["docker", "compose", "version"]).returncode == 0:
        version = _run(["docker", "compose", "version", "--short"]).stdout.strip()
        return ["docker", "compose"], f"docker compose {version}", {}
    if shutil.which("docker-compose"):
        version = _run(["docker-compose", "version", "--short"]).stdout.strip()
        if client_has_buildkit():
            return (["docker-compose"], f"docker-compose {version}, BuildKit through the docker client",
                    {"COMPOSE_DOCKER_CLI_BUILD": "1", "DOCKER_BUILDKIT": "1"})
        return ["docker-compose"], f"docker-compose {version}, legacy builder", {"DOCKER_BUILDKIT": "0"}
    return None


def as_run_here(command: str, compose: list[str]) -> str:
    """README's line as run here: `docker compose` becomes the compose in use, and `exec` gets
    -T, since no terminal is attached (the only two changes)."""
    command = re.sub(r"\bdocker compose exec ", "docker compose exec -T ", command)
    return re.sub(r"\bdocker compose ", shlex.join(compose) + " ", command)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide what the deployment test needs (.ci/run starts a Docker engine): {reason}")
    pytest.skip(reason)


# ---- waiting ----------------------------------------------------------------------------------

def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(interval)


def ready() -> bool:
    try:
        return httpx.get(f"{API}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---- README's session -------------------------------------------------------------------------

def readme_session() -> list[str]:
    """The compose session's lines from README: the code block with the token command."""
    blocks = re.findall(r"^```\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    sessions = [block for block in blocks if "docker compose exec api python -m service tokens create" in block]
    assert len(sessions) == 1, "README has one compose session (the block with `tokens create`)"
    return [line for line in sessions[0].splitlines() if line.strip()]


def session_kind(line: str) -> str:
    words = shlex.split(line, comments=True)
    if "tokens" in words and "create" in words:
        return "token"
    if "XRANGE" in words:
        return "events"
    if words[0] == "curl":
        method = words[words.index("-X") + 1] if "-X" in words else ("GET" if "-G" in words else "POST")
        return {"POST": "create", "GET": "list", "PUT": "update", "PATCH": "update", "DELETE": "delete"}[method]
    raise AssertionError(f"an unexpected line in README's compose session: {line}")


def stream_entries(compose: Compose) -> list[dict[str, str]]:
    """Every entry of the stream, read in the redis container (it publishes no port)."""
    result = compose.run("exec", "-T", "redis", "redis-cli", "--json", "XRANGE", STREAM, "-", "+", timeout=30)
    entries = json.loads(result.stdout or "[]")
    return [dict(zip(values[::2], values[1::2], strict=True)) for _, values in entries]


def created_ids(compose: Compose) -> set[str]:
    return {entry["conversation_id"] for entry in stream_entries(compose) if entry["type"] == "conversation.created"}


def run_readme_session(compose: Compose) -> tuple[str, str]:
    """README's session, each line checked; returns (token, the conversation's id)."""
    lines = readme_session()
    assert tuple(session_kind(line) for line in lines) == SESSION_KINDS, lines
    values: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for line, kind in zip(lines, SESSION_KINDS, strict=True):
        command = line.replace("<token>", values.get("token", "<token>")).replace("<id>", values.get("id", "<id>"))
        assert "<" not in command.split("#")[0], f"a placeholder README's session never filled: {line}"
        if kind == "events":
            # the relay publishes within milliseconds; poll the line itself until all three are there
            def three_events(command: str = command) -> str | None:
                result = compose.shell(command)
                assert result.returncode == 0, result.stderr
                found = re.findall(r"^conversation\.\w+$", result.stdout, re.MULTILINE)
                return result.stdout if found == ["conversation.created", "conversation.updated",
                                                  "conversation.deleted"] else None
            outputs[kind] = str(wait_until(three_events, 15, "README's XRANGE shows created, updated, deleted"))
            continue
        result = compose.shell(command)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        outputs[kind] = result.stdout
        if kind == "token":
            values["token"] = result.stdout.strip()
            assert re.fullmatch(r"\S{20,}", values["token"]), f"not a token: {result.stdout!r}"
        elif kind == "create":
            created = json.loads(result.stdout)
            assert created["contact_id"] == "WAz8eIbvDR60rouK" and created["group_id"] is None, created
            values["id"] = created["id"]
        elif kind == "list":
            assert [item["id"] for item in json.loads(result.stdout)["data"]] == [values["id"]]
        elif kind == "update":
            assert json.loads(result.stdout)["is_muted"] is True
        elif kind == "delete":
            assert result.stdout == "", "a DELETE answers 204, no body"
    gone = httpx.get(f"{API}/v1/conversations/{values['id']}", headers=bearer(values["token"]), timeout=5)
    assert gone.status_code == 404, gone.text
    events = [entry for entry in stream_entries(compose) if entry["conversation_id"] == values["id"]]
    assert [entry["type"] for entry in events] == ["conversation.created", "conversation.updated",
                                                   "conversation.deleted"]
    assert [int(entry["sequence"]) for entry in events] == [1, 2, 3]
    return values["token"], values["id"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- writes while something stops -------------------------------------------------------------

class Writer(threading.Thread):
    """Creates conversations one after another until told to stop; keeps the ids of the 201s."""

    def __init__(self, token: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.token, self.prefix = token, prefix
        self.acknowledged: list[str] = []
        self.failures = 0
        self.unexpected: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=API, headers=bearer(self.token), timeout=5) as client:
            number = 0
            while not self.done.is_set():
                number += 1
                try:
                    response = client.post("/v1/conversations", data={"contact_id": f"{self.prefix}{number}"})
                except httpx.HTTPError:
                    self.failures += 1
                    time.sleep(0.02)
                    continue
                if response.status_code == 201:
                    self.acknowledged.append(response.json()["id"])
                elif response.status_code != 503:
                    self.unexpected.append(f"{response.status_code} {response.text[:200]}")

    def finish(self) -> None:
        self.done.set()
        self.join(30)


def create(token: str, contact_id: str) -> str:
    response = httpx.post(f"{API}/v1/conversations", headers=bearer(token), data={"contact_id": contact_id},
                          timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["id"]


# ---- the test ---------------------------------------------------------------------------------

@pytest.fixture
def compose(capsys: pytest.CaptureFixture[str]) -> Iterator[Compose]:
    reachable, detail = engine_answer()
    if not reachable:
        unavailable(f"no Docker engine is reachable ({detail}); this test builds and starts compose.yaml")
    found = find_compose()
    if found is None:
        unavailable("neither `docker compose` (v2) nor docker-compose (v1) is installed")
    if shutil.which("curl") is None:
        unavailable("curl is not installed, and README's session uses it")
    assert port_is_free(8000), ("port 8000 is in use (a stack already running?); README's session, which "
                                "this test runs, talks to localhost:8000")
    argv, description, extra = found
    project = f"conversations-deploy-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **extra, "COMPOSE_PROJECT_NAME": project}
    stack = Compose(argv, description, env)
    with capsys.disabled():
        print(f"\nDEPLOYMENT engine {detail}, {description}, project {project}", flush=True)
    try:
        yield stack
    finally:
        started = time.monotonic()
        down = stack.run("--profile", "events", "down", "--volumes", "--remove-orphans", timeout=180, check=False)
        stack.report("down --volumes", time.monotonic() - started, capsys)
        assert down.returncode == 0, down.stdout + down.stderr
        left = _run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
                    env=env).stdout.split()
        assert left == [], f"volumes left after down --volumes: {left}"


def test_compose_stack_builds_starts_runs_readmes_session_and_loses_no_event(
        compose: Compose, capsys: pytest.CaptureFixture[str]) -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))["services"]
    grace = seconds(services["api"]["stop_grace_period"])

    started = time.monotonic()
    compose.run("build", "api", timeout=BUILD_TIMEOUT)
    compose.report("build", time.monotonic() - started, capsys, compose.description)

    started = time.monotonic()
    compose.run("up", "-d", timeout=START_TIMEOUT)
    wait_until(ready, START_TIMEOUT, "GET /ready answered 200")
    compose.report("up -d to /ready 200", time.monotonic() - started, capsys)
    wait_until(lambda: compose.inspect("api", "{{.State.Health.Status}}") == "healthy", START_TIMEOUT,
               "the api's health check passed")
    compose.report("up -d to api healthy", time.monotonic() - started, capsys)
    for service in ("postgres", "redis"):
        assert compose.inspect(service, "{{.State.Health.Status}}") == "healthy", service

    token, _ = run_readme_session(compose)

    # the api runs as the image's fixed, unprivileged uid, not root
    uid, gid = (compose.run("exec", "-T", "api", "id", flag).stdout.strip() for flag in ("-u", "-g"))
    assert int(uid) > 0 and int(gid) > 0, (uid, gid)
    assert compose.inspect("api", "{{.Config.User}}").split(":")[0] == uid

    # `stop` during a stream of writes: exit 0 within the grace period, and the shutdown flushes the
    # relay, so every acknowledged create is on the stream although the api is no longer running
    writer = Writer(token, "Stop")
    writer.start()
    wait_until(lambda: len(writer.acknowledged) >= 30, 30, "30 creates acknowledged before the stop")
    started = time.monotonic()
    compose.run("stop", "api", timeout=grace + 30)
    stop_seconds = time.monotonic() - started
    writer.finish()
    exit_code = compose.inspect("api", "{{.State.ExitCode}}")
    compose.report("stop api", stop_seconds, capsys, f"exit {exit_code}, grace period {grace:g} s, "
                   f"{len(writer.acknowledged)} creates acknowledged")
    assert exit_code == "0"
    assert stop_seconds < grace
    assert writer.unexpected == []
    missing = set(writer.acknowledged) - created_ids(compose)
    assert not missing, f"{len(missing)} acknowledged creates have no event after the api stopped"
    backlog = compose.run("exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "conversations", "-Atc",
                          "SELECT count(*) FROM conversation_outbox").stdout.strip()
    assert backlog == "0", f"{backlog} outbox rows left unpublished by the api's shutdown"

    compose.run("start", "api")
    wait_until(ready, START_TIMEOUT, "GET /ready answered 200 again after `start api`")

    # SIGKILL Redis: what it acknowledged survives (append-only file, WAITAOF before each outbox
    # delete); what is written while it is down waits in the outbox and is published once it is back
    before = [create(token, f"BeforeKill{number}") for number in range(20)]
    wait_until(lambda: set(before) <= created_ids(compose), 15, "the creates before the kill were published")
    compose.run("kill", "-s", "SIGKILL", "redis")
    assert compose.inspect("redis", "{{.State.Running}}") == "false"
    during = [create(token, f"WhileDown{number}") for number in range(20)]
    started = time.monotonic()
    compose.run("start", "redis")
    wait_until(lambda: compose.inspect("redis", "{{.State.Health.Status}}") == "healthy", 60,
               "redis healthy again")
    wait_until(lambda: set(before + during) <= created_ids(compose), 60,
               "every create, before and during the outage, on the stream")
    compose.report("redis SIGKILL, start, backlog published", time.monotonic() - started, capsys,
                   f"{len(before)} events before the kill kept, {len(during)} written while down published")
    everything = set(writer.acknowledged) | set(before) | set(during)
    assert everything <= created_ids(compose), "an acknowledged create's event was lost"
