"""docs/api.md §7: the OpenAPI 3.1 document at /schema/openapi.json tells the truth about the API."""

from __future__ import annotations

import re

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar import Litestar
from openapi_spec_validator import validate

from service.errors import ErrorBody
from service.http.endpoints import MOUNT_PATH, ROUTES
from service.http.openapi_schemas import digits_at_most
from service.model import MAX_TIMESTAMP, Conversation, ConversationCreate, ConversationUpdate, ListParams

# The document does not describe itself, nor the docs page that shows it and its assets.
DOCUMENTED_ELSEWHERE = {"/schema", "/schema/openapi.json", "/schema/docs.js", "/schema/swagger-ui-bundle.js",
                        "/schema/swagger-ui.css"}


@pytest.fixture
async def document(anonymous) -> dict:
    response = await anonymous.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def resolve(document: dict, schema: dict) -> dict:
    """A validator for `schema` that can follow the document's $refs."""
    return {**schema, "components": document["components"]}


def check(document: dict, schema: dict, instance: object) -> None:
    validator = jsonschema.Draft202012Validator(resolve(document, schema))
    validator.validate(instance)


async def test_the_document_is_valid_openapi_3_1(document: dict):
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_the_docs_page_is_served_under_schema_with_its_assets_from_this_service(anonymous):
    response = await anonymous.get("/schema")
    assert response.status_code == 200
    assert "//" not in response.text.replace("<!doctype", "")  # no URL of another origin
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assets = [("/schema/docs.js", "text/javascript"), ("/schema/swagger-ui-bundle.js", "text/javascript"),
              ("/schema/swagger-ui.css", "text/css")]
    for asset, media_type in assets:
        assert f'"{asset}"' in response.text
        served = await anonymous.get(asset)
        assert served.status_code == 200 and served.headers["content-type"].startswith(media_type)
    assert "/schema/openapi.json" in (await anonymous.get("/schema/docs.js")).text


async def test_every_route_and_method_of_the_app_is_documented_and_nothing_else(app, document: dict):
    litestar: Litestar = app.app
    # /v1/conversations is one mounted handler; its dispatch table says what it serves.
    served = {(route, method.lower()) for route, operations in ROUTES.items() for method in operations}
    for route in litestar.routes:
        if route.path.startswith(MOUNT_PATH) or route.path in DOCUMENTED_ELSEWHERE:
            continue
        served |= {(route.path_format, method.lower()) for method in route.methods - {"OPTIONS", "HEAD"}}
    documented = {(path, method) for path, item in document["paths"].items() for method in item
                  if method != "parameters"}
    assert documented == served


async def test_the_bearer_scheme_guards_every_v1_call_and_no_operational_one(document: dict):
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": document["components"]["securitySchemes"][
            "bearerAuth"]["description"]}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            expected = [{"bearerAuth": []}] if path.startswith("/v1/") else []
            assert operation["security"] == expected, (path, method)


async def test_write_calls_document_both_body_encodings(document: dict):
    for path, method in [("/v1/conversations", "post"), ("/v1/conversations/{conversation_id}", "put"),
                         ("/v1/conversations/{conversation_id}", "patch")]:
        content = document["paths"][path][method]["requestBody"]["content"]
        assert set(content) == {"application/json", "application/x-www-form-urlencoded"}


async def test_every_error_response_is_documented_with_the_error_body(document: dict):
    for item in document["paths"].values():
        for method, operation in item.items():
            if method == "parameters" or "security" not in operation or not operation["security"]:
                continue
            statuses = {int(status) for status in operation["responses"]}
            assert {400, 401, 500, 503} <= statuses
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]["$ref"]
                    assert schema.endswith("/ErrorBody") or (status == "409" and schema.endswith("/ConflictErrorBody"))


async def test_request_and_response_schemas_are_the_code_structs(document: dict):
    schemas = document["components"]["schemas"]
    assert list(schemas["Conversation"]["properties"]) == list(Conversation.__struct_fields__)
    assert schemas["Conversation"]["required"] == list(Conversation.__struct_fields__)
    assert set(schemas["ConversationCreate"]["properties"]) == set(ConversationCreate.__struct_fields__)
    assert set(schemas["ConversationUpdate"]["properties"]) == set(ConversationUpdate.__struct_fields__)
    assert schemas["ConversationUpdate"]["additionalProperties"] is False
    assert list(schemas["ErrorBody"]["properties"]) == list(ErrorBody.__struct_fields__)
    query = {p["name"] for p in document["paths"]["/v1/conversations"]["get"]["parameters"]}
    assert query == set(ListParams.__struct_fields__)


async def test_examples_come_from_the_seed(document: dict):
    [example] = document["components"]["schemas"]["Conversation"]["examples"]
    assert example["id"] == "xgQQXg3hrtjh7AvZ"
    assert example["contact_id"] == "WAz8eIbvDR60rouK"


async def test_real_responses_match_their_documented_schemas(api, document: dict):
    paths = document["paths"]
    item = paths["/v1/conversations/{conversation_id}"]

    def schema_of(operation: dict, status: int) -> dict:
        return operation["responses"][str(status)]["content"]["application/json"]["schema"]

    created = await api.post("/v1/conversations", data={"contact_id": "openapi"})
    check(document, schema_of(paths["/v1/conversations"]["post"], 201), created.json())
    conversation_id = created.json()["id"]
    listed = await api.get("/v1/conversations", params={"limit": 5, "muted": "false"})
    check(document, schema_of(paths["/v1/conversations"]["get"], 200), listed.json())
    updated = await api.patch(f"/v1/conversations/{conversation_id}", json={"is_pinned": True})
    check(document, schema_of(item["patch"], 200), updated.json())
    conflict = await api.post("/v1/conversations", json={"contact_id": "openapi"})
    check(document, schema_of(paths["/v1/conversations"]["post"], 409), conflict.json())
    missing = await api.get("/v1/conversations/AAAAAAAAAAAAAAAA")
    check(document, schema_of(item["get"], 404), missing.json())
    bad = await api.get("/v1/conversations", params={"limit": 0})
    check(document, schema_of(paths["/v1/conversations"]["get"], 400), bad.json())


async def test_documented_request_schemas_accept_what_the_api_accepts_and_reject_what_it_rejects(document: dict):
    schemas = document["components"]["schemas"]
    create = {"$ref": "#/components/schemas/ConversationCreate"}
    check(document, create, {"contact_id": "WAz8eIbvDR60rouK"})
    check(document, create, {"group_id": "g", "contact_id": None})
    for invalid in ({}, {"contact_id": "a", "group_id": "b"}, {"contact_id": "a", "x": 1}, {"contact_id": ""}):
        with pytest.raises(jsonschema.ValidationError):
            check(document, create, invalid)
    form = {"$ref": "#/components/schemas/ConversationUpdateForm"}
    check(document, form, {"is_muted": "true", "archived_at": "", "last_opened_at": "123"})
    for invalid in ({"is_muted": "1"}, {"last_opened_at": "-1"}, {"is_muted": ""}):
        with pytest.raises(jsonschema.ValidationError):
            check(document, form, invalid)
    assert schemas["ConversationUpdateForm"]["additionalProperties"] is False


async def test_writes_document_idempotency_keys_and_preconditions(document: dict):
    item = document["paths"]["/v1/conversations/{conversation_id}"]
    create = document["paths"]["/v1/conversations"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in create["parameters"]}
    for method in ("put", "patch", "delete"):
        names = {p["name"] for p in item[method]["parameters"]}
        assert {"Idempotency-Key", "If-Match"} <= names
        assert "412" in item[method]["responses"]
    assert "ETag" in item["get"]["responses"]["200"]["headers"]


@given(st.integers(min_value=0, max_value=10**14))
def test_the_form_timestamp_pattern_accepts_exactly_the_timestamps_the_api_accepts(value: int):
    pattern = re.compile(digits_at_most(MAX_TIMESTAMP))
    assert bool(pattern.match(str(value))) == (value <= MAX_TIMESTAMP)
    assert bool(pattern.match("000" + str(value))) == (value <= MAX_TIMESTAMP)


async def test_every_operation_declares_the_front_doors_refusals_and_keyed_writes_declare_429(document: dict):
    """The server may refuse any request before the app sees it (408, 414, 431: docs/api.md §7.5), and an
    account's keyed writes past their rate (429); the document says so, with the contract's error body."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            expected = {"408", "414", "431"}
            if any(parameter.get("name") == "Idempotency-Key" for parameter in operation.get("parameters", [])):
                expected.add("429")
                assert responses["429"]["headers"]["Retry-After"]["required"], (path, method)
            assert expected <= set(responses), (path, method, sorted(responses))
            for status in expected:
                assert responses[status]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"}, (path, method, status)

