"""Hostile review (session 30b) of b325a2a and aa2d47b: ``Store.upgrade_run_ids`` with
``_judged_by_a_check`` and ``_covers`` (ingest/store.py), ``Store.judged_among``, and the
resume of an older release's batch checkpoint in ingest/eutils.py ``_fetch_batch``.

U1-U4 of tests/review/test_session30_upgrade_review.py (fixed) are not repeated. Every test
drives the real E-utilities client against the loopback emulator with the session-28 and
session-30 helpers (``_night``: a window ingested and held, then its check, as the nightly
DAG and ``litpulse nightly`` run it; ``_upgraded_from_older_release``: the store as the
release before ``articles.run_id`` left it), on SQLite and PostgreSQL. The older release is
modelled as session 28 does (this release's code, then its traces removed), plus what that
release did differently where a finding needs it: its batch checkpoints counted no
``reseen`` (``_older_checkpoints``), its check marked judged only the entries of the runs of
its exact window (``_mark_judged`` of 3226260: no ``resumed_runs``), its ``ingest_window``
counts (the DAG's XCom) carried no ``reseen``. Each defect was also run under this release
alone (no upgrade): V1-V4 give the expected verdict there, so the divergence is the
upgrade's; V5 is wrong under this release alone as well.

Defects (were strict xfails asserting the correct behaviour; fixed in the same session,
now plain tests: V1 a resumed older checkpoint's batch hands the runs that wrote its
unjudged rows to the rerun's check (``Store.judged_among``, ``resumed_runs``); V2 a run is
bounded below by the last run that had ended when it began; V3 the upgrade judges the runs
it keeps, and their entries; V4 ``check_ingest`` counts an older release's ``reseen`` from
the window's listed PMIDs (``ingest.eutils.listed_pmids``); V5 a run no check is to come
for (files, update files, a bootstrap, a window by hand) is judged as it opens and its
entries as it closes, however it ends (``recorded_run(judged=True)``), and only
E-utilities runs are the upgrade's candidates):

V1 **Silent dilution: a resumed older-release batch counts the rows of a killed run new,
   but leaves them that run's, unjudged; the next night counts them new again**
   (ingest/eutils.py ``_fetch_batch``: ``reseen = min(unchanged, judged_among(batch))``,
   then nothing; ingest/quality.py ``_mark_judged`` judges the runs of the window and the
   runs in ``resumed_runs``, taken from the checkpoints' ``run_id``). ``litpulse
   nightly`` under the older release: Monday's window K ``[Mon 02, Tue 02)`` stored 1,000
   records entered early Tuesday and was killed before its check (held); Tuesday night's
   window F ``[Mon 02, Wed 02)`` (reaching back) met them in its first two batches and
   failed in its third (EFetch 503). After the upgrade K's 1,000 rows carry K (right: no
   check judged K). The rerun R at 08:00 (same days: it resumes F's batches) counts them
   new through ``judged_among`` (right: as the clean run would, 0 of 1,510 bad), but a
   resumed batch writes nothing: the rows keep K, and R's check judges R and F, not K.
   Wednesday night ``[Wed 08, Thu 02)`` meets them on its overlap day (Tuesday), takes them
   over and counts them new a second time: Wednesday's 5 bad of 20 new read 5 of 1,020
   (0.49 %) and PASS. Under this release alone F took them over in its batches, R's check
   judged F, and Wednesday fails 5 of 20. (The same with the DAG's one window is held by
   ``_mark_judged``: K has R's window; see the attacks that held.) Fix: when a resumed
   checkpoint has no ``reseen``, do what meeting the batch would have done: take the
   batch's rows (and quarantine entries) of runs no check judged over to this run
   (``UPDATE articles SET run_id = :run WHERE pmid IN batch AND run_id IN unjudged``), or
   add their runs to ``details["resumed_runs"]`` so the window's check judges them.
V2 **J3 back: a run closed as abandoned after later runs hides the killed window's rows**
   (``upgrade_run_ids``: a run's lower bound is ``runs[i - 1].finished_at``; runs are
   ordered by ``started_at``; ``RunLedger.close_abandoned_runs`` closes a dead run only
   from its own host, stamping ``finished_at`` = when it was noticed). Airflow with two
   workers: a window X killed on worker A is left ``running`` (worker B cannot judge A's
   PIDs); Monday's window K runs on worker B and is killed before its check. After the
   upgrade, the rerun lands on worker A: its ``start_run`` closes X with ``finished_at`` =
   now, then the upgrade bounds K's rows by ``updated_at > X.finished_at``: none. K's 1,000
   good rows stay NULL (judged), the rerun reads them as reseen and fails 5 of 5 (100 %)
   where the clean run, and this release alone, read 5 of 1,005. Fix: bound a run below by
   the latest ``finished_at`` of the runs before it that is not after its own
   ``started_at`` (an ``abandoned`` run's ``finished_at`` is its closer's time, not its
   end: use its ``started_at`` or its last batch checkpoint's time instead).
V3 **J3-type: the upgrade keeps a run's rows judged but not its quarantine entries**
   (``upgrade_run_ids`` reads ``quarantine.judged_at`` but never writes it). The older
   release's J1: ``litpulse nightly`` failed part way on Monday (its first batch stored
   Monday's 5 bad records: entries of run F), the rerun at 08:00 (another end, same days)
   resumed that batch and passed, and that release's ``_mark_judged`` judged the entries
   of the rerun's exact window only; F's stay unjudged. The upgrade rightly keeps F's rows
   judged (``_covers``: the rerun passed over its window), but Tuesday night meets
   Monday's records on its overlap day: 1,000 good as reseen, the 5 bad as new (an entry
   no check judged is taken over): 5 of 25 (20 %), FAILED, where this release alone
   reads them requarantined (0 of 20) and passes. Fix: in the same transaction, mark
   judged (``quarantine.judged_at``, and ``ingest_runs.judged_at``) the runs the upgrade
   keeps as judged: ``through`` or covered.
V4 **Silent dilution: an older release's ingest checked after the upgrade** (ingest/
   quality.py ``counts_as_dict``: "counts a mapping lacks are 0"; aa2d47b fixed the same
   for batch checkpoints, not for the counts the check is handed). The nightly DAG's
   ``ingest_window`` ran under the older release: its XCom counts have no ``reseen``; the
   release is deployed before ``data_quality`` runs (a deploy while a DAG run is between
   tasks, or the operator clearing a ``data_quality`` that failed for another cause, as
   the DAG's doc says). ``check_window`` reads Monday's 500 records met again as new:
   Tuesday's 5 bad of 20 read 5 of 520 (0.96 %) and PASS. Fix: counts without ``reseen``
   are an older release's: fail closed naming the cure (clear ``ingest_window`` with its
   downstream: the window is ingested again under this release), or compute ``reseen``
   (``Store.judged_among`` over the window's listed PMIDs, its search checkpoint, less
   what its own runs wrote).
V5 **Silent dilution: rows of a failed update-file run are unjudged for good** (``
   _judged_by_a_check``: "not succeeded ... was judged by nothing"; ``_covers`` never
   covers an update-file run; ingest/updatefiles.py ``apply_updates`` calls
   ``judge_runs`` only after success). ``litpulse ingest --updatefiles`` (README: daily,
   beside the nightly) applied the day's file (1,000 records of Tuesday) and failed on the
   next one (ChecksumError). No check is ever to come for it and the file is never
   applied again, yet the upgrade gives its rows its run: Tuesday night meets them,
   takes them over and counts them new: 5 bad of 1,020 (0.49 %) PASS; expected 5 of 20,
   failed (an update file's records are "taken as they came", reseen, as after a run that
   succeeded). This release alone does the same (the failed run is never judged), so the
   test runs both. Cost, by reading: with the per-run rule there is no cut-off any more;
   every failed or abandoned update-file run since the store began has its rows rewritten
   on the first write after the upgrade, a bootstrap killed part way (source
   ``updatefiles``) millions in one UPDATE inside the store lease. Fix: only E-utilities
   runs held for a check (``PENDING_CHECK``, or withheld by a step before it) are
   candidates; update-file and bootstrap runs keep NULL whatever their status; and
   ``apply_updates`` (and the bootstrap, and a window by hand) judges its run in a
   ``finally``: what it committed is applied for good, with no check to come.

Attacks that held (plain tests below, or read and found sound):

* V1's sequence on the DAG's one window (Monday's run killed, the cleared rerun failing
  part way under the older release, the last rerun after the upgrade): ``_mark_judged``
  judges every run of the window, the killed one included; Tuesday reads 5 of 20.
* An older-release checkpoint resumed twice (the first rerun after the upgrade fails
  again, a second resumes both): ``resumed_counts`` starts empty per run, the batch's
  ``reseen`` is counted once, Tuesday reads 5 of 20 and fails.
* ``litpulse nightly``'s next, wider window passing under the older release covers the
  killed one (``_covers``): its rows stay NULL, and the night after the upgrade reads
  their overlap day as reseen: 5 of 20, failed.
* Read and sound: ``judged_among`` is one COUNT per chunk through the primary key with an
  IN over ``ingest_runs`` (small), and runs only for an older release's checkpoint; runs
  with equal ``started_at`` are ordered by id (one writer at a time); ``_covers`` is false
  on any NULL window (update-file runs, never a covering run); an old DAG run whose check
  passed (released) before a killed one keeps its rows NULL (session 28's guard); a
  tombstone of an unknown PMID in a batch counts ``unchanged`` and never ``reseen``
  (its row has the batch's run), as a clean run counts it.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from sqlalchemy import select, update

from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.errors import ChecksumError, DataQualityError, TransientSourceError
from litpulse.core.schema import checkpoints, ingest_runs, quarantine
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from litpulse.pipeline.nightly import check_window, ingest_eutils_window
from tests import emulator as emulation
from tests.ingest.test_windows_review import ReviewEmulator, _at, _night, _settings
from tests.review.test_session28_judged_review import (
    CLEAN,
    MON,
    THU,
    TUE,
    WED,
    _bad,
    _bulk,
    _owners,
    _tuesday,
    _unjudged,
    _upgraded_from_older_release,
)


def _older_checkpoints(s: Settings) -> None:
    """The batch checkpoints as the older release wrote them: no ``reseen`` count."""
    with db.connect(s).begin() as conn:
        for key, value in conn.execute(
            select(checkpoints.c.key, checkpoints.c.value).where(checkpoints.c.scope == "eutils")
        ).all():
            if "counts" in value:
                counts = {k: v for k, v in value["counts"].items() if k != "reseen"}
                conn.execute(checkpoints.update().where(checkpoints.c.key == key)
                             .values(value={**value, "counts": counts}))  # fmt: skip


def _wednesday(emu: ReviewEmulator) -> None:
    """Wednesday's 20 new records, 5 of them malformed: 25 % of what is new."""
    _bulk(emu, range(3000, 3015), WED)
    _bad(emu, range(3015, 3020), WED)


def _dead_holder_here() -> str:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return f"{socket.gethostname()}:{dead.pid}:-:{db._boot_mark()}:deadbeef"


# ========================================================================= defects (fixed)


def test_v1_a_resumed_older_release_batch_leaves_no_killed_rows_to_count_twice(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """``litpulse nightly``: K killed before its check, F (held, wider) failed in its
    third batch, both under the older release; after the upgrade R resumes F's batches;
    Wednesday must read its 5 bad of 20 undiluted, as under this release alone."""
    s = _settings(emu, settings, efetch_batch=500, max_retries=0)
    _bulk(emu, range(900, 910), MON)
    _bulk(emu, range(1000, 2000), TUE)  # entered early on Tuesday: K meets them
    ingest_eutils_window(s, _at(MON, 2), _at(TUE, 2))  # K: killed before its check
    _bulk(emu, range(2000, 2500), TUE)
    emu.faults.add("503", path="efetch", times=1, after=2)  # F's third batch fails
    with pytest.raises(TransientSourceError):
        ingest_eutils_window(s, _at(MON, 2), _at(WED, 2))  # F: Tuesday night, held start
    _older_checkpoints(s)
    _upgraded_from_older_release(s)
    report = _night(s, (_at(MON, 2), _at(WED, 8)))  # R at 08:00: same days, resumes F's
    assert report["ok"] and report["records"] == 1510  # K's rows new to it: right
    _wednesday(emu)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        _night(s, (_at(WED, 8), _at(THU, 2)))  # 5 of 1,020 (0.49 %) passes


def test_v2_a_run_abandoned_late_does_not_hide_the_killed_windows_rows(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Two workers: X killed on worker A (left ``running``), Monday's window K killed
    before its check on worker B, both under the older release; after the upgrade the
    rerun runs on worker A, whose ``start_run`` closes X now. The rerun must read 5 of
    1,005, as the clean run and this release alone do."""
    s = _settings(emu, settings, efetch_batch=1000)
    sat = MON - (TUE - MON) * 2
    _bulk(emu, range(100, 110), sat)
    ingest_eutils_window(s, _at(sat, 2), _at(sat, 20))  # X, on worker A: killed
    with db.connect(s).begin() as conn:  # as the kill left it: running, holder on A
        conn.execute(update(ingest_runs).where(ingest_runs.c.id == 1).values(
            status=RunStatus.RUNNING, finished_at=None, error=None,
            details={"holder": "worker-a:4242:-:0badb007:deadbeef"}))  # fmt: skip
    _bulk(emu, range(1000, 2000), MON)
    _bad(emu, range(2000, 2005), MON)
    monday = (_at(MON, 2), _at(TUE, 2))
    ingest_eutils_window(s, *monday)  # K, on worker B: killed before its check
    _upgraded_from_older_release(s)
    with db.connect(s).begin() as conn:  # the rerun runs on worker A: X's holder is dead
        conn.execute(update(ingest_runs).where(ingest_runs.c.id == 1)
                     .values(details={"holder": _dead_holder_here()}))  # fmt: skip
    report = _night(s, monday)  # 5 of 5 (100 %): K's 1,000 rows read as judged
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(CLEAN, abs=1e-6)


def test_v3_the_entries_of_a_run_the_upgrade_keeps_judged_are_judged(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Older release: ``litpulse nightly`` failed after its first batch (Monday's 5 bad
    records, valid XML with an out-of-range version, are its entries); the rerun at 08:00
    resumed it and passed, judging its own window's entries only (that release's J1).
    Tuesday night meets Monday's records again: all judged, 0 new bad of 20."""
    s = _settings(emu, settings, efetch_batch=500, max_retries=0)
    for pmid in range(900, 905):  # the first batch's
        emu.add_article(pmid, edat=MON, xml=emulation.article_xml(pmid, edat=MON).replace(
            b'<PMID Version="1">', b'<PMID Version="1000">'))  # fmt: skip
    _bulk(emu, range(1000, 2000), MON)
    emu.faults.add("503", path="efetch", times=1, after=2)  # the second batch fails
    with pytest.raises(TransientSourceError):
        _night(s, (_at(MON, 2), _at(TUE, 2)))
    report = _night(s, (_at(MON, 2), _at(TUE, 8)))  # same days, resumed, passed
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(CLEAN, abs=1e-6)
    with db.connect(s).begin() as conn:  # that release judged the rerun's entries only
        assert conn.execute(update(quarantine).where(quarantine.c.run_id == 1)
                            .values(judged_at=None)).rowcount == 5  # fmt: skip
    _upgraded_from_older_release(s)
    _bulk(emu, range(3000, 3020), TUE)
    report = _night(s, (_at(TUE, 8), _at(WED, 2)))  # Monday is its overlap day
    assert report["ok"] and report["requarantined"] == 5


def test_v4_an_older_releases_ingest_checked_after_the_upgrade_is_not_diluted(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """The DAG's ``ingest_window`` of Tuesday ran under the older release (its XCom has
    no ``reseen``); ``data_quality`` runs after the deploy."""
    s = _settings(emu, settings)
    _bulk(emu, range(1000, 1500), MON)
    assert _night(s, (_at(MON, 2), _at(TUE, 2)))["ok"]
    _tuesday(emu)
    tuesday = (_at(TUE, 2), _at(WED, 2))
    xcom = ingest_eutils_window(s, *tuesday).to_dict()
    del xcom["reseen"]  # the older release's IngestCounts had none
    _upgraded_from_older_release(s)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        check_window(s, xcom, tuesday)  # 5 of 520 (0.96 %) passes


@pytest.mark.parametrize("upgrade", [True, False], ids=["upgraded", "this-release"])
def test_v5_the_records_of_a_failed_update_file_run_do_not_dilute_the_nightly(
    emu: ReviewEmulator, settings: Settings, upgrade: bool
) -> None:
    """``litpulse ingest --updatefiles`` applied Tuesday's file (1,000 records) and
    failed on the next (MD5 never right); the nightly meets those records again."""
    s = _settings(emu, settings)
    _bulk(emu, range(500, 510), MON)
    assert _night(s, (_at(MON, 2), _at(TUE, 2)))["ok"]
    good = [emulation.EmuArticle(p, TUE, TUE).render() for p in range(1000, 2000)]
    emu.add_file("updatefiles", "pubmed24n0001.xml.gz", emulation.gz(emulation.pubmed_set(good)))
    emu.add_file("updatefiles", "pubmed24n0002.xml.gz", emulation.gz(emulation.pubmed_set([])))
    emu.faults.add("badmd5", path="=/pubmed/updatefiles/pubmed24n0002.xml.gz", times=100)
    with pytest.raises(ChecksumError):
        apply_updates(s)
    _bulk(emu, range(1000, 2000), TUE)  # the same records, as EFetch serves them
    _tuesday(emu)
    if upgrade:
        _upgraded_from_older_release(s)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        _night(s, (_at(TUE, 2), _at(WED, 2)))  # 5 of 1,020 (0.49 %) passes


# ========================================================================= attacks that held


def test_v1s_sequence_on_the_dags_one_window_judges_the_killed_run(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """The DAG: Monday's window killed before its check, its cleared rerun failing part
    way (a new generation: it met the killed run's rows), both under the older release;
    the last rerun after the upgrade resumes that batch and its check judges every run of
    the window, the killed one included: Tuesday reads 5 of 20."""
    s = _settings(emu, settings, efetch_batch=500, max_retries=0)
    _bulk(emu, range(1000, 2000), MON)
    monday = (_at(MON, 2), _at(TUE, 2))
    ingest_eutils_window(s, *monday)  # killed before its check
    emu.faults.add("503", path="efetch", times=1, after=1)
    with pytest.raises(TransientSourceError):
        ingest_eutils_window(s, *monday)  # cleared: fails in its second batch
    _older_checkpoints(s)
    _upgraded_from_older_release(s)
    assert _night(s, monday)["ok"]
    assert _unjudged(s) == []
    _tuesday(emu)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        _night(s, (_at(TUE, 2), _at(WED, 2)))


def test_an_older_release_checkpoint_resumed_twice_counts_its_reseen_once(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Tuesday's window failed under the older release after its overlap-day batch
    (Monday's 500, met again); after the upgrade the first rerun resumes it and fails
    again, the second resumes both: 15 inserted, 500 unchanged, 500 reseen, 5 bad of
    20, as the clean run."""
    s = _settings(emu, settings, efetch_batch=500, max_retries=0)
    _bulk(emu, range(1000, 1500), MON)
    assert _night(s, (_at(MON, 2), _at(TUE, 2)))["ok"]
    _tuesday(emu)
    tuesday = (_at(TUE, 2), _at(WED, 2))
    emu.faults.add("503", path="efetch", times=1, after=1)
    with pytest.raises(TransientSourceError):
        ingest_eutils_window(s, *tuesday)
    _older_checkpoints(s)
    _upgraded_from_older_release(s)
    emu.faults.add("503", path="efetch", times=1)
    with pytest.raises(TransientSourceError):
        ingest_eutils_window(s, *tuesday)  # resumes the old batch, fails again
    c = ingest_eutils_window(s, *tuesday).to_dict()
    assert (c["inserted"], c["unchanged"], c["reseen"], c["quarantined"]) == (15, 500, 500, 5)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        check_window(s, c, tuesday)
    assert _unjudged(s) == []  # Monday's older-release run too: the upgrade judged it


def test_the_next_wider_window_passing_under_the_older_release_covers_the_killed_one(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """``litpulse nightly``: K ``[Mon 02, Tue 02)`` killed before its check (it stored
    records entered early on Tuesday); the next night ``[Mon 02, Wed 02)`` passed, both
    under the older release. K's rows stay NULL (``_covers``), so the night after the
    upgrade meets them on its overlap day as reseen: 5 of 20, failed."""
    s = _settings(emu, settings, efetch_batch=1000)
    _bulk(emu, range(900, 910), MON)
    _bulk(emu, range(1000, 1500), TUE)
    ingest_eutils_window(s, _at(MON, 2), _at(TUE, 2))  # K: killed before its check
    assert _night(s, (_at(MON, 2), _at(WED, 2)))["ok"]
    _upgraded_from_older_release(s)
    _wednesday(emu)
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        _night(s, (_at(WED, 2), _at(THU, 2)))
    assert _owners(s).get(1) is None  # K's rows were never given K
