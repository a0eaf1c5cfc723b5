"""Hostile review of two mechanisms changed together: the digest taking *revised* articles
as new (``updated_at`` watermark, litpulse/pipeline/digest.py ``_new_articles``) and the
catch-up marks of derived data (``db.catch_up_mark`` / ``set_catch_up_mark`` /
``fill_term_forms``; ``Store.catch_up_period_ends`` / ``Store._mark_caught_up``).

The ``xfail(strict=True)`` tests are defects (each fails now for the reason given); the
plain ones pin what holds. Real code paths only: records go through ``Store.apply``, the
index through ``refresh_index`` (bundled model), digests through ``run_digest``; the
previous release's writer is simulated at the database boundary as
tests/litpulse/test_upgrade_review.py does (its rows without the column it does not know,
no ``term_forms`` row).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from ingest.records import MeshHeading, PartialDate, Record, SourceRef
from ingest.runs import store_writer
from ingest.store import PERIOD_END_CHECKPOINT, Store
from litpulse.core import db
from litpulse.core.schema import articles, checkpoints, term_forms
from litpulse.core.settings import Settings
from litpulse.pipeline.digest import run_digest
from litpulse.pipeline.saved_searches import add_search
from ranking.refresh import refresh_index
from ranking.search import run_search
from tests.ingest.test_store import make_record
from tests.litpulse.pipeline.test_digest import (  # noqa: F401  (fixture)
    CRISPR,
    THRESHOLD,
    _load,
    _matched,
    indexed,
)
from tests.litpulse.test_upgrade_review import DECEMBER_2019, _filtered, _new_process, _rec
from tests.ranking.corpus import ARTICLES


def _revision(pmid: int, *, title: str, abstract: str, day: int = 1,
              published: PartialDate | None = None) -> Record:
    """A later MEDLINE revision of ``pmid`` (a later date revised, a later file)."""
    rec = make_record(
        pmid, title=title, abstract=abstract, revised=dt.date.today(),
        mesh=(MeshHeading("Humans", "D006801"), MeshHeading("Gene Editing", "D000072669")),
        source=SourceRef("file", f"pubmed26n{1000 + day:04d}.xml", day),
    )
    if published is not None:
        rec = dataclasses.replace(rec, pub_date=published, article_date=None, entrez_date=None)
    return rec


def _oracle(s: Settings) -> dict[int, Any]:
    """Semantic hits of the CRISPR query over the whole published index."""
    return {h.pmid: h for h in run_search(s, CRISPR, k=100, mode="semantic").hits}


# --------------------------------------------- 1. a revision whose new vector is not indexed


def test_a_revision_whose_new_text_is_not_indexed_yet_is_matched_once_it_is(
    indexed: Settings,  # noqa: F811
) -> None:
    s = indexed
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    # 203 (mosquito nets, indexed) is revised into a CRISPR paper after the publish: an
    # update file applied between the index step and the digest (or by the hourly ingest)
    a = ARTICLES[101]
    Store(engine).apply([_revision(203, title=a["title"], abstract=a["abstract"])])
    with engine.connect() as conn:
        assert conn.execute(select(articles.c.title).where(articles.c.pmid == 203)
                            ).scalar() == a["title"]  # fmt: skip
    run_digest(s)  # the index still holds 203's old vector
    assert 203 not in _matched(engine, search.id)  # not yet: fair

    assert refresh_index(s).published  # 203 re-embedded with its new text
    hit = _oracle(s).get(203)
    assert hit is not None and hit.score >= THRESHOLD  # the index says it matches now
    second = run_digest(s)
    assert 203 in _matched(engine, search.id), (
        f"revised 203 never matched (second digest ranked "
        f"{second.searches[0].candidates} articles)"
    )


# ------------------------------- 2. a flood of revised old articles crowds out a new one


def test_revised_old_articles_do_not_crowd_a_new_match_out_of_the_digest(
    indexed: Settings,  # noqa: F811
) -> None:
    s = indexed
    engine = db.connect(s)
    # the update file: old articles (1970s issues, uncited) revised into close paraphrases
    # of the query; and one genuinely new, recent article a little further in cosine
    old_issue = PartialDate(1975, 3, None, "1975 Mar")
    revised = {
        402: "CRISPR Cas9 gene editing",
        403: "CRISPR gene editing off-target effects in mice",
        404: "Editing human cells with CRISPR Cas9 off-target",
    }
    search = add_search(s, name="crispr", query=CRISPR, min_score=None, owner="alice")
    Store(engine).apply([_revision(p, title=t, abstract="", published=old_issue, day=i)
                         for i, (p, t) in enumerate(revised.items(), 1)])  # fmt: skip
    _load(engine, {101})  # new: CRISPR off-target effects in human cells, 30 days old
    assert refresh_index(s).published
    hits = _oracle(s)
    new_hit = hits[101]
    old_hits = [hits[p] for p in revised]
    # preconditions: every revised old article is nearer in cosine than the new one, and
    # a threshold exists that the new one passes and none of the old ones does
    assert all(h.similarity > new_hit.similarity for h in old_hits), (
        new_hit.similarity, [h.similarity for h in old_hits])
    top_old = max(h.score for h in old_hits)
    assert new_hit.score > top_old, (new_hit.score, top_old)
    threshold = (new_hit.score + top_old) / 2
    # one match at most, two candidates re-ranked: the same pool a 50-match cap with the
    # default 200 candidates has after a 100k-article update file (only smaller)
    report = run_digest(s.replace(digest_min_score=threshold, digest_max_matches=1,
                                  rerank_candidates=2))  # fmt: skip
    (one,) = report.searches
    assert 101 in _matched(engine, search.id) or one.capped or report.warnings, (
        f"new article 101 (score {new_hit.score:.3f} >= {threshold:.3f}) neither matched "
        f"nor reported: {one}"
    )


# ------------------------------------------ 3. what holds: revised twice, deleted, clock


def test_an_article_revised_twice_between_digests_is_matched_once(
    indexed: Settings,  # noqa: F811
) -> None:
    """Holds: two revisions between digests, then another after: one match, no repeat."""
    s = indexed
    engine = db.connect(s)
    search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="alice")
    _load(engine, {101})
    store = Store(engine)
    a = ARTICLES[101]
    store.apply([_revision(101, title=a["title"], abstract=a["abstract"], day=1)])
    store.apply([_revision(101, title=a["title"] + ".", abstract=a["abstract"], day=2)])
    assert refresh_index(s).published
    first = run_digest(s)
    assert set(_matched(engine, search.id)) == {101} and first.matched == 1
    store.apply([_revision(101, title=a["title"] + "!", abstract=a["abstract"], day=3)])
    assert refresh_index(s).published
    again = run_digest(s)
    assert again.matched == 0 and set(_matched(engine, search.id)) == {101}


# ------------------------------ 4. an old-release writer beside the exact catch-up mark


def _old_release_writer_after_first_batch(
    engine: Any, *, empty: bool = False
) -> tuple[list[int], Callable[[Any], None]]:
    """An ``on_batch`` hook that, after this release's first batch, has the previous
    release's nightly store PMID 3 (another process: no lease, no period end, no
    spelling; its rows as that release leaves them) — and, as that release knows no
    catch-up marks, leaves them as they were (this release's Store would have run its
    opening catch-ups and moved them: they are put back); and the list it marks once it
    has. ``empty``: the marks are checked to be an empty store's ("every row")."""
    keys = [PERIOD_END_CHECKPOINT, db.TERM_FORMS_CHECKPOINT]

    def marks() -> list[Any]:
        c = checkpoints.c
        with engine.connect() as conn:
            return [conn.execute(select(c.status, c.value).where(c.scope == scope, c.key == key)
                                 ).first() for scope, key in keys]  # fmt: skip

    def old_release_writer() -> None:
        before = marks()
        if empty:
            assert all(
                m is not None and m.status and not (m.value or {}).get("through")
                for m in before
            ), before  # an empty store's marks: "every row"
        Store(engine).apply([_rec(3, date="2019 Nov-Dec", mesh=("Sjögren's Syndrome",))])
        with engine.begin() as conn:
            for (scope, key), m in zip(keys, before, strict=True):
                if m is None:
                    conn.execute(delete(checkpoints).where(checkpoints.c.scope == scope,
                                                           checkpoints.c.key == key))
                    continue
                conn.execute(update(checkpoints).where(checkpoints.c.scope == scope,
                                                       checkpoints.c.key == key)
                             .values(status=m.status, value=m.value))  # fmt: skip
            conn.execute(update(articles).where(articles.c.pmid == 3)
                         .values(pub_period_end=None))  # fmt: skip
            conn.execute(delete(term_forms).where(term_forms.c.term == "Sjögren's Syndrome"))

    ran: list[int] = []

    def on_batch(_counts: Any) -> None:
        if not ran:  # between this release's first and second batch
            ran.append(1)
            t = threading.Thread(target=old_release_writer)
            t.start()
            t.join()

    return ran, on_batch


def test_a_row_the_previous_release_writes_during_an_apply_is_caught_up_later(
    settings: Settings,
) -> None:
    s = settings
    engine = db.connect(s)
    Store(engine).apply([_rec(1, date="2018")])  # the store, caught up

    ran, on_batch = _old_release_writer_after_first_batch(engine)
    with store_writer(engine):  # this release's nightly, under the lease
        Store(engine).apply([_rec(10, date="2018"), _rec(11, date="2018")],
                            batch_size=1, on_batch=on_batch)  # fmt: skip
    assert ran
    # the old writer is stopped; this release opens and writes again, twice
    for pmid in (20, 21):
        _new_process()
        engine = db.connect(s)
        with store_writer(engine):
            Store(engine).apply([_rec(pmid, date="2018")])
    assert 3 in _filtered(db.connect(s), **DECEMBER_2019), "2019 Nov-Dec row: no period end"
    assert _filtered(db.connect(s), mesh=("Sjogren's Syndrome",)) == [3], "no folded spelling"


def test_a_row_the_previous_release_writes_during_the_first_apply_to_an_empty_store_is_caught_up(
    settings: Settings,
) -> None:
    """The same, on a store that was empty when this release's writer began: the catch-up
    marks then say "every row" (no ``through``), and the rows since them are counted
    against the writer's own to find the other writer's row."""
    s = settings
    engine = db.connect(s)

    ran, on_batch = _old_release_writer_after_first_batch(engine)
    with store_writer(engine):
        Store(engine).apply([_rec(10, date="2018"), _rec(11, date="2018")],
                            batch_size=1, on_batch=on_batch)  # fmt: skip
    assert ran
    engine = db.connect(s)
    assert 3 in _filtered(engine, **DECEMBER_2019), "2019 Nov-Dec row: no period end"
    assert _filtered(engine, mesh=("Sjogren's Syndrome",)) == [3], "no folded spelling"


def test_a_writer_killed_before_its_mark_leaves_nothing_uncaught(settings: Settings) -> None:
    """Holds: a writer under the lease that dies after committing batches (before
    ``_mark_caught_up``) leaves the marks where they were: its rows carry their own period
    ends and spellings, and an old writer's row under way is caught up by the next write."""
    s = settings
    engine = db.connect(s)
    Store(engine).apply([_rec(1, date="2018")])

    class Killed(Exception):
        pass

    def old_release_writer() -> None:  # another process: no lease, no period end
        Store(engine).apply([_rec(3, date="2019 Nov-Dec")])
        with engine.begin() as conn:
            conn.execute(update(articles).where(articles.c.pmid == 3)
                         .values(pub_period_end=None))  # fmt: skip

    def on_batch(_counts: Any) -> None:
        t = threading.Thread(target=old_release_writer)
        t.start()
        t.join()
        raise Killed  # this writer dies after its first batch committed
    with pytest.raises(Killed), store_writer(engine):
        Store(engine).apply([_rec(2, date="2019 Nov-Dec"), _rec(4)], batch_size=1,
                            on_batch=on_batch)  # fmt: skip
    _new_process()
    engine = db.connect(s)
    with store_writer(engine):
        Store(engine).apply([_rec(5, date="2018")])
    assert _filtered(db.connect(s), **DECEMBER_2019) == [2, 3]
