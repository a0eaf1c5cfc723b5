"""ingest_files: order, runs, idempotence, failures, and a generated corpus end to end."""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from ingest.files import file_sequence, ingest_files, order_files
from ingest.records import Record
from ingest.store import IngestCounts, Store
from litpulse.app.demo import pubmed_xml
from litpulse.app.demo.generate import generate_corpus
from litpulse.core import db
from litpulse.core.errors import NotFoundError, ParseError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings

BROKEN = "<PubmedArticle><MedlineCitation><Article><ArticleTitle>No PMID</ArticleTitle>" \
    "</Article></MedlineCitation></PubmedArticle>\n"  # fmt: skip


def article_xml(pmid: int, *, version: int = 1, title: str = "", refs: tuple[int, ...] = ()) -> str:
    """A journal article of March 2024 by J Smith, MeSH Humans (major), citing ``refs``."""
    return pubmed_xml.article_xml(
        pmid, edat=dt.date(2024, 3, 1), mdat=dt.date(2024, 5, 2), version=version,
        title=title or f"Title {pmid}", refs=refs, mesh=[("Humans", "D006801", True)],
        author=("Smith", "Jane", "J"),
    ).decode() + "\n"  # fmt: skip


def write_xml(path: Path, *parts: str, gz: bool = False) -> Path:
    body = pubmed_xml.document(parts, doctype=False)
    if gz:
        path.write_bytes(gzip.compress(body.encode()))
    else:
        path.write_text(body, encoding="utf-8")
    return path


def deletion_xml(*pmids: int) -> str:
    return pubmed_xml.deletion_xml(pmids)


def test_order_files_sorts_nlm_files_in_their_slots() -> None:
    assert file_sequence("/x/pubmed26n1280.xml.gz") == (26, 1280)
    assert file_sequence("local.xml") is None
    got = order_files(["b.xml", "pubmed26n0003.xml.gz", "a.xml", "pubmed26n0001.xml.gz",
                       "pubmed25n1200.xml.gz"])  # fmt: skip
    assert [p.name for p in got] == [
        "b.xml", "pubmed25n1200.xml.gz", "a.xml", "pubmed26n0001.xml.gz", "pubmed26n0003.xml.gz"
    ]  # fmt: skip


def test_ingest_files_counts_runs_and_is_idempotent(settings: Settings, tmp_path: Path) -> None:
    one = write_xml(
        tmp_path / "pubmed26n0001.xml.gz",
        article_xml(1, refs=(2,)), article_xml(2), article_xml(3), BROKEN,
        gz=True,
    )  # fmt: skip
    two = write_xml(
        tmp_path / "pubmed26n0002.xml",
        article_xml(1, version=2, title="Revised"), deletion_xml(3, 77),
    )  # fmt: skip
    # given out of order: applied by number
    counts = ingest_files(settings, [two, one])
    assert counts == IngestCounts(inserted=3, updated=1, deleted=1, unchanged=1, quarantined=1)
    store = Store(db.connect(settings))
    assert store.get_article(1)["title"] == "Revised"
    assert store.get_article(1)["version"] == 2
    assert store.get_article(3)["is_deleted"] is True
    assert store.get_article(2)["cited_by_in_corpus"] == 0  # the revision dropped the reference
    run = store.status()["last_runs"][0]
    assert run["source"] == "files" and run["status"] == "succeeded"
    assert run["inserted"] == 3 and run["quarantined"] == 1
    assert run["target"].split() == [str(one), str(two)]
    assert [f["path"] for f in run["details"]["files"]] == [str(one), str(two)]

    again = ingest_files(settings, [one, two])
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    assert again.quarantined == 1
    assert len(store.quarantined(10)) == 1
    assert len(store.runs()) == 2


def test_missing_file_raises_before_a_run(sqlite_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nope.xml"):
        ingest_files(sqlite_settings, [tmp_path / "nope.xml"])
    assert Store(db.connect(sqlite_settings)).runs() == []


def test_failure_marks_run_failed(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write_xml(tmp_path / "a.xml", article_xml(5))

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "apply", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest_files(sqlite_settings, [good])
    run = Store(db.connect(sqlite_settings)).runs()[0]
    assert run["status"] == "failed" and "disk on fire" in run["error"]
    assert run["finished_at"] is not None


def test_progress_bar_does_not_change_results(
    sqlite_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_xml(tmp_path / "a.xml", article_xml(8), article_xml(9))
    assert ingest_files(sqlite_settings, [path], progress=True).inserted == 2
    assert "a.xml" in capsys.readouterr().err


def test_generated_corpus_ends_in_the_manifest_state(settings: Settings, tmp_path: Path) -> None:
    manifest = generate_corpus(
        tmp_path / "corpus", n_records=400, n_files=3, seed=3, revise_fraction=0.1,
        delete_fraction=0.05, malformed_fraction=0.02,
    )  # fmt: skip
    counts = ingest_files(settings, list(reversed(manifest.files)))
    assert counts.quarantined == manifest.quarantined
    assert counts.deleted == len(manifest.deleted_pmids)
    engine = db.connect(settings)
    with engine.connect() as conn:
        rows = conn.execute(
            select(articles.c.pmid, articles.c.version, articles.c.title, articles.c.is_deleted,
                   articles.c.cited_by_in_corpus, articles.c.is_retracted, articles.c.is_book)
        ).all()  # fmt: skip
    live = {r.pmid: r for r in rows if not r.is_deleted}
    assert set(live) == set(manifest.live_pmids)
    assert {r.pmid for r in rows if r.is_deleted} == set(manifest.deleted_pmids)
    assert {p: r.version for p, r in live.items()} == dict(manifest.versions)
    for pmid, title in manifest.revised_titles.items():
        assert live[pmid].title == title
    assert {p: r.cited_by_in_corpus for p, r in live.items() if r.cited_by_in_corpus} == dict(
        manifest.cited_by
    )
    assert {p for p, r in live.items() if r.is_book} == set(manifest.books) & set(live)
    assert {p for p, r in live.items() if r.is_retracted} == set(manifest.retracted) & set(live)

    again = ingest_files(settings, list(manifest.files))
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    assert again.unchanged + again.quarantined == manifest.n_items


def test_failed_run_records_committed_batches(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingest.parse
    from tests.ingest.test_store import make_record

    path = write_xml(tmp_path / "a.xml", article_xml(1))

    def broken_stream(*_a: object, **_k: object) -> Iterator[Record]:
        yield from (make_record(p) for p in (1, 2, 3))
        raise ParseError("truncated gzip stream")

    monkeypatch.setattr(ingest.parse, "iter_items", broken_stream)
    with pytest.raises(ParseError):
        ingest_files(sqlite_settings, [path], batch_size=2)
    store = Store(db.connect(sqlite_settings))
    run = store.runs()[0]
    assert run["status"] == "failed" and "truncated" in run["error"]
    assert run["inserted"] == 2  # the first batch was committed, the second was not
    assert store.existing_pmids([1, 2, 3]) == {1, 2}


def test_a_changed_file_at_the_same_path_is_a_newer_source(
    settings: Settings, tmp_path: Path
) -> None:
    """A corrected export written over the old one: its corrections and deletions apply."""
    day = dt.date(2024, 1, 1)
    path = tmp_path / "export.xml"
    path.write_bytes(pubmed_xml.pubmed_set([
        pubmed_xml.article_xml(1, edat=day, title="Old title"),
        pubmed_xml.article_xml(2, edat=day),
    ]))  # fmt: skip
    ingest_files(settings, [str(path)])
    assert ingest_files(settings, [str(path)]) == IngestCounts(unchanged=2)  # a replay

    path.write_bytes(pubmed_xml.pubmed_set(
        [pubmed_xml.article_xml(1, edat=day, title="Corrected title")], deletions=[2]
    ))  # fmt: skip
    counts = ingest_files(settings, [str(path)])

    assert (counts.updated, counts.deleted) == (1, 1)
    store = Store(db.connect(settings))
    assert store.get_article(1)["title"] == "Corrected title"
    assert store.get_article(2)["is_deleted"] is True


def test_one_file_split_over_two_workers_stores_what_one_process_stores(
    settings: Settings, tmp_path: Path
) -> None:
    """Striped over 2 parse workers, a file whose order matters in every batch (a PMID
    revised, deleted and back again batches apart; malformed records that make batches
    be parsed again record by record) ends in the state of parsing it in the writer."""
    from ingest.parse import BATCH_BYTES
    from tests.ingest.hostile import article, corpus, deletion, document
    from tests.ingest.test_crash_resume import differences, reset, snapshot

    n = 2000
    items = corpus(n, {i: article(i, title="<sup>x") for i in range(11, n, 97)})
    for at in range(60, n, 250):  # earlier records revised, deleted, back again
        pmid = at - 50
        items.insert(at, article(pmid, title=f"Revised {pmid}.", refs=[str(pmid + 1)]))
        items.insert(at + 90, deletion(str(pmid + 2), str(pmid)))
        items.insert(at + 180, article(pmid + 2, title=f"Back {pmid + 2}."))
    data = document(items)
    assert len(data) > 6 * BATCH_BYTES
    path = tmp_path / "pubmed26n0007.xml.gz"
    path.write_bytes(gzip.compress(data))
    engine = db.connect(settings)
    clean = ingest_files(settings, [path], workers=0)
    want = snapshot(engine)
    assert want["quarantine"] and any(a["is_deleted"] for a in want["articles"].values())
    reset(engine)
    assert ingest_files(settings, [path], workers=2) == clean
    got = snapshot(engine)
    assert not differences(got, want)
    assert got == want
