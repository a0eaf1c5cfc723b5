"""ingest_files: order, runs, idempotence, failures, and a generated corpus end to end."""

from __future__ import annotations

import datetime as dt
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ingest.files import ingest_files, order_files
from ingest.records import Record, nlm_file_order
from ingest.store import IngestCounts, Store
from litpulse.app.demo import pubmed_xml
from litpulse.app.demo.generate import generate_corpus
from litpulse.core import db
from litpulse.core.errors import ConfigError, FileChangedError, ParseError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.ingest.test_crash_resume import differences, reset, snapshot

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
    assert nlm_file_order("/x/pubmed26n1280.xml.gz") == (26, 1280)
    assert nlm_file_order("local.xml") is None
    assert nlm_file_order("pubmed26n1280.xml") == (26, 1280)  # unpacked
    # only the whole name: a split part, an excerpt or a copy is a plain file
    for name in ("pubmed26n1320_part2.xml", "pubmed26n1280_excerpt.xml", "pubmed26n1280.xml.bak",
                 "xpubmed26n1280.xml.gz", "pubmed26n1280.xml.gz.part"):
        assert nlm_file_order(name) is None, name
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
    with pytest.raises(ConfigError, match="no such file: .*nope.xml"):
        ingest_files(sqlite_settings, [tmp_path / "nope.xml"])
    with pytest.raises(ConfigError, match="a directory, not a file"):
        ingest_files(sqlite_settings, [tmp_path])
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
    assert ingest_files(settings, [str(path)]) == IngestCounts(unchanged=2, reseen=2)  # replay

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


@pytest.mark.parametrize("workers", [0, 2])
def test_every_row_a_files_run_writes_keeps_its_run(
    settings: Settings, tmp_path: Path, workers: int
) -> None:
    """Parsed here or by workers, written by COPY or executemany: every row of the file
    (records, a revision, tombstones) carries the run that wrote it (``articles.run_id``)."""
    from tests.ingest.hostile import article, corpus, deletion, document

    items = corpus(300, {})
    items.insert(100, article(50, title="Revised 50."))
    items.insert(200, deletion("60", "99999"))  # a live article and an unknown PMID
    path = tmp_path / "pubmed26n0008.xml.gz"
    path.write_bytes(gzip.compress(document(items)))
    engine = db.connect(settings)
    counts = ingest_files(settings, [path], workers=workers)
    assert counts.deleted == 1 and counts.inserted >= 300
    run = Store(engine).runs(1)[0]
    with engine.connect() as conn:
        owners = dict(conn.execute(select(articles.c.pmid, articles.c.run_id)).all())
    assert {50, 60, 99999} <= owners.keys()
    assert set(owners.values()) == {run["id"]}
    assert run["reseen"] == 0


# ------------------------------------------------- a file that changes while it is read


def _version(word: str, n: int = 3000) -> bytes:
    """``n`` articles titled ``"<word> title <pmid>"`` (``Old``/``New``: the same size)."""
    day = dt.date(2024, 1, 1)
    return pubmed_xml.pubmed_set(
        [pubmed_xml.article_xml(p, edat=day, title=f"{word} title {p}") for p in range(1, n + 1)]
    )


def _change(path: Path, how: str) -> None:
    """Change ``path`` as an export job would: in place, by appending, cutting, or renaming
    a new version over it."""
    if how == "rewrite":  # the same inode, truncated and written again (same size)
        path.write_bytes(_version("New"))
    elif how == "append":
        with path.open("ab") as fh:
            fh.write(pubmed_xml.pubmed_set([pubmed_xml.article_xml(
                9001, edat=dt.date(2024, 1, 1), title="Appended 9001")]))  # fmt: skip
    elif how == "truncate":
        os.truncate(path, path.stat().st_size * 9 // 10)  # past what was read ahead
    else:
        assert how == "replace"
        tmp = path.with_name("export.tmp")
        tmp.write_bytes(_version("New"))
        os.replace(tmp, path)


def _change_at_item(monkeypatch: pytest.MonkeyPatch, path: Path, how: str, at: int) -> None:
    """Change ``path`` once the writer has taken ``at`` items of it (the parse workers are
    ahead of it by a few chunks at most: they have not read the file to its end)."""
    apply = Store.apply

    def watched(self: Store, items: Iterator[Any], **kw: Any) -> IngestCounts:
        def taken() -> Iterator[Any]:
            for n, item in enumerate(items):
                if n == at:
                    _change(path, how)
                yield item

        return apply(self, taken(), **kw)

    monkeypatch.setattr(Store, "apply", watched)


def _titles(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(articles.c.pmid, articles.c.title)).all())  # type: ignore[arg-type]


def _clean_state(settings: Settings, path: Path, workers: int) -> dict[str, Any]:
    """The store after one uninterrupted run over ``path`` as it is now (then emptied)."""
    engine = db.connect(settings)
    reset(engine)
    ingest_files(settings, [path], workers=workers, batch_size=50)
    want = snapshot(engine)
    reset(engine)
    return want


@pytest.mark.parametrize(
    ("how", "workers"),
    [("rewrite", 0), ("rewrite", 1), ("rewrite", 2), ("append", 1), ("truncate", 2)],
    ids=["rewritten-here", "rewritten-one worker", "rewritten-striped over two",
         "appended-one worker", "cut-striped over two"],
)  # fmt: skip
def test_a_file_changed_while_it_is_read_is_refused_and_a_rerun_ends_clean(
    sqlite_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    workers: int,
) -> None:
    """Rewritten, appended to or cut while the workers read it (one file alone is split
    over two workers): the run fails with a retryable FileChangedError, every stored row
    is the recorded version's (a prefix of it), and the next run reads the file as its
    new version and ends where a clean run over that version ends."""
    s, engine = sqlite_settings, db.connect(sqlite_settings)
    path = tmp_path / "export.xml"
    path.write_bytes(_version("Old"))
    with monkeypatch.context() as m:
        _change_at_item(m, path, how, at=200)
        with pytest.raises(FileChangedError, match="export.xml") as info:
            ingest_files(s, [path], workers=workers, batch_size=50)
    assert info.value.retryable
    stored = _titles(engine)
    assert len(stored) >= 200  # the batches read before the change were stored...
    assert stored == {p: f"Old title {p}" for p in range(1, len(stored) + 1)}  # ...and only they
    run = Store(engine).runs()[0]
    assert run["status"] == "failed" and "FileChangedError" in run["error"]
    assert run["inserted"] == len(stored)

    ingest_files(s, [path], workers=workers, batch_size=50)  # the file as it is now
    got = snapshot(engine)
    want = _clean_state(s, path, workers)
    assert not differences(got, want)
    assert got == want


@pytest.mark.parametrize("workers", [0, 1, 2], ids=["here", "one worker", "striped over two"])
def test_a_file_replaced_after_its_identity_was_recorded_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Replaced (renamed over) between the moment the writer records its identity and the
    moment a worker opens it: the recorded version is not what would be read, so nothing
    of it is stored; the next run reads the new version as a newer source."""
    engine = db.connect(settings)
    path = tmp_path / "export.xml"
    path.write_bytes(_version("Old"))
    first_read_at = Store.first_read_at

    def then_replaced(self: Store, *args: Any, **kw: Any) -> dt.datetime:
        fetched = first_read_at(self, *args, **kw)
        _change(path, "replace")
        return fetched

    with monkeypatch.context() as m:
        m.setattr(Store, "first_read_at", then_replaced)
        with pytest.raises(FileChangedError, match="export.xml"):
            ingest_files(settings, [path], workers=workers, batch_size=50)
    assert _titles(engine) == {}
    ingest_files(settings, [path], workers=workers, batch_size=50)
    assert set(_titles(engine).values()) == {f"New title {p}" for p in range(1, 3001)}


@pytest.mark.parametrize("workers", [1, 2], ids=["one worker", "striped over two"])
def test_a_file_renamed_over_while_it_is_read_is_read_as_recorded(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """A new version renamed over the path while the workers read the old one: they read
    the version recorded (their open file) to its end, so the run stores it whole; the
    next run reads the new version as a newer source."""
    engine = db.connect(sqlite_settings)
    path = tmp_path / "export.xml"
    path.write_bytes(_version("Old"))
    with monkeypatch.context() as m:
        _change_at_item(m, path, "replace", at=200)
        ingest_files(sqlite_settings, [path], workers=workers, batch_size=50)
    assert _titles(engine) == {p: f"Old title {p}" for p in range(1, 3001)}
    again = ingest_files(sqlite_settings, [path], workers=workers, batch_size=50)
    assert again.updated == 3000
    assert _titles(engine) == {p: f"New title {p}" for p in range(1, 3001)}
