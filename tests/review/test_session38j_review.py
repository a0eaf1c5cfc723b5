"""Hostile review (session 38j) of 38b: ``store_counts`` kept by database triggers
(``db.keep_counts``, the trigger SQL of both stores, the fold of PostgreSQL's delta rows,
SQLite's 256-row statements).

Findings:

X1 **PostgreSQL's trigger functions name ``store_counts`` by the writer's
   ``search_path``.** The functions are made in the store's schema, but their bodies
   insert into an unqualified ``store_counts``: a store in a schema of its own
   (``options=-csearch_path=lit``) written by a session whose ``search_path`` is another
   (psql's default, a maintenance job naming ``lit.articles``, ``pg_restore``'s empty
   path) either fails (``relation "store_counts" does not exist``: reproduced with
   ``DELETE FROM lit.articles`` from a default connection) or, where ``public`` holds
   another store, appends the deltas to that store's counts: both stores' counts wrong
   (deleting 2 of ``lit38j``'s 10 articles left it 10 live, the ``public`` store 1).
   **Fixed**: the functions name ``"<schema>".store_counts`` whole (``COUNT_TRIGGERS``
   ``litpulse_counts_v2``: a store of v1 is counted again at its next open, the v1
   functions dropped); a schema renamed since is made again at its next open (the check
   of the triggers reads their functions' bodies for this schema's name). Not
   ``TG_TABLE_SCHEMA`` through ``EXECUTE``: it plans every statement, a one-row
   ``INSERT`` measured 560 µs against 340 (3 x 3,000 statements; static: 350 vs 325).
   (test_x1_a_writer_with_another_search_path_counts_in_the_store_it_writes)

X2 **A recount at open beside a fold double-counts.** ``keep_counts`` (a store whose
   triggers are from an older version, or whose counts were emptied) deletes the rows of
   ``store_counts`` and inserts one exact count; a fold running meanwhile (a status, the
   API, a writer's ``Store.apply``) deletes the same rows and inserts their sum. The
   recount's ``DELETE`` waits on the fold's row locks, then skips the rows the fold
   deleted and never sees the row it inserted (READ COMMITTED): the store keeps the
   fold's sum and the whole count, every count doubled for good. Reproduced by holding a
   delta row locked while a fold and then a recount queue on it: 50 live of 25, 114
   references of 57.
   **Fixed**: ``keep_counts`` takes the fold's advisory lock (waiting for a fold under
   way, within its 2 s lock wait) after the tables' lock and before it empties
   ``store_counts``; a fold meanwhile finds it taken and leaves the rows to a later one.
   (test_x2_a_recount_beside_a_fold_counts_once)

X3 **SQLite's 256-row statements exceed the bound-variable limit of SQLite before
   3.32** (999; the project supports older SQLite: ``bulk_update``'s fallback before
   3.33, the upsert needs 3.24): ``_sqlite_rows`` took 32,766 as the limit, so a batch of
   300 records failed ``too many SQL variables`` and stored nothing. The limit is a
   connection's run-time limit (``sqlite3.Connection.setlimit``, the documented stand-in
   here for the older library's compiled default of 999).
   **Fixed**: ``_sqlite_rows`` sends as many rows a statement as the connection's
   ``getlimit(SQLITE_LIMIT_VARIABLE_NUMBER)`` allows (at most 256): 25 rows of
   ``articles``' 39 columns under 999.
   (test_x3_sqlite_rows_fit_the_connections_variable_limit)

Held (SQLite and PostgreSQL unless said): an older store (no triggers, counts emptied)
opened by two processes at once is counted exactly once, and kept after
(test_held_two_openers_count_an_older_store_once); a read-only role's status over more
delta rows than ``FOLD_COUNTS_AT`` sums them exactly, its fold failing quietly and leaving
the rows (PostgreSQL, test_held_a_reader_roles_status_sums_many_delta_rows); a store whose
triggers are from an older version is counted again at open and its older functions
dropped (X2's test). Read, not tested further: no writer uses ``INSERT OR REPLACE``
(SQLite fires no delete trigger for the rows it replaces unless ``recursive_triggers``)
or ``TRUNCATE`` (no statement trigger) on ``articles`` or ``references`` (the tests'
``_truncate`` counts again after); a row that fails in a 256-row statement fails its
batch, as one failing ``executemany`` row did (the batch's transaction is rolled back
either way): no column of a parsed record can fail a constraint there (``lower(doi)`` is
not unique, the NOT NULL columns are the writer's), so there is nothing to quarantine
at that point; the one-row ``UPDATE OR FAIL`` fallback (SQLite before 3.33) is not
reached on this machine's SQLite 3.40.

X4 **(noticed here, fixed by the integrator) A PostgreSQL store in a schema other than
   ``public`` (``search_path``) had every index "not the schema's (… ON lit38j.articles
   …): made again" at each open**: ``pg_get_indexdef`` names the table with its schema,
   and the comparison stripped only ``public.``: 14 indexes dropped and made again at
   every start (a whole-table build each at PubMed's size). **Fixed**:
   ``db._index_definitions`` drops the store's own schema from the definitions it reads.
   (test_x4_a_store_in_another_schema_keeps_its_indexes_at_the_next_open)
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, event, insert, text

from ingest.records import Record, SourceRef
from ingest.store import Store, store_counts
from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.review.test_session38b_review import _check, _kept, _whole

DAY = dt.date(2024, 3, 5)
SRC = SourceRef("generated", "38j")


def _records(pmids: range, refs: tuple[int, ...] = ()) -> list[Record]:
    return [Record(pmid=p, version=1, title=f"t {p}", source=SRC, entrez_date=DAY,
                   references=refs) for p in pmids]


def _pg_only(settings: Settings) -> None:
    if not settings.database_url:
        pytest.skip("PostgreSQL's trigger functions and folds")


def test_x1_a_writer_with_another_search_path_counts_in_the_store_it_writes(
    settings: Settings,
) -> None:
    _pg_only(settings)
    public = db.connect(settings)  # the fixture's store, in the default schema
    Store(public).apply(_records(range(1, 4)))
    with public.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS lit38j CASCADE")
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS lit38k CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA lit38j")
    url = settings.database_url + "?options=-csearch_path%3Dlit38j"
    lit = db.connect(settings.replace(database_url=url))
    try:
        Store(lit).apply(_records(range(10, 20), refs=(1, 2)))
        _check(lit, "stored in its schema")
        # a writer whose search_path is the default one, naming the store's tables
        with public.begin() as conn:
            conn.exec_driver_sql("DELETE FROM lit38j.articles WHERE pmid IN (10, 11)")
            conn.exec_driver_sql('DELETE FROM lit38j."references" WHERE citing_pmid = 12')
        got = _check(lit, "written from another search_path")
        assert got["live"] == 8 and got["refs"] == 2 * 10 - 2
        assert _check(public, "the other store")["live"] == 3
        # the store's schema renamed: its next open names the counts of the new name
        db._ENGINES.pop(url).dispose()
        with public.begin() as conn:
            conn.exec_driver_sql("ALTER SCHEMA lit38j RENAME TO lit38k")
        url = settings.database_url + "?options=-csearch_path%3Dlit38k"
        lit = db.connect(settings.replace(database_url=url))
        Store(lit).apply(_records(range(30, 33)))
        kept = _kept(lit)  # (a tiny table just re-indexed: its plan may scan it)
        assert {**kept, "kept": True} == {**_whole(lit), "kept": True}
        assert kept["live"] == 11
    finally:
        db._ENGINES.pop(url, None).dispose()
        with public.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS lit38j CASCADE")
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS lit38k CASCADE")


def _waiting(engine: Any, n: int, within: float = 10.0) -> None:
    """Until ``n`` other sessions wait on a lock."""
    end = time.monotonic() + within
    with engine.connect() as conn:
        while time.monotonic() < end:
            got = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()").scalar()
            conn.rollback()  # the activity is read once a transaction
            if got and got >= n:
                return
            time.sleep(0.02)
    raise AssertionError(f"{n} sessions never waited on a lock")


def test_x2_a_recount_beside_a_fold_counts_once(settings: Settings) -> None:
    _pg_only(settings)
    engine = db.connect(settings)
    Store(engine).apply(_records(range(1, 21), refs=(1, 2, 3)))
    now = db.utcnow()
    for p in range(100, 105):  # a delta row each
        with engine.begin() as conn:
            conn.execute(insert(articles).values(
                pmid=p, version=1, source_kind="test", source_location="t", title="t",
                ingested_at=now, updated_at=now))
    with engine.begin() as conn:  # the triggers an older version made: counted again at open
        for (name, table) in conn.execute(text(
                "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c "
                "ON c.oid = t.tgrelid WHERE t.tgname LIKE :n"), {"n": f"{db.COUNT_TRIGGERS}_%"}):
            conn.exec_driver_sql(f'ALTER TRIGGER "{name}" ON "{table}" RENAME TO '
                                 f'"{name.replace(db.COUNT_TRIGGERS, "litpulse_counts_v0")}"')
        conn.exec_driver_sql(  # and an older version's function, dropped with them
            "CREATE FUNCTION litpulse_counts_v1_articles() RETURNS trigger LANGUAGE plpgsql "
            "AS $f$ BEGIN RETURN NULL; END $f$")
    fresh = _whole(engine)
    errors: list[BaseException] = []

    def run(fn: Any) -> threading.Thread:
        def body() -> None:
            try:
                fn(engine)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        t = threading.Thread(target=body)
        t.start()
        return t

    with engine.connect() as holder:  # one delta row held: the fold, then the recount, queue
        holder.exec_driver_sql("SELECT id FROM store_counts ORDER BY id LIMIT 1 FOR UPDATE")
        fold = run(db.fold_counts)
        _waiting(engine, 1)
        recount = run(db.keep_counts)
        _waiting(engine, 2)
        holder.commit()
    fold.join(30)
    recount.join(30)
    assert not errors
    assert _whole(engine) == fresh
    _check(engine, "recounted beside a fold")
    with engine.connect() as conn:
        assert conn.exec_driver_sql(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'litpulse_counts_v1%%'").scalar() == 0


def test_x3_sqlite_rows_fit_the_connections_variable_limit(settings: Settings) -> None:
    if settings.database_url:
        pytest.skip("SQLite's bound-variable limit")
    engine = db.connect(settings)
    engine.dispose()

    # SQLite before 3.32 was compiled with SQLITE_MAX_VARIABLE_NUMBER 999 (sqlite.org,
    # "Limits In SQLite", 9.); a connection's run-time limit may be lowered to it
    @event.listens_for(engine, "connect")
    def older(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    with engine.connect() as conn:
        assert conn.connection.driver_connection.getlimit(  # type: ignore[union-attr]
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) == 999
    counts = Store(engine).apply(_records(range(1, 301), refs=(1000, 1001)), batch_size=1000)
    assert counts.inserted == 300
    got = _check(engine, "300 records under a limit of 999 variables")
    assert got["live"] == 300 and got["refs"] == 600
    with engine.begin() as conn:
        conn.execute(text("UPDATE articles SET is_retracted = 1 WHERE pmid <= 3"))
    assert _check(engine, "retracted")["retracted"] == 3


def test_held_two_openers_count_an_older_store_once(settings: Settings) -> None:
    """An older store (no triggers, counts emptied) opened by two processes at once: the
    second waits for the first's lock, then counts again under its own: exact once."""
    engine = db.connect(settings)
    Store(engine).apply(_records(range(1, 31), refs=(1000, 1001)))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for n in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = "
                                          "'trigger' AND name LIKE 'litpulse_%'").scalars().all():
                conn.exec_driver_sql(f'DROP TRIGGER "{n}"')
        else:
            for t in ("articles", "references"):
                conn.exec_driver_sql(f"DROP FUNCTION {db.COUNT_TRIGGERS}_{t}() CASCADE")
        conn.exec_driver_sql("DELETE FROM store_counts")
    fresh = _whole(engine)
    made: list[bool] = []
    openers = [threading.Thread(target=lambda: made.append(db.keep_counts(engine)))
               for _ in range(2)]
    for t in openers:
        t.start()
    for t in openers:
        t.join(30)
    assert made and made[0] is True
    assert _check(engine, "two openers") == fresh
    Store(engine).apply(_records(range(40, 45)))
    assert _check(engine, "written after")["live"] == 35


def test_held_a_reader_roles_status_sums_many_delta_rows(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role that may only read (the API's) sums the delta rows past FOLD_COUNTS_AT
    exactly; its fold fails quietly and leaves them for a writer."""
    _pg_only(settings)
    engine = db.connect(settings)
    now = db.utcnow()
    for p in range(1, 13):
        with engine.begin() as conn:
            conn.execute(insert(articles).values(
                pmid=p, version=1, source_kind="test", source_location="t", title="t",
                ingested_at=now, updated_at=now))
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS reader38j")
        conn.exec_driver_sql("CREATE ROLE reader38j LOGIN")
        conn.exec_driver_sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader38j")
    reader = create_engine(settings.database_url.replace("postgres@", "reader38j@"))
    try:
        monkeypatch.setattr(db, "FOLD_COUNTS_AT", 5)  # 13 rows: the reader tries a fold
        with reader.connect() as conn:
            got = store_counts(conn)
        assert got["live"] == 12 == _whole(engine)["live"]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM store_counts").scalar() == 13
    finally:
        reader.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP OWNED BY reader38j")
            conn.exec_driver_sql("DROP ROLE reader38j")


def test_x4_a_store_in_another_schema_keeps_its_indexes_at_the_next_open(
    settings: Settings,
) -> None:
    """(integrator, from this review's note) A PostgreSQL store in a schema other than
    ``public`` (``options=-csearch_path=...``) had every index taken for another
    definition at each open (``pg_get_indexdef`` names the schema, which the comparison
    stripped only for ``public``): 14 indexes dropped and made again at every start, a
    whole-table build each at PubMed's size."""
    _pg_only(settings)
    public = db.connect(settings)
    with public.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS lit38x CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA lit38x")
    url = settings.database_url + "?options=-csearch_path%3Dlit38x"
    try:
        lit = db.connect(settings.replace(database_url=url))
        Store(lit).apply(_records(range(1, 4)))
        assert db.add_missing_indexes(lit) == []
    finally:
        db._ENGINES.pop(url, None).dispose()
        with public.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA IF EXISTS lit38x CASCADE")
