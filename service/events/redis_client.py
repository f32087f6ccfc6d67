"""How the service's Redis clients are made (the relay's, the status probes', the consumer's), and
the plain client of the node that serves a stream key.

Every call is bounded by `REDIS_TIMEOUT` (connect and socket), and redis-py's own retries are
off: the relay owns its backoff (docs/api.md §6.2), and `/ready` wants a quick answer.

With REDIS_CLUSTER=true, REDIS_URL names any node of a Redis Cluster and the client is redis-py's
cluster client, which routes each single-key command to the master of its key's slot. The relay
sends its batches as one pre-packed write (publisher.py), below the cluster client's routing, so
it talks to that master through a plain client of its own (`StreamNodes`), asked again from the
cluster's slot map after any failure (a failover, a slot moved). Every command of the service
names one key (a partition's stream, or its dead-letter stream, which shares its hash tag), so
none is refused with CROSSSLOT.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from service.settings import Settings

Client = aioredis.Redis | RedisCluster
# What a Redis call raises when the server or the cluster fails (the cluster client's slot-map errors
# are not RedisErrors).
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)

CLIENT_NAME = "conversations-service"


def _options(seconds: float) -> dict[str, object]:
    return {"socket_timeout": seconds, "socket_connect_timeout": seconds, "decode_responses": True,
            "client_name": CLIENT_NAME}


def create_redis(settings: Settings, *, timeout: float | None = None, max_connections: int | None = None) -> Client:
    """A client whose pool holds at most `max_connections` (redis-py's default if None; per node in a
    cluster); a command past that fails at once instead of opening another connection."""
    seconds = settings.redis_timeout if timeout is None else timeout
    if settings.redis_cluster:
        # One attempt per call, as for a single server; MOVED and ASK are still followed.
        return RedisCluster.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0),
                                     max_connections=max_connections or 2**31, **_options(seconds))
    return aioredis.Redis.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0), max_connections=max_connections,
                                   **_options(seconds))


class StreamNodes:
    """The plain client for the node that serves a key: the process's client itself on a single server;
    in a cluster, a client of the master that owns the key's slot, one per master, made on first use."""

    def __init__(self, client: Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._nodes: dict[tuple[str, int], aioredis.Redis] = {}

    @property
    def is_cluster(self) -> bool:
        return isinstance(self._client, RedisCluster)

    async def client_for(self, key: str) -> aioredis.Redis:
        if not isinstance(self._client, RedisCluster):
            return self._client
        await self._client.initialize()  # reads the slot map once (again after `refresh`)
        node = self._client.get_node_from_key(key)
        address = (node.host, node.port)
        client = self._nodes.get(address)
        if client is None:
            client = self._nodes[address] = aioredis.Redis(
                host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **_options(self._timeout))
        return client

    async def refresh(self) -> None:
        """After a failure: read the cluster's slot map again before the next `client_for`."""
        if isinstance(self._client, RedisCluster):
            await self._client.initialize()
            await self._client.nodes_manager.initialize()  # asks the nodes it knows for the slot map anew

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()
