"""Hostile review (session 27) of the fixes to digest delivery and paging (commits 59246d7,
c11737c, 9dfcad5): do they hold, and did they break what worked?

Worlds are borrowed: the CRISPR corpus of tests/litpulse/pipeline/test_digest.py (bundled
model, real ``refresh_index`` and ``run_digest``, a local webhook and an aiosmtpd sink) and
the asthma worlds of tests/review/test_session27_paging_review.py (tiny encoder, FAISS +
tantivy, ``GET /search``, ``/similar``, ``/export`` through FastAPI's test client). A kill
is a ``BaseException`` raised right after a channel sent (``_Killed``).

Defects (each first a strict xfail asserting the correct behaviour; all fixed since, the
marks removed: a digest leaves the articles matched before out of the new ones before it
ranks them; search and similar read the store version before they rank; the in-corpus
recount and the iCite writers each move a mark of their own, last in their transaction
(``litpulse.core.db.mark_written``); similar's deepest page says ``truncated``, and an
export ``X-Litpulse-Truncated``; a message's key is recorded with its matches before it
goes out (F6, and H1 now holds that design: the tried message, then one with the rest);
``alerts feed --page`` is bounded as the API is):

F1 **The cap still lets revised old matches push a new article out**
   (``litpulse/pipeline/digest.py`` ``_digest_one``): the matches recorded before are
   dropped only *after* ``run_search(k=cap + 1)`` has cut the list, so when cap + 1 old
   matches were revised (MEDLINE adds MeSH weeks later: the README's own reason) and
   score above a new article, the search returns only those, the filter leaves nothing,
   the new article is lost for good (the watermark moves past it), ``matched`` is 0 and
   no ``capped`` warning is given. Input: cap 2, 101 and 104 matched; both revised, 107
   new (score 0.84 < 0.85, 0.86), cap 1. Expected: 107 recorded (or at least said).
F2 **``store_version`` is read after the page was ranked** (``ranking/search.py``
   ``run_search``: ``db.store_version`` after ``with_details``): a write that commits
   while page 1 is being served labels page 1 with the *new* version; page 2, ranked on
   the new store, carries the same version, so neither the API client nor the page's
   ``listChanged`` can tell, and the article that moved up is never shown (an update
   file deleting page 1's first article: page 2 of ``asthma inhaler`` skips the 6th).
   It should read the version before ranking (a write in between then errs towards a
   note, never towards silence).
F3 **``store_version`` does not move when in-corpus citation counts are recounted**
   (``litpulse/core/db.py`` ``store_version`` reads ``max(updated_at)`` and the citation
   mark; ``ingest/store.py`` ``Store.finish_counts``/``recount_all`` and
   ``ingest/links.py`` ``recount_range``/``recompute_cited_by`` write
   ``cited_by_in_corpus``, which ``ranking/scoring.py`` ranks by for every article
   without iCite data, without ``mark_citations_written``). After a deferred bulk load
   (the bootstrap's default) the recount reorders ``asthma inhaler`` (``w_citation`` 5)
   under the same store version.
F4 **``/similar``'s deepest page still points at an offset it refuses**
   (``ranking/similar.py`` ``has_more=len(ranked) > offset + k``; the fix of the
   search's deepest page was not carried over): ``/similar/ID?k=10&offset=995`` over
   1,150 neighbours answers ``has_more: true``, the CLI says ``more follow: add --offset
   1005``, and offset 1005 is answered 422 / ``ConfigError``.
F5 **``GET /export``'s new ``X-Litpulse-Has-More`` header says ``false`` on a cut page**
   (``litpulse/app/api.py`` export: only ``has_more``, never ``truncated``):
   ``/export?q=asthma&offset=1000&k=100`` over 1,150 matches answers 100 rows and
   ``X-Litpulse-Has-More: false`` — the very silence the paging fix removed from
   ``/search`` — and no header or row says 50 more match.
F6 **A resend after a kill changes key when a match of its group was deleted
   meanwhile** (``litpulse/pipeline/digest.py`` ``_deliver``/``matches_of`` leave a
   deleted article's match out of the group; ``delivery_key`` hashes the ids sent). Sent
   [101, 104, 103], killed before the stamp, 103 deleted by the next update file: the
   resend is [101, 104] under another ``Idempotency-Key``, so the receiver gets 101 and
   104 twice (README: "sends that again, with the same key ... so a receiver can drop
   the repeat"). Narrow (a kill in the send-stamp window and a deletion of one of those
   articles before the next digest) but the key's only purpose; keying a group by its
   digest (search, ``found_at``) would hold.
F7 **``litpulse alerts feed ID --page 99999999999999999999`` ends in a traceback**
   (``litpulse/app/cli/alerts.py`` ``--page`` is ``positive_int`` with no upper bound,
   unlike ``GET /feeds/ID.atom``'s ``le=1_000_000``): SQLite's ``OverflowError: Python
   int too large to convert to SQLite INTEGER``, exit 1. It should be a usage error
   (exit 2) or an empty page past the end.

Attacks that held (plain tests):

H1 A webhook down for three nights, two searches, then back: each search gets three
   messages, oldest digest first, each match once; a kill after the second message
   re-sends exactly that message with its key, then the rest, none twice.
H2 Subjects: emoji, ZWJ sequences, combining marks, Arabic/Hebrew with RLM, a bidi
   override, 255 four-byte characters, 255 ``é``, a long ASCII name, a name holding
   ``=?utf-8?b?...?=`` encoded-word look-alikes, tabs, NEL/U+2028, only control
   characters, a CR/LF ``Bcc:`` injection: each reads back exactly (control characters
   as spaces, trimmed) through aiosmtpd and ``message_from_bytes(policy=default)``, one
   recipient, no extra header, every line of the message within 78 characters.
H3 The paged Atom feed (450 matches, titles with ``<&``, VT and NUL characters, a note):
   well-formed for feedparser on every page; self/first/previous/next per RFC 5005
   (self of page N is ``?page=N``); counts and the note in the subtitle; a page one past
   the end links back, a page 10^6 past it answers at once with none; ``GET
   /feeds/1.atom?page=`` 0, -1, x and 1,000,001 are 422.
H4 ``truncated`` at offsets 990/991/995/1000 in hybrid, semantic and lexical mode, by
   score and by date, for ``asthma`` and the author listing ``Smith J[au]``: ``has_more``
   exactly while the next offset is accepted, ``truncated`` and the note exactly when
   it is not.
H5 (PostgreSQL) A search saved on a store of old articles: none of them is new for it;
   one revised after the save is; an edit keeps the watermark; the watermark is the
   newest write committed.
H6 Similar pages with every vector identical (1,750 of them, a third of the PMIDs not in
   the store): the widening loop ends (it doubles to the index's size: at most 12
   index searches a page), and pages of 10 are disjoint slices of the PMID order.
H7 ``store_version`` is one statement and reads move nothing (searches, feeds, similar
   pages and a digest that finds nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import re
import time
from typing import Any

import feedparser
import pytest
from sqlalchemy import event, insert, select

from ingest.records import Deletion, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import articles, digest_matches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from litpulse.pipeline import digest as digest_mod
from litpulse.pipeline.digest import feed_for, run_digest
from litpulse.pipeline.saved_searches import add_search, edit_search, get_search
from ranking.refresh import refresh_index
from ranking.search import SearchFilters
from tests.ingest.test_store import make_record
from tests.litpulse.pipeline.test_digest import (
    CRISPR,
    THRESHOLD,
    _Hook,
    _Inbox,
    _load,
    _matched,
)
from tests.ranking.corpus import ARTICLES, article_rows, make_article
from tests.review.test_session27_digest_review import _Killed, _scores, _smtp, crispr_world
from tests.review.test_session27_digest_review import pg_world as pg_world  # noqa: F401
from tests.review.test_session27_paging_review import (  # noqa: F401
    P,
    _delete,
    _get,
    _ids,
    big,
    fresh,
    tiny,
    world,
)


@pytest.fixture
def crispr(sqlite_settings: Settings) -> Settings:
    """The OLD corpus articles stored and indexed (bundled model), on SQLite."""
    return crispr_world(sqlite_settings)


def _revise(engine: Any, pmids: Any) -> None:
    """MEDLINE's later record of these articles: the same text (MeSH added)."""
    Store(engine).apply([make_record(p, title=ARTICLES[p]["title"],
                                     abstract=ARTICLES[p]["abstract"],
                                     source=SourceRef("file", "pubmed26n0002.xml", 2))
                         for p in pmids])  # fmt: skip


# ------------------------------------------------------------------------- defects


def test_revised_old_matches_never_push_a_new_article_out_however_many(crispr: Settings) -> None:
    s = crispr
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 104})
    assert refresh_index(s).published
    assert run_digest(s.replace(digest_max_matches=2)).matched == 2
    _revise(engine, (101, 104))  # both revised weeks later, and one new article comes
    _load(engine, {107})
    assert refresh_index(s).published
    scores = _scores(s)
    assert scores[107] >= THRESHOLD and min(scores[101], scores[104]) > scores[107]
    report = run_digest(s.replace(digest_max_matches=1))  # one new match: within the cap
    (one,) = report.searches
    assert 107 in _matched(engine, search.id) or one.capped, (
        f"107 (score {scores[107]:.3f}) lost: matched {one.matched}, capped {one.capped}, "
        f"warnings {list(report.warnings)}"
    )


def test_a_write_while_a_page_is_served_never_hides_behind_one_store_version(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ranking.search as search_mod

    s, c = request.getfixturevalue("fresh")
    params: dict[str, Any] = {"q": "asthma inhaler", "k": 5}
    whole = _ids(_get(c, "/search", q=params["q"], k=10))
    real = search_mod.with_details
    deleted: list[int] = []

    def details_then_an_update_file(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)  # page 1 ranked; an update file commits now
        if not deleted:
            deleted.append(out[0].pmid - P)
            _delete(s, deleted[0])
        return out

    monkeypatch.setattr(search_mod, "with_details", details_then_an_update_file)
    first = _get(c, "/search", **params)
    monkeypatch.setattr(search_mod, "with_details", real)
    second = _get(c, "/search", **params, offset=5)
    shown = _ids(first) + _ids(second)
    never = [i for i in whole if i not in shown and i not in deleted]
    assert first["store_version"] != second["store_version"] or not never, (
        f"page 1 {_ids(first)}, page 2 {_ids(second)}: {never} never shown, both pages "
        f"store_version {first['store_version']}"
    )


def test_a_citation_recount_that_reorders_results_moves_store_version(
    request: pytest.FixtureRequest,
) -> None:
    s, c = request.getfixturevalue("fresh")
    params: dict[str, Any] = {"q": "asthma inhaler", "k": 10, "w_citation": 5}
    cited = _ids(_get(c, "/search", **params, offset=10))[0]
    store = Store(db.connect(s), defer_counts=True)  # as the bootstrap loads files
    store.apply([dataclasses.replace(make_article(900_000 + i, f"Cardiology note {i}", "Heart."),
                                     references=(P + cited,)) for i in range(40)])  # fmt: skip
    before = _get(c, "/search", **params)
    assert store.finish_counts() == 1  # the recount: 40 in-corpus citations
    after = _get(c, "/search", **params)
    assert _ids(before) != _ids(after), "the control: the recount reorders the results"
    assert before["store_version"] != after["store_version"], (
        f"{_ids(before)} became {_ids(after)} under store_version {after['store_version']}"
    )


def test_the_deepest_similar_page_points_only_at_offsets_it_accepts(
    request: pytest.FixtureRequest,
) -> None:
    c = request.getfixturevalue("big")
    page = _get(c, "/similar/100000", k=10, offset=995)
    assert len(page["results"]) == 10
    if page["has_more"]:
        nxt = c.get("/similar/100000", params={"k": 10, "offset": 1005})
        assert nxt.status_code == 200, f"has_more: true, then offset 1005: {nxt.text[:160]}"


def test_an_export_cut_at_the_deepest_offset_says_so(request: pytest.FixtureRequest) -> None:
    c = request.getfixturevalue("big")
    r = c.get("/export", params={"q": "asthma", "k": 100, "offset": 1000, "format": "csv"})
    assert r.status_code == 200 and r.text.count("\n") == 101  # 100 rows of 1,150
    said = {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("x-litpulse")}
    told = "true" in (said.get("x-litpulse-has-more"), said.get("x-litpulse-truncated"))
    assert told, f"50 more match; the export's headers say {said}"


def test_a_resend_after_a_kill_keeps_its_key_when_one_article_is_deleted_meanwhile(
    crispr: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = crispr.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101, 103, 104})
    assert refresh_index(s).published
    real = digest_mod.post_webhook

    def post_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Killed  # killed before the stamp

    monkeypatch.setattr(digest_mod, "post_webhook", post_then_die)
    with pytest.raises(_Killed):
        run_digest(s)
    monkeypatch.setattr(digest_mod, "post_webhook", real)
    Store(engine).apply([Deletion(103, SourceRef("file", "pubmed26n0002.xml", 2))])
    run_digest(s)
    keys: dict[int, set[str]] = {}
    for body in hook.bodies:
        for m in body["matches"]:
            keys.setdefault(m["pmid"], set()).add(body["delivery"])
    assert all(len(k) == 1 for k in keys.values()), (
        f"sent {[[m['pmid'] for m in b['matches']] for b in hook.bodies]} under keys "
        f"{[b['delivery'][:8] for b in hook.bodies]}: the receiver cannot drop the repeat"
    )


def test_a_huge_feed_page_in_the_cli_is_refused_or_empty_not_a_traceback(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litpulse.app.cli import main

    s = sqlite_settings
    search = add_search(s, name="crispr", query=CRISPR, owner="cli:x")
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code: Any = main(["alerts", "feed", str(search.id), "--page", "9" * 20])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    except Exception as exc:  # noqa: BLE001 - what escapes main is the defect
        code = f"{type(exc).__name__}: {exc}"
    assert code == 2 or (code == 0 and "No matches on page" in out.getvalue()), code


# --------------------------------------------------------------------- what held


def test_a_channel_down_for_nights_then_back_sends_the_tried_message_then_one_more(
    crispr: Settings, hook: _Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Held against the recorded keys that replaced per-digest messages: see the module
    docstring.) Down three nights for two searches, then back, with a kill after a
    message went out and before it was stamped: each search gets the message tried the
    first night, then one with the rest; the killed one goes again with its key."""
    s = crispr.replace(digest_webhook_url=hook.url)
    engine = db.connect(s)
    a = add_search(s, name="a", query=CRISPR, min_score=THRESHOLD, owner="alice")
    b = add_search(s, name="b", query=CRISPR, min_score=THRESHOLD, owner="bob")
    hook.status = 500
    nights = ({101}, {103}, {104})
    for night in nights:
        _load(engine, night)
        assert refresh_index(s).published
        down = run_digest(s)
        assert len(down.failures) == 2 and down.posted == 0
    hook.status = 200
    real = digest_mod.post_webhook
    calls: list[str] = []

    def post_then_die(settings: Any, search: Any, matches: Any, key: Any = None) -> Any:
        real(settings, search, matches, key=key)
        calls.append(search.name)
        if len(calls) == 2:
            raise _Killed  # after a's second message, before its stamp

    monkeypatch.setattr(digest_mod, "post_webhook", post_then_die)
    with pytest.raises(_Killed):
        run_digest(s)
    monkeypatch.setattr(digest_mod, "post_webhook", real)
    report = run_digest(s)
    assert not report.failures and report.posted == 5  # a's second again, b's both
    for search in (a, b):
        bodies = [x for x in hook.bodies if x["search"]["id"] == search.id]
        got = [sorted(m["pmid"] for m in x["matches"]) for x in bodies]
        if search is a:  # the second message twice, with one key: the receiver drops it
            assert got == [[101], [103, 104], [103, 104]]
            assert bodies[1]["delivery"] == bodies[2]["delivery"]
        else:
            assert got == [[101], [103, 104]]
        assert len({x["delivery"] for x in bodies}) == 2
    assert run_digest(s).posted == 0 and len(_matched(engine, a.id)) == 3


NAMES = {
    "emoji": "🧬 CRISPR 👩🏽‍🔬 editing 🇫🇷",
    "combining": "e\u0301dition ge\u0301nomique n\u0303 a\u0308\u0301",
    "rtl": "تحرير الجينات CRISPR في الخلايا البشرية \u200fעריכת גנים",
    "bidi": "\u202eabc\u202c CRISPR",
    "long-4-byte": "😀" * 255,
    "long-2-byte": "é" * 255,
    "long-ascii": ("gene editing " * 20)[:255],
    "encoded-words": "=?utf-8?b?SGFja2Vk?= =?utf-8?q?x=41?= ?=",
    "tab": "a\tb",
    "separators": "a\x85b\u2028c",
    "only-controls": "\r\n\t",
    "injection": "x\r\nBcc: evil@example.org",
}


def test_any_name_reads_back_exactly_in_the_subject(sqlite_settings: Settings) -> None:
    from litpulse.pipeline.digest_channels import Match, send_email
    from litpulse.pipeline.saved_searches import SavedSearch

    inbox = _Inbox()
    s, controller = _smtp(sqlite_settings, inbox)
    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    match = Match(id=1, search_id=7, pmid=101, title="t", score=0.9, index_version="v",
                  model_version="m", found_at=at)  # fmt: skip
    controller.start()
    try:
        for name in NAMES.values():  # as stored (older releases let control chars in)
            search = SavedSearch(id=7, name=name, query="CRISPR", filters=SearchFilters(),
                                 min_score=None, owner="x", created_at=at, watermark=at)
            assert send_email(s, search, [match]) is None
    finally:
        controller.stop()
    assert len(inbox.messages) == len(NAMES)
    for (key, name), (rcpts, msg) in zip(NAMES.items(), inbox.messages, strict=True):
        shown = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+", " ", name).strip()
        assert msg["Subject"] == f"litpulse: 1 new article for “{shown}”", key
        assert rcpts == ["team@example.org"], key
        assert set(msg.keys()) == {"Subject", "From", "To", "Message-ID", "Content-Type",
                                   "Content-Transfer-Encoding", "MIME-Version"}, key
        assert max(len(x) for x in msg.as_bytes().splitlines()) <= 78, key


def test_the_paged_feed_is_valid_and_links_its_pages(sqlite_settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    s = sqlite_settings
    engine = db.connect(s)
    search = add_search(s, name="broad <&> ]]> 🧬", query="COPD -asthma", owner="cli:x")
    template = next(r for r in article_rows() if r["pmid"] == 101)
    now, n = utcnow(), 450
    with engine.begin() as conn:
        conn.execute(insert(articles), [
            {**template, "pmid": 10_000 + i, "doi": None, "title": f"T {i}"} for i in range(n)])
        conn.execute(insert(digest_matches), [
            {"search_id": search.id, "pmid": 10_000 + i, "title": f"Gene <b>&\x0b\x00 {i}",
             "score": 0.9 - i / 10_000, "explanation": {"text": "x\x01"},
             "index_version": "v1", "model_version": "m1",
             "found_at": now - dt.timedelta(seconds=i // 100)} for i in range(n)])  # fmt: skip
    base = f"http://127.0.0.1:8000/feeds/{search.id}.atom"
    seen: list[str] = []
    for page, rels in ((1, {"self": 1, "first": 1, "next": 2}),
                       (2, {"self": 2, "first": 1, "previous": 1, "next": 3}),
                       (3, {"self": 3, "first": 1, "previous": 2}),
                       (4, {"self": 4, "first": 1, "previous": 3}),
                       (10**6, {"self": 10**6, "first": 1})):  # fmt: skip
        started = time.perf_counter()
        feed = feedparser.parse(feed_for(s, search.id, self_url=base, page=page))
        assert time.perf_counter() - started < 1.0
        assert not feed.bozo, feed.get("bozo_exception")
        want = {rel: base if p == 1 else f"{base}?page={p}" for rel, p in rels.items()}
        got = {x.rel: x.href for x in feed.feed.links}
        if "next" in want:  # the next page reads after this page's last match
            assert got.pop("next").startswith(f"{want.pop('next')}&after=")
        assert got == want
        assert "Note: -asthma is searched for" in feed.feed.subtitle
        if page <= 3:
            first, last = (page - 1) * 200 + 1, min(n, page * 200)
            assert f"Matches {first} to {last} of {n}" in feed.feed.subtitle
        else:
            assert not feed.entries and f"No matches on page {page}" in feed.feed.subtitle
        seen += [e.title for e in feed.entries]
    assert seen == [f"Gene <b>& {i}" for i in range(n)]  # newest first, each once
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        ok = c.get(f"/feeds/{search.id}.atom", params={"page": 2})
        assert ok.status_code == 200
        links = {x.rel: x.href for x in feedparser.parse(ok.content).feed.links}
        assert links["self"] == f"http://testserver/feeds/{search.id}.atom?page=2"
        for bad in ("0", "-1", "x", "1000001"):
            assert c.get(f"/feeds/{search.id}.atom", params={"page": bad}).status_code == 422


@pytest.mark.parametrize("query", ["asthma", "Smith J[au]"])
def test_the_deepest_pages_say_truncated_exactly_when_the_next_is_refused(
    request: pytest.FixtureRequest, query: str
) -> None:
    c = request.getfixturevalue("big")
    for mode in ("hybrid", "semantic", "lexical"):
        for sort in ("score", "date"):
            for offset, k, more in ((990, 10, True), (995, 5, True), (991, 10, False),
                                    (1000, 1, False)):  # fmt: skip
                d = _get(c, "/search", q=query, k=k, offset=offset, mode=mode, sort=sort)
                where = (query, mode, sort, offset, k)
                assert len(d["results"]) == k, where
                assert d["has_more"] is more and d["truncated"] is not more, where
                cut = [x for x in d["notes"] if x.startswith("More articles match")]
                assert bool(cut) is not more, where
                nxt = c.get("/search", params={"q": query, "k": k, "offset": offset + k,
                                               "mode": mode, "sort": sort})  # fmt: skip
                assert (nxt.status_code == 200) is more, where


@pytest.mark.postgres
def test_a_new_search_meets_no_old_article_but_their_revisions(pg_world: Settings) -> None:  # noqa: F811
    s = pg_world
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=0.0, owner="alice")
    with engine.connect() as conn:
        newest = conn.execute(select(articles.c.updated_at).order_by(
            articles.c.updated_at.desc()).limit(1)).scalar_one()  # fmt: skip
    assert search.watermark == newest
    first = run_digest(s)
    assert first.searches[0].candidates == 0 and not _matched(engine, search.id)
    kept = get_search(s, search.id).watermark
    edit_search(s, search.id, min_score=THRESHOLD, owner="alice")
    assert get_search(s, search.id).watermark == kept
    _revise(engine, (102,))  # an old article revised after the save: new for it
    assert refresh_index(s).published
    assert run_digest(s).searches[0].candidates == 1
    assert set(_matched(engine, search.id)) == {102}


def test_similar_pages_of_identical_vectors_end_and_stay_disjoint(
    request: pytest.FixtureRequest,
) -> None:
    import numpy as np

    from ranking.similar import similar_articles

    c = request.getfixturevalue("big")
    s = c.settings  # type: ignore[attr-defined]
    stored = np.arange(100_000, 101_150, dtype=np.int64)
    ids = np.concatenate([stored[:1400 - 600], np.arange(200_000, 200_600), stored[800:]])
    rng = np.random.default_rng(3)
    rng.shuffle(ids)  # FAISS-like: ties in the index's own order, not by PMID

    class Identical:
        id, model_version, kind = "same", "m", "flat"
        size = len(ids)
        searches = 0

        def reconstruct(self, pmid: int) -> Any:
            return np.ones(8, dtype=np.float32) / np.sqrt(8)

        def search(self, q: Any, k: int) -> tuple[Any, Any]:
            Identical.searches += 1
            k = min(k, len(ids))
            return np.ones((1, k), dtype=np.float32), ids[None, :k]

    index = Identical()
    started = time.perf_counter()
    pages: list[int] = []
    for offset in range(0, 50, 10):
        pages += [h.pmid for h in similar_articles(s, 100_000, k=10, offset=offset,
                                                   index=index).hits]  # fmt: skip
    assert time.perf_counter() - started < 10 and Identical.searches <= 5 * 12
    expected = sorted(p for p in stored.tolist() if p != 100_000)[:50]
    assert pages == expected


def test_store_version_is_one_statement_and_reads_move_nothing(
    request: pytest.FixtureRequest,
) -> None:
    s, c = request.getfixturevalue("fresh")
    engine = db.connect(s)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    with engine.connect() as conn:
        event.listen(engine, "before_cursor_execute", count)
        try:
            version = db.store_version(conn)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1
    search = add_search(s, name="asthma", query="asthma inhaler", owner="cli:x")
    _get(c, "/search", q="asthma inhaler", k=5)
    _get(c, "/search", q="asthma inhaler", k=5, offset=5, mode="lexical")
    _get(c, f"/similar/{P}", k=5)
    assert c.get(f"/feeds/{search.id}.atom").status_code == 200
    assert run_digest(s).matched == 0
    with engine.connect() as conn:
        assert db.store_version(conn) == version
    assert _get(c, "/search", q="asthma", k=3)["store_version"] == version
