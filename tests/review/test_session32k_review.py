"""Hostile review (session 32k) of the clients of the outside services: E-utilities
(ESearch windows, EFetch batches), the iCite API refresh, the HTTP client under both.

Every test drives the real code (``ingest.eutils.ingest_window``, ``efetch``,
``ingest.citations.refresh_citations``, ``ingest.http.HttpClient``, the CLI's ``main``)
against a small ``http.server`` on 127.0.0.1 started here (:class:`Hostile`), which
answers as the loopback emulator does (``tests/emulator.py``: its ``esearch``,
``efetch`` and ``icite_json``) unless a test's hook answers otherwise: duplicated or
impossible ids, redirects, trickled bodies, gzip bombs, stray records, nested JSON.
Where a store matters, on SQLite and PostgreSQL. Each defect was a strict xfail asserting
the correct behaviour; all 9 were fixed in the same session and are plain tests now: K1
ESearch's ids are checked against Count once repeats are set aside; K2 ``HttpClient`` never
follows a redirect (a 301/308 fails at once naming ``Location`` and the URL setting, a
temporary one is retried); K3 ESearch ids are read with ``id_value(text, MAX_PMID)`` and
its counts as ASCII digits, anything else a ``TransientSourceError``, never saved; K4 an
error page is redacted whole before it is cut, and ``api-key`` is matched too; K5 an
answer must arrive whole within ``http_timeout`` of the request (read as it arrives); K6 an
answer is decoded piece by piece up to a cap (32 MiB; EFetch's from its batch's
``max_record_bytes`` plus 1 MiB), urllib3 ≥ 2.7 decoding no further than asked; K7
``efetch`` keeps only the PMIDs asked and no ``DeleteCitation``, the rest logged and listed
in the run's ``strays``; K8 iCite JSON nested past the decoder's depth is "not JSON"
(transient); K9 a PMID iCite answers twice with different values has every copy rejected
and quarantined.

Defects:

K1 An ESearch answer whose ``IdList`` repeats a PMID hides another one for good, silently.
   ``Count`` 3 with ids ``7, 7, 5`` (6 left out) passes the "incomplete ID list" check
   (``len(result.ids) < expected`` counts the repeat), the window stores 5 and 7, counts
   ``missing=0``, lists nothing in ``missing_pmids`` and succeeds; the day holds records,
   so the data-quality check's ``short`` days see nothing either. README: "Every PMID
   ESearch returned is stored, deleted, or counted as missing" and the check exists for
   "incomplete ID lists are retried". At fault: ``ingest/eutils.py`` ``esearch.parse``
   (and ``parse_esearch``, which keeps the repeat). Fix: compare the *distinct* ids with
   the expected number (``len(set(result.ids))``), so the answer is transient and retried,
   and the run fails rather than passes short.
   (test_k1_a_repeated_id_in_an_esearch_answer_does_not_hide_a_pmid)
K2 ``HttpClient`` follows redirects with ``requests``' defaults. A 307/308 answer to an
   E-utilities POST makes ``requests`` POST the same form, **``api_key`` included**, to
   whatever host ``Location`` names (another host, or ``http://`` from ``https://``):
   the key the module promises "never leaks" goes to a third party. A 301/302/303 turns
   the POST into a GET *without* the form, so the server answers "Invalid db name
   specified" / "Empty term" and the run fails at once as an ``InvalidRequestError`` (not
   retried) that names neither the redirect nor its target. At fault: ``ingest/http.py``
   ``HttpClient._send`` (``session.request`` without ``allow_redirects=False``). Fix:
   never follow a redirect for E-utilities (or follow only same-origin 307/308 with the
   form), and fail with an error naming the ``Location`` ("LITPULSE_EUTILS_URL redirects
   to ...").
   (test_k2_a_redirect_never_carries_the_api_key_to_another_host,
   test_k2_a_redirected_eutils_url_is_named_not_reported_as_an_invalid_request)
K3 ESearch's ids are taken with a bare ``int()``: nothing checks that each is a PMID.
   ``<Id>6x</Id>`` (or ``<Count>²</Count>``: ``str.isdigit`` is true for it, ``int``
   refuses it) raises a bare ``ValueError`` out of ``ingest_window``: ``litpulse ingest
   --eutils`` ends in a Python **traceback**, the HTTP client does not retry it, the DAG
   reads it as an unexpected error. ``<Id>99999999999999999999</Id>`` is worse: the PMID
   list is saved in the window's ``#search`` checkpoint, EFetch is asked, then the store
   refuses the number (SQLite ``OverflowError``, PostgreSQL ``DataError: bigint out of
   range``), the
   run fails, and **every later run of that window fails the same way**, even against a
   healthy server: a resumed window reuses the saved list (only ``--restart`` clears it);
   the nightly holds its watermark on that window for ever. At fault: ``ingest/eutils.py``
   ``parse_esearch`` (``int(t)``, ``int(count_text)``, ``int(RetStart)``). Fix: read each
   id with ``ingest.fields.id_value(text, MAX_PMID)`` and the counts as ASCII digits; an
   answer holding anything else is a ``TransientSourceError`` (retried), never saved.
   (test_k3_a_non_numeric_esearch_id_is_a_clear_error_not_a_traceback,
   test_k3_a_non_decimal_count_is_a_source_error,
   test_k3_one_impossible_pmid_in_an_answer_does_not_wedge_the_window)
K4 A 4xx body is cut at 300 bytes **before** it is redacted (``_snippet`` then
   ``redact``), so a key that straddles the cut is no longer the whole secret, neither
   pattern matches it, and its first characters land in the exception, the log, the run
   row (``ingest_runs.error``) and ``litpulse status``. NCBI names a refused key as
   ``"api-key":"..."`` (a hyphen: ``_KEY_RE`` looks for ``api_key``); a proxy's error page
   that echoes the request does the same. At fault: ``ingest/http.py`` ``_send``
   (``self.redact(_snippet(response.content))``). Fix: redact the decoded body first, then
   cut it (``_snippet(self.redact(body))``).
   (test_k4_a_4xx_page_never_leaks_the_start_of_the_api_key)
K5 ``LITPULSE_HTTP_TIMEOUT`` ("Timeout of one HTTP request, in seconds") bounds each
   socket read, not the request: a server sending one byte every 50 ms holds an
   ``http_timeout=0.5`` request for as long as it likes (a 125-byte ESearch answer: 6 s,
   then accepted). A degraded proxy that trickles holds the nightly window (and the
   ``ncbi`` pool) until Airflow's run timeout. At fault: ``ingest/http.py`` ``_send``
   (``timeout=self.settings.http_timeout`` is urllib3's read timeout). Fix: stream the
   body and give up (``TransientSourceError``, retried) once the request's total time
   passes ``http_timeout``.
   (test_k5_a_trickling_answer_is_cut_at_the_request_timeout)
K6 An answer sent with ``Content-Encoding: gzip`` is decoded whole into memory
   (``response.content``): a 130 KB EFetch answer expanding to 128 MiB peaks at 258 MiB
   in the client (``tracemalloc``; a 2.5 MB one would take ~5 GiB): one answer of a
   broken or hostile mirror kills the nightly (``LITPULSE_EUTILS_URL`` is "a setting, so
   tests and air-gapped sites can point at a mirror"). The file path was hardened against
   exactly this (README: "a 1.16 MB ``.gz`` expanding to 352 MiB: ... 71 MiB peak RSS"); the
   HTTP path was not. At fault: ``ingest/http.py`` ``_send`` (no cap on a decoded body).
   Fix: read the body streamed with a cap (for EFetch ``efetch_batch *
   max_record_bytes`` plus the envelope; a few MiB for ESearch and iCite) and fail over it.
   (test_k6_a_gzip_bomb_answer_is_not_held_in_memory)
K7 EFetch's answer is applied whole: items for PMIDs nobody asked for go into the store.
   An answer to a request for PMID 8 that also carries a ``DeleteCitation`` of PMID 5 and
   a 2019 record 999 **deletes 5** (a live record of another window) and inserts 999,
   both counted as the window's own (``inserted=2, deleted=1``). EFetch never serves
   deletions (withdrawals are found by the unlisted check), and the iCite refresh already
   ignores "records nobody asked for" (``tests/ingest/test_icite_refresh_review.py``).
   At fault: ``ingest/eutils.py`` ``fetch_reconciled`` / ``_fetch_batch`` (``store.apply
   (items)`` without filtering to the batch). Fix: keep only records (and quarantine
   entries) of the PMIDs asked; drop, log and count the rest; never apply a
   ``Deletion`` from an EFetch answer.
   (test_k7_an_efetch_answer_cannot_delete_or_add_pmids_nobody_asked_for)
K8 An iCite answer that is deeply nested JSON (``[`` × 100,000: a proxy's or a broken
   server's) escapes as a bare ``RecursionError`` from ``response.json()``: not retried,
   not a ``TransientSourceError``, the run row says ``RecursionError``, ``litpulse
   citations refresh`` prints a traceback. At fault: ``ingest/citations.py`` ``_fetch``
   (``except ValueError`` only). Fix: catch ``RecursionError`` too (it is "body is not
   JSON" as any other).
   (test_k8_a_deeply_nested_icite_answer_is_a_transient_error)
K9 iCite answering one PMID twice with two *intact but different* records (citation
   count 3 and 900): the later silently wins (``IciteAnswer.values[pmid] = ...``),
   nothing is quarantined, logged or counted. The module's own rule for a PMID answered
   twice is "one copy damaged: neither copy is trusted"; two copies that disagree are
   just as untrustworthy (one of them is damaged; which is unknowable), and the snapshot
   loader documents its rule for repeats. At fault: ``ingest/citations.py``
   ``read_icite``. Fix: a PMID answered twice with different values is rejected as a
   whole (both records quarantined, the article keeps what it had), as the damaged-copy
   case; identical copies stay one record (guarded below).
   (test_k9_two_disagreeing_icite_records_of_one_pmid_are_not_resolved_silently)
   **Superseded by review 36h X1**: the snapshot loader cannot reject both copies of a
   PMID met twice in a 40M-row stream (the earlier may be committed batches before), so
   one rule serves both loaders: the copies are stored one after the other
   (``ingest.citations.merge_icite``), with a warning where they disagree.

Attacks that held (plain tests, to stay right after the fixes):

G1 ESearch answering an HTML page with status 200, a ``Search Backend failed`` error, a
   connection reset and EFetch answering a body cut mid-record (honest ``Content-Length``)
   and a gzip stream cut short: each retried, the window lands whole, nothing
   quarantined; the API key in no log line, error or stored row (SQLite and PostgreSQL).
G2 429 with a malformed ``Retry-After`` (``soon``, ``NaN``, ``-5``) is retried with the
   backoff; one of ``1e999`` fails at once ("not waited for", ``retry_after`` inf);
   always 429: ``max_retries + 1`` requests and "gave up after N attempts"; the CLI exits
   75 (retryable) with that message.
G3 EFetch leaving one PMID out of every answer: asked twice, counted ``missing`` and owed.
G4 iCite values NaN (NULL, other values kept), negative and 10^12 counts (quarantined,
   article keeps what it had), a PMID not asked (ignored), a PMID not answered
   (``unknown``): ``requested = updated + unknown + rejected``; identical repeated copies
   are one record (SQLite and PostgreSQL).
Also tried and held (not kept as tests): ``Retry-After`` as a far HTTP date, ``inf`` and
``1e23`` (failed at once, ``dag_support.retry_after`` caps it at 1 h); a 5xx with a long
``Retry-After``; a ``Content-Encoding: gzip`` header over a plain body (``ContentDecodingError``,
retried); an ESearch that ignores the ``lo:hi[uid]`` range and keeps its Count (17
requests, then a ``ConsistencyError``: bounded and loud); a Count that changes between the
whole day and its lower piece (the kept page is fetched again); ``usehistory=y`` is sent but
WebEnv/QueryKey are never used (no paging: one page per piece), so no history-server
expiry can bite; iCite ``1e400``, ``Infinity``, ``"1e3"`` counts, ``null`` PMIDs, non-object
rows; a snapshot file changed after a killed load restarts from its first row
(``first_read_at`` rewrites the checkpoint); a snapshot never overwrites a later API fetch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import logging
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from ingest.citations import refresh_citations
from ingest.eutils import efetch, ingest_window
from ingest.http import HttpClient, eutils_client
from ingest.parse import ParseLimits, parse_bytes
from ingest.records import SourceRef
from ingest.store import Store
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.errors import (
    LitpulseError,
    SourceError,
    TransientSourceError,
)
from litpulse.core.schema import articles, metadata, quarantine
from litpulse.core.settings import Settings
from tests.emulator import Emulator, article_xml, pubmed_set

KEY = "SECRETk32-eutils-key-5f3c9a1b7d"
DAY = dt.date(2024, 1, 3)
SINCE, UNTIL = dt.datetime(2024, 1, 3), dt.datetime(2024, 1, 4)

#: what a hook answers: None (the emulator's answer), RESET, or (status, headers, body)
#: with an optional fourth item, seconds between the bytes sent (a trickle)
Answer = tuple[Any, ...] | str | None
RESET = "reset"


class Hostile:
    """A loopback server answering as the emulator does unless ``hook`` answers.

    ``seen`` logs (method, path, params) of every request it got.
    """

    def __init__(self, emu: Emulator | None = None) -> None:
        self.emu = emu or Emulator()
        self.hook: Callable[[str, str, dict[str, str]], Answer] | None = None
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                self._answer("POST")

            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                params = {k: ",".join(v) for k, v in parse_qs(parts.query).items()}
                if method == "POST":
                    raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    for k, v in parse_qs(raw.decode()).items():
                        params[k] = ",".join(v)
                outer.seen.append((method, parts.path, params))
                got = outer.hook(method, parts.path, params) if outer.hook else None
                if got == RESET:
                    self.close_connection = True
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    return
                if got is None:
                    got = outer.default(parts.path, params)
                status, headers, body = got[:3]
                delay = got[3] if len(got) > 3 else 0.0
                headers = {"Content-Length": str(len(body)), **headers}
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    if delay:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(delay)
                    else:
                        self.wfile.write(body)
                except OSError:  # the client went away
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def default(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if path.endswith("esearch.fcgi"):
            return 200, {"Content-Type": "text/xml"}, self.emu.esearch(params)
        if path.endswith("efetch.fcgi"):
            return 200, {"Content-Type": "text/xml"}, self.emu.efetch(params, None)
        if "/pubs" in path:
            return 200, {"Content-Type": "application/json"}, self.emu.icite_json(params)
        return 404, {}, b"Not Found"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def paths(self, part: str) -> list[dict[str, str]]:
        return [params for _, path, params in self.seen if part in path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def srv() -> Iterator[Hostile]:
    server = Hostile()
    try:
        yield server
    finally:
        server.stop()


def _on(server: Hostile, base: Settings, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "eutils_url": f"{server.url}/eutils/",
        "icite_url": f"{server.url}/icite/api/",
        "ncbi_api_key": KEY,
        "ncbi_email": "review@example.org",
        "backoff_base": 0.01,
        "backoff_max": 0.02,
        "max_retries": 2,
        "http_timeout": 10.0,
    }
    values.update(kw)
    return base.replace(**values)


def _live(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        return set(
            conn.execute(select(articles.c.pmid).where(articles.c.is_deleted.is_(False))).scalars()
        )


def _no_key_anywhere(settings: Settings, *texts: str) -> None:
    """The API key (or its first 8 characters) in none of ``texts`` and no stored row."""
    for text in texts:
        assert KEY[:8] not in text
    with db.connect(settings).connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)).all():
                assert KEY[:8] not in repr(tuple(row)), table.name


def _store_articles(settings: Settings, pmids: list[int]) -> None:
    xml = pubmed_set([article_xml(p, edat=DAY, mdat=DAY) for p in pmids])
    Store(db.connect(settings)).apply(parse_bytes(xml, source_ref=SourceRef("file", "seed.xml")))


def _icite_row(pmid: Any, **fields: Any) -> dict[str, Any]:
    row = {"pmid": pmid, "year": 2024, "citation_count": 4, "relative_citation_ratio": 1.5,
           "citations_per_year": 2.0, "provisional": "No"}  # fmt: skip
    row.update(fields)
    return row


def _icite_hook(rows: list[dict[str, Any]]) -> Callable[[str, str, dict[str, str]], Answer]:
    def hook(method: str, path: str, params: dict[str, str]) -> Answer:
        if "/pubs" in path:
            return 200, {"Content-Type": "application/json"}, json.dumps({"data": rows}).encode()
        return None

    return hook


def _citations(settings: Settings) -> dict[int, tuple[Any, ...]]:
    a = articles.c
    with db.connect(settings).connect() as conn:
        got = conn.execute(select(a.pmid, a.citation_count, a.relative_citation_ratio,
                                  a.citations_per_year)).all()  # fmt: skip
    return {int(r[0]): tuple(r[1:]) for r in got}


def _icite_quarantined(settings: Settings) -> list[Any]:
    q = quarantine.c
    with db.connect(settings).connect() as conn:
        return list(conn.execute(select(q.pmid).where(q.source_kind == "icite")).scalars())


# ---------------------------------------------------------------------------------- K1


def test_k1_a_repeated_id_in_an_esearch_answer_does_not_hide_a_pmid(
    srv: Hostile, settings: Settings
) -> None:
    for p in (5, 6, 7):
        srv.emu.add_article(p, edat=DAY)

    def hook(method: str, path: str, params: dict[str, str]) -> Answer:
        if path.endswith("esearch.fcgi"):  # Count 3, ids 7, 7, 5: six is never named
            return 200, {}, srv.emu.esearch(params).replace(b"<Id>6</Id>", b"<Id>7</Id>")
        return None

    srv.hook = hook
    s = _on(srv, settings)
    try:
        ingest_window(s, SINCE, UNTIL)
    except TransientSourceError:
        return  # the short answer was refused: nothing passed silently
    run = Store(db.connect(s)).runs(1)[0]
    assert 6 in _live(s) or 6 in run["details"]["missing_pmids"], (run["status"], run["missing"])


# ---------------------------------------------------------------------------------- K2


def test_k2_a_redirect_never_carries_the_api_key_to_another_host(
    srv: Hostile, sqlite_settings: Settings
) -> None:
    elsewhere = Hostile()
    try:
        srv.hook = lambda m, path, p: (307, {"Location": f"{elsewhere.url}{path}"}, b"")
        s = _on(srv, sqlite_settings)
        with eutils_client(s) as client, contextlib.suppress(LitpulseError):
            client.post("esearch.fcgi", data={"db": "pubmed", "term": "all[sb]"})
        assert srv.paths("esearch") and srv.paths("esearch")[0].get("api_key") == KEY
        leaked = [p for p in elsewhere.paths("") if KEY in json.dumps(p)]
        assert not leaked, f"{elsewhere.url} received the API key"
    finally:
        elsewhere.stop()


def test_k2_a_redirected_eutils_url_is_named_not_reported_as_an_invalid_request(
    srv: Hostile, sqlite_settings: Settings
) -> None:
    moved = Hostile()
    try:
        srv.hook = lambda m, path, p: (301, {"Location": f"{moved.url}{path}"}, b"")
        s = _on(srv, sqlite_settings)
        with pytest.raises(LitpulseError) as err:
            ingest_window(s, SINCE, UNTIL)
        text = str(err.value)
        assert "redirect" in text.lower() or moved.url in text, text
        assert "invalid db" not in text.lower(), text
    finally:
        moved.stop()


# ---------------------------------------------------------------------------------- K3


def _replace_in_esearch(srv: Hostile, old: bytes, new: bytes) -> None:
    def hook(method: str, path: str, params: dict[str, str]) -> Answer:
        if path.endswith("esearch.fcgi"):
            return 200, {}, srv.emu.esearch(params).replace(old, new)
        return None

    srv.hook = hook


def test_k3_a_non_numeric_esearch_id_is_a_clear_error_not_a_traceback(
    srv: Hostile,
    sqlite_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for p in (5, 6, 7):
        srv.emu.add_article(p, edat=DAY)
    _replace_in_esearch(srv, b"<Id>6</Id>", b"<Id>6x</Id>")
    s = _on(srv, sqlite_settings)
    for name, value in (
        ("LITPULSE_HOME", str(s.home)),
        ("LITPULSE_EUTILS_URL", s.eutils_url),
        ("LITPULSE_NCBI_API_KEY", KEY),
        ("LITPULSE_BACKOFF_BASE", "0.01"),
        ("LITPULSE_BACKOFF_MAX", "0.02"),
        ("LITPULSE_MAX_RETRIES", "1"),
    ):
        monkeypatch.setenv(name, value)
    code = main(["ingest", "--eutils", "--since", "2024-01-03", "--until", "2024-01-03"])
    err = capsys.readouterr().err
    assert code == 75 and "litpulse: error:" in err, (code, err)  # a source fault, retryable
    _no_key_anywhere(s, err)


def test_k3_a_non_decimal_count_is_a_source_error(srv: Hostile, sqlite_settings: Settings) -> None:
    srv.emu.add_article(5, edat=DAY)
    _replace_in_esearch(srv, b"<Count>1</Count>", "<Count>²</Count>".encode())
    s = _on(srv, sqlite_settings, max_retries=0)
    with pytest.raises(SourceError):
        ingest_window(s, SINCE, UNTIL)


def test_k3_one_impossible_pmid_in_an_answer_does_not_wedge_the_window(
    srv: Hostile, settings: Settings
) -> None:
    for p in (5, 6, 7):
        srv.emu.add_article(p, edat=DAY)

    def hook(method: str, path: str, params: dict[str, str]) -> Answer:
        if path.endswith("esearch.fcgi") and "all[sb]" == params.get("term"):
            body = srv.emu.esearch(params)
            return (
                200,
                {},
                body.replace(b"<Count>3</Count>", b"<Count>4</Count>").replace(
                    b"<Id>6</Id>", b"<Id>6</Id><Id>99999999999999999999</Id>"
                ),
            )
        return None

    srv.hook = hook
    s = _on(srv, settings, max_retries=1)
    with contextlib.suppress(Exception):  # a glitch of the server: this run may fail
        ingest_window(s, SINCE, UNTIL)
    srv.hook = None  # the server is healthy again: the next run must land
    ingest_window(s, SINCE, UNTIL)
    assert _live(s) == {5, 6, 7}


# ---------------------------------------------------------------------------------- K4


def test_k4_a_4xx_page_never_leaks_the_start_of_the_api_key(
    srv: Hostile, sqlite_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    top, named = (
        b"<html><body><h1>400 Bad Request</h1><pre>",
        b'{"error":"API key invalid","api-key":"',
    )
    head = top + b"." * (285 - len(top) - len(named)) + named
    assert len(head) == 285  # the key straddles the 300th byte: 15 of its characters before
    page = head + KEY.encode() + b'","type":"invalid","status":"unknown"}</pre></body></html>'
    srv.hook = lambda m, path, p: (400, {"Content-Type": "text/html"}, page)
    s = _on(srv, sqlite_settings)
    with pytest.raises(LitpulseError) as err:
        ingest_window(s, SINCE, UNTIL)
    _no_key_anywhere(s, str(err.value), caplog.text)


# ---------------------------------------------------------------------------------- K5


def test_k5_a_trickling_answer_is_cut_at_the_request_timeout(
    srv: Hostile, sqlite_settings: Settings
) -> None:
    body = b"<eSearchResult><Count>0</Count><IdList/></eSearchResult>"  # 56 bytes: 2.8 s
    srv.hook = lambda m, path, p: (200, {"Content-Type": "text/xml"}, body, 0.05)
    s = _on(srv, sqlite_settings, http_timeout=0.5, max_retries=0)
    started = time.monotonic()
    with eutils_client(s) as client, pytest.raises(TransientSourceError):
        client.post("esearch.fcgi", data={"db": "pubmed", "term": "all[sb]"})
    assert time.monotonic() - started < 2.0


# ---------------------------------------------------------------------------------- K6


def _bomb(mib: int) -> bytes:
    """A gzip member of ``<PubmedArticleSet>``, ``mib`` MiB of spaces, its end tag."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(b"<PubmedArticleSet>")]
    block = b" " * (1 << 20)
    out += [z.compress(block) for _ in range(mib)]
    out += [z.compress(b"</PubmedArticleSet>\n"), z.flush()]
    return b"".join(out)


def test_k6_a_gzip_bomb_answer_is_not_held_in_memory(
    srv: Hostile, sqlite_settings: Settings
) -> None:
    bomb = _bomb(128)
    assert len(bomb) < 512 << 10  # < 0.5 MB on the wire
    srv.hook = lambda m, path, p: (200, {"Content-Type": "text/xml",
                                         "Content-Encoding": "gzip"}, bomb)  # fmt: skip
    s = _on(srv, sqlite_settings, max_retries=0, efetch_batch=1, max_record_bytes=1 << 16)
    limits = ParseLimits.from_settings(s)
    tracemalloc.start()
    try:
        with eutils_client(s) as client, contextlib.suppress(SourceError):
            items = efetch(client, [5], location="review", limits=limits)
            assert items == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB for one answer to one PMID"


# ---------------------------------------------------------------------------------- K7


def test_k7_an_efetch_answer_cannot_delete_or_add_pmids_nobody_asked_for(
    srv: Hostile, settings: Settings
) -> None:
    for p in (5, 6, 7):
        srv.emu.add_article(p, edat=DAY)
    srv.emu.add_article(8, edat=dt.date(2024, 1, 10))
    s = _on(srv, settings)
    ingest_window(s, SINCE, UNTIL)
    assert _live(s) == {5, 6, 7}
    stray = b'<DeleteCitation><PMID Version="1">5</PMID></DeleteCitation>\n' + article_xml(
        999, edat=dt.date(2019, 1, 1), mdat=dt.date(2019, 1, 1)
    )

    def hook(method: str, path: str, params: dict[str, str]) -> Answer:
        if path.endswith("efetch.fcgi"):
            body = srv.emu.efetch(params, None)
            return 200, {}, body.replace(b"</PubmedArticleSet>", stray + b"</PubmedArticleSet>")
        return None

    srv.hook = hook
    ingest_window(s, dt.datetime(2024, 1, 10), dt.datetime(2024, 1, 11))
    assert {p["id"] for p in srv.paths("efetch")} >= {"8"}
    assert 5 in _live(s), "an answer about PMID 8 deleted PMID 5"
    assert 999 not in _live(s), "an answer about PMID 8 stored PMID 999"


# ---------------------------------------------------------------------------------- K8


def test_k8_a_deeply_nested_icite_answer_is_a_transient_error(
    srv: Hostile, sqlite_settings: Settings
) -> None:
    s = _on(srv, sqlite_settings, max_retries=0)
    _store_articles(s, [5, 6])
    nested = b"[" * 100_000 + b"]" * 100_000
    srv.hook = lambda m, path, p: (200, {"Content-Type": "application/json"}, nested)
    with pytest.raises(TransientSourceError):
        refresh_citations(s, pmids=[5, 6])


# ---------------------------------------------------------------------------------- K9


def test_k9_two_disagreeing_icite_records_of_one_pmid_are_not_resolved_silently(
    srv: Hostile, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    s = _on(srv, settings)
    _store_articles(s, [5, 6])
    srv.hook = _icite_hook([
        _icite_row(5, citation_count=3, relative_citation_ratio=0.8),
        _icite_row(5, citation_count=900, relative_citation_ratio=40.0),
        _icite_row(6),
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ingest.citations"):
        counts = refresh_citations(s, pmids=[5, 6])
    got = _citations(s)
    assert got[6] == (4, 1.5, 2.0)
    # 36h X1: the snapshot's rule, the copies one after the other, and not silently
    assert got[5][:2] == (900, 40.0)
    assert counts.updated == 2 and "PMID 5 twice with different values" in caplog.text


# ------------------------------------------------------------------------------ guards


def test_g1_hostile_answers_are_retried_and_the_window_lands_whole(
    srv: Hostile, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for p in range(11, 21):
        srv.emu.add_article(p, edat=DAY)
    plan = {"esearch": ["html", "backend", "reset"], "efetch": ["cut", "gzipcut"]}

    def hook(method: str, path: str, params: dict[str, str]) -> Answer:
        kind = "esearch" if path.endswith("esearch.fcgi") else "efetch"
        if not plan.get(kind):
            return None
        fault = plan[kind].pop(0)
        if fault == "html":
            return 200, {"Content-Type": "text/html"}, b"<html><body>Oops</body></html>"
        if fault == "backend":
            return 200, {}, (b"<eSearchResult><ERROR>Search Backend failed: Database is not "
                             b"supported</ERROR></eSearchResult>")  # fmt: skip
        if fault == "reset":
            return RESET
        whole = srv.emu.efetch(params, None)
        cut = whole[: whole.index(b"</PubmedArticle>") + 40]  # mid-way through the second
        if fault == "cut":
            return 200, {}, cut
        return 200, {"Content-Encoding": "gzip"}, gzip.compress(whole)[:-200]

    srv.hook = hook
    s = _on(srv, settings, max_retries=3)
    counts = ingest_window(s, SINCE, UNTIL)
    assert not plan["esearch"] and not plan["efetch"]
    assert counts.inserted == 10 and counts.quarantined == 0 and counts.missing == 0
    assert _live(s) == set(range(11, 21))
    assert all(p.get("api_key") == KEY for p in srv.paths("/eutils"))
    _no_key_anywhere(s, caplog.text)


@pytest.mark.parametrize("value", ["soon", "NaN", "-5", ""])
def test_g2_a_malformed_retry_after_is_retried_with_the_backoff(
    srv: Hostile, sqlite_settings: Settings, value: str
) -> None:
    answered = iter([(429, {"Retry-After": value}, b"slow down")])
    srv.hook = lambda m, path, p: next(answered, None)
    s = _on(srv, sqlite_settings)
    slept: list[float] = []
    with HttpClient(s, s.eutils_url, sleep=slept.append) as client:
        response = client.post("esearch.fcgi", data={"db": "pubmed", "term": "all[sb]"})
    assert response.status_code == 200 and len(slept) == 1 and 0 <= slept[0] <= 0.02


def test_g2_retries_are_bounded_and_the_error_says_so(
    srv: Hostile,
    sqlite_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    srv.hook = lambda m, path, p: (429, {"Retry-After": "1e999"}, b"")
    s = _on(srv, sqlite_settings)
    with eutils_client(s) as client, pytest.raises(TransientSourceError) as err:
        client.post("esearch.fcgi", data={"db": "pubmed", "term": "all[sb]"})
    assert "not waited for" in str(err.value) and err.value.retry_after == float("inf")
    assert len(srv.paths("esearch")) == 1
    srv.hook = lambda m, path, p: (429, {"Retry-After": "0"}, b"")
    for name, value in (
        ("LITPULSE_HOME", str(s.home)),
        ("LITPULSE_EUTILS_URL", s.eutils_url),
        ("LITPULSE_NCBI_API_KEY", KEY),
        ("LITPULSE_BACKOFF_BASE", "0.01"),
        ("LITPULSE_BACKOFF_MAX", "0.02"),
        ("LITPULSE_MAX_RETRIES", "2"),
    ):
        monkeypatch.setenv(name, value)
    code = main(["ingest", "--eutils", "--since", "2024-01-03", "--until", "2024-01-03"])
    err_text = capsys.readouterr().err
    assert code == 75 and "gave up after 3 attempts" in err_text, (code, err_text)
    assert len(srv.paths("esearch")) == 1 + 3
    _no_key_anywhere(s, err_text)


def test_g3_a_pmid_efetch_keeps_leaving_out_is_counted_missing_and_owed(
    srv: Hostile, sqlite_settings: Settings
) -> None:
    for p in (5, 6, 7):
        srv.emu.add_article(p, edat=DAY)

    def hook(method: str, path: str, params: dict[str, str]) -> Answer:
        if path.endswith("efetch.fcgi"):
            asked = ",".join(x for x in params["id"].split(",") if x != "6")
            return 200, {}, srv.emu.efetch({**params, "id": asked or "0"}, None)
        return None

    srv.hook = hook
    s = _on(srv, sqlite_settings)
    counts = ingest_window(s, SINCE, UNTIL)
    assert counts.missing == 1 and _live(s) == {5, 7}
    assert [p["id"] for p in srv.paths("efetch")][:2] == ["5,6,7", "6"]
    run = Store(db.connect(s)).runs(1)[0]
    assert run["details"]["missing_pmids"] == [6]
    assert {m["pmid"] for m in Store(db.connect(s)).missing_pmids()} == {6}


def test_g4_icite_odd_values_are_nulled_or_quarantined_and_every_pmid_accounted(
    srv: Hostile, settings: Settings
) -> None:
    s = _on(srv, settings)
    _store_articles(s, [5, 6, 7, 8, 9])
    srv.hook = _icite_hook([
        _icite_row(5, relative_citation_ratio="NaN"),
        _icite_row(6, citation_count=-3),
        _icite_row(7, citation_count=10**12),
        _icite_row(999),  # not asked
        _icite_row(9), _icite_row(9),  # the same record twice
    ])  # fmt: skip
    counts = refresh_citations(s, pmids=[5, 6, 7, 8, 9])
    got = _citations(s)
    assert got[5] == (4, None, 2.0) and got[9] == (4, 1.5, 2.0)
    assert got[6] == got[7] == got[8] == (None, None, None)
    assert counts.requested == 5 and counts.updated == 2 and counts.unknown == 1
    assert counts.rejected == 2 and sorted(_icite_quarantined(s)) == [6, 7]
    assert 999 not in got
    assert KEY not in json.dumps(srv.paths("/pubs"))  # iCite is never sent the NCBI key
