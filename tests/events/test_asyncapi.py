"""docs/asyncapi.yaml describes the stream the code writes (docs/api.md §6), field for field."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.model import EVENT_TYPES, STREAM_FIELDS, Conversation, ConversationEvent, PreviousAttributes
from service.partitions import partition_of, stream_keys

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def load() -> dict:
    return yaml.safe_load(DOCUMENT.read_text())


def entry_fields(schemas: dict, name: str) -> set[str]:
    fields: set[str] = set()
    for part in schemas[name]["allOf"]:
        target = schemas[part["$ref"].rsplit("/", 1)[1]] if "$ref" in part else part
        fields |= set(target.get("properties", {}))
    return fields


def test_the_document_is_asyncapi_3_with_one_channel_and_three_messages():
    document = load()
    assert document["asyncapi"].startswith("3.")
    [channel] = document["channels"].values()
    assert channel["address"] == "conversations:events"
    names = [document["components"]["messages"][key]["name"] for key in document["components"]["messages"]]
    assert sorted(names) == sorted(EVENT_TYPES)


def test_each_message_lists_exactly_the_fields_the_relay_writes():
    schemas = load()["components"]["schemas"]
    common = set(STREAM_FIELDS) - {"previous_attributes"}
    assert entry_fields(schemas, "ConversationCreatedEntry") == common
    assert entry_fields(schemas, "ConversationDeletedEntry") == common
    assert entry_fields(schemas, "ConversationUpdatedEntry") == set(STREAM_FIELDS)
    assert set(ConversationEvent.__struct_fields__) == set(STREAM_FIELDS)


def test_the_payload_schemas_match_the_code_structs():
    schemas = load()["components"]["schemas"]
    assert list(schemas["Conversation"]["properties"]) == list(Conversation.__struct_fields__)
    assert schemas["Conversation"]["required"] == list(Conversation.__struct_fields__)
    assert list(schemas["PreviousAttributes"]["properties"]) == list(PreviousAttributes.__struct_fields__)


def test_the_document_states_the_guarantees_and_the_dedupe_rule():
    description = load()["info"]["description"]
    for phrase in ("At least once", "Ordered per conversation", "sequence", "Deduplication rule",
                   "never drops unread events"):
        assert phrase in description


def test_the_published_contract_gives_the_partition_and_keys_the_code_computes():
    document = load()
    [channel] = document["channels"].values()
    for example in channel["x-partitions"]["examples"]:
        if "conversationId" in example:
            assert partition_of(example["conversationId"], example["partitions"]) == example["partition"]
        else:
            assert stream_keys(channel["address"], example["partitions"]) == example["keys"]
    api = (DOCUMENT.parent / "api.md").read_text()
    assert "`conversations:events:{0.1}`, `:{1.3}`, `:{2.1}`, `:{3.3}`" in api
    assert stream_keys("conversations:events", 4) == [f"conversations:events:{{{tag}}}"
                                                      for tag in ("0.1", "1.3", "2.1", "3.3")]
