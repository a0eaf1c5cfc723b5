"""The bootstrap loader: baseline then updates, in order, from staged downloads.

The loopback file server publishes 20 generated baseline files (50 records each, a few
malformed) and 3 update files that revise, delete and add records. ``litpulse bootstrap``
killed by SIGKILL twice at random points and resumed must end in exactly the state of an
uninterrupted run: every article row (without wall-clock times), terms, references,
quarantine, and ``source_files`` (without per-run counts and times).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from ingest.bootstrap import (
    BootstrapBusyError,
    load_files,
    pending_files,
    prefetch_file,
    stage_file,
    staged,
)
from ingest.files import ingest_files
from ingest.rows import prepare
from ingest.runs import STORE_LEASE
from ingest.store import COUNTS_CHECKPOINT, Store
from ingest.updatefiles import apply_updates, downloads_folder
from litpulse.app.demo.generate import CorpusManifest, generate_corpus
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.errors import ChecksumError, LitpulseError
from litpulse.core.schema import articles, ingest_runs, source_files
from litpulse.core.settings import Settings
from tests.emulator import Emulator, running_emulator
from tests.ingest.test_crash_resume import (
    REPO,
    child_env,
    differences,
    kill_when,
    quick,
    reset,
    self_killing,
    snapshot,
)
from tests.ingest.test_store import make_record

N_BASELINE = 20
PER_FILE = 50
BATCH = 40


@dataclass(frozen=True)
class Published:
    """What the emulated server publishes: baseline and update files (name, bytes)."""

    baseline: tuple[tuple[str, bytes], ...]
    updates: tuple[tuple[str, bytes], ...]
    manifest: CorpusManifest
    revised: frozenset[int]
    deleted: frozenset[int]
    added: frozenset[int]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    folder = tmp_path_factory.mktemp("baseline")
    m = generate_corpus(
        folder, n_records=N_BASELINE * PER_FILE, n_files=N_BASELINE, seed=41,
        revise_fraction=0.0, delete_fraction=0.0, malformed_fraction=0.005,
    )  # fmt: skip
    rng = random.Random(41)
    live = sorted(m.live_pmids)
    edat, mdat = dt.date(2024, 6, 1), dt.date(2024, 7, 1)
    year = m.files[0].name[6:8]
    new = max(live) + 1000
    updates, revised, deleted, added = [], set(), set(), set()
    for k in range(3):
        rev = rng.sample([p for p in live if p not in deleted], 20)
        gone = rng.sample([p for p in live if p not in deleted and p not in rev], 6)
        fresh = list(range(new + 100 * k, new + 100 * k + 20))
        elements = [article_xml(p, edat=edat, mdat=mdat, version=2 + k % 2,
                                title=f"Revised in update {k}: {p}", refs=(live[0],))
                    for p in rev]  # fmt: skip
        elements += [article_xml(p, edat=edat, refs=(rev[0],)) for p in fresh]
        if k == 2:  # a record of update 0 deleted, one of update 0 revised again
            gone.append(new)
            elements.append(
                article_xml(
                    new + 1,
                    edat=edat,
                    mdat=mdat,
                    version=2,
                    title="New in update 0, revised in update 2",
                )
            )
        name = f"pubmed{year}n{N_BASELINE + 1 + k:04d}.xml.gz"
        updates.append((name, gz(pubmed_set(elements, gone))))
        revised |= set(rev)
        deleted |= set(gone)
        added |= set(fresh)
    return Published(
        tuple((p.name, p.read_bytes()) for p in m.files), tuple(updates), m,
        frozenset(revised), frozenset(deleted), frozenset(added),
    )  # fmt: skip


@pytest.fixture
def emu(published: Published) -> Iterator[Emulator]:
    for emu in running_emulator():
        for name, data in published.baseline:
            emu.add_file("baseline", name, data)
        for name, data in published.updates:
            emu.add_file("updatefiles", name, data)
        yield emu


def _settings(emu: Emulator, settings: Settings) -> Settings:
    return emu.configure(quick(settings, store_batch=BATCH), ncbi_api_key="k")


def _files(engine: Engine) -> list[tuple[Any, ...]]:
    """``source_files`` without what differs between runs (counts, run, time)."""
    f = source_files.c
    with engine.connect() as conn:
        rows = conn.execute(select(f.name, f.kind, f.sequence, f.md5, f.size).order_by(f.name))
        return [tuple(r) for r in rows]


def _downloads(s: Settings) -> list[str]:
    folder = downloads_folder(s)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_baseline_then_updates_in_order_and_a_repeat_does_nothing(
    emu: Emulator, sqlite_settings: Settings, published: Published
) -> None:
    s = _settings(emu, sqlite_settings)
    engine = db.connect(s)
    report = load_files(s, workers=1, prefetch=2)
    names = [n for n, _ in published.baseline] + [n for n, _ in published.updates]
    assert list(report.applied) == names
    assert report.listed == len(names) and report.already == 0
    snap = snapshot(engine)
    arts = snap["articles"]
    live = {p for p, a in arts.items() if not a["is_deleted"]}
    m = published.manifest
    assert live == (m.live_pmids | published.added) - published.deleted
    assert published.deleted <= {p for p, a in arts.items() if a["is_deleted"]}
    assert all(arts[p]["version"] >= 2 for p in published.revised - published.deleted)
    assert len(snap["quarantine"]) == m.quarantined > 0
    assert _downloads(s) == []  # applied downloads are deleted

    # the same state as the update-file path applying baseline and updates in order
    reset(engine)
    apply_updates(s, include_baseline=True)
    assert not differences(snapshot(engine), snap)

    # a second run: nothing listed is pending, nothing downloaded, no run recorded
    with engine.connect() as conn:
        runs = conn.execute(select(func.count()).select_from(ingest_runs)).scalar()
    before = len(emu.requests(".xml.gz"))
    again = load_files(s, workers=1)
    assert again.nothing_to_do and again.applied == () and again.run_id is None
    assert len(emu.requests(".xml.gz")) == before
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ingest_runs)).scalar() == runs


def test_every_row_the_bootstrap_writes_keeps_its_run(
    emu: Emulator, sqlite_settings: Settings, published: Published
) -> None:
    """Baseline and update files parsed by workers: every row the run stored (inserted,
    revised, tombstoned) carries its run id (``articles.run_id``: what a later window's
    check tells met-again records by)."""
    s = _settings(emu, sqlite_settings)
    engine = db.connect(s)
    report = load_files(s, workers=2, prefetch=1)
    assert report.run_id is not None
    with engine.connect() as conn:
        owners = dict(conn.execute(select(articles.c.pmid, articles.c.run_id)).all())
    assert published.deleted | published.revised <= owners.keys()
    assert set(owners.values()) == {report.run_id}


@pytest.mark.parametrize("workers", [0, 3])
def test_any_number_of_workers_gives_the_same_state_within_the_disk_bound(
    emu: Emulator, sqlite_settings: Settings, workers: int
) -> None:
    """Workers parse the next files while the writer stores: the same rows, bounded disk."""
    s = _settings(emu, sqlite_settings)
    engine = db.connect(s)
    load_files(s, workers=1, prefetch=1)
    one = snapshot(engine)
    reset(engine)
    most, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.002):
            most[0] = max(most[0], sum(1 for n in _downloads(s) if n.endswith(".verified")))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        report = load_files(s, workers=workers, prefetch=1)
    finally:
        stop.set()
        watcher.join()
    assert report.workers == workers and len(report.applied) == N_BASELINE + 3
    assert not differences(snapshot(engine), one)
    # the file being stored, the `workers` files handed to the parsers beyond it, and
    # `prefetch` downloads beyond those
    assert most[0] <= 1 + workers + 1
    assert _downloads(s) == []  # no spill left either


def test_downloads_ahead_are_prefetch_beyond_the_files_the_parsers_hold(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """While the writer is between files, the staging folder holds the file each worker
    was handed beyond it plus ``prefetch`` more: the bound is reached and never passed."""
    s = _settings(emu, sqlite_settings)
    seen: list[int] = []

    def staged() -> int:
        return sum(1 for n in _downloads(s) if n.endswith(".verified"))

    def slow_writer(name: str, counts: object) -> None:  # the file just applied is gone
        if len(seen) < 3:  # the prefetch thread and the feeder catch up meanwhile
            most, deadline = 0, time.monotonic() + 20
            while most < 1 + 2 and time.monotonic() < deadline:
                most = max(most, staged())
                time.sleep(0.01)
            time.sleep(0.3)  # and go no further
            seen.append(max(most, staged()))

    load_files(s, workers=1, prefetch=2, on_file=slow_writer)
    assert seen == [1 + 2] * 3, seen  # 1 worker's next file + 2 prefetched
    assert _downloads(s) == []


def test_a_bad_file_stops_the_stream_after_the_files_before_it(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    emu.faults.add("badmd5", path=pending[3].name, times=100)
    with pytest.raises(ChecksumError, match=pending[3].name):
        load_files(s, workers=2, prefetch=0)
    assert [f[0] for f in _files(db.connect(s))] == [f.name for f in pending[:3]]
    assert _downloads(s) == []  # the bad download and the spill are gone
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("litpulse")]


def test_staged_files_are_reused_and_stale_ones_removed(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    s = _settings(emu, sqlite_settings)
    plan = pending_files(s)
    pending, listed = plan.pending, plan.listed
    assert listed == N_BASELINE + 3 and pending[0].kind == "baseline"
    first, second = pending[0], pending[1]
    got = stage_file(s, second)
    assert got is not None and staged(downloads_folder(s), second) == got
    gets = len(emu.requests(second.name))
    load_files(s, workers=1, prefetch=0, max_files=2)
    assert len(emu.requests(second.name)) == gets  # the staged copy was applied
    # a file staged again after it was applied (a kill between the two): removed at start
    folder = downloads_folder(s)
    (folder / first.name).write_bytes(b"x")
    (folder / f"{first.name}.verified").write_text("0" * 32 + " 1\n")
    load_files(s, workers=1, prefetch=0, max_files=1)
    assert not (folder / first.name).exists()
    # killed inside the removal, between the marker and the file: the file alone stays
    (folder / second.name).write_bytes(b"x")
    load_files(s, workers=1, prefetch=0, max_files=1)
    assert not (folder / second.name).exists()
    # a partial download of a file applied meanwhile (by another process's copy): removed
    (folder / f"{first.name}.part").write_bytes(b"x")
    load_files(s, workers=1, prefetch=0, max_files=1)
    assert not (folder / f"{first.name}.part").exists()
    # a fetcher of the DAG: an applied file is not fetched again
    assert prefetch_file(s, first, window=2) == "applied"
    assert prefetch_file(s, pending[5], window=2) == "staged"
    emu.faults.add("badmd5", path=pending[6].name, times=100)
    assert prefetch_file(s, pending[6], window=2).startswith("left to the writer")


def test_a_failed_prefetch_leaves_the_file_to_the_writer_and_prefetches_the_next(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """One bad download must not end prefetching for the rest of a long bootstrap (every
    later file would then be downloaded by the writer, between two files it applies)."""
    from ingest.bootstrap import _Prefetcher

    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    emu.faults.add("badmd5", path=pending[1].name, times=100)
    stager = _Prefetcher(s, db.connect(s), pending, window=3)
    stager.start()
    folder, deadline = downloads_folder(s), time.monotonic() + 30
    try:
        while time.monotonic() < deadline and not all(
            staged(folder, f) is not None for f in pending[2:4]
        ):
            time.sleep(0.02)
    finally:
        stager.stop()
    assert staged(folder, pending[1]) is None  # left to the writer, which retries it
    assert all(staged(folder, f) is not None for f in pending[2:4])


def test_a_second_writer_is_refused(emu: Emulator, sqlite_settings: Settings) -> None:
    s = _settings(emu, sqlite_settings)
    engine = db.connect(s)
    lease = db.acquire_lease(engine, "bootstrap-writer", holder="otherhost:1:x")
    assert lease is not None
    try:
        with pytest.raises(BootstrapBusyError, match="otherhost"):
            load_files(s, workers=1)
    finally:
        lease.release()


def test_no_other_process_writes_articles_while_the_bootstrap_applies_or_recounts(
    emu: Emulator,
    published: Published,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second writer (here ``litpulse ingest --files`` in another process) would decide
    against the state it read and move in-corpus counts under the final recount: it is
    refused, writes nothing, and goes through once the bootstrap is done."""
    s = _settings(emu, settings)
    engine = db.connect(s)
    extra = tmp_path / "extra.xml.gz"
    first = min(published.manifest.live_pmids)
    citing = article_xml(99_000_001, edat=dt.date(2024, 6, 1), refs=(first,))
    extra.write_bytes(gz(pubmed_set([citing], [])))
    argv = [sys.executable, "-m", "litpulse", "ingest", "--files", str(extra)]
    tried: list[subprocess.CompletedProcess[str]] = []

    def other_writer(name: str, counts: object) -> None:
        if not tried:
            tried.append(subprocess.run(argv, env=child_env(s), cwd=REPO, capture_output=True,
                                        text=True, timeout=120))  # fmt: skip

    in_recount: list[object] = []
    recount = Store.finish_counts

    def observed(self: Store, *args: Any, **kw: Any) -> int | None:
        in_recount.append(db.lease_holder(engine, STORE_LEASE))
        return recount(self, *args, **kw)

    monkeypatch.setattr(Store, "finish_counts", observed)
    load_files(s, workers=1, prefetch=0, on_file=other_writer)
    assert tried[0].returncode == 75  # EX_TEMPFAIL: try again later
    assert "another process" in tried[0].stderr and STORE_LEASE in tried[0].stderr
    assert in_recount and in_recount[0] is not None  # the recount ran under the lease
    with engine.connect() as conn:
        new = conn.execute(select(articles.c.pmid).where(articles.c.pmid == 99_000_001))
        assert new.first() is None
        assert conn.execute(select(func.count()).select_from(ingest_runs)
                            .where(ingest_runs.c.source == "files")).scalar() == 0  # fmt: skip
    assert db.lease_holder(engine, STORE_LEASE) is None
    done = subprocess.run(argv, env=child_env(s), cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _count_mark_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list counting the reads of the deferred-counts checkpoint from now on."""
    reads, get = [0], Store.get_checkpoint

    def counted(self: Store, scope: str, key: str) -> dict[str, Any] | None:
        reads[0] += (scope, key) == COUNTS_CHECKPOINT
        return get(self, scope, key)

    monkeypatch.setattr(Store, "get_checkpoint", counted)
    return reads


def test_citation_counts_wait_for_the_last_file_then_are_recounted_once(
    emu: Emulator, sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bootstrap defers the in-corpus citation counts (see ingest.store) and recounts
    them after the last file; a run killed in the recount finishes it when run again, even
    with no file left to apply. The deferred mark is read once per run that finds no file."""
    s = _settings(emu, sqlite_settings)
    engine = db.connect(s)
    store = Store(engine)
    part = load_files(s, workers=1, prefetch=0, max_files=5)
    assert part.recounted is None and store.counts_deferred()
    # asked for no file while files remain: no recount either (it would be redone anyway)
    none = load_files(s, workers=1, prefetch=0, max_files=0)
    assert (none.applied, none.recounted) == ((), None) and store.counts_deferred()
    assert "waiting" in str(store.status()["citation_counts"])
    rest = load_files(s, workers=1, prefetch=0)
    assert rest.recounted is not None and rest.recounted > 0
    assert not store.counts_deferred() and store.status()["citation_counts"] == "current"
    done = snapshot(engine)
    cited = {p: a["cited_by_in_corpus"] for p, a in done["articles"].items()}
    assert sum(cited.values()) > 100
    # as a kill inside the recount leaves it: the mark set, some counts not yet written
    with engine.begin() as conn:
        conn.execute(articles.update().where(articles.c.pmid % 2 == 0).values(cited_by_in_corpus=0))
    store.set_checkpoint("store", "cited_by_in_corpus", "deferred", {})
    reads = _count_mark_reads(monkeypatch)
    again = load_files(s, workers=1)
    assert again.nothing_to_do and again.recounted is not None and again.recounted > 0
    assert reads == [1]
    assert not differences(snapshot(engine), done)
    # the recount is work: a run records it (and closes the runs killed processes left)
    assert again.run_id is not None
    last = store.runs(1)[0]
    assert (last["id"], last["status"]) == (again.run_id, "succeeded")
    reads[0] = 0
    repeat = load_files(s, workers=1)
    assert repeat.recounted is None and repeat.run_id is None  # nothing deferred: no run
    assert reads == [1]


# ----------------------------------------------------------------------- killed twice


def _progress_sql(engine: Engine) -> str:
    """A count that grows with every committed item kind: rows, tombstones, revisions."""
    a = articles.c
    count = select(
        func.count() + func.count().filter(a.is_deleted.is_(True))
        + func.count().filter(a.version >= 2)
    ).select_from(articles)  # fmt: skip
    return str(count.compile(engine, compile_kwargs={"literal_binds": True}))


def _progress(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(_progress_sql(engine)).scalar_one())


def _kill_at(
    argv: list[str], env: dict[str, str], engine: Engine, s: Settings, at: int, log: Path
) -> int:
    """Run ``litpulse argv``, which SIGKILLs itself once :func:`_progress` reaches ``at``
    (a hook before each of its SQL statements: a poller here could miss a point in the
    last batch, after which the run only closes).

    Returns:
        The most files seen in the staging folder meanwhile.
    """
    most = [0]

    def staged() -> bool:
        most[0] = max(most[0], sum(1 for n in _downloads(s) if n.endswith(".verified")))
        return False

    argv = self_killing(["-m", "litpulse", *argv], engine, _progress_sql(engine), at)
    kill_when(argv, env, staged, log, label=f"kill point {at}", timeout=120)
    return most[0]


def test_killed_twice_at_random_points_resumes_to_the_clean_state(
    emu: Emulator, settings: Settings, tmp_path: Path
) -> None:
    s = _settings(emu, settings)
    engine = db.connect(s)
    load_files(s, workers=1, prefetch=2)
    clean, clean_files = snapshot(engine), _files(engine)
    final = _progress(engine)
    reset(engine)

    seed = int(os.environ.get("LITPULSE_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    first = rng.randrange(1, final // 2)
    env = {**child_env(s), **emu.env(s)}
    argv = ["bootstrap", "--no-embed", "--workers", "1", "--prefetch", "2"]
    staged_most = _kill_at(argv, env, engine, s, first, tmp_path / "child.log")
    # the second point lies beyond what the first child really reached (the poll can
    # overshoot its point): the second child must commit something before its kill
    reached = _progress(engine)
    second = rng.randrange(reached + 1, max(reached + 2, final - 5))
    staged_most = max(staged_most, _kill_at(argv, env, engine, s, second, tmp_path / "child.log"))
    proc = subprocess.run([sys.executable, "-m", "litpulse", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = differences(snapshot(engine), clean)
    assert not diff, f"seed {seed}, killed at {first} and {second}: {diff}"
    assert _files(engine) == clean_files, f"seed {seed}"
    with engine.connect() as conn:
        runs = list(conn.execute(select(ingest_runs.c.status).order_by(ingest_runs.c.id))
                    .scalars())  # fmt: skip
    # each killed process's run is closed as abandoned; the last process records its work
    # as a succeeded run, or, when the second kill came after every commit (the recount
    # done, its run not yet closed), finds nothing to do and says so
    assert runs[:2] == ["abandoned", "abandoned"], f"seed {seed}: {runs}"
    if runs[2:] != ["succeeded"]:
        assert runs[2:] == [], f"seed {seed}: {runs}"
        assert "were applied before" in proc.stdout + proc.stderr, f"seed {seed}"
    assert _downloads(s) == []
    assert staged_most <= 1 + 1 + 2  # the one being applied, 1 worker's next, prefetch 2

    # a repeat does nothing and says so
    proc = subprocess.run([sys.executable, "-m", "litpulse", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 23 listed files were applied before" in proc.stdout + proc.stderr


# ------------------------------------------------ hostile review: spill, feed, counts, order

def test_bootstrap_killed_while_workers_have_spilled_resumes_to_the_clean_state(
    emu: Emulator,  # noqa: F811 - fixture
    sqlite_settings: Settings,
    tmp_path: Path,
) -> None:
    """SIGKILL the writer when a parse worker has spilled a file ahead of it (after at
    least one commit), plant a stale spill folder whose pickles would add a record that
    no file holds, resume with another number of workers: the clean state, nothing
    spilled left over."""
    s = _settings(emu, sqlite_settings)
    engine = db.connect(s)
    load_files(s, workers=1, prefetch=2)
    clean, clean_files = snapshot(engine), _files(engine)
    reset(engine)

    env = {**child_env(s), **emu.env(s)}
    argv = ["bootstrap", "--no-embed", "--workers", "2", "--prefetch", "2"]
    log = tmp_path / "child.log"
    # the writer kills itself at its first SQL statement once a worker has spilled a job
    # ahead of it and something is committed (a poller here could miss the spill)
    spills = str(downloads_folder(s) / "litpulse-spill-*" / "job-*.pkl")
    killed = self_killing(["-m", "litpulse", *argv], engine, _progress_sql(engine), 1,
                          files=spills)  # fmt: skip
    kill_when(killed, env, lambda: False, log, label="a spill ahead", timeout=120)
    assert _files(engine) != clean_files  # killed before the end

    # a stale spill folder of an older run: its items must never reach the store
    stale = downloads_folder(s) / "litpulse-spill-stale"
    stale.mkdir(parents=True, exist_ok=True)
    ghost = prepare(make_record(999_999_999))
    for i in range(N_BASELINE + 3):
        (stale / f"job-{i}.pkl").write_bytes(pickle.dumps([tuple(ghost)]))

    proc2 = subprocess.run([sys.executable, "-m", "litpulse", *argv[:3], "3", *argv[4:]],
                           env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=180)  # fmt: skip
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    diff = differences(snapshot(engine), clean)
    assert not diff, diff
    assert _files(engine) == clean_files
    assert _downloads(s) == []  # no staged file, no spill folder left
    with engine.connect() as conn:
        runs = list(conn.execute(select(ingest_runs.c.status).order_by(ingest_runs.c.id))
                    .scalars())  # fmt: skip
    assert runs[0] == "abandoned" and runs[-1] == "succeeded", runs


# ------------------------------------------------------ Q2: a listed file that is gone


def test_a_listed_file_gone_from_the_server_stops_after_the_files_before_it(
    emu: Emulator,  # noqa: F811 - fixture
    sqlite_settings: Settings,
) -> None:
    """A file listed at the start but answered 404 later (withdrawn meanwhile): the
    bootstrap raises an error naming it, the files before it are applied, no parse
    worker is left and nothing hangs (with prefetch, whose thread meets the 404 first)."""
    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    gone = pending[3]
    listing = emu.listing("baseline")  # listed as before...
    with emu._lock:
        del emu.files["baseline"][gone.name]  # ...but the file and its .md5 answer 404
    original = emu.listing
    emu.listing = lambda kind: listing if kind == "baseline" else original(kind)  # type: ignore[method-assign]
    t0 = time.monotonic()
    with pytest.raises(Exception, match=gone.name) as info:
        load_files(s, workers=2, prefetch=2)
    assert time.monotonic() - t0 < 60
    print(f"raised {type(info.value).__name__}: {info.value}")
    assert [f[0] for f in _files(db.connect(s))] == [f.name for f in pending[:3]]
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("litpulse")]
    assert not [n for n in _downloads(s) if n.startswith("litpulse-spill")]
    runs = Store(db.connect(s)).runs(1)
    assert runs[0]["status"] == "failed"


# ----------------------------------------------- Q3: deferred counts and other writers


def _counts_right(engine: Engine) -> None:
    snapshot(engine)  # asserts every cited_by_in_corpus equals a recount


def _citing_file(path: Path, cited: list[int], revised: int, new: int) -> Path:
    """A local file: a new record citing ``cited``, and ``revised`` revised to cite them."""
    edat = dt.date(2024, 8, 1)
    elements = [
        article_xml(new, edat=edat, refs=tuple(cited)),
        article_xml(
            revised,
            edat=edat,
            mdat=dt.date(2024, 8, 2),
            version=3,
            title=f"Revised locally: {revised}",
            refs=tuple(cited),
        ),  # fmt: skip
    ]
    path.write_bytes(gzip.compress(pubmed_set(elements, [])))
    return path


def test_a_normal_ingest_after_a_killed_bootstrap_keeps_the_mark_and_the_recount_fixes_all(
    emu: Emulator,  # noqa: F811 - fixture
    settings: Settings,
    published: Published,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    """Between a bootstrap cut short (counts deferred) and its resumption, ``ingest
    --files`` writes counts by deltas on stale counts. It must leave the mark set, and
    the resumed bootstrap (here without deferring) must end with every count right."""
    s = _settings(emu, settings)
    engine = db.connect(s)
    store = Store(engine)
    load_files(s, workers=1, prefetch=0, max_files=6)
    assert store.counts_deferred()
    live = sorted(published.manifest.live_pmids)
    cited = live[:3]
    revised = live[5]
    path = _citing_file(tmp_path / "local.xml.gz", cited, revised, max(live) + 50_000)
    ingest_files(s, [path], workers=0)
    assert store.counts_deferred(), "a non-deferred writer cleared the deferred mark"
    rest = load_files(s, workers=1, prefetch=0, defer_counts=False)
    assert rest.recounted is not None
    assert not store.counts_deferred()
    _counts_right(engine)
    mark = store.get_checkpoint(*COUNTS_CHECKPOINT)
    assert mark is not None and mark["status"] == "current"


# --------------------------------------------- a striped job with a never-filled spill


def test_update_files_wait_for_the_baseline_files_a_bootstrap_left(
    emu: Emulator,
    published: Published,
    sqlite_settings: Settings,
) -> None:
    """``litpulse ingest --updatefiles`` (or the nightly on update files) after a bootstrap
    cut short would apply the update files before the baseline files left, and a record
    an update file deletes would come back as a bare tombstone (its content lost): it is
    refused, applies nothing, and the bootstrap then ends as the ordered run ends."""
    s = _settings(emu, sqlite_settings)
    engine = db.connect(s)
    load_files(s, workers=1, prefetch=0)
    clean = snapshot(engine)
    reset(engine)
    load_files(s, workers=1, prefetch=0, max_files=N_BASELINE - 2)
    from ingest.updatefiles import BootstrapUnfinishedError, apply_updates

    files, rows = _files(engine), _article_rows(engine)
    with pytest.raises(BootstrapUnfinishedError, match="2 baseline file.*litpulse bootstrap"):
        apply_updates(s, workers=0)
    assert (_files(engine), _article_rows(engine)) == (files, rows)  # nothing applied
    with engine.connect() as conn:
        last = conn.execute(select(ingest_runs.c.status, ingest_runs.c.error)
                            .order_by(ingest_runs.c.id.desc())).first()  # fmt: skip
    assert last is not None and last.status == "failed" and "bootstrap" in last.error
    load_files(s, workers=1, prefetch=0)
    assert not differences(snapshot(engine), clean)
    apply_updates(s, workers=0)  # the bootstrap is done: update files go through again
    # NLM's next annual baseline (next year's prefix) appears in December: this store's
    # baseline is complete, so its update files go on (no second bootstrap is asked for)
    year = int(published.baseline[0][0][6:8])
    emu.add_file("baseline", f"pubmed{year + 1}n0001.xml.gz", published.baseline[0][1])
    apply_updates(s, workers=0)


def _article_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        a = articles.c
        return [tuple(r) for r in conn.execute(
            select(a.pmid, a.version, a.is_deleted, a.content_hash).order_by(a.pmid))]  # fmt: skip


# ------------------------------------------------- a stopped writer stops its downloads


def _bulky(seed: int, size: int) -> bytes:
    """A whole PubMed document of ``size`` bytes that does not compress (random text in
    a comment): slow to download under a trickle, and whole once downloaded."""
    head, tail = b'<?xml version="1.0"?>\n<PubmedArticleSet>\n<!-- ', b" -->\n</PubmedArticleSet>\n"
    filler = random.Random(seed).randbytes((size - len(head) - len(tail)) // 2).hex()
    return head + filler.encode() + tail


@pytest.mark.parametrize("prefetch", [0, 1], ids=["by the parse feeder", "by the prefetch"])
def test_a_bootstrap_that_raises_mid_download_leaves_nothing_writing(
    emu: Emulator, sqlite_settings: Settings, prefetch: int
) -> None:
    """The writer fails while the next file trickles in (taken by the parse stream's feeder
    thread, or by the prefetch thread): ``load_files`` raises within a moment, the partial
    download is kept (resumed next time), and no thread of it writes on in the staging
    folder once it has returned."""
    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    slow = pending[1]
    big = _bulky(7, 4 << 20)  # 4 MiB at ~200 KB/s: 20 s to download
    emu.add_file("baseline", slow.name, big)
    emu.faults.add("trickle", path=slow.name, times=100, piece=2048, delay=0.01)
    folder = downloads_folder(s)
    part = folder / f"{slow.name}.part"
    raised: list[float] = []

    def fail_mid_download(name: str, counts: object) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (part.exists() and part.stat().st_size):
            time.sleep(0.01)
        raised.append(time.monotonic())
        raise RuntimeError("the writer fails here")

    with pytest.raises(RuntimeError, match="fails here"):
        load_files(s, workers=1, prefetch=prefetch, on_file=fail_mid_download)
    assert time.monotonic() - raised[0] < 5, "load_files waited for the download to end"

    def sizes() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in folder.iterdir()}

    left = sizes()
    assert 0 < left[part.name] < len(big)  # stopped mid-way, kept to be resumed
    time.sleep(0.6)
    assert sizes() == left, "something still writes in the staging folder"
    threads = [t.name for t in threading.enumerate()]
    assert not [n for n in threads if n in ("litpulse-parse-feeder", "bootstrap-prefetch")]
    # the next run resumes the partial download (HTTP Range) and gets the file whole
    emu.faults.clear()
    stage = stage_file(s, slow)
    assert stage is not None and stage.size == len(big)
    assert emu.requests(slow.name)[-1].headers.get("Range") == f"bytes={left[part.name]}-"


# ------------------------------------------- review4: stops that are not honoured (xfail)


def test_a_bootstrap_stopped_during_the_md5_fetch_returns_at_once(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """The writer fails while the feeder fetches the next file's MD5 and the server asks it
    to come back later (429, Retry-After 6 s): load_files returns within a moment."""
    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    slow = pending[1]
    emu.faults.add("429", path=f"{slow.name}.md5", times=1, retry_after="6")

    def fail_during_md5_fetch(name: str, counts: object) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not emu.requests(f"{slow.name}.md5"):
            time.sleep(0.01)
        raised.append(time.monotonic())  # the stop is timed from here, not from the start
        raise RuntimeError("the writer fails here")

    raised: list[float] = []
    with pytest.raises(RuntimeError, match="fails here"):
        load_files(s, workers=1, prefetch=0, on_file=fail_during_md5_fetch)
    assert emu.requests(f"{slow.name}.md5"), "the MD5 was not being fetched"
    assert time.monotonic() - raised[0] < 4, "load_files waited out the server's Retry-After"


class _Interrupted(BaseException):
    """Stands in for Ctrl-C (a KeyboardInterrupt, a BaseException) arriving while the
    writer waits."""


def test_an_interrupt_while_the_writer_waits_for_a_download_stops_it(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """Ctrl-C while the writer waits for the next file, which the feeder downloads: the
    download stops within a chunk and load_files raises at once (the .part is kept)."""
    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    slow = pending[1]
    big = _bulky(8, 2 << 20)  # 2 MiB at ~200 KB/s: ~10 s to download
    emu.add_file("baseline", slow.name, big)
    emu.faults.add("trickle", path=slow.name, times=100, piece=2048, delay=0.01)
    part = downloads_folder(s) / f"{slow.name}.part"

    fired: list[float] = []

    def interrupt(signum: int, frame: object) -> None:
        fired.append(time.monotonic())  # the stop is timed from here, not from the start
        raise _Interrupted("Ctrl-C")

    def interrupt_soon(name: str, counts: object) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (part.exists() and part.stat().st_size):
            time.sleep(0.01)
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # the writer is waiting for slow by then

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(_Interrupted):
            load_files(s, workers=1, prefetch=0, on_file=interrupt_soon)
        took = time.monotonic() - fired[0]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert took < 5, f"load_files waited {took:.1f} s for the download to end"
    assert part.exists() and part.stat().st_size < len(big)


def test_a_staged_file_rewritten_after_its_md5_check_is_not_applied(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """The staged copy of a file changes after it was verified (same size: a rewrite in
    place, a corrupted disk): the bootstrap refuses it or fetches it again; it never
    stores records the published file does not hold."""
    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    f = pending[0]
    edat = dt.date(2024, 1, 2)
    good = pubmed_set([article_xml(p, edat=edat) for p in range(9100001, 9100006)])
    bad = good.replace(b"9100001", b"9200001")
    assert len(bad) == len(good)
    emu.add_file("baseline", f.name, gzip.compress(good, compresslevel=0, mtime=0))
    sf = stage_file(s, f)
    assert sf is not None
    time.sleep(0.01)
    sf.path.write_bytes(gzip.compress(bad, compresslevel=0, mtime=0))  # same size
    assert sf.path.stat().st_size == sf.size
    with contextlib.suppress(LitpulseError):
        load_files(s, workers=0, prefetch=0, max_files=1)
    engine = db.connect(s)
    with engine.connect() as conn:
        pmids = {r[0] for r in conn.execute(select(articles.c.pmid))}
    assert 9200001 not in pmids, "a record the published file does not hold was stored"


def test_a_bootstrap_stopped_during_a_trickling_download_returns_at_once(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """The writer fails while the next file arrives at ~1.3 KB/s (a 16 KiB chunk takes
    ~13 s, each piece well within the read timeout): load_files returns within a moment."""
    s = _settings(emu, sqlite_settings)
    pending = list(pending_files(s).pending)
    slow = pending[1]
    emu.add_file("baseline", slow.name, _bulky(9, 1 << 20))
    emu.faults.add("trickle", path=slow.name, times=100, piece=64, delay=0.05)
    part = downloads_folder(s) / f"{slow.name}.part"

    def fail_mid_download(name: str, counts: object) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not part.exists():
            time.sleep(0.01)
        time.sleep(0.2)
        raised.append(time.monotonic())  # the stop is timed from here, not from the start
        raise RuntimeError("the writer fails here")

    raised: list[float] = []
    with pytest.raises(RuntimeError, match="fails here"):
        load_files(s, workers=1, prefetch=0, on_file=fail_mid_download)
    assert part.exists(), "the download had not started"
    took = time.monotonic() - raised[0]
    assert took < 5, f"load_files waited {took:.1f} s for a chunk of a trickling download"
