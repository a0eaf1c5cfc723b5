"""Hostile review (session 39b): 38b's X3, ``litpulse status``'s ``pending_embeddings``
(``ranking.embed.count_pending``, an anti-join of every live article with ``embeddings``:
a scan of ``articles`` on every status, 38 million rows at PubMed's size).

Attacked, on SQLite and PostgreSQL, through the shipped writers of ``articles`` (an
E-utilities window, a bulk file ingest and its replay, update files with a revision of
the text, deletions, a re-issue, a restore, the iCite snapshot load, direct SQL) and of
``embeddings`` (``embed_pending``, a ``--rebuild``'s delete, direct SQL with a stale
vector), and through a model switch (another model version counted), comparing
``count_pending`` with a fresh anti-join after each; an older store opened again; on
PostgreSQL an article and its vector written at once by two transactions.

Findings:

X1 **``count_pending`` scans every live article** (38b X3; 37h's
   test_x3_status_scans_neither_articles_nor_references, a strict xfail on PostgreSQL).
   **Fixed**: the database keeps the current vectors of each model version
   (``embedding_counts``: a vector is current when its live article has its
   ``text_hash``), by the triggers of ``store_counts`` (``db.keep_counts``, version v3):
   PostgreSQL's statement trigger on ``articles`` joins its transition rows with
   ``embeddings`` on ``pmid`` and ``text_hash`` (the primary key's first column), a new
   statement trigger on ``embeddings`` joins its rows with ``articles``; each appends one
   delta row a model version moved, folded with ``store_counts``' (``fold_counts``, after
   ``Store.apply`` and ``embed_pending``). SQLite: row triggers on both tables moving one
   row a version. ``count_pending`` is ``store_counts``' live less the version's current
   vectors, both read in one statement (``db.pending_kept``); a store that keeps none
   yet is counted by the anti-join as before. A model switch or ``--rebuild`` needs
   nothing of its own: another version is read, a delete of vectors is counted.
   ``embed_pending`` writes a chunk in one statement now (``db.bulk_upsert``): its
   ``executemany`` ran the statement triggers once a vector (1,024 delta rows a chunk,
   measured +60-130 µs a vector); one statement: within noise (41-53 µs a vector with
   and without the trigger, 20,480 vectors on PostgreSQL, 2 shared cores). The ingest
   (``bench.ingest --records 20000 --only postgresql-w2 --repeat 3``, against main
   interleaved): CPU µs a record worker / writer / server 257 / 62 / 105, main 257 / 63 /
   100 (+5 % server, +1 % all processes); SQLite (``sqlite-w2``, repeat 3) worker /
   writer 208 / 103, main 212 / 102; a trigger's join costs more where the rows
   have vectors (an update file's revised articles: +2-12 µs a row measured with two
   model versions' vectors, through ``EXPLAIN ANALYZE``).
   (test_x1_kept_pending_equals_a_fresh_count_after_every_writer)

X2 **An older store** gets the kept count at its next open (the triggers' new version
   makes ``keep_counts`` count again, in one transaction holding ``articles``,
   ``references`` and ``embeddings``; a row of model version ``''`` says the vectors are
   counted), and one opened without its upgrade, or whose count could not be made, is
   counted by the anti-join (never a count of 0 vectors read as "all pending").
   (test_x2_an_older_store_gets_the_kept_pending_count_at_its_next_open)

X3 **Two writers at once** (PostgreSQL, READ COMMITTED): a statement trigger sees only
   committed rows of the other table, so an article written by one transaction and its
   vector by another, both open, were counted by neither (measured: 2 pending where 1
   is, with the lock below removed). **Fixed**: an advisory lock orders them: a writer
   of ``articles`` takes it shared (its writers still run side by side), a writer of
   ``embeddings`` exclusive, in the triggers; the vector's trigger waits for the open
   article writers to commit and then sees their rows, an article trigger that comes
   later waits for the vector's commit and sees it (each trigger statement takes a new
   snapshot). Cost: the embedder's chunk commits wait for open ingest batches and
   one another (encoding is outside the transaction).
   (test_x3_an_article_and_its_vector_written_at_once_are_counted)
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, text, update
from sqlalchemy.engine import Engine

from ingest.eutils import ingest_window
from ingest.files import ingest_files
from ingest.icite_snapshot import load_snapshot
from ingest.records import Deletion, Record, SourceRef
from ingest.store import Store
from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.schema import articles, embeddings
from litpulse.core.settings import Settings
from ranking import embed as em
from tests.emulator import Emulator, article_xml, gz, pubmed_set
from tests.ingest.test_icite_snapshot import AS_OF, FIXTURE, GOOD
from tests.review.test_session37h_review import _statements

DAY = dt.date(2024, 3, 5)
#: a statement reading ``articles`` or ``embeddings`` (the kept count reads neither)
_READS = re.compile(r"\b(FROM|JOIN)\s+\"?(articles|embeddings)\b", re.I)


def _fresh(engine: Engine, model: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM articles a WHERE NOT a.is_deleted AND NOT EXISTS ("
                    "SELECT 1 FROM embeddings e WHERE e.pmid = a.pmid AND e.model_version = :m "
                    "AND e.text_hash = a.text_hash)"
                ),
                {"m": model},
            ).scalar()
            or 0
        )


def _check(
    settings: Settings, engine: Engine, step: str, models: tuple[str, ...] = ("base", "other")
) -> int:
    for model in models:
        with _statements(engine) as seen:
            got = em.count_pending(settings, model, engine)
        read = [s for s, _ in seen if _READS.search(s)]
        assert (got, read) == (_fresh(engine, model), []), f"{step} ({model})"
    return _fresh(engine, models[0])


def _file(path: Path, records: list[bytes], deletions: tuple[int, ...] = ()) -> Path:
    path.write_bytes(gz(pubmed_set(records, deletions=deletions)))
    return path


def _vector(conn: Any, pmid: int, model: str, text_hash: str) -> None:
    conn.execute(
        insert(embeddings).values(
            pmid=pmid,
            model_version=model,
            text_hash=text_hash,
            vector=em.vector_to_bytes(__import__("numpy").ones(4, dtype="float32")),
            created_at=db.utcnow(),
        )
    )


def test_x1_kept_pending_equals_a_fresh_count_after_every_writer(
    emu: Emulator, settings: Settings, tmp_path: Path
) -> None:
    s = emu.configure(settings.replace(ncbi_email="t@example.org"))
    engine = db.connect(s)
    _check(s, engine, "empty")
    for p in range(101, 104):
        emu.add_article(p, edat=DAY, title=f"asthma {p}")
    ingest_window(s, dt.datetime(2024, 3, 5), dt.datetime(2024, 3, 6))
    assert _check(s, engine, "window") == 3
    one = _file(
        tmp_path / "pubmed26n0001.xml.gz",
        [article_xml(p, edat=DAY, title=f"t {p}") for p in range(201, 209)],
    )
    ingest_files(s, [one])
    assert _check(s, engine, "files") == 11
    assert em.embed_pending(s) == 11
    assert _check(s, engine, "embedded") == 0
    ingest_files(s, [one])  # the replay changes no text
    assert _check(s, engine, "replay") == 0
    # an update file: a revised text, deletions (one with a vector), a PMID never stored
    emu.add_file(
        "updatefiles",
        "pubmed26n1400.xml.gz",
        gz(
            pubmed_set(
                [
                    article_xml(201, edat=DAY, version=2, title="revised"),
                    article_xml(230, edat=DAY),
                ],
                deletions=[202, 203, 999_999],
            )
        ),
    )
    apply_updates(s)
    assert _check(s, engine, "update file") == 2
    emu.files["updatefiles"].clear()  # NLM re-issues it with other content
    emu.add_file(
        "updatefiles",
        "pubmed26n1400.xml.gz",
        gz(
            pubmed_set([article_xml(201, edat=DAY, version=2, title="t 201")], deletions=[202, 204])
        ),
    )
    apply_updates(s)
    _check(s, engine, "re-issue")
    emu.add_file(
        "updatefiles",
        "pubmed26n1401.xml.gz",  # withdrawn, restored
        gz(pubmed_set([article_xml(204, edat=DAY, version=3, title="t 204")])),
    )
    apply_updates(s)
    _check(s, engine, "restored")
    src = SourceRef("generated", "direct")
    Store(engine).apply(
        [
            Record(pmid=p, version=1, title=f"S {p}", source=src, entrez_date=DAY)
            for p in sorted(GOOD)[:3]
        ]
        + [Deletion(pmid=205, source=src)]
    )
    load_snapshot(s, FIXTURE, as_of=AS_OF)
    _check(s, engine, "snapshot")
    em.embed_pending(s)
    assert _check(s, engine, "embedded again") == 0
    # direct SQL on both tables: a text changed, a vector stale, one gone, an article gone
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == 101).values(text_hash="x"))
        conn.execute(update(embeddings).where(embeddings.c.pmid == 102).values(text_hash="stale"))
        conn.execute(delete(embeddings).where(embeddings.c.pmid == 103))
        conn.execute(articles.delete().where(articles.c.pmid == 206))
        _vector(conn, 207, "other", "nothing")  # another model's vector, stale
        hash208 = conn.execute(text("SELECT text_hash FROM articles WHERE pmid = 208")).scalar()
        _vector(conn, 208, "other", str(hash208))  # current
    assert _check(s, engine, "sql") == 3
    # a --rebuild drops the active model's vectors; the embedder writes them again
    with engine.begin() as conn:
        conn.execute(delete(embeddings).where(embeddings.c.model_version == "base"))
    live = _check(s, engine, "rebuild")
    assert live > 10
    em.embed_pending(s)
    assert _check(s, engine, "re-embedded") == 0


def test_x2_an_older_store_gets_the_kept_pending_count_at_its_next_open(
    settings: Settings,
) -> None:
    from tests.ranking.test_index import add_articles

    engine = db.connect(settings)
    add_articles(engine, list(range(1, 31)))
    with engine.begin() as conn:  # the store as release 38 left it: no embedding counts
        conn.execute(update(articles).where(articles.c.pmid <= 5).values(text_hash="new"))
        if engine.dialect.name == "sqlite":
            names = (
                conn.exec_driver_sql(
                    "SELECT name FROM sqlite_master WHERE type = "
                    "'trigger' AND name LIKE 'litpulse_%'"
                )
                .scalars()
                .all()
            )
            for n in names:
                conn.exec_driver_sql(f'DROP TRIGGER "{n}"')
        else:
            for name in (
                conn.exec_driver_sql(
                    "SELECT proname FROM pg_proc WHERE proname LIKE 'litpulse_counts_%%' "
                    "AND pronamespace = current_schema()::regnamespace"
                )
                .scalars()
                .all()
            ):
                conn.exec_driver_sql(f'DROP FUNCTION "{name}"() CASCADE')
        conn.exec_driver_sql("DROP TABLE IF EXISTS embedding_counts")
        conn.execute(update(articles).where(articles.c.pmid == 6).values(is_deleted=True))
    db._ENGINES.pop(settings.effective_database_url).dispose()
    db._UPGRADED.discard(engine)
    old = db.connect(settings, create=False)  # no upgrade: counted whole, exactly
    assert em.count_pending(settings, "base", old) == _fresh(old, "base") == 5
    again = db.connect(settings)
    assert _check(settings, again, "reopened") == 5
    assert db.keep_counts(again) is False  # kept: a later open counts nothing again
    with again.begin() as conn:
        conn.execute(update(embeddings).where(embeddings.c.pmid <= 5).values(text_hash="new"))
    assert _check(settings, again, "written after") == 0


def test_x3_an_article_and_its_vector_written_at_once_are_counted(settings: Settings) -> None:
    if not settings.database_url:
        pytest.skip("PostgreSQL's concurrent writers (SQLite has one writer at a time)")
    engine = db.connect(settings)
    now = db.utcnow()
    row = {
        "version": 1,
        "source_kind": "test",
        "source_location": "t",
        "title": "t",
        "ingested_at": now,
        "updated_at": now,
    }
    with engine.connect() as conn:
        conn.execute(insert(articles), [{**row, "pmid": p, "text_hash": "h"} for p in (1, 2)])
        _vector(conn, 2, "base", "h")
        _vector(conn, 1, "base", "old")
        conn.commit()
    errors: list[BaseException] = []

    def vectors() -> None:
        try:
            with engine.begin() as c:
                _vector(c, 3, "base", "h")  # the article is not committed yet
                c.execute(
                    update(embeddings).where(embeddings.c.pmid == 1).values(text_hash="h")
                )  # a stale vector made current meanwhile
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with engine.connect() as a:
        a.exec_driver_sql("SET lock_timeout = 10000")
        a.execute(insert(articles).values(**row, pmid=3, text_hash="h"))
        a.execute(update(articles).where(articles.c.pmid == 2).values(text_hash="h2"))
        t = threading.Thread(target=vectors)
        t.start()
        t.join(1.0)
        a.commit()
    t.join(15)
    assert not t.is_alive() and errors == []
    assert _check(settings, engine, "two writers") == _fresh(engine, "base") == 1
