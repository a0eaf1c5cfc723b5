"""Review 34e: the nightly as a whole on a crashing machine, and three concurrency leftovers.

Reviewed: ``litpulse nightly`` (:mod:`litpulse.pipeline.nightly`) from the loopback
emulator's update files (generated demo files, with revisions, deletions and malformed
records) through the iCite refresh, the data-quality check, embedding (a tiny encoder),
the index's publication with its lexical index, and the saved searches' digest, SIGKILLed
at three seeded points and run again to the end: it must end in exactly the state of one
uninterrupted nightly on the same input (articles without wall-clock columns, quarantine,
citation counts, the published index's PMIDs and model, the lexical documents, the saved
search's matches, the update files applied, no run left "running") — N1 holds on both
databases (kills inside the ingest, the embedding and the digest), and so does N3, the
same for an E-utilities window (its watermark too; kills inside the iCite step and the
index's publication as well); only the counts an update
file records after a resume were its last application's (N2; fixed in review 35b, X4:
each batch commits a progress mark, and a resumed file goes on after it). Then
three leftovers:
the API server's start-up catch-up of period ends (:meth:`ingest.store.Store.
catch_up_period_ends`) against an ingest committing meanwhile (A1) and holding SQLite's
write lock for its whole pass (B1) — a writer that waited it out was told the database
"cannot be reached" (B2) — and a manual ``litpulse citations refresh`` running while the
nightly reaches its citations step (C1).

Fixed: A1 — the catch-up writes a row only if it still holds the dates it was read with;
B1 — a page per transaction; B2 — a lock waited out is told as a busy database (exit 75);
C1 — the nightly waits up to ``CITATIONS_WAIT_S`` for the other refresh (then refreshes
what is still due: the night's new articles), and past it skips the step with a note in
its summary rather than failing the night or holding back the index and the digest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text, update

from ingest import store as store_module
from ingest.citations import REFRESH_LEASE
from ingest.records import PartialDate
from ingest.store import Store
from litpulse.app.demo.generate import CorpusManifest, generate_corpus
from litpulse.core import db
from litpulse.core.schema import (
    articles,
    checkpoints,
    digest_matches,
    embeddings,
    index_versions,
    ingest_runs,
    saved_searches,
    source_files,
)
from litpulse.core.settings import Settings
from litpulse.pipeline.nightly import run_nightly
from litpulse.pipeline.saved_searches import add_search
from tests.dags.conftest import airflow_home, run_dags  # noqa: F401 - fixture
from tests.emulator import Emulator, running_emulator
from tests.ingest.test_crash_resume import (
    child_env,
    differences,
    kill_when,
    quick,
    reset,
    self_killing,
    snapshot,
)
from tests.ingest.test_store import make_record
from tests.tiny_encoder import build_tiny_encoder

#: ``litpulse nightly`` through the real ``main()`` (the other commands are not under test).
_MAIN = (
    "import sys, litpulse.app.cli as c; c.COMMANDS = ('nightly',); sys.exit(c.main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-34e"), max_seq_length=32)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> CorpusManifest:
    return generate_corpus(
        tmp_path_factory.mktemp("files-34e"), n_records=80, n_files=2, seed=34,
        revise_fraction=0.1, delete_fraction=0.1, malformed_fraction=0.03,
    )  # fmt: skip


@pytest.fixture
def emu(manifest: CorpusManifest) -> Iterator[Emulator]:
    for e in running_emulator():
        for path in manifest.files:
            e.add_file("updatefiles", Path(path).name, Path(path).read_bytes())
        for pmid in sorted(manifest.live_pmids | manifest.deleted_pmids):
            e.set_icite(pmid, citation_count=pmid % 11)
        yield e


# ------------------------------------------------------------------ N1: the nightly killed


def _state(settings: Settings, *, eutils: bool = False) -> dict[str, Any]:
    """What one nightly leaves, without wall-clock columns or run ids."""
    from litpulse.pipeline.planning import last_watermark
    from ranking.index_files import open_published

    engine = db.connect(settings)
    out = snapshot(engine, eutils=eutils)
    out["watermark"] = last_watermark(settings, engine)
    published = open_published(settings, engine)
    assert published is not None, "no index published"
    out["index"] = (published.model_version, sorted(int(p) for p in published.ids))
    lex = published.lexical
    assert lex is not None, f"no lexical index: {published.lexical_error}"
    out["lexical"] = lex.hashes([int(p) for p in published.ids])
    with engine.connect() as conn:
        out["embeddings"] = sorted(tuple(r) for r in conn.execute(select(
            embeddings.c.pmid, embeddings.c.model_version, embeddings.c.text_hash)))
        out["matches"] = sorted(tuple(r) for r in conn.execute(
            select(saved_searches.c.name, digest_matches.c.pmid).join(
                saved_searches, saved_searches.c.id == digest_matches.c.search_id)))
        out["files"] = sorted(tuple(r) for r in conn.execute(
            select(source_files.c.name, source_files.c.md5)))
        out["published"] = conn.execute(select(func.count()).select_from(index_versions).where(
            index_versions.c.status == "published")).scalar()
        out["index_rows"] = sorted(conn.execute(select(index_versions.c.status)).scalars())
        out["runs"] = [tuple(r) for r in conn.execute(
            select(ingest_runs.c.source, ingest_runs.c.status).order_by(ingest_runs.c.id))]
    from ranking.index_files import indexes_dir

    out["index_folders"] = sorted(p.name for p in indexes_dir(settings).iterdir())
    return out


#: Where a run may be killed, in the nightly's order: (label, count SQL, lowest, highest,
#: statements after the point).
_POINTS = (
    ("ingest", "SELECT count(*) FROM articles", 10, 60, 2),
    ("citations", "SELECT count(*) FROM articles WHERE icite_fetched_at IS NOT NULL", 5, 40, 1),
    ("embedding", "SELECT count(*) FROM embeddings", 1, 30, 1),
    ("publishing", "SELECT count(*) FROM index_versions", 1, 1, 1),
    ("digest", "SELECT count(*) FROM digest_matches", 1, 1, 1),
)


def _killed_thrice(
    base: Settings, emu: Emulator, tmp_path: Path, args: list[str], kwargs: dict[str, Any],
    seed: int, *, eutils: bool = False,
) -> None:
    """One nightly (``args`` on the command line, ``kwargs`` in process) on a fresh store;
    then on another, three killed at seeded points and one to the end: the same state."""

    def fresh(home: Path) -> Settings:
        s = base.replace(home=home)
        engine = db.connect(s)
        reset(engine)
        add_search(s, name="cohort studies", query="patients cohort", owner="ann",
                   min_score=0.0)  # fmt: skip
        return s

    clean = fresh(tmp_path / "clean")
    run_nightly(clean, retrain=False, **kwargs)
    want = _state(clean, eutils=eutils)
    assert want["matches"] and want["index"][1]
    db.dispose_engines()

    s = fresh(tmp_path / "killed")
    engine = db.connect(s)
    rng = random.Random(seed)
    # one point in each third of the night: ingest or citations, embedding or publishing,
    # the digest
    chosen = [rng.choice(_POINTS[:2]), rng.choice(_POINTS[2:4]), _POINTS[4]]
    env = {**child_env(s), **emu.env(s)}
    for label, sql, low, high, then in chosen:
        argv = self_killing(["-c", _MAIN, "nightly", *args, "--no-retrain"],
                            engine, sql, rng.randint(low, high), then)  # fmt: skip
        kill_when(argv, env, lambda: False, tmp_path / "child.log", label=label, timeout=60)
    run_nightly(s, retrain=False, **kwargs)
    got = _state(s, eutils=eutils)
    assert not differences(got, want), (chosen, differences(got, want))
    # an update-file run's watermark is a day before it started (wall-clock): its files
    keys = ("index", "lexical", "embeddings", "matches", "files", "published", "index_rows")
    for key in (*keys, "watermark") if eutils else keys:
        assert got[key] == want[key], (chosen, key, got[key], want[key])
    # no half-built index left behind on disk (its version ids differ: count them)
    assert len(got["index_folders"]) == len(want["index_folders"]), got["index_folders"]
    # every run ended: a killed one is marked so, none stays "running" for ever
    assert not [r for r in got["runs"] if r[1] == "running"], (chosen, got["runs"])
    last = {source: status for source, status in got["runs"]}
    assert last == dict(want["runs"]), (chosen, got["runs"])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM locks")).scalar() == 0


@pytest.mark.slow
def test_n1_a_nightly_killed_thrice_ends_as_one_uninterrupted(
    settings: Settings, emu: Emulator, tiny: str, tmp_path: Path
) -> None:
    base = emu.configure(quick(settings, store_batch=5), icite_batch=10, model=tiny,
                         max_seq_length=32, embed_batch_size=8, ncbi_api_key="k")  # fmt: skip
    # seed 1: kills inside the ingest, the embedding and the digest
    _killed_thrice(base, emu, tmp_path, ["--source", "updatefiles"],
                   {"source": "updatefiles"}, 1)  # fmt: skip


@pytest.mark.slow
# seed 2: kills in the ingest and the embedding; seed 5: in the citations and publishing;
# one database each (the suite's time: N1 runs on both)
@pytest.mark.parametrize(("seed", "settings"), [(2, "sqlite"), (5, "postgresql")],
                         indirect=["settings"])
def test_n3_an_eutils_nightly_killed_thrice_ends_as_one_uninterrupted(
    settings: Settings, emu: Emulator, manifest: CorpusManifest, tiny: str, tmp_path: Path,
    seed: int,
) -> None:
    emu.load_files(manifest.files)
    base = emu.configure(quick(settings, store_batch=5), icite_batch=10, model=tiny,
                         max_seq_length=32, embed_batch_size=8, ncbi_api_key="k",
                         efetch_batch=10, quality_expect_weekdays=False)  # fmt: skip
    since, until = dt.datetime(2024, 1, 2, tzinfo=dt.UTC), dt.datetime(2024, 2, 1, tzinfo=dt.UTC)
    _killed_thrice(base, emu, tmp_path, ["--since", "2024-01-02", "--until", "2024-02-01"],
                   {"source": "eutils", "since": since, "until": until}, seed, eutils=True)


def test_n2_a_resumed_update_file_records_its_whole_counts(
    sqlite_settings: Settings, emu: Emulator, tmp_path: Path
) -> None:
    from ingest.updatefiles import apply_updates

    def counts(s: Settings) -> list[Any]:
        with db.connect(s).connect() as conn:
            return sorted(tuple(r) for r in conn.execute(
                select(source_files.c.name, source_files.c.counts)))

    base = emu.configure(sqlite_settings, store_batch=5, ncbi_api_key="k")
    clean = base.replace(home=tmp_path / "clean")
    apply_updates(clean)
    s = base.replace(home=tmp_path / "killed")
    engine = db.connect(s)
    argv = self_killing(["-c", _MAIN.replace("'nightly'", "'ingest'"), "ingest",
                         "--updatefiles"], engine, "SELECT count(*) FROM articles", 20)
    kill_when(argv, {**child_env(s), **emu.env(s)}, lambda: False, tmp_path / "child.log",
              label="file 1", timeout=60)  # fmt: skip
    apply_updates(s)
    assert counts(s) == counts(clean)


# -------------------------------------------------- A1/B1: the API's start-up catch-up


def _older_release_row(engine: Engine) -> None:
    """PMID 1 as an older release stored it: a period (``2019 Nov-Dec``) without its end;
    the catch-up has never run."""
    Store(engine).apply([dataclasses.replace(
        make_record(1), pub_date=PartialDate(2019, 11, None, "2019 Nov-Dec"))])  # fmt: skip
    with engine.begin() as conn:
        conn.execute(update(articles).values(pub_period_end=None))
        conn.execute(checkpoints.delete().where(checkpoints.c.key == "pub_period_end"))


def test_a1_the_catch_up_does_not_overwrite_a_newer_version(settings: Settings) -> None:
    engine = db.connect(settings)
    _older_release_row(engine)
    fired: list[bool] = []

    def between(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # the catch-up read the page and is about to write it: an ingest commits version 2
        if fired or not statement.lstrip().upper().startswith("UPDATE ARTICLES SET PUB_MONTH"):
            return
        fired.append(True)
        Store(engine).apply([dataclasses.replace(
            make_record(1, version=2, revised=dt.date(2025, 6, 1)),
            pub_date=PartialDate(2020, 1, None, "2020 Jan-Feb"))])  # fmt: skip

    event.listen(engine, "before_cursor_execute", between)
    try:
        Store(engine).catch_up_period_ends()  # what `litpulse serve` runs at start-up
    finally:
        event.remove(engine, "before_cursor_execute", between)
    assert fired
    with engine.connect() as conn:
        row = conn.execute(select(articles.c.version, articles.c.pub_year, articles.c.pub_month,
                                  articles.c.pub_period_end)
                           .where(articles.c.pmid == 1)).one()  # fmt: skip
    assert tuple(row) == (2, 2020, 1, dt.date(2020, 2, 29))


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_b1_the_catch_up_lets_a_writer_in_between_pages(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.connect(settings)
    Store(engine).apply([dataclasses.replace(
        make_record(p), pub_date=PartialDate(2019, 11, None, "2019 Nov-Dec")) for p in (1, 2, 3)
    ])  # fmt: skip
    with engine.begin() as conn:
        conn.execute(update(articles).values(pub_period_end=None))
        conn.execute(checkpoints.delete().where(checkpoints.c.key == "pub_period_end"))
    monkeypatch.setattr(store_module, "PERIOD_PAGE", 1)  # three pages
    path = engine.url.database
    assert path
    writes: list[str] = []

    def between(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # a page was written; the next one is read: another writer (an ingest) gets in?
        if len(writes) < 2 and statement.lstrip().upper().startswith("SELECT ARTICLES.PMID") \
                and "pub_period_end" in statement:
            other = sqlite3.connect(path, timeout=0.3)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                writes.append("ok")
            except sqlite3.OperationalError as exc:
                writes.append(str(exc))
            finally:
                other.close()

    event.listen(engine, "before_cursor_execute", between)
    try:
        assert Store(engine).catch_up_period_ends() == 3
    finally:
        event.remove(engine, "before_cursor_execute", between)
    assert writes == ["ok", "ok"]


# ------------------------------------------ C1: a manual citations refresh meets the nightly


@pytest.fixture
def local_files(manifest: CorpusManifest) -> list[str]:
    return [str(p) for p in manifest.files]


def test_c1_the_nightly_waits_for_a_manual_citations_refresh(
    sqlite_settings: Settings, emu: Emulator, tiny: str, local_files: list[str]
) -> None:
    s = emu.configure(sqlite_settings, model=tiny, max_seq_length=32)
    engine = db.connect(s)
    manual = db.acquire_lease(engine, REFRESH_LEASE)  # `litpulse citations refresh` runs
    assert manual is not None
    timer = threading.Timer(1.0, manual.release)  # ...and ends a moment later
    timer.start()
    try:
        report = run_nightly(s, source="files", files=local_files, retrain=False)
    finally:
        timer.cancel()
        manual.release()
    assert report.citations is not None and report.citations.get("updated", 0) > 0
    assert report.index is not None


def test_c1_the_nightly_skips_citations_a_long_manual_refresh_holds(
    sqlite_settings: Settings, emu: Emulator, tiny: str, local_files: list[str]
) -> None:
    s = emu.configure(sqlite_settings, model=tiny, max_seq_length=32)
    engine = db.connect(s)
    manual = db.acquire_lease(engine, REFRESH_LEASE)
    assert manual is not None
    try:
        report = run_nightly(s, source="files", files=local_files, retrain=False,
                             citations_wait_s=0.2)  # fmt: skip
    finally:
        manual.release()
    assert report.citations is not None and "another citation refresh" in str(
        report.citations.get("skipped"))
    rows = dict((step, text) for step, _t, text in report.summary_rows())
    assert rows["citations"].startswith("skipped: another citation refresh")
    assert report.index is not None and report.digest is not None


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_b2_a_lock_waited_out_is_not_called_unreachable(
    env: Settings, local_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.app.cli import main

    engine = db.connect(env)

    def short_wait(dbapi_conn: Any, _record: Any) -> None:  # 60 s in production
        dbapi_conn.execute("PRAGMA busy_timeout=200")

    event.listen(engine, "connect", short_wait)
    engine.dispose()
    path = engine.url.database
    assert path
    other = sqlite3.connect(path)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock (a long pass)
    try:
        code = main(["ingest", "--files", local_files[0]])
    finally:
        other.execute("ROLLBACK")
        other.close()
        event.remove(engine, "connect", short_wait)
    err = capsys.readouterr().err
    assert code == 75
    assert "cannot be reached" not in err
    assert "busy" in err and "database is locked" in err


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_b2_a_full_database_disk_is_not_called_unreachable(
    env: Settings, local_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """B2's follow-up (34b's note): SQLite's ``database or disk is full`` was told as a
    database that "cannot be reached", exit 75 (try again later: the same disk, the same
    failure). It is a full disk: said so, exit 2, as a full disk under an index is."""
    from litpulse.app.cli import main

    engine = db.connect(env)
    with engine.connect() as conn:  # the store as it is, and room for nothing more
        pages = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)

    def full(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    event.listen(engine, "connect", full)
    engine.dispose()
    try:
        code = main(["ingest", "--files", local_files[0]])
    finally:
        event.remove(engine, "connect", full)
        engine.dispose()
    err = capsys.readouterr().err
    assert "cannot be reached" not in err, err
    assert "disk is full" in err and code == 2, (code, err)


@pytest.mark.slow
def test_c1_the_nightly_dag_waits_for_a_manual_citations_refresh(
    airflow_home: Path, tmp_path: Path  # noqa: F811 - the fixture imported
) -> None:
    """The nightly ingest DAG's ``refresh_citations`` task, as ``litpulse nightly``: a
    manual refresh running when it starts is waited for, then the task refreshes what is
    still due (before: the task failed, and the night with it)."""
    day = dt.date(2024, 1, 2)
    for e in running_emulator():
        for pmid in range(1000, 1004):
            e.add_article(pmid, edat=day, title=f"Statins and memory, cohort {pmid}")
            e.set_icite(pmid, citation_count=pmid % 7)
        s = e.configure(Settings.from_env({}, home=tmp_path / "lp"))
        manual = db.acquire_lease(db.connect(s), REFRESH_LEASE)
        assert manual is not None
        timer = threading.Timer(8.0, manual.release)  # the manual refresh ends meanwhile
        timer.start()
        try:
            logical = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(2), dt.UTC)
            runs = [{"dag_id": "litpulse_nightly_ingest", "logical_date": logical.isoformat()}]
            began = time.monotonic()
            (run,) = run_dags(airflow_home, runs, e.env(s), tmp_path)["runs"]
            took = time.monotonic() - began
        finally:
            timer.cancel()
            manual.release()
        assert run["tasks"]["refresh_citations"] == "success", run
        # on its first try: a try that failed is retried minutes later (the run took 131 s
        # before, when one failed and the retry found the lease free; 15 s waiting)
        assert took < 90, f"refresh_citations failed and was retried ({took:.0f} s)"
        assert run["state"] == "success", run
        with db.connect(s).connect() as conn:
            counts = {p: c for p, c in conn.execute(
                select(articles.c.pmid, articles.c.citation_count))}
        assert counts == {p: p % 7 for p in range(1000, 1004)}
