"""Hostile review (session 34d): E-utilities windows and update-file sequencing — does any
record fall between the cracks?

Code under review: ``ingest/eutils.py`` (ESearch windows split under the 9,999 cap,
EFetch batches, reconciliation, resume), ``ingest/dates.py`` (``searched_days``: PubMed's
Eastern days), ``litpulse/pipeline/planning.py`` (``last_watermark``, held windows),
``ingest/updatefiles.py`` and ``ingest/bootstrap.py`` (listing, gaps, ``--accept-gaps``,
``--max-files``) and ``ingest/runs.py``, against the loopback emulator
(``tests/emulator.py``, subclassed as ``tests.ingest.test_windows_review.ReviewEmulator``).

Attacked and held (read or run, not all kept as tests): a day over the cap split by PMID
range when ESearch's order is not newest-first (the page is not kept, medians are
searched); records entered between the requests of a split day (the next window's
overlap day searches it again); a record whose EDAT or MDAT is the first or last
searched day (the pieces partition the window, both ends inclusive); UTC windows against
Eastern days around midnight and the DST changes (``searched_days`` reaches back a whole
overlap day); a revision after its window was fetched (the next window's mdat pass);
EFetch leaving a PMID out (asked again, then owed and reported); a run killed after its
search and resumed (the saved PMID list, the batches not done).

Defects (each a strict xfail asserting the correct behaviour until fixed):

D1 **An update-file run stopped by ``--max-files`` moves the watermark as if it had
   applied every file listed.** ``planning.last_watermark`` takes any succeeded
   update-file run that applied a file (a bootstrap's too) to hold everything NLM
   published up to the day before it started; ``litpulse ingest --updatefiles --max-files
   1`` (or ``litpulse bootstrap --max-files 1``) applies one of the listed files and
   leaves the rest, yet the next nightly's window starts yesterday: the days the files
   left unapplied hold are searched by no window. (test_d1_..., both stores)
   **Fixed**: such a run records the files it left (``details.left``, update files and
   the bootstrap alike), and ``last_watermark`` takes it to move nothing.

D2 **An update file NLM re-issues under the same name after it was applied is neither
   applied again nor reported.** ``apply_updates`` skips every name in ``source_files``
   and never reads an applied file's ``.md5`` again. (test_d2_..., both stores)
   **Fixed** (session 35a, its X1): ``source_files.listed`` keeps the listing's entry
   (modification time, size) of each applied file; a run reads the ``.md5`` of an applied
   file only where that entry changed (or, where it is not known, of the two newest), and
   a new MD5 is a re-issue: applied again with an as-of time of its own
   (``Store.reissue``: after the earlier issue, before the next file; ``ingest.rules``
   takes an earlier issue's rows for an earlier source, not replays).

D3 **A ``file://`` mirror whose ``updatefiles/`` folder is missing (a typo in
   ``LITPULSE_PUBMED_FILES_URL``, a share not mounted) is read as "nothing published".**
   ``_LocalSource.listing`` lists a missing folder as empty, so every update-file run
   succeeds having applied nothing, night after night; an HTTP mirror's missing folder
   is a 404 and fails the run. (test_d3_..., both stores)
   **Fixed**: a local mirror's folder that is not there, or cannot be read, is refused
   as a 404 is (``InvalidRequestError`` naming it); a pruned ``baseline/`` is still left
   out where the store's bootstrap is done.

D4 **PMIDs given up by a window whose run then fails are never alerted.**
   ``ingest_window(on_given_up=)`` (the nightly's alert) is called once the run succeeded;
   each owed batch's give-ups are committed as it settles, so when a later owed batch
   fails the run fails, the next nightly's window (other days, another key) does not give
   them up again, and no alert is ever sent: a record lost for good, told to no one but
   ``litpulse missing``. (test_d4_..., both stores)
   **Fixed**: a run that fails after giving PMIDs up calls ``on_given_up`` with those
   as it fails (``ingest.eutils._told_on_failure``).

D5 **A window whose searched days fall off the calendar is a traceback, not an error.**
   ``litpulse ingest --eutils --since 0001-01-01`` (or ``--until 9999-12-31``) dies with
   ``OverflowError: date value out of range`` from ``ingest.dates.searched_days`` (or the
   CLI's own ``until + 1 day``); ``litpulse nightly`` refuses the same window with a
   ``ConfigError`` (``nightly._searchable``), a rule with one caller that the stage's
   entry point does not share. (test_d5_..., both stores)
   **Fixed**: ``searched_days`` is the one home of the rule (``ConfigError``, which
   ``_searchable`` now leaves to it), and ``ingest --eutils`` refuses an ``--until`` whose
   next day is off the calendar.

D6 **A bootstrap from a mirror holding the baseline but no update file moves the
   watermark to yesterday.** ``last_watermark`` takes a run that applied any file to hold
   what NLM published up to the day before it started; a baseline is frozen months
   before (NLM's December release), and the records entered since come only in update
   files. With an ``updatefiles/`` folder still empty (a mirror whose sync of it is not set
   up, or the days after NLM's release), the nightly's E-utilities start yesterday: the
   months between are searched by no window and, on an E-utilities deployment, in no file
   it will read. **Fixed**: a run records how many update files it applied
   (``details.update_files``); one that applied baseline files and none reaches only as
   far as that baseline holds (``ingest.records.baseline_frozen_by``: 1 November of the
   year before the baseline's), so the first nightly searches the months since.
   (test_d6_..., both stores)

D7 **A record PubMed withdrew whose PMID lies below those its window lists is never
   deleted.** The withdrawal check of a window of all PubMed reads the stored live
   records entered in its days within the PMID span of the records it lists
   (``Store.unlisted_entered``, a key range), and the stored records of the days it lists
   none of (``Store.entered_live``); the first record created on the overlap day (the
   lowest PMID of the window's records), withdrawn, lies outside the span of a day that
   still lists others: never asked for, it stays live and searchable, and no later window
   searches that day. (test_d7_..., both stores)
   **Fixed**: the check also reads each searched day's stored live records among the
   rows written last (``entered_live``, bounded as before), past the listed ones, for
   every day, not only those listing none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from ingest.bootstrap import load_files
from ingest.eutils import ingest_window
from ingest.updatefiles import apply_updates
from litpulse.app.cli import main
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.errors import ConfigError, LitpulseError, TransientSourceError
from litpulse.core.schema import missing_pmids
from litpulse.core.settings import Settings
from litpulse.pipeline.nightly import _window
from litpulse.pipeline.planning import last_watermark
from tests.ingest.test_windows_review import ReviewEmulator, _at, _settings, _stored

UTC = dt.UTC


def _file(pmids: list[int], edat: dt.date, **kw: Any) -> bytes:
    return gz(pubmed_set([article_xml(p, edat=edat, **kw) for p in pmids]))


# ---------------------------------------------------------------- D1: --max-files


@pytest.mark.parametrize("how", ["updatefiles", "bootstrap"])
def test_d1_a_run_that_left_listed_files_unapplied_does_not_carry_the_watermark(
    emu: ReviewEmulator, settings: Settings, how: str
) -> None:
    """The E-utilities nightly last succeeded six days ago (an NCBI outage since). The
    operator catches up from NLM's files a bit at a time: ``litpulse ingest --updatefiles
    --max-files 1`` (or ``litpulse bootstrap --max-files 1``), which applies the first of
    the three files listed and leaves two. ``last_watermark`` takes any succeeded
    update-file run that applied a file to hold everything NLM published up to the day
    before it started, so the recovering nightly starts yesterday: the records of the
    days in between, in the files left unapplied, are searched by no window."""
    s = _settings(emu, settings)
    today = dt.datetime.now(UTC).date()
    last_good = today - dt.timedelta(days=6)
    emu.add_article(1, edat=last_good)
    ingest_window(s, _at(last_good), _at(last_good + dt.timedelta(days=1)))  # the last night
    mark = last_watermark(s)
    missed = today - dt.timedelta(days=4)  # a day the nightly never ran
    emu.add_article(2, edat=missed)
    kind = "baseline" if how == "bootstrap" else "updatefiles"
    emu.add_file(kind, "pubmed26n0001.xml.gz", _file([1], last_good))
    emu.add_file(kind, "pubmed26n0002.xml.gz", _file([2], missed))
    emu.add_file(kind, "pubmed26n0003.xml.gz", _file([3], missed))
    if how == "bootstrap":
        load_files(s, workers=0, prefetch=0, max_files=1)
    else:
        apply_updates(s, workers=0, max_files=1)
    assert 2 not in _stored(s)
    since, until = _window(s, db.connect(s), None, None)  # the recovering nightly
    ingest_window(s, since, until)
    assert 2 in _stored(s), (
        f"record 2 (entrez date {missed}) lost: the watermark jumped from "
        f"{mark:%Y-%m-%d %H:%M} to {since:%Y-%m-%d %H:%M} on a run that left 2 of its 3 "
        "listed files unapplied"
    )


# ------------------------------------------------------- D2: a file replaced on the server


def test_d2_an_update_file_replaced_after_it_was_applied_is_applied_or_reported(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """NLM re-issues ``pubmed26n0002.xml.gz`` (same name, new content and ``.md5``) after
    this store applied the first issue: the new issue holds record 22, the first did not.
    ``apply_updates`` skips every name recorded in ``source_files`` and never reads an
    applied file's ``.md5`` again, so the run succeeds, applies nothing and says nothing:
    record 22 is in no file this store will read."""
    s = _settings(emu, settings)
    day = dt.date(2026, 1, 5)
    emu.add_file("updatefiles", "pubmed26n0001.xml.gz", _file([11], day))
    emu.add_file("updatefiles", "pubmed26n0002.xml.gz", _file([21], day))
    apply_updates(s, workers=0)
    emu.add_file("updatefiles", "pubmed26n0002.xml.gz", _file([21, 22], day))  # re-issued
    try:
        apply_updates(s, workers=0)
    except LitpulseError:
        return  # reported: what a user wants at the least
    assert 22 in _stored(s), "record 22 of the re-issued pubmed26n0002.xml.gz never stored"


# --------------------------------------------- D3: a local mirror's missing updatefiles/


def _mirror(root: Path, folder: str, name: str, data: bytes) -> None:
    where = root / folder
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_bytes(data)
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    (where / f"{name}.md5").write_text(f"MD5({name})= {digest}\n", encoding="ascii")


def test_d3_a_local_mirror_missing_its_updatefiles_folder_fails_the_run(
    tmp_path: Path, settings: Settings
) -> None:
    """``LITPULSE_PUBMED_FILES_URL=file:///mnt/pubmed/`` with the share not mounted (or a
    typo in the path): an HTTP mirror's missing folder is a 404 and fails the run; the
    local mirror's is listed as an empty folder, so every nightly's update-file step
    succeeds with no file, for ever, and the operator is told nothing."""
    root = tmp_path / "mirror"
    s = settings.replace(pubmed_files_url=root.as_uri() + "/")
    _mirror(root, "updatefiles", "pubmed26n0001.xml.gz", _file([1], dt.date(2026, 1, 5)))
    apply_updates(s, workers=0)
    assert _stored(s) == {1}
    wrong = settings.replace(pubmed_files_url=(tmp_path / "mirorr").as_uri() + "/")  # a typo
    with pytest.raises(LitpulseError, match="updatefiles"):
        apply_updates(wrong, workers=0)


# ------------------------------------------------- D4: a give-up whose run then fails


def test_d4_a_pmid_given_up_by_a_run_that_then_fails_is_alerted(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """The nightly alerts the on-call engineer when a window gives PMIDs up
    (``ingest_window(on_given_up=)``), but only once the run succeeded. Each owed batch's
    give-ups are committed as it settles; when a later owed batch fails (NCBI still
    flaky), the run fails, and the next nightly's window (other days: another key) never
    gives those PMIDs up again — they are given up already — so no alert is ever sent:
    a record lost for good, told to no one but ``litpulse missing``."""
    s = _settings(emu, settings, missing_retries=1, efetch_batch=1, max_retries=1)
    day = dt.date(2024, 3, 4)
    emu.add_article(1, edat=day)
    emu.add_article(500, edat=day)  # X: EFetch keeps leaving it out
    emu.add_article(600, edat=day)  # Y: owed too, and its ask fails
    alerts: list[int] = []

    def alert(pmids: list[int], window: str) -> None:
        alerts.extend(pmids)

    def night(first: dt.date) -> None:
        ingest_window(s, _at(first), _at(first + dt.timedelta(days=1)), on_given_up=alert)

    emu.faults.add("drop", path="efetch", times=4, after=1)  # X, Y: asked twice, left out
    night(day)
    with db.connect(s).begin() as conn:  # their first miss is two days old
        conn.execute(
            update(missing_pmids).values(
                first_missing_at=dt.datetime.now(UTC) - dt.timedelta(days=2)
            )
        )
    later = day + dt.timedelta(days=5)
    emu.add_article(2, edat=later)
    emu.faults.add("drop", path="efetch", times=2, after=1)  # X asked again in vain: given up
    emu.faults.add("500", path="efetch", times=20)  # then Y's ask fails: the run fails
    with pytest.raises(TransientSourceError):
        night(later)
    emu.faults.clear()
    emu.add_article(3, edat=later + dt.timedelta(days=3))
    night(later + dt.timedelta(days=3))  # the next nightly: stores Y
    assert 600 in _stored(s) and 500 not in _stored(s)
    assert 500 in alerts, "PMID 500 given up for good, and no alert was ever sent"


# ---------------------------------------------- D5: days off the calendar's ends


@pytest.mark.parametrize(
    "days", [("0001-01-01", "0001-01-02"), ("9999-12-30", "9999-12-31")], ids=["first", "last"]
)
def test_d5_a_window_off_the_calendar_is_refused_clearly(
    emu: ReviewEmulator, env: Settings, days: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", "--eutils", "--since", days[0], "--until", days[1]]) == 2
    assert "calendar" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="calendar"):
        ingest_window(_settings(emu, env), dt.date(1, 1, 1), dt.date(1, 1, 2))


# ------------------------------- D6: a baseline-only bootstrap and the watermark


def test_d6_a_baseline_only_bootstrap_leaves_the_months_since_it_to_the_nightly(
    emu: ReviewEmulator, settings: Settings
) -> None:
    s = _settings(emu, settings)
    today = dt.datetime.now(UTC).date()
    frozen = today - dt.timedelta(days=30)  # the baseline's newest records
    emu.add_file("baseline", "pubmed26n0001.xml.gz", _file([1, 2], frozen))
    emu.add_article(1, edat=frozen)
    emu.add_article(2, edat=frozen)
    later = today - dt.timedelta(days=10)  # entered since: in no file the mirror holds
    emu.add_article(3, edat=later)
    load_files(s, workers=0, prefetch=0)
    assert _stored(s) == {1, 2}
    since, until = _window(s, db.connect(s), None, None)  # the first nightly
    ingest_window(s, since, until)
    assert 3 in _stored(s), (
        f"record 3 (entrez date {later}) lost: the bootstrap of a baseline frozen on "
        f"{frozen} moved the watermark to {since:%Y-%m-%d %H:%M}"
    )


# ------------------------------------ D7: a withdrawal at the edge of the listed span


def test_d7_a_withdrawn_record_below_the_listed_pmids_is_deleted(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Monday's window stores 101..103 (entered Monday). PubMed withdraws 101, the first
    record created that day. Tuesday's window searches Monday again (its overlap day)
    and lists 102, 103 and Tuesday's 104: the withdrawal check reads the stored records
    entered in its days *within the PMID span of those listed* (``Store.unlisted_entered``,
    a key range), 102..104, so 101 is never asked for and stays live and searchable; no
    later window searches Monday. (A withdrawal in the middle, 102, is found.)"""
    s = _settings(emu, settings)
    mon = dt.date(2024, 3, 4)
    tue = mon + dt.timedelta(days=1)
    for pmid in (101, 102, 103):
        emu.add_article(pmid, edat=mon)
    ingest_window(s, _at(mon), _at(tue))
    emu.delete(101)  # withdrawn: ESearch and EFetch stop returning it
    emu.add_article(104, edat=tue)
    ingest_window(s, _at(tue), _at(tue + dt.timedelta(days=1)))
    assert 101 not in _stored(s), "record 101, withdrawn by PubMed, still live"
