"""A hostile review of the newest ingest code: spilling, lazy jobs, deferred counts.

Each test pins one risk of a record silently lost, duplicated or wrong, or of a count
left wrong:

* a bootstrap SIGKILLed while its parse workers have spilled the next files (and a
  stale spill folder of an older run lying in the staging folder) resumes to the state
  of a clean run;
* a listed file the server no longer has stops the bootstrap with an error naming it,
  after the files before it, without hanging;
* a normal (non-deferred) ingest between a killed bootstrap and its resumption leaves
  the counts mark alone, and the final recount makes every count right;
* a striped job one worker has no unit of, started while the caller is behind (so
  spilling), does not stop the next job with a protocol error (the worker announced an
  empty spill file nobody reads);
* update files asked for between a killed bootstrap and its resumption are refused
  (applied before the baseline files left, a deleted record would keep no content);
* a worker's error after its last unit of the last striped job (whose end another
  worker sent) is raised at the end of the stream, not dropped.
"""

from __future__ import annotations

import datetime as dt
import gzip
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from ingest.bootstrap import load_files, pending_files
from ingest.files import ingest_files
from ingest.parallel import parse_ordered
from ingest.parse import source_ref_for
from ingest.rows import prepare
from ingest.store import COUNTS_CHECKPOINT, Store
from litpulse.app.demo.pubmed_xml import article_xml, pubmed_set
from litpulse.core import db
from litpulse.core.schema import articles, ingest_runs
from litpulse.core.settings import Settings
from tests.emulator import Emulator
from tests.ingest.hostile import article, corpus, document
from tests.ingest.test_bootstrap import (  # noqa: F401 - fixtures
    N_BASELINE,
    Published,
    _downloads,
    _files,
    _progress,
    _settings,
    emu,
    published,
)
from tests.ingest.test_crash_resume import REPO, child_env, differences, reset, snapshot
from tests.ingest.test_parallel import key, parse_children
from tests.ingest.test_store import make_record

# --------------------------------------------------------------- Q1: kill while spilled


def _spilled(s: Settings) -> list[Path]:
    folder = s.home / "downloads"
    if not folder.exists():
        return []
    out = []
    for p in folder.glob("litpulse-spill-*/job-*.pkl"):
        try:
            if p.stat().st_size:
                out.append(p)
        except OSError:
            pass
    return out


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
    seen_spill = False
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "litpulse", *argv], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=err, preexec_fn=lambda: os.nice(5),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if _spilled(s) and _progress(engine) >= 1:
                    seen_spill = True
                    break
                time.sleep(0.002)
            finished = proc.poll() is not None
            if not finished:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
    assert not finished, log.read_text(errors="replace")[-2000:]
    assert seen_spill, "no spill file seen before the kill"
    assert _files(engine) != clean_files  # killed before the end

    # a stale spill folder of an older run: its items must never reach the store
    stale = s.home / "downloads" / "litpulse-spill-stale"
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
    pending, _listed = pending_files(s)
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


@pytest.fixture(scope="module")
def one_unit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A document that is not a ``PubmedArticleSet``: one unit, read by part 0."""
    path = tmp_path_factory.mktemp("one-unit") / "other.xml"
    path.write_bytes(b"<Other>" + b"".join(corpus(5)) + b"</Other>")
    return path


@pytest.fixture(scope="module")
def many_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A document of many units (over a megabyte: BATCH_BYTES is 128 KiB)."""
    path = tmp_path_factory.mktemp("many-units") / "big.xml"
    bad = {i: article(i, abstract="z" * 3000) for i in range(1, 600)}
    path.write_bytes(document(corpus(600, bad)))
    return path


def test_a_striped_job_some_worker_has_no_unit_of_while_spilling_reads_on(
    many_units: Path, one_unit: Path, tmp_path: Path
) -> None:
    """Three workers stripe every job; job 1 has one unit (worker 0's; worker 1 sends its
    end), so worker 2 has nothing of it. Started while the caller still reads job 0, it
    opens a spill file anyway and announces it on its queue: job 2's reader then finds
    a message of job 1 there."""
    paths = [many_units, one_unit, many_units]
    want = [[key(it) for it in items] for _i, items in
            parse_ordered([(p, source_ref_for(p)) for p in paths], workers=0)]  # fmt: skip
    assert len(want[0]) > 500
    jobs = ((p, source_ref_for(p)) for p in paths)  # lazy
    got: list[list[tuple[object, ...]]] = []
    for index, items in parse_ordered(jobs, workers=3, stripe=True, spill_dir=tmp_path,
                                      chunk_items=5, queue_batches=1):  # fmt: skip
        first = next(items, None)
        if index == 0:
            time.sleep(1.5)  # the workers run ahead into job 1 and spill it
        got.append(([key(first)] if first is not None else [])
                   + [key(it) for it in items])  # fmt: skip
    assert got == want
    assert not parse_children()


# --------------------------------------------------- the recount racing another writer


@pytest.mark.postgres
def test_update_files_wait_for_the_baseline_files_a_bootstrap_left(
    emu: Emulator,  # noqa: F811 - fixture
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


def _article_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        a = articles.c
        return [tuple(r) for r in conn.execute(
            select(a.pmid, a.version, a.is_deleted, a.content_hash).order_by(a.pmid))]  # fmt: skip


@pytest.fixture(scope="module")
def even_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated file (named ``…0001.xml.gz``) of an even number of units: part 0 of
    two sends its end."""
    from ingest.parse import iter_units
    from litpulse.app.demo.generate import generate_corpus

    folder = tmp_path_factory.mktemp("even")
    for n in range(300, 600, 30):
        (path,) = generate_corpus(folder / str(n), n_records=n, n_files=1, seed=3).files
        total = next(u for u, items in iter_units(path, part=0, parts=1) if items is None)
        if total % 2 == 0 and total > 4:
            return path
    raise AssertionError("no file of an even number of units")


def test_a_worker_error_after_its_last_unit_of_the_last_file_is_not_dropped(
    even_units: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One file split over two workers (``ingest --files`` of one file, an update file):
    part 1 fails once its units are sent, part 0 sends the end. The error is raised at
    the end of the stream (it was dropped: neither raised nor logged)."""
    from tests.ingest.test_parallel import failing_at_end

    jobs = [(even_units, source_ref_for(even_units))]
    with pytest.raises(RuntimeError, match="after the units of part 1"):
        for _index, items in parse_ordered(jobs, workers=2, units=failing_at_end):
            for _item in items:
                pass
    assert not parse_children()
