"""Drive an ASGI app in the test's own event loop: its lifespan, and an httpx client on it.

Litestar's AsyncTestClient runs the app through a blocking portal on another thread (and event
loop), which serialises concurrent requests; httpx's ASGITransport calls the app in this loop,
so concurrent requests really are concurrent, and the app's pool lives where the test does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


class Lifespan:
    """`async with Lifespan(app):` runs the app's startup, then its shutdown on exit."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> dict[str, Any]:
        return await self._incoming.get()

    async def _send(self, message: dict[str, Any]) -> None:
        await self._outgoing.put(message)

    async def _expect(self, done: str, timeout: float = 30) -> None:
        message = await asyncio.wait_for(self._outgoing.get(), timeout)
        if message["type"] != done:
            raise RuntimeError(f"lifespan failed: {message}")

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._receive, self._send))
        await self._incoming.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._incoming.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        assert self._task is not None
        await asyncio.wait_for(self._task, 30)


def client_for(app: Any, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                             headers=headers, timeout=30)
