from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from support import redis_server
from support.brokers import MakeBroker
from support.certificates import Certificates, make_certificates
from support.unavailable import in_ci

from streamkit.broadcast import MemoryBroker, RedisBroker

# Under CI the property tests try the same examples every run: a red run is then the code's,
# never the draw's. Run locally, they draw new ones each time, and find what CI would not.
settings.register_profile("ci", derandomize=True)
if in_ci():
    settings.load_profile("ci")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_server.RedisServer]:
    """A redis-server for the module; skips, saying why, where it cannot be found (under CI,
    fails)."""
    with redis_server.running(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def make_broker(request: pytest.FixtureRequest) -> MakeBroker:
    """Makes a broker of each kind; the Redis ones get a key prefix of their own."""
    if request.param == "memory":
        return MemoryBroker
    server: redis_server.RedisServer = request.getfixturevalue("redis")
    prefix = f"test:{uuid.uuid4().hex}:"

    def make(**options: Any) -> RedisBroker:
        return RedisBroker(server.url, key_prefix=prefix, **options)

    return make


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""
    return make_certificates(tmp_path_factory.mktemp("certificates"))
