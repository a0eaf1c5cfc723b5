"""The store's schema upgrade: a database made by an older litpulse gains the new columns."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, select, text

from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.ingest.test_store import make_record


def test_an_older_store_gains_new_columns_and_keeps_its_rows(settings: Settings) -> None:
    engine = db.connect(settings)
    Store(engine).apply([make_record(11), make_record(12)])
    with engine.begin() as conn:  # as the store was before source_position existed
        conn.execute(text("ALTER TABLE articles DROP COLUMN source_position"))
    db.dispose_engines()

    engine = db.connect(settings)  # reconnecting upgrades the schema

    with engine.connect() as conn:
        rows = conn.execute(select(articles.c.pmid, articles.c.source_position)).all()
    # rows written before the column existed count as read to the end of their source
    assert sorted(rows) == [(11, 2**63 - 1), (12, 2**63 - 1)]
    assert db.add_missing_columns(engine) == []  # nothing left to add
    counts = Store(engine).apply([make_record(13)])  # and the store works on it
    assert counts.inserted == 1


def test_an_older_store_gains_first_ingested_at_from_ingested_at(settings: Settings) -> None:
    from ingest.records import Deletion

    engine = db.connect(settings)
    Store(engine).apply([make_record(11)])
    Store(engine).apply([make_record(12), Deletion(13, make_record(13).source)])  # 13: never stored
    with engine.begin() as conn:  # as the store was before first_ingested_at existed
        conn.execute(text("ALTER TABLE articles DROP COLUMN first_ingested_at"))
        before = dict(conn.execute(select(articles.c.pmid, articles.c.ingested_at)).all())
    db.dispose_engines()

    engine = db.connect(settings)  # reconnecting upgrades the schema

    with engine.connect() as conn:
        rows = dict(conn.execute(select(articles.c.pmid, articles.c.first_ingested_at)).all())
    # each article's ingested_at (the earliest known); a bare tombstone none
    assert rows == {11: before[11], 12: before[12], 13: None} and before[11] < before[12]
    assert db.add_missing_columns(engine) == []


def test_a_column_that_cannot_be_added_is_a_clear_error(settings: Settings) -> None:
    engine = db.connect(settings)
    extra = MetaData()
    Table("upgrade_probe", extra, Column("id", Integer, primary_key=True)).create(engine)
    try:
        import litpulse.core.schema as schema

        probe = Table(
            "upgrade_probe",
            schema.metadata,
            Column("id", Integer, primary_key=True),
            Column("required", Text, nullable=False),
        )
        try:
            with pytest.raises(ConfigError, match="upgrade_probe.required"):
                db.add_missing_columns(engine)
        finally:
            schema.metadata.remove(probe)
    finally:
        extra.drop_all(engine)


def test_rereading_a_file_after_the_upgrade_ends_as_a_clean_run(
    settings: Settings, tmp_path: Path
) -> None:
    """One file: record X, its deletion, the record again as Y; read, upgrade, read again."""
    from ingest.files import ingest_files
    from litpulse.app.demo.pubmed_xml import article_xml, deletion_xml, pubmed_set

    day = dt.date(2024, 1, 1)
    head, tail = (
        pubmed_set([article_xml(1, edat=day, title="X")]).decode().split("</PubmedArticle>", 1)
    )
    path = tmp_path / "redo.xml"
    y = article_xml(1, edat=day, title="Y").decode()
    path.write_text(head + "</PubmedArticle>" + deletion_xml([1]) + y + tail)
    ingest_files(settings, [str(path)])
    engine = db.connect(settings)
    with engine.begin() as conn:  # as the store was before source_position existed
        conn.execute(text("ALTER TABLE articles DROP COLUMN source_position"))
    db.dispose_engines()

    ingest_files(settings, [str(path)])

    with db.connect(settings).connect() as conn:
        row = conn.execute(select(articles.c.title, articles.c.is_deleted)).one()
    assert tuple(row) == ("Y", False)


def test_bulk_load_blocks_and_other_threads_share_one_engine(sqlite_settings: Settings) -> None:
    """A bulk-load block while another thread checks connections out of the same engine
    (the bootstrap's stager beside its writer): no listener list is mutated under the
    other thread, connections inside the block get the bulk pragmas, and after it the
    usual ones."""
    import threading

    from sqlalchemy import text

    engine = db.connect(sqlite_settings)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            with db.bulk_load(engine), engine.connect() as conn:
                cache = conn.execute(text("PRAGMA cache_size")).scalar_one()
                assert cache == db._BULK_PRAGMAS["cache_size"][0]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    with engine.connect() as conn:
        assert (
            conn.execute(text("PRAGMA cache_size")).scalar_one()
            == (db._BULK_PRAGMAS["cache_size"][1])
        )


def test_bulk_insert_and_upsert_store_what_sqlalchemy_stores(settings: Settings) -> None:
    """Value tuples bound column by column (repeated values, None, booleans, dates,
    timestamps in UTC, in another zone and naive, JSON as text; PostgreSQL: a binary
    COPY) end as the rows SQLAlchemy's own insert writes from the same values."""
    from sqlalchemy import JSON, Boolean, Date, Float

    from litpulse.core.schema import UTCDateTime

    engine = db.connect(settings)
    meta = MetaData()
    cols = ("id", "flag", "day", "at", "x", "note", "doc")

    def table(name: str) -> Table:
        return Table(name, meta, Column("id", Integer, primary_key=True), Column("flag", Boolean),
                     Column("day", Date), Column("at", UTCDateTime()), Column("x", Float),
                     Column("note", Text), Column("doc", JSON))  # fmt: skip

    bulk, ref = table("bulk_probe"), table("bulk_reference")
    meta.create_all(engine)
    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    east = t0.astimezone(dt.timezone(dt.timedelta(hours=2)))
    doc = {"a": [1, "ü\t\n"], "b": None}
    rows = [
        (1, True, dt.date(2020, 1, 31), t0, 1.5, "a", doc),
        (2, False, dt.date(2020, 1, 31), t0, 2, None, []),
        (3, None, None, None, None, "ü", {}),
        (4, True, dt.date(1999, 12, 1), t0 + dt.timedelta(days=1), 1.5, "a", doc),
        (5, True, None, east, 3.0, "tab\there", doc),
        (6, False, None, t0.replace(tzinfo=None), -1.0, "back\\slash", []),
    ]
    last = (1, False, None, t0, 7.0, "b", doc)

    def as_text(r: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*r[:-1], json.dumps(r[-1]))  # the text SQLAlchemy's JSON type writes

    with engine.begin() as conn:
        db.bulk_insert(conn, bulk, [as_text(r) for r in rows[:3] + rows[4:]], columns=cols,
                       json_text=["doc"])  # fmt: skip
        db.bulk_upsert(conn, bulk, [as_text(rows[3]), as_text(last)], columns=cols,
                       keys=["id"], update=["flag", "day", "x", "note", "doc"],
                       json_text=["doc"])  # fmt: skip
        conn.execute(ref.insert(), [dict(zip(cols, r, strict=True)) for r in rows[1:]])
        conn.execute(ref.insert(), [dict(zip(cols, last, strict=True))])
    with engine.connect() as conn:
        got = conn.execute(select(bulk).order_by(bulk.c.id)).all()
        want = conn.execute(select(ref).order_by(ref.c.id)).all()
        raw = conn.execute(text("SELECT * FROM bulk_probe ORDER BY id")).all()
        raw_want = conn.execute(text("SELECT * FROM bulk_reference ORDER BY id")).all()
    meta.drop_all(engine)
    assert got == want and raw == raw_want
    assert got[0] == (1, False, None, t0, 7.0, "b", doc)
    assert got[2] == (3, None, None, None, None, "ü", {})
    assert got[4][3] == t0 and got[5][3] == t0


def test_a_bulk_path_raises_the_drivers_error_as_sqlalchemys(settings: Settings) -> None:
    """The bulk paths write through the driver's own cursor (SQLite's ``executemany``,
    PostgreSQL's ``COPY``), past SQLAlchemy: their errors reached the callers raw, so a
    deadlock in a ``COPY`` was not run again (``retry_conflicts`` reads SQLAlchemy's
    ``orig``) and a full disk was a traceback. Raised as SQLAlchemy's, ``orig`` the
    driver's, on both databases."""
    from sqlalchemy.exc import IntegrityError

    engine = db.connect(settings)
    meta = MetaData()
    probe = Table("bulk_errors_probe", meta, Column("id", Integer, primary_key=True),
                  Column("note", Text, nullable=False))  # fmt: skip
    meta.create_all(engine)
    for write in (
        lambda conn: db.insert_tuples(conn, probe, ("id", "note"), [(1, "a"), (2, None)]),
        lambda conn: db.bulk_upsert(conn, probe, [(1, None)], columns=("id", "note"),
                                    keys=("id",), update=("note",)),
    ):
        with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
            write(conn)
        assert raised.value.orig is not None and "null" in str(raised.value.orig).lower()
    with engine.connect() as conn:
        assert conn.execute(select(probe)).all() == []


@pytest.mark.postgres
def test_the_postgresql_staging_table_compresses_as_its_table(postgres_url: str) -> None:
    """The staging table of an upsert keeps the target's column compression (lz4 where
    the server has it): a staged row is compressed once, with the method the table
    stores it with, instead of with pglz in the staging table and again with lz4 when it
    is merged. The values stored are the same."""
    from ingest.rows import ARTICLE_COLUMNS, JSON_COLUMNS, article_row, prepare
    from tests.conftest import _truncate

    engine = db.connect(Settings.from_env({}, database_url=postgres_url))
    _truncate(engine)
    big = "x" * 40_000 + "".join(chr(0x100 + i % 500) for i in range(20_000))
    Store(engine).apply([make_record(21, abstract=big)])
    row = article_row(prepare(make_record(21, abstract=big + " v2", version=2)), 0, db.utcnow())
    with engine.begin() as conn:  # the staging table is the session's: read it on the same
        db.bulk_upsert(conn, articles, [row], columns=ARTICLE_COLUMNS, keys=["pmid"],
                       update=["version", "abstract"], json_text=JSON_COLUMNS)  # fmt: skip
        stage = conn.execute(text(
            "SELECT a.attname, a.attcompression FROM pg_attribute a JOIN pg_class c "
            "ON c.oid = a.attrelid WHERE c.relname = '_stage_articles' AND a.attnum > 0 "
            "AND c.relpersistence = 't' AND pg_table_is_visible(c.oid)"
        )).all()  # fmt: skip
        target = conn.execute(text(
            "SELECT attname, attcompression FROM pg_attribute WHERE "
            "attrelid = 'articles'::regclass AND attnum > 0 AND NOT attisdropped"
        )).all()  # fmt: skip
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT abstract, version FROM articles WHERE pmid = 21")).one()
    assert stage, "no staging table was made"
    assert dict(stage) == dict(target)
    assert stored == (f"BACKGROUND: {big} v2", 2)
    assert "l" in dict(target).values()  # the server has lz4: the check means something


def test_articles_index_only_the_columns_queries_look_up(settings: Settings) -> None:
    """Every index of ``articles`` costs each row the ingest writes (its COPY is most of
    the server's time): none on ``language`` (searches filter ``lower(language)`` over
    their candidates, which no index on the column serves). ``is_deleted`` stays: on
    SQLite it covers the listing and counting of live PMIDs; ``lower(doi)`` serves the
    lookup by DOI."""
    engine = db.connect(settings)
    indexed = {n for n in db.index_names(engine, "articles") if n.startswith("ix_")}
    assert indexed == {"ix_articles_best_date", "ix_articles_updated_at",
                       "ix_articles_is_deleted", "ix_articles_doi"}


def test_an_older_store_gains_the_quarantine_pmid_index_and_a_batch_resolves_by_it(
    settings: Settings,
) -> None:
    from ingest.records import QuarantineEntry, SourceRef

    engine = db.connect(settings)
    store = Store(engine)
    src = SourceRef("file", "x.xml")
    bad = [QuarantineEntry(f"bad {i}", f"<x{i}/>", src, pmid=7 + i) for i in range(3)]
    store.apply([*bad, make_record(7, title="good")])
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_quarantine_pmid"))  # a store made before it
    db._ENGINES.pop(settings.effective_database_url).dispose()
    engine = db.connect(settings)
    assert "ix_quarantine_pmid" in db.index_names(engine, "quarantine")
    entries = Store(engine).quarantined(resolved=True)
    assert sorted(e["pmid"] for e in entries) == [7, 8, 9]
    # 7's entry resolved by its good record: a later item of its PMID
    assert sorted(e["pmid"] for e in entries if e["resolved_at"] is None) == [8, 9]


def test_an_older_feedback_table_learns_each_judgements_token_from_the_log(
    settings: Settings,
) -> None:
    """``feedback.token_id`` came after ``feedback_log`` (which always kept the token):
    the upgrade fills each row from its latest logged judgement, so feedback sent with a
    token before the upgrade is withheld from training once that token is revoked."""
    from bench.drift import insert_batch
    from litpulse.app.tokens import create_token, revoke_token
    from litpulse.core.schema import feedback
    from retrain.feedback import FeedbackSource, record_feedback, trainable_feedback

    engine = db.connect(settings)
    insert_batch(engine, start_pmid=10, n=3, start=dt.date(2024, 1, 1), days=3,
                 ingested=dt.datetime(2024, 1, 5, tzinfo=dt.UTC))
    ann = create_token(settings, "ann").info.id
    ann2 = create_token(settings, "ann").info.id
    api = FeedbackSource.API
    record_feedback(settings, query="q", pmid=10, relevant=True, user="ann", source=api,
                    token_id=ann)
    record_feedback(settings, query="q", pmid=10, relevant=False, user="ann", source=api,
                    token_id=ann2)  # the standing judgement: the second token's
    record_feedback(settings, query="q", pmid=11, relevant=True, user="ann", source=api,
                    token_id=ann)
    record_feedback(settings, query="q", pmid=12, relevant=True, user="bob")  # the CLI
    with engine.begin() as conn:  # as the store was before feedback.token_id existed
        conn.execute(text("ALTER TABLE feedback DROP COLUMN token_id"))
    db.dispose_engines()

    engine = db.connect(settings)  # reconnecting upgrades the schema

    with engine.connect() as conn:
        rows = conn.execute(select(feedback.c.pmid, feedback.c.token_id)).all()
    assert sorted(rows) == [(10, ann2), (11, ann), (12, None)]
    revoke_token(settings, ann)
    found = trainable_feedback(engine)
    assert sorted(j.pmid for j in found.judgements) == [10, 12]
    assert [w.judgement.pmid for w in found.withheld] == [11]


def _indexes(engine: Any, table: str) -> set[str]:
    return db.index_names(engine, table)


def test_an_older_store_loses_its_retired_index_and_keeps_its_rows(settings: Settings) -> None:
    engine = db.connect(settings)
    Store(engine).apply([make_record(11), make_record(12)])
    with engine.begin() as conn:  # as stores were made before 2026-12-05
        conn.execute(text("CREATE INDEX ix_article_terms_term ON article_terms (kind, term)"))
        before = sorted(conn.execute(text("SELECT pmid, kind, term FROM article_terms")).all())
    db.dispose_engines()

    engine = db.connect(settings)  # reconnecting drops it

    assert "ix_article_terms_term" not in _indexes(engine, "article_terms")
    with engine.connect() as conn:
        after = sorted(conn.execute(text("SELECT pmid, kind, term FROM article_terms")).all())
    assert after == before
    assert before and db.drop_retired_indexes(engine) == []  # nothing left to drop
    assert Store(engine).apply([make_record(13)]).inserted == 1


def test_a_retired_index_under_a_long_reader_is_left_to_the_next_start(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    if settings.effective_database_url.startswith("sqlite"):
        pytest.skip("SQLite's readers (WAL) never hold a writer back")
    engine = db.connect(settings)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_article_terms_term ON article_terms (kind, term)"))
    reader = engine.connect()
    try:
        reader.execute(text("SELECT count(*) FROM article_terms"))  # its transaction stays open
        with caplog.at_level("WARNING", logger="litpulse.core.db"):
            assert db.drop_retired_indexes(engine) == []  # waits 2 s at most, then gives up
        assert "next start tries again" in caplog.text
        assert "ix_article_terms_term" in _indexes(engine, "article_terms")
    finally:
        reader.close()
    assert db.drop_retired_indexes(engine) == ["ix_article_terms_term"]
    assert "ix_article_terms_term" not in _indexes(engine, "article_terms")


def test_an_older_store_gains_the_doi_index_and_a_failed_build_is_left_to_the_next_start(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.connect(settings)
    Store(engine).apply([make_record(11), make_record(12)])
    assert "ix_articles_doi" in _indexes(engine, "articles")
    with engine.begin() as conn:  # as stores were made before the DOI lookup
        conn.execute(text("DROP INDEX ix_articles_doi"))
    db.dispose_engines()

    engine = db.connect(settings)  # reconnecting makes it
    assert "ix_articles_doi" in _indexes(engine, "articles")
    assert db.add_missing_indexes(engine) == []  # nothing left to make
    assert Store(engine).pmids_by_doi("10.1000/12") == [12]

    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_articles_doi"))
    reader = engine.connect()
    try:  # an open transaction that wrote to the table: the build waits 2 s, then gives up
        reader.execute(text("UPDATE articles SET cited_by_in_corpus = 0 WHERE pmid = 11"))
        with caplog.at_level("WARNING", logger="litpulse.core.db"):
            assert db.add_missing_indexes(engine) == []
        assert "next start tries again" in caplog.text
    finally:
        reader.rollback()
        reader.close()
    assert db.add_missing_indexes(engine) == ["ix_articles_doi"]



def test_id_in_matches_any_number_of_ids_with_one_parameter(settings: Settings) -> None:
    from sqlalchemy import update

    engine = db.connect(settings)
    meta = MetaData()
    probe = Table("id_probe", meta, Column("id", Integer, primary_key=True), Column("note", Text))
    meta.create_all(engine)
    ids = range(1, 40_001)  # past SQLite's 32,766 and PostgreSQL's 65,535 bound parameters
    try:
        with engine.begin() as conn:
            db.bulk_insert(conn, probe, [(i, None) for i in ids], columns=("id", "note"))
            where, param = db.id_in(conn, "id", ids[::2])
            got = conn.exec_driver_sql(f"SELECT count(*) FROM id_probe WHERE {where}", (param,))
            assert got.scalar() == 20_000
            # the Core clause: one UPDATE of every odd id and of 0 (no row)
            odd = update(probe).where(db.id_in_clause(conn, "id", [0, *ids[1::2]]))
            assert conn.execute(odd.values(note="odd")).rowcount == 20_000
            marked = conn.execute(select(probe.c.id).where(probe.c.note == "odd")).scalars()
            assert set(marked) == set(ids[1::2])
            none = update(probe).where(db.id_in_clause(conn, "id", [])).values(note="x")
            assert conn.execute(none).rowcount == 0
            if conn.dialect.name == "postgresql":
                # the ids reach the planner as one constant array (hashed, or an index
                # lookup), not as text cast per statement and scanned per row: that made
                # this UPDATE take 33 s instead of 0.1 s
                c = odd.values(note="x").compile(conn)
                plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + c.string,
                                                                     c.params))  # fmt: skip
                assert "'::bigint[]" in plan and "cstring" not in plan, plan[:300]
    finally:
        meta.drop_all(engine)


def test_the_store_version_moves_with_what_a_search_ranks_by(settings: Settings) -> None:
    """A write of articles (new, revised, deleted) or of citation values changes it; a
    read, or a write of neither, does not. Both databases."""
    from ingest.records import Deletion, SourceRef

    engine = db.connect(settings)

    def version() -> str:
        with engine.connect() as conn:
            return db.store_version(conn)

    empty = version()
    assert empty == version()  # reading changes nothing
    store = Store(engine)
    store.apply([make_record(1), make_record(2)])
    stored = version()
    assert stored != empty
    store.apply([make_record(1)])  # the same record again: nothing written
    assert version() == stored
    store.apply([Deletion(2, SourceRef("file", "pubmed26n0002.xml", 2))])  # a later file
    deleted = version()
    assert deleted != stored
    with engine.begin() as conn:  # a citation write marks it in its own transaction
        db.mark_written(conn, "citations")
    cited = version()
    assert cited != deleted
    with engine.begin() as conn:
        db.mark_written(conn, "citations")
        conn.rollback()  # rolled back with its write: nothing changed
    assert version() == cited
    with engine.begin() as conn:  # the in-corpus recount's own mark
        db.mark_written(conn, "counts")
    assert version() != cited
