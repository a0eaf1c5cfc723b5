"""Saved searches and the digest, end to end on a real index (bundled model), on SQLite
and PostgreSQL: new matches recorded once, a valid Atom feed, SMTP and webhook delivery
against local servers, failed deliveries retried without loss."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import feedparser
import pytest
from sqlalchemy import Engine, insert, select, update

from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import article_terms, articles, digest_matches, saved_searches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from litpulse.pipeline.digest import feed_for, matches_of, run_digest
from litpulse.pipeline.nightly import run_nightly
from litpulse.pipeline.saved_searches import (
    SavedSearch,
    add_search,
    get_search,
    list_searches,
    remove_search,
)
from ranking.refresh import refresh_index
from ranking.search import SearchFilters, run_search
from tests.conftest import free_port
from tests.emulator import Emulator, running_emulator
from tests.litpulse.pipeline.test_nightly import WINDOW, _serve
from tests.ranking.corpus import ARTICLES, article_rows, term_rows

#: Stored (and indexed) before the searches are saved: never "new" for them.
OLD = {102, 202, 203, 302, 401, 402, 403, 404, 501, 502, 503}
#: Stored after: 105 is retracted and 106 deleted (never matched).
NEW = {101, 103, 104, 105, 106, 107, 201, 301, 303}
CRISPR = "CRISPR gene editing in human cells"
THRESHOLD = 0.6


def _load(engine: Engine, pmids: Iterable[int]) -> None:
    """Store these corpus articles now (their first-stored time is now)."""
    wanted = set(pmids)
    with engine.begin() as conn:
        conn.execute(insert(articles), [r for r in article_rows() if r["pmid"] in wanted])
        conn.execute(insert(article_terms), [r for r in term_rows() if r["pmid"] in wanted])


@pytest.fixture
def indexed(settings: Settings) -> Settings:
    """The OLD articles stored and indexed with the bundled model."""
    _load(db.connect(settings), OLD)
    assert refresh_index(settings).size == len(OLD)
    return settings


def _matched(engine: Engine, search_id: int) -> dict[int, float]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(digest_matches.c.pmid, digest_matches.c.score).where(
                digest_matches.c.search_id == search_id
            )
        ).all()
    return {int(p): float(s) for p, s in rows}


def _expected(settings: Settings, query: str, filters: SearchFilters) -> dict[int, Any]:
    """The oracle: the real (semantic: absolute scores) search over the whole published
    index, new articles only."""
    hits = run_search(settings, query, k=len(ARTICLES), filters=filters, mode="semantic").hits
    return {h.pmid: h for h in hits if h.pmid in NEW and h.score >= THRESHOLD}


def test_digest_records_each_new_match_once_and_publishes_a_valid_feed(
    indexed: Settings,
) -> None:
    s = indexed
    engine = db.connect(s)
    plain = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    humans = add_search(
        s, name="crispr humans eng", query=CRISPR, min_score=THRESHOLD, owner="bob",
        filters=SearchFilters(mesh=("Humans",), language="eng"),
    )
    _load(engine, NEW)
    assert refresh_index(s).published

    report = run_digest(s)

    assert report.skipped is None and not report.failures
    for search in (plain, humans):
        expected = _expected(s, CRISPR, search.filters)
        got = _matched(engine, search.id)
        assert set(got) == set(expected)
        for pmid, score in got.items():
            assert score == pytest.approx(expected[pmid].score, abs=1e-5)
    # the threshold and the filters decide: the old CRISPR review, the retracted, the
    # deleted and the off-topic new articles are out; the filters drop more
    assert 101 in _matched(engine, plain.id)
    assert not set(_matched(engine, plain.id)) & {102, 105, 106, 201, 301}
    assert set(_matched(engine, humans.id)) < set(_matched(engine, plain.id))
    assert 104 not in _matched(engine, humans.id)  # Spanish
    by_id = {d.search_id: d for d in report.searches}
    assert by_id[plain.id].matched == len(_matched(engine, plain.id))
    assert by_id[plain.id].candidates == len(NEW - {106})  # live, new and in the index

    # the same night again: nothing new, nothing recorded twice
    again = run_digest(s)
    assert again.matched == 0
    assert {d.candidates for d in again.searches} == {0}
    assert list_searches(s)[0].matches == len(_matched(engine, plain.id))

    # the feed: a real feed parser, every required Atom element, the explanations
    url = f"http://127.0.0.1:8000/feeds/{plain.id}.atom"
    feed = feedparser.parse(feed_for(s, plain.id, self_url=url))
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.version == "atom10"
    assert feed.feed.id and feed.feed.title == "litpulse: crispr" and feed.feed.updated
    assert feed.feed.links[0].href == url and feed.feed.links[0].rel == "self"
    matches = {m.pmid: m for m in matches_of(engine, plain.id)}
    assert len(feed.entries) == len(matches)
    for entry in feed.entries:
        pmid = int(entry.link.rstrip("/").rsplit("/", 1)[1])
        assert entry.link == f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/"
        assert entry.id and entry.updated and entry.title == ARTICLES[pmid]["title"]
        assert matches[pmid].explanation["text"] in entry.summary
    assert len({e.id for e in feed.entries}) == len(feed.entries)


def test_an_article_not_yet_indexed_is_new_for_the_next_digest(indexed: Settings) -> None:
    s = indexed
    engine = db.connect(s)
    search = add_search(s, name="xray", query="deep learning chest radiographs",
                        min_score=THRESHOLD, owner="cli:test")
    _load(engine, {301})  # stored, but no index publish yet
    first = run_digest(s)
    assert first.matched == 0 and first.searches[0].candidates == 0

    refresh_index(s)
    second = run_digest(s)
    assert set(_matched(engine, search.id)) == {301}
    assert second.matched == 1


def test_saved_search_rules(settings: Settings) -> None:
    a = add_search(settings, name="  sepsis  adults ", query=" sepsis ", owner="cli:x")
    assert a.name == "sepsis adults" and a.query == "sepsis" and a.min_score is None
    tabbed = add_search(settings, name="tab\tname", query="two\nlines", owner="cli:x")
    assert tabbed.name == "tab name" and tabbed.query == "two\nlines"  # whitespace is fine
    remove_search(settings, tabbed.id)
    assert a.threshold(settings) == settings.digest_min_score
    with pytest.raises(ConfigError, match="exists already"):
        add_search(settings, name="sepsis adults", query="other", owner="cli:x")
    for bad in ({"name": "42"}, {"name": ""}, {"query": " "}, {"min_score": float("nan")},
                {"min_score": -1.0}, {"query": "x" * 513}, {"name": "a\x01b"},
                {"query": "q \x1b[31m"}, {"query": "q\x00"}, {"name": "n\x9b"}):
        kwargs: dict[str, Any] = {"name": "ok", "query": "q", "owner": "o", **bad}
        with pytest.raises(ConfigError):
            add_search(settings, **kwargs)
    assert get_search(settings, str(a.id)).name == get_search(settings, "sepsis adults").name
    assert remove_search(settings, "sepsis adults").id == a.id
    with pytest.raises(NotFoundError):
        get_search(settings, a.id)
    assert run_digest(settings).skipped == "no saved searches"
    add_search(settings, name="b", query="q", owner="o")
    assert run_digest(settings).skipped == "no index is published yet"


@pytest.mark.parametrize(("query", "problem"), [
    ("NOT asthma", "only excludes"),
    ('"heart failure" OR NOT "kidney failure"', "OR NOT"),
    ("NOT asthma OR COPD", "an OR right after NOT asthma"),
    ('("heart failure" elderly) OR dyspnea', "brackets beside OR"),
])
def test_a_saved_search_the_or_and_not_rules_refuse_is_listed_with_its_problem(
    settings: Settings, query: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        add_search(settings, name="new", query=query, owner="cli:x")
    engine = db.connect(settings)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:  # as a previous release's `alerts add` stored it
        conn.execute(insert(saved_searches).values(
            name="old", query=query, filters={}, min_score=0.0, owner="cli:x",
            created_at=now, watermark=now,
        ))  # fmt: skip
    (listed,) = list_searches(settings)
    assert listed.problem is not None and problem in listed.problem


# ------------------------------------------------------------------------- delivery


class _Inbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.rcpt_tos, msg))
        return "250 Message accepted for delivery"


class _Hook:
    """A local webhook: answers ``status`` and keeps the JSON bodies it got; with
    ``limit`` (changeable), behind a proxy that answers 413 to a body over that many bytes
    (nginx's default ``client_max_body_size``: 1 MiB), counted in ``refused``."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.status = 200
        self.sizes: list[int] = []  # of every body POSTed
        self.bodies: list[dict[str, Any]] = []
        self.keys: list[str | None] = []  # the Idempotency-Key header of each body kept
        self.refused = 0
        self.poison: set[int] = set()  # a body holding one of these PMIDs is answered 422
        self.posts = 0  # every POST answered, whatever its answer
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                size = int(self.headers["Content-Length"])
                body = self.rfile.read(size)
                status = hook.status
                hook.posts += 1
                hook.sizes.append(size)
                if hook.limit is not None and size > hook.limit:
                    hook.refused += 1
                    status = 413
                elif hook.poison & {m["pmid"] for m in json.loads(body)["matches"]}:
                    hook.refused += 1
                    status = 422
                elif status == 200:
                    hook.bodies.append(json.loads(body))
                    hook.keys.append(self.headers.get("Idempotency-Key"))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

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


@pytest.fixture
def hook() -> Iterator[_Hook]:
    h = _Hook()
    yield h
    h.close()


def test_email_and_webhook_delivery_retried_until_delivered(
    indexed: Settings, hook: _Hook
) -> None:
    from aiosmtpd.controller import Controller

    port = free_port()  # nothing listens there yet
    s = indexed.replace(
        digest_smtp_host="127.0.0.1", digest_smtp_port=port, digest_smtp_from="lp@example.org",
        digest_smtp_to="alice@example.org, bob@example.org", digest_webhook_url=hook.url,
    )
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, NEW)
    refresh_index(s)

    hook.status = 500
    down = run_digest(s)
    n = down.matched
    assert n > 0 and down.emailed == 0 and down.posted == 0
    assert len(down.failures) == 2  # both channels, kept for the next digest
    assert len(matches_of(engine, search.id, pending="email")) == n
    assert len(matches_of(engine, search.id, pending="webhook")) == n

    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        hook.status = 200
        up = run_digest(s)
        assert up.matched == 0 and up.emailed == n and up.posted == n and not up.failures
        again = run_digest(s)
        assert again.emailed == 0 and again.posted == 0
    finally:
        controller.stop()

    assert len(inbox.messages) == 1
    rcpts, msg = inbox.messages[0]
    assert sorted(rcpts) == ["alice@example.org", "bob@example.org"]
    assert msg["From"] == "lp@example.org" and "crispr" in msg["Subject"]
    text = msg.get_content()
    matches = matches_of(engine, search.id)
    for m in matches:
        assert m.title in text and f"https://pubmed.ncbi.nlm.nih.gov/{m.pmid}/" in text
        assert m.explanation["text"] in text

    assert len(hook.bodies) == 1
    body = hook.bodies[0]
    assert body["search"]["name"] == "crispr" and body["search"]["feed"].endswith(".atom")
    assert {x["pmid"] for x in body["matches"]} == {m.pmid for m in matches}
    assert all(x["explanation"]["text"] for x in body["matches"])
    assert not matches_of(engine, search.id, pending="email")
    assert not matches_of(engine, search.id, pending="webhook")


# ---------------------------------------------------------------------------- nightly


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    yield from running_emulator()


def test_nightly_runs_the_digest_after_its_index_step(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    _serve(emulator, WINDOW["since"].date(), range(1000, 1006))
    s = emulator.configure(sqlite_settings)
    search = add_search(s, name="statins", query="gut microbiome and statin response",
                        min_score=THRESHOLD, owner="cli:test")
    report = run_nightly(s, retrain=False, **WINDOW)
    assert [name for name, _ in report.steps][-2:] == ["index", "digest"]
    assert report.digest is not None and report.digest["matched"] == 6
    assert report.index is not None
    assert report.to_dict()["digest"]["index_version"] == report.index["id"]
    feed = feedparser.parse(feed_for(s, search.id, self_url="http://127.0.0.1/feeds/1.atom"))
    assert not feed.bozo
    assert {e.title for e in feed.entries} == {
        f"Gut microbiome and statin response study {p}" for p in range(1000, 1006)
    }


# ------------------------------------------------------------ review (rev-api): findings


def test_a_saved_search_with_a_nul_filter_does_not_break_the_digest(indexed: Settings) -> None:
    # finding 3b (rev-api): POST /alerts stored it (201), then the digest crashed nightly
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app
    from litpulse.app.tokens import create_token
    from litpulse.pipeline.digest import digest_step

    s = indexed
    if not s.effective_database_url.startswith("postgresql"):
        pytest.skip("SQLite stores the NUL and matches nothing; PostgreSQL refuses it")
    engine = db.connect(s)
    token = create_token(s, "eve").token
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        r = client.post(
            "/alerts",
            json={"name": "poison", "query": CRISPR, "mesh": ["Humans\u0000"]},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code in (201, 400, 422), r.text
    good = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, NEW)
    assert refresh_index(s).published
    report = digest_step(s)  # the nightly chain's step: must not raise
    assert report["skipped"] is None
    assert 101 in _matched(engine, good.id)


def test_a_saved_search_that_cannot_be_searched_is_reported_and_the_others_go_on(
    indexed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows stored before the control-character rule (on PostgreSQL a NUL filter made
    the digest's SQL fail), and any other failure of one search: logged, reported in
    the digest's failures, its watermark kept; every other search is digested."""
    import ranking.search
    from litpulse.core.schema import saved_searches
    from litpulse.core.timeutil import utcnow
    from litpulse.pipeline.digest import digest_step

    s = indexed
    engine = db.connect(s)
    now = utcnow()
    with engine.begin() as conn:  # as POST /alerts stored them before the rule
        for name, query, filters in (
            ("nul filter", CRISPR, {"mesh": ["Humans\x00"]}),
            ("ansi query", "CRISPR \x1b[31m editing", {}),
        ):
            conn.execute(insert(saved_searches).values(
                name=name, query=query, filters=filters, min_score=THRESHOLD, owner="eve",
                created_at=now, watermark=now,
            ))
    boom = add_search(s, name="boom", query="boom", owner="eve")
    good = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    listed = {x.name: x for x in list_searches(s)}  # listing still works
    assert "control characters" in (listed["nul filter"].problem or "")
    assert listed["nul filter"].to_dict()["problem"] and listed["crispr"].problem is None

    real = ranking.search.run_search

    def failing(settings: Settings, query: str, **kw: Any) -> Any:
        if query == "boom":
            raise RuntimeError("the database went away for this one")
        return real(settings, query, **kw)

    monkeypatch.setattr(ranking.search, "run_search", failing)
    _load(engine, NEW)
    assert refresh_index(s).published
    report = digest_step(s)  # the nightly chain's step: never raises for one search

    assert report["skipped"] is None
    assert 101 in _matched(engine, good.id) and report["matched"] > 0
    errors = {d["name"]: d["error"] for d in report["searches"]}
    assert errors["crispr"] is None
    assert "control characters" in errors["nul filter"]
    assert "litpulse alerts edit" in errors["nul filter"] and "--replace-filters" in errors[
        "nul filter"]
    assert "query must not hold control characters" in errors["ansi query"]
    assert errors["boom"] == "RuntimeError: the database went away for this one"
    assert len(report["failures"]) == 3
    assert any("'boom'" in f and "went away" in f for f in report["failures"])
    after = {x.name: x for x in list_searches(s)}
    for name in ("nul filter", "ansi query", "boom"):  # tried again by the next digest
        assert after[name].last_digest_at is None
        assert after[name].watermark == listed[name].watermark
    assert after["crispr"].last_digest_at is not None
    assert get_search(s, boom.id).matches == 0


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An encoder that cannot embed a text holding "zebra" (its vector is NaN)."""
    from tests.tiny_encoder import build_overflowing_encoder

    return build_overflowing_encoder(tmp_path_factory.mktemp("enc-digest"), "zebra")


def test_a_saved_search_the_model_cannot_embed_is_reported_and_the_others_delivered(
    settings: Settings, overflowing: str, hook: _Hook, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A search saved before a release refused unembeddable queries on save (inserted
    here as that release stored it): each digest reports and skips it, with what to do,
    and records and delivers every other search's matches."""
    import argparse
    import logging

    from litpulse.app.cli.alerts import run_digest_cmd
    from litpulse.pipeline.digest import digest_step

    s = settings.replace(model=overflowing, max_seq_length=32, digest_webhook_url=hook.url)
    engine = db.connect(s)
    _load(engine, OLD)
    assert refresh_index(s).published
    query = "zebra CRISPR gene editing"
    with pytest.raises(ConfigError, match="cannot embed"):  # refused on save today
        add_search(s, name="zebra", query=query, owner="eve")
    with engine.begin() as conn:  # as the release before stored it (first: digested first)
        now = db.db_now(conn)
        conn.execute(insert(saved_searches).values(
            name="zebra", query=query, filters={}, min_score=0.0, owner="eve",
            created_at=now, watermark=now,
        ))  # fmt: skip
    bad = get_search(s, "zebra")
    good = add_search(s, name="crispr", query=CRISPR, min_score=0.0, owner="alice")
    _load(engine, NEW)
    assert refresh_index(s).published

    with caplog.at_level(logging.INFO, logger="litpulse.pipeline.digest"):
        report = digest_step(s)  # the nightly chain's step

    assert report["skipped"] is None
    by_name = {d["name"]: d for d in report["searches"]}
    assert by_name["crispr"]["error"] is None and by_name["crispr"]["matched"] > 0
    error = by_name["zebra"]["error"]
    assert error is not None and "cannot embed" in error
    assert f"litpulse alerts edit {bad.id} --query" in error  # what the operator does
    assert by_name["zebra"]["matched"] == 0
    assert [f for f in report["failures"] if "'zebra'" in f] == [
        f"search {bad.id} 'zebra': {error}"
    ]
    assert len(report["failures"]) == 1  # nothing else failed: the deliveries went
    # every other search delivered, none of the skipped one's
    assert report["posted"] == by_name["crispr"]["matched"]
    assert {b["search"]["name"] for b in hook.bodies} == {"crispr"}
    assert not matches_of(engine, good.id, pending="webhook")
    # logged, naming it, once, without a traceback (a known state with its remedy, not a
    # crash); the digest's closing line counts it among the failures
    logged = [r for r in caplog.records if "'zebra'" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING, logged
    assert logged[0].exc_info is None and "alerts edit" in logged[0].getMessage()
    closing = next(r.getMessage() for r in caplog.records
                   if r.getMessage().startswith("digest of index"))  # fmt: skip
    assert closing.endswith(", 1 failures"), closing
    # tried again by the next digest (its watermark kept); `alerts run` names it and what
    # to do, and exits 2 (someone must edit it)
    after = get_search(s, bad.id)
    assert after.last_digest_at is None and after.watermark == bad.watermark
    assert run_digest_cmd(argparse.Namespace(json=False), s) == 2
    err = capsys.readouterr().err
    assert f"failed: search {bad.id} 'zebra': ConfigError: not searched" in err
    assert f"litpulse alerts edit {bad.id} --query" in err


def test_the_digest_step_reports_a_database_it_cannot_reach_instead_of_raising(
    tmp_path: Any,
) -> None:
    """Its docstring promised a database error is logged and reported, never raised (the
    index is published already); only the project's own errors were caught, so a store
    that went away failed the whole chain after its index was out."""
    from litpulse.pipeline.digest import digest_step

    s = Settings.from_env(
        {}, home=tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/gone"
    )
    report = digest_step(s)
    assert report["skipped"].startswith("OperationalError: ")
    assert report["index_version"] is None


# ------------------------------------------- review (saved-search alerting): findings

class _PickyInbox:
    """An SMTP server that knows alice but refuses bob's mailbox (a left colleague)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address.startswith("bob@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


def test_an_email_accepted_for_one_recipient_is_not_sent_again(indexed: Settings) -> None:
    """The SMTP server takes a digest's e-mail for alice and refuses bob's mailbox (a
    colleague who left): the message went out, but the digest took it for failed, kept
    the matches pending, and every later digest e-mailed them to alice again."""
    from aiosmtpd.controller import Controller

    port = free_port()
    s, engine, search = _smtp_digest(indexed, port, "alice@example.org, bob@example.org",
                                     owner="alice")  # fmt: skip
    inbox = _PickyInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        first = run_digest(s)
        assert first.matched > 0
        run_digest(s)  # nothing new since
        run_digest(s)
    finally:
        controller.stop()
    # the first digest says who did not get it; the matches are delivered (to alice)
    assert first.emailed == first.matched
    assert any("bob@example.org (550" in w and "other recipients got it" in w
               for w in first.warnings), first.warnings
    assert not first.failures  # nothing to retry
    assert matches_of(engine, search.id, pending="email") == []
    to_alice = [m for rcpts, m in inbox.messages if "alice@example.org" in rcpts]
    pmids_sent = [
        p for _, m in inbox.messages for p in matches_of(engine, search.id) if
        f"/{p.pmid}/" in m.get_content()
    ]
    assert len(to_alice) == 1, f"alice got {len(to_alice)} e-mails of the same matches"
    assert len(pmids_sent) == len(set(pmids_sent)), "an article e-mailed to alice again"


# ------------------------------------------------------------ 2. deleted, then undeleted


def test_an_article_restored_after_a_deletion_is_reported(indexed: Settings) -> None:
    """PubMed deletes an article (or its DeleteCitation comes before the record) while a
    digest runs; a later record brings it back, and it matches: it is new for the search
    then. It kept the time it was first stored, behind the watermark the digest had
    moved past it, and was never reported."""
    from ingest.records import Deletion, SourceRef
    from ingest.store import Store
    from tests.ingest.test_store import make_record

    s = indexed
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101})
    store = Store(engine)
    store.apply([Deletion(101, SourceRef("file", "pubmed26n0002.xml", 2))])
    _load(engine, NEW - {101})
    assert refresh_index(s).published
    run_digest(s)
    assert 101 not in _matched(engine, search.id)  # deleted: rightly not reported

    a = ARTICLES[101]
    store.apply([make_record(101, title=a["title"], abstract=a["abstract"],
                             source=SourceRef("file", "pubmed26n0003.xml", 3))])  # fmt: skip
    assert refresh_index(s).published
    hits = run_search(s, CRISPR, k=50, mode="semantic").hits
    assert any(h.pmid == 101 and h.score >= THRESHOLD for h in hits)  # live, indexed, matching
    second = run_digest(s)
    assert 101 in _matched(engine, search.id), (
        f"101 never reported (second digest: {second.searches[0].candidates} candidates)"
    )


# ------------------------------------- 3. a search removed while the digest searches it


def test_matches_of_a_removed_search_never_reach_the_next_user(
    indexed: Settings, hook: _Hook
) -> None:
    """Alice removes her search while the digest ranks it and carol saves hers: the
    digest recorded alice's matches anyway, and SQLite gave carol's search alice's freed
    id, so carol's webhook got alice's articles (and her watermark alice's); on
    PostgreSQL they stayed behind, matches of no search."""
    from ranking.index_files import open_published
    from ranking.search import _query_embedder

    s = indexed.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    alice = add_search(s, name="alice crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, NEW)
    assert refresh_index(s).published
    index = open_published(s, engine)
    real = _query_embedder(s, engine, index)
    carol: list[Any] = []

    def embed(text: str) -> Any:
        if not carol:  # while the digest ranks alice's search, alice removes it and
            remove_search(s, alice.id, engine=engine)  # carol saves her own
            carol.append(add_search(s, name="carol sepsis", query="sepsis in neonates",
                                    min_score=THRESHOLD, owner="carol", engine=engine))
        return real(text)

    run_digest(s, engine=engine, embed=embed)

    new = carol[0]
    assert [x.id for x in list_searches(s)] == [new.id]
    leaked = {m.pmid for m in matches_of(engine, new.id)}
    posted = [b for b in hook.bodies if b["search"]["owner"] == "carol"]
    assert not posted, (
        "carol's webhook got alice's CRISPR articles "
        f"{[x['pmid'] for b in posted for x in b['matches']]}"
    )
    assert not leaked, f"carol's saved search (id {new.id}, alice's was {alice.id}) holds {leaked}"
    with engine.connect() as conn:
        assert conn.execute(select(digest_matches.c.pmid)).all() == []  # none left behind


# ------------------------------------------- 4. the app's clock sets the first watermark


def test_articles_stored_after_a_search_is_saved_are_new_whatever_the_app_clock(
    indexed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API host saving a search (POST /alerts) runs 5 minutes ahead of the database
    server: the search's first watermark came from the host's clock and the articles
    ingest stored after it, stamped with the database's clock, were never new for it."""
    import litpulse.pipeline.saved_searches as saved_mod

    s = indexed
    if not s.effective_database_url.startswith("postgresql"):
        pytest.skip("SQLite's clock is the app's clock (db_now)")
    engine = db.connect(s)
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    monkeypatch.setattr(saved_mod, "utcnow", lambda: ahead, raising=False)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    with engine.begin() as conn:  # stored after the save, stamped as ingest does
        now = db.db_now(conn)
        assert search.created_at <= now < ahead
        rows = [{**r, "ingested_at": now, "updated_at": now}
                for r in article_rows() if r["pmid"] in NEW]
        conn.execute(insert(articles), rows)
        conn.execute(insert(article_terms), [r for r in term_rows() if r["pmid"] in NEW])
    assert refresh_index(s).published
    report = run_digest(s)
    assert 101 in _matched(engine, search.id), (
        f"0 new articles for the search: {report.searches[0].candidates} candidates"
    )


def test_matches_over_the_cap_are_reported_not_dropped_silently(indexed: Settings) -> None:
    """LITPULSE_DIGEST_MAX_MATCHES records the best so many new matches of a search; the
    others were dropped without a word (the watermark moves past them). The digest now
    says so for that search; at the cap exactly it says nothing."""
    s = indexed
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103})  # two new CRISPR articles: both match
    assert refresh_index(s).published
    at_cap = run_digest(s.replace(digest_max_matches=2))
    assert at_cap.searches[0].matched == 2 and not at_cap.searches[0].capped
    assert not at_cap.warnings

    _load(engine, {104, 107})  # two more
    assert refresh_index(s).published
    report = run_digest(s.replace(digest_max_matches=1))
    (one,) = report.searches
    assert one.matched == 1 and one.capped
    assert any(w.startswith(f"search {search.id} 'crispr': more than 1 new articles")
               for w in report.warnings), report.warnings
    assert len(_matched(engine, search.id)) == 3


def test_matches_sent_again_after_a_kill_carry_the_same_delivery_key(
    indexed: Settings, hook: _Hook
) -> None:
    """A digest killed between sending its matches and recording that sends them again
    (nothing says they went out). The repeat carries the same key — the webhook's
    Idempotency-Key header and `delivery` field, the e-mail's Message-ID — so a receiver
    can drop it; other matches carry another."""
    from sqlalchemy import update

    from litpulse.pipeline.digest_channels import email_message

    s = indexed.replace(digest_webhook_url=hook.url, digest_smtp_from="lp@example.org",
                        digest_smtp_to="alice@example.org")  # fmt: skip
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103})
    assert refresh_index(s).published
    assert run_digest(s.replace(digest_smtp_to="")).posted == 2
    with engine.begin() as conn:  # what a kill before the stamp leaves
        conn.execute(update(digest_matches).values(webhook_sent_at=None))
    assert run_digest(s.replace(digest_smtp_to="")).posted == 2
    first, again = hook.bodies
    assert first["matches"] == again["matches"]
    assert first["delivery"] == again["delivery"] == hook.keys[0] == hook.keys[1]

    sent = matches_of(engine, search.id)
    mail = email_message(s, get_search(s, search.id), sent)
    assert mail["Message-ID"] == email_message(s, get_search(s, search.id), sent)["Message-ID"]
    assert mail["Message-ID"].endswith("@example.org>")
    assert (email_message(s, get_search(s, search.id), sent[:1])["Message-ID"]
            != mail["Message-ID"])  # fmt: skip

    _load(engine, {104})
    assert refresh_index(s).published
    run_digest(s.replace(digest_smtp_to=""))
    assert hook.bodies[-1]["delivery"] != first["delivery"] and len(set(hook.keys)) == 2


def test_a_search_is_e_mailed_to_its_owners_address_and_to_no_one_else(
    indexed: Settings,
) -> None:
    """A saved search's digest goes to the e-mail address of its owner's API token, set
    by whoever issued it; a search whose owner has none goes to the shared list. Without
    a shared list, only the searches with an owner's address are e-mailed (the others
    stay pending, sent to no one)."""
    from aiosmtpd.controller import Controller

    from litpulse.app.tokens import create_token

    port = free_port()
    s = indexed.replace(
        digest_smtp_host="127.0.0.1", digest_smtp_port=port, digest_smtp_from="lp@example.org",
        digest_smtp_to="team@example.org",
    )  # fmt: skip
    engine = db.connect(s)
    alice = create_token(s, "alice", email="Alice@Example.org").info
    assert alice.email == "Alice@Example.org" and alice.to_dict()["email"] == alice.email
    create_token(s, "bob")  # no address: bob's searches go to the shared list
    mine = add_search(s, name="alice crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    other = add_search(s, name="bob crispr", query=CRISPR, min_score=THRESHOLD, owner="bob")
    carol = add_search(s, name="carol crispr", query=CRISPR, min_score=THRESHOLD, owner="carol")
    _load(engine, NEW)
    refresh_index(s)

    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        alone = run_digest(s.replace(digest_smtp_to=""))  # no shared list: alice's only
        assert alone.matched > 0 and not alone.failures
        assert alone.emailed == len(matches_of(engine, mine.id))
        assert matches_of(engine, other.id, pending="email")
        got = run_digest(s)  # the shared list now takes bob's and carol's
    finally:
        controller.stop()

    by_subject = {msg["Subject"]: sorted(rcpts) for rcpts, msg in inbox.messages}
    assert len(inbox.messages) == 3, by_subject
    for rcpts, msg in inbox.messages:
        if "alice crispr" in msg["Subject"]:
            assert rcpts == ["Alice@Example.org"] and msg["To"] == "Alice@Example.org"
        else:
            assert rcpts == ["team@example.org"] and msg["To"] == "team@example.org"
    assert got.emailed == len(matches_of(engine, other.id)) + len(matches_of(engine, carol.id))
    assert not any(matches_of(engine, x.id, pending="email") for x in (mine, other, carol))


def test_a_revoked_tokens_address_gets_no_more_digests(indexed: Settings) -> None:
    from aiosmtpd.controller import Controller

    from litpulse.app.tokens import create_token, revoke_token

    port = free_port()
    s = indexed.replace(
        digest_smtp_host="127.0.0.1", digest_smtp_port=port, digest_smtp_from="lp@example.org",
        digest_smtp_to="team@example.org",
    )  # fmt: skip
    engine = db.connect(s)
    old = create_token(s, "alice", email="alice@old.example.org").info
    create_token(s, "alice", email="alice@new.example.org")
    revoke_token(s, old.id)  # she left the old lab: its address gets nothing more
    add_search(s, name="alice crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, NEW)
    refresh_index(s)
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert run_digest(s).emailed > 0
    finally:
        controller.stop()
    assert [sorted(r) for r, _ in inbox.messages] == [["alice@new.example.org"]]


def test_a_match_deleted_before_it_is_delivered_is_neither_sent_nor_listed(
    indexed: Settings, hook: _Hook
) -> None:
    """PubMed deletes an article after a digest recorded it as a match and before the
    match went out (the webhook was down): the next digest does not send it, and neither
    the feed nor the search's matches list it, as no search shows a deleted article. It
    stays pending: a record that brings the article back has it sent then."""
    from ingest.records import Deletion, SourceRef
    from ingest.store import Store
    from tests.ingest.test_store import make_record

    s = indexed.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, NEW)
    refresh_index(s)
    hook.status = 500
    first = run_digest(s)
    matched = {m.pmid for m in matches_of(engine, search.id)}
    assert first.matched == len(matched) >= 2 and first.posted == 0
    gone = min(matched)
    store = Store(engine)
    store.apply([Deletion(gone, SourceRef("file", "pubmed26n0002.xml", 2))])

    hook.status = 200
    second = run_digest(s)
    assert second.posted == len(matched) - 1
    assert {x["pmid"] for x in hook.bodies[-1]["matches"]} == matched - {gone}
    assert {m.pmid for m in matches_of(engine, search.id)} == matched - {gone}
    feed = feedparser.parse(feed_for(s, search.id, self_url="http://127.0.0.1/feeds/1.atom"))
    assert {int(e.id.rsplit(":", 1)[1]) for e in feed.entries} == matched - {gone}

    a = ARTICLES[gone]
    store.apply([make_record(gone, title=a["title"], abstract=a["abstract"],
                             source=SourceRef("file", "pubmed26n0003.xml", 3))])  # fmt: skip
    third = run_digest(s)
    assert third.posted == 1 and [x["pmid"] for x in hook.bodies[-1]["matches"]] == [gone]


@pytest.mark.parametrize("address", [
    # domain part: read back from the To header, it also names mallory@evil.example
    "ann@=?utf-8?q?lab.example.org=2Cmallory=40evil.example?=",
    # local part: the header would read 'To: ann, mallory@evil.example@lab.example.org'
    "=?utf-8?q?ann=2C_mallory=40evil.example?=@lab.example.org",
])
def test_an_address_that_reads_back_as_other_recipients_is_refused(
    sqlite_settings: Settings, address: str
) -> None:
    """An encoded word (RFC 2047) passed the address rule, and the e-mail library decodes
    it when it reads the To header back: smtplib took the envelope from there, so one
    accepted address mailed someone else too (a hostile review found it)."""
    from litpulse.app.tokens import create_token, list_tokens

    with pytest.raises(ConfigError, match="e-mail"):
        create_token(sqlite_settings, "ann", email=address)
    assert list_tokens(sqlite_settings) == []


def test_the_envelope_is_the_addresses_given_not_the_header_read_back(
    sqlite_settings: Settings,
) -> None:
    """Whatever the To header says once read back, the message goes to exactly the
    recipients given: the owner's address, or the shared list's addresses (a display
    name there is the operator's own and is left in the header)."""
    from aiosmtpd.controller import Controller

    from litpulse.pipeline.digest_channels import Match, send_email

    port = free_port()
    s = sqlite_settings.replace(
        digest_smtp_host="127.0.0.1", digest_smtp_port=port, digest_smtp_from="lp@example.org",
        digest_smtp_to="Team Lead <lead@example.org>, ops@example.org",
    )  # fmt: skip
    search = add_search(s, name="ann's", query="malaria", owner="ann")
    match = Match(id=1, search_id=search.id, pmid=101, title="t", score=0.9,
                  index_version="1", model_version="m", found_at=dt.datetime.now(dt.UTC))
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        send_email(s, search, [match], to=["ann@lab.example.org"])
        send_email(s, search, [match])  # the shared list
    finally:
        controller.stop()
    assert [sorted(r) for r, _ in inbox.messages] == [
        ["ann@lab.example.org"], ["lead@example.org", "ops@example.org"]]
    assert inbox.messages[1][1]["To"] == "Team Lead <lead@example.org>, ops@example.org"


def test_a_cli_search_is_not_e_mailed_to_an_expert_named_like_its_owner(
    sqlite_settings: Settings,
) -> None:
    """Searches saved from the CLI are owned by ``cli:<user>``: no token may be issued for
    an expert so named, and one made before the rule (or written by hand) does not take
    the operator's digests from the shared list."""
    from litpulse.app.tokens import create_token
    from litpulse.core.schema import api_tokens
    from litpulse.pipeline.digest import owner_addresses, recipients_of

    s = sqlite_settings.replace(digest_smtp_host="127.0.0.1",
                                digest_smtp_to="team@example.org")  # fmt: skip
    with pytest.raises(ConfigError, match="cli:"):
        create_token(s, "cli:root", email="mallory@evil.example")
    engine = db.connect(s)
    with engine.begin() as conn:  # a token stored before the rule
        conn.execute(insert(api_tokens).values(
            expert="cli:root", token_sha256="0" * 64, prefix="lp_0000000",
            created_at=dt.datetime.now(dt.UTC), email="mallory@evil.example",
        ))  # fmt: skip
    ops = add_search(s, name="ops", query="malaria", owner="cli:root")  # as `alerts add`
    assert recipients_of(s, ops, owner_addresses(engine)) == ["team@example.org"]


def test_a_searchs_match_count_agrees_with_its_listed_matches(
    sqlite_settings: Settings,
) -> None:
    from sqlalchemy import update as sa_update

    s = sqlite_settings
    engine = db.connect(s)
    _load(engine, {101, 103})
    search = add_search(s, name="crispr", query="CRISPR", owner="alice")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(digest_matches), [
            {"search_id": search.id, "pmid": p, "title": "t", "score": 0.9,
             "explanation": {}, "index_version": "1", "model_version": "m", "found_at": now}
            for p in (101, 103)
        ])  # fmt: skip
        conn.execute(sa_update(articles).where(articles.c.pmid == 103).values(is_deleted=True))
    listed = matches_of(engine, search.id)
    assert [m.pmid for m in listed] == [101]  # the change itself: sound
    assert get_search(s, search.id, engine=engine).matches == len(listed)
    assert [x.matches for x in list_searches(s, engine=engine)] == [len(listed)]


def test_a_saved_search_whose_query_a_later_rule_refuses_is_reported_not_searched(
    indexed: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query saved before PubMed's syntax was refused (``covid[ti]`` searched for the
    word "ti") is listed with its problem, reported by the digest and never searched; the
    other searches are digested."""
    from litpulse.app.cli import main
    from litpulse.core.schema import saved_searches
    from litpulse.core.timeutil import utcnow
    from litpulse.pipeline.digest import run_digest

    s = indexed
    engine = db.connect(s)
    now = utcnow()
    with engine.begin() as conn:  # as an older release stored it
        conn.execute(insert(saved_searches).values(
            name="copd", query="COPD exacerbations[ti]", filters={}, min_score=THRESHOLD,
            owner="eve",
            created_at=now, watermark=now,
        ))  # fmt: skip
    good = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    listed = {x.name: x for x in list_searches(s)}
    assert "query is refused" in (listed["copd"].problem or "")
    assert listed["crispr"].problem is None
    report = run_digest(s)
    (failure,) = report.failures
    assert "'copd'" in failure and "field tags" in failure
    assert good.id in {d.search_id for d in report.searches if d.error is None}
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    if s.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", s.database_url)
    capsys.readouterr()
    assert main(["alerts", "list"]) == 0
    assert "'copd' cannot be searched: its query is refused" in capsys.readouterr().err


def test_a_saved_search_quoting_a_phrase_matches_only_new_articles_holding_it(
    indexed: Settings,
) -> None:
    """A quoted phrase is required in the digest as in a search, and a word after NOT
    excluded: of the new CRISPR articles only the one about "human cells" is matched by
    the quoting search, however low its threshold, and the zebrafish one never by the
    excluding one; the same words unquoted match the others too."""
    s = indexed
    engine = db.connect(s)
    quoting = add_search(s, name="cells", query='CRISPR gene editing "human cells"',
                         min_score=0.0, owner="alice")
    plain = add_search(s, name="words", query="CRISPR gene editing human cells",
                       min_score=0.0, owner="alice")
    excluding = add_search(s, name="not fish", query="CRISPR gene editing NOT zebrafish",
                           min_score=0.0, owner="alice")
    _load(engine, NEW)
    assert refresh_index(s).published
    report = run_digest(s)
    assert not report.failures
    assert set(_matched(engine, quoting.id)) == {101}  # "... off-target effects in human cells"
    assert {101, 103, 107} <= set(_matched(engine, plain.id))
    assert {101, 107} <= set(_matched(engine, excluding.id))
    assert 103 not in _matched(engine, excluding.id)  # "CRISPR gene editing in zebrafish"
    # the oracle: the real semantic search over the whole published index, phrase and all
    hits = run_search(s, quoting.query, k=len(ARTICLES), mode="semantic").hits
    assert {h.pmid for h in hits} & NEW == {101}
    score = {h.pmid: h.score for h in hits}[101]
    assert _matched(engine, quoting.id)[101] == pytest.approx(score, abs=1e-5)


def test_a_saved_search_of_an_author_alone_matches_each_new_article_of_theirs(
    indexed: Settings,
) -> None:
    """``Doe J[au]`` alone (every corpus article is Doe J's): each new live article is a
    match, whatever the threshold (it meets the query whole), and no old one; another
    author's search matches none, and a topic with the author only that topic's."""
    s = indexed
    engine = db.connect(s)
    doe = add_search(s, name="doe", query="Doe J[au]", min_score=THRESHOLD, owner="alice")
    roe = add_search(s, name="roe", query="Roe J[au]", min_score=0.0, owner="alice")
    both = add_search(s, name="doe crispr", query='"gene editing" AND Doe J[au]',
                      min_score=0.0, owner="alice")  # fmt: skip
    _load(engine, NEW)
    assert refresh_index(s).published
    report = run_digest(s)
    assert not report.failures
    assert set(_matched(engine, doe.id)) == NEW - {105, 106}  # retracted, deleted
    assert _matched(engine, roe.id) == {}
    assert set(_matched(engine, both.id)) == {101, 103, 104, 107}
    # an old article of theirs revised is reported once, as a topic search reports a
    # revised article (a correction may have added the author: never a missed article)
    topic = add_search(s, name="malaria", query="malaria parasite resistance",
                       min_score=0.0, owner="alice")  # fmt: skip
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == 202).values(
            abstract="Plasmodium falciparum resistance to artemisinin, revised.",
            text_hash="revised", updated_at=db.db_now(conn)))  # fmt: skip
    assert refresh_index(s).published
    again = run_digest(s)
    assert not again.failures
    assert set(_matched(engine, doe.id)) == (NEW - {105, 106}) | {202}
    assert 202 in _matched(engine, topic.id)
    assert run_digest(s).matched == 0  # once


def test_the_email_and_the_feed_say_what_a_saved_query_does_not_do() -> None:
    """A saved query with a Google-style ``-word`` searches the word; the page, the API
    and the CLI say so in a note, and so must the digest a researcher reads instead of
    them: the e-mail and the Atom feed (the webhook carries the search's notes)."""
    from litpulse.pipeline.digest_channels import Match, atom_feed, email_message
    from litpulse.pipeline.saved_searches import SavedSearch

    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    search = SavedSearch(id=7, name="copd", query="COPD -asthma", filters=SearchFilters(),
                         min_score=None, owner="alice", created_at=at, watermark=at)  # fmt: skip
    (note,) = search.notes
    assert "COPD NOT asthma" in note
    match = Match(id=1, search_id=7, pmid=101, title="A COPD trial", score=0.9,
                  index_version="v1", model_version="m1", found_at=at,
                  explanation={"text": "title matches"})  # fmt: skip
    s = Settings.from_env({}, digest_smtp_from="lp@example.org", digest_smtp_to="a@example.org")

    text = email_message(s, search, [match]).get_content()
    assert f"Note: {note}" in text
    assert text.index("Note:") < text.index("A COPD trial")  # read before the matches

    feed = feedparser.parse(atom_feed(search, [match], self_url="http://127.0.0.1/feeds/7.atom"))
    assert not feed.bozo, feed.get("bozo_exception")
    assert note in feed.feed.subtitle

    plain = dataclasses.replace(search, query="COPD NOT asthma")
    assert not plain.notes
    assert "Note:" not in email_message(s, plain, [match]).get_content()


def test_one_search_whose_delivery_breaks_stops_no_other(
    indexed: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a channel raises for one search (not only a DeliveryError: a value the
    message cannot hold) is reported and retried; every other search is delivered."""
    from litpulse.pipeline import digest as digest_mod

    s = indexed.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    broken = add_search(s, name="broken", query=CRISPR, min_score=THRESHOLD, owner="a")
    fine = add_search(s, name="fine", query=CRISPR, min_score=THRESHOLD, owner="b")
    real = digest_mod.post_webhook

    def post(settings: Settings, search: Any, matches: Any, key: str | None = None) -> None:
        if search.name == "broken":
            raise ValueError("a value the message cannot hold")
        real(settings, search, matches, key=key)

    monkeypatch.setattr(digest_mod, "post_webhook", post)
    _load(engine, NEW)
    assert refresh_index(s).published
    report = run_digest(s)
    n = len(_matched(engine, fine.id))
    assert n > 0 and report.posted == n
    assert [f for f in report.failures if "'broken'" in f and "ValueError" in f]
    assert not matches_of(engine, fine.id, pending="webhook")
    assert len(matches_of(engine, broken.id, pending="webhook")) == n  # retried next time
    monkeypatch.setattr(digest_mod, "post_webhook", real)
    assert run_digest(s).posted == n
    assert not matches_of(engine, broken.id, pending="webhook")


# ------------------------------------------------- a message a receiver refuses for good


def _pending_pmids(engine: Engine, search_id: int, channel: str) -> set[int]:
    return {m.pmid for m in matches_of(engine, search_id, pending=channel)}


def test_a_webhook_message_refused_for_good_holds_back_no_later_one(
    indexed: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that refuses one message (HTTP 422: its content, every time) takes the
    others: they go out the same night, the refused one stays pending with its key, is
    reported each digest, and goes out once the receiver takes it."""
    from litpulse.pipeline import digest as digest_mod

    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)  # one message per match
    s = indexed.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, NEW)
    assert refresh_index(s).published
    hits = _expected(s, CRISPR, SearchFilters())
    found = sorted(hits)
    assert len(found) >= 3, found
    best = max(found, key=lambda p: hits[p].score)  # the first message: best score first
    hook.poison = {best}

    first = run_digest(s)
    assert first.matched == len(found)
    assert _pending_pmids(engine, search.id, "webhook") == {best}
    assert first.posted == len(found) - 1
    assert [f for f in first.failures if "422" in f and "'crispr'" in f], first.failures
    key = matches_of(engine, search.id, pending="webhook")[0].attempt
    assert key

    again = run_digest(s)  # refused again, reported again, nothing else held
    assert again.posted == 0 and [f for f in again.failures if "422" in f]
    assert _pending_pmids(engine, search.id, "webhook") == {best}

    hook.poison = set()  # the receiver takes it now: the same message, the same key
    last = run_digest(s)
    assert last.posted == 1 and not last.failures
    assert not matches_of(engine, search.id, pending="webhook")
    assert hook.keys[-1] == key
    assert sorted(m["pmid"] for b in hook.bodies for m in b["matches"]) == found


def test_refused_messages_go_after_the_others_and_a_receiver_refusing_all_is_not_flooded(
    indexed: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages refused before are tried after the others, so several the receiver
    refuses for good never stand in front of the rest; and a receiver that refuses every
    message (a firewall answering 403 to each) gets a few POSTs a digest, not one per
    message; once it takes one, the refused ones are each tried."""
    from litpulse.pipeline import digest as digest_mod

    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    s = indexed.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, NEW)
    assert refresh_index(s).published

    hook.status = 403  # refuses everything
    down = run_digest(s)
    n = down.matched
    assert n > digest_mod.REFUSED_IN_A_ROW, n
    assert down.posted == 0 and hook.posts == digest_mod.REFUSED_IN_A_ROW
    assert len(matches_of(engine, search.id, pending="webhook")) == n

    # the receiver is mended but refuses the first REFUSED_IN_A_ROW messages for good:
    # the others go out this digest, not never
    hook.status, hook.posts = 200, 0
    refused_pmids = {m.pmid for m in matches_of(engine, search.id, pending="webhook")
                     if m.attempt is not None}
    assert len(refused_pmids) == digest_mod.REFUSED_IN_A_ROW
    hook.poison = set(refused_pmids)
    up = run_digest(s)
    assert up.posted == n - len(refused_pmids)
    assert _pending_pmids(engine, search.id, "webhook") == refused_pmids
    assert len(up.failures) == len(refused_pmids)  # each refusal reported


def test_an_email_the_server_refuses_for_its_content_holds_back_no_later_one(
    indexed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SMTP server that answers one message's DATA with a permanent 554 (its content)
    takes the next: the refused one stays pending and is reported."""
    from aiosmtpd.controller import Controller

    from litpulse.pipeline import digest as digest_mod

    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    port = free_port()
    s, engine, search = _smtp_digest(indexed, port)
    poison: set[int] = set()

    class Picky(_Inbox):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            text = envelope.content.decode("utf-8", "replace")
            if any(f"pubmed.ncbi.nlm.nih.gov/{p}/" in text for p in poison):
                return "554 5.7.1 Message content rejected"
            return await super().handle_DATA(server, session, envelope)

    inbox = Picky()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        hits = _expected(s, CRISPR, SearchFilters())
        found = sorted(hits)
        assert len(found) >= 2
        best = max(found, key=lambda p: hits[p].score)  # the first message
        poison.add(best)
        report = run_digest(s)
        assert report.matched == len(found)
        assert report.emailed == len(found) - 1, report.failures
        assert [f for f in report.failures if "554" in f]
        assert _pending_pmids(engine, search.id, "email") == {best}
    finally:
        controller.stop()


# ------------------------------------------------------ a feed's pages, walked while it moves


def _add_feed_matches(
    s: Settings, n: int, *, same: bool = False, spare: int = 0
) -> tuple[SavedSearch, int]:
    """A search with ``n`` matches (PMIDs from 10,000, 100 a second apart, best first);
    ``same``: one digest, one score (every key column but the PMID tied); ``spare``: that
    many more articles stored after them, matched by none yet."""
    engine = db.connect(s)
    search = add_search(s, name="broad", query="gene editing", owner="cli:x")
    template = next(r for r in article_rows() if r["pmid"] == 101)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(insert(articles), [
            {**template, "pmid": 10_000 + i, "doi": None, "title": f"T {i}"}
            for i in range(n + spare)])  # fmt: skip
        conn.execute(insert(digest_matches), [
            {"search_id": search.id, "pmid": 10_000 + i, "title": f"T {i}",
             "score": 0.5 if same else 0.9 - i / 10_000, "explanation": {"text": "x"},
             "index_version": "v1", "model_version": "m1",
             "found_at": now if same else now - dt.timedelta(seconds=i // 100)}
            for i in range(n)])  # fmt: skip
    return search, n


def _feed_pmids(feed: Any) -> list[int]:
    """The PMIDs of a parsed feed's entries, in its order."""
    return [int(e.link.rstrip("/").rsplit("/", 1)[1]) for e in feed.entries]


def _next_page(feed: Any) -> str | None:
    return next((x.href for x in feed.feed.links if x.rel == "next"), None)


def _delete_article(engine: Engine, pmid: int) -> None:
    """PubMed deleted it: its matches leave the feed (their rows stay)."""
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == pmid)
                     .values(is_deleted=True, deleted_at=utcnow()))  # fmt: skip


def _walk_feed(
    client: Any, url: str | None, read: list[int],
    on_page: Callable[[Any, Any, list[int]], None] | None = None,
) -> None:
    """Follow a feed's ``next`` links from ``url`` through the API's ``client``, adding
    each page's PMIDs to ``read`` once the page is in; ``on_page(response, feed, pmids)``
    after each page (what happens meanwhile)."""
    while url is not None:
        resp = client.get(url)
        feed = feedparser.parse(resp.content)
        page = _feed_pmids(feed)
        if on_page is not None:
            on_page(resp, feed, page)
        read += page
        url = _next_page(feed)


@pytest.mark.parametrize("meanwhile", ["deleted", "recorded"])
def test_walking_a_feeds_pages_misses_no_match_when_matches_come_and_go(
    settings: Settings, meanwhile: str
) -> None:
    """A reader follows each page's ``next`` link while the feed changes under it: after
    each page, an article of that page is deleted by PubMed (its match leaves the feed),
    or a digest records a new match (it comes first). Every match there at the start and
    still live is read, each once: pages taken by number shifted under the reader, so a
    deletion skipped the match that moved up into a page already read, and a new match
    showed the last of a page again on the next."""
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    s = settings
    engine = db.connect(s)
    search, n = _add_feed_matches(s, 450, spare=10)
    at_start = {m.pmid for m in matches_of(engine, search.id)}
    read: list[int] = []
    gone: set[int] = set()
    pages = 0

    def meanwhile_(resp: Any, feed: Any, page: list[int]) -> None:
        nonlocal pages
        assert resp.status_code == 200, resp.text
        assert not feed.bozo
        pages += 1
        if page and meanwhile == "deleted":
            _delete_article(engine, page[0])
            gone.add(page[0])
        elif page:
            with engine.begin() as conn:
                conn.execute(insert(digest_matches).values(
                    search_id=search.id, pmid=10_000 + n + pages, title="new",
                    score=0.95, explanation={"text": "x"}, index_version="v2",
                    model_version="m1", found_at=utcnow()))  # fmt: skip

    with TestClient(create_app(s)) as client:
        _walk_feed(client, f"/feeds/{search.id}.atom", read, meanwhile_)
    assert len(read) == len(set(read)), "a match read twice"
    missed = sorted(at_start - gone - set(read))
    assert not missed, f"{len(missed)} matches live throughout never read: {missed[:5]}"


def test_a_feed_page_after_a_match_it_does_not_hold_is_not_found(settings: Settings) -> None:
    """``after`` names a match of this search's feed: another search's match, or none,
    is a 404 that says where the feed begins; a bad number is refused (422)."""
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    s = settings
    engine = db.connect(s)
    one = add_search(s, name="one", query="gene editing", owner="cli:x")
    other = add_search(s, name="other", query="asthma", owner="cli:x")
    template = next(r for r in article_rows() if r["pmid"] == 101)
    with engine.begin() as conn:
        conn.execute(insert(articles), [{**template, "pmid": 20_000, "doi": None}])
        conn.execute(insert(digest_matches).values(
            search_id=other.id, pmid=20_000, title="T", score=0.9, explanation={"text": "x"},
            index_version="v1", model_version="m1", found_at=utcnow()))  # fmt: skip
        theirs = conn.execute(select(digest_matches.c.id)).scalar_one()
    with pytest.raises(NotFoundError, match="holds no match"):
        feed_for(s, one.id, self_url="http://x/feeds/1.atom", page=2, after=theirs)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        for after, status in ((theirs, 404), (theirs + 1, 404), (0, 422), ("x", 422)):
            resp = c.get(f"/feeds/{one.id}.atom", params={"page": 2, "after": after})
            assert resp.status_code == status, (after, resp.text)
        ok = c.get(f"/feeds/{other.id}.atom", params={"page": 2, "after": theirs})
        assert ok.status_code == 200
        feed = feedparser.parse(ok.content)
        assert not feed.entries and "No matches on page 2" in feed.feed.subtitle


def test_a_feed_page_after_a_match_reads_the_index_from_that_match_on(
    sqlite_settings: Settings,
) -> None:
    """A ``next`` link's page seeks to its cursor through ``ix_digest_matches_search_found``
    (``found_at`` bounded by the cursor's) instead of reading every newer match first, so
    a deep page costs what the first one does (300,000 matches: 1.4 ms against 34 ms at
    position 250,000 on SQLite, 2.2 ms against 25 ms on PostgreSQL)."""
    from sqlalchemy import event

    s = sqlite_settings
    engine = db.connect(s)
    search = add_search(s, name="one", query="gene editing", owner="cli:x")
    seen: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if "FROM digest_matches" in statement and "ORDER BY" in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        matches_of(engine, search.id, limit=51, after=1)
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    (statement, params), = seen
    with engine.connect() as conn:
        plan = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
    assert any(
        "ix_digest_matches_search_found (search_id=? AND found_at<?)" in step for step in plan
    ), plan


def _smtp_digest(
    indexed: Settings, port: int, to: str = "alice@example.org", owner: str = "cli:x"
) -> tuple[Settings, Engine, Any]:
    """The CRISPR search (of ``owner``) and the NEW articles indexed, its digest e-mailed
    to ``to`` through 127.0.0.1:``port``."""
    s = indexed.replace(
        digest_smtp_host="127.0.0.1", digest_smtp_port=port, digest_smtp_from="lp@example.org",
        digest_smtp_to=to,
    )
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner=owner)
    _load(engine, NEW)
    assert refresh_index(s).published
    return s, engine, search


def test_an_email_too_large_for_the_server_goes_in_smaller_ones(indexed: Settings) -> None:
    """A server whose size limit (advertised with SIZE, RFC 1870: 552 to MAIL FROM) is
    below the digest's one message takes the same matches in smaller ones, the same
    night, each once; before, the whole message was refused every night, for good."""
    from aiosmtpd.controller import Controller

    from litpulse.pipeline.digest_channels import email_message

    port = free_port()
    s, engine, search = _smtp_digest(indexed, port)
    recorded = run_digest(s.replace(digest_smtp_host=""))  # recorded, not sent yet
    pending = matches_of(engine, search.id, pending="email")
    assert recorded.matched == len(pending) >= 3
    to = ["alice@example.org"]
    whole = len(email_message(s, search, pending, to).as_bytes())
    one = max(len(email_message(s, search, [m], to).as_bytes()) for m in pending)
    limit = (one + whole) // 2  # an e-mail of a match fits, one of them all does not
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, data_size_limit=limit)
    controller.start()
    try:
        report = run_digest(s)
    finally:
        controller.stop()
    assert not report.failures, report.failures
    assert report.emailed == recorded.matched
    assert [w for w in report.warnings if "552" in w and "two messages" in w]
    assert len(inbox.messages) > 1
    sent = [p for _, msg in inbox.messages for p in re.findall(
        r"pubmed\.ncbi\.nlm\.nih\.gov/(\d+)/", msg.get_content())]  # fmt: skip
    assert sorted(map(int, sent)) == sorted(_matched(engine, search.id))
    assert not matches_of(engine, search.id, pending="email")


class _DataRefusingServer:
    """A raw SMTP server that refuses the DATA command itself (``554 5.7.1``, as a policy
    on the sender does), counting the messages it was offered."""

    def __init__(self, port: int) -> None:
        import socketserver

        self.offered = 0
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"220 ready\r\n")
                for raw in self.rfile:
                    verb = raw.decode("ascii", "replace").strip().split(" ")[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.wfile.write(b"250 ok\r\n")
                    elif verb == "DATA":
                        server.offered += 1
                        self.wfile.write(b"554 5.7.1 sender not allowed\r\n")
                    elif verb == "QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 ok\r\n")

        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.tcp.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.tcp.shutdown()
        self.tcp.server_close()


def test_an_smtp_server_refusing_the_data_command_holds_the_later_messages_back(
    indexed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """554 to the DATA command itself refuses any message now (the sender, a policy), not
    this one: one try, nothing marked refused, the later messages wait in order."""
    from litpulse.pipeline import digest as digest_mod

    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    port = free_port()
    s, engine, search = _smtp_digest(indexed, port)
    server = _DataRefusingServer(port)
    try:
        report = run_digest(s)
    finally:
        server.close()
    assert report.matched >= 2 and report.emailed == 0
    assert server.offered == 1 and len(report.failures) == 1 and "554" in report.failures[0]
    pending = matches_of(engine, search.id, pending="email")
    assert len(pending) == report.matched and not any(m.refused_at for m in pending)
