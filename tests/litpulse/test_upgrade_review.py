"""Review: upgrading a deployment from the previous release (a697cbc) to this one.

The previous release knew neither ``term_forms`` (filled when this release first opens
the store: :func:`litpulse.core.db.fill_term_forms`) nor ``articles.pub_period_end``
(filled on the first write: :meth:`ingest.store.Store.upgrade_period_ends`); its saved
searches were saved under looser query rules, and its digest's watermark compared
``ingested_at`` (now ``updated_at``). Each test builds the store as the previous release
left it (the new table and column dropped, their checkpoints removed: what that release
never wrote), then goes on with this release's real code paths: the store, the published
index (a tiny random encoder), the search filters, the HTTP API, the digest and the CLI.
A rolling upgrade (a writer of the previous release still storing while this release
reads, or after this release wrote) is reproduced by what that writer leaves: rows
without a period end, spellings not in ``term_forms``.

The ``xfail(strict=True)`` tests are defects; the plain ones pin what holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, delete, insert, select, text, update
from sqlalchemy.engine import make_url

from ingest import store as store_module
from ingest.records import MeshHeading, PartialDate, Record
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import (
    articles,
    checkpoints,
    digest_matches,
    saved_searches,
    term_forms,
)
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from ranking import embed as em
from ranking.refresh import refresh_index
from ranking.search import SearchFilters
from tests.conftest import PG_ADMIN_URL, fresh_postgres_database
from tests.ingest.test_store import make_record
from tests.tiny_encoder import build_tiny_encoder

QUERY = "sepsis biomarker"
DECEMBER_2019 = {"since": "2019-12-01", "until": "2019-12-31"}


# ------------------------------------------------------------------------------ helpers


def _rec(
    pmid: int,
    *,
    date: str = "2018",
    mesh: tuple[str, ...] = ("Humans",),
    version: int = 1,
    title: str | None = None,
) -> Record:
    """A record about sepsis biomarkers published in the issue ``date`` (PubMed's date
    text: ``2019 Nov-Dec``, ``2019 Dec``, ``2018``), with no electronic or entrez date (its
    best date is the issue's first day)."""
    months = {"Nov": 11, "Dec": 12}
    month = next((m for k, m in months.items() if k in date), None)
    return dataclasses.replace(
        make_record(
            pmid,
            version=version,
            mesh=tuple(MeshHeading(m, "D0") for m in mesh),
            abstract=f"Sepsis biomarker lactate in cohort {pmid}.",
        ),
        title=title or f"Sepsis biomarker study {pmid}.",
        pub_date=PartialDate(int(date[:4]), month, None, date),
        article_date=None,
        entrez_date=None,
    )


def _as_previous_release_left_it(settings: Settings) -> None:
    """Take from the store what the previous release never wrote: the ``term_forms``
    table, the ``pub_period_end`` column and their checkpoints; then forget the process's
    engines and upgrade marks, as a process of this release starting on that store."""
    engine = db.connect(settings)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE term_forms"))
        conn.execute(text("ALTER TABLE articles DROP COLUMN pub_period_end"))
        conn.execute(delete(checkpoints).where(
            checkpoints.c.scope == "store",
            checkpoints.c.key.in_(["term_forms", store_module.PERIOD_END_CHECKPOINT[1]]),
        ))  # fmt: skip
    _new_process()


def _new_process() -> None:
    """What a fresh process of this release has: no engine, no store found current."""
    db.dispose_engines()
    store_module._SEQUENCES_CURRENT.clear()
    store_module._LANG_TERMS_CURRENT.clear()
    store_module._RUN_IDS_CURRENT.clear()
    store_module._PERIOD_DATES_CURRENT.clear()


def _filtered(engine: Engine, **filters: Any) -> list[int]:
    """The live PMIDs passing ``filters`` (the SQL every search, API call and digest uses)."""
    with engine.connect() as conn:
        q = select(articles.c.pmid).where(*SearchFilters(**filters).clauses())
        return sorted(conn.execute(q.order_by(articles.c.pmid)).scalars())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-upgrade"), max_seq_length=32)


@pytest.fixture
def world(settings: Settings, tiny: str) -> Iterator[Settings]:
    """This test's store, with the tiny encoder as its model (index refreshes embed fast)."""
    em.clear_cache()
    yield settings.replace(model=tiny, max_seq_length=32, search_server_url="",
                           api_rate_burst=100000)  # fmt: skip
    em.clear_cache()


def _api(s: Settings) -> Any:
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    return TestClient(create_app(s), raise_server_exceptions=False)


# ----------------------------------------------------------------------- what holds


def test_an_upgraded_store_opens_checks_and_filters_folded_mesh_at_once(world: Settings) -> None:
    """Holds: the first process of this release (here the API) opens a store the previous
    release left, adds the column, fills ``term_forms`` once; the published index checks
    out; a folded MeSH filter (curly apostrophe, accent) finds old rows before any write."""
    from ranking.index_status import check_consistency

    s = world
    Store(db.connect(s)).apply([_rec(1, mesh=("Sjogren's Syndrome",)), _rec(2)])
    assert refresh_index(s).published
    _as_previous_release_left_it(s)

    with _api(s) as client:
        assert client.get("/status").status_code == 200
        got = client.get("/search", params={"q": QUERY, "mesh": "Sjögren’s Syndrome",
                                            "mode": "semantic", "k": 50})  # fmt: skip
        assert got.status_code == 200, got.text
        assert [r["pmid"] for r in got.json()["results"]] == [1]
    assert check_consistency(s)["ok"]
    assert db.fill_term_forms(db.connect(s)) == 0  # once


def test_the_first_digest_after_the_upgrade_sends_nothing_twice(world: Settings) -> None:
    """Holds: the watermark the previous release left (its newest ``ingested_at``) read as
    an ``updated_at`` by this release's digest: untouched old articles are not new again;
    an article the old digest matched, revised since, is looked at again but not recorded
    (or sent) twice; a new article is matched."""
    from litpulse.pipeline.digest import run_digest
    from litpulse.pipeline.saved_searches import add_search

    s = world
    engine = db.connect(s)
    Store(engine).apply([_rec(1)])
    assert refresh_index(s).published
    search = add_search(s, name="sepsis", query=QUERY, min_score=0.0, owner="cli:ops")
    Store(engine).apply([_rec(p) for p in (2, 3, 4)])
    assert refresh_index(s).published
    first = run_digest(s)  # the previous release's last digest (no revision: same watermark)
    assert not first.failures and first.matched == 3
    _as_previous_release_left_it(s)

    engine = db.connect(s)
    Store(engine).apply([_rec(2, version=2, title="Sepsis biomarker study 2, revised."),
                         _rec(5)])  # fmt: skip
    assert refresh_index(s).published
    after = run_digest(s)
    (one,) = after.searches
    assert one.error is None and one.candidates == 2  # the revised one and the new one
    with engine.connect() as conn:
        pmids = (
            conn.execute(
                select(digest_matches.c.pmid).where(digest_matches.c.search_id == search.id)
            )
            .scalars()
            .all()
        )
    assert sorted(pmids) == [2, 3, 4, 5]  # 2 once


# --------------------------------------------------------------------------- defects


# ingest/store.py:214 (Store.apply -> upgrade_period_ends) and litpulse/core/db.py:150
# (_upgrade): the period ends of a store made before pub_period_end are filled on its first
# WRITE, while term_forms (the same kind of once-only upgrade) moved to the first OPEN for
# exactly this reason. A server (`litpulse serve`) started on the upgraded store answers a
# December 2019 range without the '2019 Nov-Dec' issue until the next ingest runs -- the
# README's "gaining the period ends on its first write" admits it, but the upgraded API's
# answers are silently wrong meanwhile (and a deployment that upgrades the server first and
# keeps ingesting with the old release stays wrong: see the rolling test below).
def test_the_api_started_on_an_upgraded_store_meets_the_later_months_of_a_period(
    world: Settings,
) -> None:
    s = world
    Store(db.connect(s)).apply([_rec(1, date="2019 Nov-Dec"), _rec(2, date="2019 Dec"),
                                _rec(3, date="2018")])  # fmt: skip
    assert refresh_index(s).published
    _as_previous_release_left_it(s)

    with _api(s) as client:  # `litpulse serve` after the upgrade, before the nightly
        got = client.get("/search", params={"q": QUERY, "mode": "semantic", "k": 50,
                                            **DECEMBER_2019})  # fmt: skip
    assert got.status_code == 200, got.text
    assert sorted(r["pmid"] for r in got.json()["results"]) == [1, 2]


# litpulse/core/db.py:159-199 (fill_term_forms): the spellings are recorded once, under a
# checkpoint, when this release first opens the store; afterwards only this release's
# writers add spellings (ingest/links.py:127 add_term_forms, each for the terms of its own
# batch). In a rolling upgrade that opens the store with the new server first while the
# previous release's nightly still ingests (the natural order: readers first), every MeSH
# spelling that nightly stores is never recorded -- the checkpoint says done, and a new
# writer only adds a spelling when it stores an article carrying it again. The folded
# filter (ranking/search.py:365-373) then misses those articles for good: 'Sjogren's
# Syndrome' typed without the accent finds nothing. Seen with the real previous release on
# PostgreSQL: ('ptype', 'Retracted Publication') stored by its ingest after the new
# release's `status` stayed out of term_forms through the new release's next ingest.
def test_spellings_stored_by_the_previous_release_during_a_rolling_upgrade_are_folded(
    world: Settings,
) -> None:
    s = world
    Store(db.connect(s)).apply([_rec(1)])
    _as_previous_release_left_it(s)
    engine = db.connect(s)  # this release's server opens it: term_forms filled, checkpoint
    # the previous release's nightly stores an article with a spelling new to the store;
    # that release writes no term_forms row (the row this release's writer adds is removed)
    Store(engine).apply([_rec(2, mesh=("Sjögren's Syndrome",))])
    with engine.begin() as conn:
        conn.execute(delete(term_forms).where(term_forms.c.term == "Sjögren's Syndrome"))
    _new_process()  # then this release's nightly takes over and writes
    Store(db.connect(s)).apply([_rec(3), _rec(4, mesh=("Humans", "Sepsis"))])

    assert _filtered(db.connect(s), mesh=("Sjögren's Syndrome",)) == [2]  # as stored
    assert _filtered(db.connect(s), mesh=("Sjogren's Syndrome",)) == [2]  # folded: misses


# ingest/store.py:327-361 (upgrade_period_ends) with store.py:243-256 (_upgrade_once): the
# pass over rows without a period end runs once per store, then a checkpoint says done. A
# row the previous release stores after that (a second worker or an old venv's `litpulse
# ingest` still running in a rolling upgrade; that release does not know the column) keeps
# pub_period_end NULL for good: the next writes of this release skip the pass, and a date
# range in the later months of its period never meets it.
def test_a_period_row_stored_by_the_previous_release_after_the_upgrade_gains_its_end(
    world: Settings,
) -> None:
    s = world
    Store(db.connect(s)).apply([_rec(1, date="2018")])
    _as_previous_release_left_it(s)
    Store(db.connect(s)).apply([_rec(2, date="2019 Dec")])  # this release writes: pass done
    engine = db.connect(s)
    Store(engine).apply([_rec(3, date="2019 Nov-Dec")])  # the previous release's writer...
    with engine.begin() as conn:  # ...which leaves the column it does not know empty
        conn.execute(update(articles).where(articles.c.pmid == 3).values(pub_period_end=None))
    _new_process()
    Store(db.connect(s)).apply([_rec(4, date="2018")])  # this release's next nightly

    assert _filtered(db.connect(s), **DECEMBER_2019) == [2, 3]


def _broken_saved_search(s: Settings) -> tuple[int, set[int]]:
    """A store and index with a saved search the previous release accepted and this one
    refuses (a field tag), articles stored after its watermark, and this release's first
    digest (which reports it). Returns the search's id and the articles it never looked at."""
    from litpulse.pipeline.digest import run_digest

    engine = db.connect(s)
    Store(engine).apply([_rec(1)])
    assert refresh_index(s).published
    now = utcnow()
    with engine.begin() as conn:  # as the previous release's `alerts add` stored it
        sid = conn.execute(insert(saved_searches).values(
            name="sepsis", query="sepsis[ti] biomarker", filters={}, min_score=0.0,
            owner="cli:ops", created_at=now, watermark=now,
        ).returning(saved_searches.c.id)).scalar_one()  # fmt: skip
    _as_previous_release_left_it(s)
    Store(db.connect(s)).apply([_rec(p) for p in (2, 3, 4)])  # tonight's articles
    assert refresh_index(s).published
    report = run_digest(s)
    (failure,) = report.failures
    assert "'sepsis'" in failure and "litpulse alerts edit" in failure
    return sid, {2, 3, 4}


# litpulse/pipeline/saved_searches.py:120-123 (_from_row) and litpulse/pipeline/digest.py:
# 356-357: a saved search whose query this release refuses is reported with one remedy,
# "remove it and save it again" -- there is no way to correct a search's query in place
# (no `alerts edit`, no PUT /alerts/{id}). Following the advice loses what the search was
# owed: the new search's watermark is its creation (saved_searches.py:177 add_search), so
# every article stored since the broken search's last digest (the whole time between the
# upgrade and the operator noticing) is never matched; its feed URL (/feeds/ID.atom, the
# subscribers' link) and its match history go too.
def test_fixing_a_refused_saved_search_keeps_the_articles_it_was_owed(world: Settings) -> None:
    from litpulse.pipeline.digest import run_digest
    from litpulse.pipeline.saved_searches import edit_search

    s = world
    sid, owed = _broken_saved_search(s)
    # fixed: what the digest and `alerts list` now tell the operator to do
    fixed = edit_search(s, "sepsis", query=QUERY)
    assert fixed.id == sid and fixed.problem is None
    report = run_digest(s)
    assert not report.failures
    with db.connect(s).connect() as conn:
        got = set(
            conn.execute(
                select(digest_matches.c.pmid).where(digest_matches.c.search_id == fixed.id)
            ).scalars()
        )
    assert got == owed


# litpulse/app/cli/alerts.py:152-178 (run_digest_cmd): a saved search this release's query
# rules refuse fails every digest from the upgrade on (it can never succeed until someone
# acts: it is not a transient delivery failure), yet `litpulse alerts run` exits 0 -- a cron
# job or a DAG task running it sees success night after night; only a stderr line, whose
# prefix even says "tried again by the next digest", tells of it. `litpulse status` does
# not mention it either (and the search's Atom feed simply goes quiet for its owner).
def test_alerts_run_fails_when_a_saved_search_cannot_be_searched(
    world: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.app.cli import build_parser

    s = world
    _broken_saved_search(s)
    capsys.readouterr()
    args = build_parser().parse_args(["alerts", "run"])
    code = args.func(args, s)
    err = capsys.readouterr().err
    assert "'sepsis'" in err and "query is refused" in err
    assert code != 0


# ------------------------------------------------------ PostgreSQL roles (the API's role)


@pytest.fixture
def reader_role() -> Iterator[str]:
    """A login role like the one a read-only API connects as (SELECT only, no ownership)."""
    role = f"lp_rev_ro_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    except Exception as exc:  # noqa: BLE001 - no server: conftest's rule decides
        admin.dispose()
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield role
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def _previous_release_store_with_reader(
    url: str, role: str, tmp: Path
) -> tuple[Settings, Settings]:
    """A store the previous release left, read by ``role`` with SELECT on every table it
    had (``GRANT SELECT ON ALL TABLES``, as such a role is set up). Owner's and reader's
    settings."""
    owner = Settings.from_env({}, home=tmp / "home", database_url=url)
    engine = db.connect(owner)
    Store(engine).apply([_rec(1)])
    _as_previous_release_left_it(owner)
    raw = create_engine(url)
    with raw.begin() as conn:
        conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    raw.dispose()
    reader_url = make_url(url).set(username=role).render_as_string(hide_password=False)
    return owner, Settings.from_env({}, home=tmp / "home", database_url=reader_url)


# litpulse/core/db.py:143-147 (_upgrade: metadata.create_all before add_missing_columns): a
# role that may not create tables -- the read-only role an API used with the previous
# release -- opening the store before its owner did gets a raw psycopg InsufficientPrivilege
# traceback ("permission denied for schema public ... CREATE TABLE term_forms"), not the
# ConfigError add_missing_columns gives for the same situation ("open the store once as a
# role that may alter its tables (the tables' owner)"), which this upgrade never reaches.
# fill_term_forms' docstring (and the commit) says such a role "leaves it with a warning".
# Seen with the real releases: the previous release's `litpulse status` as that role works,
# this release's crashes.
@pytest.mark.postgres
def test_a_read_only_role_opening_a_previous_release_store_is_told_to_open_it_as_owner(
    tmp_path: Path, reader_role: str
) -> None:
    with fresh_postgres_database("lp_rev_upgrade") as url:
        try:
            _owner, reader = _previous_release_store_with_reader(url, reader_role, tmp_path)
            with pytest.raises(ConfigError, match="owner"):
                db.connect(reader)
        finally:
            db.dispose_engines()


# ranking/search.py:365-373 (SearchFilters.clauses: every MeSH / publication-type filter
# reads term_forms) with litpulse/core/db.py:143 (the owner's upgrade creates term_forms and
# grants it to no one): a read-only role set up with GRANT SELECT ON ALL TABLES (tables
# that existed then) -- it searched with --mesh under the previous release -- gets "permission
# denied for table term_forms" on EVERY MeSH or type filter once the owner has upgraded
# the store (the API answers 500; `litpulse search --mesh` a traceback). Neither the code
# (grant the new table to the roles reading article_terms, or fall back to lower(term)
# when it cannot read it) nor the README (no upgrade note on roles) deals with it.
@pytest.mark.postgres
def test_a_read_only_role_still_filters_by_mesh_after_the_owner_upgraded(
    tmp_path: Path, reader_role: str
) -> None:
    with fresh_postgres_database("lp_rev_upgrade") as url:
        try:
            owner, reader = _previous_release_store_with_reader(url, reader_role, tmp_path)
            db.connect(owner)  # the owner opens it first, as the deployment should
            engine = db.connect(reader)
            assert _filtered(engine) == [1]  # the role reads the store
            assert _filtered(engine, mesh=("Humans",)) == [1]
        finally:
            db.dispose_engines()


# README.md:588-589 ("A store made by an older litpulse is upgraded on connect (new columns
# are added ...)") is the whole of the upgrade notes. It does not say: that this release
# adds a table (term_forms) a read-only database role must be granted; that the previous
# release's writers must be stopped before this release opens the store (the once-only
# term_forms and period-end passes miss what they write afterwards); that saved searches
# the new query rules refuse stop matching until removed and saved again (losing their feed
# and the articles in between); that the digest now takes revised articles as new.
def test_the_readme_upgrade_note_says_what_this_upgrade_needs() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("A store made by an older litpulse is upgraded on connect")
    note = readme[start : start + 2000]
    assert "term_forms" in note and "GRANT" in note.upper()
    assert "saved search" in note
    assert "stop" in note


def test_the_upgrade_helpers_reproduce_the_previous_release(settings: Settings) -> None:
    """Holds (and checks the helper): after the drop, a fresh process of this release adds
    the column and the table back, and the period ends arrive with the first write."""
    from sqlalchemy import inspect

    Store(db.connect(settings)).apply([_rec(1, date="2019 Nov-Dec")])
    _as_previous_release_left_it(settings)
    raw = create_engine(settings.effective_database_url)
    assert "term_forms" not in inspect(raw).get_table_names()
    assert "pub_period_end" not in {c["name"] for c in inspect(raw).get_columns("articles")}
    raw.dispose()
    engine = db.connect(settings)
    assert _filtered(engine, **DECEMBER_2019) == []  # before the first write
    Store(engine).apply([_rec(2, date="2018")])
    assert _filtered(engine, **DECEMBER_2019) == [1]
    with engine.connect() as conn:
        end = conn.execute(
            select(articles.c.pub_period_end).where(articles.c.pmid == 1)
        ).scalar_one()
    assert end == dt.date(2019, 12, 31)
