"""Where the tests' databases come from: containers with Docker, else the URLs or local servers."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from tests import backends


def test_an_explicit_url_wins_even_when_docker_is_reachable():
    env = {"TEST_DATABASE_URL": "postgresql://x@h/db"}
    assert backends.choose(env, "TEST_DATABASE_URL", "local", docker_reachable=True) == "postgresql://x@h/db"
    assert backends.choose(env, "TEST_DATABASE_URL", "local", docker_reachable=False) == "postgresql://x@h/db"


def test_without_a_url_docker_means_a_container():
    assert backends.choose({}, "TEST_REDIS_URL", "local", docker_reachable=True) is None


def test_without_a_url_or_docker_the_local_server_is_used():
    assert backends.choose({}, "TEST_DATABASE_URL", backends.LOCAL_DATABASE_URL, docker_reachable=False) == (
        "postgresql://postgres@127.0.0.1:5432/postgres")
    assert backends.choose({"TEST_REDIS_URL": ""}, "TEST_REDIS_URL", backends.LOCAL_REDIS_URL,
                           docker_reachable=False) == "redis://127.0.0.1:6379/0"


def test_given_both_urls_no_container_is_started():
    env = {"TEST_DATABASE_URL": "postgresql://a@b/c", "TEST_REDIS_URL": "redis://d:1/0"}
    with ExitStack() as stack:
        assert backends.resolve(stack, env) == ("postgresql://a@b/c", "redis://d:1/0")


def test_test_backends_containers_is_the_only_mode_besides_automatic() -> None:
    assert backends.containers_required({"TEST_BACKENDS": "containers"}) is True
    assert backends.containers_required({}) is False
    assert backends.containers_required({"TEST_BACKENDS": ""}) is False
    with pytest.raises(ValueError, match="TEST_BACKENDS"):
        backends.containers_required({"TEST_BACKENDS": "local"})


def test_docker_probe_answers_without_raising():
    assert backends.docker_engine_reachable() in (True, False)
