"""Properties of the two headers a write may carry (docs/api.md §3), whatever their value.

If-Match: a write applies exactly when the header is `*` or lists the conversation's ETag
character for character (RFC 9110's strong comparison); otherwise it is a 412 naming the header
and nothing changes. Idempotency-Key: 1 to 255 visible ASCII characters make a write replayable;
anything else is a 400 naming the header. Neither is ever a 500. Each example runs in a fresh
account, so keys and conversations of one example never meet another's.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar import Litestar

from service.settings import Settings
from tests.asgi import client_for
from tests.conftest import new_account
from tests.http_helpers import CONVERSATIONS, assert_error, item, unique

# What a client can put in a header value: visible ASCII, space and tab.
HEADER_TEXT = st.text(alphabet=st.sampled_from([chr(c) for c in range(0x20, 0x7F)] + ["\t"]), max_size=300)
ENTITY_TAGS = st.one_of(
    st.just('"1"'),                                                # the conversation's version
    st.integers(min_value=-5, max_value=2**70).map(lambda n: f'"{n}"'),
    st.integers(min_value=2**63 - 2, max_value=10**20).map(lambda n: f'"{n}"'),  # around a bigint's end
    st.from_regex(r'\A"0[0-9]{0,3}"\Z'),                           # leading zeros: "01" is not "1"
    st.from_regex(r'\A(W/)?"[0-9]{1,22}"\Z'),                      # weak tags, 19+ digits
    st.just("*"),
    HEADER_TEXT,
)
IF_MATCH = st.one_of(
    st.lists(ENTITY_TAGS, min_size=1, max_size=4).flatmap(
        lambda tags: st.sampled_from([", ", ",", " , "]).map(lambda separator: separator.join(tags))),
    HEADER_TEXT,
)
IDEMPOTENCY_KEYS = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=260),
    HEADER_TEXT,
)
PROPERTY_SETTINGS = hypothesis_settings(max_examples=150, deadline=None,
                                        suppress_health_check=[HealthCheck.function_scoped_fixture])


def if_match_allows_version_1(header: str) -> bool:
    """The model: `*`, or a list with the exact tag "1" among its members (optional whitespace around each)."""
    if header.strip(" \t") == "*":
        return True
    return any(member.strip(" \t") == '"1"' for member in header.split(","))


def is_valid_key(key: str) -> bool:
    return 1 <= len(key) <= 255 and all(0x21 <= ord(c) <= 0x7E for c in key)


@PROPERTY_SETTINGS
@given(header=IF_MATCH, method=st.sampled_from(["PUT", "PATCH", "DELETE"]))
async def test_if_match_applies_a_write_exactly_when_it_names_the_version(
        app: Litestar, settings: Settings, header: str, method: str) -> None:
    account = await new_account(settings, "ifmatch")
    async with client_for(app, account.token) as api:
        created = (await api.post(CONVERSATIONS, json={"contact_id": unique()})).json()
        response = await api.request(method, item(created["id"]), headers={"If-Match": header},
                                     json=None if method == "DELETE" else {"is_muted": True})
        if if_match_allows_version_1(header):
            assert response.status_code == (204 if method == "DELETE" else 200), (header, response.text)
            return
        assert_error(response, 412, "If-Match")
        after = await api.get(item(created["id"]))
        assert after.json() == created and after.headers["etag"] == '"1"'


@PROPERTY_SETTINGS
@given(key=IDEMPOTENCY_KEYS)
async def test_an_idempotency_key_is_either_replayable_or_a_400_naming_the_header(
        app: Litestar, settings: Settings, key: str) -> None:
    account = await new_account(settings, "idemkey")
    body = {"contact_id": unique()}
    async with client_for(app, account.token) as api:
        first = await api.post(CONVERSATIONS, json=body, headers={"Idempotency-Key": key})
        if not is_valid_key(key):
            assert_error(first, 400, "Idempotency-Key")
            assert (await api.get(CONVERSATIONS)).json()["data"] == []
            return
        assert first.status_code == 201, (key, first.text)
        retry = await api.post(CONVERSATIONS, json=body, headers={"Idempotency-Key": key})
        assert (retry.status_code, retry.content) == (201, first.content)
        assert retry.headers["idempotent-replayed"] == "true"
