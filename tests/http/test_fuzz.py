"""docs/api.md §3-5 and §7, fuzzed: schemathesis against the service's own OpenAPI document.

The document is loaded from a real `python -m service serve` (/schema/openapi.json) on the run's
migrated database, and every operation in it is exercised with schema-valid and schema-invalid
data (schemathesis' examples, coverage and fuzzing phases), then in sequences along the links
schemathesis infers from Location headers (its stateful phase). Every response goes through
every check schemathesis has (`--checks all`, each switched on by name below) and a response
time limit: no 5xx; status codes, content types, headers and bodies as documented; valid data
accepted and invalid data rejected; the bearer token really enforced; another account's
conversation never readable (two peer accounts); unsupported methods answered 405 with Allow;
deleted conversations gone and created ones retrievable. Once with a valid token, once with none.

The seed is fixed (SEED) and examples saved by earlier runs are not replayed, so a failure
reproduces; each test prints its seed, operations, cases sent and distinct failures.

Where docs/api.md is deliberately stricter than an OpenAPI document can say, the generated request is
adjusted before it is sent (`before_call` below), never the checks; each adjustment says why. And
412 is among the statuses a valid write may get, because a valid If-Match that names another
version is answered 412 by design.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import hypothesis
import pytest
import redis.asyncio as aioredis
import schemathesis

from service.http.openapi import OPENAPI_PATH
from service.model import ACTIVITY_CURSOR_REGEX
from service.settings import Settings
from tests.conftest import Account, new_account
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow

SEED = 20261125
MAX_EXAMPLES = 60  # per operation and phase: the whole file runs in well under 3 minutes
STATEFUL_SCENARIOS = 100
STATEFUL_STEPS = 8
MAX_RESPONSE_SECONDS = 5.0

# Every check schemathesis ships (`st run --checks all`), switched on by name, so that a check off
# by default, or a changed default, cannot quietly drop out of this run.
ALL_CHECKS = (
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "response_headers_conformance", "positive_data_acceptance",
    "negative_data_rejection", "use_after_free", "ensure_resource_availability", "missing_required_header",
    "ignored_auth", "object_level_authorization", "unsupported_method", "allow_header_conformance",
)
ITEM_PATH = "/v1/conversations/{conversation_id}"

# What a schema-valid request may get (positive_data_acceptance). Tighter than schemathesis'
# default, which also allows 3xx, 403, 429 and 5xx: none of them is ever right here.
VALID_WITH_TOKEN = ["2xx", "404", "409"]  # 404: an id this account has not; 409: a contact it already has
VALID_WRITE_WITH_TOKEN = [*VALID_WITH_TOKEN, "412"]  # a valid If-Match naming another version (README)
VALID_WITHOUT_TOKEN = ["401"]
# What a schema-invalid request may get (negative_data_rejection): the 4xx this API answers with.
INVALID = ["400", "401", "404", "405", "413", "415"]


# ----------------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What a fuzz test did, written to the terminal at its end so that CI output shows it."""

    title: str
    cases: Counter[str] = field(default_factory=Counter)
    failures: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)

    def record_failure(self, label: str, error: BaseException) -> None:
        for failure in getattr(error, "exceptions", None) or [error]:
            title = getattr(failure, "title", None) or (str(failure).strip().splitlines() or [""])[0]
            self.failures.add(f"{label}: {getattr(failure, 'code', type(failure).__name__)} {title}")

    def lines(self) -> list[str]:
        head = (f"schemathesis {schemathesis.__version__} [{self.title}] seed={SEED}: {len(self.cases)} operations, "
                f"{sum(self.cases.values())} cases, {len(self.failures)} failures "
                f"in {time.monotonic() - self.started:.1f} s")
        return [head, *(f"  {label}: {count} cases" for label, count in sorted(self.cases.items())),
                *(f"  FAILED {failure}" for failure in sorted(self.failures))]


@pytest.fixture
def report(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Report]:
    collected = Report(request.node.name)
    yield collected
    with capsys.disabled():  # straight to the terminal, passed or failed, -q or not
        print("\n" + "\n".join(collected.lines()))


# ---------------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Service:
    base_url: str
    settings: Settings
    owner: Account = field(repr=False)  # no tokens in assertion output
    peer: Account = field(repr=False)
    log_path: Path


@pytest.fixture
async def service(settings: Settings, tmp_path: Path) -> AsyncIterator[Service]:
    owner = await new_account(settings, "fuzz")
    peer = await new_account(settings, "peer")
    # The fuzzer sends one account's keyed writes far faster than the per-account rate allows;
    # its 429 is tested in test_idempotency_bounds.py, so here the rate is out of the way.
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "EVENTS_STREAM": settings.events_stream, "IDEMPOTENCY_KEYS_PER_SECOND": "1000000"}
    log_path = tmp_path / "serve.log"
    server = ServiceProcess(env, log_path=log_path).start()
    try:
        yield Service(server.base_url, settings, owner, peer, log_path)
    finally:
        server.stop()
        client = aioredis.Redis.from_url(settings.redis_url)
        await client.delete(settings.events_stream)
        await client.aclose()


def fuzz_config(*, wfc_path: Path | None = None, forged_tokens: bool = False) -> schemathesis.Config:
    """The run's configuration, in the keys of schemathesis.toml (its documented format).

    With `wfc_path`, calls carry the owner's token; without, none at all, or with `forged_tokens`
    an Authorization header schemathesis makes up for the bearer scheme.
    """
    authenticated = wfc_path is not None
    valid = VALID_WITH_TOKEN if authenticated else VALID_WITHOUT_TOKEN
    valid_write = VALID_WRITE_WITH_TOKEN if authenticated else VALID_WITHOUT_TOKEN
    checks: dict[str, Any] = {name: {"enabled": True} for name in ALL_CHECKS}
    checks["positive_data_acceptance"]["expected-statuses"] = valid
    checks["negative_data_rejection"]["expected-statuses"] = INVALID
    checks["max_response_time"] = MAX_RESPONSE_SECONDS
    data: dict[str, Any] = {
        "seed": SEED,
        "generation": {
            "mode": "all",  # schema-valid and schema-invalid data
            "max-examples": MAX_EXAMPLES,
            "database": "none",  # no examples saved by earlier runs: the seed alone decides
            # Made-up Authorization headers only where asked for: with a token, schemathesis would
            # otherwise send some cases with an empty header in place of the owner's token.
            "with-security-parameters": forged_tokens,
        },
        "phases": {"examples": {"enabled": True, "fill-missing": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": True, "max-steps": STATEFUL_STEPS}},
        "checks": checks,
        "request-timeout": 10,
        "operations": [
            # The operational endpoints need no token (docs/api.md §7): a valid request there is a 200.
            {"include-tag": "operations", "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx"]}}},
            {"include-path": ITEM_PATH, "include-method": ["PUT", "PATCH", "DELETE"],
             "checks": {"positive_data_acceptance": {"expected-statuses": valid_write}}},
        ],
    }
    if wfc_path is not None:
        data["auth"] = {"wfc": {"path": str(wfc_path), "user": "owner", "peers": ["owner", "peer"]}}
    return schemathesis.Config.from_dict(data)


def wfc_auth_file(path: Path, service: Service) -> Path:
    """Two accounts as Web Fuzzing Commons users: calls go as `owner`; `peer` tries to read its objects."""
    users = [{"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {account.token}"}]}
             for name, account in (("owner", service.owner), ("peer", service.peer))]
    path.write_text(json.dumps({"auth": users}))
    return path


@pytest.fixture
def schema_with_token(service: Service, tmp_path: Path) -> schemathesis.BaseSchema:
    config = fuzz_config(wfc_path=wfc_auth_file(tmp_path / "wfc-auth.json", service))
    return schemathesis.openapi.from_url(service.base_url + OPENAPI_PATH, config=config)


@pytest.fixture
def schema_without_token(service: Service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(service.base_url + OPENAPI_PATH, config=fuzz_config())


@pytest.fixture
def schema_with_forged_tokens(service: Service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(service.base_url + OPENAPI_PATH, config=fuzz_config(forged_tokens=True))


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's fixture-loaded schemas read `Function._nodeid`, which pytest 9.2 dropped."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# ------------------------------------------------------------- rules OpenAPI cannot express

_VALID_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_CONVERSATION_ID = re.compile(r"[0-9A-Za-z]{16}")
_ACTIVITY_CURSOR = re.compile(ACTIVITY_CURSOR_REGEX)
_EVENT_ID = re.compile(r"evt_[0-9A-Za-z]{16}")
_CURSORS = ("starting_after", "ending_before")


def _whole_floats_as_integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_floats_as_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_floats_as_integers(item) for item in value]
    return value


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """Adjust a generated request where docs/api.md is stricter than any OpenAPI document can say.

    Each adjustment keeps a schema-valid request schema-valid and an invalid one invalid (and
    schemathesis re-classifies what a before_call hook changed), so positive_data_acceptance and
    negative_data_rejection still judge every request by what it is.
    """
    del context, kwargs
    # 1. docs/api.md §3: an integer is "a JSON integer (not 1.0)". JSON Schema's integer includes 130.0
    #    (it judges the number, not its spelling), so 130.0 is a valid timestamp to schemathesis.
    #    Spell such a number as the integer it is. (test_errors.py checks that 1.0 is a 400.)
    if isinstance(case.body, (dict, list)):
        case.body = _whole_floats_as_integers(case.body)
    if case.query:
        case.query = _whole_floats_as_integers(case.query)
        # 2. docs/api.md §4: starting_after and ending_before together are a 400. OpenAPI has no constraint
        #    between two query parameters, so two well-formed cursors look valid. Keep the first
        #    (test_pagination.py checks the 400).
        cursors = [case.query.get(name) for name in _CURSORS]
        if all(isinstance(cursor, str) and any(shape.fullmatch(cursor) for shape in (
                _CONVERSATION_ID, _ACTIVITY_CURSOR, _EVENT_ID)) for cursor in cursors):
            del case.query["ending_before"]
        # 4. docs/api.md §4.2: which cursors a list takes depends on `order` (ids in creation order,
        #    the pages' own cursors in activity order), a link between two parameters. Drop a
        #    well-formed cursor of the other order (test_activity_order.py checks the 400).
        wrong = _CONVERSATION_ID if case.query.get("order") == "activity" else _ACTIVITY_CURSOR
        for name in _CURSORS:
            if isinstance(case.query.get(name), str) and wrong.fullmatch(case.query[name]):
                del case.query[name]
        # 5. docs/api.md §6.6: a feed cursor must be an event of this account's feed (else a 400, or
        #    a 410 past the window), which no schema can generate. Drop well-formed ones
        #    (test_events_feed.py checks both answers).
        if case.operation.path == "/v1/events":
            for name in _CURSORS:
                if isinstance(case.query.get(name), str) and _EVENT_ID.fullmatch(case.query[name]):
                    del case.query[name]
    # 3. README, Retries: one Idempotency-Key used for two different requests is a 400, and generated
    #    keys repeat across cases (the shortest valid key is "!"). Give each valid key a value of
    #    its own; invalid keys stay as generated. (test_idempotency.py checks the 400.)
    for name in list(case.headers or {}):
        key = case.headers[name]
        if name.lower() == "idempotency-key" and isinstance(key, str) and _VALID_IDEMPOTENCY_KEY.fullmatch(key):
            case.headers[name] = f"fuzz-{uuid.uuid4().hex}"


# ------------------------------------------------------------------------------------------ tests


def call_and_validate(case: schemathesis.Case, report: Report) -> None:
    report.cases[case.operation.label] += 1
    try:
        case.call_and_validate()
    except BaseException as error:  # schemathesis' FailureGroup is a BaseExceptionGroup
        report.record_failure(case.operation.label, error)
        raise


lazy_schema_with_token = schemathesis.pytest.from_fixture("schema_with_token")
lazy_schema_without_token = schemathesis.pytest.from_fixture("schema_without_token")
lazy_schema_with_forged_tokens = schemathesis.pytest.from_fixture("schema_with_forged_tokens")


@lazy_schema_with_token.parametrize()
def test_every_operation_conforms_with_a_valid_token(case: schemathesis.Case, report: Report) -> None:
    call_and_validate(case, report)


@lazy_schema_without_token.parametrize()
def test_every_operation_conforms_without_a_token(case: schemathesis.Case, report: Report) -> None:
    call_and_validate(case, report)


@lazy_schema_with_forged_tokens.parametrize()
def test_every_operation_conforms_with_a_forged_token(case: schemathesis.Case, report: Report) -> None:
    call_and_validate(case, report)


def delete_every_conversation_of(service: Service, account: Account) -> None:
    """Through the API: what a scenario finds is then only what it made itself."""
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {account.token}"},
                      timeout=10) as client:
        while page := client.get("/v1/conversations", params={"limit": 100}).raise_for_status().json()["data"]:
            for conversation in page:
                client.delete(f"/v1/conversations/{conversation['id']}").raise_for_status()


async def forget_idempotency_keys_of(service: Service, account: Account) -> None:
    connection = await asyncpg.connect(service.settings.database_url)
    try:
        await connection.execute("DELETE FROM idempotency_keys WHERE account_id = $1", account.id)
    finally:
        await connection.close()


def test_sequences_of_calls_conform_with_a_valid_token(schema_with_token, service: Service, report: Report) -> None:
    """The stateful phase: create, then retrieve, list, update and delete what was created, and so on.

    Each scenario starts from an account without conversations or stored Idempotency-Keys, as its
    replays (while Hypothesis shrinks a failure, or meets a scenario that begins as an earlier one
    did) do too; otherwise a replayed create meets the conversation its first run made (409), or
    a keyed create replays the first run's answer instead of creating, and Hypothesis cannot
    reproduce the scenario.
    """

    # The feed's pages depend on how far the relay has got, which no replay can reproduce: its
    # operations are fuzzed call by call above, and its sync rules tested in test_events_feed.py.
    conversations_only = schema_with_token.exclude(path_regex="^/v1/events")

    class Sequences(conversations_only.as_state_machine()):
        def setup(self) -> None:
            delete_every_conversation_of(service, service.owner)
            asyncio.run(forget_idempotency_keys_of(service, service.owner))

        def before_call(self, case: schemathesis.Case) -> None:
            report.cases[f"stateful {case.operation.label}"] += 1

        def validate_response(self, response: schemathesis.Response, case: schemathesis.Case,
                              *args: Any, **kwargs: Any) -> None:
            try:
                super().validate_response(response, case, *args, **kwargs)
            except BaseException as error:
                report.record_failure(f"stateful {case.operation.label}", error)
                raise

    settings = hypothesis.settings(max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS,
                                   database=None, deadline=None)
    hypothesis.seed(SEED)(Sequences).run(settings=settings)
    # object_level_authorization replayed some of the owner's reads as the peer: the check did run.
    peer_requests = service.log_path.read_text().count(f'"account_id":"{service.peer.id}"')
    assert peer_requests > 0
