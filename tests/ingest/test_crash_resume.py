"""A killed or cut-short ingest, run again, ends in exactly the state of a clean run.

A run that dies leaves a prefix of its work committed (one transaction per store batch);
the next run reads the same sources again. These tests cut runs everywhere — after every
item of an update file at the store level, and by SIGKILL of a real ``litpulse ingest``
at points spread over several files with revisions and deletions (update-style files,
plain local files, update files from the emulated file server, an E-utilities window) —
and compare the whole store with an uninterrupted run: every article row (version,
revision date, content hash, tombstone, source and its position in the source),
MeSH/publication-type terms, references, ``cited_by_in_corpus`` and quarantine. Only
wall-clock columns (fetch, insert, update and deletion times) are left out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Engine, func, select, text

from ingest.eutils import ingest_window
from ingest.files import ingest_files
from ingest.records import Deletion, Item, QuarantineEntry, SourceRef
from ingest.store import Store
from ingest.updatefiles import apply_updates
from litpulse.app.demo.generate import ArticleSpec, CorpusManifest, generate_corpus, iter_file_plan
from litpulse.core import db
from litpulse.core.schema import article_terms, articles, metadata, quarantine, references
from litpulse.core.settings import Settings
from tests.emulator import Emulator, article_xml, pubmed_set, running_emulator
from tests.ingest.test_store import make_record

REPO = Path(__file__).resolve().parents[2]
#: Items per transaction in these tests: many commits, so kills land between them.
BATCH = 5
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_WALL_CLOCK = (
    "source_time", "ingested_at", "updated_at", "icite_fetched_at", "icite_values_at"
)


# ------------------------------------------------------------------------------ snapshot


def snapshot(engine: Engine, *, eutils: bool = False) -> dict[str, Any]:
    """Everything the store holds about articles, without wall-clock times.

    Args:
        engine: The store.
        eutils: Drop the run id from E-utilities source locations (``efetch run 7 …``):
            a clean run and a resumed one are different runs.
    """

    def where(loc: str) -> str:
        return re.sub(r"^efetch run \d+ ", "efetch ", loc) if eutils else loc

    out: dict[str, Any] = {}
    with engine.connect() as conn:
        arts: dict[int, dict[str, Any]] = {}
        for r in conn.execute(select(articles)):
            m = dict(r._mapping)
            for col in _WALL_CLOCK:
                m.pop(col)
            m["deleted_at"] = m["deleted_at"] is not None
            # when a record of it was first stored: whether one was (a wall-clock time)
            m["first_ingested_at"] = m["first_ingested_at"] is not None
            # the run that wrote it: a clean run and a resumed one are different runs
            m["run_id"] = m["run_id"] is not None
            m["source_location"] = where(m["source_location"])
            record = dict(m["record"] or {})
            if "source" in record:
                source = {k: v for k, v in record["source"].items() if k != "fetched_at"}
                source["location"] = where(source["location"])
                record["source"] = source
            m["record"] = record
            arts[m.pop("pmid")] = m
        out["articles"] = arts
        out["terms"] = sorted(tuple(r) for r in conn.execute(select(article_terms)))
        out["references"] = sorted(tuple(r) for r in conn.execute(select(references)))
        q = quarantine.c
        out["quarantine"] = sorted(
            tuple(r)
            for r in conn.execute(
                select(q.digest, q.pmid, q.reason, q.source_kind, q.source_location, q.line)
            )
        )
        # the in-corpus counts agree with a recount from the references of live articles
        citer = articles.alias("citer")
        recount: dict[int, int] = dict(
            conn.execute(
                select(references.c.cited_pmid, func.count())
                .select_from(references.join(citer, citer.c.pmid == references.c.citing_pmid))
                .where(citer.c.is_deleted.is_(False))
                .group_by(references.c.cited_pmid)
            ).all()
        )
    wrong = {p: (m["cited_by_in_corpus"], recount.get(p, 0)) for p, m in arts.items()
             if m["cited_by_in_corpus"] != recount.get(p, 0)}  # fmt: skip
    assert not wrong, f"cited_by_in_corpus differs from a recount: {sorted(wrong.items())[:5]}"
    return out


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """What differs between two snapshots, briefly (empty when they are equal)."""
    out: list[str] = []
    g, w = got["articles"], want["articles"]
    if g.keys() != w.keys():
        out.append(f"PMIDs missing {sorted(w.keys() - g.keys())[:5]}, "
                   f"extra {sorted(g.keys() - w.keys())[:5]}")  # fmt: skip
    wrong = {p: sorted(k for k in w[p] if g[p].get(k) != w[p][k]) for p in g.keys() & w.keys()}
    wrong = {p: cols for p, cols in wrong.items() if cols}
    if wrong:
        live_flip = sorted(p for p, cols in wrong.items() if "is_deleted" in cols)
        out.append(
            f"{len(wrong)} articles differ ({len(live_flip)} live/deleted, e.g. "
            f"{live_flip[:5]}); e.g. {sorted(wrong.items())[:3]}"
        )
    for table in ("terms", "references", "quarantine"):
        gs, ws = set(got[table]), set(want[table])
        if gs != ws:
            out.append(f"{table}: {len(gs - ws)} rows extra, {len(ws - gs)} missing")
    return out


def reset(engine: Engine) -> None:
    """Empty every table (a fresh store, same database)."""
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def quick(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with ``changes``; PostgreSQL commits without waiting for the WAL flush.

    4.4 ms → 0.5 ms a commit here. Commits stay atomic and are visible at once; only a
    crash of the server could lose them, and a killed client is what is tested here.
    """
    s = settings.replace(**changes)
    if not s.database_url:
        return s
    sep = "&" if "?" in s.database_url else "?"
    return s.replace(database_url=f"{s.database_url}{sep}options=-c%20synchronous_commit%3Doff")


# ------------------------------------------------------------------ the store's own rule

F1 = SourceRef("updatefile", "pubmed26n0001.xml.gz", 1, T0)


def file2(minutes: int) -> list[Item]:
    """Update file 2, read ``minutes`` after T0: every same-file ordering case in one file.

    PMIDs 1-4 are stored from file 1 before it (:data:`BEFORE`).
    """
    s = SourceRef("updatefile", "pubmed26n0002.xml.gz", 2, T0 + dt.timedelta(minutes=minutes))
    later = dt.date(2025, 2, 1)
    return [
        make_record(1, title="A, file 2", source=s),  # a tie with file 1: the later file wins
        make_record(5, refs=(1, 2), source=s),
        make_record(2, revised=later, title="B revised", refs=(1,), source=s),
        make_record(1, title="A again", refs=(2,), source=s),  # same version/date, later here
        make_record(6, refs=(5,), source=s),
        make_record(2, revised=later, title="B again", source=s),
        Deletion(3, s),  # stored from file 1
        Deletion(5, s),  # stored earlier in this file
        make_record(7, title="G", source=s),
        Deletion(7, s),
        make_record(7, title="G back", source=s),  # a later record lifts this file's tombstone
        Deletion(1, s),  # written twice earlier in this file
        make_record(4, refs=(2, 3), source=s),  # D as in file 1: only its source moves
        Deletion(4, s),  # after a record that only moved D's source to this file
        Deletion(8, s),  # an unknown PMID: a tombstone...
        make_record(8, title="H", refs=(6, 2), source=s),  # ...that a later record lifts
        make_record(2, title="B stale", source=s),  # an older revision: ignored
        make_record(6, version=2, title="F v2", refs=(2,), source=s),
        make_record(6, title="F v1 late", source=s),  # an older version: ignored
        QuarantineEntry("no PMID", "<PubmedArticle/>", s, line=40),
        make_record(9, refs=(6, 8), source=s),
        Deletion(9, s),  # the last item of the file
    ]


BEFORE: list[Item] = [
    make_record(1, source=F1),
    make_record(2, source=F1),
    make_record(3, refs=(1,), source=F1),
    make_record(4, refs=(2, 3), source=F1),
]


def test_a_deletion_late_in_a_partly_applied_file_wins(engine: Engine) -> None:
    """The finding: record early in a file, its deletion late; the first batch only, then all."""
    store = Store(engine)
    s = SourceRef("updatefile", "pubmed26n0007.xml.gz", 7, T0)
    items: list[Item] = [make_record(p, refs=(p - 1,), source=s) for p in range(10, 20)]
    items.append(Deletion(12, s))
    store.apply(items[:4], batch_size=4)  # killed after the first batch
    s_again = dataclasses.replace(s, fetched_at=T0 + dt.timedelta(days=1))  # the next run
    got = store.apply([dataclasses.replace(it, source=s_again) for it in items], batch_size=4)
    assert (got.inserted, got.deleted) == (6, 1)
    assert store.get_article(12)["is_deleted"] is True
    assert store.existing_pmids(range(10, 20)) == set(range(10, 20)) - {12}
    assert store.get_article(11)["cited_by_in_corpus"] == 0  # its only citer, 12, is gone
    assert store.get_article(10)["cited_by_in_corpus"] == 1


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_file_cut_after_any_item_resumes_to_the_clean_state(
    settings: Settings, batch_size: int
) -> None:
    engine = db.connect(quick(settings))
    store = Store(engine)
    store.apply(BEFORE)
    store.apply(file2(0), batch_size=batch_size)
    clean = snapshot(engine)
    arts = clean["articles"]
    assert {p for p, a in arts.items() if not a["is_deleted"]} == {2, 6, 7, 8}
    assert [arts[p]["title"] for p in (1, 2, 6, 7, 8)] == ["A again", "B again", "F v2",
                                                           "G back", "H"]  # fmt: skip
    assert arts[4]["source_location"] == "pubmed26n0002.xml.gz"  # D's deletion won
    n = len(file2(0))
    for cut in range(n + 1):
        reset(engine)
        store.apply(BEFORE)
        store.apply(file2(0)[:cut], batch_size=batch_size)  # the run that was killed
        second = cut + (n - cut) // 2
        store.apply(file2(10)[:second], batch_size=batch_size)  # killed again, further on
        store.apply(file2(20), batch_size=batch_size)  # the run that finishes
        diff = differences(snapshot(engine), clean)
        assert not diff, f"cut after item {cut}, then {second}: {diff}"


# ---------------------------------------------------------------- SIGKILL of real runs


@dataclass(frozen=True)
class Corpus:
    """Generated update-style files plus two plain local files, and what to watch."""

    manifest: CorpusManifest
    files: tuple[Path, ...]
    deleted_in: tuple[tuple[int, ...], ...]  # per generated file, the PMIDs it deletes
    bumped_in: tuple[tuple[int, ...], ...]  # per generated file, PMIDs revised to Version 2
    lifted: int  # inserted and deleted in plain file a, back (Version 3) in plain file b
    gone: int  # inserted and deleted in plain file a
    tie: int  # same version and revision date in a and b: b's record wins
    early: int  # inserted in a, deleted at the end of b
    late: int  # inserted and deleted in b
    fillers_b: tuple[int, ...]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("crash")
    manifest = generate_corpus(
        folder, n_records=450, n_files=3, seed=29, revise_fraction=0.15,
        delete_fraction=0.15, malformed_fraction=0.01,
    )  # fmt: skip
    deleted_in: list[tuple[int, ...]] = []
    bumped_in: list[tuple[int, ...]] = []
    for _f, items in iter_file_plan(manifest.config):
        deleted_in.append(tuple(i for i in items if isinstance(i, int)))
        specs = [i for i in items if isinstance(i, ArticleSpec)]
        bumped_in.append(tuple(i.pmid for i in specs if i.revision and i.version == 2))
    edat, mdat = dt.date(2024, 2, 1), dt.date(2024, 3, 1)
    new = 90_000_000  # above every generated PMID
    lifted, gone, tie, early, late = new + 1, new + 2, new + 3, new + 4, new + 5

    def art(pmid: int, **kw: Any) -> bytes:
        return article_xml(pmid, edat=edat, mdat=mdat, **kw)

    def dele(*pmids: int) -> bytes:
        inner = "".join(f'<PMID Version="1">{p}</PMID>' for p in pmids)
        return f"<DeleteCitation>{inner}</DeleteCitation>".encode()

    # plain names: applied in the order given, after the numbered files (file number 0 is
    # older than any numbered file, so these only touch their own PMIDs)
    a = folder / "local-a.xml"
    a.write_bytes(pubmed_set(
        [art(tie, title="Tie as read from file a"), art(early), art(lifted), art(gone)]
        + [art(new + 100 + i) for i in range(30)]
        + [dele(lifted, gone)]
        + [art(new + 200 + i) for i in range(30)]
    ))  # fmt: skip
    fillers_b = tuple(new + 300 + i for i in range(100))
    b = folder / "local-b.xml"
    b.write_bytes(pubmed_set(
        [art(lifted, version=3, title="Back in a third version"),
         art(tie, title="Tie as read from file b"), art(late)]
        + [art(p) for p in fillers_b]
        + [dele(early, late)]
    ))  # fmt: skip
    return Corpus(manifest, (*manifest.files, a, b), tuple(deleted_in), tuple(bumped_in),
                  lifted, gone, tie, early, late, fillers_b)  # fmt: skip


@dataclass(frozen=True)
class KillPoint:
    """Kill the run once ``count(articles WHERE where) >= at`` is committed (before its
    ``then``-th SQL statement from there)."""

    label: str
    where: ColumnElement[bool]
    at: int
    #: the kill comes before this statement after the commit that reached the point
    then: int = 1


def kill_points(c: Corpus) -> list[KillPoint]:
    a = articles.c
    every = a.pmid.isnot(None)
    deleted = a.is_deleted.is_(True)
    return [
        KillPoint("file 1, early", every, 50, then=2),
        KillPoint("file 1, inside its deletions", a.pmid.in_(c.deleted_in[0]) & deleted, 1),
        KillPoint("file 2, early", every, 200, then=4),
        KillPoint("file 2, its revisions", a.pmid.in_(c.bumped_in[1]) & (a.version == 2), 1),
        KillPoint("file 2, inside its deletions", a.pmid.in_(c.deleted_in[1]) & deleted, 2),
        KillPoint("file 3, early", every, 350, then=3),
        KillPoint("file 3, inside its deletions", a.pmid.in_(c.deleted_in[2]) & deleted, 12),
        KillPoint("plain file a, after its deletions", (a.pmid == c.lifted) & deleted, 1),
        KillPoint("plain file b, a tombstone lifted", (a.pmid == c.lifted) & (a.version == 3), 1),
        KillPoint("plain file b, deep", a.pmid.in_(c.fillers_b), 40, then=2),
    ]


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITPULSE_")}
    env.update(
        PYTHONPATH=str(REPO),
        LITPULSE_HOME=str(settings.home),
        LITPULSE_DATABASE_URL=settings.database_url,
        LITPULSE_STORE_BATCH=str(settings.store_batch),
        **extra,
    )
    return env


#: Run in the child before its real entry point: before every SQL statement the child sends
#: (any thread), count the point's rows on a connection of its own; once the point is
#: committed, the child SIGKILLs itself before its ``then``-th statement from there (1: at
#: the commit boundary; more: inside the next transaction); with a ``files`` pattern, only
#: while a non-empty file matches it. A poller in the parent could
#: miss a point that lasts a few milliseconds on a loaded machine (a tombstone lifted by
#: the next batch): the run then ended before it was killed, and the test failed on CI.
#: The count changes only when a transaction of the child commits (the store's writes all
#: go through SQLAlchemy's commit, ``dialect.do_commit``): it is counted again only once a
#: commit has ended since the last count (the first statement counts), which is the same
#: statement the count on every statement found, for a fraction of the queries (a full
#: run sends thousands of statements: counting before each was about 40 % of its time).
_KILL_AT_POINT = """
import glob, os, runpy, signal, sys, threading, time
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
url, sql, at, then, files, how, *rest = sys.argv[1:]
# one connection kept for the probe (a new PostgreSQL connection per statement took
# three quarters of these tests' time); SQLite opens its file anew, which is cheap
if url.startswith("sqlite"):
    probe = create_engine(url, poolclass=NullPool)
else:
    probe = create_engine(url, pool_size=1)
lock = threading.Lock()
left = []
committed = [True]  # a commit ended since the last count (the first statement counts)
from sqlalchemy.engine.default import DefaultDialect
real_commit = DefaultDialect.do_commit
def do_commit(self, dbapi_connection):
    real_commit(self, dbapi_connection)
    committed[0] = True  # once the commit has ended: its rows are what a count sees
DefaultDialect.do_commit = do_commit
def some_file():
    for path in glob.glob(files):
        try:
            if os.path.getsize(path):
                return True
        except OSError:
            pass
    return False
def before(conn, cursor, statement, parameters, context, executemany):
    if conn.engine is probe:
        return
    with lock:
        if not left:
            if files and not some_file():
                time.sleep(0.02)  # the writer lags until the file comes: it surely comes
                return
            if not committed[0]:
                return  # nothing committed since the last count: the same count
            committed[0] = False
            with probe.connect() as c:
                if c.execute(text(sql)).scalar_one() < int(at):
                    return
            left.append(int(then))
        left[0] -= 1
        if left[0] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
event.listen(Engine, "before_cursor_execute", before)
if how == "-m":
    sys.argv = rest
    runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest[1:]]
    exec(compile(rest[0], "<string>", "exec"), {"__name__": "__main__"})
"""


def self_killing(
    argv: Sequence[str], engine: Engine, count_sql: str, at: int, then: int = 1, *,
    files: str = "",
) -> list[str]:
    """``argv`` (``-m module …`` or ``-c script …``) run under :data:`_KILL_AT_POINT`: the
    child SIGKILLs itself before its ``then``-th SQL statement after ``count_sql`` (one
    integer) reached ``at`` in ``engine``'s database (and, with ``files``, a glob pattern,
    a non-empty file matched it; until one does, each SQL statement waits 20 ms first, so
    the processes that make the file get ahead of a writer that would otherwise keep up
    with them: a run on a fast or a busy machine ended before any file came). For
    :func:`kill_when`."""
    how, first, *rest = argv
    assert how in ("-m", "-c"), argv
    url = engine.url.render_as_string(hide_password=False)
    return ["-c", _KILL_AT_POINT, url, count_sql, str(at), str(then), files, how, first, *rest]


def run_and_kill(
    argv: Sequence[str], env: dict[str, str], engine: Engine, point: KillPoint, log: Path
) -> None:
    """Run ``python argv…`` and have it SIGKILL itself once ``point`` is committed, before
    its ``point.then``-th SQL statement from there."""
    count = select(func.count()).select_from(articles).where(point.where)
    sql = str(count.compile(engine, compile_kwargs={"literal_binds": True}))
    wrapped = self_killing(argv, engine, sql, point.at, point.then)
    kill_when(wrapped, env, lambda: False, log, label=point.label, timeout=120)


def kill_when(
    argv: Sequence[str], env: dict[str, str], reached: Callable[[], bool], log: Path, *,
    label: str, timeout: float,
) -> None:
    """Start ``python argv…`` and SIGKILL it as soon as ``reached()`` says so (or let it
    SIGKILL itself); fails when the run ends otherwise, or outlives ``timeout``."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, *argv], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=lambda: os.nice(5),  # the poller keeps up with the run
        )  # fmt: skip
        late = False
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                late = time.monotonic() > deadline
                if late or reached():
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            proc.wait(timeout=30)
    tail = log.read_text(errors="replace")[-2000:]
    assert not late, f"{label}: still running after {timeout} s: {tail}"
    ended = f"{label}: the run ended (exit {proc.returncode}) before the kill point: "
    assert proc.returncode == -signal.SIGKILL, ended + tail


def kill_and_resume(
    points: Sequence[KillPoint],
    engine: Engine,
    clean: dict[str, Any],
    start: Callable[[KillPoint], None],
    resume: Callable[[], object],
    *,
    eutils: bool = False,
) -> list[str]:
    """For each point: a fresh store, a run killed there, a run to the end, the comparison."""
    failures: list[str] = []
    for point in points:
        reset(engine)
        start(point)
        resume()
        diff = differences(snapshot(engine, eutils=eutils), clean)
        if diff:
            failures.append(f"killed at {point.label}: " + "; ".join(diff))
        with engine.connect() as conn:
            runs = conn.execute(text("SELECT status FROM ingest_runs ORDER BY id")).scalars()
            assert list(runs) == ["abandoned", "succeeded"], point.label
    return failures


def test_killed_file_ingest_resumes_to_the_clean_state(
    settings: Settings, corpus: Corpus, tmp_path: Path
) -> None:
    s = quick(settings, store_batch=BATCH)
    engine = db.connect(s)
    paths = [str(p) for p in corpus.files]
    ingest_files(s, paths)
    clean = snapshot(engine)
    arts = clean["articles"]
    live = {p for p, a in arts.items() if not a["is_deleted"]}
    m = corpus.manifest
    assert live & set(arts) & (m.live_pmids | m.deleted_pmids) == m.live_pmids
    assert arts[corpus.lifted]["version"] == 3 and corpus.lifted in live
    assert not live & {corpus.gone, corpus.early, corpus.late}
    assert arts[corpus.tie]["title"] == "Tie as read from file b"
    assert len(clean["quarantine"]) == m.quarantined > 0

    points = kill_points(corpus)
    argv = ["-m", "litpulse", "ingest", "--files", *paths]
    failures = kill_and_resume(
        points, engine, clean,
        lambda p: run_and_kill(argv, child_env(s), engine, p, tmp_path / "child.log"),
        lambda: ingest_files(s, paths),
    )  # fmt: skip
    assert not failures, "\n".join(failures)


#: A file ingest that splits every file over 2 parse workers (``stripe=True``).
_STRIPED = (
    "import sys\n"
    "from ingest.files import ingest_files\n"
    "from litpulse.core.settings import Settings\n"
    "ingest_files(Settings.from_env(), sys.argv[1:], workers=2, stripe=True)\n"
)


# SQLite only: the split is the parse side's (the order of the items the writer gets);
# the store's rules under a kill are held on both databases by the unsplit test above
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_killed_split_file_ingest_resumes_to_the_clean_state(
    settings: Settings, corpus: Corpus, tmp_path: Path
) -> None:
    """Every file split over 2 parse workers, killed anywhere, resumed split over 3: the
    state of a clean run parsed in the writer."""
    s = quick(settings, store_batch=BATCH)
    engine = db.connect(s)
    paths = [str(p) for p in corpus.files]
    ingest_files(s, paths, workers=0)
    clean = snapshot(engine)
    argv = ["-c", _STRIPED, *paths]
    failures = kill_and_resume(
        kill_points(corpus), engine, clean,
        lambda p: run_and_kill(argv, child_env(s), engine, p, tmp_path / "child.log"),
        lambda: ingest_files(s, paths, workers=3, stripe=True),
    )  # fmt: skip
    assert not failures, "\n".join(failures)


def test_reading_the_same_files_again_changes_nothing(settings: Settings, corpus: Corpus) -> None:
    """Plain files keep the fetch time of their first reading: a repeat is a pure replay.

    File a deletes a PMID that file b brings back; read with new fetch times, a's
    deletion would now be the later item and win.
    """
    s = quick(settings, store_batch=50)
    engine = db.connect(s)
    plain = [str(p) for p in corpus.files[-2:]]
    first = ingest_files(s, plain)
    before = snapshot(engine)
    again = ingest_files(s, plain)
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    assert again.total == first.total
    assert not differences(snapshot(engine), before)
    assert before["articles"][corpus.lifted]["is_deleted"] is False


# ------------------------------------------------------------ update files, E-utilities


@pytest.fixture
def emu(corpus: Corpus) -> Iterator[Emulator]:
    for emu in running_emulator():
        for path in corpus.manifest.files:
            emu.add_file("updatefiles", path.name, path.read_bytes())
        yield emu


def test_killed_update_files_resume_to_the_clean_state(
    emu: Emulator, settings: Settings, corpus: Corpus, tmp_path: Path
) -> None:
    s = emu.configure(quick(settings, store_batch=BATCH), ncbi_api_key="k")  # 10 requests/s
    engine = db.connect(s)
    apply_updates(s)
    clean = snapshot(engine)
    points = [p for p in kill_points(corpus) if "inside its deletions" in p.label]
    argv = ["-m", "litpulse", "ingest", "--updatefiles"]
    env = {**child_env(s), **emu.env(s)}
    failures = kill_and_resume(
        points, engine, clean,
        lambda p: run_and_kill(argv, env, engine, p, tmp_path / "child.log"),
        lambda: apply_updates(s),
    )  # fmt: skip
    assert not failures, "\n".join(failures)


def test_killed_eutils_window_resumes_to_the_clean_state(
    emu: Emulator, sqlite_settings: Settings, corpus: Corpus, tmp_path: Path
) -> None:
    emu.load_files(corpus.manifest.files)
    s = emu.configure(sqlite_settings, store_batch=7, efetch_batch=40, ncbi_api_key="k")
    engine = db.connect(s)
    since, until = dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1)
    ingest_window(s, since, until)
    clean = snapshot(engine, eutils=True)
    assert len(clean["articles"]) == len(corpus.manifest.live_pmids)
    script = (
        "import datetime as dt\n"
        "from litpulse.core.settings import Settings\n"
        "from ingest.eutils import ingest_window\n"
        "ingest_window(Settings.from_env(), dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1))\n"
    )
    env = {**child_env(s), **emu.env(s)}
    points = [
        KillPoint(f"{n} records", articles.c.pmid.isnot(None), n, then=t)
        for n, t in ((100, 1), (250, 3))
    ]
    failures = kill_and_resume(
        points, engine, clean,
        lambda p: run_and_kill(["-c", script], env, engine, p, tmp_path / "child.log"),
        lambda: ingest_window(s, since, until),
        eutils=True,
    )  # fmt: skip
    assert not failures, "\n".join(failures)
