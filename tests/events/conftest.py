"""The event suite runs once per Redis backend (tests/backends.py): both publishing paths, every run."""

from __future__ import annotations

import msgspec
import pytest

from service.settings import Settings
from tests.backends import RedisBackend


@pytest.fixture
def settings(settings: Settings, redis_backend: RedisBackend) -> Settings:
    return msgspec.structs.replace(settings, redis_url=redis_backend.url)
