"""docs/api.md §5: every client error is JSON {"type", "message", "param"} with the right status.

(500 and 503 are covered elsewhere.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.http_helpers import (
    CONFLICT_KEYS,
    CONVERSATIONS,
    ERROR_KEYS,
    assert_error,
    create_conversation,
    item,
    send,
    send_raw,
    unique,
    unknown_id,
)

MAX_BODY = 64 * 1024


# ------------------------------------------------------------------------------------------ 400


@pytest.mark.parametrize("body", [
    "{",
    '{"contact_id": "abc"',
    '{"contact_id": abc}',
    '{"contact_id": "abc",}',
    "{'contact_id': 'abc'}",
    "not json",
    '{"contact_id": "abc"} trailing',
    "\xff\xfe",
])
async def test_malformed_json_is_400_without_param(api, body) -> None:
    response = await send_raw(api, "POST", CONVERSATIONS, body.encode("latin-1"))
    error = assert_error(response, 400, None)
    assert "JSON" in error["message"]


@pytest.mark.parametrize(("method", "field", "raw"), [
    ("POST", "contact_id", "123"),
    ("POST", "group_id", "true"),
    ("PUT", "is_muted", '"true"'),
    ("PUT", "last_active_at", '"5"'),
    ("PUT", "archived_at", "1.0"),
])
async def test_wrong_type_is_400_naming_the_attribute(api, method, field, raw) -> None:
    url = item((await create_conversation(api))["id"]) if method == "PUT" else CONVERSATIONS
    response = await send_raw(api, method, url, f'{{"{field}": {raw}}}')
    error = assert_error(response, 400, field)
    assert field in error["message"]


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_unknown_attribute_is_400_naming_it(api, method) -> None:
    url = item((await create_conversation(api))["id"]) if method == "PUT" else CONVERSATIONS
    response = await api.request(method, url, json={"contact_id": unique(), "is_mute": True} if method == "POST"
                                 else {"is_mute": True})
    error = assert_error(response, 400, "is_mute")
    assert "is_mute" in error["message"]


async def test_unknown_query_attribute_on_list_is_400_naming_it(api) -> None:
    response = await api.get(CONVERSATIONS, params={"limt": "5"})
    assert_error(response, 400, "limt")


async def test_missing_party_is_400_naming_it(api) -> None:
    response = await api.post(CONVERSATIONS, json={})
    error = assert_error(response, 400)
    assert error["param"] in ("contact_id", "group_id")


# ------------------------------------------------------------------------------------------ 401


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_missing_token_is_401_with_www_authenticate_bearer(anonymous, method) -> None:
    response = await anonymous.request(method, CONVERSATIONS, json={"contact_id": unique()}
                                       if method == "POST" else None)
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


# ------------------------------------------------------------------------------------------ 404


async def test_unknown_conversation_is_404(api) -> None:
    await create_conversation(api)
    response = await api.get(item(unknown_id()))
    assert_error(response, 404)


@pytest.mark.parametrize("path", ["/v1/nope", "/nope", "/v1", "/v2/conversations", "/v1/conversations/x/y",
                                  "/v1/conversation", "/V1/conversations", "/"])
async def test_unknown_route_is_404(api, path) -> None:
    response = await api.get(path)
    assert_error(response, 404)


@pytest.mark.parametrize("path", ["/v1//conversations", "/v1/conversations//", "/v1/conversations/%2F",
                                  "/v1/conversations/%2f/", "/v1%2Fconversations", "/v1/%2Fevents", "/v1//events"])
async def test_a_path_with_an_empty_or_encoded_slash_segment_is_404(api, path) -> None:
    """docs/api.md §3.2: only the two paths (and a trailing slash) are routes, as the client sent them."""
    response = await api.get(path)
    assert_error(response, 404)


async def test_a_write_to_an_item_path_with_a_doubled_slash_is_404_and_changes_nothing(api) -> None:
    created = await create_conversation(api)
    response = await api.delete(f"/v1/conversations//{created['id']}")
    assert_error(response, 404)
    assert (await api.get(item(created["id"]))).status_code == 200


@pytest.mark.parametrize("path", ["/v1/nope", "/nope"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_unknown_route_is_404_for_any_method(api, path, method) -> None:
    response = await api.request(method, path)
    assert_error(response, 404)


# ------------------------------------------------------------------------------------------ 405


@pytest.mark.parametrize(("method", "on_item", "allowed"), [
    ("POST", True, {"GET", "PUT", "PATCH", "DELETE"}),
    ("PUT", False, {"GET", "POST"}),
    ("PATCH", False, {"GET", "POST"}),
    ("DELETE", False, {"GET", "POST"}),
])
async def test_wrong_method_is_405_with_an_allow_header(api, method, on_item, allowed) -> None:
    url = item((await create_conversation(api))["id"]) if on_item else CONVERSATIONS
    response = await api.request(method, url)
    assert_error(response, 405)
    allow = {m.strip().upper() for m in response.headers["allow"].split(",")}
    assert allowed <= allow
    assert method not in allow


async def test_wrong_method_on_health_is_405(anonymous) -> None:
    response = await anonymous.post("/health")
    assert_error(response, 405)
    assert "GET" in response.headers["allow"].upper()


# ------------------------------------------------------------------------------------------ 409


async def test_conflict_is_409_with_conversation_id(api) -> None:
    contact = unique()
    existing = await create_conversation(api, contact_id=contact)
    response = await api.post(CONVERSATIONS, json={"contact_id": contact})
    error = assert_error(response, 409, "contact_id")
    assert list(error) == CONFLICT_KEYS
    assert error["conversation_id"] == existing["id"]


# ------------------------------------------------------------------------------------------ 413


def json_body_of(size: int) -> bytes:
    """A JSON create body of exactly `size` bytes (its contact_id is too long, so it is a 400 if read)."""
    head, tail = b'{"contact_id": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def form_body_of(size: int) -> bytes:
    head = b"contact_id="
    return head + b"a" * (size - len(head))


@pytest.mark.parametrize(("content_type", "make"), [("application/json", json_body_of),
                                                    ("application/x-www-form-urlencoded", form_body_of)])
@pytest.mark.parametrize("extra", [1, 100, 1024 * 1024])
async def test_body_over_64_kib_is_413(api, content_type, make, extra) -> None:
    body = make(MAX_BODY + extra)
    assert len(body) == MAX_BODY + extra
    response = await send_raw(api, "POST", CONVERSATIONS, body, content_type)
    assert_error(response, 413)


@pytest.mark.parametrize(("content_type", "make"), [("application/json", json_body_of),
                                                    ("application/x-www-form-urlencoded", form_body_of)])
async def test_body_of_exactly_64_kib_is_read(api, content_type, make) -> None:
    response = await send_raw(api, "POST", CONVERSATIONS, make(MAX_BODY), content_type)
    assert_error(response, 400, "contact_id")


async def test_body_over_64_kib_without_content_length_is_413(api) -> None:
    body = json_body_of(MAX_BODY + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    response = await api.post(CONVERSATIONS, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413)


async def test_update_body_over_64_kib_is_413(api) -> None:
    created = await create_conversation(api)
    body = b'{"pinned_message_id": "' + b"a" * MAX_BODY + b'"}'
    response = await send_raw(api, "PUT", item(created["id"]), body)
    assert_error(response, 413)


# ------------------------------------------------------------------------------------------ 415


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", "application/xml",
                                          "application/jsonx", "application/octet-stream", "text/json"])
async def test_unsupported_content_type_is_415(api, content_type) -> None:
    response = await send_raw(api, "POST", CONVERSATIONS, json.dumps({"contact_id": unique()}), content_type)
    assert_error(response, 415)


async def test_multipart_form_data_is_415(api) -> None:
    response = await api.post(CONVERSATIONS, files={"contact_id": (None, unique())})
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    assert_error(response, 415)


async def test_a_body_without_content_type_is_415(api) -> None:
    response = await api.post(CONVERSATIONS, content=json.dumps({"contact_id": unique()}).encode())
    assert "content-type" not in response.request.headers
    assert_error(response, 415)


async def test_unsupported_content_type_on_update_is_415(api) -> None:
    created = await create_conversation(api)
    response = await send_raw(api, "PUT", item(created["id"]), "is_muted=true", "text/plain")
    assert_error(response, 415)
    assert (await api.get(item(created["id"]))).json()["is_muted"] is False


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON",
                                          "application/x-www-form-urlencoded; charset=utf-8"])
async def test_media_type_parameters_and_case_do_not_matter(api, content_type) -> None:
    contact = unique()
    body = f"contact_id={contact}" if "form" in content_type else json.dumps({"contact_id": contact})
    response = await send_raw(api, "POST", CONVERSATIONS, body, content_type)
    assert response.status_code == 201, response.text


# ---------------------------------------------------------------------------------- every 4xx


CLIENT_ERRORS = [
    ("POST", CONVERSATIONS, b"{", "application/json", 400),
    ("POST", CONVERSATIONS, b'{"contact_id": 1}', "application/json", 400),
    ("POST", CONVERSATIONS, b'{"contact_id": "a", "x": 1}', "application/json", 400),
    ("POST", CONVERSATIONS, b"{}", "application/json", 400),
    ("POST", CONVERSATIONS, b"contact_id=a&contact_id=b", "application/x-www-form-urlencoded", 400),
    ("POST", CONVERSATIONS, b"contact_id=%FF", "application/x-www-form-urlencoded", 400),
    ("POST", CONVERSATIONS, "contact_id=é".encode(), "application/x-www-form-urlencoded", 400),
    ("GET", CONVERSATIONS + "?limit=0", None, None, 400),
    ("GET", CONVERSATIONS + "?limit=abc", None, None, 400),
    ("GET", CONVERSATIONS + "?limit=99999999999999999999999999", None, None, 400),
    ("GET", CONVERSATIONS + "?starting_after=%00", None, None, 400),
    ("GET", CONVERSATIONS + "?%FF=1", None, None, 400),
    ("GET", "/v1/conversations/" + "0" * 16, None, None, 404),
    ("GET", "/v1/conversations/%00", None, None, 404),
    ("GET", "/v1/nope", None, None, 404),
    ("GET", "/nope", None, None, 404),
    ("POST", "/v1/conversations/" + "0" * 16, None, None, 405),
    ("POST", CONVERSATIONS, b"x" * (MAX_BODY + 1), "application/json", 413),
    ("POST", CONVERSATIONS, b"contact_id=a", "text/plain", 415),
]


@pytest.mark.parametrize(("method", "url", "content", "content_type", "status"), CLIENT_ERRORS,
                         ids=[f"{m} {u[:40]} {s}" for m, u, _, _, s in CLIENT_ERRORS])
async def test_every_client_error_has_type_invalid_request(api, method, url, content, content_type,
                                                           status) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await api.request(method, url, content=content, headers=headers)
    body = assert_error(response, status)
    assert list(body) == ERROR_KEYS
    assert body["type"] == "invalid_request"


async def test_401_has_type_invalid_request(anonymous) -> None:
    body = assert_error(await anonymous.get(CONVERSATIONS), 401)
    assert body["type"] == "invalid_request"


HOSTILE = [
    b'{"contact_id": "\\ud800"}',
    b'{"contact_id": "' + b"\\" * 3 + b'"}',
    b'{"contact_id": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"[" * 100000,
    b'{"contact_id": 1e999999}',
    b'{"contact_id": -0}',
    b'{"group_id": "' + b"a" * 60000 + b'"}',
    b'{"' + b"k" * 60000 + b'": 1}',
    b"\x00" * 100,
    b"\xef\xbb\xbf{}",
    b'{"__proto__": {}}',
]


@pytest.mark.parametrize("content", HOSTILE, ids=lambda c: repr(c[:30]))
@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
async def test_no_error_body_contains_a_traceback(api, content, content_type) -> None:
    response = await send_raw(api, "POST", CONVERSATIONS, content, content_type)
    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code)
    for marker in ("Traceback", 'File "', "line ", "Error:", "asyncpg", "msgspec", "litestar", "SELECT",
                   "INSERT", "psycopg"):
        assert marker not in response.text, response.text


async def test_error_messages_do_not_echo_huge_input(api) -> None:
    name = "k" * 60000
    response = await send(api, "POST", CONVERSATIONS, {name: 1, "contact_id": unique()})
    body = assert_error(response, 400)
    assert len(response.content) < 2000, len(response.content)
    assert body["param"] is not None
