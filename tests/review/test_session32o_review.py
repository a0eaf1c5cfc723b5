"""Hostile review (session 32o) of the session-32 fixes to the outside-service clients
(``ingest/http.py``, ``ingest/eutils.py``, ``ingest/citations.py``) and to the digest's
delivery channels (``litpulse/pipeline/digest.py``, ``digest_channels.py``,
``litpulse/core/text.py``, ``litpulse/core/settings.py``): regressions and holes of the
fixes K1-K9 (session 32k), I1-I3 (32i) and J1-J6 (32j).

Every test drives the real code (``ingest.eutils.ingest_window``, ``HttpClient``, the
digest's ``_deliver``, ``Settings.from_env``) against loopback servers: the 32k review's
:class:`Hostile` (answers as the emulator does unless a hook says otherwise), the 32j
review's raw TCP server :class:`_Raw`, and a small redirecting file server here; on SQLite
and PostgreSQL where a store matters. Each defect was a strict xfail asserting the correct
behaviour; all 4 were fixed in the same session and are plain tests now: O1 an EFetch
answer over its cap (``AnswerTooLargeError``) is asked again in halves by
``fetch_reconciled`` (``_efetch_bounded``), and one for a single PMID is that PMID's
quarantine entry (its first bytes, ``ingest.parse.answer_entry``), counted missing and
owed, the cap itself unchanged (K6 holds; a test of a record over the whole batch's cap
added); O2 ``HttpClient._send`` follows up to 5 redirects of a GET of a client with no
form and no secret (never https to http; a download's Range goes to the final address),
E-utilities' POSTs and keyed requests never, the error saying form or key as it is; O3 only
a receiver that could not be reached (``DeliveryError.unreachable``: no connection) is down
for the digest at once, one that took the request and did not answer is down after
``UNANSWERED_IN_A_ROW`` (2) searches in a row (so G3 and 32j's J2 test now count 2
connections, not 1: still a constant a digest, not one a search); O4 the sender is checked
at load only when ``LITPULSE_DIGEST_SMTP_HOST`` is set (32j's IDN-sender test sets it).

Defects:

O1 (regression of K6) A record larger than ``LITPULSE_MAX_RECORD_BYTES`` no longer ends
   quarantined, as the setting promises ("a larger one is quarantined with its first 64
   KiB and skipped unread"): it **fails the window, every night, for ever**. ``efetch``
   caps an answer at ``len(pmids) * max_record_bytes + 1 MiB``. The first EFetch of a
   batch reads it (the batch's cap is large), the parser quarantines the record, and
   ``fetch_reconciled`` asks for that PMID again, *alone*: now the cap is one record's
   plus 1 MiB, the answer is over it, a ``TransientSourceError``, retried
   ``max_retries`` times, and ``ingest_window`` raises; nothing of the batch is stored (the
   19 intact records with it neither), the resumed window asks the same again. Seen with
   ``max_record_bytes=65536`` (the setting's minimum) and a 1.7 MB record (14,000
   references; real records of thousands of authors are a few MB): ``efetch`` bodies 59
   ids, 1 id, 1 id; "answer over 1114112 bytes (decoded)... gave up". With the default 16
   MiB the same happens to a record over 17 MiB. Before K6 the record was quarantined,
   counted missing and owed, the other 19 stored. At fault: ``ingest/eutils.py`` ``efetch``
   (``most = len(pmids) * limits.max_record_bytes + _EFETCH_ENVELOPE``) with
   ``fetch_reconciled``'s second request. Fix: an answer over the cap for what the parser
   would quarantine anyway is no transient failure: feed the body to the parser as it
   arrives (it already skips an oversized record unread, bounded by ``max_record_bytes``)
   instead of capping the whole answer; or, at least, an answer over the cap to a request
   for one PMID is that PMID's quarantine entry ("record over max_record_bytes"), counted
   missing, never a failure of the window.
   (test_o1_a_record_over_max_record_bytes_is_quarantined_not_a_window_failing_for_ever)
O2 (regression of K2) The file-server client (``LITPULSE_PUBMED_FILES_URL``: bootstrap and
   the update files) now follows no redirect at all, though it sends no form and holds no
   secret: a mirror that answers a ``.gz`` (or its ``.md5``, or a listing) with a redirect,
   even to another path of the **same origin** (a mirror director, a storage path,
   ``/updatefiles/x`` → ``/store/x``), can never be used; a temporary one (302, 307) costs
   ``max_retries + 1`` requests with the full backoff for each file before the failure,
   whose message says "the request, its form included, would go where the answer says" of a
   GET that has no form. Before fa7f632 ``requests`` followed it. K2's reason (a redirected
   POST carries the form, ``api_key`` included, where ``Location`` says) holds for
   E-utilities' POSTs, not for a GET without secrets. At fault: ``ingest/http.py``
   ``HttpClient._send`` (``allow_redirects=False``, ``_redirected`` for every method and
   client). Fix: a GET of a client with no secrets and no form follows a redirect (a few
   hops, never ``https`` → ``http``), at least one to the same origin; the download's Range
   resume asks the final address.
   (test_o2_a_same_origin_redirect_of_a_file_download_is_followed,
   test_o2_a_same_origin_redirect_of_a_listing_get_is_followed)
O3 (regression of J2) One webhook message the receiver does not answer in time **starves
   every later saved search on that channel, night after night**. ``_deliver`` marks the
   channel down for the digest on the first ``DeliveryError.unanswered``, which is true
   for a read timeout after the request went out (``_Deadline.expired``), not only for a
   receiver that could not be reached. The next digest tries the same search first (the
   searches go by id, a tried message goes again first with its key), it times out again,
   and the later searches are skipped again: their matches never go out while that one
   message stays unanswered (a receiver whose worker hangs on one payload behind a proxy
   whose own timeout is longer than the 30 s exchange: a 504 would have come at 60 s).
   Before J2 each later search was tried and delivered. Seen: searches ``crispr`` and
   ``sepsis``, a receiver that holds the ``crispr`` POST and answers 200 to any other;
   two digests: ``posted 0``, ``sepsis`` reported "wait for the next digest, not tried"
   both times, its match pending. At fault: ``litpulse/pipeline/digest.py`` ``_deliver``
   (``down`` set from ``unanswered``) with ``digest_channels._Deadline.unanswered``
   (``expired or not reached``). Fix: only a receiver that could not be reached (no
   connection: refused, no route, unresolvable, connect timeout) is down for the digest;
   a timeout after the request went out is that message's failure (the next search is
   tried; the channel is down only after a second search times out in a row); or the
   searches a digest skipped go first in the next one.
   (test_o3_one_unanswered_webhook_message_does_not_starve_the_other_searches_for_ever)
O4 (regression of J3) ``LITPULSE_DIGEST_SMTP_FROM`` is checked when the settings load
   **even when no e-mail is sent** (``LITPULSE_DIGEST_SMTP_HOST`` empty): a deployment
   whose environment names the variable empty (``LITPULSE_DIGEST_SMTP_FROM=``: an env
   file or chart listing every variable, e-mail off) now fails **every** command at
   load (``litpulse serve``, ``search``, ``nightly``, ``status``: "ConfigError:
   LITPULSE_DIGEST_SMTP_FROM must be one mailbox ... got ''"), as does any From the
   stricter rule refuses (``digest@[10.0.0.5]``, ``a=b@lab.org``) though nothing is
   e-mailed. The other channel settings are checked only when set
   (``digest_webhook_url``). At fault: ``litpulse/core/settings.py`` ``__post_init__``
   (``sender_address(self.digest_smtp_from, ...)`` unconditional). Fix: check the sender
   only when ``digest_smtp_host`` is set (an empty From with e-mail off loads; with e-mail
   on it is refused, as now).
   (test_o4_an_unused_empty_sender_does_not_stop_every_command)

Guards (right today, must stay right):

G1 A record over ``max_record_bytes`` inside a batch's answer that fits the batch's cap is
   quarantined, the other records stored, the PMID counted missing (SQLite and
   PostgreSQL).
G2 A redirect of an E-utilities POST is never followed: the form (``api_key``) is sent
   once, to the configured address only.
G3 A webhook that never answers leaves the e-mail channel alone: every search's e-mail
   goes out the same digest (SQLite and PostgreSQL).
G4 The senders a deployment commonly uses load: ``litpulse@localhost``, ``"Lab digest"
   <digest@lab.org>``, an upper-case domain, a plus address, a comment.
G5 A gzip, deflate (zlib and raw) or two-member gzip answer, sent with a
   ``Content-Length`` or chunked, in pieces of 1 byte to 70 KB, is decoded whole.

Also tried and held (not kept as tests): a timed-out QUIT after the relay took the
message is ``SMTPServerDisconnected`` and passes (the message counts as delivered);
connections are reused between requests (one TCP connection for five GETs) though the
body is now read by hand; iCite copies differing only in number formatting (``1``,
``1.0``, ``"1.0"``, ``-0.0``) are one record; a damaged copy beside an intact one
rejects both (``_refresh``'s ``refused``); the feed's ``updated`` of a retraction (a
retraction is always a new revision of the record, so ``updated_at`` moves);
``LITPULSE_PUBLIC_URL`` with a path (``/feeds/N.atom`` appended after it). Not fixed but
noted: a 421 answer to QUIT after a 250 for the message makes the delivered e-mail a
failure, sent again next digest (pre-existing, ``smtplib.SMTP.__exit__``); the DNS look-up of
a webhook or SMTP host is outside the exchange's deadline (``getaddrinfo`` has none).
"""

from __future__ import annotations

import gzip
import random
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ingest.eutils import ingest_window
from ingest.http import HttpClient
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import ConfigError, LitpulseError
from litpulse.core.settings import Settings
from litpulse.pipeline import digest as digest_mod
from litpulse.pipeline.digest import matches_of
from litpulse.pipeline.saved_searches import add_search
from tests.emulator import article_xml
from tests.litpulse.pipeline.test_digest import CRISPR, THRESHOLD
from tests.review.test_session27_keys_review import _pending_nights
from tests.review.test_session32j_review import _Raw
from tests.review.test_session32k_review import (
    DAY,
    KEY,
    SINCE,
    UNTIL,
    Hostile,
    _live,
    _on,
)


@pytest.fixture
def srv() -> Iterator[Hostile]:
    server = Hostile()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def raw_servers() -> Iterator[list[_Raw]]:
    made: list[_Raw] = []
    yield made
    for server in made:
        server.close()


# ---------------------------------------------------------------------------------- O1

#: PMIDs of the window; BIG is the one record over max_record_bytes.
PMIDS = range(11, 31)
BIG = 20


def _window_with_a_big_record(srv: Hostile, refs: int) -> int:
    for p in PMIDS:
        srv.emu.add_article(p, edat=DAY)
    big = article_xml(BIG, edat=DAY, refs=list(range(100_000, 100_000 + refs)))
    srv.emu.add_article(BIG, edat=DAY, xml=big)
    return len(big)


def test_o1_a_record_over_max_record_bytes_is_quarantined_not_a_window_failing_for_ever(
    srv: Hostile, settings: Settings
) -> None:
    size = _window_with_a_big_record(srv, refs=14_000)
    limit = 1 << 16
    assert size > limit + (1 << 20), size  # over one record's cap plus the envelope
    s = _on(srv, settings, max_record_bytes=limit, max_retries=1)
    try:
        counts = ingest_window(s, SINCE, UNTIL)
    except LitpulseError as exc:
        pytest.fail(f"the window failed (and will every night): {exc}")
    assert _live(s) == set(PMIDS) - {BIG}
    assert counts.quarantined >= 1 and counts.missing == 1


def test_o1_a_record_over_the_whole_batch_cap_is_quarantined_too(
    srv: Hostile, settings: Settings
) -> None:
    # added with O1's fix: the batch's answer over its cap is asked again in halves
    size = _window_with_a_big_record(srv, refs=30_000)
    limit = 1 << 16
    assert size > len(PMIDS) * limit + (1 << 20), size  # over the whole batch's cap
    s = _on(srv, settings, max_record_bytes=limit, max_retries=0)
    counts = ingest_window(s, SINCE, UNTIL)
    assert _live(s) == set(PMIDS) - {BIG}
    assert counts.quarantined == 1 and counts.missing == 1
    assert {m["pmid"] for m in Store(db.connect(s)).missing_pmids()} == {BIG}


def test_g1_a_record_over_max_record_bytes_within_the_batch_cap_is_quarantined(
    srv: Hostile, settings: Settings
) -> None:
    size = _window_with_a_big_record(srv, refs=9_000)
    limit = 1 << 16
    assert limit < size < limit + (1 << 20), size
    s = _on(srv, settings, max_record_bytes=limit, max_retries=1)
    counts = ingest_window(s, SINCE, UNTIL)
    assert _live(s) == set(PMIDS) - {BIG}
    assert counts.quarantined >= 1 and counts.missing == 1
    assert {m["pmid"] for m in Store(db.connect(s)).missing_pmids()} == {BIG}


# ---------------------------------------------------------------------------------- O2


class _Mirror:
    """A file server whose ``/pubmed/updatefiles/*`` answers redirect (302) to
    ``/store/*`` of the same origin, which serves the bytes."""

    FILE = gzip.compress(b"<PubmedArticleSet></PubmedArticleSet>\n" * 50)
    LISTING = b'<html><a href="pubmed24n0001.xml.gz">pubmed24n0001.xml.gz</a></html>'

    def __init__(self) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                outer.seen.append(self.path)
                if self.path.startswith("/pubmed/updatefiles/"):
                    rest = self.path.removeprefix("/pubmed/updatefiles/")
                    self._send(302, b"", {"Location": f"/store/{rest}"})
                elif self.path == "/store/":
                    self._send(200, outer.LISTING, {"Content-Type": "text/html"})
                elif self.path.startswith("/store/"):
                    self._send(200, outer.FILE, {"Content-Type": "application/octet-stream"})
                else:
                    self._send(404, b"not found", {})

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()  # fmt: skip
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pubmed/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror() -> Iterator[_Mirror]:
    server = _Mirror()
    try:
        yield server
    finally:
        server.stop()


def _files_client(mirror: _Mirror, settings: Settings) -> HttpClient:
    s = settings.replace(pubmed_files_url=mirror.url, max_retries=2, backoff_base=0.01,
                         backoff_max=0.02)  # fmt: skip
    return HttpClient(s, s.pubmed_files_url, url_setting="LITPULSE_PUBMED_FILES_URL")


def test_o2_a_same_origin_redirect_of_a_file_download_is_followed(
    mirror: _Mirror, sqlite_settings: Settings, tmp_path: Path
) -> None:
    dest = tmp_path / "pubmed24n0001.xml.gz"
    with _files_client(mirror, sqlite_settings) as client:
        try:
            size, _ = client.download("updatefiles/pubmed24n0001.xml.gz", dest)
        except LitpulseError as exc:
            pytest.fail(f"{exc} (requests: {mirror.seen})")
    assert size == len(_Mirror.FILE) and dest.read_bytes() == _Mirror.FILE


def test_o2_a_same_origin_redirect_of_a_listing_get_is_followed(
    mirror: _Mirror, sqlite_settings: Settings
) -> None:
    with _files_client(mirror, sqlite_settings) as client:
        try:
            text = client.get("updatefiles/").text
        except LitpulseError as exc:
            pytest.fail(f"{exc} (requests: {mirror.seen})")
    assert "pubmed24n0001.xml.gz" in text


def test_g2_a_redirected_eutils_post_is_never_followed(srv: Hostile, sqlite_settings: Settings
                                                       ) -> None:  # fmt: skip
    s = _on(srv, sqlite_settings, max_retries=0)
    srv.hook = lambda m, path, p: (
        (307, {"Location": f"{srv.url}/elsewhere/esearch.fcgi"}, b"")
        if path.startswith("/eutils/") else (200, {}, b"<eSearchResult/>")
    )  # fmt: skip
    with pytest.raises(LitpulseError):
        ingest_window(s, SINCE, UNTIL)
    assert [path for _, path, _ in srv.seen if "elsewhere" in path] == []
    assert all(p.get("api_key") == KEY for _, _, p in srv.seen)


# ---------------------------------------------------------------------------------- O3


def _request_body(conn: socket.socket) -> bytes:
    """One HTTP request read whole; its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def _webhook_holding(word: bytes, hold: threading.Event) -> _Raw:
    """A webhook that never answers a POST whose body holds ``word`` and answers 200 to
    any other."""

    def serve(conn: socket.socket) -> None:
        body = _request_body(conn)
        if word in body:
            hold.wait(30)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    return _Raw(serve)


def test_o3_one_unanswered_webhook_message_does_not_starve_the_other_searches_for_ever(
    settings: Settings, raw_servers: list[_Raw]
) -> None:
    hold = threading.Event()
    server = _webhook_holding(b'"crispr"', hold)
    raw_servers.append(server)
    try:
        s = settings.replace(digest_webhook_url=server.url, http_timeout=0.5)
        engine = db.connect(s)
        first = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="cli:a")
        later = add_search(s, name="sepsis", query=CRISPR, min_score=THRESHOLD, owner="cli:b")
        _pending_nights(s, first, nights=1, per_night=1, first_pmid=9_200_000, lean=True)
        _pending_nights(s, later, nights=1, per_night=1, first_pmid=9_300_000, lean=True)
        posted = 0
        for _ in range(2):  # two nights
            posted += digest_mod._deliver(s, engine)[1]
        waiting = {m.pmid for m in matches_of(engine, later.id, pending="webhook")}
        assert posted == 1 and not waiting, (
            f"after two digests 'sepsis' still waits ({waiting}): the 'crispr' message "
            "that times out marks the webhook down first, every night"
        )
    finally:
        hold.set()


def _smtp_server(taken: list[bytes]) -> _Raw:
    """An SMTP server taking every message (its data into ``taken``)."""

    def serve(conn: socket.socket) -> None:
        f = conn.makefile("rb")
        conn.sendall(b"220 relay ESMTP\r\n")
        while line := f.readline():
            cmd = line[:4].upper()
            if cmd in (b"EHLO", b"HELO"):
                conn.sendall(b"250 relay\r\n")
            elif cmd == b"DATA":
                conn.sendall(b"354 go\r\n")
                data = b""
                while (part := f.readline()) not in (b".\r\n", b""):
                    data += part
                taken.append(data)
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif cmd == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")

    return _Raw(serve)


def test_g3_a_webhook_down_leaves_every_searchs_email_going(
    settings: Settings, raw_servers: list[_Raw]
) -> None:
    hold = threading.Event()
    hook = _webhook_holding(b"", hold)  # holds every POST
    taken: list[bytes] = []
    relay = _smtp_server(taken)
    raw_servers += [hook, relay]
    try:
        s = settings.replace(digest_webhook_url=hook.url, http_timeout=0.5,
                             digest_smtp_host="127.0.0.1", digest_smtp_port=relay.port,
                             digest_smtp_to="lab@lab.example.org")  # fmt: skip
        engine = db.connect(s)
        searches = [add_search(s, name=n, query=CRISPR, min_score=THRESHOLD, owner=f"cli:{n}")
                    for n in ("crispr", "sepsis", "asthma")]  # fmt: skip
        for i, search in enumerate(searches):
            _pending_nights(s, search, nights=1, per_night=1, first_pmid=9_400_000 + 10 * i,
                            lean=True)  # fmt: skip
        emailed, posted, _, _ = digest_mod._deliver(s, engine)
        assert (emailed, posted) == (3, 0) and len(taken) == 3
        assert hook.accepted == 2  # O3's fix: down after two unanswered searches in a row
        for search in searches:
            assert not matches_of(engine, search.id, pending="email")
            assert len(matches_of(engine, search.id, pending="webhook")) == 1
    finally:
        hold.set()


# ---------------------------------------------------------------------------------- O4


def test_o4_an_unused_empty_sender_does_not_stop_every_command() -> None:
    try:
        s = Settings.from_env({"LITPULSE_DIGEST_SMTP_FROM": ""})
    except ConfigError as exc:
        pytest.fail(f"e-mail is off, yet the settings do not load: {exc}")
    assert not s.digest_smtp_host


def test_o4_guard_a_bad_sender_is_refused_when_e_mail_is_on() -> None:
    with pytest.raises(ConfigError, match="LITPULSE_DIGEST_SMTP_FROM"):
        Settings.from_env({"LITPULSE_DIGEST_SMTP_HOST": "relay.lab.example.org",
                           "LITPULSE_DIGEST_SMTP_FROM": ""})  # fmt: skip


@pytest.mark.parametrize(("sender", "address"), [
    ("litpulse@localhost", "litpulse@localhost"),
    ('"Lab digest" <digest@lab.org>', "digest@lab.org"),
    ("Lab digest <digest@lab.org>", "digest@lab.org"),
    ("digest@LAB.ORG", "digest@LAB.ORG"),
    ("digest+pulse@mail.lab.co.uk", "digest+pulse@mail.lab.co.uk"),
    ("digest@lab.org (litpulse)", "digest@lab.org"),
])  # fmt: skip
def test_g4_common_senders_load_and_name_the_message_id_domain(sender: str, address: str
                                                               ) -> None:  # fmt: skip
    from litpulse.pipeline.digest_channels import email_message
    from tests.review.test_session32j_review import _match, _search

    s = Settings.from_env({"LITPULSE_DIGEST_SMTP_HOST": "relay.lab.example.org",
                           "LITPULSE_DIGEST_SMTP_FROM": sender})  # fmt: skip
    msg = email_message(s, _search(), [_match()], to=["ann@lab.example.org"])
    assert msg["Message-ID"].endswith("@" + address.rpartition("@")[2] + ">")


# ------------------------------------------------------------------------------ G5

_PAYLOAD = random.Random(5).randbytes(4_000).hex().encode() + b"x" * 20_000


def _encoded(kind: str) -> tuple[str, bytes]:
    if kind == "gzip":
        return "gzip", gzip.compress(_PAYLOAD)
    if kind == "deflate":
        return "deflate", zlib.compress(_PAYLOAD)
    if kind == "raw-deflate":
        c = zlib.compressobj(wbits=-15)
        return "deflate", c.compress(_PAYLOAD) + c.flush()
    return "gzip", gzip.compress(_PAYLOAD[:1000]) + gzip.compress(_PAYLOAD[1000:])


class _Pieces:
    """A server sending ``mode``'s encoded payload in random pieces."""

    mode: tuple[str, bool, int] = ("gzip", False, 1)

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                kind, chunked, most = outer.mode
                encoding, body = _encoded(kind)
                self.send_response(200)
                self.send_header("Content-Encoding", encoding)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                rng, at = random.Random(most), 0
                while at < len(body):
                    piece = body[at : at + rng.randint(1, most)]
                    at += len(piece)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    self.wfile.flush()
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()  # fmt: skip
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"


def test_g5_encoded_answers_are_decoded_whole_for_every_chunking(
    sqlite_settings: Settings,
) -> None:
    server = _Pieces()
    try:
        s = sqlite_settings.replace(max_retries=0, http_timeout=20.0)
        with HttpClient(s, server.url, rate=50) as client:
            for kind in ("gzip", "deflate", "raw-deflate", "gzip-2-members"):
                for chunked in (False, True):
                    for most in (1, 7, 300, 70_000):
                        server.mode = (kind, chunked, most)
                        t0 = time.monotonic()
                        body = client.get("x").content
                        assert body == _PAYLOAD, (kind, chunked, most, len(body))
                        assert time.monotonic() - t0 < 20
    finally:
        server.server.shutdown()
        server.server.server_close()

