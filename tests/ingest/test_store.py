"""The store's semantics on SQLite and PostgreSQL: versions, ties, tombstones, links, runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, update

from ingest import links
from ingest.records import (
    AbstractSection,
    Author,
    Deletion,
    MeshHeading,
    PartialDate,
    QuarantineEntry,
    Record,
    SourceRef,
)
from ingest.store import IngestCounts, Store
from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import article_terms, articles, references
from litpulse.core.settings import Settings

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def stored_part(plain: dict[str, Any]) -> dict[str, Any]:
    """What the ``record`` column holds of ``Record.to_dict()``: neither the authors, the
    MeSH headings nor the title, and of each abstract section its length, not its text."""
    part = {k: v for k, v in plain.items() if k not in ("authors", "mesh", "title")}
    part["abstract_sections"] = [{"length": len(s["text"]), "label": s["label"],
                                  "category": s["category"]}
                                 for s in plain["abstract_sections"]]  # fmt: skip
    return part


def whole_record(row: dict[str, Any]) -> dict[str, Any]:
    """``Record.to_dict()`` back from an article row (its columns by name): its record
    column with the title, the authors (less the display name the column adds) and MeSH
    headings of their own columns, the sections' texts cut from the abstract's."""
    from ingest.rows import abstract_sections

    def decoded(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    record, authors = decoded(row["record"]), decoded(row["authors"])
    whole = dict(record)
    whole["title"] = row["title"]
    whole["abstract_sections"] = abstract_sections(record["abstract_sections"], row["abstract"])
    whole["authors"] = [{k: v for k, v in a.items() if k != "name"} for a in authors]
    whole["mesh"] = decoded(row["mesh"])
    return whole


def src(seq: int = 0, minutes: int = 0, location: str | None = None) -> SourceRef:
    """A source: update file ``seq`` read ``minutes`` after T0; without a number, a local
    file read ``minutes`` after the day before T0 (before every numbered file of these
    tests, so it ranks below them: ``ingest.rules``)."""
    loc = location if location is not None else f"pubmed26n{seq:04d}.xml.gz"
    start = T0 if seq > 0 else T0 - dt.timedelta(days=1)
    return SourceRef("file", loc, sequence=seq, fetched_at=start + dt.timedelta(minutes=minutes))


def make_record(
    pmid: int,
    *,
    version: int = 1,
    revised: dt.date | None = dt.date(2025, 1, 1),
    source: SourceRef | None = None,
    title: str | None = None,
    refs: tuple[int, ...] = (),
    mesh: tuple[MeshHeading, ...] = (MeshHeading("Humans", "D006801"),),
    ptypes: tuple[str, ...] = ("Journal Article",),
    retracted: bool = False,
    abstract: str = "Background text.",
) -> Record:
    return Record(
        pmid=pmid,
        version=version,
        title=title if title is not None else f"Title {pmid}",
        source=source or src(),
        abstract_sections=(AbstractSection(abstract, "BACKGROUND"),) if abstract else (),
        journal="J Test",
        pub_date=PartialDate(2024, 3, None, "2024 Mar"),
        article_date=dt.date(2024, 2, 20),
        entrez_date=dt.date(2024, 2, 21),
        date_revised=revised,
        authors=(Author("Smith", "Jane", "J"), Author(collective_name="The Group")),
        mesh=mesh,
        publication_types=ptypes,
        languages=("eng",),
        doi=f"10.1000/{pmid}",
        references=refs,
        is_retracted=retracted,
    )


def row(engine: Engine, pmid: int) -> dict[str, Any]:
    with engine.connect() as conn:
        r = conn.execute(select(articles).where(articles.c.pmid == pmid)).first()
    assert r is not None
    return dict(r._mapping)


def counts(**kw: int) -> IngestCounts:
    return IngestCounts(**kw)


# ------------------------------------------------------------------------------ counts


def test_counts_add_and_validate() -> None:
    total = counts(inserted=1, quarantined=2) + counts(inserted=2, deleted=1)
    assert total.to_dict() == {
        "inserted": 3, "updated": 0, "unchanged": 0, "deleted": 1, "quarantined": 2,
        "requarantined": 0, "reseen": 0, "missing": 0,
    }  # fmt: skip
    assert total.total == 6
    assert total - counts(inserted=1) == counts(inserted=2, deleted=1, quarantined=2)
    with pytest.raises(ConfigError, match="missing"):
        IngestCounts(missing=-1)


# ------------------------------------------------------------------------ versions


def test_insert_fills_every_column(engine: Engine) -> None:
    store = Store(engine)
    rec = make_record(11, refs=(12, 13), retracted=True)
    assert store.apply([rec]) == counts(inserted=1)
    r = row(engine, 11)
    assert r["version"] == 1 and r["title"] == "Title 11" and r["journal"] == "J Test"
    assert r["abstract"] == "BACKGROUND: Background text." and r["has_abstract"] is True
    assert (r["pub_year"], r["pub_month"], r["pub_day"], r["pub_date_raw"]) == (
        2024, 3, None, "2024 Mar"
    )  # fmt: skip
    assert r["best_date"] == dt.date(2024, 2, 20) == rec.best_date
    assert r["language"] == "eng" and r["doi"] == "10.1000/11" and r["is_retracted"] is True
    assert r["text_hash"] == rec.text_hash() and r["content_hash"]
    assert "authors" not in r["record"] and "mesh" not in r["record"]  # own columns
    assert whole_record(r) == rec.to_dict()
    assert r["is_deleted"] is False and r["source_sequence"] == 0

    art = store.get_article(11)
    assert [a["name"] for a in art["authors"]] == ["Smith J", "The Group"]
    assert art["mesh"] == [
        {"descriptor": "Humans", "ui": "D006801", "major": False, "qualifiers": []}
    ]
    assert art["publication_types"] == ["Journal Article"]
    assert art["references"] == [12, 13]
    assert art["pub_date_raw"] == "2024 Mar" and art["best_date"] == "2024-02-20"
    for key in ("pmid", "version", "pmcid", "is_book", "is_deleted", "cited_by_in_corpus",
                "citation_count", "relative_citation_ratio", "date_revised",
                "entrez_date"):  # fmt: skip
        assert key in art


def test_higher_version_wins_in_either_order(engine: Engine) -> None:
    store = Store(engine)
    v1 = make_record(1, version=1, title="v1", source=src(1))
    v2 = make_record(1, version=2, title="v2", source=src(1))
    assert store.apply([v2]) == counts(inserted=1)
    assert store.apply([v1]) == counts(unchanged=1)  # older never overwrites
    assert row(engine, 1)["title"] == "v2"
    store.apply([make_record(2, version=1, title="v1")])
    assert store.apply([make_record(2, version=3, title="v3")]) == counts(updated=1)
    assert row(engine, 2)["version"] == 3


def test_later_date_revised_wins_for_same_version(engine: Engine) -> None:
    store = Store(engine)
    new = make_record(5, revised=dt.date(2025, 6, 1), title="new", source=src(1))
    old = make_record(5, revised=dt.date(2025, 1, 1), title="old", source=src(2))
    store.apply([new])
    assert store.apply([old]) == counts(unchanged=1)  # later file, older revision
    assert row(engine, 5)["title"] == "new"
    newer = make_record(5, revised=dt.date(2025, 7, 1), title="newer", source=src(0))
    assert store.apply([newer]) == counts(updated=1)
    assert row(engine, 5)["title"] == "newer"


def test_source_breaks_ties(engine: Engine) -> None:
    store = Store(engine)
    store.apply([make_record(7, title="file 3", source=src(3))])
    assert store.apply([make_record(7, title="file 2", source=src(2))]) == counts(unchanged=1)
    assert store.apply([make_record(7, title="file 4", source=src(4))]) == counts(updated=1)
    assert row(engine, 7)["title"] == "file 4"
    # same file number (e.g. E-utilities): the later fetch wins
    store.apply([make_record(8, title="early", source=src(0, 1, "efetch"))])
    assert store.apply([make_record(8, title="late", source=src(0, 5, "efetch2"))]) == counts(
        updated=1
    )
    assert store.apply([make_record(8, title="stale", source=src(0, 2, "efetch3"))]) == counts(
        unchanged=1
    )
    assert row(engine, 8)["title"] == "late"


def test_reapplying_is_idempotent(engine: Engine) -> None:
    store = Store(engine)
    batch = [make_record(p, refs=(p + 1,)) for p in range(100, 110)]
    batch.append(Deletion(105, src(7)))
    first = store.apply(batch)
    assert first == counts(inserted=10, deleted=1)
    before = {p: row(engine, p)["updated_at"] for p in range(100, 110)}
    # the same NLM file read again later: a new SourceRef, another fetch time and place
    again_src = src(7, 30, "mirror/pubmed26n0007.xml.gz")
    again = [dataclass_replace_source(it, again_src) for it in batch]
    assert store.apply(again) == counts(unchanged=11)
    assert {p: row(engine, p)["updated_at"] for p in range(100, 110)} == before
    assert row(engine, 105)["is_deleted"] is True


def dataclass_replace_source(item: Any, source: SourceRef) -> Any:
    import dataclasses

    return dataclasses.replace(item, source=source)


def test_same_content_from_later_source_is_unchanged(engine: Engine) -> None:
    store = Store(engine)
    store.apply([make_record(9, source=src(1))])
    stamp = row(engine, 9)["updated_at"]
    assert store.apply([make_record(9, source=src(2))]) == counts(unchanged=1)
    r = row(engine, 9)
    assert r["updated_at"] == stamp
    assert r["source_sequence"] == 2  # the later source is remembered
    # so a replayed older deletion (file 1.5 < 2) does not remove it
    assert store.apply([Deletion(9, src(1, 60, "other"))]) == counts(unchanged=1)
    assert row(engine, 9)["is_deleted"] is False


# ------------------------------------------------------------------------ tombstones


def test_deletion_tombstones_and_counts_once(engine: Engine) -> None:
    store = Store(engine)
    store.apply([make_record(20, refs=(21,)), make_record(21)])
    assert store.apply([Deletion(20, src(1))]) == counts(deleted=1)
    assert store.apply([Deletion(20, src(2))]) == counts(unchanged=1)
    r = row(engine, 20)
    assert r["is_deleted"] is True and r["deleted_at"] is not None
    assert r["title"] == "Title 20"  # the deleted record is kept for the record
    assert store.get_article(20)["is_deleted"] is True
    assert store.existing_pmids([20, 21, 22]) == {21}


def test_deleting_unknown_pmid_blocks_older_record(engine: Engine) -> None:
    store = Store(engine)
    assert store.apply([Deletion(30, src(5))]) == counts(unchanged=1)
    assert row(engine, 30)["is_deleted"] is True
    deleted_at = row(engine, 30)["deleted_at"]
    # an older file (or an earlier fetch) arriving afterwards does not resurrect it
    assert store.apply([make_record(30, source=src(3))]) == counts(unchanged=1)
    assert store.apply([make_record(30, source=src(0, -5, "x"))]) == counts(unchanged=1)
    r = row(engine, 30)
    assert r["is_deleted"] is True
    assert store.status()["articles"] == 0
    # but the withdrawn article is known, as files applied in order leave it (410, not
    # 404): the record fills the bare tombstone, which keeps its deletion and source
    assert (r["version"], r["title"], r["deleted_at"]) == (1, "Title 30", deleted_at)
    assert (r["source_sequence"], r["source_position"]) == (5, 0)
    assert store.get_article(30)["is_deleted"] is True and store.status()["deleted"] == 1


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "reference"])
def test_records_met_after_their_deletion_end_as_in_source_order(
    engine: Engine, bulk: bool
) -> None:
    """Records of older sources than a tombstone's deletion, met after it, leave the row
    as the sources applied in order do: the newest of them, deleted, with the deletion's
    time and source; in any order, any batch size, and met again (nothing changes)."""
    store = Store(engine, bulk=bulk)
    v1 = {"version": 1, "title": "v1"}
    v2 = {"version": 2, "title": "v2"}
    v2_later = {"version": 2, "revised": dt.date(2025, 6, 1), "title": "v2, revised"}

    def items(pmid: int, order: str) -> list[Record | Deletion]:
        parts: dict[str, Record | Deletion] = {
            "a": make_record(pmid, source=src(1), **v1),  # type: ignore[arg-type]
            "b": make_record(pmid, source=src(2), **v2),  # type: ignore[arg-type]
            "c": make_record(pmid, source=src(3), **v2_later),  # type: ignore[arg-type]
            "d": Deletion(pmid, src(4)),
        }
        return [parts[k] for k in order]

    def state(pmid: int) -> tuple[Any, ...]:
        r = row(engine, pmid)
        return (r["is_deleted"], r["version"], r["date_revised"], r["title"],
                r["source_sequence"], r["source_position"])  # fmt: skip

    for i, order in enumerate(["abcd", "dabc", "dcba", "bdac"]):
        pmid = 1000 + 10 * i
        for item in items(pmid, order):  # one source at a time, as readers apply them
            store.apply([item])
        placed = [(pmid, 0)]
        for size in (1, 2, 4):  # every item in one call: the deletion's position there
            store.apply(items(pmid + size, order), batch_size=size)
            placed.append((pmid + size, order.index("d")))
        for p, at in placed:
            assert state(p) == (True, 2, dt.date(2025, 6, 1), "v2, revised", 4, at), (order, p)
    # met again, in any order: nothing is written
    before = row(engine, 1010)
    assert store.apply(items(1010, "cbad")) == counts(unchanged=4)
    assert row(engine, 1010) == before
    # a deletion of a later source met after a fill moves the tombstone's source
    store.apply([Deletion(90, src(4))])
    store.apply([make_record(90, source=src(1)), Deletion(90, src(5))])
    assert state(90) == (True, 1, dt.date(2025, 1, 1), "Title 90", 5, 1)


def test_record_from_later_source_lifts_tombstone(engine: Engine) -> None:
    store = Store(engine)
    store.apply([make_record(40, title="v1", source=src(1))])
    store.apply([Deletion(40, src(2))])
    # the deleted content again from the file that held it, or an older one: stays deleted
    assert store.apply([make_record(40, title="v1", source=src(1, 60))]) == counts(unchanged=1)
    assert store.apply([make_record(40, title="v1", source=src(0, 90, "x"))]) == counts(
        unchanged=1
    )
    # an older version from a later file: stays deleted
    assert store.apply(
        [make_record(40, version=1, revised=dt.date(2024, 1, 1), title="x", source=src(3))]
    ) == counts(unchanged=1)
    assert row(engine, 40)["is_deleted"] is True
    # the deleted content again from a later file than the deletion: back, as a live
    # row's source moves to a later file that repeats it (a file killed before the
    # deletion and resumed after that file ends the same)
    assert store.apply([make_record(40, title="v1", source=src(3))]) == counts(updated=1)
    r = row(engine, 40)
    assert r["is_deleted"] is False and r["title"] == "v1" and r["source_sequence"] == 3
    store.apply([Deletion(40, src(4))])
    assert row(engine, 40)["is_deleted"] is True
    # a revised record from a later file than the deletion: back
    revised = make_record(40, version=2, title="v2", source=src(5))
    assert store.apply([revised]) == counts(updated=1)
    r = row(engine, 40)
    assert r["is_deleted"] is False and r["deleted_at"] is None and r["title"] == "v2"


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "reference"])
def test_a_lifted_tombstone_enters_the_live_corpus_again(engine: Engine, bulk: bool) -> None:
    """``ingested_at`` is when an article last became live: a record lifting a stored
    tombstone moves it (a saved search's digest meets the article as a new one; before, it
    kept its first time, behind the digest's watermark, and was never reported), a
    revision or a deletion does not, nor does a record after a deletion in its batch."""
    store = Store(engine, bulk=bulk)
    store.apply([make_record(60, source=src(1)), make_record(61, source=src(1))])
    first = row(engine, 60)["ingested_at"]
    store.apply([Deletion(60, src(2))])
    assert row(engine, 60)["ingested_at"] == first  # a tombstone keeps it
    store.apply([make_record(61, version=2, source=src(2))])
    assert row(engine, 61)["ingested_at"] == first  # a revision keeps it (same batch: same time)
    store.apply([make_record(60, version=2, title="back", source=src(3))])
    back = row(engine, 60)
    assert back["is_deleted"] is False and back["ingested_at"] > first
    assert back["ingested_at"] == back["updated_at"]
    # within one batch: live, deleted, live again: it never left the corpus between batches
    store.apply([Deletion(61, src(4)), make_record(61, version=3, source=src(5))])
    assert row(engine, 61)["ingested_at"] == first


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "reference"])
def test_first_ingested_at_is_set_by_the_first_record_and_never_moves(
    engine: Engine, bulk: bool
) -> None:
    """``first_ingested_at`` is when a record of the article was first stored: neither a
    revision, a tombstone nor a record lifting it moves it (retrain: an article an earlier
    round trained on is no new literature when PubMed reinstates it); a deletion of a PMID
    never stored leaves it NULL until a record lifts that tombstone."""
    store = Store(engine, bulk=bulk)
    store.apply([make_record(62, source=src(1)), Deletion(63, src(1))])
    first = row(engine, 62)["first_ingested_at"]
    assert first is not None and first == row(engine, 62)["ingested_at"]
    assert row(engine, 63)["first_ingested_at"] is None  # no record of it stored yet
    store.apply([make_record(62, version=2, source=src(2))])  # a revision
    store.apply([Deletion(62, src(3))])  # withdrawn
    assert row(engine, 62)["first_ingested_at"] == first
    store.apply([make_record(62, version=3, source=src(4)), make_record(63, source=src(4))])
    back, lifted = row(engine, 62), row(engine, 63)
    assert back["ingested_at"] > first and back["first_ingested_at"] == first  # reinstated
    assert lifted["first_ingested_at"] == lifted["ingested_at"] > first  # its first record


def test_deletion_older_than_record_is_ignored(engine: Engine) -> None:
    store = Store(engine)
    store.apply([make_record(45, source=src(7))])
    assert store.apply([Deletion(45, src(6))]) == counts(unchanged=1)
    assert row(engine, 45)["is_deleted"] is False


# ------------------------------------------------------------------------ batches


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_same_pmid_several_times_in_order(engine: Engine, batch_size: int) -> None:
    store = Store(engine)
    f = src(1)
    items = [
        make_record(50, version=1, title="a", source=f),
        make_record(50, version=2, title="b", source=f),
        make_record(50, version=1, title="old", source=f),
        make_record(51, title="x", source=f),
        Deletion(51, f),
        Deletion(52, f),
        make_record(52, title="after", source=f),
        make_record(53, title="first", source=f),
        make_record(53, title="second", source=f),  # same version/date, later in file
    ]
    got = store.apply(items, batch_size=batch_size)
    assert got == counts(inserted=3, updated=3, unchanged=2, deleted=1)
    assert row(engine, 50)["title"] == "b"
    assert row(engine, 51)["is_deleted"] is True
    assert row(engine, 52)["title"] == "after" and row(engine, 52)["is_deleted"] is False
    assert row(engine, 53)["title"] == "second"
    # the whole file again: a replay changes nothing
    replay = [dataclass_replace_source(it, src(1, 10)) for it in items]
    assert store.apply(replay, batch_size=batch_size) == counts(unchanged=len(items))
    assert row(engine, 53)["title"] == "second" and row(engine, 51)["is_deleted"] is True


def test_apply_leaves_the_garbage_collector_as_it_found_it(engine: Engine) -> None:
    """apply pauses the cyclic collector while it stores (Store._gc_paused), and turns
    it back on after, also when the items raise; a collector a caller turned off stays
    off."""

    def failing() -> Any:
        yield make_record(1)
        raise RuntimeError("parse failed")

    store = Store(engine)
    assert gc.isenabled()
    store.apply([make_record(1), make_record(2)], batch_size=1)
    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="parse failed"):
        store.apply(failing())
    assert gc.isenabled()
    gc.disable()
    try:
        store.apply([make_record(3)])
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert row(engine, 3)["title"] == "Title 3"


def test_batch_size_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        Store(engine).apply([], batch_size=0)


# ------------------------------------------------------------------- terms, references


def test_terms_and_references_replaced_on_update(engine: Engine) -> None:
    store = Store(engine)
    mesh = (MeshHeading("Neoplasms", "D009369", True), MeshHeading("Humans", "D006801"))
    store.apply([make_record(60, refs=(61, 62), mesh=mesh, ptypes=("Review",))])
    with engine.connect() as conn:
        terms = set(conn.execute(select(article_terms.c.kind, article_terms.c.term,
                                        article_terms.c.major)).all())  # fmt: skip
    assert terms == {("mesh", "Neoplasms", True), ("mesh", "Humans", False),
                     ("ptype", "Review", False)}  # fmt: skip
    store.apply([make_record(60, version=2, refs=(63,))])
    with engine.connect() as conn:
        terms = set(conn.execute(select(article_terms.c.term)).scalars())
        refs = set(conn.execute(select(references.c.citing_pmid, references.c.cited_pmid)).all())
    assert terms == {"Humans", "Journal Article"}
    assert refs == {(60, 63)}


def test_cited_by_in_corpus(engine: Engine) -> None:
    store = Store(engine)
    # 71 is cited before it exists; 70 and 72 cite it; 73 cites 70
    store.apply([make_record(70, refs=(71,)), make_record(73, refs=(70,))])
    assert row(engine, 70)["cited_by_in_corpus"] == 1
    store.apply([make_record(71), make_record(72, refs=(71, 71, 72))])
    assert row(engine, 71)["cited_by_in_corpus"] == 2
    assert row(engine, 72)["cited_by_in_corpus"] == 0  # self-citation ignored
    # a citing article is deleted: the count drops
    store.apply([Deletion(72, src(1))])
    assert row(engine, 71)["cited_by_in_corpus"] == 1
    # a revision that drops the reference
    store.apply([make_record(70, version=2, refs=())])
    assert row(engine, 71)["cited_by_in_corpus"] == 0
    assert store.get_article(70)["cited_by_in_corpus"] == 1
    # full recompute agrees
    with engine.begin() as conn:
        conn.execute(articles.update().values(cited_by_in_corpus=99))
    store.recompute_cited_by()
    with engine.connect() as conn:
        got = dict(conn.execute(select(articles.c.pmid, articles.c.cited_by_in_corpus)).all())
    assert got == {70: 1, 71: 0, 72: 0, 73: 0}
    store.recompute_cited_by([70])
    assert row(engine, 70)["cited_by_in_corpus"] == 1


def test_a_new_tombstone_counts_the_citers_stored_before(engine: Engine) -> None:
    """A deletion of a PMID never stored makes a tombstone row: its count is that of its
    live citers, as when the citer and the deletion fall in one batch."""
    store = Store(engine)
    store.apply([make_record(80, refs=(81,)), make_record(82, refs=(83,)), Deletion(83, src(1))])
    assert row(engine, 83)["cited_by_in_corpus"] == 1  # one batch
    store.apply([Deletion(81, src(1))])
    assert row(engine, 81)["cited_by_in_corpus"] == 1  # a later batch
    store.recompute_cited_by()
    assert (row(engine, 81)["cited_by_in_corpus"], row(engine, 83)["cited_by_in_corpus"]) == (1, 1)


# ------------------------------------------------------------------------ quarantine


def test_quarantine_deduplicated_by_digest(engine: Engine) -> None:
    store = Store(engine)
    bad = QuarantineEntry("no PMID", "<PubmedArticle/>", src(1), line=12)
    other = QuarantineEntry("bad date", "<PubmedArticle><PMID>9</PMID></PubmedArticle>",
                            src(1), pmid=9)  # fmt: skip
    run_id = store.start_run("files", target="x.xml")
    assert store.apply([bad, bad, other, make_record(80)], run_id=run_id) == counts(
        inserted=1, quarantined=3
    )
    assert store.apply([bad], run_id=run_id) == counts(quarantined=1)
    rows = store.quarantined(limit=10)
    assert len(rows) == 2
    assert {r["reason"] for r in rows} == {"no PMID", "bad date"}
    first = next(r for r in rows if r["reason"] == "no PMID")
    assert first["line"] == 12 and first["raw_xml"] == "<PubmedArticle/>"
    assert first["source_location"] == "pubmed26n0001.xml.gz" and first["run_id"] == run_id
    assert store.status()["quarantined"] == 2
    assert len(store.quarantined(limit=1)) == 1


def test_quarantine_entries_resolve_by_position_whatever_the_batch_size(engine: Engine) -> None:
    """An entry is resolved by a record or deletion of its PMID stored after it: one stored
    before the batch by any write of the batch, one of the batch by a write placed after
    it (never by an item that wrote nothing, nor one before it). Every batch size ends in
    the state of items applied one by one."""
    store = Store(engine)

    def bad(tag: str, pmid: int | None) -> QuarantineEntry:
        return QuarantineEntry("broken", f"<PubmedArticle>{tag}</PubmedArticle>", src(1),
                               pmid=pmid)  # fmt: skip

    def run(size: int) -> dict[str, bool]:
        base = 100 * size  # each size its own PMIDs and entries
        tag = f"{size}-"
        first = [
            bad(tag + "a", base + 1), make_record(base + 1, version=2, source=src(1)),  # a: yes
            bad(tag + "b", base + 1), make_record(base + 1, source=src(1)),  # older: b open
            bad(tag + "c", base + 3), Deletion(base + 3, src(1)),  # c: a tombstone is stored
            bad(tag + "d", base + 4),  # nothing of it follows: open
            make_record(base + 5, source=src(1)), bad(tag + "e", base + 5),  # after: open
            bad(tag + "f", base + 6), make_record(base + 6, source=src(1)),
            bad(tag + "f", base + 6),  # met again after its record: still resolved
            bad(tag + "g", None), make_record(base + 7, source=src(1)),  # no PMID: not 7's
        ]  # fmt: skip
        second = [
            make_record(base + 1, version=3, source=src(2)),  # b (stored before): yes
            bad(tag + "h", base + 1),  # after it: open
            bad(tag + "e", base + 5),  # e again, then its revision: yes
            make_record(base + 5, version=2, source=src(2)),
            bad(tag + "i", None), make_record(base + 8, source=src(2)),
            bad(tag + "i", base + 8),  # i named after its PMID's record: open
            bad(tag + "g", base + 9),  # g named (EFetch asked for it alone), then stored
            make_record(base + 9, source=src(2)),
        ]  # fmt: skip
        store.apply(first, batch_size=size)
        store.apply(second, batch_size=size)
        entries = [e for e in store.quarantined(100, resolved=True, raw=True)
                   if e["raw_xml"].startswith(f"<PubmedArticle>{tag}")]  # fmt: skip
        assert all(e["pmid"] is not None for e in entries)  # g and i named
        return {e["raw_xml"][len("<PubmedArticle>") + len(tag)]: e["resolved_at"] is not None
                for e in entries}  # fmt: skip

    expected = {"a": True, "b": True, "c": True, "d": False, "e": True, "f": True, "g": True,
                "h": False, "i": False}  # fmt: skip
    for size in (1, 2, 3, 5, 1000):
        assert run(size) == expected, size


# ------------------------------------------------------------------ runs, checkpoints


def test_run_of_a_killed_process_is_closed_as_abandoned(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    script = (
        "import os, signal\n"
        "from sqlalchemy import create_engine\n"
        "from ingest.store import Store\n"
        f"run = Store(create_engine({url!r})).start_run('files', target='x.xml')\n"
        "print(run, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = int(proc.stdout.split()[0])
    store = Store(engine)
    assert store.get_run(killed)["status"] == "running"
    alive = store.start_run("files", target="y.xml")  # closes the dead one first
    run = store.get_run(killed)
    assert run["status"] == "abandoned" and "ended without finishing" in run["error"]
    assert store.get_run(alive)["status"] == "running"  # our own process is alive
    assert store.close_abandoned_runs() == []


def test_runs_rows(engine: Engine) -> None:
    store = Store(engine)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    run_id = store.start_run(
        "eutils", target="2024-01-01..2024-01-02", window_start=start,
        window_end=start + dt.timedelta(days=1),
    )  # fmt: skip
    assert store.get_run(run_id)["status"] == "running"
    store.finish_run(run_id, counts(inserted=3, missing=1), details={"batches": 2})
    run = store.get_run(run_id)
    assert run["status"] == "succeeded" and run["inserted"] == 3 and run["missing"] == 1
    assert run["details"] == {"batches": 2} and run["finished_at"] and run["seconds"] >= 0
    assert run["window_start"].startswith("2024-01-01")
    failed = store.start_run("files", target="a.xml")
    store.finish_run(failed, counts(), status="failed", error="boom")
    runs = store.status()["last_runs"]
    assert [r["id"] for r in runs] == [failed, run_id]
    assert runs[0]["status"] == "failed" and runs[0]["error"] == "boom"
    with pytest.raises(ConfigError):
        store.finish_run(failed, counts(), status="done")
    with pytest.raises(NotFoundError):
        store.finish_run(9999, counts())
    with pytest.raises(NotFoundError):
        store.get_run(9999)


def test_checkpoints(engine: Engine) -> None:
    store = Store(engine)
    assert store.get_checkpoint("eutils", "w1") is None
    store.set_checkpoint("eutils", "w1", "running", {"done": [1, 2]})
    store.set_checkpoint("eutils", "w1", "done", {"done": [1, 2, 3]})
    store.set_checkpoint("eutils", "w2", "running", {})
    cp = store.get_checkpoint("eutils", "w1")
    assert cp is not None
    assert (cp["status"], cp["value"]) == ("done", {"done": [1, 2, 3]})
    assert store.get_checkpoint("other", "w1") is None


# ------------------------------------------------------------------------ reads


def test_an_abstract_is_stored_once_and_its_sections_read_back_whole(engine: Engine) -> None:
    """The ``record`` column keeps each section's label, category and length; the texts
    are the ``abstract`` column's (each abstract was stored twice). Sections with and
    without labels, texts holding line breaks, ``LABEL: `` and characters beyond the BMP
    read back as parsed; a row written before keeps its texts in ``record`` and reads the
    same."""
    from ingest.records import AbstractSection

    sections = (
        AbstractSection("Why \U0001d6fc-synuclein?\nMETHODS: not a label", "BACKGROUND",
                        "BACKGROUND"),
        AbstractSection("Unlabelled: text."),
        AbstractSection("", "RESULTS", "RESULTS"),
        AbstractSection("Last \U0001f600 line.", "CONCLUSIONS", None),
    )  # fmt: skip
    rec = dataclasses.replace(make_record(31), abstract_sections=sections)
    store = Store(engine)
    store.apply([rec])
    art = store.get_article(31)
    want = rec.to_dict()["abstract_sections"]
    assert art["abstract_sections"] == want and art["abstract"] == rec.abstract
    with engine.connect() as conn:
        stored = conn.execute(select(articles.c.record).where(articles.c.pmid == 31)).scalar_one()
    assert stored["abstract_sections"] == [
        {"length": len(s.text), "label": s.label, "category": s.category} for s in sections
    ]
    assert "title" not in stored
    # a row of the layout before: the texts and the title in the record column too
    with engine.begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == 31).values(
            record={**stored, "title": rec.title, "abstract_sections": want}))  # fmt: skip
    assert store.get_article(31)["abstract_sections"] == want


def test_get_article_unknown_raises(engine: Engine) -> None:
    with pytest.raises(NotFoundError, match="12345"):
        Store(engine).get_article(12345)


def test_status_counts(engine: Engine) -> None:
    store = Store(engine)
    store.apply(
        [make_record(90), make_record(91, retracted=True), make_record(92), Deletion(92, src(1))]
    )
    st = store.status()
    assert (st["articles"], st["deleted"], st["retracted"]) == (2, 1, 1)
    assert st["newest_best_date"] == "2024-02-20"
    assert st["writer"] is None  # nobody writes articles now


def test_status_names_the_process_writing_articles(engine: Engine) -> None:
    """A refused ingest (exit 75) sends the engineer to ``litpulse status``: who holds the
    store's writer lease, and until when unless it renews it."""
    from ingest.runs import store_writer
    from litpulse.core import db

    other = db.acquire_lease(engine, "store-writer", holder="otherhost:7:boot", heartbeat=False)
    assert other is not None
    try:
        assert str(Store(engine).status()["writer"]).startswith("otherhost:7:boot, until ")
    finally:
        other.release()
    with store_writer(engine):  # this process (a holder ends with a random token)
        me = db.default_holder().rsplit(":", 1)[0]
        assert str(Store(engine).status()["writer"]).startswith(me)
    assert Store(engine).status()["writer"] is None


def test_many_records_in_batches(engine: Engine) -> None:
    """A few thousand records over several batches land exactly once."""
    store = Store(engine)
    n = 1500
    items = [make_record(1000 + i, refs=(1000 + (i + 1) % n,)) for i in range(n)]
    assert store.apply(items, batch_size=400) == counts(inserted=n)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(articles)).scalar() == n
        cited = conn.execute(select(func.sum(articles.c.cited_by_in_corpus))).scalar()
    assert cited == n
    assert store.apply(items, batch_size=1000) == counts(unchanged=n)


@pytest.mark.parametrize(
    ("author", "name"),
    [
        (Author("Smith", "Jane", "J"), "Smith J"),
        (Author("Smith", "Jane", None), "Smith Jane"),
        (Author("Smith", None, ""), "Smith"),
        (Author(None, "Jane", "J"), "J"),
        (Author("", "", ""), ""),
        (Author(), ""),
        (Author("Smith", "Jane", "J", "The Group"), "The Group"),
        (Author("Smith", "Jane", "J", ""), "Smith J"),
    ],
)
def test_author_display_name(author: Author, name: str) -> None:
    assert author.display_name == name


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_cited_by_deltas_agree_with_a_full_recount(engine: Engine, batch_size: int) -> None:
    """Random inserts, revisions, deletions and resurrections keep the counts exact."""
    store = Store(engine)
    store.apply(_random_history(5), batch_size=batch_size)
    with engine.connect() as conn:
        counts_q = select(articles.c.pmid, articles.c.cited_by_in_corpus)
        incremental = dict(conn.execute(counts_q).all())
        live = set(conn.execute(
            select(articles.c.pmid).where(articles.c.is_deleted.is_(False))).scalars())  # fmt: skip
        refs_rows = conn.execute(select(references.c.citing_pmid, references.c.cited_pmid)).all()
    expected = {p: 0 for p in incremental}
    for citing, cited in refs_rows:
        assert citing in live  # references are kept for live articles only
        if cited in expected:
            expected[cited] += 1
    live_expected = {p: n for p, n in expected.items() if p in live}
    assert {p: n for p, n in incremental.items() if p in live} == live_expected
    store.recompute_cited_by()
    with engine.connect() as conn:
        full = dict(conn.execute(counts_q).all())
    assert {p: n for p, n in full.items() if p in live} == live_expected


# ------------------------------------------------------------------ deferred counts


def _random_history(seed: int) -> list[Any]:
    """Inserts, revisions, deletions and resurrections citing one another at random."""
    import random

    rng = random.Random(seed)
    pmids = list(range(500, 560))
    items: list[Any] = []
    version = dict.fromkeys(pmids, 0)
    for step in range(300):
        pmid = rng.choice(pmids)
        if rng.random() < 0.15:
            items.append(Deletion(pmid, src(1 + step)))
        else:
            version[pmid] += 1
            refs = tuple(rng.sample(pmids, 4)) + (9_999_999,)
            items.append(make_record(pmid, version=version[pmid], refs=refs, source=src(1 + step)))
    return items


def _counts(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(articles.c.pmid, articles.c.cited_by_in_corpus)).all())


def test_deferred_counts_end_where_per_batch_counts_end(engine: Engine) -> None:
    """A bootstrap defers the in-corpus citation counts (at baseline scale an article cited
    from many later files would be rewritten once per file) and recounts once at the end:
    the same counts as kept batch by batch, tombstones included."""
    items = _random_history(5)
    Store(engine).apply(items, batch_size=7)
    expected = _counts(engine)
    assert sum(expected.values()) > 50
    with engine.begin() as conn:
        for t in (references, article_terms, articles):
            conn.execute(t.delete())
    deferred = Store(engine, defer_counts=True)
    assert not deferred.counts_deferred()
    deferred.apply(items[:150], batch_size=7)
    # the mark outlives the process that set it: another store (a resumed run) sees it
    assert Store(engine).counts_deferred()
    deferred.apply(items[150:], batch_size=7)
    assert _counts(engine) != expected  # left alone while deferred
    changed = deferred.finish_counts(step=9)  # ranges smaller than the PMID span
    assert changed is not None and changed > 0
    assert _counts(engine) == expected
    assert not Store(engine).counts_deferred()
    assert deferred.finish_counts() is None  # nothing deferred, nothing to do


def test_a_full_recount_goes_range_by_range(engine: Engine) -> None:
    store = Store(engine)
    store.apply(_random_history(8), batch_size=1000)
    expected = _counts(engine)
    with engine.begin() as conn:
        conn.execute(articles.update().values(cited_by_in_corpus=7))
    store.recompute_cited_by()
    assert _counts(engine) == expected
    with engine.begin() as conn:
        conn.execute(articles.update().values(cited_by_in_corpus=7))
    assert store.recount_all(step=4) == len(expected) - sum(n == 7 for n in expected.values())
    assert _counts(engine) == expected


def test_old_sqlite_recounts_as_the_set_based_statements(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.33 has no ``UPDATE … FROM``: a range is recounted by
    ``recompute_cited_by`` over its PMIDs, written one ``UPDATE`` per PMID. The same counts,
    and the same number of rows changed, as the set-based statements on the same data."""
    engine = db.connect(sqlite_settings)
    store = Store(engine)
    store.apply(_random_history(11), batch_size=13)
    expected = _counts(engine)
    assert sum(expected.values()) > 50

    def spoil() -> None:
        with engine.begin() as conn:
            conn.execute(articles.update().values(cited_by_in_corpus=7))

    spoil()
    set_based = store.recount_all(step=4)
    assert set_based > 0 and _counts(engine) == expected
    spoil()
    monkeypatch.setattr(links, "_SQLITE_SET_BASED", False)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert store.recount_all(step=4) == set_based
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert _counts(engine) == expected
    assert not [s for s in statements if " FROM (" in s and s.startswith("UPDATE")]
    assert any(s.startswith("UPDATE articles SET cited_by_in_corpus") for s in statements)


def test_rows_of_a_store_made_before_nlm_sequences_had_the_year_are_upgraded(
    settings: Settings, tmp_path: Path
) -> None:
    """Rows written by NLM files when ``source_sequence`` was the file number alone are
    given their file's year on the first write after the upgrade, so a file of the same
    year that comes earlier (re-applied by hand) still loses to them, as it did."""
    from ingest import store as store_module
    from ingest.files import ingest_files
    from ingest.records import nlm_sequence
    from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
    from litpulse.core.schema import checkpoints

    day = dt.date(2026, 3, 2)

    def nlm_file(name: str, title: str) -> Path:
        path = tmp_path / name
        path.write_bytes(gz(pubmed_set([article_xml(1001, edat=day, title=title)])))
        return path

    old = nlm_file("pubmed26n1300.xml.gz", "Old title")
    new = nlm_file("pubmed26n1400.xml.gz", "Revised title")
    ingest_files(settings, [old, new])
    engine = db.connect(settings)
    # the store as an older litpulse left it: numbers alone, no checkpoint
    with engine.begin() as conn:
        conn.execute(articles.update().values(source_sequence=1400))
        conn.execute(checkpoints.delete().where(checkpoints.c.key == "nlm_sequence"))
    store_module._SEQUENCES_CURRENT.clear()

    counts = ingest_files(settings, [old])  # the earlier file again, by hand
    assert (counts.inserted, counts.updated) == (0, 0)
    with engine.connect() as conn:
        title, seq = conn.execute(select(articles.c.title, articles.c.source_sequence)).one()
    assert title == "Revised title"  # before the upgrade code: "Old title"
    assert seq == nlm_sequence(26, 1400)
    assert Store(engine).upgrade_sequences() == 0  # once


def test_rows_of_a_file_named_like_an_nlm_file_by_an_older_release_are_upgraded(
    settings: Settings, tmp_path: Path
) -> None:
    """Rows an older release wrote for the parts of a split ``pubmed26n1320_partN.xml``
    under NLM number 1320 (its time: the first part's read) are given the plain file's
    source on the first write after the upgrade: reading the first part again by hand is
    a replay of its own rows, and never brings back what the second part revised or
    deleted (left with the number, the plain first part would outrank them)."""
    from ingest import store as store_module
    from ingest.checkpoints import files_first_read
    from ingest.files import ingest_files
    from ingest.records import nlm_sequence
    from litpulse.app.demo.pubmed_xml import article_xml, pubmed_set
    from litpulse.core.schema import checkpoints, source_times

    day = dt.date(2026, 3, 2)
    part1 = tmp_path / "pubmed26n1320_part1.xml"
    part1.write_bytes(pubmed_set([article_xml(30, edat=day, title="Thirty"),
                                  article_xml(31, edat=day, title="Thirty-one"),
                                  article_xml(32, edat=day)]))  # fmt: skip
    part2 = tmp_path / "pubmed26n1320_part2.xml"
    part2.write_bytes(pubmed_set([article_xml(40, edat=day), article_xml(41, edat=day),
                                  article_xml(42, edat=day),
                                  article_xml(30, edat=day, title="Thirty, corrected")],
                                 deletions=[31]))  # fmt: skip
    ingest_files(settings, [part1, part2])  # part 2's items come after part 1's: all apply
    engine = db.connect(settings)
    with engine.connect() as conn:
        read = files_first_read(conn, [str(part1.resolve()), str(part2.resolve())])
    first = read[str(part1.resolve())].timestamp()
    # the store as an older litpulse left it: both parts file 1320, first read with part 1
    number = nlm_sequence(26, 1320)
    with engine.begin() as conn:
        conn.execute(articles.update().values(source_sequence=number, source_time=first))
        conn.execute(source_times.insert().values(sequence=number, as_of=first,
                                                  location=str(part1.resolve())))  # fmt: skip
        conn.execute(checkpoints.delete().where(checkpoints.c.key == "plain_names"))
    store_module._PLAIN_NAMES_CURRENT.clear()

    counts = ingest_files(settings, [part1])  # the first part again, by hand
    assert (counts.inserted, counts.updated, counts.deleted) == (0, 0, 0)
    store = Store(engine)
    assert store.get_article(30)["title"] == "Thirty, corrected"  # not part 1's again
    assert store.get_article(31)["is_deleted"] is True
    with engine.connect() as conn:
        rows = dict(conn.execute(select(articles.c.pmid, articles.c.source_sequence)).all())
        times = {loc: t for loc, t in conn.execute(
            select(articles.c.source_location, articles.c.source_time).distinct())}
    assert set(rows.values()) == {0}
    assert times == {str(p): read[str(p)].timestamp() for p in (part1.resolve(), part2.resolve())}
    assert store.upgrade_plain_names() == 0  # once


def test_a_bilingual_article_stored_before_lang_terms_gains_them_on_the_next_write(
    settings: Settings,
) -> None:
    """Articles stored before a bilingual article's other languages became ``lang`` terms
    gain those terms on the first write after the upgrade (once), so a language filter
    finds them without waiting for a revision."""
    from ingest import store as store_module
    from litpulse.core.schema import checkpoints

    engine = db.connect(settings)
    src = SourceRef("file", "old.xml")
    Store(engine).apply([
        Record(pmid=1, version=1, title="Bilingual", languages=("eng", "spa", "fre"),
               source=src),
        Record(pmid=2, version=1, title="One language", languages=("eng",), source=src),
    ])  # fmt: skip
    # the store as an older litpulse left it: no lang terms, no checkpoint
    with engine.begin() as conn:
        conn.execute(article_terms.delete().where(article_terms.c.kind == "lang"))
        conn.execute(checkpoints.delete().where(checkpoints.c.key == "lang_terms"))
    store_module._LANG_TERMS_CURRENT.clear()

    Store(engine).apply([Record(pmid=3, version=1, title="Tonight's", source=src)])

    def lang_terms() -> set[tuple[int, str]]:
        with engine.connect() as conn:
            q = select(article_terms.c.pmid, article_terms.c.term).where(
                article_terms.c.kind == "lang"
            )
            return {(p, t) for p, t in conn.execute(q)}

    assert lang_terms() == {(1, "spa"), (1, "fre")}
    assert Store(engine).upgrade_lang_terms() == 0  # once


def _term_forms(engine: Engine) -> dict[tuple[str, str], str]:
    from litpulse.core.schema import term_forms

    with engine.connect() as conn:
        rows = conn.execute(select(term_forms.c.kind, term_forms.c.term, term_forms.c.folded))
        return {(k, t): f for k, t, f in rows}


def test_term_spellings_are_recorded_folded_with_the_terms(engine: Engine) -> None:
    """Each MeSH descriptor and publication type an article carries is in ``term_forms``
    with its folded form (what the MeSH filter compares); ``lang`` terms are not."""
    store = Store(engine)
    mesh = (MeshHeading("Sjögren's Syndrome", "D012859"), MeshHeading("alpha-Synuclein", "D0"))
    store.apply([make_record(1, mesh=mesh, ptypes=("Journal Article", "Review"))])
    store.apply([make_record(2, mesh=mesh[:1])])  # known: nothing written again
    assert _term_forms(engine) == {
        ("mesh", "Sjögren's Syndrome"): "sjogrens syndrome",
        ("mesh", "alpha-Synuclein"): "alpha synuclein",
        ("ptype", "Journal Article"): "journal article",
        ("ptype", "Review"): "review",
    }


def test_a_rolled_back_batch_leaves_its_term_spellings_unknown(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer remembers only spellings whose batch committed: a batch that fails after
    writing them (rolled back) and is applied again by the same store writes them again."""
    from ingest import store as store_module

    store = Store(engine)
    run = store.start_run("file", target="a.xml")
    real = store_module.add_run_counts

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed after the batch's writes")

    monkeypatch.setattr(store_module, "add_run_counts", crash)
    record = make_record(1, mesh=(MeshHeading("Interleukin-6", "D015850"),))
    with pytest.raises(RuntimeError):
        store.apply([record], run_id=run)
    assert _term_forms(engine) == {}
    monkeypatch.setattr(store_module, "add_run_counts", real)
    store.apply([record], run_id=run)
    assert ("mesh", "Interleukin-6") in _term_forms(engine)


def test_term_spellings_stored_before_term_forms_are_recorded_when_the_store_is_opened(
    settings: Settings,
) -> None:
    """Articles stored by a release without ``term_forms`` have their spellings recorded
    when a process of this release first opens the store (a reader too, once): the folded
    MeSH filter finds them before any write."""
    from litpulse.core.schema import checkpoints, term_forms
    from ranking.search import SearchFilters

    engine = db.connect(settings)
    Store(engine).apply([make_record(1, mesh=(MeshHeading("Sjogren's Syndrome", "D0"),))])
    with engine.begin() as conn:  # the store as an older litpulse left it (no table)
        term_forms.drop(conn)
        conn.execute(checkpoints.delete().where(checkpoints.c.key == "term_forms"))

    def found(term: str) -> list[int]:
        with db.connect(settings).connect() as conn:
            q = select(articles.c.pmid).where(*SearchFilters(mesh=(term,)).clauses())
            return list(conn.execute(q).scalars())

    db.dispose_engines()  # a process of this release opens it: the table is made and filled
    assert found("sjogren's syndrome") == [1]
    assert found("Sjögren’s Syndrome") == [1]
    assert _term_forms(db.connect(settings)) == {
        ("mesh", "Sjogren's Syndrome"): "sjogrens syndrome",
        ("ptype", "Journal Article"): "journal article",
    }
    assert db.fill_term_forms(db.connect(settings)) == 0  # once


def test_rows_stored_before_period_ends_gain_them_on_the_next_write(settings: Settings) -> None:
    """Rows stored before ``pub_period_end`` get it from their date text on the first write
    after the upgrade, so a date filter meets the later months of their period."""
    from ingest import store as store_module
    from ingest.records import PartialDate
    from litpulse.core.schema import checkpoints

    engine = db.connect(settings)
    periods = {1: "2019 Nov-Dec", 2: "2000 Spring", 3: "2019 Nov"}
    Store(engine).apply([
        dataclasses.replace(make_record(p), pub_date=PartialDate(int(t[:4]), 11 if "Nov" in t
                            else 3, None, t)) for p, t in periods.items()
    ])  # fmt: skip
    with engine.begin() as conn:  # the store as an older litpulse left it
        conn.execute(articles.update().values(pub_period_end=None))
        key = store_module.PERIOD_END_CHECKPOINT[1]
        conn.execute(checkpoints.delete().where(checkpoints.c.key == key))

    Store(engine).apply([make_record(4)])
    with engine.connect() as conn:
        ends = {p: e for p, e in conn.execute(select(articles.c.pmid, articles.c.pub_period_end))}
    assert ends == {1: dt.date(2019, 12, 31), 2: dt.date(2000, 5, 31), 3: None, 4: None}
    assert Store(engine).catch_up_period_ends() == 0  # caught up


def test_periods_an_earlier_release_stored_wrong_are_read_again_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows an earlier release stored with a wrong period (an issue of a numeric month
    ending on 31 December, ``2019 Dec-Jan`` and ``2001 Fall-Winter`` without an end,
    EFetch's ``<Season>Sep-Dec</Season>`` without its month, dated 1 January) are read
    again once, on the first write after the upgrade, a page of PMIDs at a time: a date
    filter and recency then read them as this release stores them; right rows stay."""
    from ingest import store as store_module
    from ingest.dates import pub_date_of
    from litpulse.core.schema import checkpoints

    engine = db.connect(settings)
    dates = {  # pmid -> the PubDate elements' texts (year, month, day, season, medline)
        1: ("2019", "03", "05", None, None),
        2: (None, None, None, None, "2019 Dec-Jan"),
        3: (None, None, None, None, "2001 Fall-Winter"),
        4: ("1994", None, None, "Sep-Dec", None),
        5: (None, None, None, None, "2019 Nov-Dec"),
        6: ("2019", "Mar", "05", None, None),
        7: ("1994", None, None, "Sep-Dec", None),  # with an electronic date
    }
    Store(engine).apply([
        dataclasses.replace(make_record(p), pub_date=pub_date_of(*texts), entrez_date=None,
                            article_date=dt.date(1995, 2, 1) if p == 7 else None)
        for p, texts in dates.items()
    ])  # fmt: skip
    cols = (articles.c.pmid, articles.c.pub_month, articles.c.pub_day,
            articles.c.pub_period_end, articles.c.best_date)  # fmt: skip

    def stored() -> dict[int, tuple[Any, ...]]:
        with engine.connect() as conn:
            return {r[0]: tuple(r[1:]) for r in conn.execute(select(*cols))}

    right = stored()
    assert right == {
        1: (3, 5, None, dt.date(2019, 3, 5)),
        2: (12, None, dt.date(2020, 1, 31), dt.date(2019, 12, 1)),
        3: (9, None, dt.date(2002, 2, 28), dt.date(2001, 9, 1)),
        4: (9, None, dt.date(1994, 12, 31), dt.date(1994, 9, 1)),
        5: (11, None, dt.date(2019, 12, 31), dt.date(2019, 11, 1)),
        6: (3, 5, None, dt.date(2019, 3, 5)),
        7: (9, None, dt.date(1994, 12, 31), dt.date(1995, 2, 1)),
    }
    wrong = {  # as the earlier release stored them
        1: (3, 5, dt.date(2019, 12, 31), dt.date(2019, 3, 5)),
        2: (12, None, None, dt.date(2019, 12, 1)),
        3: (9, None, None, dt.date(2001, 9, 1)),
        4: (None, None, None, dt.date(1994, 1, 1)),
        7: (None, None, None, dt.date(1995, 2, 1)),
    }
    with engine.begin() as conn:
        for pmid, (month, day, end, best) in wrong.items():
            conn.execute(update(articles).where(articles.c.pmid == pmid).values(
                pub_month=month, pub_day=day, pub_period_end=end, best_date=best))  # fmt: skip
        newest = conn.execute(select(func.max(articles.c.updated_at))).scalar()
        # the catch-up of rows written since its mark has nothing to read: the upgrade alone
        db.set_catch_up_mark(conn, store_module.PERIOD_END_CHECKPOINT, newest, 0, exact=True)
        conn.execute(checkpoints.delete().where(checkpoints.c.key == "period_dates"))
        version = db.store_version(conn)
    store_module._PERIOD_DATES_CURRENT.clear()
    assert stored() == right | wrong
    monkeypatch.setattr(store_module, "PERIOD_PAGE", 2)  # four pages

    Store(engine).apply([])  # this release's first write
    assert stored() == right
    with engine.connect() as conn:
        assert db.store_version(conn) != version  # a search ranks by what changed
    assert Store(engine).get_checkpoint(*store_module.PERIOD_DATES_CHECKPOINT) is not None
    store_module._PERIOD_DATES_CURRENT.clear()
    assert Store(engine).upgrade_period_ends() == 0  # once per store


def test_a_first_write_to_an_empty_store_does_not_read_its_rows_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first ingest into a new store (a bootstrap's first file, every benchmark) stores
    its rows' spellings and period ends itself; at its end only the rows are counted, not
    read again, and the marks still end exactly at its newest row."""
    import ingest.store as store_module
    from ingest.runs import store_writer

    passes: list[str] = []
    fill = store_module.fill_term_forms
    periods = Store.catch_up_period_ends

    def counted_fill(e: Engine) -> int:
        passes.append("term_forms")
        return fill(e)

    def counted_periods(self: Store) -> int:
        passes.append("period_ends")
        return periods(self)

    monkeypatch.setattr(store_module, "fill_term_forms", counted_fill)
    monkeypatch.setattr(Store, "catch_up_period_ends", counted_periods)
    with store_writer(engine):
        Store(engine).apply([make_record(p, mesh=(MeshHeading("Humans", "D006801"),))
                             for p in range(1, 6)], batch_size=2)  # fmt: skip
    assert passes == ["period_ends", "term_forms"]  # the opening check only
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(articles.c.updated_at))).scalar()
    assert db.catch_up_mark(engine, db.TERM_FORMS_CHECKPOINT) == (True, newest)
    assert db.catch_up_mark(engine, store_module.PERIOD_END_CHECKPOINT) == (True, newest)


def test_a_writer_marks_the_catch_ups_exactly_where_its_rows_end(engine: Engine) -> None:
    """A writer under the store-writer lease records its rows' spellings and period ends
    itself, so it moves the catch-up marks exactly to its newest row: the next catch-up
    reads only rows written after it (a bootstrap of many files does not re-read the
    files before), while rows another release's writer stores later are still caught up."""
    from ingest import store as store_module
    from ingest.runs import store_writer
    from litpulse.core.schema import checkpoints, term_forms

    with store_writer(engine):
        Store(engine).apply([make_record(1, mesh=(MeshHeading("Humans", "D006801"),))])
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(articles.c.updated_at))).scalar()
        keys = ["term_forms", store_module.PERIOD_END_CHECKPOINT[1]]
        marks = {k: v for k, v in conn.execute(select(checkpoints.c.key, checkpoints.c.value)
                 .where(checkpoints.c.key.in_(keys)))}
    for value in marks.values():
        assert value["exact"] is True and value["through"] == newest.isoformat()
    assert db.catch_up_mark(engine, db.TERM_FORMS_CHECKPOINT) == (True, newest)
    # another release's writer (no lease, no spellings) stores an article later
    Store(engine).apply([make_record(2, mesh=(MeshHeading("Sjögren's Syndrome", "D0"),))])
    with engine.begin() as conn:
        conn.execute(term_forms.delete().where(term_forms.c.term == "Sjögren's Syndrome"))
    assert db.fill_term_forms(engine) == 1  # only what was written after the mark
    assert ("mesh", "Sjögren's Syndrome") in _term_forms(engine)


def test_an_article_is_found_by_its_doi_in_any_case_and_form(engine: Engine) -> None:
    store = Store(engine)
    erratum = dataclasses.replace(make_record(31), doi="10.1000/AbC.30")  # one DOI, two PMIDs
    thirty = dataclasses.replace(make_record(30, title="Thirty"), doi="10.1000/ABC.30")
    store.apply([thirty, erratum, make_record(32),
                 dataclasses.replace(make_record(33), doi="10.1000/gone"), Deletion(33, src(1))])
    for typed in ("10.1000/abc.30", "doi:10.1000/ABC.30", "https://doi.org/10.1000/Abc.30"):
        assert store.pmids_by_doi(typed) == [30, 31]
        art = store.article_by_doi(typed)
        assert (art["pmid"], art["title"], art["same_doi"]) == (30, "Thirty", [31])
    assert store.pmids_by_doi("10.1000/32") == [32]
    assert store.pmids_by_doi("10.1000/gone") == []  # withdrawn: not shown
    with pytest.raises(NotFoundError, match="10.1000/nothing"):
        store.article_by_doi("10.1000/Nothing")
    with pytest.raises(ConfigError, match="not a DOI"):
        store.pmids_by_doi("malaria")


# ------------------------------------ the run that wrote a row, and records met again


def _run_ids(engine: Engine) -> dict[int, int | None]:
    with engine.connect() as conn:
        return dict(conn.execute(select(articles.c.pmid, articles.c.run_id)).all())


def _judge(engine: Engine, run_id: int) -> None:
    """What a data-quality check of the run's window does to it (ingest.quality)."""
    from litpulse.core.schema import ingest_runs

    with engine.begin() as conn:
        conn.execute(update(ingest_runs).where(ingest_runs.c.id == run_id)
                     .values(judged_at=db.utcnow()))  # fmt: skip


def test_rows_keep_the_run_that_wrote_them_and_a_touch_does_not_move_it(engine: Engine) -> None:
    store = Store(engine)
    first = store.start_run("files")
    store.apply([make_record(1), make_record(2), make_record(3), Deletion(9, src())],
                run_id=first)  # fmt: skip
    assert _run_ids(engine) == {1: first, 2: first, 3: first, 9: first}  # a tombstone too
    _judge(engine, first)
    second = store.start_run("files")
    counts = store.apply(
        [make_record(1, source=src(1)),  # the same content from a later source: a touch
         make_record(2, version=2, source=src(1)),  # a newer version: rewritten
         Deletion(3, src(1))],  # a deletion: the tombstone is this run's
        run_id=second,
    )  # fmt: skip
    assert (counts.unchanged, counts.reseen, counts.updated, counts.deleted) == (1, 1, 1, 1)
    assert row(engine, 1)["source_sequence"] > 0  # the touch moved the source ...
    assert _run_ids(engine) == {1: first, 2: second, 3: second, 9: first}  # ... not the run


def test_records_met_again_are_reseen_when_a_check_judged_their_run(engine: Engine) -> None:
    """The overlap day: rows a judged run wrote, met again unchanged (records and a
    deletion), are counted ``reseen`` and written nothing; rows of a run no check judged
    are not, and this run takes them over (its own check will judge them)."""
    from litpulse.core.schema import ingest_runs

    store = Store(engine)
    judged = store.start_run("eutils")
    store.apply([make_record(1), make_record(2), Deletion(3, src())], run_id=judged)
    _judge(engine, judged)
    killed = store.start_run("eutils")  # killed before its check: never judged
    store.apply([make_record(4), make_record(5)], run_id=killed)
    now = store.start_run("eutils")
    items = [make_record(p) for p in (1, 2, 4, 5)] + [Deletion(3, src()), make_record(6)]
    counts = store.apply(items, run_id=now, batch_size=2)
    assert (counts.inserted, counts.unchanged, counts.reseen) == (1, 5, 3)
    assert _run_ids(engine) == {1: judged, 2: judged, 3: judged, 4: now, 5: now, 6: now}
    with engine.connect() as conn:
        assert conn.execute(select(ingest_runs.c.reseen)
                            .where(ingest_runs.c.id == now)).scalar() == 3  # fmt: skip
    # met again by the run that took them over: its own, not reseen, nothing taken
    again = store.apply([make_record(4), make_record(5)], run_id=now)
    assert (again.unchanged, again.reseen) == (2, 0)
    # a later run meets them before this run's check: taken over again
    later = store.start_run("eutils")
    assert store.apply([make_record(4)], run_id=later).reseen == 0
    assert _run_ids(engine)[4] == later


def test_a_row_older_than_the_run_column_counts_as_judged(settings: Settings) -> None:
    """A store made before ``articles.run_id`` and ``ingest_runs.judged_at``/``reseen``
    gains them (NULL on its rows, 0 on its runs); its rows, met again, were judged by the
    checks of their time."""
    from sqlalchemy import text

    from litpulse.core.schema import ingest_runs

    engine = db.connect(settings)
    store = Store(engine)
    old = store.start_run("eutils")
    store.apply([make_record(1), make_record(2)], run_id=old)
    store.finish_run(old, IngestCounts(inserted=2))
    with engine.begin() as conn:  # as the store was before the columns existed
        for table, column in (("articles", "run_id"), ("ingest_runs", "judged_at"),
                              ("ingest_runs", "reseen")):  # fmt: skip
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    db.dispose_engines()
    engine = db.connect(settings)  # reconnecting upgrades the schema
    assert db.add_missing_columns(engine) == []
    assert _run_ids(engine) == {1: None, 2: None}
    with engine.connect() as conn:
        r = ingest_runs.c
        assert conn.execute(select(r.reseen, r.judged_at).where(r.id == old)).one() == (0, None)
    store = Store(engine)
    now = store.start_run("eutils")
    counts = store.apply([make_record(1), make_record(2), make_record(3)], run_id=now)
    assert (counts.inserted, counts.unchanged, counts.reseen) == (1, 2, 2)
    assert _run_ids(engine) == {1: None, 2: None, 3: now}  # nothing taken over
    store.finish_run(now, counts)
    assert store.get_run(now)["reseen"] == 2


def test_a_batch_without_stored_rows_asks_no_run_judged(engine: Engine) -> None:
    """The bulk ingest's common case (new PMIDs, or rows this run wrote) reads nothing
    more: the judged runs are looked up only for rows other runs wrote."""
    store = Store(engine)
    run = store.start_run("files")
    store.upgrade_run_ids()  # the store's one upgrade read of the runs, first
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "judged_at IS NOT NULL" in statement:  # the judged runs of rows read
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        store.apply([make_record(p) for p in range(1, 6)], run_id=run, batch_size=2)
        store.apply([make_record(p) for p in range(1, 6)], run_id=run, batch_size=2)
        assert seen == []
        other = store.start_run("files")
        store.apply([make_record(1), make_record(2)], run_id=other)
        assert len(seen) == 1  # one batch, one query
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_run_no_window_check_judges_takes_no_row_over(engine: Engine) -> None:
    """A file read again (a files or bootstrap run, which no window's check judges) writes
    nothing: the rows stay the first run's, for a window run to take over and judge."""
    store = Store(engine)
    first = store.start_run("files")
    store.apply([make_record(p) for p in range(1, 4)], run_id=first)
    again = store.start_run("files")
    counts = store.apply([make_record(p) for p in range(1, 4)], run_id=again)
    assert (counts.unchanged, counts.reseen) == (3, 0)
    assert _run_ids(engine) == {1: first, 2: first, 3: first}
    window = store.start_run("eutils")
    assert store.apply([make_record(1)], run_id=window).reseen == 0
    assert _run_ids(engine) == {1: window, 2: first, 3: first}
