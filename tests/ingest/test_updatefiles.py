"""Update files from the emulated PubMed file server: order, checksums, resume, skips."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ingest.store import Store
from ingest.updatefiles import (
    apply_updates,
    downloads_folder,
    list_remote_files,
    parse_listing,
    parse_md5,
)
from litpulse.app.demo.generate import CorpusManifest, generate_corpus
from litpulse.core import db
from litpulse.core.errors import ChecksumError
from litpulse.core.schema import articles, source_files
from litpulse.core.settings import Settings
from tests.emulator import Emulator, running_emulator


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> CorpusManifest:
    """300 records in 3 update files; revisions and deletions land in later files."""
    return generate_corpus(
        tmp_path_factory.mktemp("upd"), n_records=300, n_files=3, seed=3,
        revise_fraction=0.1, delete_fraction=0.03, first_file_number=1275,
    )


@pytest.fixture
def emu(corpus: CorpusManifest) -> Iterator[Emulator]:
    for emu in running_emulator():
        for path in corpus.files:
            emu.add_file("updatefiles", path.name, path.read_bytes())
        yield emu


def _applied(settings: Settings) -> list[tuple[str, int]]:
    with db.connect(settings).connect() as conn:
        rows = conn.execute(
            select(source_files.c.name, source_files.c.sequence).order_by(
                source_files.c.applied_at
            )
        )
        return [(r[0], r[1]) for r in rows]


def _live(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        q = select(articles.c.pmid).where(articles.c.is_deleted.is_(False))
        return set(conn.execute(q).scalars())


def test_parse_listing_and_md5() -> None:
    page = (
        '<a href="../">Parent</a><a href="pubmed26n1276.xml.gz">pubmed26n1276.xml.gz</a>'
        '<a href="pubmed26n1276.xml.gz.md5">md5</a><a href="pubmed26n1275.xml.gz">x</a>'
        "<a href='/pubmed/updatefiles/pubmed25n1274.xml.gz'>x</a><a href=\"README.txt\">r</a>"
    )
    names = [f.name for f in parse_listing(page, "updatefile")]
    assert names == ["pubmed25n1274.xml.gz", "pubmed26n1275.xml.gz", "pubmed26n1276.xml.gz"]
    digest = "0123456789abcdef0123456789ABCDEF"
    assert parse_md5(f"MD5(pubmed26n0001.xml.gz)= {digest}\n", "pubmed26n0001.xml.gz") == (
        digest.lower()
    )
    assert parse_md5(f"{digest}  pubmed26n0001.xml.gz\n", "pubmed26n0001.xml.gz")
    with pytest.raises(ChecksumError):
        parse_md5(f"MD5(pubmed26n0002.xml.gz)= {digest}", "pubmed26n0001.xml.gz")


@pytest.mark.parametrize("workers", [None, 2], ids=["default workers", "each file split over 2"])
def test_files_are_applied_in_order_to_the_expected_state(
    emu: Emulator, settings: Settings, corpus: CorpusManifest, workers: int | None
) -> None:
    s = emu.configure(settings)
    assert [f.name for f in list_remote_files(s)] == [p.name for p in corpus.files]
    first = apply_updates(s, max_files=1, workers=workers)
    assert _applied(s) == [(corpus.files[0].name, 1275)]
    rest = apply_updates(s, workers=workers)
    assert [n for n, _ in _applied(s)] == [p.name for p in corpus.files]
    assert _live(s) == set(corpus.live_pmids)
    assert (first + rest).deleted == len(corpus.deleted_pmids)
    store = Store(db.connect(s))
    for pmid, version in list(corpus.versions.items())[:40]:
        assert store.get_article(pmid)["version"] == version
    for pmid, title in list(corpus.revised_titles.items())[:10]:
        assert store.get_article(pmid)["title"] == title  # the later file won
    run = store.runs(1)[0]
    assert run["status"] == "succeeded" and run["details"]["files"] == [
        p.name for p in corpus.files[1:]
    ]
    with db.connect(s).connect() as conn:
        row = conn.execute(select(source_files).where(source_files.c.name == corpus.files[0].name))
        got = row.one()._mapping
    assert got["size"] == corpus.files[0].stat().st_size and len(got["md5"]) == 32
    assert got["counts"]["inserted"] == first.inserted
    assert not list(downloads_folder(s).iterdir())  # downloads are removed once applied
    # nothing new: nothing downloaded, nothing changed
    before = len(emu.requests(".xml.gz"))
    assert apply_updates(s).total == 0
    assert len(emu.requests(".xml.gz")) == before


def test_a_bad_checksum_is_downloaded_again(
    emu: Emulator, sqlite_settings: Settings, corpus: CorpusManifest
) -> None:
    emu.faults.add("badmd5", path=f"=/pubmed/updatefiles/{corpus.files[1].name}", times=1)
    emu.faults.add("truncate", path=f"=/pubmed/updatefiles/{corpus.files[2].name}", times=1)
    s = emu.configure(sqlite_settings)
    apply_updates(s)
    assert _live(s) == set(corpus.live_pmids)
    gets = [r for r in emu.requests(corpus.files[1].name) if not r.path.endswith(".md5")]
    assert [r.fault for r in gets] == ["badmd5", None]
    resumed = [r for r in emu.requests(corpus.files[2].name) if not r.path.endswith(".md5")]
    assert resumed[-1].headers.get("Range", "bytes=0-") != "bytes=0-"  # resumed, not restarted


def test_a_file_and_its_md5_changed_together_mid_download_are_fetched_again(
    emu: Emulator, sqlite_settings: Settings, corpus: CorpusManifest
) -> None:
    """A mirror mid-update: right after the ``.md5`` was read, the file and its ``.md5``
    change together. The download retried after the mismatch reads the ``.md5`` again and
    matches (it compared the new file with the old digest on every try: ChecksumError)."""
    name = corpus.files[1].name
    same_records = gzip.compress(gzip.decompress(corpus.files[1].read_bytes()), mtime=1)
    assert same_records != corpus.files[1].read_bytes()  # other bytes, other MD5
    emu.update_file_after_md5("updatefiles", name, same_records)
    s = emu.configure(sqlite_settings)
    apply_updates(s)
    assert [n for n, _ in _applied(s)] == [p.name for p in corpus.files]
    assert _live(s) == set(corpus.live_pmids)
    asked = [r.path.rpartition("/")[2] for r in emu.requests(name)]
    assert asked == [f"{name}.md5", name, f"{name}.md5", name]  # each download its own MD5
    with db.connect(s).connect() as conn:
        md5 = conn.execute(select(source_files.c.md5).where(source_files.c.name == name))
        assert md5.scalar() == hashlib.md5(same_records, usedforsecurity=False).hexdigest()


def test_a_file_that_stays_corrupt_fails_the_run_and_stops_the_order(
    emu: Emulator, sqlite_settings: Settings, corpus: CorpusManifest
) -> None:
    emu.faults.add("badmd5", path=f"=/pubmed/updatefiles/{corpus.files[1].name}", times=100)
    s = emu.configure(sqlite_settings)
    with pytest.raises(ChecksumError, match=corpus.files[1].name):
        apply_updates(s)
    assert [n for n, _ in _applied(s)] == [corpus.files[0].name]  # nothing at or after it
    assert not emu.requests(corpus.files[2].name)
    run = Store(db.connect(s)).runs(1)[0]
    assert run["status"] == "failed" and "ChecksumError" in run["error"]
    emu.faults.clear()
    apply_updates(s)  # once the server is right, the run picks up where it stopped
    assert [n for n, _ in _applied(s)] == [p.name for p in corpus.files]
    assert _live(s) == set(corpus.live_pmids)


def test_baseline_first_then_updates_and_a_file_mirror(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    base = generate_corpus(tmp_path / "b", n_records=60, n_files=2, seed=8, md5=True)
    upd = generate_corpus(
        tmp_path / "u", n_records=60, n_files=1, seed=9, md5=True, first_file_number=3,
        start_date=base.config.start_date.replace(year=2025),
    )
    mirror = tmp_path / "mirror"
    (mirror / "baseline").mkdir(parents=True)
    (mirror / "updatefiles").mkdir()
    for p in base.files:
        for f in (p, p.with_name(p.name + ".md5")):
            (mirror / "baseline" / f.name).write_bytes(f.read_bytes())
    for p in upd.files:
        for f in (p, p.with_name(p.name + ".md5")):
            (mirror / "updatefiles" / f.name).write_bytes(f.read_bytes())
    s = sqlite_settings.replace(pubmed_files_url=mirror.as_uri())
    apply_updates(s)
    assert [n for n, _ in _applied(s)] == [p.name for p in upd.files]
    apply_updates(s, include_baseline=True)
    applied = _applied(s)
    assert sorted(applied, key=lambda r: r[1]) == [
        (p.name, n) for n, p in enumerate([*base.files, *upd.files], 1)
    ]
    with db.connect(s).connect() as conn:
        kinds = dict(conn.execute(select(source_files.c.name, source_files.c.kind)).all())
    assert kinds[base.files[0].name] == "baseline" and kinds[upd.files[0].name] == "updatefile"


def test_a_failed_run_counts_what_it_committed(
    emu: Emulator, sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run failing in its 2nd store batch still says what the first one stored."""
    from ingest.store import Store as StoreClass

    s = dataclasses.replace(emu.configure(sqlite_settings), store_batch=50)
    real = StoreClass._apply_batch
    calls = {"n": 0}

    def failing(self: StoreClass, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(StoreClass, "_apply_batch", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        apply_updates(s)
    run = Store(db.connect(s)).runs(1)[0]
    assert run["status"] == "failed"
    with db.connect(s).connect() as conn:
        stored = conn.execute(select(func.count()).select_from(articles)).scalar()
    assert run["inserted"] == stored > 0  # before: 0, though a batch was committed


def test_a_deletion_in_next_years_update_file_wins_over_last_years_file(
    sqlite_settings: Settings,
) -> None:
    """NLM numbers update files on from each year's baseline: the 2025 updates run past
    n1500 while the 2026 updates start near n1335. A store that applied pubmed25n1500
    and then, after the new year's baseline (which it does not re-apply), pubmed26n1335
    must obey 26n1335: it is the later file (review finding: the deletion was counted
    'unchanged' and the record stayed live, the file's number alone ordering the two).

    The new year's baseline is listed, as NCBI's server always lists it (its last file,
    n1334, says the 2026 update files begin at n1335): since review 38c X2 a new year's
    update files whose start nothing tells (the baseline pruned from a mirror, and never
    seen listed by this store) are held, no longer taken to begin at the lowest number
    listed (``tests/review/test_session38c_review.py``)."""
    from tests.emulator import article_xml, gz, pubmed_set

    d = dt.date(2025, 11, 3)
    for emu in running_emulator():
        emu.add_file("updatefiles", "pubmed25n1500.xml.gz",
                     gz(pubmed_set([article_xml(1001, edat=d), article_xml(1002, edat=d)])))
        s = emu.configure(sqlite_settings)
        apply_updates(s)
        assert _live(s) == {1001, 1002}
        # December: NLM removes last year's update files and starts the new numbering
        emu.files["updatefiles"].clear()
        emu.add_file("baseline", "pubmed26n1334.xml.gz", gz(pubmed_set([])))
        emu.add_file("updatefiles", "pubmed26n1335.xml.gz", gz(pubmed_set([], deletions=[1001])))
        counts = apply_updates(s)
        assert [n for n, _ in _applied(s)][-1] == "pubmed26n1335.xml.gz"
        assert counts.deleted == 1
        assert _live(s) == {1002}


def test_an_update_file_run_is_judged_so_a_window_meets_its_records_as_judged(
    emu: Emulator, settings: Settings, corpus: CorpusManifest
) -> None:
    """No window's check judges an update file's run: it is judged once it succeeded, so
    an E-utilities window meeting its records again counts them ``reseen`` (not new to
    its check) and takes none of them over."""
    from ingest.parse import parse_bytes
    from ingest.records import SourceRef
    from litpulse.core.schema import ingest_runs

    s = emu.configure(settings)
    apply_updates(s, max_files=1)
    store = Store(db.connect(s))
    run = store.runs(1)[0]
    with db.connect(s).connect() as conn:
        judged = conn.execute(
            select(ingest_runs.c.judged_at).where(ingest_runs.c.id == run["id"])
        ).scalar()
    assert judged is not None
    window = store.start_run("eutils")
    items = parse_bytes(corpus.files[0].read_bytes(), source_ref=SourceRef("eutils", "efetch"))
    counts = store.apply(items, run_id=window)
    assert counts.unchanged > 0 and counts.reseen == counts.unchanged
    with db.connect(s).connect() as conn:
        mine = conn.execute(select(func.count()).where(articles.c.run_id == window)).scalar()
    assert mine <= counts.inserted + counts.updated + counts.deleted  # its own writes only
