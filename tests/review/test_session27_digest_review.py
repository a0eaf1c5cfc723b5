"""Hostile review (session 27): does every new article that matches a saved search reach
each configured channel exactly once, and is none silently lost?

Code under review: litpulse/pipeline/digest.py, digest_channels.py, saved_searches.py.
Real paths only where they are cheap: articles through ``Store.apply`` or the corpus rows
of tests/ranking/corpus.py, the index through ``refresh_index`` (bundled model), digests
through ``run_digest``, e-mail through an aiosmtpd sink and webhooks through
``http.server``, all on 127.0.0.1. A kill is a ``BaseException`` raised right after a
channel sent (nothing of the digest's own ``except`` clauses catches it).

Defects (each first a strict xfail asserting the correct behaviour; all fixed since, the
xfail marks removed: the cap counts only matches not recorded before; a message's key is
recorded with its matches before it goes out, a message not known to have gone out goes
again whole with it, and matches never handed on go in one new message after it; a
redirect is a failure that names the new address; a header holds no control character
and any error of one search's delivery is reported, never raised; a new search's
watermark is the newest write time committed; the feed is paged (RFC 5005); long non-
ASCII subjects are encoded here):

D1 A revision of an article already matched takes a slot of
   ``LITPULSE_DIGEST_MAX_MATCHES``: ``_digest_one`` caps ``passing`` (every hit above
   the threshold, matched before or not) before ``db.upsert`` drops the ones recorded
   already, so a new article within the cap is dropped for ever (the watermark moves
   past it) while the digest reports 0 new matches and warns "the best N were recorded".
   MEDLINE revises every new citation weeks later (the README's own reason for taking
   revisions as new), so a busy search loses new articles to its old matches' revisions.
D2 A digest killed between sending and stamping sends the matches again with another key
   as soon as anything else joined them: ``delivery_key`` hashes the whole pending set,
   and ``_deliver`` sends the old pending matches together with those the next digest
   found. The README promises "sends that again, with the same key ... so a receiver can
   drop the repeat"; the receiver gets the old articles twice under two keys.
D3 A webhook answering ``301``/``302`` to the POST: urllib re-issues it as a bodiless GET,
   the GET answers 200, and ``post_webhook`` takes that for a delivery: the matches are
   stamped ``webhook_sent_at`` and never reach anyone (digest_channels.post_webhook).
D4 A saved search whose name holds CR/LF (stored before control characters were refused:
   the case ``feed_for`` and tests/litpulse/app/test_alerts.py keep working for): the
   e-mail library refuses the Subject with a ``ValueError`` raised outside
   ``send_email``'s ``try``, so it escapes ``_deliver`` and ``run_digest``: every other
   search's e-mail and webhook, that night and every night after, is not delivered.
D5 (PostgreSQL) A search saved while an ingest batch is being written: the batch's rows
   are stamped ``db_now`` when the batch starts, the search's watermark is ``db_now``
   when it is saved, and the batch commits after the save. Those articles appear in the
   store after the search exists, yet are behind its watermark: never new for it, never
   delivered (saved_searches.add_search; digest._new_articles compares ``updated_at >
   watermark``).
D6 The Atom feed lists only the newest ``FEED_ENTRIES`` (200) matches and says nothing of
   the others (no paging link, no count): one digest may record up to
   ``LITPULSE_DIGEST_MAX_MATCHES`` (up to 10,000) for a search, and a feed reader
   polling after it silently misses all but 200 (digest.feed_for). (The matches are
   written as such a digest writes them, not through one: 250 embedded articles cost
   more than this file may.)
D7 A long non-ASCII search name (a 130-character Russian or French name: names may have
   255) is folded by ``EmailMessage`` into RFC 2047 encoded words with some spaces of the
   name left *between* encoded words, where every reader drops them: the Subject reads
   "клеточнойтерапии", "géniquesà" (digest_channels.email_message; CPython's folding,
   but litpulse's e-mail). Names under ~60 characters read back intact.

Attacks that held (plain tests):

H1 One channel down, the other up: the webhook gets the matches once, the e-mail is
   retried by the next digest and sent once, the webhook is not repeated.
H2 A webhook that takes the body and answers after the client's timeout: reported as a
   failure, re-sent with the same ``Idempotency-Key``/``delivery`` (nothing joined it),
   then never again.
H3 Two digests at once: the second (started while the first waits on the webhook) is
   refused with ``DigestBusyError`` and delivers nothing; the first delivers once.
H4 Headers and encoding: a short non-ASCII search name reads back exactly as the Subject,
   no header is added; an article title with CR/LF, a lone ``.`` line (SMTP's end of data)
   and an ``RCPT TO:`` arrives inside one message, every match listed, no other recipient.
H5 An article retracted between matching and delivery goes out once, marked retracted on
   both channels; an article revised after its delivery is not sent again.
H6 A search removed and saved again under the same name between digests: the new one
   gets none of the old one's matches, the old pending ones are sent to nobody.
H7 A digest killed between matching and storing (inside the transaction that records the
   matches and moves the watermark): nothing recorded, the watermark unmoved, the re-run
   records and sends both matches once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import feedparser
import pytest
from sqlalchemy import insert, select

from ingest.records import SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import article_terms, articles, digest_matches, saved_searches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from litpulse.pipeline import digest as digest_mod
from litpulse.pipeline.digest import DigestBusyError, feed_for, matches_of, run_digest
from litpulse.pipeline.saved_searches import add_search, remove_search
from ranking.refresh import refresh_index
from ranking.search import run_search
from tests.conftest import _truncate, free_port
from tests.ingest.test_store import make_record
from tests.litpulse.pipeline.test_digest import (
    CRISPR,
    OLD,
    THRESHOLD,
    _Hook,
    _Inbox,
    _load,
    _matched,
)
from tests.ranking.corpus import ARTICLES, article_rows, term_rows


def crispr_world(s: Settings) -> Settings:
    """``s`` with the OLD corpus articles stored and indexed (bundled model)."""
    _load(db.connect(s), OLD)
    assert refresh_index(s).size == len(OLD)
    return s


@pytest.fixture
def world(sqlite_settings: Settings) -> Settings:
    """The OLD corpus articles stored and indexed (bundled model), on SQLite."""
    return crispr_world(sqlite_settings)


class _Killed(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs."""


def _scores(s: Settings) -> dict[int, float]:
    return {h.pmid: h.score for h in run_search(s, CRISPR, k=50, mode="semantic").hits}


def _smtp(s: Settings, inbox: Any) -> tuple[Settings, Any]:
    from aiosmtpd.controller import Controller

    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    return s.replace(digest_smtp_host="127.0.0.1", digest_smtp_port=port,
                     digest_smtp_from="lp@example.org",
                     digest_smtp_to="team@example.org"), controller  # fmt: skip


# ------------------------------------------------------------------------- defects


def test_a_revised_old_match_does_not_push_a_new_article_out_of_the_cap(world: Settings) -> None:
    s = world.replace(digest_max_matches=2)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 104})
    assert refresh_index(s).published
    first = run_digest(s)
    assert first.matched == 2 and not first.warnings  # at the cap, nothing cut
    # MEDLINE indexes both weeks later (MeSH added: a revision, same text), and one new
    # CRISPR article comes: one new match, well within a cap of two
    store = Store(engine)
    store.apply([make_record(p, title=ARTICLES[p]["title"], abstract=ARTICLES[p]["abstract"],
                             source=SourceRef("file", "pubmed26n0002.xml", 2))
                 for p in (101, 104)])  # fmt: skip
    _load(engine, {107})
    assert refresh_index(s).published
    scores = _scores(s)
    assert scores[107] >= THRESHOLD and min(scores[101], scores[104]) > scores[107]
    second = run_digest(s)
    assert 107 in _matched(engine, search.id), (
        f"new article 107 (score {scores[107]:.3f}) lost: digest says matched="
        f"{second.matched}, warnings={list(second.warnings)}"
    )


def test_matches_resent_after_a_kill_keep_their_key_when_new_ones_join_them(
    world: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103})
    assert refresh_index(s).published
    real = digest_mod.post_webhook

    def post_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Killed  # killed before the stamp

    monkeypatch.setattr(digest_mod, "post_webhook", post_then_die)
    with pytest.raises(_Killed):
        run_digest(s)
    monkeypatch.setattr(digest_mod, "post_webhook", real)
    assert len(hook.bodies) == 1
    _load(engine, {104})  # the next night brings one more match
    assert refresh_index(s).published
    run_digest(s)
    keys: dict[int, set[str]] = {}
    for body in hook.bodies:
        for m in body["matches"]:
            keys.setdefault(m["pmid"], set()).add(body["delivery"])
    sent = sorted(p for b in hook.bodies for p in (x["pmid"] for x in b["matches"]))
    assert all(len(k) == 1 for k in keys.values()), (
        f"articles sent {sent}: the repeats of 101 and 103 carry another key "
        f"({[b['delivery'] for b in hook.bodies]}): the receiver cannot drop them"
    )


class _Redirecting:
    """A webhook that moved: POST /hook answers 302 to /moved; /moved takes POSTs (and
    answers a GET with a page, as most endpoints do)."""

    def __init__(self, code: int) -> None:
        self.posted: list[dict[str, Any]] = []
        self.gets = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/hook":
                    self.send_response(code)
                    self.send_header("Location", "/moved")
                else:
                    me.posted.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                me.gets += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_webhook_redirect_never_passes_for_a_delivery(world: Settings, code: int) -> None:
    moved = _Redirecting(code)
    try:
        s = world.replace(digest_webhook_url=moved.url)
        engine = db.connect(s)
        search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
        _load(engine, {101, 103})
        assert refresh_index(s).published
        report = run_digest(s)
    finally:
        moved.close()
    delivered = {x["pmid"] for b in moved.posted for x in b["matches"]}
    pending = {m.pmid for m in matches_of(engine, search.id, pending="webhook")}
    # never followed (a 301-303 would lose the body), a failure naming the new address,
    # retried next time
    assert [f for f in report.failures if "moved to /moved" in f and "WEBHOOK_URL" in f]
    assert delivered == {101, 103} or (pending == {101, 103} and report.failures), (
        f"HTTP {code}: posted {report.posted}, the webhook got {delivered or 'nothing'} "
        f"({moved.gets} bodiless GET), pending {pending}, failures {list(report.failures)}"
    )


def test_a_name_with_a_line_break_never_stops_the_other_deliveries(
    world: Settings, hook: _Hook
) -> None:
    inbox = _Inbox()
    s, controller = _smtp(world.replace(digest_webhook_url=hook.url), inbox)
    engine = db.connect(s)
    now = utcnow()
    with engine.begin() as conn:  # as an older release stored it (POST /alerts)
        conn.execute(insert(saved_searches).values(
            name="crispr\r\nBcc: mallory@evil.example", query=CRISPR, filters={},
            min_score=THRESHOLD, owner="ana", created_at=now, watermark=now))  # fmt: skip
    good = add_search(s, name="crispr good", query=CRISPR, min_score=THRESHOLD, owner="bob")
    _load(engine, {101, 103})
    assert refresh_index(s).published
    controller.start()
    try:
        report = run_digest(s)
    finally:
        controller.stop()
    assert report.matched == 4
    assert not matches_of(engine, good.id, pending="email")
    assert not matches_of(engine, good.id, pending="webhook")
    assert all("mallory@evil.example" not in rcpts for rcpts, _ in inbox.messages)


@pytest.fixture
def pg_world(postgres_url: str, tmp_path: Any) -> Iterator[Settings]:
    s = Settings.from_env({}, home=tmp_path / "home", database_url=postgres_url)
    _truncate(db.connect(s))
    _load(db.connect(s), OLD)
    assert refresh_index(s).size == len(OLD)
    yield s


@pytest.mark.postgres
def test_articles_committed_after_a_search_is_saved_are_new_for_it(
    pg_world: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest.store as store_mod

    s = pg_world
    engine = db.connect(s)
    real_plan = store_mod.plan_batch
    saved: list[Any] = []

    def plan_then_a_user_saves(*args: Any, **kwargs: Any) -> Any:
        plan = real_plan(*args, **kwargs)  # the batch's stamp is taken already
        if not saved:  # a researcher saves a search (POST /alerts) meanwhile
            saved.append(add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD,
                                    owner="alice"))  # fmt: skip
        return plan

    monkeypatch.setattr(store_mod, "plan_batch", plan_then_a_user_saves)
    a = ARTICLES[101]
    Store(engine).apply([make_record(901, title=a["title"], abstract=a["abstract"],
                                     source=SourceRef("file", "pubmed26n0002.xml", 2))])
    monkeypatch.setattr(store_mod, "plan_batch", real_plan)
    (search,) = saved
    with engine.connect() as conn:
        stamped = conn.execute(select(articles.c.updated_at).where(articles.c.pmid == 901)
                               ).scalar_one()  # fmt: skip
    # the search was committed before the article: it did not exist when it was saved
    assert refresh_index(s).published
    assert _scores(s)[901] >= THRESHOLD
    report = run_digest(s)
    assert 901 in _matched(engine, search.id), (
        f"901 committed after the save, stamped {stamped.isoformat()} behind the watermark "
        f"{search.watermark.isoformat()}: never new ({report.searches[0].candidates} "
        "candidates)"
    )


def test_a_feed_never_hides_matches_without_saying_so(sqlite_settings: Settings) -> None:
    s = sqlite_settings
    engine = db.connect(s)
    search = add_search(s, name="broad", query="gene editing", owner="alice")
    template = next(r for r in article_rows() if r["pmid"] == 101)
    now = utcnow()
    n = 250  # as one digest with LITPULSE_DIGEST_MAX_MATCHES=300 records them
    with engine.begin() as conn:
        conn.execute(insert(articles), [
            {**template, "pmid": 10_000 + i, "doi": None, "title": f"Gene editing study {i}"}
            for i in range(n)])  # fmt: skip
        conn.execute(insert(digest_matches), [
            {"search_id": search.id, "pmid": 10_000 + i, "title": f"Gene editing study {i}",
             "score": 0.9 - i / 10_000, "explanation": {"text": "x"}, "index_version": "v1",
             "model_version": "m1", "found_at": now} for i in range(n)])  # fmt: skip
    assert len(matches_of(engine, search.id)) == n
    xml = feed_for(s, search.id, self_url="http://127.0.0.1:8000/feeds/1.atom")
    feed = feedparser.parse(xml)
    said = (any(link.rel in ("next", "prev-archive") for link in feed.feed.get("links", []))
            or str(n) in feed.feed.get("subtitle", ""))  # fmt: skip
    assert len(feed.entries) == n or said, (
        f"{n} matches, the feed lists {len(feed.entries)} and says nothing of the others"
    )
    # following the pages (rel="next") lists every match once, newest and best first
    seen = [e.id for e in feed.entries]
    page = 1
    while (nxt := [x.href for x in feed.feed.links if x.rel == "next"]):
        page += 1
        # the next page reads after this page's last match (a number would shift)
        (href,) = nxt
        assert href.startswith(f"http://127.0.0.1:8000/feeds/1.atom?page={page}&after=")
        after = int(href.rsplit("=", 1)[1])
        feed = feedparser.parse(feed_for(s, search.id, self_url="http://127.0.0.1:8000/feeds/1.atom",
                                         page=page, after=after))  # fmt: skip
        assert not feed.bozo and {x.rel for x in feed.feed.links} >= {"self", "first", "previous"}
        seen += [e.id for e in feed.entries]
    assert page == 2 and len(seen) == len(set(seen)) == n
    assert "Matches 201 to 250 of 250" in feed.feed.subtitle
    beyond = feedparser.parse(feed_for(s, search.id, self_url="http://x/feeds/1.atom", page=3))
    assert not beyond.entries and "No matches on page 3" in beyond.feed.subtitle


# --------------------------------------------------------------------- what held


def test_one_channel_down_is_retried_and_the_other_is_not_repeated(
    world: Settings, hook: _Hook
) -> None:
    inbox = _Inbox()
    s, controller = _smtp(world.replace(digest_webhook_url=hook.url), inbox)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103})
    assert refresh_index(s).published
    down = run_digest(s)  # nothing listens on the SMTP port yet
    assert down.matched == 2 and down.posted == 2 and down.emailed == 0
    assert len(down.failures) == 1 and down.failures[0].startswith("email")
    controller.start()
    try:
        up = run_digest(s)
        again = run_digest(s)
    finally:
        controller.stop()
    assert (up.emailed, up.posted, again.emailed, again.posted) == (2, 0, 0, 0)
    assert len(hook.bodies) == 1 and len(inbox.messages) == 1
    assert not matches_of(engine, search.id, pending="email")


def test_a_webhook_timeout_is_retried_with_the_same_key(world: Settings) -> None:
    hook = _Hook()
    slow = {"on": True}
    handler = hook.server.RequestHandlerClass
    real_post = handler.do_POST

    def do_post(self: Any) -> None:
        if slow["on"]:  # takes the body, answers after the client gave up
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.bodies.append(json.loads(body))
            hook.keys.append(self.headers.get("Idempotency-Key"))
            time.sleep(1.6)
            return
        real_post(self)

    handler.do_POST = do_post
    try:
        s = world.replace(digest_webhook_url=hook.url, http_timeout=1.0)
        engine = db.connect(s)
        search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="a")
        _load(engine, {101, 103})
        assert refresh_index(s).published
        first = run_digest(s)
        assert first.posted == 0 and any("webhook" in f for f in first.failures)
        slow["on"] = False
        second = run_digest(s)
        third = run_digest(s)
    finally:
        hook.close()
    assert second.posted == 2 and third.posted == 0
    assert len(hook.bodies) == 2 and hook.keys[0] == hook.keys[1]
    assert hook.bodies[0]["delivery"] == hook.bodies[1]["delivery"]
    assert not matches_of(engine, search.id, pending="webhook")


def test_a_second_digest_while_one_delivers_is_refused(world: Settings) -> None:
    hook = _Hook()
    handler = hook.server.RequestHandlerClass
    real_post = handler.do_POST
    second: list[Any] = []

    def do_post(self: Any) -> None:
        if not second:  # while the first digest waits on the webhook
            try:
                second.append(run_digest(s))
            except DigestBusyError as exc:
                second.append(exc)
        real_post(self)

    handler.do_POST = do_post
    try:
        s = world.replace(digest_webhook_url=hook.url)
        engine = db.connect(s)
        add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
        _load(engine, {101, 103})
        assert refresh_index(s).published
        first = run_digest(s)
    finally:
        hook.close()
    assert isinstance(second[0], DigestBusyError), second
    assert first.posted == 2 and len(hook.bodies) == 1


def test_headers_and_bodies_carry_odd_names_and_titles_intact(world: Settings) -> None:
    inbox = _Inbox()
    s, controller = _smtp(world, inbox)
    engine = db.connect(s)
    name = "Édition génomique CRISPR — 編集 (adults)"
    search = add_search(s, name=name, query=CRISPR, min_score=THRESHOLD, owner="cli:x")
    nasty = "CRISPR Cas9 gene editing off-target effects\r\n.\r\nRCPT TO:<mallory@evil.example>"
    with engine.begin() as conn:
        conn.execute(insert(articles), [
            {**r, "title": nasty} if r["pmid"] == 101 else r
            for r in article_rows() if r["pmid"] in (101, 103)])  # fmt: skip
        conn.execute(insert(article_terms), [r for r in term_rows() if r["pmid"] in (101, 103)])
    assert refresh_index(s).published
    controller.start()
    try:
        report = run_digest(s)
    finally:
        controller.stop()
    assert report.matched == 2 and report.emailed == 2 and not report.failures
    ((rcpts, msg),) = inbox.messages  # one message: the lone "." ended nothing
    assert rcpts == ["team@example.org"]
    assert msg["Subject"] == f"litpulse: 2 new articles for “{name}”"
    assert set(msg.keys()) == {"Subject", "From", "To", "Message-ID", "Content-Type",
                               "Content-Transfer-Encoding", "MIME-Version"}
    text = msg.get_content()
    assert "/101/" in text and "/103/" in text and search.feed_path in text


def test_a_long_non_ascii_name_reads_back_whole_in_the_subject(sqlite_settings: Settings) -> None:
    from litpulse.pipeline.digest_channels import Match, send_email

    inbox = _Inbox()
    s, controller = _smtp(sqlite_settings, inbox)
    name = ("Влияние редактирования генома CRISPR на безопасность клеточной терапии у "
            "детей и взрослых с наследственными заболеваниями крови")
    search = add_search(s, name=name, query=CRISPR, owner="cli:x")
    match = Match(id=1, search_id=search.id, pmid=101, title="CRISPR", score=0.9,
                  index_version="v1", model_version="m1", found_at=utcnow())
    controller.start()
    try:
        assert send_email(s, search, [match]) is None
    finally:
        controller.stop()
    ((_, msg),) = inbox.messages
    assert msg["Subject"] == f"litpulse: 1 new article for “{name}”"


def test_a_digest_killed_between_matching_and_storing_loses_nothing(
    world: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103})
    assert refresh_index(s).published
    real = db.upsert

    def store_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Killed  # inside the transaction that moves the watermark

    monkeypatch.setattr(db, "upsert", store_then_die)
    with pytest.raises(_Killed):
        run_digest(s)
    monkeypatch.setattr(db, "upsert", real)
    assert _matched(engine, search.id) == {} and not hook.bodies
    with engine.connect() as conn:
        mark = conn.execute(select(saved_searches.c.watermark)).scalar_one()
    assert mark == search.watermark  # rolled back with the matches
    report = run_digest(s)
    assert report.matched == 2 and report.posted == 2
    assert set(_matched(engine, search.id)) == {101, 103} and len(hook.bodies) == 1


def test_a_retraction_before_delivery_is_said_and_a_later_revision_is_not_resent(
    world: Settings, hook: _Hook
) -> None:
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103})
    assert refresh_index(s).published
    hook.status = 503
    assert run_digest(s).matched == 2
    store = Store(engine)
    a = ARTICLES[101]
    store.apply([make_record(101, title=a["title"], abstract=a["abstract"], retracted=True,
                             source=SourceRef("file", "pubmed26n0002.xml", 2))])
    hook.status = 200
    assert run_digest(s).posted == 2
    (body,) = hook.bodies
    assert {x["pmid"]: x["retracted"] for x in body["matches"]} == {101: True, 103: False}
    store.apply([make_record(103, title=ARTICLES[103]["title"] + " (corrected)",
                             abstract=ARTICLES[103]["abstract"],
                             source=SourceRef("file", "pubmed26n0003.xml", 3))])
    assert refresh_index(s).published
    later = run_digest(s)
    assert later.matched == 0 and later.posted == 0 and len(hook.bodies) == 1
    assert set(_matched(engine, search.id)) == {101, 103}


def test_a_search_saved_again_under_its_old_name_gets_none_of_the_old_matches(
    world: Settings, hook: _Hook
) -> None:
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    old = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103})
    assert refresh_index(s).published
    hook.status = 500
    assert run_digest(s).matched == 2  # recorded, not delivered
    remove_search(s, old.id)
    new = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    hook.status = 200
    report = run_digest(s)
    assert report.posted == 0 and not hook.bodies and not matches_of(engine, new.id)
    with engine.connect() as conn:
        assert conn.execute(select(digest_matches.c.id)).all() == []
    _load(engine, {104})
    assert refresh_index(s).published
    assert run_digest(s).posted == 1
    assert [x["pmid"] for x in hook.bodies[0]["matches"]] == [104]


def test_a_channel_down_for_nights_sends_the_message_it_tried_then_one_with_the_rest(
    world: Settings, hook: _Hook
) -> None:
    """Down for three digests, each finding a new match: once back, the message handed on
    the first night goes again with its key (the receiver may have it: a timeout), then
    one message holds everything found since — not one message a night."""
    s = world.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    hook.status = 500
    for night in ({101}, {103}, {104}):
        _load(engine, night)
        assert refresh_index(s).published
        assert run_digest(s).matched == 1
    with engine.connect() as conn:  # only the first night's match was handed on
        keys = dict(conn.execute(select(digest_matches.c.pmid, digest_matches.c.webhook_key)
                                 ).all())  # fmt: skip
    assert keys[101] and keys[103] is None and keys[104] is None
    hook.status = 200
    report = run_digest(s)
    assert report.posted == 3 and not report.failures
    assert hook.keys[0] == keys[101] == hook.bodies[0]["delivery"]  # again, with its key
    assert [x["pmid"] for x in hook.bodies[0]["matches"]] == [101]
    assert sorted(x["pmid"] for x in hook.bodies[1]["matches"]) == [103, 104]
    assert len(hook.bodies) == 2 and hook.keys[1] != keys[101]
    assert not matches_of(engine, search.id, pending="webhook")
    assert run_digest(s).posted == 0 and len(hook.bodies) == 2
