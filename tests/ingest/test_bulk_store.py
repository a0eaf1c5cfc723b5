"""The bulk write path stores exactly what a record-by-record reference stores.

The same items — a generated corpus with revisions, deletions and malformed records,
a partial replay, the same files read again as a later source (touches) and again as
the same source (pure replays) — go once through the bulk path (parse worker process,
large batches, ``COPY``/``executemany``, set-based count updates) and once through the
reference (parsed here, one item per transaction, SQLAlchemy's generic upsert, one
count ``UPDATE`` per PMID). Every table the store writes must end identical.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.parallel import parse_ordered
from ingest.parse import source_ref_for
from ingest.records import Author, MeshHeading, PartialDate, SourceRef
from ingest.rows import (
    ARTICLE_COLUMNS,
    PREPARED_COLUMNS,
    article_row,
    content_hash,
    prepare,
    tombstone_row,
    with_values,
)
from ingest.store import Store
from litpulse.app.demo.generate import generate_corpus
from litpulse.core import db
from litpulse.core.settings import Settings
from tests.ingest.test_crash_resume import differences, quick, reset, snapshot
from tests.ingest.test_store import make_record, stored_part, whole_record

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    m = generate_corpus(
        tmp_path_factory.mktemp("bulk"), n_records=150, n_files=3, seed=11,
        revise_fraction=0.2, delete_fraction=0.15, malformed_fraction=0.02,
    )  # fmt: skip
    assert m.quarantined > 0 and m.deleted_pmids
    return list(m.files)


def plan(files: list[Path]) -> list[tuple[Path, SourceRef, int | None]]:
    """(file, source, items to apply or all): files, a cut replay, later and same sources."""

    def ref(p: Path, minutes: int, location: str | None = None) -> SourceRef:
        r = source_ref_for(p)
        return dataclasses.replace(r, location=location or r.location,
                                   fetched_at=T0 + dt.timedelta(minutes=minutes))  # fmt: skip

    def later(p: Path, minutes: int) -> SourceRef:
        """``p``'s records as a later, unnumbered source serves them (an EFetch)."""
        return SourceRef("eutils", "mirror/" + p.name,
                         fetched_at=T0 + dt.timedelta(minutes=minutes))  # fmt: skip

    return [
        (files[0], ref(files[0], 0), None),
        (files[1], ref(files[1], 1), 40),  # killed part-way...
        (files[1], ref(files[1], 2), None),  # ...and read again: a replay, then the rest
        (files[2], ref(files[2], 3), None),
        (files[0], later(files[0], 4), None),  # a later source (touches, lifts)
        (files[2], ref(files[2], 5), None),  # the same numbered file again: a replay
        (files[1], ref(files[1], 6, "mirror/" + files[1].name), None),  # elsewhere: a replay
    ]


def cut(items: Iterable[Any], n: int | None) -> Iterator[Any]:
    for i, item in enumerate(items):
        if n is not None and i >= n:
            return
        yield item


def test_bulk_path_equals_record_by_record_reference(settings: Settings, files: list[Path]) -> None:
    engine = db.connect(quick(settings))
    steps = plan(files)
    reference = Store(engine, bulk=False)
    for path, ref, n in steps:
        for _i, items in parse_ordered([(path, ref)], workers=0):
            reference.apply(cut(items, n), batch_size=1)
    want = snapshot(engine)
    assert want["quarantine"] and want["references"]
    assert any(a["is_deleted"] for a in want["articles"].values())
    assert any(a["source_location"].startswith("mirror/") for a in want["articles"].values())

    reset(engine)
    bulk = Store(engine)
    jobs = [(path, ref) for path, ref, _n in steps]
    for i, items in parse_ordered(jobs, workers=1, chunk_items=16):
        bulk.apply(cut(items, steps[i][2]), batch_size=100)
    got = snapshot(engine)
    assert not differences(got, want)
    assert got == want


def test_prepared_columns_decode_to_the_record() -> None:
    """One serialisation: hash, record, authors, MeSH and types all cut from it."""
    rec = make_record(5, refs=(5, 3, 3, 1), title='A "quoted", title: {"mesh":[1]} – ü\n')
    prep = prepare(rec)
    plain = rec.to_dict()
    body = {k: v for k, v in plain.items() if k != "source"}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert prep.content_hash == hashlib.sha1(text.encode()).hexdigest() == content_hash(plain)
    row = prep.row
    # the record column: the record without the authors and MeSH headings (each has its
    # own column; they were half of the column's bytes), the title and the sections'
    # texts (the title and abstract columns hold them), its source last
    assert json.loads(row["record"]) == stored_part(plain)
    own = ',"authors":' + json.dumps(body["authors"], separators=(",", ":"), ensure_ascii=False)
    own += ',"mesh":' + json.dumps(body["mesh"], separators=(",", ":"), ensure_ascii=False)
    assert own in text
    title = ',"title":' + json.dumps(body["title"], separators=(",", ":"), ensure_ascii=False)
    sections = json.dumps(body["abstract_sections"], separators=(",", ":"), ensure_ascii=False)
    lengths = json.dumps(stored_part(plain)["abstract_sections"], separators=(",", ":"))
    assert title + ',"abstract_sections":' + sections in text
    assert (
        row["record"]
        == text[:-1].replace(own, "").replace(title, "").replace(sections, lengths, 1)
        + ',"source":'
        + json.dumps(plain["source"], separators=(",", ":"), ensure_ascii=False)
        + "}"
    )
    assert body["title"] not in row["record"] and rec.abstract not in row["record"]
    assert json.loads(row["mesh"]) == plain["mesh"]
    assert json.loads(row["publication_types"]) == plain["publication_types"]
    # encoded apart, yet the very text the hashed record holds
    assert f',"mesh":{row["mesh"]},"keywords":' in text
    assert f',"publication_types":{row["publication_types"]},"languages":' in row["record"]
    assert whole_record(row) == plain
    assert json.loads(row["authors"]) == [
        {**a, "name": author.display_name}
        for a, author in zip(plain["authors"], rec.authors, strict=True)
    ]
    assert prep.references == (1, 3)
    assert prep.terms == (("mesh", "Humans", False), ("ptype", "Journal Article", False))
    empty = prepare(dataclasses.replace(rec, authors=(), mesh=()))
    assert (empty.row["authors"], empty.row["mesh"]) == ("[]", "[]")


def test_rows_are_value_tuples_of_the_article_columns() -> None:
    """Records and tombstones give rows of every written column, in one order."""
    rec = make_record(7)
    now = T0 + dt.timedelta(hours=1)
    row = article_row(prepare(rec), 12, now)
    assert len(row) == len(ARTICLE_COLUMNS) == len(set(ARTICLE_COLUMNS))
    named = dict(zip(ARTICLE_COLUMNS, row, strict=True))
    assert named["pmid"] == 7 and named["source_position"] == 12
    assert named["ingested_at"] == named["updated_at"] == now and named["is_deleted"] is False
    assert {k: named[k] for k in PREPARED_COLUMNS} == prepare(rec).row
    tomb = dict(zip(ARTICLE_COLUMNS, tombstone_row(9, rec.source, 3, now), strict=True))
    assert (tomb["pmid"], tomb["is_deleted"], tomb["deleted_at"], tomb["source_position"]) == (
        9, True, now, 3,
    )  # fmt: skip
    assert (tomb["record"], tomb["authors"], tomb["version"]) == ("{}", "[]", 0)
    moved = dict(zip(ARTICLE_COLUMNS, with_values(row, {"is_deleted": True, "pmid": 8}),
                     strict=True))  # fmt: skip
    assert moved == {**named, "is_deleted": True, "pmid": 8}


#: Every character a str can hold from XML text (no lone surrogates), and JSON's hard ones.
_EVERY_CHAR = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


@pytest.mark.parametrize("text", ['"q" \\ / \x00\x1f\x7f\u2028\u2029 é 😀', _EVERY_CHAR])
def test_prepare_writes_the_json_of_to_dict_for_any_text(text: str) -> None:
    """msgspec writes the bytes json.dumps writes (same escapes, same order, dates)."""
    rec = dataclasses.replace(
        make_record(7, title=text, abstract=text),
        authors=(Author(text, text, "J", None, (text, "x"), text), Author(collective_name=text)),
        mesh=(MeshHeading(text[:300], text, True, (text,)),),
        keywords=(text,),
        pub_date=PartialDate(None, None, None, text, text),
        article_date=dt.date(1, 1, 1),
    )
    plain = rec.to_dict()
    prep = prepare(rec)
    assert prep.content_hash == content_hash(plain)
    row = prep.row
    assert json.loads(row["record"]) == stored_part(plain)
    assert whole_record(row) == plain
    assert json.loads(row["authors"]) == [
        {**a, "name": author.display_name}
        for a, author in zip(plain["authors"], rec.authors, strict=True)
    ]


def test_prepare_equals_to_dict_over_a_generated_corpus(files: list[Path]) -> None:
    from ingest.parse import iter_items
    from ingest.records import Record

    recs = [r for f in files for r in iter_items(f) if isinstance(r, Record)]
    assert len(recs) > 100
    for rec in recs:
        plain = rec.to_dict()
        prep = prepare(rec)
        assert prep.content_hash == content_hash(plain)
        row = prep.row
        assert json.loads(row["record"]) == stored_part(plain)
        assert whole_record(row) == plain


def _old_layout(path: Path) -> None:
    """A SQLite store as litpulse created it before this layout: 4 KiB pages, a BIGINT
    ``articles.pmid`` (a rowid table plus its key index), rowid link tables."""
    import sqlite3

    from sqlalchemy import create_engine
    from sqlalchemy.schema import CreateIndex, CreateTable

    from litpulse.core.schema import metadata

    dialect = create_engine("sqlite://").dialect
    con = sqlite3.connect(path)
    con.execute("PRAGMA page_size=4096")
    con.execute("PRAGMA journal_mode=WAL")
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect)).replace(" WITHOUT ROWID", "")
        if table.name == "articles":
            ddl = ddl.replace("pmid INTEGER NOT NULL", "pmid BIGINT NOT NULL", 1)
        con.execute(ddl)
        for index in table.indexes:
            con.execute(str(CreateIndex(index).compile(dialect=dialect)))
    con.commit()
    con.close()


def test_a_store_of_the_old_layout_ends_identical(tmp_path: Path, files: list[Path]) -> None:
    """Stores created before the SQLite layout changed keep working, with the same rows."""
    import sqlite3

    states = []
    for name in ("old", "new"):
        path = tmp_path / f"{name}.db"
        if name == "old":
            _old_layout(path)
        settings = Settings.from_env({}, home=tmp_path / name, database_url=f"sqlite:///{path}")
        engine = db.connect(settings)
        for i, items in parse_ordered([(p, source_ref_for(p)) for p in files], workers=0):
            Store(engine).apply(cut(items, 30 if i == 1 else None), batch_size=50)
        states.append(snapshot(engine))
        engine.dispose()
        con = sqlite3.connect(path)
        layout = (
            con.execute("PRAGMA page_size").fetchone()[0],
            "WITHOUT ROWID" in con.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'references'"
            ).fetchone()[0],
        )  # fmt: skip
        con.close()
        assert layout == ((4096, False) if name == "old" else (16384, True))
    old, new = states
    assert not differences(old, new)
    assert old == new


@pytest.mark.postgres
def test_postgres_articles_compress_their_large_columns_with_lz4(postgres_url: str) -> None:
    """A new articles table TOASTs with lz4 where the server has it (less CPU per row)."""
    from sqlalchemy import text

    engine = db.connect(Settings.from_env({}, database_url=postgres_url))
    with engine.connect() as conn:
        has_lz4 = conn.execute(
            text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                "WHERE name = 'default_toast_compression'"
            )
        ).scalar()
        methods = dict(
            conn.execute(
                text(
                    "SELECT attname, attcompression FROM pg_attribute "
                    "WHERE attrelid = 'articles'::regclass AND attcompression <> ''"
                )
            ).all()
        )
    want = dict.fromkeys(("abstract", "authors", "mesh", "record"), "l") if has_lz4 else {}
    assert methods == want
