"""Hostile review (session 34g) of this session's fixes, for regressions and holes.

Reviewed: :func:`litpulse.core.db.retry_conflicts` and its callers (the ingest batch of
:meth:`ingest.store.Store.apply`, the iCite API batch of :mod:`ingest.citations`, the
snapshot batch of :mod:`ingest.icite_snapshot`) and the driver errors of the bulk paths
(``driver_errors``); the store-writer lease checked per batch and leases judged by the
database's clock; the watermark rules of update-file runs (``details.left``,
``details.update_files``, :func:`ingest.records.baseline_frozen_by`); the period ends'
catch-up run by the API and an ingest at once; the nightly's citations wait and its
retrain failure; a full disk under an index version.

Every test drives the real code, on SQLite and PostgreSQL where the store matters. Each
defect was a strict xfail asserting the correct behaviour before its fix:

* G1: the snapshot's staging ``COPY`` runs inside :func:`litpulse.core.db.driver_errors`
  (made public for it), still as text (the server checks each value's range).
* G2: :meth:`ingest.store.Store.upgrade_checkless_runs` runs before every write (one query
  of the small ledger), not once per store behind a checkpoint.
* G3: each range of :meth:`ingest.store.Store.recount_all` (and
  :meth:`~ingest.store.Store.recompute_cited_by`'s transaction) runs in
  :func:`litpulse.core.db.retry_conflicts`.

Defects:

G1 **A driver error in the snapshot load's ``COPY`` escapes raw.** The session made the
   bulk paths' driver errors SQLAlchemy's (``driver_errors``: a deadlock in a ``COPY``
   is run again by ``retry_conflicts``, a full disk is said so, exit 2). The iCite
   snapshot's own ``COPY`` into its staging table (``icite_snapshot._copy_update``) was
   left out: a driver error there (a full disk, the server gone, a value the column
   refuses) is a raw ``psycopg`` error, which ``retry_conflicts`` cannot read and the CLI
   does not know (a traceback).
G2 **A run an older release writes after the upgrade stays unjudged for ever.**
   ``Store.upgrade_checkless_runs`` (34f X1) judges the runs of files and update files an
   older release left unjudged, once per store (a checkpoint). In a rolling upgrade the
   older writer goes on (the very case 34f X2 guards for the period ends): the runs it
   opens after the checkpoint, and the one it was running at the upgrade, are never
   judged; the records they stored, met again, count as new (not ``reseen``) and the next
   window takes them over, diluting its data-quality check (X1 again).
G3 **A recount PostgreSQL rolls back to break a deadlock fails its run.** The session ran
   a deadlocked ingest batch, iCite batch and snapshot batch again
   (``retry_conflicts``), but not the recount of the in-corpus counts
   (:meth:`ingest.store.Store.recount_all`, a range per transaction: a bootstrap's last
   step, ``finish_counts``), which locks the rows of its range as a citation load (no
   lease) locks them in another order: the recount is rolled back and the bootstrap's
   last call fails after every file was applied.
G4 **A bootstrap killed after its last file never moves the watermark.** Only a succeeded
   update-file run makes the watermark (``planning.last_watermark``); a bootstrap killed
   in its closing recount (or after its last commit) is closed ``abandoned``, and the call
   that finishes it applies no file (a recount-only run, or nothing to do): no run of
   the bootstrap ever counts, the watermark stays where it was (none on a new store), and
   the first E-utilities nightly ingests the last day only: the days between what the
   bootstrap's files held and that day are never searched, silently. **Fixed** (after
   the review): the call that finds nothing pending and completes a killed run (the run
   that applied the newest file, not succeeded) is recorded with ``details.completes``
   (that run's start and files: ``ingest.bootstrap._completes``), and reaches as far as
   that run does; tested killed in the recount and after the last commit.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from ingest import icite_snapshot
from ingest.bootstrap import load_files
from ingest.runs import recorded_run
from ingest.store import COUNTS_CHECKPOINT, Store
from litpulse.core import db
from litpulse.core.schema import checkpoints, ingest_runs
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from litpulse.core.timeutil import utcnow
from litpulse.pipeline.planning import KEPT_CHAIN, last_watermark
from tests.emulator import Emulator, running_emulator
from tests.ingest.test_bootstrap import Published, _settings, published  # noqa: F401
from tests.ingest.test_store import make_record

AS_OF = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


# ---------------------------------------------------------------------------- G1


@pytest.mark.postgres
def test_g1_a_driver_error_in_the_snapshot_copy_is_sqlalchemys(pg_settings: Settings) -> None:
    """Any driver error of the staging ``COPY`` stands in for a full disk or a lost server
    (neither can be had in a test): a value the staging column refuses."""
    engine = db.connect(pg_settings)
    Store(engine).apply([make_record(5001)])
    values = {
        "citation_count": 2**40,
        "relative_citation_ratio": 1.0,
        "citations_per_year": 1.0,
        "icite_year": 2020,
        "icite_provisional": False,
    }
    batch = icite_snapshot.Batch(values={5001: values}, rows=1, offset=1, line=2)
    with pytest.raises(DBAPIError) as raised, engine.begin() as conn:
        icite_snapshot._write(conn, batch, AS_OF, 0)
    assert raised.value.orig is not None
    with engine.connect() as conn:  # the connection is usable again
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


# ---------------------------------------------------------------------------- G2


def test_g2_a_run_an_older_writer_makes_after_the_upgrade_is_judged(settings: Settings) -> None:
    engine = db.connect(settings)
    store = Store(engine)
    store.apply([make_record(6001)])  # this release wrote first: the upgrade ran
    # an older release's writer (a rolling upgrade) runs a file: it judges nothing
    with engine.begin() as conn:
        old = conn.execute(insert(ingest_runs).values(
            source="files", target="older.xml", status=RunStatus.RUNNING, details={},
            started_at=utcnow()).returning(ingest_runs.c.id)).scalar_one()  # fmt: skip
    store.apply([make_record(6002)], run_id=old)
    with engine.begin() as conn:
        conn.execute(update(ingest_runs).where(ingest_runs.c.id == old)
                     .values(status=RunStatus.SUCCEEDED, finished_at=utcnow()))  # fmt: skip
    # a later ingest of this release meets the same record again
    with recorded_run(store, "files", target="again.xml", judged=True) as run:
        counts = store.apply([make_record(6002)], run_id=run.id)
    assert (counts.unchanged, counts.reseen) == (1, 1)
    with engine.connect() as conn:
        assert conn.execute(select(ingest_runs.c.judged_at)
                            .where(ingest_runs.c.id == old)).scalar() is not None  # fmt: skip


# ---------------------------------------------------------------------------- G3


@pytest.mark.postgres
def test_g3_a_recount_rolled_back_for_a_deadlock_runs_again(pg_settings: Settings) -> None:
    """The other writer is the test's transaction, locking rows as a citation load does
    (no lease): it holds 200; the recount locks the first row of its range and waits for
    200; the other writer then asks for 100 and 300: a cycle. The recount began waiting
    first, so its deadlock check (deadlock_timeout after) finds it: it is rolled back."""
    from tests.review.test_session34a_review import _waiting_on_locks

    engine = db.connect(pg_settings)
    store = Store(engine)
    store.apply([make_record(p) for p in (100, 200, 300)])
    with engine.begin() as conn:  # counts a deferred load left to the recount
        conn.execute(text("UPDATE articles SET cited_by_in_corpus = 9"))
    errors: list[BaseException] = []
    changed: list[int] = []

    def recount() -> None:
        try:
            changed.append(store.recount_all())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker: Any = threading.Thread(target=recount)
    with engine.connect() as other:
        tx = other.begin()
        other.execute(text("SELECT pmid FROM articles WHERE pmid = 200 FOR UPDATE")).all()
        worker.start()
        _waiting_on_locks(engine, 1)
        other.execute(text("UPDATE articles SET title = title WHERE pmid IN (100, 300)"))
        tx.commit()
    worker.join(30)
    assert errors == [] and changed == [3]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT max(cited_by_in_corpus) FROM articles")).scalar() == 0


# ---------------------------------------------------------------------------- G4


@pytest.fixture
def mirror(published: Published) -> Any:  # noqa: F811 - the fixture imported
    """The bootstrap tests' NLM mirror: a baseline and three update files."""
    for emu in running_emulator():
        for name, data in published.baseline:
            emu.add_file("baseline", name, data)
        for name, data in published.updates:
            emu.add_file("updatefiles", name, data)
        yield emu


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
@pytest.mark.parametrize("in_recount", [True, False], ids=["in-recount", "after-commit"])
def test_g4_a_bootstrap_killed_in_its_recount_moves_the_watermark(
    mirror: Emulator, settings: Settings, in_recount: bool
) -> None:
    s = _settings(mirror, settings)
    engine = db.connect(s)
    load_files(s, workers=1)
    reached = last_watermark(s, engine)
    assert reached is not None  # the bootstrap reached the day before it started
    # the state a SIGKILL in the closing recount leaves: every file applied and recorded,
    # the counts still deferred, the run left running by a process now gone
    with engine.begin() as conn:
        gone = f"{socket.gethostname()}:999999999:review34g"
        conn.execute(update(ingest_runs).values(status=RunStatus.RUNNING, finished_at=None,
                                                details={"holder": gone, "files": []}))  # fmt: skip
        # and the watermark's chain as the killed run left it: none kept of it (the call
        # above kept the run succeeded, which this rewrite of history takes back)
        conn.execute(delete(checkpoints).where(checkpoints.c.scope == KEPT_CHAIN[0]))
    if in_recount:
        Store(engine).set_checkpoint(*COUNTS_CHECKPOINT, "deferred",
                                     {"since": utcnow().isoformat()})  # fmt: skip
    assert last_watermark(s, engine) is None  # the killed run counts for nothing yet
    report = load_files(s, workers=1)  # the operator runs the bootstrap again: it finishes
    assert (report.recounted is not None) == in_recount
    # as far as the killed run that applied every file reaches (its listing), not the
    # completing call's start: it applied nothing and lists what a lagging mirror holds
    assert last_watermark(s, engine) == reached
