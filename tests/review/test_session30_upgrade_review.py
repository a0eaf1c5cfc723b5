"""Hostile review (session 30) of b325a2a: ``Store.upgrade_run_ids`` (ingest/store.py), the
fix of J3 (tests/review/test_session28_judged_review.py).

The upgrade, on the first ``Store.apply`` after it, takes the last window run "a check got
through" (``judged_at`` set, or ``succeeded`` with ``details.watermark`` other than
``PENDING_CHECK``: released, withheld, or never held) and gives every window run after it
the rows with ``run_id`` NULL whose ``updated_at`` lies in ``[started_at,
min(finished_at, next run's started_at)]``. Every test drives the real E-utilities client
against the loopback emulator with the session-28 helpers (``_night`` is the nightly DAG's
pair: ``ingest_eutils_window`` then ``check_window``; ``_upgraded_from_older_release`` drops
the columns and the checkpoint as the release before left them), on SQLite and PostgreSQL.
Each defect was also run without the upgrade (this release alone): there it gives the
expected verdict, so each divergence is the upgrade's.

Defects (were strict xfails; fixed in the same session, now plain tests: the upgrade
decides run by run — a run a check judged by the older release's own traces (its
quarantine entries judged, its window released, or withheld by a failed check,
``ingest.runs.CHECK_FAILED``) or a later E-utilities run of all PubMed over days of its
window (``_judged_by_a_check``, ``_covers``) keeps its rows as judged; the others' rows are
bounded by the neighbouring runs that wrote articles, not by their own times):

U1 **Silent dilution: a window whose DAG check FAILED under the older release is taken for
   one killed before its check** (ingest/store.py ``upgrade_run_ids``, the ``through``
   rule ``status == SUCCEEDED and watermark != PENDING_CHECK``; litpulse/pipeline/
   nightly.py ``check_window`` withholds nothing on a failure, only ``run_nightly`` does).
   The DAG's ``data_quality`` task fails Monday's window (10 bad of 510, 1.96 %); that
   check judged it (the older release set ``quarantine.judged_at`` of its entries, whatever
   the outcome; this release would set ``ingest_runs.judged_at`` too), but the run keeps
   ``PENDING_CHECK``. The upgrade gives Monday's 500 good rows the run; the next DAG run,
   reaching back to the held start, takes them over and counts them new: Tuesday's 5 bad
   of 20 new read 5 of 520 (0.96 %) and PASS under ``LITPULSE_MAX_QUARANTINE_RATE`` = 1 %.
   Expected (and this release alone): 5 of 20, failed. Fix: read the older release's own
   trace of a check: a window run with a quarantine entry ``judged_at IS NOT NULL`` was
   judged (set its ``judged_at`` and count it as through); better, have ``check_window``
   (and ``check_ingest``'s failure) record the verdict on the run, e.g. withhold
   ``quality failed`` as ``run_nightly`` does, so this release's ledger says it too. A
   failed DAG check of a window with no quarantined record (empty weekday, staleness)
   leaves no trace in the older release's tables; giving such a window's rows the run
   over-counts only records of a window that failed anyway.
U2 **J3 not fixed when the older release's nightly failed in its iCite step** (the same
   rule: any ``withheld: ...`` is taken as through). ``run_nightly`` runs citations BEFORE
   the check and withholds the window on either failing (``withheld: citations failed:
   TransientSourceError``): no check ran, yet the upgrade leaves the rows NULL (judged);
   the rerun reads the 1,000 good records as reseen and fails on 5 of 5 (100 %), where
   the clean run and this release alone read 5 of 1,005. Fix: only ``withheld: quality
   failed...`` (or the quarantine ``judged_at`` trace of U1) says a check ran; a window
   withheld by ``citations failed`` is not through.
U3 **J3 not fixed when an update-file run came between the killed window and the upgrade**
   (the same ``through``: the max over every succeeded ``WINDOW_SOURCES`` run, an
   ``updatefiles`` run included, and likewise an ``eutils`` run with a ``--query`` or any
   other unheld window). README says to run ``litpulse ingest --updatefiles`` daily beside
   the nightly; one that applied no file (NLM published none yet) succeeds with no
   watermark, moves no watermark (the nightly reruns the killed window) yet counts as "a
   check got through": the killed window's rows stay NULL and its rerun fails 5 of 5.
   Fix: decide per window run rather than by one cut-off: a run is unjudged when its window
   is still held (it is ``PENDING_CHECK``, or ``withheld`` by a step before its check, or
   not succeeded) and no later run of a window covering it passed a check (released
   ``eutils`` runs only; ``updatefiles`` and query runs judge nothing).
U4 **PostgreSQL: the bounds compare two clocks** (``upgrade_run_ids`` compares
   ``articles.updated_at``, stamped by ``db.db_now`` with the SERVER's
   ``clock_timestamp()``, with ``ingest_runs.started_at``/``finished_at``, stamped by the
   writer host's ``utcnow()``). ``db_now`` exists because the hosts' clocks differ; a
   server 2 s ahead puts every row of a run that finished within 2 s of its last batch
   after its ``finished_at`` (a sub-second skew drops the last batch): none gets the run,
   the rerun fails 5 of 5. Fix: bound a run by its neighbours instead (rows after the
   previous run's ``finished_at`` and before the next run's ``started_at``: no writer ran
   between, one writer at a time), or stamp the ledger with ``db_now``, or widen both
   bounds by a tolerance that stays inside the gaps to the neighbouring runs.

Attacks that held (plain tests, or read and found sound):

* ``litpulse nightly``'s failed check (``withheld: quality failed``): through, its rows
  stay NULL, the next night reads 5 of 20 and fails (no dilution).
* Killed mid-ingest and left ``running`` (no ``finished_at``, dead holder): the rerun's
  ``start_run`` closes it ``abandoned`` before the upgrade reads the runs; its rows get its
  run, the rerun resumes its batch, reads 5 of 1,005 and judges it (``resumed_runs``).
* ``ingest --files`` between the killed window and the upgrade, and as the first write
  after it (the upgrade runs inside that files run): only the window's rows get its run
  (the next run's start bounds a span); the files' rows are never the window's; the rerun
  later reads 5 of 1,005.
* The next night's wider window [Mon 02:00, Wed 02:00) (other days: no batch resumed)
  takes the killed run's rows over: 5 of 1,105, as the clean run.
* Once per store: a second process finds the checkpoint and rewrites nothing, not even
  rows later left with no run. The work and its checkpoint are one transaction; on
  PostgreSQL two writers are serialised by the store lease (``apply`` runs inside it), and
  the UPDATE's ``run_id IS NULL`` re-check under READ COMMITTED would skip rows another
  process gave a run meanwhile.
* Read and sound: the session-28 tests' guards (a window passed, or failed part way then
  passed, under the older release stays judged); SQLite bounds compare UTCDateTime text of
  one format (microseconds always written); a row stamped exactly at a boundary goes to
  the earlier run only (``run_id IS NULL`` after its UPDATE). Cost: one SELECT of the
  runs and one UPDATE per unjudged window run through the index on ``updated_at``; the spans
  of unjudged runs after the cut-off are short (a whole-table rewrite would need every
  window run since the store began to be held). Minor: ``runs[i][6]`` reads the watermark
  by position (a label would survive a column added to the SELECT).
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select, update

from ingest import store as store_module
from ingest.files import ingest_files
from ingest.quality import check_ingest
from ingest.store import Store
from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.errors import DataQualityError, TransientSourceError
from litpulse.core.schema import articles, ingest_runs
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from litpulse.pipeline.nightly import ingest_eutils_window
from litpulse.pipeline.planning import withhold_watermark
from tests import emulator as emulation
from tests.ingest.test_windows_review import ReviewEmulator, _at, _night, _settings
from tests.review.test_session28_judged_review import (
    CLEAN,
    MON,
    TUE,
    WED,
    _bad,
    _bulk,
    _owners,
    _tuesday,
    _unjudged,
    _upgraded_from_older_release,
)


def _monday(emu: ReviewEmulator) -> None:
    """Monday's window: 1,000 good records and 5 malformed ones."""
    _bulk(emu, range(1000, 2000), MON)
    _bad(emu, range(2000, 2005), MON)


def _runs(s: Settings) -> list[tuple[int, str, str]]:
    r = ingest_runs.c
    with db.connect(s).connect() as conn:
        return [(i, src, str(st)) for i, src, st in conn.execute(
            select(r.id, r.source, r.status).order_by(r.id)
        )]  # fmt: skip


def _run_of(s: Settings, pmids: range) -> set[int | None]:
    a = articles.c
    with db.connect(s).connect() as conn:
        return set(conn.execute(
            select(a.run_id).where(a.pmid.in_(list(pmids))).distinct()
        ).scalars())  # fmt: skip


# ========================================================================= defects (fixed)


def test_u1_a_window_whose_dag_check_failed_under_the_older_release_stays_judged(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """The nightly DAG's ``data_quality`` task (``check_window``) failed Monday's window
    under the older release (10 bad of 510: 1.96 %); that check judged it (the older
    release marked its quarantine entries judged, whatever the outcome) but
    ``check_window`` withholds nothing: the run stays ``PENDING_CHECK``. After the upgrade
    the next DAG run reaches back to the held start and meets Monday's 500 good records
    again: judged, ``reseen``; Tuesday's 5 bad of 20 new must fail it, as they do under
    this release alone."""
    s = _settings(emu, settings)
    _bulk(emu, range(1000, 1500), MON)
    _bad(emu, range(2000, 2010), MON)
    with pytest.raises(DataQualityError, match=r"10 of 510 records quarantined"):
        _night(s, (_at(MON, 2), _at(TUE, 2)))  # the DAG: ingest_window, then data_quality
    _upgraded_from_older_release(s)
    _tuesday(emu)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        _night(s, (_at(MON, 2), _at(WED, 2)))  # held: from Monday's start


def test_u2_a_window_whose_icite_step_failed_under_the_older_release_reruns_as_the_clean_run(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """``litpulse nightly`` under the older release: the ingest succeeded, the iCite step
    (before the data-quality check) failed, so ``run_nightly`` withheld the window
    (``withheld: citations failed: ...``): no check ran, the window is rerun. After the
    upgrade the rerun must take the 1,000 good records over, as under either release
    alone: 5 of 1,005 (0.5 %) passes."""
    s = _settings(emu, settings, efetch_batch=1000)
    _monday(emu)
    window = (_at(MON, 2), _at(TUE, 2))
    started = dt.datetime.now(dt.UTC)
    ingest_eutils_window(s, *window)
    # run_nightly's except branch when the citations step raised (nightly.py)
    assert withhold_watermark(db.connect(s), window, started,
                              "citations failed: TransientSourceError") == 1  # fmt: skip
    _upgraded_from_older_release(s)
    report = _night(s, window)  # 5 of 5 (100 %) under b325a2a
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(CLEAN, abs=1e-6)
    assert _unjudged(s) == []


def test_u3_an_update_file_run_between_the_killed_window_and_the_upgrade(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Monday's window killed before its check (older release); the daily ``litpulse
    ingest --updatefiles`` then ran and applied no file (NLM published none yet), which
    moves no watermark: the next nightly reruns Monday's window. Under this release alone
    (or with no update-file run between) the rerun reads 5 of 1,005 and passes."""
    s = _settings(emu, settings, efetch_batch=1000)
    _monday(emu)
    window = (_at(MON, 2), _at(TUE, 2))
    ingest_eutils_window(s, *window)  # killed before its check
    counts = apply_updates(s)  # nothing listed: no file applied, the run succeeds
    assert counts.inserted == 0 and _runs(s)[-1][1:] == ("updatefiles", "succeeded")
    _upgraded_from_older_release(s)
    report = _night(s, window)
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(CLEAN, abs=1e-6)


@pytest.mark.postgres
def test_u4_a_database_clock_ahead_of_the_writers_still_finds_the_killed_windows_rows(
    emu: ReviewEmulator, pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL on its own host, its clock 2 s ahead of the ingest host's (the case
    ``db.db_now`` stamps rows by the server's clock for). The older release's window,
    killed before its check, finished within 2 s of its last batch: the rows it wrote
    lie after its ``finished_at``. On SQLite (one host, one clock) this cannot happen."""
    s = _settings(emu, pg_settings, efetch_batch=1000)
    _monday(emu)
    window = (_at(MON, 2), _at(TUE, 2))
    from ingest import runs as runs_module

    real = runs_module.utcnow
    monkeypatch.setattr(runs_module, "utcnow", lambda: real() - dt.timedelta(seconds=2))
    ingest_eutils_window(s, *window)  # the older release's run, killed before its check
    monkeypatch.setattr(runs_module, "utcnow", real)
    _upgraded_from_older_release(s)
    report = _night(s, window)
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(CLEAN, abs=1e-6)


# ========================================================================= attacks that held


def test_a_window_whose_nightly_check_failed_under_the_older_release_stays_judged(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """``litpulse nightly`` (not the DAG) withholds a window whose check failed
    (``withheld: quality failed: ...``): the upgrade reads it as through its check, gives
    its rows no run, and the next night reads Tuesday's 5 bad of 20 undiluted."""
    s = _settings(emu, settings)
    _bulk(emu, range(1000, 1500), MON)
    _bad(emu, range(2000, 2010), MON)
    monday = (_at(MON, 2), _at(TUE, 2))
    started = dt.datetime.now(dt.UTC)
    counts = ingest_eutils_window(s, *monday)
    with pytest.raises(DataQualityError, match=r"10 of 510 records quarantined"):
        check_ingest(s, counts.to_dict(), monday)
    # run_nightly's except branch when the quality step raised (nightly.py)
    withhold_watermark(db.connect(s), monday, started, "quality failed: DataQualityError")
    _upgraded_from_older_release(s)
    assert _owners(s) == {None: 500}
    _tuesday(emu)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        _night(s, (_at(MON, 2), _at(WED, 2)))


def test_a_window_killed_mid_ingest_left_running_then_abandoned_reruns_as_the_clean_run(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """The older release's window was killed after its first batch: its run stays
    ``running`` (no ``finished_at``) with a dead holder. The rerun's ``start_run`` closes
    it ``abandoned`` (``finished_at`` now), then the upgrade gives its 500 rows its run
    (bounded by the rerun's start): the rerun resumes its batch, reads 5 of 1,005 and
    judges it (``resumed_runs``)."""
    s = _settings(emu, settings, efetch_batch=500, max_retries=0)
    _monday(emu)
    emu.faults.add("503", path="efetch", times=1, after=1)
    window = (_at(MON, 2), _at(TUE, 2))
    with pytest.raises(TransientSourceError):
        ingest_eutils_window(s, *window)
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = f"{socket.gethostname()}:{dead.pid}:-:{db._boot_mark()}:deadbeef"
    with db.connect(s).begin() as conn:  # as the kill left it: running, no end
        conn.execute(update(ingest_runs).values(
            status=RunStatus.RUNNING, finished_at=None, error=None, details={"holder": holder,
            "watermark": "pending: its data-quality check has not passed yet"}))  # fmt: skip
    _upgraded_from_older_release(s)
    report = _night(s, window)
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(CLEAN, abs=1e-6)
    runs = _runs(s)
    assert [st for _, _, st in runs] == ["abandoned", "succeeded"] and _unjudged(s) == []
    assert None not in _owners(s)  # its resumed batch's rows carry it, judged with the rerun


def test_files_runs_before_and_after_the_upgrade_keep_their_rows(
    emu: ReviewEmulator, settings: Settings, tmp_path: Path
) -> None:
    """Monday's window killed before its check; ``litpulse ingest --files`` then stored
    10 other records (older release), and after the upgrade the first write is another
    files run (the upgrade runs inside it). Only the window's 1,000 rows get its run (the
    first files run bounds its span); the files' rows are not the window's; the rerun,
    later, reads 5 of 1,005."""
    s = _settings(emu, settings, efetch_batch=1000)
    _monday(emu)
    window = (_at(MON, 2), _at(TUE, 2))
    ingest_eutils_window(s, *window)  # killed before its check
    for name, pmids in (("one.xml", range(5000, 5010)), ("two.xml", range(6000, 6010))):
        (tmp_path / name).write_bytes(emulation.pubmed_set(
            [emulation.article_xml(p, edat=MON) for p in pmids]
        ))  # fmt: skip
    ingest_files(s, [tmp_path / "one.xml"], workers=0)
    _upgraded_from_older_release(s)
    ingest_files(s, [tmp_path / "two.xml"], workers=0)  # the first write: upgraded here
    killed, _, second = (run_id for run_id, _, _ in _runs(s))
    assert _run_of(s, range(1000, 2000)) == {killed}
    assert _run_of(s, range(5000, 5010)) == {None} and _run_of(s, range(6000, 6010)) == {second}
    report = _night(s, window)
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(CLEAN, abs=1e-6)


def test_the_next_nights_wider_window_takes_the_killed_windows_rows_over(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Killed before its check on Monday night; the upgrade; Tuesday night's nightly
    reaches back to the held start: window [Mon 02:00, Wed 02:00), other days, so no
    batch is resumed. It meets the killed run's 1,000 rows and takes them over: 5 bad of
    1,105 new (0.45 %) passes, as the clean run; without them 5 of 105 would fail."""
    s = _settings(emu, settings, efetch_batch=1000)
    _monday(emu)
    ingest_eutils_window(s, _at(MON, 2), _at(TUE, 2))  # killed before its check
    _upgraded_from_older_release(s)
    _bulk(emu, range(3000, 3100), TUE)
    report = _night(s, (_at(MON, 2), _at(WED, 2)))
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(5 / 1105, abs=1e-6)
    assert None not in _owners(s)


def test_the_upgrade_runs_once_per_store(emu: ReviewEmulator, settings: Settings) -> None:
    """A second process (the per-process memo cleared) finds the checkpoint and rewrites
    nothing: rows written after the upgrade with no run (``apply`` without ``run_id``)
    are not given the killed run later."""
    s = _settings(emu, settings, efetch_batch=1000)
    _monday(emu)
    ingest_eutils_window(s, _at(MON, 2), _at(TUE, 2))
    _upgraded_from_older_release(s)
    store = Store(db.connect(s))
    assert store.upgrade_run_ids() == 1000
    with db.connect(s).begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid < 1100).values(run_id=None))
    store_module._RUN_IDS_CURRENT.clear()
    assert Store(db.connect(s)).upgrade_run_ids() == 0
    assert _owners(s)[None] == 100
