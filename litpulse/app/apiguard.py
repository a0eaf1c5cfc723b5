"""ASGI middleware in front of the API: security headers, a request-body limit and a
per-client rate limit.

* **Headers.** Every answer says ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and a
  ``Content-Security-Policy`` that allows scripts, styles and requests from the
  server itself only (no inline code) and no framing.
* **Bodies.** A body larger than ``max_body_bytes`` is answered 413 before it is read:
  on its ``Content-Length`` alone when announced, else as soon as the chunks read so
  far pass the limit. The app gets the body whole, already read. The whole body must
  arrive within :data:`BODY_TIMEOUT_S` of the request, else 408 (a client trickling it,
  or announcing one and sending nothing, would hold its request and socket for ever:
  uvicorn has no body timeout).
* **HEAD.** A ``HEAD`` request is answered as its ``GET`` would be, headers only (RFC 9110
  9.3.2: a monitor's or ``curl -I``'s check; the routes declare GET alone, and FastAPI
  answered 405 to HEAD on every one).
* **Rate.** One token bucket per client address: ``burst`` requests at once, then
  ``rate`` per second; beyond that 429 with ``Retry-After`` (whole seconds). An IPv6
  client is its /64 (each subscriber holds at least one and may use any of its 2**64
  addresses), an IPv4-mapped one (``::ffff:a.b.c.d``) its IPv4 address
  (:func:`client_key`). The least recently seen clients are forgotten beyond
  ``max_clients``. GETs under the ``unmetered`` path prefixes (the page's static files)
  take no token.

Example:
    >>> app = ApiGuard(app, max_body_bytes=65536, rate=5.0, burst=20)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from litpulse.core.errors import ConfigError

__all__ = ["ApiGuard", "TokenBuckets", "client_key", "PAGE_CSP", "SECURITY_HEADERS"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The page and the API: code, styles and requests from this server only, no framing.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: FastAPI's /docs and /redoc load their code from a CDN: no framing is all they get.
DOCS_CSP = "frame-ancestors 'none'"
DOCS_PATHS = ("/docs", "/redoc")

#: Seconds a request's whole body may take to arrive (64 KiB in 30 s: 2 KiB/s).
BODY_TIMEOUT_S = 30.0

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)


class TokenBuckets:
    """Token buckets by client key; thread-safe.

    Args:
        rate: Tokens added per second.
        burst: Size of a bucket (a new client starts full).
        clock: Monotonic seconds.
        max_clients: Buckets kept; the least recently used go first.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10000) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ConfigError(f"rate and burst must be positive, got {rate!r} and {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when granted, else seconds until one is there."""
        with self._lock:
            now = self._clock()
            tokens, stamp = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - stamp) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return wait


def client_key(host: str) -> str:
    """The rate limit's key for a client address: an IPv6 address's /64 network, an
    IPv4-mapped IPv6 address's IPv4 address, anything else as it is.

    >>> client_key("2001:db8:1:2::7"), client_key("::ffff:203.0.113.5")
    ('2001:db8:1:2::/64', '203.0.113.5')
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:  # not an address (a Unix socket's peer, a test client's name)
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(addr) >> 64 << 64)}/64"
    return str(addr)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return None


class ApiGuard:
    """The middleware (see the module docstring).

    Args:
        app: The ASGI app behind it.
        max_body_bytes: Largest body read.
        rate: Requests/s per client.
        burst: Requests a client may make at once.
        clock: Monotonic seconds (tests).
        unmetered: Path prefixes whose GETs take no token (the page's own static files:
            loading the page must not spend the requests its searches need).
        body_timeout_s: Seconds the whole body may take (default :data:`BODY_TIMEOUT_S`).
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic,
                 unmetered: tuple[str, ...] = (), body_timeout_s: float | None = None) -> None:
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        self.app = app
        self.unmetered = tuple(unmetered)
        self.max_body_bytes = int(max_body_bytes)
        self.buckets = TokenBuckets(rate, burst, clock=clock)
        self.body_timeout_s = BODY_TIMEOUT_S if body_timeout_s is None else body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(scope, send)
        if scope.get("method") == "HEAD":
            scope = {**scope, "method": "GET"}
            send = _headers_only(send)
        client = (scope.get("client") or ("unknown", 0))[0]
        path = str(scope.get("path", ""))
        metered = not (
            self.unmetered and scope.get("method") == "GET" and path.startswith(self.unmetered)
        )
        wait = self.buckets.take(client_key(str(client))) if metered else 0.0
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            await _reply(send, 429, f"too many requests from this client; retry in {seconds} s",
                         [(b"retry-after", str(seconds).encode())])
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError(declared)
            except ValueError:
                await _reply(send, 400, "invalid Content-Length header")
                return
            if length > self.max_body_bytes:
                await self._too_large(send)
                return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except TimeoutError:
            await _reply(
                send,
                408,
                f"request body not received within {self.body_timeout_s:g} s",
                [(b"connection", b"close")],
            )
            return
        if body is None:  # the client went away
            return
        if len(body) > self.max_body_bytes:
            await self._too_large(send)
            return
        await self._answer(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The request's body; ``None`` when the client went away, and as soon as the
        chunks read pass ``max_body_bytes`` what was read (longer than allowed)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_body_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's answer; an exception escaping it is logged and, when no answer was
        started, answered with a JSON 500 here, so that it too carries the security headers
        (Starlette's own 500 is sent outside this guard, without them)."""
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            logger.exception("unhandled error answering %s %s", scope.get("method"),
                             scope.get("path"))  # fmt: skip
            if not started:
                await _reply(send, 500, "internal error (logged by the server)")

    async def _too_large(self, send: Send) -> None:
        await _reply(send, 413, f"request body larger than {self.max_body_bytes} bytes",
                     [(b"connection", b"close")])

    @staticmethod
    def _with_headers(scope: Scope, send: Send) -> Send:
        path = str(scope.get("path", ""))
        docs = path.startswith(DOCS_PATHS)
        extra = [*SECURITY_HEADERS, ("content-security-policy", DOCS_CSP if docs else PAGE_CSP)]

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {bytes(k).lower() for k, _ in headers}
                for name, value in extra:
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        return sender


def _headers_only(send: Send) -> Send:
    """``send`` for a HEAD request: the GET's status and headers (its ``Content-Length``
    included), no body."""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return  # the body's next chunk: nothing of it goes out
            message = {**message, "body": b""}
        await send(message)

    return sender


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving the body read already, then whatever the client sends next."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, status: int, detail: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})
