"""ASGI middleware: limits on bodies and on requests in flight, per-request metrics and
drain behaviour."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServerMetrics

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
"""Answered whatever the load: a busy server must not look dead to the kubelet."""


async def refuse(
    send: Send, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """A JSON error answer that also closes the connection (the request was not read)."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimits:
    """Refuse a body over `max_bytes` (413) or not sent within `timeout` seconds (408), before
    any handler parses it.

    The declared Content-Length is checked first; the body is counted as it arrives, so an
    oversized one is refused at the chunk that crosses the limit, never buffered past it. One
    deadline covers the whole body: a client trickling a byte at a time cannot hold a request
    (and its buffer) open for longer than a client that stalls. The body, at most `max_bytes`,
    is then replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._too_large(send)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await refuse(
                send,
                408,
                f"the request body was not received within {self.timeout:g} s "
                f"({size} bytes arrived); send it at once",
            )
            return
        buffered: Message | None = {"type": "http.request", "body": b"".join(chunks)}

        async def replay() -> Message:
            nonlocal buffered
            if buffered is not None:
                message, buffered = buffered, None
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        await refuse(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")


class ConcurrencyLimit:
    """Answer 503 at once, with Retry-After, past `limit` API requests in flight.

    Requests beyond what the model can work through only queue, holding their bodies in
    memory; shedding them lets the client (or the Service's next pod) try again. Probes and
    metrics are never counted nor refused.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await refuse(
                send,
                503,
                f"the server is busy: {self.in_flight} requests in flight, the limit is "
                f"{self.limit}; retry shortly",
                ((b"retry-after", b"1"),),
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class ObserveRequests:
    """Count and time every request by route template; close connections while draining.

    Kubernetes balances per connection, so a client with a kept-alive connection would keep
    reaching a pod that is shutting down; answering with `Connection: close` while draining
    sends its next request through the Service to a pod that stays.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, draining: Callable[[], bool]) -> None:
        self.app = app
        self.metrics = metrics
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.draining():
                    message["headers"] = [
                        *[
                            (k, v)
                            for k, v in message.get("headers", [])
                            if k.lower() != b"connection"
                        ],
                        (b"connection", b"close"),
                    ]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                template, scope["method"], status, time.perf_counter() - start
            )
