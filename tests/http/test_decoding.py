"""Unit tests of service.http.decoding: msgspec's errors in the contract's words, and the strict decoders."""

from __future__ import annotations

from urllib.parse import urlencode

import msgspec
import pytest
from msgspec import UNSET

from service.errors import InvalidRequest, UnsupportedMediaType
from service.http.decoding import MAX_QUERY_ATTRIBUTES, decode_body, decode_query, translate_validation_error
from service.model import MAX_TIMESTAMP, ConversationCreate, ConversationUpdate, ListParams, NoAttributes

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def json_error(raw: bytes, struct_type: type) -> msgspec.MsgspecError:
    """The error msgspec really raises decoding `raw` as `struct_type`."""
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as info:
        msgspec.json.decode(raw, type=struct_type)
    return info.value


def convert_error(values: object, struct_type: type) -> msgspec.MsgspecError:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(values, struct_type, strict=True)
    return info.value


# ------------------------------------------------------------------ translate_validation_error


@pytest.mark.parametrize(("raw", "struct_type", "name"), [
    (b'{"is_mute": true}', ConversationUpdate, "is_mute"),
    (b'{"contact_id": "a", "contactid": "b"}', ConversationCreate, "contactid"),
    (b'{"x": 1}', NoAttributes, "x"),
    (b'{"a`b": 1}', ConversationUpdate, "a`b"),
    (b'{"a\\nb": 1}', ConversationUpdate, "a\nb"),
    (b'{"at `$.is_muted`": 1}', ConversationUpdate, "at `$.is_muted`"),
])
def test_unknown_field_is_400_naming_the_attribute(raw, struct_type, name) -> None:
    error = translate_validation_error(json_error(raw, struct_type), struct_type)
    assert isinstance(error, InvalidRequest)
    assert error.status_code == 400
    assert error.param == name
    assert repr(name) in error.message or name in error.message


def test_unknown_field_message_lists_the_accepted_attributes() -> None:
    error = translate_validation_error(json_error(b'{"is_mute": true}', ConversationUpdate), ConversationUpdate)
    for field in ConversationUpdate.__struct_fields__:
        assert field in error.message


def test_unknown_field_of_a_call_without_attributes_says_so() -> None:
    error = translate_validation_error(json_error(b'{"force": true}', NoAttributes), NoAttributes)
    assert error.param == "force"
    assert "no attributes" in error.message


def test_unknown_field_with_a_huge_name_is_truncated() -> None:
    name = "k" * 10_000
    error = translate_validation_error(json_error(b'{"' + name.encode() + b'": 1}', ConversationUpdate),
                                       ConversationUpdate)
    assert error.param is not None
    assert name.startswith(error.param)
    assert len(error.message) < 1000


@pytest.mark.parametrize(("raw", "struct_type", "name", "rule"), [
    (b'{"is_muted": "true"}', ConversationUpdate, "is_muted", "true or false"),
    (b'{"is_pinned": 1}', ConversationUpdate, "is_pinned", "true or false"),
    (b'{"is_pinned": null}', ConversationUpdate, "is_pinned", "true or false"),
    (b'{"archived_at": "5"}', ConversationUpdate, "archived_at", str(MAX_TIMESTAMP)),
    (b'{"last_active_at": 1.0}', ConversationUpdate, "last_active_at", str(MAX_TIMESTAMP)),
    (b'{"last_opened_at": 1e3}', ConversationUpdate, "last_opened_at", str(MAX_TIMESTAMP)),
    (b'{"pinned_message_id": 5}', ConversationUpdate, "pinned_message_id", "64"),
    (b'{"contact_id": true}', ConversationCreate, "contact_id", "64"),
])
def test_type_mismatch_at_a_field_is_400_naming_it(raw, struct_type, name, rule) -> None:
    original = json_error(raw, struct_type)
    assert f"`$.{name}`" in str(original)
    error = translate_validation_error(original, struct_type)
    assert isinstance(error, InvalidRequest)
    assert error.param == name
    assert error.message.startswith(f"{name} must be ")
    assert rule in error.message


@pytest.mark.parametrize(("raw", "struct_type", "name"), [
    (b'{"archived_at": -1}', ConversationUpdate, "archived_at"),
    (b'{"last_active_at": 253402300800}', ConversationUpdate, "last_active_at"),
    (b'{"contact_id": "a b"}', ConversationCreate, "contact_id"),
    (b'{"group_id": ""}', ConversationCreate, "group_id"),
    (b'{"group_id": "abc\\n"}', ConversationCreate, "group_id"),
    (b'{"pinned_message_id": "' + b"a" * 65 + b'"}', ConversationUpdate, "pinned_message_id"),
])
def test_constraint_violation_at_a_field_is_400_naming_it(raw, struct_type, name) -> None:
    error = translate_validation_error(json_error(raw, struct_type), struct_type)
    assert error.param == name
    assert error.message.startswith(f"{name} must be ")


def test_constraint_of_a_list_attribute_is_400_naming_it() -> None:
    error = translate_validation_error(convert_error({"limit": 101}, ListParams), ListParams)
    assert error.param == "limit"
    assert "between 1 and 100" in error.message


def test_errors_from_convert_read_the_same_as_from_json() -> None:
    from_convert = translate_validation_error(convert_error({"is_muted": "x"}, ConversationUpdate),
                                              ConversationUpdate)
    from_json = translate_validation_error(json_error(b'{"is_muted": "x"}', ConversationUpdate), ConversationUpdate)
    assert (from_convert.param, from_convert.message) == (from_json.param, from_json.message)


@pytest.mark.parametrize("raw", [b"[]", b'["is_muted"]', b'"x"', b"1", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_400_without_param(raw) -> None:
    error = translate_validation_error(json_error(raw, ConversationUpdate), ConversationUpdate)
    assert isinstance(error, InvalidRequest)
    assert error.param is None
    assert "JSON object" in error.message


@pytest.mark.parametrize("raw", [b"{", b"", b'{"is_muted": tru}', b"{'a': 1}", b'{"is_muted": true,}', b"{} {}",
                                 b"\xff"])
def test_malformed_json_is_400_without_param(raw) -> None:
    original = json_error(raw, ConversationUpdate)
    assert isinstance(original, msgspec.DecodeError)
    error = translate_validation_error(original, ConversationUpdate)
    assert isinstance(error, InvalidRequest)
    assert error.param is None
    assert "not valid JSON" in error.message


# --------------------------------------------------------------------------------- decode_body


@pytest.mark.parametrize("content_type", [None, JSON, FORM, "text/plain", "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("struct_type", [ConversationCreate, ConversationUpdate, NoAttributes])
def test_an_empty_body_gives_the_defaults(content_type, struct_type) -> None:
    assert decode_body(b"", content_type, struct_type) == struct_type()


def test_defaults_of_an_update_are_unset_not_null() -> None:
    update = decode_body(b"", None, ConversationUpdate)
    for field in ConversationUpdate.__struct_fields__:
        assert getattr(update, field) is UNSET


@pytest.mark.parametrize("content_type", [JSON, "application/json; charset=utf-8", "Application/JSON",
                                          " application/json "])
def test_json_bodies_are_decoded(content_type) -> None:
    body = b'{"is_muted": true, "pinned_message_id": null, "last_active_at": 5}'
    update = decode_body(body, content_type, ConversationUpdate)
    assert update.is_muted is True
    assert update.pinned_message_id is None
    assert update.last_active_at == 5
    assert update.is_pinned is UNSET
    assert update.archived_at is UNSET


@pytest.mark.parametrize("content_type", [FORM, "application/x-www-form-urlencoded; charset=UTF-8"])
def test_form_bodies_are_decoded_with_typed_values(content_type) -> None:
    body = b"is_muted=true&is_pinned=false&pinned_message_id=&archived_at=&last_active_at=705103200"
    update = decode_body(body, content_type, ConversationUpdate)
    assert update.is_muted is True
    assert update.is_pinned is False
    assert update.pinned_message_id is None
    assert update.archived_at is None
    assert update.last_active_at == 705103200
    assert update.last_opened_at is UNSET


def test_form_body_of_the_seed_create() -> None:
    assert decode_body(b"contact_id=WAz8eIbvDR60rouK", FORM, ConversationCreate) == \
        ConversationCreate(contact_id="WAz8eIbvDR60rouK")


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "text/json", "application/jsonx",
                                          "application/xml", "multipart/form-data; boundary=x",
                                          "application/octet-stream", "json"])
def test_other_media_types_are_415(content_type) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_body(b'{"is_muted": true}', content_type, ConversationUpdate)
    assert info.value.status_code == 415
    assert info.value.message


@pytest.mark.parametrize("body", [b"is_muted=true&is_muted=false", b"is_muted=true&is_muted=true",
                                  b"archived_at=&archived_at="])
def test_duplicate_form_keys_are_400_naming_the_key(body) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_body(body, FORM, ConversationUpdate)
    assert info.value.param == body.partition(b"=")[0].decode()


@pytest.mark.parametrize(("body", "name"), [
    (rb'{"is_muted": true, "is_mute\u0064": false}', "is_muted"),
    (rb'{"\u0061rchived_at": 5, "archived_at": null}', "archived_at"),
    (rb'{"is_pinned": true, "is_pinned": false}', "is_pinned"),
])
def test_a_json_attribute_named_twice_is_400_naming_it_however_the_name_is_escaped(body, name) -> None:
    """docs/api.md §3.5: an attribute named twice is a 400; an escaped spelling is the same name."""
    with pytest.raises(InvalidRequest) as info:
        decode_body(body, JSON, ConversationUpdate)
    assert info.value.param == name


def test_a_json_name_spelled_with_an_escape_once_is_read() -> None:
    assert decode_body(rb'{"is_mute\u0064": true}', JSON, ConversationUpdate).is_muted is True


@pytest.mark.parametrize("body", [b"is_muted=false" + b"&" * (MAX_QUERY_ATTRIBUTES + 5), b"&&&is_muted=false&&&"])
def test_empty_separators_in_a_form_body_are_no_attributes(body) -> None:
    """docs/api.md §3.5: at most 32 attributes; a run of `&` names none."""
    assert decode_body(body, FORM, ConversationUpdate).is_muted is False


@pytest.mark.parametrize(("field", "value"), [
    ("is_muted", "TRUE"), ("is_muted", "1"), ("is_muted", "yes"), ("is_muted", ""),
    ("last_active_at", "1.0"), ("last_active_at", "1e3"), ("last_active_at", "-1"), ("last_active_at", "+1"),
    ("last_active_at", "\uff15"), ("last_active_at", str(MAX_TIMESTAMP + 1)), ("last_active_at", "9" * 400),
    ("archived_at", "true"), ("pinned_message_id", "a b"),
])
def test_form_values_are_typed_strictly(field, value) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_body(urlencode({field: value}).encode(), FORM, ConversationUpdate)
    assert info.value.param == field


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("archived_at", "0", 0),
    ("archived_at", str(MAX_TIMESTAMP), MAX_TIMESTAMP),
    ("last_opened_at", "705103200", 705103200),
    ("last_active_at", "1", 1),
])
def test_form_digits_are_integers_for_timestamps(field, value, expected) -> None:
    update = decode_body(urlencode({field: value}).encode(), FORM, ConversationUpdate)
    assert getattr(update, field) == expected


@pytest.mark.parametrize("body", [b"contact_id=%FF", b"contact_id=%C3", b"%FF=1", b"contact_id=%ED%A0%80"])
def test_invalid_utf8_percent_escapes_in_a_form_are_400(body) -> None:
    with pytest.raises(InvalidRequest):
        decode_body(body, FORM, ConversationCreate)


def test_raw_non_ascii_in_a_form_is_400() -> None:
    with pytest.raises(InvalidRequest):
        decode_body("contact_id=café".encode(), FORM, ConversationCreate)


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"is_mute": true}', b'{"is_muted": 1}'])
def test_json_errors_are_invalid_request(body) -> None:
    with pytest.raises(InvalidRequest):
        decode_body(body, JSON, ConversationUpdate)


# -------------------------------------------------------------------------------- decode_query


def test_an_empty_query_gives_the_defaults() -> None:
    params = decode_query(b"", ListParams)
    assert params == ListParams()
    assert params.limit == 10
    assert params.muted is UNSET
    assert decode_query(b"", NoAttributes) == NoAttributes()


def test_query_values_are_typed() -> None:
    params = decode_query(b"limit=5&muted=true&pinned=false&contact_id=abc&starting_after=0000000000000000",
                          ListParams)
    assert (params.limit, params.muted, params.pinned, params.contact_id, params.starting_after) == \
        (5, True, False, "abc", "0000000000000000")


@pytest.mark.parametrize("query", [b"limit=1&limit=2", b"muted=true&muted=true", b"contact_id=a&limit=3&contact_id=a"])
def test_duplicate_query_keys_are_400_naming_the_key(query) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_query(query, ListParams)
    assert info.value.param == query.partition(b"=")[0].decode()


@pytest.mark.parametrize("count", [MAX_QUERY_ATTRIBUTES + 1, 10_000])
def test_too_many_query_attributes_are_400(count) -> None:
    query = "&".join(f"a{i}=1" for i in range(count)).encode()
    with pytest.raises(InvalidRequest) as info:
        decode_query(query, ListParams)
    assert str(MAX_QUERY_ATTRIBUTES) in info.value.message


@pytest.mark.parametrize("query", [b"contact_id=%FF", b"contact_id=%C3%28", b"%FE=1", b"contact_id=%ED%A0%80"])
def test_invalid_utf8_percent_escapes_in_a_query_are_400(query) -> None:
    with pytest.raises(InvalidRequest):
        decode_query(query, ListParams)


def test_raw_non_ascii_in_a_query_is_400() -> None:
    with pytest.raises(InvalidRequest):
        decode_query("contact_id=é".encode(), ListParams)


@pytest.mark.parametrize(("query", "param"), [
    (b"limt=5", "limt"),
    (b"limit=0", "limit"),
    (b"limit=101", "limit"),
    (b"limit=abc", "limit"),
    (b"limit=", "limit"),
    (b"limit=" + b"9" * 50, "limit"),
    (b"muted=1", "muted"),
    (b"muted=", "muted"),
    (b"starting_after=short", "starting_after"),
    (b"ending_before=0000000000000000%0A", "ending_before"),
    (b"contact_id=", "contact_id"),
])
def test_bad_query_attributes_are_400_naming_them(query, param) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_query(query, ListParams)
    assert info.value.param == param


def test_any_query_attribute_on_a_call_without_attributes_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_query(b"expand=contact", NoAttributes)
    assert info.value.param == "expand"
