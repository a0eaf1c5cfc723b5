"""The API's defences: tokens for writes, per-expert and per-client limits, body limit,
no echo of bodies, security headers and a page that runs under a strict CSP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.errors import NotFoundError
from litpulse.core.schema import feedback, feedback_log
from litpulse.core.settings import Settings
from tests.litpulse.app.apistore import UNLIMITED, clone_store
from tests.ranking.corpus import load_corpus, real_corpus

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import (  # noqa: E402
    TokenState,
    any_active_token,
    create_token,
    list_tokens,
    revoke_token,
    verify_token,
)
from retrain.feedback import FeedbackLimitError, FeedbackSource, record_feedback  # noqa: E402

BODY = {"query": "malaria vaccine", "pmid": 201, "relevant": True}


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return real_corpus(tmp_path_factory)


@pytest.fixture
def store(real: Settings, tmp_path: Path) -> Settings:
    """A private copy of the real corpus, with limits out of the way."""
    return clone_store(real, tmp_path / "home", **UNLIMITED)


@pytest.fixture
def client(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def feedback_rows(settings: Settings) -> list[Any]:
    with db.connect(settings).connect() as conn:
        return list(conn.execute(select(feedback).order_by(feedback.c.id)).all())


def log_rows(settings: Settings) -> list[Any]:
    with db.connect(settings).connect() as conn:
        return list(conn.execute(select(feedback_log).order_by(feedback_log.c.id)).all())


# ------------------------------------------------------------------------ authentication


def test_without_any_token_the_server_is_read_only(client: TestClient, store: Settings) -> None:
    # what the issue did: anonymous posts under names the client chose
    for i in range(3):
        r = client.post("/feedback", json={**BODY, "user": f"expert{i}"})
        assert r.status_code == 403, r.text
        assert "read-only" in r.json()["detail"]
        assert "litpulse tokens create --expert" in r.json()["detail"]
    assert feedback_rows(store) == []
    assert client.get("/search", params={"q": "malaria"}).status_code == 200


def test_feedback_needs_a_valid_token_and_records_its_expert(
    client: TestClient, store: Settings
) -> None:
    alice = create_token(store, "alice", created_by="test")
    bob = create_token(store, "bob")
    r = client.post("/feedback", json=BODY)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]
    for wrong in ("lp_" + "x" * 43, alice.token[:-1], "", "a" * 5000):
        r = client.post("/feedback", json=BODY, headers=bearer(wrong))
        assert r.status_code == 401, (wrong[:10], r.text)
    r = client.post("/feedback", json=BODY, headers={"Authorization": f"Basic {alice.token}"})
    assert r.status_code == 401
    # a client-supplied name must be the token's expert
    r = client.post("/feedback", json={**BODY, "user": "mallory"}, headers=bearer(alice.token))
    assert r.status_code == 403 and "alice" in r.json()["detail"]

    r = client.post("/feedback", json=BODY, headers=bearer(alice.token))
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["expert"] == "alice" and got["pmid"] == 201 and got["relevant"] is True
    r = client.post("/feedback", json={**BODY, "relevant": False, "user": "alice"},
                    headers=bearer(alice.token))
    assert r.status_code == 201 and r.json()["id"] == got["id"]  # a change of mind

    revoke_token(store, bob.info.id)
    r = client.post("/feedback", json=BODY, headers=bearer(bob.token))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]

    rows = feedback_rows(store)
    assert [(x.user, x.pmid, x.relevant) for x in rows] == [("alice", 201, False)]
    log = log_rows(store)
    assert [(x.expert, x.source, x.token_id, x.relevant) for x in log] == [
        ("alice", "api", alice.info.id, True), ("alice", "api", alice.info.id, False),
    ]
    assert all(x.feedback_id == rows[0].id and x.created_at is not None for x in log)


def test_tokens_cli_prints_once_stores_a_hash_and_revokes(
    store: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(store.home))
    assert main(["tokens", "create", "--expert", "carol"]) == 0
    out = capsys.readouterr().out
    found = re.findall(r"lp_[A-Za-z0-9_-]{40,}", out)
    assert len(found) == 1 and "carol" in out
    token = found[0]
    dump = "\n".join(sqlite3.connect(store.home / "litpulse.db").iterdump())
    assert token not in dump and token[3:] not in dump
    assert hashlib.sha256(token.encode()).hexdigest() in dump

    assert main(["tokens", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["expert"], t["state"]) for t in listed] == [("carol", "active")]
    assert token not in json.dumps(listed)
    assert main(["tokens", "list"]) == 0
    assert "carol" in capsys.readouterr().out

    app = create_app(store)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/feedback", json=BODY, headers=bearer(token)).status_code == 201
        assert main(["tokens", "revoke", str(listed[0]["id"])]) == 0
        assert "revoked" in capsys.readouterr().out
        assert c.post("/feedback", json=BODY, headers=bearer(token)).status_code == 401
    assert [t.state for t in list_tokens(store)] == ["revoked"]
    assert main(["tokens", "revoke", "999"]) == 1  # unknown id: a message, not a traceback
    assert main(["tokens", "create", "--expert", "  "]) == 2

    # the local admin path: DB access, recorded as source cli
    assert main(["feedback", "--query", "q", "--pmid", "201", "--relevant", "--user", "dave"]) == 0
    assert [(x.expert, x.source, x.token_id) for x in log_rows(store)] == [
        ("carol", "api", listed[0]["id"]), ("dave", "cli", None),
    ]


def test_per_expert_feedback_limit(store: Settings) -> None:
    limited = store.replace(api_feedback_per_hour=20)
    eve = create_token(limited, "eve")
    fay = create_token(limited, "fay")
    codes: Counter[int] = Counter()
    last = None
    with TestClient(create_app(limited), raise_server_exceptions=False) as c:
        for i in range(300):
            last = c.post("/feedback", json={**BODY, "query": f"query {i}"},
                          headers=bearer(eve.token))
            codes[last.status_code] += 1
        assert last is not None and last.status_code == 429
        assert 1 <= int(last.headers["retry-after"]) <= 3600
        assert "eve" in last.json()["detail"]
        r = c.post("/feedback", json=BODY, headers=bearer(fay.token))  # others go on
        assert r.status_code == 201
    assert codes == {201: 20, 429: 280}
    assert Counter(x.user for x in feedback_rows(store)) == {"eve": 20, "fay": 1}


def test_tokens_and_the_expert_limit_on_both_databases(settings: Settings) -> None:
    engine = db.connect(settings)
    load_corpus(engine)
    issued = create_token(settings, "  ann   smith ", created_by="admin")
    info = issued.info
    assert info.expert == "ann smith" and info.state is TokenState.ACTIVE
    assert issued.token.startswith("lp_") and len(issued.token) >= 46
    assert issued.token not in repr(issued)
    assert verify_token(engine, issued.token) == info
    assert verify_token(engine, issued.token + "x") is None
    assert verify_token(engine, "") is None
    for i in range(3):
        record_feedback(settings, query=f"q {i}", pmid=201, relevant=True, user=info.expert,
                        source=FeedbackSource.API, token_id=info.id, max_per_hour=3)
    with pytest.raises(FeedbackLimitError) as over:
        record_feedback(settings, query="q 3", pmid=201, relevant=True, user=info.expert,
                        source=FeedbackSource.API, token_id=info.id, max_per_hour=3)
    assert 3500 < over.value.retry_after <= 3600
    record_feedback(settings, query="q 3", pmid=201, relevant=True, user=info.expert)  # cli
    assert [x.source for x in log_rows(settings)] == ["api"] * 3 + ["cli"]
    assert any_active_token(engine)
    assert revoke_token(settings, info.id).info.state is TokenState.REVOKED
    assert revoke_token(settings, info.id).info.revoked_at is not None  # idempotent
    assert not any_active_token(engine)
    with pytest.raises(NotFoundError):
        revoke_token(settings, 12345)


# ------------------------------------------------------------------ bodies and rate limits


async def _asgi_post(app: Any, path: str, chunks: Iterator[bytes],
                     headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, int]:
    """POST through the raw ASGI interface; returns status, body and bytes the app read."""
    pulled = 0
    sent: list[dict[str, Any]] = []
    pending = iter(chunks)
    nxt = next(pending, None)

    async def receive() -> dict[str, Any]:
        nonlocal pulled, nxt
        if nxt is None:
            await asyncio.sleep(3600)  # a client that never sends more
        chunk, nxt = nxt, next(pending, None)
        assert chunk is not None
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": nxt is not None}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5555),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), body, pulled


def _big_json(total: int, chunk: int = 65536) -> Iterator[bytes]:
    yield b'{"query": "'
    for _ in range(total // chunk):
        yield b"A" * chunk
    yield b'", "pmid": 201, "relevant": true}'


def test_oversized_bodies_are_413_before_they_are_read(store: Settings) -> None:
    app = create_app(store.replace(api_max_body_bytes=4096))
    json_type = (b"content-type", b"application/json")
    # chunked: no length announced; 50 MB offered, the app stops after the limit
    status, body, pulled = asyncio.run(
        _asgi_post(app, "/feedback", _big_json(50 * 2**20), [json_type])
    )
    assert status == 413, body[:200]
    assert pulled <= 4096 + 65536 + 16
    assert b"AAAA" not in body and b"4096" in body
    # announced: refused on the header alone
    status, body, pulled = asyncio.run(
        _asgi_post(app, "/feedback", _big_json(50 * 2**20),
                   [json_type, (b"content-length", str(50 * 2**20 + 45).encode())])
    )
    assert status == 413 and pulled == 0
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/feedback", content=b"B" * 100_000,
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and len(r.content) < 300
        r = c.post("/feedback", content=b"1", headers={"Content-Length": "x"})
        assert r.status_code == 400


def test_validation_errors_never_echo_the_body(store: Settings, client: TestClient) -> None:
    tok = create_token(store, "gil").token
    marker = "ECHO" + "z" * 400
    for body in (
        {"query": marker, "pmid": "nope", "relevant": True},
        {"query": "q", "pmid": 201, "relevant": marker},
        {"query": "q" * 600 + marker, "pmid": 201, "relevant": True},
        {"query": "q", "pmid": 201, "relevant": True, "extra": marker},
        [marker],
    ):
        r = client.post("/feedback", json=body, headers=bearer(tok))
        assert r.status_code == 422, r.text
        assert "ECHO" not in r.text and r.json()["detail"]
    r = client.post("/feedback", content=b'{"query": "' + marker.encode() + b'"',
                    headers={**bearer(tok), "Content-Type": "application/json"})
    assert r.status_code in (400, 422) and "ECHO" not in r.text
    r = client.get("/search", params={"q": "x", "k": marker})
    assert r.status_code == 422 and "ECHO" not in r.text


def test_rate_limit_answers_429_with_retry_after(store: Settings) -> None:
    # one token every 10 s (the slowest rate allowed): the 9 requests need not come
    # within 2 s, as with 0.5/s, to meet an empty bucket
    app = create_app(store.replace(api_rate_per_second=0.1, api_rate_burst=5))
    with TestClient(app, raise_server_exceptions=False) as c:
        codes = [c.get("/status").status_code for _ in range(8)]
        assert codes == [200] * 5 + [429] * 3
        r = c.get("/search", params={"q": "malaria"})
        assert r.status_code == 429 and "too many requests" in r.json()["detail"]
        assert 1 <= int(r.headers["retry-after"]) <= 10
    with TestClient(app, client=("10.0.0.2", 5000)) as other:  # another client is unaffected
        assert other.get("/status").status_code == 200


# --------------------------------------------------------------------- headers and page


def test_security_headers_everywhere(client: TestClient) -> None:
    for path in ("/", "/search?q=malaria", "/status", "/static/app.js", "/articles/1",
                 "/nothing-here"):
        r = client.get(path)
        assert r.status_code in (200, 404), path
        h = r.headers
        assert h["x-content-type-options"] == "nosniff", path
        assert h["x-frame-options"] == "DENY", path
        assert h["referrer-policy"] == "no-referrer", path
        csp = h["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp


def test_head_is_answered_as_get_without_a_body(client: TestClient) -> None:
    """A monitor's ``HEAD`` (``curl -I``) gets the GET's status and headers, no body
    (FastAPI answered 405 to HEAD on every route)."""
    for path in ("/", "/status", "/static/app.js", "/models", "/articles/1",
                 "/search?q=malaria", "/nothing-here", "/feedback"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
        assert head.content == b"", path
        for name in ("content-type", "content-security-policy", "x-frame-options"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
        if got.status_code == 200 and "content-length" in got.headers:
            assert head.headers["content-length"] == str(len(got.content)), path
    assert client.get("/status").status_code == 200  # probed: a 200 route is among them


def test_page_has_no_inline_code_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/").text
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all("src=" in s for s in scripts)
    assert "<style" not in page and not re.search(r"\sstyle=", page)
    assert not re.search(r"\son[a-z]+\s*=", page)  # no inline event handlers
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "fetch(" in js.text and "Authorization" in js.text
    css = client.get("/static/app.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    for bad in ("/static/index.html", "/static/../api.py", "/static/%2e%2e/api.py"):
        assert client.get(bad).status_code == 404
