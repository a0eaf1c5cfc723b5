"""Hostile review (session 30c) of 6b70c34 and cd486f8: ``recorded_run(judged=True)``
(ingest/runs.py), the runs it is used for (local files, update files, the bootstrap, an
E-utilities window taken unchecked: ``ingest_window(check_follows=False)``), the judged
quarantine entries of ``Store._apply_batch`` (ingest/store.py), and the takeover of rows and
entries no check judged. U1-U4 and V1-V5 (tests/review/test_session30_upgrade_review.py,
test_session30b_upgrade_review.py) are not repeated; no upgrade is involved here.

Every test drives the real client against the loopback emulator (``ReviewEmulator``,
``_night`` = the DAG's pair, ingest then check), on SQLite and PostgreSQL. Tuesday brings 20
new records, 5 malformed (25 %); ``LITPULSE_MAX_QUARANTINE_RATE`` is 1 %.

Defects (were strict xfails asserting the correct behaviour; fixed in the same session,
now plain tests: W1 a window taken unchecked is judged once it succeeded again, not as it
opens; W2, W3 only a run whose check is to come (``Store._run_state``: a window run no
check judged yet) takes over the rows and the entries no check judged, both alike):

W1 **Silent pass: a window by hand that FAILS part way is accepted as if it had succeeded**
   (ingest/eutils.py ``ingest_window``: ``recorded_run(..., judged=not check_follows)``
   judges the run as it opens; ``Store._apply_batch`` stores its entries judged; 6b70c34
   moved this from "judged once it succeeded", J2's fix). ``litpulse ingest eutils --since
   MON --until WED`` (searched Sun..Tue) stores its first batch, Tuesday's 20 records (5
   bad), then fails (EFetch 503). Tuesday night's checked window ``[Tue 02, Wed 02)``
   (searched Mon..Wed: another window key, so nothing is resumed) meets those 15 rows as
   ``reseen`` and the 5 bad ones as ``requarantined``: 0 of 10 quarantined, PASSED. The same
   night after a hand window that failed before storing anything reads 5 of 30 and fails.
   Nobody accepted the failed run: no check judged it and the operator saw it fail, so the
   first check meeting its records must judge them (the rule ``IngestCounts.reseen``
   states: "a row whose run no check judged yet (killed or failed before its check) is
   taken over"). The same for ``nightly --no-quality`` failing part way, then a checked
   nightly with a wider held window. Fix: for an E-utilities window taken unchecked, judge
   the run (and its entries, and ``resumed_runs``) only once it succeeded, as J2's fix did;
   keep ``judged=True`` at open for update files, local files and the bootstrap, whose
   records no window's check is to own (V5).
W2 **Spurious failure: an update-file run takes over the rows of a window killed before its
   check, but not its bad records** (ingest/store.py ``Store.apply``: ``take_over =
   _checked_by_window(run_id)``, true for ``updatefiles``, a ``WINDOW_SOURCES`` source,
   although that run is now judged at open, "no check is to come for it"). Monday's nightly
   stores 1,000 good and 5 bad records and is killed between its ingest and its check
   (held); the daily ``litpulse ingest --updatefiles`` applies a file holding the 1,000 good
   ones: it meets them unchanged, takes them over, and they are judged with it. The
   nightly's rerun of Monday reads the 1,000 as ``reseen`` and the 5 bad ones (still the
   killed run's, unjudged) as new: 5 of 5 (100 %), FAILED, where the clean rerun reads 5 of
   1,005 (0.5 %) and passes. (When the file also carries the 5 bad elements, their entries
   are taken over too (``_count_met_again``) and the rerun reads 0 of 0: the window's check
   never judges its own bad records.) The same for a window by hand (judged) meeting a
   killed nightly's rows. Fix: only a run whose check is to come takes rows over (``take_over``
   = a window source *and* ``judged_at IS NULL``); a judged run meeting a row no check
   judged leaves it with its run (counted ``unchanged``, not ``reseen``), so the rerun
   takes it over and judges it with its fellows.
W3 **Silent pass: a local-file ingest takes a killed window's quarantine entries over (and
   judges them) but not its rows** (ingest/store.py ``_count_met_again`` takes over every
   unjudged entry of another run whatever ``take_over`` says; ``recorded_run(judged=True)``
   then judges them in its ``finally``; the rows stay the killed run's because a files run
   never takes rows over). Tuesday's nightly stores Tuesday's 15 good and 5 bad records and
   is killed before its check; the operator loads the day's records from a local file
   (``litpulse ingest files``: the same elements). The rerun takes the 15 rows over (new to
   its check) but meets the 5 entries judged: 0 of 15, PASSED, where the clean rerun (and
   the rerun without the file) reads 5 of 20 and fails. Fix: ``_count_met_again`` takes an
   entry over only when the batch takes rows over (pass ``take_over``); a run that takes
   nothing over leaves an unjudged entry with its run, uncounted as met again.

Attacks that held (plain tests below, or read and found sound):

* A window by hand failing part way, then the checked nightly over the SAME searched days
  (same key, same generation): the nightly resumes its batches and counts them whole from
  their checkpoints (the hand run's ``inserted`` and ``quarantined``, with no
  ``requarantined``): 5 of 20, failed, as the clean run. W1 needs another window key.
* Read and sound: ``judge_runs`` in ``recorded_run``'s ``finally`` runs before
  ``finish_run`` on failure (the run is closed ``failed`` first, then judged; a
  ``judge_runs`` error would mask the original one only if the database is down, when both
  fail); citations/iCite runs never pass ``judged`` (no rows, no entries by run); the extra
  ``SELECT judged_at`` per batch with quarantined items is one primary-key read;
  ``listed_pmids`` reads the ``#search`` checkpoint of the window of all PubMed only (a query
  window has another key) and returns ``None`` without ``pmids``; the ``min(...)`` caps of
  ``check_ingest`` bound met-again counts by what they are part of.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.eutils import ingest_window
from ingest.files import ingest_files
from ingest.updatefiles import apply_updates
from litpulse.core.errors import DataQualityError, TransientSourceError
from litpulse.core.settings import Settings
from litpulse.pipeline.nightly import ingest_eutils_window
from tests import emulator as emulation
from tests.ingest.test_windows_review import ReviewEmulator, _at, _night, _settings
from tests.litpulse.pipeline.test_nightly_operations import _malformed
from tests.review.test_session28_judged_review import (
    MON,
    TUE,
    WED,
    _bad,
    _bulk,
    _owners,
    _tuesday,
)

# ========================================================================= defects (fixed)


def test_w1_a_window_by_hand_that_fails_part_way_is_judged_by_the_next_check(
    emu: ReviewEmulator, settings: Settings
) -> None:
    s = _settings(emu, settings, efetch_batch=20, max_retries=0)
    _tuesday(emu)  # PMIDs 3000-3019: the first batch of the hand window
    _bulk(emu, range(4000, 4010), MON)  # its second batch
    emu.faults.add("503", path="efetch", times=1, after=2)  # after the first batch
    with pytest.raises(TransientSourceError):
        ingest_window(s, _at(MON), _at(WED))  # `litpulse ingest eutils`: Sun..Tue, fails
    assert sum(_owners(s).values()) == 15  # Tuesday's good ones stored, the bad quarantined
    with pytest.raises(DataQualityError, match=r"5 of 30 records quarantined"):
        _night(s, (_at(TUE, 2), _at(WED, 2)))  # reads 0 of 10 and passes


def test_w2_an_update_file_run_between_a_killed_window_and_its_rerun_does_not_fail_it(
    emu: ReviewEmulator, settings: Settings
) -> None:
    s = _settings(emu, settings)
    _bulk(emu, range(1000, 2000), MON)
    _bad(emu, range(2000, 2005), MON)
    monday = (_at(MON, 2), _at(TUE, 2))
    ingest_eutils_window(s, *monday)  # the nightly's ingest, killed before its check
    good = [emulation.EmuArticle(p, MON, MON).render() for p in range(1000, 2000)]
    emu.add_file("updatefiles", "pubmed24n0001.xml.gz", emulation.gz(emulation.pubmed_set(good)))
    assert apply_updates(s).unchanged == 1000  # the daily update files, meanwhile
    report = _night(s, monday)  # the rerun: the clean one reads 5 of 1,005 (0.5 %)
    assert report["ok"] and report["quarantine_rate"] == pytest.approx(5 / 1005, abs=1e-6)


def test_w3_a_local_file_run_does_not_judge_a_killed_windows_bad_records(
    emu: ReviewEmulator, settings: Settings, tmp_path: Path
) -> None:
    s = _settings(emu, settings)
    _bulk(emu, range(1000, 1010), MON)
    assert _night(s, (_at(MON, 2), _at(TUE, 2)))["ok"]
    _tuesday(emu)
    tuesday = (_at(TUE, 2), _at(WED, 2))
    ingest_eutils_window(s, *tuesday)  # the nightly's ingest, killed before its check
    elements = [emulation.EmuArticle(p, TUE, TUE).render() for p in range(3000, 3015)]
    elements += [_malformed(p, TUE) for p in range(3015, 3020)]
    local = tmp_path / "tuesday.xml.gz"
    local.write_bytes(emulation.gz(emulation.pubmed_set(elements)))
    assert ingest_files(s, [local]).quarantined == 5  # `litpulse ingest files`, meanwhile
    with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined"):
        _night(s, tuesday)  # the rerun reads 0 of 15 and passes


# ========================================================================= attacks that held


def test_a_failed_window_by_hand_resumed_by_the_nightly_of_its_days_is_judged_whole(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """The hand window and the nightly search the same days (``[Tue 00, Wed 00)`` and
    ``[Tue 02, Wed 02)``, both Mon..Wed): the nightly resumes the failed run's batch and
    counts it from its checkpoint, new to its check: 5 of 30, failed, as the clean run."""
    s = _settings(emu, settings, efetch_batch=20, max_retries=0)
    _tuesday(emu)
    _bulk(emu, range(4000, 4010), MON)
    emu.faults.add("503", path="efetch", times=1, after=2)
    with pytest.raises(TransientSourceError):
        ingest_window(s, _at(TUE), _at(WED, 1))
    assert sum(_owners(s).values()) == 15
    with pytest.raises(DataQualityError, match=r"5 of 30 records quarantined"):
        _night(s, (_at(TUE, 2), _at(WED, 2)))
