"""Review 39e: the HTTP API and the web page as a hostile user and a hostile network.

Attacked and held (probed through ``TestClient``, raw ASGI calls and a real ``litpulse
serve``; most already tests of sessions 31-38): lone surrogates (``"\\ud800"`` in a JSON
body) are 422, never a 500 from the database's encoder; overlong and invalid UTF-8 in
query strings and paths (``%C0%AE``, ``%ED%A0%80``, ``%FF``) decode to U+FFFD and are
400/404/422; NUL in every JSON text field of ``POST``/``PATCH /alerts`` and ``POST
/feedback`` is 400 on PostgreSQL; a 5,000-digit JSON number and 3,000 nested objects are
400 ("error parsing the body"); ids past 2**31 - 1 are 422; a 100 kB request line is
uvicorn's 400 (h11's 16 KiB limit; no memory grows); ``OPTIONS``/``PUT``/``TRACE`` are
405 (no CORS headers); a form or missing content type is 422; a PostgreSQL server that is
down or a database that does not exist answers every route 503 "the database is
unavailable" (no SQL, no traceback) and ``litpulse serve`` says so in one line; the page
and the models page build their DOM with ``textContent`` only (no ``innerHTML``).

X1 **A client that trickles its body, or announces one and sends nothing, holds its
   request for ever**: ``ApiGuard`` read the body with no deadline. Reproduced on a real
   ``litpulse serve``: ``POST /feedback`` with ``Content-Length: 100`` and one byte sent got
   no answer in 40 s (nor ever: uvicorn has no body timeout), the connection held open;
   a few thousand such clients hold the server's sockets. Fixed: the whole body must
   arrive within ``apiguard.BODY_TIMEOUT_S`` (30 s) of the request, else 408 with
   ``Connection: close``.

X2 **An IPv6 client passes the rate limit by changing its address within its /64**: the
   bucket was keyed by the full address, and every IPv6 subscriber holds at least a /64
   (2**64 addresses, chosen freely: privacy addresses change by themselves). Reproduced
   through the guard: with a burst of 2, ``2001:db8:1:2::1``, ``::2``, ``::3`` … each got
   a full bucket. An IPv4 client seen as ``::ffff:203.0.113.5`` (a dual-stack socket) had
   a bucket apart from ``203.0.113.5``. Fixed: an IPv6 client is keyed by its /64, an
   IPv4-mapped one by its IPv4 address.

X3 **Every database connection in use is answered 500, not 503**: SQLAlchemy's pool
   (5 + 10 connections) makes a request wait 30 s for one, then raises
   ``sqlalchemy.exc.TimeoutError``, which no handler mapped (the guard's "internal
   error"). Reproduced: a nightly holding SQLite's write lock while 16 saved searches are
   posted (each waits out the 60 s busy timeout holding its connection) turns the next
   ``GET /status`` into a 500 after 30 s; the same with the pool's connections checked out
   on both stores. A PostgreSQL server that hangs (a partitioned network) does the same.
   Fixed: 503 "every database connection is busy", with ``Retry-After``.

X4 **A PostgreSQL server that accepts connections and never answers (hung, or a proxy
   in front of a partitioned one) holds every request for ever**: the engine was made
   without ``connect_timeout``, and libpq's default waits without end. Reproduced: a TCP
   listener that never speaks as ``LITPULSE_DATABASE_URL``: ``GET /status`` had no answer
   after 25 s (nor ever); each such request holds a worker thread, 40 of them the whole
   server. Fixed: PostgreSQL engines connect with ``connect_timeout``
   (``db.PG_CONNECT_TIMEOUT_S``, 10 s; one the URL names is kept): then 503 "the database
   is unavailable".

X5 **A write waiting out a writer's lock was told "the database is unavailable"**: the
   handler of ``OperationalError`` took SQLite's ``database is locked`` (the nightly
   holding the write lock past the 60 s busy timeout) for a database that is down, with
   no ``Retry-After``; the CLI already says "busy" for the same error
   (``db.lock_waited_out``). Reproduced: ``POST /alerts`` while another connection held
   ``BEGIN IMMEDIATE``: 503 "unavailable" after 60 s. Fixed: 503 "the database is busy:
   another writer holds it" with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from litpulse.app import apiguard
from litpulse.app.api import create_app
from litpulse.app.tokens import create_token
from litpulse.core import db
from litpulse.core.settings import Settings


async def _call(
    app: Any,
    scope: dict[str, Any],
    messages: list[dict[str, Any]],
    gap: float = 0.0,
    deadline: float = 5.0,
) -> list[dict[str, Any]]:
    """What ``app`` sends for one request whose body arrives as ``messages``, ``gap``
    seconds apart; a client that has sent them all then sends nothing more."""
    sent: list[dict[str, Any]] = []
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            if gap:
                await asyncio.sleep(gap)
            return queue.pop(0)
        await asyncio.sleep(3600)  # a client that never sends the rest
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout=deadline)
    except TimeoutError:
        pass  # the answer so far (none: the request is still held)
    return sent


def _scope(
    method: str,
    path: str,
    client: str = "203.0.113.9",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "headers": headers or [],
        "client": (client, 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


def _status(sent: list[dict[str, Any]]) -> int | None:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    return starts[0]["status"] if starts else None


def test_x1_a_body_that_does_not_arrive_in_time_is_a_408(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apiguard, "BODY_TIMEOUT_S", 0.5, raising=False)
    app = create_app(sqlite_settings)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    # announced, one byte sent, then nothing
    sent = asyncio.run(
        _call(
            app,
            _scope("POST", "/feedback", headers=headers),
            [{"type": "http.request", "body": b"{", "more_body": True}],
        )
    )
    assert _status(sent) == 408
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert (b"connection", b"close") in [(bytes(k), bytes(v)) for k, v in start["headers"]]
    # trickled: each byte in time, the whole body not
    trickle = [{"type": "http.request", "body": b" ", "more_body": True}] * 20
    sent = asyncio.run(
        _call(app, _scope("POST", "/feedback", client="203.0.113.10"), trickle, gap=0.1)
    )
    assert _status(sent) == 408
    # held: a body that arrives whole in time reaches the route (401: no token sent)
    body = b'{"query": "heart", "pmid": 1, "relevant": true}'
    sent = asyncio.run(
        _call(
            app,
            _scope(
                "POST",
                "/feedback",
                client="203.0.113.11",
                headers=[(b"content-type", b"application/json")],
            ),
            [{"type": "http.request", "body": body, "more_body": False}],
        )
    )
    assert _status(sent) in (401, 403)


def test_x2_an_ipv6_client_is_one_client_across_its_64(sqlite_settings: Settings) -> None:
    app = create_app(sqlite_settings.replace(api_rate_per_second=0.1, api_rate_burst=2))

    def get(client: str) -> int | None:
        return _status(
            asyncio.run(
                _call(
                    app,
                    _scope("GET", "/", client=client),
                    [{"type": "http.request", "body": b"", "more_body": False}],
                )
            )
        )

    assert [get(f"2001:db8:1:2::{n}") for n in (1, 2, 3, 4)] == [200, 200, 429, 429]
    assert get("2001:db8:1:2:abcd:ef01:2345:6789") == 429
    assert get("2001:db8:1:3::1") == 200  # another /64: another client
    assert [get("203.0.113.5"), get("::ffff:203.0.113.5"), get("203.0.113.5")] == [200, 200, 429]
    assert get("203.0.113.6") == 200  # IPv4 clients stay one address each


def test_x3_every_connection_in_use_is_a_503_with_retry_after(settings: Settings) -> None:
    engine = db.connect(settings)
    pool: Any = engine.pool
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/status").status_code == 200
        waited = pool._timeout
        pool._timeout = 0.3  # SQLAlchemy's 30 s, shortened
        held = [engine.connect() for _ in range(pool.size() + pool._max_overflow)]
        try:
            for path in ("/status", "/alerts", "/articles/1"):
                got = client.get(path)
                assert got.status_code == 503, (path, got.status_code, got.text)
                assert int(got.headers["retry-after"]) >= 1
                assert "QueuePool" not in got.text and "sqlalche" not in got.text
        finally:
            for conn in held:
                conn.close()
            pool._timeout = waited
        assert client.get("/status").status_code == 200


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung database)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_x4_a_database_that_never_answers_is_a_503_in_bounded_time(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PG_CONNECT_TIMEOUT_S", 2, raising=False)  # libpq's least
    with _silent_server() as port:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/litpulse"
        settings = Settings.from_env({}, home=tmp_path / "home", database_url=url)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        answers: list[Any] = []
        asked = threading.Thread(target=lambda: answers.append(client.get("/status")),
                                 daemon=True)  # fmt: skip
        asked.start()
        asked.join(12)
        try:
            assert answers, "no answer in 12 s"
            assert answers[0].status_code == 503, answers[0].text
            assert answers[0].json()["detail"] == "the database is unavailable; try again shortly"
        finally:
            engine = db._ENGINES.pop(url, None)
            if engine is not None:
                engine.dispose()


def test_x5_a_write_behind_a_writers_lock_is_busy_with_retry_after(
    sqlite_settings: Settings,
) -> None:
    engine = db.connect(sqlite_settings)
    token = create_token(sqlite_settings, "alice").token

    def short_wait(dbapi_conn: Any, _record: Any) -> None:  # SQLite's 60 s, shortened
        dbapi_conn.execute("PRAGMA busy_timeout = 200")

    event.listen(engine, "connect", short_wait)
    engine.dispose()  # the pool's next connections wait 0.2 s
    path = sqlite_settings.effective_database_url.removeprefix("sqlite:///")
    try:
        with TestClient(create_app(sqlite_settings), raise_server_exceptions=False) as client:
            nightly = sqlite3.connect(path, isolation_level=None)
            nightly.execute("BEGIN IMMEDIATE")  # a writer holding the write lock
            try:
                got = client.post("/alerts", json={"name": "x", "query": "heart"},
                                  headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            finally:
                nightly.execute("ROLLBACK")
                nightly.close()
            assert got.status_code == 503, got.text
            assert "busy" in got.json()["detail"], got.text
            assert int(got.headers["retry-after"]) >= 1
    finally:
        event.remove(engine, "connect", short_wait)
