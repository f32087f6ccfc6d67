"""docs/api.md §7: configuration by environment variable only, with the contract's defaults."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError, load_settings


def test_defaults_are_the_contracts():
    settings = load_settings({})
    assert settings.database_url == "postgresql://postgres@localhost:5432/conversations"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.events_stream == "conversations:events"
    assert settings.relay_url == settings.database_url
    assert settings.events_maxlen == 1_000_000
    assert settings.events_hard_maxlen == 10_000_000
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert settings.log_level == "info"


def test_every_contract_variable_is_read():
    settings = load_settings({
        "DATABASE_URL": "postgresql://u@db:5432/x", "REDIS_URL": "redis://r:6379/2", "EVENTS_STREAM": "s",
        "RELAY_DATABASE_URL": "postgresql://u@direct:5432/x", "EVENTS_MAXLEN": "10",
        "EVENTS_HARD_MAXLEN": "20", "HOST": "127.0.0.1", "PORT": "9000", "LOG_LEVEL": "WARNING",
    })
    assert settings == Settings(database_url="postgresql://u@db:5432/x", redis_url="redis://r:6379/2",
                                events_stream="s", relay_database_url="postgresql://u@direct:5432/x",
                                events_maxlen=10, events_hard_maxlen=20, host="127.0.0.1", port=9000,
                                log_level="warning")
    assert settings.relay_url == "postgresql://u@direct:5432/x"


@pytest.mark.parametrize(("variable", "value"), [
    ("PORT", "eighty"), ("PORT", "70000"), ("EVENTS_MAXLEN", "0"), ("EVENTS_MAXLEN", "-5"),
    ("LOG_LEVEL", "loud"), ("DATABASE_URL", ""), ("DB_ACQUIRE_TIMEOUT", "0"), ("WORKERS", "two"),
])
def test_a_bad_value_is_refused_naming_its_variable(variable: str, value: str):
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_the_hard_maximum_cannot_be_below_the_retention_length():
    with pytest.raises(SettingsError, match="EVENTS_HARD_MAXLEN"):
        load_settings({"EVENTS_MAXLEN": "100", "EVENTS_HARD_MAXLEN": "10"})


def test_durability_settings_default_to_the_development_setup():
    settings = load_settings({})
    assert settings.events_require_durable is False
    assert settings.events_waitaof_replicas == 0
    assert settings.db_max_connection_lifetime == 3600.0


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("1", True), ("YES", True), ("on", True),
                                               ("false", False), ("0", False), ("no", False), ("Off", False)])
def test_events_require_durable_reads_the_usual_boolean_spellings(raw: str, expected: bool):
    assert load_settings({"EVENTS_REQUIRE_DURABLE": raw}).events_require_durable is expected


@pytest.mark.parametrize(("variable", "value"), [
    ("EVENTS_REQUIRE_DURABLE", "maybe"), ("EVENTS_WAITAOF_REPLICAS", "-1"), ("EVENTS_WAITAOF_REPLICAS", "one"),
    ("DB_MAX_CONNECTION_LIFETIME", "0"),
])
def test_a_bad_durability_or_lifetime_value_is_refused_naming_its_variable(variable: str, value: str):
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_the_waitaof_replica_count_is_read():
    assert load_settings({"EVENTS_WAITAOF_REPLICAS": "2"}).events_waitaof_replicas == 2


def test_every_bound_of_the_front_door_and_of_keys_and_tokens_is_a_variable_with_its_documented_default():
    defaults = load_settings({})
    assert (defaults.http_max_url_bytes, defaults.http_max_header_bytes) == (8192, 16384)
    assert defaults.http_max_headers == 100
    assert (defaults.http_header_timeout, defaults.http_body_timeout, defaults.http_keep_alive_timeout) == (10, 30, 5)
    assert (defaults.http_max_requests, defaults.http_max_connections) == (256, 1000)
    assert (defaults.idempotency_keys_per_second, defaults.idempotency_purge_seconds) == (50, 60)
    assert defaults.token_cache_size == 10_000
    settings = load_settings({
        "HTTP_MAX_URL_BYTES": "4096", "HTTP_MAX_HEADER_BYTES": "8192", "HTTP_MAX_HEADERS": "50",
        "HTTP_HEADER_TIMEOUT": "2.5", "HTTP_BODY_TIMEOUT": "7", "HTTP_KEEP_ALIVE_TIMEOUT": "1",
        "HTTP_MAX_REQUESTS": "64", "HTTP_MAX_CONNECTIONS": "128", "IDEMPOTENCY_KEYS_PER_SECOND": "5",
        "IDEMPOTENCY_PURGE_SECONDS": "30", "TOKEN_CACHE_SIZE": "100",
    })
    assert (settings.http_max_url_bytes, settings.http_max_header_bytes, settings.http_max_headers) == (4096, 8192, 50)
    assert (settings.http_header_timeout, settings.http_body_timeout, settings.http_keep_alive_timeout) == (2.5, 7, 1)
    assert (settings.http_max_requests, settings.http_max_connections) == (64, 128)
    assert (settings.idempotency_keys_per_second, settings.idempotency_purge_seconds) == (5, 30)
    assert settings.token_cache_size == 100


@pytest.mark.parametrize("variable", ["HTTP_MAX_URL_BYTES", "HTTP_MAX_HEADERS", "HTTP_MAX_REQUESTS",
                                      "HTTP_HEADER_TIMEOUT", "IDEMPOTENCY_KEYS_PER_SECOND", "TOKEN_CACHE_SIZE"])
def test_a_bound_of_zero_is_refused_naming_its_variable(variable: str):
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: "0"})
