"""Hostile review (session 32l) of the web page and the HTTP API, as a browser attacker
and as a careless client: hostile article fields on the page and in the exports, security
headers on every answer, CORS / CSRF, the per-client rate limit as ``litpulse serve``
runs it, a read-only API role.

Every test drives the real code: the FastAPI app through ``TestClient``, ``litpulse
serve`` (its ``uvicorn.run`` call captured, then the same server started on a free port),
the page in headless Chromium (skipped without it), records stored through
:class:`ingest.store.Store` and indexed by :func:`ranking.refresh.refresh_index` with the
tiny encoder — on SQLite and PostgreSQL where a store matters. Each defect was a strict
xfail asserting the correct behaviour; all three were fixed in the same session and are
plain tests now: L1 ``serve`` runs uvicorn with ``proxy_headers=False`` (the client is the
socket's peer); L2 a database refusal of the server's role (SQLSTATE 42501, 25006) is a 503
saying so, and ``ApiGuard`` answers any exception escaping the app with a JSON 500 carrying
the security headers; L3 a person's name part holding the word ``and`` is braced in BibTeX.

Defects:

L1 ``litpulse serve``'s per-client rate limit (``LITPULSE_API_RATE_PER_SECOND`` /
   ``_BURST``: "5 requests/s, burst 20 per client, then 429") is bypassed by a forged
   ``X-Forwarded-For``: ``run_serve`` calls ``uvicorn.run(app, host, port)`` with uvicorn's
   defaults, ``proxy_headers=True`` and ``forwarded_allow_ips="127.0.0.1"``, so uvicorn
   rewrites ``scope["client"]`` from the header of every connection from 127.0.0.1, and
   :class:`~litpulse.app.apiguard.ApiGuard` keys its token buckets on that. A client of
   the default server (``--host 127.0.0.1``), or one behind a same-host proxy or tunnel
   that passes the header on as sent (``ssh -L``, a TCP forwarder), sends each request
   with another made-up address: 30 requests in a row, burst 3, rate 1/s: **30 × 200**
   (without the header: 3 × 200, then 429); each forged address also takes one of the
   10,000 buckets (``max_clients``), evicting real clients' state. The README says the
   opposite ("behind a reverse proxy all clients share one bucket"). At fault:
   ``litpulse/app/cli/search.py`` ``run_serve`` (``uvicorn.run`` without
   ``proxy_headers=False``). Fix: ``uvicorn.run(..., proxy_headers=False)`` (or a setting
   naming the trusted proxies, off by default), so the bucket is the socket's peer.
   (test_serve_rate_limit_is_not_reset_by_a_forged_x_forwarded_for)
L2 (PostgreSQL) With the documented read-only API role (README: "GRANTs SELECT ... to
   every role that reads ``articles`` (a read-only API role)"), an expert's write —
   ``POST /alerts``, ``POST /feedback`` on an existing article — answers a bare **500**:
   ``text/plain`` "Internal Server Error", no ``{"detail": ...}`` and none of the security
   headers (no CSP, ``nosniff``, ``X-Frame-Options``; README: "on every answer").
   psycopg's ``InsufficientPrivilege`` is a SQLAlchemy ``ProgrammingError``; the app maps
   only ``OperationalError`` (503), and Starlette's ``ServerErrorMiddleware`` answers the
   rest *outside* ``ApiGuard`` (``add_middleware`` puts it inside), so every 500 goes out
   without the headers. At fault: ``litpulse/app/api.py`` ``_install_error_handlers`` and
   ``create_app`` (the guard's place). Fix: map ``sqlalchemy.exc.DBAPIError`` (permission
   denied, read-only transaction) to 503 "the database refuses writes to this server's
   role" (or 403 "read-only"), and have ``ApiGuard`` catch an exception escaping the app
   and answer a JSON 500 itself with the headers (or wrap the app: ``ApiGuard(FastAPI())``).
   (test_a_write_on_a_read_only_api_role_is_a_clear_answer_with_the_headers)
L3 The BibTeX export splits one author into several where a person's name holds the word
   ``and``: a last name ``Smith and Wesson`` (PubMed does put group or compound names in
   ``LastName``) is written ``author = {... and Smith and Wesson, S and ...}``, which
   BibTeX, biber and every reference manager read as the authors ``Smith`` and ``Wesson,
   S``: two authors from one, the list one longer than the article's. Collective names are
   braced; persons are not. At fault: ``litpulse/app/export.py`` ``to_bibtex`` (``names``).
   Fix: brace a person's name part that holds `` and `` at depth 0 (``{Smith and
   Wesson}, S``), as collective names are.
   (test_bibtex_keeps_one_author_whose_name_holds_and)

Attacks that held (plain tests):

G1 Hostile article fields (a title ``<img src=x onerror=...>`` / ``<script>``, author
   names ``<b>..</b>`` and ``@SUM(1)``, a journal ``=HYPERLINK(...)``, MeSH
   ``"><svg onload=...>``, a DOI ``javascript:alert(5)`` and one holding ``"><script>``,
   ``?``, ``#`` and ``%``, an abstract holding U+2028 and ``ER  -``) come back in the JSON
   as the same text, the DOI links are ``https://doi.org/`` with the DOI percent-encoded,
   and the CSV guards every formula cell, the RIS file keeps one record per article, the
   BibTeX entries keep balanced braces (SQLite and PostgreSQL).
G2 The page in headless Chromium shows those records as text: no element of theirs is
   made (no ``img``, ``script``, ``svg``, ``b`` or ``i`` inside the results), no dialog
   opens, and every link of a result is an ``https:`` link (PubMed, doi.org).
G3 Security headers (CSP without inline code, ``frame-ancestors 'none'``, ``nosniff``,
   ``X-Frame-Options``, ``Referrer-Policy``) on 404, 405, 413, 422 and 429 answers; no
   CORS: a cross-origin preflight gets no ``Access-Control-Allow-*``; a cross-site "simple"
   POST (``text/plain``, no token, as a form or ``fetch`` in ``no-cors`` mode sends it) is
   refused and writes nothing; the rate limit of ``litpulse serve`` without the header.
Also tried and held (not kept as tests): ``q`` of malformed percent-escapes, repeated
parameters (the last wins, ``format=ris&format=csv`` too), lone-surrogate JSON escapes in
every body field (422), 512 emoji in queries, MeSH and types, 255-emoji names,
U+0958 names that NFC doubles (400), PMIDs at 2**53 and past it, ``k=500`` exports at
offset 1,000, DOIs of 3,000 emoji or with ``%ff`` / NEL / ZWSP, ``Accept: text/html;q=nan``
on ``/models``, 400 concurrent ``/models/plot.png`` renders (all 200), the page's DOI
lookup path (``..`` and ``?`` escaped by the server). Observed, not filed: ``GET /alerts``
and the feeds list every expert's saved searches and names to anyone (the README's "reading
is open"); a body of 20 MeSH of 255 emoji, valid for the schema, is 413 (over 64 KiB).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from litpulse.core import db
from litpulse.core.schema import feedback, saved_searches
from litpulse.core.settings import Settings
from tests.conftest import PG_ADMIN_URL, free_port, fresh_postgres_database
from tests.ranking.corpus import BOTH_DATABASES, indexed_world, make_article, world_on
from tests.tiny_encoder import build_tiny_encoder

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.tokens import create_token  # noqa: E402

P = 43200000
SECURITY = (
    "content-security-policy",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
)
HOSTILE_TITLE = "<img src=x onerror=alert(1)>Heart failure <script>alert(2)</script>"
HOSTILE_DOI = '10.1000/"><script>alert(6)</script>?a=b#c%'


def _records() -> list[Any]:
    from ingest.records import Author

    a = make_article(
        P + 1,
        HOSTILE_TITLE,
        "Heart failure javascript:alert(3) \u2028ER  - \u2028TY  - JOUR {open",
        mesh=('"><svg onload=alert(4)>', "Heart Failure"),
    )
    a = dataclasses.replace(
        a, journal='=HYPERLINK("http://evil.example")', volume="-2+3", pages="=1-2",
        doi="javascript:alert(5)", publication_types=("<i>Review</i>",),
        authors=(Author(last_name="<b>Smith</b>", fore_name="J"),
                 Author(last_name="Smith and Wesson", initials="S"),
                 Author(collective_name="@SUM(1)")),
    )  # fmt: skip
    b = dataclasses.replace(
        make_article(P + 2, "Heart failure in adults", "Heart failure."), doi=HOSTILE_DOI
    )
    c = dataclasses.replace(
        make_article(P + 3, "Heart failure } @misc{x, title={pwn}", "x"), doi="10.1000/a}b{c"
    )
    return [a, b, c]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-32l"), max_seq_length=32)


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: str
) -> Iterator[Settings]:
    yield from world_on(
        request.param, tmp_path_factory, "s32l",
        lambda home, url: indexed_world(home, url, tiny, _records(), api_rate_burst=100000,
                                        api_rate_per_second=10000.0),
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(world: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


# ------------------------------------------------------------------------------ L1


@contextlib.contextmanager
def _litpulse_serve(
    home: Path, monkeypatch: pytest.MonkeyPatch, rate: str, burst: str
) -> Iterator[str]:
    """``litpulse serve`` as run: its ``uvicorn.run`` arguments, on a free port."""
    import uvicorn

    from litpulse.app.cli import main

    monkeypatch.setenv("LITPULSE_HOME", str(home))
    monkeypatch.setenv("LITPULSE_API_RATE_PER_SECOND", rate)
    monkeypatch.setenv("LITPULSE_API_RATE_BURST", burst)
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    port = free_port()
    assert main(["serve", "--port", str(port)]) == 0
    app, kw = calls[0]
    srv = uvicorn.Server(uvicorn.Config(app, **{**kw, "log_level": "warning"}))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://{kw['host']}:{kw['port']}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        db.dispose_engines()


def _status_of(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_serve_rate_limit_is_not_reset_by_a_forged_x_forwarded_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _litpulse_serve(tmp_path / "home", monkeypatch, rate="0.5", burst="3") as base:
        codes = [
            _status_of(f"{base}/status", {"X-Forwarded-For": f"198.51.100.{i}"})
            for i in range(1, 13)
        ]
    # one client, one socket peer: the burst, then 429 — whatever address it claims
    assert codes.count(200) <= 4, codes
    assert 429 in codes, codes


def test_serve_rate_limit_holds_for_a_plain_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _litpulse_serve(tmp_path / "home", monkeypatch, rate="0.5", burst="3") as base:
        codes = [_status_of(f"{base}/status") for _ in range(8)]
    assert codes[:3] == [200, 200, 200], codes
    assert codes.count(429) >= 4, codes


# ------------------------------------------------------------------------------ L2


@pytest.fixture
def read_only_role(tmp_path: Path) -> Iterator[tuple[Settings, Settings]]:
    """(owner's settings, a read-only API role's settings) on a fresh PostgreSQL database:
    the role may connect and SELECT every table, as the README's read-only API role."""
    role = f"ro32l_{uuid.uuid4().hex[:8]}"
    try:
        with fresh_postgres_database("litpulse_ro32l") as url:
            owner = Settings.from_env(
                {},
                home=tmp_path / "home",
                database_url=url,
                api_rate_burst=100000,
                api_rate_per_second=10000.0,
            )
            from ingest.store import Store

            Store(db.connect(owner)).apply([make_article(P + 9, "Heart failure", "x.")])
            eng = create_engine(url, isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                name = url.rsplit("/", 1)[1]
                conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
                conn.execute(text(f'GRANT CONNECT ON DATABASE "{name}" TO "{role}"'))
                conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
                conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
            eng.dispose()
            reader = owner.replace(database_url=re.sub(r"://[^@/]*@", f"://{role}@", url))
            yield owner, reader
            db.dispose_engines()
    finally:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


@pytest.mark.postgres
def test_a_write_on_a_read_only_api_role_is_a_clear_answer_with_the_headers(
    read_only_role: tuple[Settings, Settings],
) -> None:
    owner, reader = read_only_role
    token = create_token(owner, "alice").token
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(reader), raise_server_exceptions=False) as c:
        assert c.get("/status").status_code == 200  # reading works on this role
        answers = {
            "alerts": c.post("/alerts", json={"name": "hf", "query": "heart failure"},
                             headers=auth),
            "feedback": c.post("/feedback", json={"query": "heart failure", "pmid": P + 9,
                                                  "relevant": True}, headers=auth),
        }  # fmt: skip
    bad = {}
    for what, r in answers.items():
        missing = [h for h in SECURITY if h not in r.headers]
        is_json = r.headers.get("content-type", "").startswith("application/json")
        if r.status_code not in (403, 503) or missing or not is_json:
            bad[what] = (r.status_code, r.headers.get("content-type"), missing, r.text[:60])
    assert not bad, bad
    with db.connect(owner).connect() as conn:  # and nothing was written
        assert conn.execute(select(saved_searches.c.id)).first() is None
        assert conn.execute(select(feedback.c.id)).first() is None


# ------------------------------------------------------------------------------ L3


def _bibtex_names(field: str) -> list[str]:
    """The names BibTeX reads from an ``author`` field: split on `` and `` at brace depth
    0 (case-insensitive, whitespace around), as ``bibtex``'s ``format.names`` does."""
    names, depth, start, i = [], 0, 0, 0
    while i < len(field):
        ch = field[i]
        depth += {"{": 1, "}": -1}.get(ch, 0)
        sep = re.match(r"\s+and\s+", field[i:], re.IGNORECASE) if depth == 0 else None
        if sep is not None:
            names.append(field[start:i].strip())
            i += sep.end()
            start = i
            continue
        i += 1
    names.append(field[start:].strip())
    return names


def test_bibtex_keeps_one_author_whose_name_holds_and(client: TestClient) -> None:
    r = client.get("/export", params={"q": "heart failure", "format": "bibtex", "k": 10})
    assert r.status_code == 200, r.text
    entry = r.text[r.text.index(f"@article{{pmid{P + 1},") :]
    field = re.search(r"^  author = \{(.*)\},?$", entry, re.MULTILINE)
    assert field is not None, entry
    names = _bibtex_names(field.group(1))
    assert len(names) == 3, names  # <b>Smith</b> J; Smith and Wesson S; @SUM(1)


# ------------------------------------------------------------------------------ G1


def test_hostile_fields_come_back_as_text_and_safe_links(client: TestClient) -> None:
    r = client.get("/search", params={"q": "heart failure", "k": 10})
    assert r.status_code == 200, r.text
    hits = {h["pmid"]: h for h in r.json()["results"]}
    assert hits[P + 1]["title"] == HOSTILE_TITLE
    assert '"><svg onload=alert(4)>' in hits[P + 1]["mesh"]
    assert hits[P + 1]["links"]["doi"] == "https://doi.org/javascript:alert(5)"
    assert hits[P + 2]["links"]["doi"] == (
        "https://doi.org/10.1000/%22%3E%3Cscript%3Ealert(6)%3C/script%3E%3Fa%3Db%23c%25"
    )
    for h in hits.values():
        assert h["links"]["pubmed"] == f"https://pubmed.ncbi.nlm.nih.gov/{h['pmid']}/"

    csv_text = client.get("/export", params={"q": "heart failure", "format": "csv"}).text
    import csv
    import io

    rows = {int(row["pmid"]): row for row in csv.DictReader(io.StringIO(csv_text))}
    assert rows[P + 1]["journal"] == "'" + '=HYPERLINK("http://evil.example")'
    assert rows[P + 1]["volume"] == "'-2+3" and rows[P + 1]["pages"] == "'=1-2"
    ris = client.get("/export", params={"q": "heart failure", "format": "ris"}).text
    tags = [line[:6] for line in ris.split("\r\n") if line]
    assert tags.count("TY  - ") == 3 and tags.count("ER  - ") == 3, ris
    assert all(re.fullmatch(r"[A-Z][A-Z0-9]  - ", t) for t in tags), tags
    bib = client.get("/export", params={"q": "heart failure", "format": "bibtex"}).text
    for entry in bib.split("@article")[1:]:
        depth = 0
        for ch in entry:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, entry
        assert depth == 0, entry


# ------------------------------------------------------------------------------ G2

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)


@pytest.mark.browser
def test_the_page_shows_hostile_records_as_text(world: Settings, tmp_path: Path) -> None:
    if world.database_url:
        pytest.skip("the page is the same on either store: SQLite only")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    import uvicorn
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(world), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        assert thread.is_alive()
        time.sleep(0.05)
    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"http://127.0.0.1:{port}/?q=heart+failure")
        WebDriverWait(driver, 20).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 3
        )
        # a dialog (alert) opened by injected code would make this call raise
        titles = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "li.hit a.title")]
        assert HOSTILE_TITLE in titles, titles
        injected = driver.find_elements(
            By.CSS_SELECTOR,
            "#results img, #results script, #results svg, #results b, "
            "#results i:not(.sim):not(.lex):not(.rec):not(.cit)",
        )
        assert injected == []
        hrefs = [
            a.get_attribute("href")
            for a in driver.find_elements(By.CSS_SELECTOR, "#results a[href]")
        ]
        assert hrefs and all(h.startswith("https://") for h in hrefs), hrefs
        assert "Smith and Wesson S" in driver.find_element(By.ID, "results").text
    finally:
        driver.quit()
        srv.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------------ G3


def test_headers_on_error_answers_and_no_cors_nor_csrf(world: Settings) -> None:
    token = create_token(world, f"g3-{uuid.uuid4().hex[:6]}").token
    tight = world.replace(api_rate_burst=40, api_rate_per_second=0.1)
    with TestClient(create_app(tight), raise_server_exceptions=False) as c:
        answers = {
            404: c.get("/no-such-page"),
            405: c.request("TRACE", "/"),
            413: c.post(
                "/feedback", content=b"x" * 70000, headers={"Content-Type": "application/json"}
            ),
            422: c.get("/search", params={"q": "heart", "k": "many"}),
        }
        preflight = c.options(
            "/feedback",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        simple = c.post(
            "/feedback",
            content=b'{"query":"heart","pmid":%d,"relevant":true}' % (P + 1),
            headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
        )
        got = c.get("/status", headers={"Origin": "https://evil.example"})
        for _ in range(40):
            last = c.get("/status")
        answers[429] = last
        ok = c.post(
            "/feedback",
            json={"query": "heart", "pmid": P + 1, "relevant": True},
            headers={"Authorization": f"Bearer {token}"},
        )
    for code, r in answers.items():
        assert r.status_code == code, (code, r.status_code, r.text[:80])
        missing = [h for h in SECURITY if h not in r.headers]
        assert not missing, (code, missing)
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert not any(h.startswith("access-control-") for h in preflight.headers), preflight.headers
    assert not any(h.startswith("access-control-") for h in got.headers)
    assert simple.status_code in (401, 415, 422), simple.text
    assert ok.status_code == 429  # the client's bucket is spent: no write either
