"""Hostile review (session 32j) of saved searches, the digest and its delivery channels
(litpulse/pipeline/digest.py, digest_channels.py, saved_searches.py, alerts.py,
litpulse/app/alerts_api.py, the CLI's ``alerts`` commands).

Every test drives the real code: the channel functions against raw loopback servers (a
webhook or SMTP server that drips its answer, one that never answers, one that answers no
HTTP), the digest's real delivery (``digest._deliver``, what ``run_digest`` does after
recording) with matches written as a digest writes them (``_pending_nights`` of the
session-27 keys review), the real ``Store`` for a retraction, the CLI's ``main``; on
SQLite and PostgreSQL where a store matters. Each defect was a strict xfail asserting the
correct behaviour; all 6 were fixed in the same session and are plain tests now: J1 each
exchange runs under a monotonic ``_Deadline`` whose time left is every connect, read and
write's socket timeout (TLS too), running out a ``DeliveryError`` failure; J2 a receiver
that could not be reached or did not answer in time (``DeliveryError.unanswered``, not a
5xx) is not tried again that digest, each later search's matches on that channel wait,
reported; J3 ``LITPULSE_DIGEST_SMTP_FROM`` is checked when the settings load
(``text.sender_address``: one mailbox as the e-mail library reads it, its address a
``plain_mailbox``, ``localhost`` allowed) and the ``Message-ID`` takes that address's
domain; J4 ``post_webhook`` catches ``http.client.HTTPException`` as a failure; J5 a
retracted match's ``updated`` (``Match.updated``) is the later of ``found_at`` and its
article's last write (``articles.updated_at``: the store records no other retraction
time); J6 ``alerts edit`` refuses filter options without ``--replace-filters`` (exit 2,
naming it).

Defects:

J1 No deadline for one delivery: a webhook or SMTP server that drips its answer (a byte
   every quarter second: a stuck proxy, a tarpit, an overloaded relay) holds the digest
   for as long as it drips, for ever if it never stops. ``MAX_DELIVERY_TIMEOUT_S`` says
   "Seconds an SMTP or webhook exchange may take at most", but ``post_webhook``
   (``urllib``) and ``send_email`` (``smtplib``) pass the timeout as a *socket* timeout,
   which bounds each read, not the exchange. The digest holds the ``digest`` lease and,
   under ``litpulse nightly``, the ``nightly`` lease, both renewed by their heartbeat
   threads while it hangs: every later nightly (ingest, index, digest) and every ``alerts
   run`` is refused as busy ("another digest is running") until someone kills the process.
   Seen: a 200 whose header drips for 4 s with ``LITPULSE_HTTP_TIMEOUT=0.3`` takes 4 s and
   counts as delivered; an SMTP greeting dripped for 4 s takes 4 s.
   At fault: digest_channels.py ``post_webhook``, ``send_email``. Fix: an overall deadline
   per exchange (a monotonic deadline checked by a socket wrapper / ``settimeout`` of the
   time left before each read, or the exchange in a worker abandoned at the deadline),
   raising ``DeliveryError`` (a failure, not a refusal: the message goes again with its key).
   (test_a_webhook_that_drips_its_answer_fails_within_the_timeout,
   test_an_smtp_server_that_drips_its_greeting_fails_within_the_timeout)
J2 A receiver that does not answer costs every saved search a full timeout, every night:
   ``_deliver`` tries the channel for each search in turn, and a timeout stops only that
   search's messages. With the defaults (``LITPULSE_HTTP_TIMEOUT`` 60, capped at 30 s) and
   120 saved searches (two experts at ``LITPULSE_ALERTS_PER_EXPERT``'s 100 hold 200) a
   black-holed webhook keeps the digest 60 minutes in ``connect``/``recv`` — the
   ``digest`` task's ``execution_timeout`` of the ``litpulse_index_refresh`` DAG is 1 h:
   the task is killed every night the webhook is down, and the e-mails of the searches it
   had not reached (each search's e-mail goes just before its webhook) are not sent those
   nights either, though the SMTP server is fine. Under ``litpulse nightly`` the run holds
   the ``nightly`` lease that long. Seen: 3 searches, a webhook that accepts and never
   answers, timeout 0.5 s: 3 connections, 1.5 s.
   At fault: digest.py ``_deliver`` / ``_deliver_channel`` (the ``break`` is per search).
   Fix: a receiver that could not be reached or timed out (not one that answered: a 5xx can
   be one payload's) is not tried again this digest; the other searches' messages wait,
   each reported, as the later messages of one search wait now.
   (test_a_webhook_that_never_answers_is_waited_for_once_a_digest_not_once_a_search)
J3 ``LITPULSE_DIGEST_SMTP_FROM`` is not checked, and the ``Message-ID`` (the key a mail
   system drops a repeat by: README) is built from it by ``rpartition("@")``:
   ``digest@lab.example.org (litpulse)`` — an RFC 5322 address with a comment — gives
   ``<litpulse-digest-KEY@lab.example.org (litpulse)>``, which the e-mail library's
   msg-id parser drops: the message goes out with an **empty** ``Message-ID:`` (a comment
   of two words happens to survive), and a resend after a kill or a timeout cannot be told
   from the first. ``digest@universität.example`` (an IDN
   domain) makes every e-mail fail with ``UnicodeEncodeError`` (a traceback in the log each
   night, nothing ever e-mailed) while the setting loads fine.
   At fault: digest_channels.py ``email_message`` (``settings.digest_smtp_from
   .rpartition("@")``), settings.py (no check of the sender). Fix: the domain of
   ``email.utils.parseaddr(from)[1]``, IDNA-encoded (or the setting refused when it is no
   ASCII mailbox, as ``tokens create --email`` refuses one: ``plain_mailbox``).
   (test_a_sender_with_a_comment_keeps_the_message_id,
   test_a_sender_with_an_idn_domain_is_refused_or_works)
J4 A webhook that answers something other than HTTP (``ICY 200 OK``, a status line of
   garbage, a header line over 64 KiB: a TLS port, a misconfigured proxy) makes
   ``post_webhook`` raise ``http.client.BadStatusLine`` / ``LineTooLong``, not the
   ``DeliveryError`` its docstring promises ("Raises: DeliveryError: No 2xx answer"): the
   digest logs a traceback (``logger.exception``) for the receiver's fault and reports
   "BadStatusLine: ..." instead of "webhook POST failed: ...". At fault: ``post_webhook``
   catches ``OSError`` and ``ValueError`` only; ``http.client.HTTPException`` is neither.
   Fix: catch ``http.client.HTTPException`` too, as a failure (not a refusal).
   (test_a_webhook_answering_no_http_is_a_delivery_error)
J5 A retraction after a feed reader fetched an entry never reaches the reader: the entry's
   ``<updated>`` stays the match's ``found_at`` while its title becomes ``[Retracted]
   ...``. RFC 4287: ``updated`` is the last time the entry changed "in a way the publisher
   considers significant"; feed readers (and their caches) keep an entry whose id and
   ``updated`` they have, so the README's "one whose article is retracted (then or since)
   says so in the feed" holds only for a reader who had not fetched it yet — and the e-mail
   and webhook, sent before the retraction, never say so. At fault: digest_channels.py
   ``atom_feed`` (``updated`` = ``found_at``), digest.py ``matches_of`` (no article time
   read). Fix: an entry's ``updated`` is the later of ``found_at`` and the time the
   article's retraction was stored (its ``updated_at`` when retracted).
   (test_a_retraction_since_the_match_moves_the_feed_entrys_updated)
J6 ``litpulse alerts edit NAME --min-score 0.7 --mesh Humans --language eng`` exits 0,
   says "edited", and drops the filters without a word (they apply only with
   ``--replace-filters``): the user believes the search is now limited to human studies
   in English. ``alerts edit NAME --mesh Humans`` alone is refused with "nothing to change:
   give a query, filters or a threshold" — filters were given. At fault:
   litpulse/app/cli/alerts.py ``run_edit`` (``filters_from_args`` read only with
   ``--replace-filters``). Fix: filter options without ``--replace-filters`` are a usage
   error (exit 2) naming it.
   (test_alerts_edit_does_not_drop_filter_options_silently)

Guards (right today, must stay right):

G1 A webhook answering a redirect is never followed: one POST, no GET, a failure (not a
   refusal) naming the new address; the matches stay pending with their key.
G2 An Atom feed of hostile article text (XML 1.0-forbidden characters, ``]]>``, ``<``,
   ``&``, a 20,000-character title, a search name and query stripped of controls) is
   well-formed XML and a valid Atom feed, every character XML allows kept.
G3 Two digests at once: a digest while another holds the ``digest`` lease raises
   ``DigestBusyError`` and writes nothing; ``digest_step`` reports it, never raises.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import insert, select

from ingest.store import Store
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import digest_matches, saved_searches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from litpulse.pipeline import digest as digest_mod
from litpulse.pipeline.digest import DigestBusyError, digest_step, feed_for, matches_of, run_digest
from litpulse.pipeline.digest_channels import (
    ATOM_NS,
    DeliveryError,
    Match,
    delivery_key,
    email_message,
    post_webhook,
    send_email,
)
from litpulse.pipeline.saved_searches import SavedSearch, add_search
from ranking.search import SearchFilters
from tests.ingest.test_store import make_record, src
from tests.litpulse.pipeline.test_digest import CRISPR, THRESHOLD
from tests.review.test_session27_keys_review import _pending_nights

NOW = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)


def _search(name: str = "crispr", sid: int = 7) -> SavedSearch:
    """A saved search as the channels are handed one (no store needed)."""
    return SavedSearch(
        id=sid,
        name=name,
        query=CRISPR,
        filters=SearchFilters(),
        min_score=THRESHOLD,
        owner="alice",
        created_at=NOW,
        watermark=NOW,
    )


def _match(pmid: int = 9_000_001, mid: int = 1, title: str = "CRISPR study") -> Match:
    return Match(
        id=mid,
        search_id=7,
        pmid=pmid,
        title=title,
        score=0.7,
        index_version="v1",
        model_version="m1",
        found_at=NOW,
        explanation={"text": "cosine 0.71"},
    )


class _Raw:
    """A loopback TCP server running ``serve(conn)`` for each connection, in a thread of
    its own; counts the connections it accepted."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []

        def loop() -> None:
            self.sock.settimeout(0.1)
            while not self.stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                except (TimeoutError, OSError):
                    continue
                self.accepted += 1
                self.conns.append(conn)
                threading.Thread(target=self._run, args=(serve, conn), daemon=True).start()

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    @staticmethod
    def _run(serve: Callable[[socket.socket], None], conn: socket.socket) -> None:
        try:
            serve(conn)
        except OSError:
            pass  # the client gave up: what a deadline does

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request (headers and its Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
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
            return
        body += chunk


def _drip(conn: socket.socket, first: bytes, seconds: float, last: bytes) -> None:
    """Send ``first``, then one byte every 0.1 s for ``seconds``, then ``last``."""
    conn.sendall(first)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.sendall(b"x")
        time.sleep(0.1)
    conn.sendall(last)


@pytest.fixture
def raw_servers() -> Iterator[list[_Raw]]:
    made: list[_Raw] = []
    yield made
    for server in made:
        server.close()


DRIP_S = 4.0  # how long the receiver drips
TIMEOUT_S = 0.3  # LITPULSE_HTTP_TIMEOUT of these tests: an exchange's most
MARGIN_S = 1.5  # connection set-up, a loaded CI machine


# ------------------------------------------------------------------------------ J1


def test_a_webhook_that_drips_its_answer_fails_within_the_timeout(
    sqlite_settings: Settings, raw_servers: list[_Raw]
) -> None:
    def serve(conn: socket.socket) -> None:
        _read_request(conn)
        _drip(
            conn,
            b"HTTP/1.1 200 OK\r\nX-Slow: ",
            DRIP_S,
            b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )

    server = _Raw(serve)
    raw_servers.append(server)
    s = sqlite_settings.replace(digest_webhook_url=server.url, http_timeout=TIMEOUT_S)
    t0 = time.monotonic()
    outcome = "delivered"
    try:
        post_webhook(s, _search(), [_match()])
    except DeliveryError as exc:
        outcome = f"DeliveryError: {exc}"
    took = time.monotonic() - t0
    assert took < TIMEOUT_S + MARGIN_S, f"{outcome} after {took:.1f} s"
    assert outcome.startswith("DeliveryError"), outcome


def test_an_smtp_server_that_drips_its_greeting_fails_within_the_timeout(
    sqlite_settings: Settings, raw_servers: list[_Raw]
) -> None:
    server = _Raw(lambda conn: _drip(conn, b"220 ", DRIP_S, b"\r\n"))
    raw_servers.append(server)
    s = sqlite_settings.replace(digest_smtp_host="127.0.0.1", digest_smtp_port=server.port,
                                http_timeout=TIMEOUT_S)  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(DeliveryError):
        send_email(s, _search(), [_match()], to=["ann@lab.example.org"])
    took = time.monotonic() - t0
    assert took < TIMEOUT_S + MARGIN_S, f"the e-mail failed after {took:.1f} s"


# ------------------------------------------------------------------------------ J2


def test_a_webhook_that_never_answers_is_waited_for_once_a_digest_not_once_a_search(
    settings: Settings, raw_servers: list[_Raw]
) -> None:
    hold = threading.Event()

    def serve(conn: socket.socket) -> None:  # takes the request, never answers
        _read_request(conn)
        hold.wait(30)

    server = _Raw(serve)
    raw_servers.append(server)
    try:
        s = settings.replace(digest_webhook_url=server.url, http_timeout=0.5)
        engine = db.connect(s)
        names = ("crispr", "sepsis", "asthma")
        searches = [add_search(s, name=n, query=CRISPR, min_score=THRESHOLD, owner=f"cli:{n}")
                    for n in names]  # fmt: skip
        want = {}
        for i, search in enumerate(searches):
            want[search.id] = _pending_nights(
                s, search, nights=1, per_night=1, first_pmid=9_100_000 + 10 * i, lean=True
            )
        _, posted, failures, _ = digest_mod._deliver(s, engine)
        # nothing lost: every search's match waits, each search's waiting is reported
        assert posted == 0
        for search in searches:
            assert {m.pmid for m in matches_of(engine, search.id, pending="webhook")} == (
                want[search.id]
            )
            assert any(repr(search.name) in line for line in failures), (search.name, failures)
        # 2, not 1: one that takes the request and never answers is down after two
        # searches in a row (session 32o, O3: one stuck message must starve no other)
        assert server.accepted == 2, (
            f"the webhook that never answered was waited for {server.accepted} times in one "
            "digest (once a saved search)"
        )
    finally:
        hold.set()


# ------------------------------------------------------------------------------ J3


def test_a_sender_with_a_comment_keeps_the_message_id() -> None:
    s = Settings.from_env({"LITPULSE_DIGEST_SMTP_FROM": "digest@lab.example.org (litpulse)"})
    search, matches = _search(), [_match()]
    msg = email_message(s, search, matches, to=["ann@lab.example.org"])
    line = next(raw for raw in msg.as_bytes().split(b"\n") if raw.startswith(b"Message-ID:"))
    assert delivery_key(search, matches).encode() in line, line
    assert line.strip().endswith(b"@lab.example.org>"), line


def test_a_sender_with_an_idn_domain_is_refused_or_works() -> None:
    try:
        # e-mail on: the sender is checked at load only then (session 32o, O4)
        s = Settings.from_env({
            "LITPULSE_DIGEST_SMTP_HOST": "relay.lab.example.org",
            "LITPULSE_DIGEST_SMTP_FROM": "digest@universität.example",
        })
    except ConfigError:
        return  # refused when the settings load: the operator is told at once
    msg = email_message(s, _search(), [_match()], to=["ann@lab.example.org"])
    msg.as_bytes()  # what smtplib sends


# ------------------------------------------------------------------------------ J4


def test_a_webhook_answering_no_http_is_a_delivery_error(
    sqlite_settings: Settings, raw_servers: list[_Raw]
) -> None:
    def serve(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(b"ICY 200 OK\r\n\r\n")
        conn.close()

    server = _Raw(serve)
    raw_servers.append(server)
    s = sqlite_settings.replace(digest_webhook_url=server.url, http_timeout=5.0)
    with pytest.raises(DeliveryError) as caught:
        post_webhook(s, _search(), [_match()])
    assert not caught.value.refused  # not the message's fault: it goes again, with its key


# ------------------------------------------------------------------------------ J5


def _entry_times(feed: bytes) -> dict[str, tuple[str, str]]:
    """Each entry's id: (title, updated)."""
    root = ET.fromstring(feed)
    ns = {"a": ATOM_NS}
    return {
        e.findtext("a:id", namespaces=ns) or "": (
            e.findtext("a:title", namespaces=ns) or "",
            e.findtext("a:updated", namespaces=ns) or "",
        )
        for e in root.findall("a:entry", ns)
    }


def test_a_retraction_since_the_match_moves_the_feed_entrys_updated(settings: Settings) -> None:
    s = settings
    engine = db.connect(s)
    pmid = 9_200_001
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="cli:al")
    store = Store(engine)
    store.apply([make_record(pmid, title="CRISPR editing of HBB", source=src(1))])
    found = utcnow() - dt.timedelta(hours=1)  # last night's digest
    with engine.begin() as conn:
        conn.execute(insert(digest_matches).values(
            search_id=search.id, pmid=pmid, title="CRISPR editing of HBB", score=0.7,
            explanation={"text": "cosine 0.71"}, index_version="v1", model_version="m1",
            found_at=found,
        ))  # fmt: skip
    url = f"http://127.0.0.1:8000/feeds/{search.id}.atom"
    before = _entry_times(feed_for(s, search.id, self_url=url, engine=engine))
    # PubMed retracts it: a revision flagged retracted, a later update file
    store.apply([make_record(pmid, title="CRISPR editing of HBB", retracted=True,
                             revised=dt.date(2026, 11, 30), source=src(2))])  # fmt: skip
    after = _entry_times(feed_for(s, search.id, self_url=url, engine=engine))
    assert before.keys() == after.keys() and len(after) == 1
    (entry,) = after
    assert after[entry][0].startswith("[Retracted]")  # the document says so (held)
    assert after[entry][1] > before[entry][1], (
        f"the entry changed (now {after[entry][0]!r}) but its <updated> did not "
        f"({after[entry][1]}): a reader holding it keeps the old one"
    )


# ------------------------------------------------------------------------------ J6


def test_alerts_edit_does_not_drop_filter_options_silently(
    env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    search = add_search(env, name="crispr", query=CRISPR, owner="cli:al")
    code = main(["alerts", "edit", "crispr", "--min-score", "0.7", "--mesh", "Humans",
                 "--language", "eng"])  # fmt: skip
    capsys.readouterr()
    with db.connect(env).connect() as conn:
        filters = conn.execute(
            select(saved_searches.c.filters).where(saved_searches.c.id == search.id)
        ).scalar_one()
    applied = filters.get("mesh") == ["Humans"] and filters.get("language") == "eng"
    assert applied or code == 2, (
        f"exit {code}, filters {filters}: the --mesh and --language given were dropped"
    )


# ------------------------------------------------------------------------------ guards


def test_g1_a_webhook_redirect_is_never_followed(
    settings: Settings, raw_servers: list[_Raw]
) -> None:
    methods: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        first = conn.recv(8)
        methods.append(first.split(b" ")[0])
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:9/new\r\n"
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip
        conn.close()

    server = _Raw(serve)
    raw_servers.append(server)
    s = settings.replace(digest_webhook_url=server.url, http_timeout=5.0)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="cli:al")
    want = _pending_nights(s, search, nights=1, per_night=2, lean=True)
    _, posted, failures, _ = digest_mod._deliver(s, engine)
    assert posted == 0 and methods == [b"POST"]
    assert any("http://127.0.0.1:9/new" in f and "not followed" in f for f in failures), failures
    pending = matches_of(engine, search.id, pending="webhook")
    assert {m.pmid for m in pending} == want
    assert {m.attempt for m in pending} == {delivery_key(search, pending)}
    assert not any(m.refused_at for m in pending)


def test_g2_a_feed_of_hostile_article_text_is_well_formed_atom(settings: Settings) -> None:
    import feedparser

    s = settings
    engine = db.connect(s)
    search = add_search(s, name="crispr <&> ]]>", query=CRISPR + " ]]>", min_score=THRESHOLD,
                        owner="cli:al")  # fmt: skip
    pmids = sorted(_pending_nights(s, search, nights=1, per_night=3, lean=True))
    hostile = {
        pmids[0]: "A \x01\x08\x0b\x0c\x1f bad ]]> <b>&amp; \ufffe\uffff title",
        pmids[1]: "Long " + "x" * 20_000,
        pmids[2]: "Tab\there, CR\r, NEL\x85, emoji 🧬, ] ]> ]]]]>",
    }
    with engine.begin() as conn:
        for pmid, title in hostile.items():
            conn.execute(
                digest_matches.update()
                .where(digest_matches.c.pmid == pmid)
                .values(title=title, explanation={"text": f"cosine 0.7 {title[:40]}"})
            )
    feed = feed_for(s, search.id, self_url=f"http://127.0.0.1:8000/feeds/{search.id}.atom",
                    engine=engine)  # fmt: skip
    root = ET.fromstring(feed)  # well-formed XML 1.0
    parsed = feedparser.parse(feed)
    assert not parsed.bozo, parsed.get("bozo_exception")
    titles = {e.title for e in parsed.entries}
    assert "A  bad ]]> <b>&amp;  title" in titles
    assert "Long " + "x" * 20_000 in titles
    assert any("emoji 🧬" in t and "]]]]>" in t for t in titles)
    assert root.findtext(f"{{{ATOM_NS}}}title") == "litpulse: crispr <&> ]]>"


def test_g3_a_second_digest_at_once_is_refused_and_writes_nothing(settings: Settings) -> None:
    s = settings
    engine = db.connect(s)
    add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="cli:al")
    other = db.acquire_lease(engine, digest_mod.LEASE_NAME, holder="other-host:4242:digest")
    assert other is not None
    try:
        with pytest.raises(DigestBusyError):
            run_digest(s, engine=engine)
        report = digest_step(s)
        assert report["skipped"] and "DigestBusyError" in report["skipped"]
        with engine.connect() as conn:
            assert conn.execute(select(saved_searches.c.last_digest_at)).scalar() is None
    finally:
        other.release()
