"""Review 38h: a hostile review of two of session 38's changes, just landed on main.

38a (the parse takes a first read's content MD5, ``ingest --files``) and 38c (the
watermark's kept chain; the new year's hold of update files of unknown start).

X1 **``--accept-gaps`` skips every gap of the listing, but the held run and the
   warning name only the first.** ``updatefiles._plan`` works out the first run of
   missing numbers alone (``_first_gap``: ``min`` of them): the held run's message names
   it (``pubmed26n0101``) and tells ``--accept-gaps`` as the way past a file NLM
   withdrew, but the files waiting behind it may have more holes (``pubmed26n0103``),
   which ``--accept-gaps`` skips as well, its warning naming only the first. The same
   after 38c's new-year hold: "apply from pubmed27n0050 on once: --accept-gaps" says
   nothing of a hole in 2027's listed files, which it skips unseen. Reproduced: 0100
   applied, 0102 and 0104 listed: neither the message nor the warning names 0103.
   **Fixed**: ``updatefiles._gaps`` gives every run of missing numbers (of a year of
   unknown start, its holes after the lowest listed too); the held run's message names
   the first as before, then every other among the waiting files, "skipped too by
   --accept-gaps"; ``--accept-gaps`` warns naming each run it skips (a year of unknown
   start as "taken to be the lowest listed"). The README says so. Verified failing with
   the old ``updatefiles.py``.
   (test_x1_the_held_run_and_accept_gaps_name_every_hole)

X3 **A first read's MD5 that its parse could not take is computed from the path after
   the file was read, of whatever is there then.** 38a records a first read's MD5 once
   its last batch is stored; where the parse took none (a damaged ``.xml.gz``: its
   bytes' MD5), or to tell whether a ``.xml`` copy's bytes are gzip,
   ``files._issue_md5`` opens the path again. A copy replaced while it is read (renamed
   over, as ``rsync`` and ``wget`` finish a file) passes the identity check (the open
   file is checked, and the parse read the old one whole), so the MD5 recorded is the
   new file's, of another content than the store applied: a wrong issue is worse than
   none (an unknown issue is replaced whole; a wrong one may take another issue for the
   one read). Reproduced: a cut copy of issue A, replaced by issue B whole at a batch's
   commit: B's content MD5 recorded for A's records.
   **Fixed**: ``files._read_issue_md5``: where the MD5 needs the path read again, the
   path must still be the file that was read (its identity before and after the read
   is the job's); else nothing is recorded (an unknown issue, replaced whole by the next
   copy or the server's issue) and a warning says why. The MD5 a ``.xml.gz``'s parse
   took is recorded without reading the path, as before. The README says so. Verified
   failing with the old ``files.py``.
   (test_x3_a_copy_replaced_while_read_records_no_other_files_md5)

X2 **``planning.held_windows`` reads every succeeded run ever recorded inside the
   database** (noted by 38c): its query (``held_windows_past``: the held windows ending
   after the mark) can only use ``ix_ingest_runs_status_finished`` on ``status`` (every
   succeeded run, one more each night) and filters each on ``window_end`` and the JSON
   ``details.watermark``. Reproduced: the plan of its statement (SQLite ``EXPLAIN QUERY
   PLAN``; PostgreSQL ``EXPLAIN``, sequential scans off) has no index condition on
   ``window_end``.
   **Fixed**: an index ``ix_ingest_runs_status_window_end`` (status, window_end), made on
   an older store at its next open (``db.add_missing_indexes``): the plan is a range of
   it, ``status = 'succeeded' AND window_end > mark`` (the runs ending after the mark,
   a few), on both stores (PostgreSQL with its statistics: ``ANALYZE``, as autovacuum
   keeps them). Verified failing with the old ``schema.py``.
   (test_x2_held_windows_reads_the_runs_after_the_mark_by_index)

What held (attacked, no defect):

* 38a's content MD5 against :func:`litpulse.core.checksums.content_md5`, through
  :func:`ingest.parallel.parse_ordered` ``contents=`` with 0, 1, 2 and 3 workers, striped
  and not: 70 files (1 to 13 records of 25-60 KiB, so 1 to 6 units: the job's end sent by
  each stripe in turn; one gzip member, two members cut at a random byte, five members
  with NUL padding between and after, plain, UTF-8 with a BOM, UTF-16 plain and gzip, a
  gzip cut inside a member, gzip with other bytes after the last member, a plain
  document cut half-way): no MD5 was ever another than ``content_md5``'s; ``None``
  exactly where ``content_md5`` refuses (a damaged stream), where the writer computes
  the bytes' MD5 as before. A file whose parse stops on a damaged stream records its
  bytes' MD5 (38a's test). A file changed in place while read fails the job (its
  identity check) before its MD5 is recorded; the MD5 a parse takes is of the open
  file's bytes (one renamed over: X3 for the MD5 the parse cannot take). The kill
  between the last batch and the MD5's record: 38a's own tests (an unknown issue,
  replaced whole; the same copy read again records it) pass.
* 38c's kept chain: two processes keeping at once (a compare-and-set on the row's
  token: the second keeps nothing; probed: two threads working the mark out without
  pause while 60 runs are recorded through the run ledger, a fifth failed, some past a
  gap, every tenth window withheld: after each, the mark equals ``rebuilt_watermark`` on
  both stores), ``LITPULSE_WINDOW_OVERLAP_DAYS`` changed (another
  setting: rebuilt), a run started before the chain's first (rebuilt), a run running
  then succeeding, a held window released later (read again while open). Runs deleted
  by hand, or ``ingest_runs`` restored older than ``checkpoints``, give another mark
  than the rebuild (on SQLite a new run may take a deleted run's id, never read): the
  README says hand edits need the kept chain deleted; a whole-store backup restored
  (``pg_dump``, the SQLite file) is consistent. A PostgreSQL id gap older than a day:
  ``start_run``'s insert is its own short transaction, no other writer inserts runs.
* 38c's new-year hold on NCBI's layout: the new baseline listed (December) gives the
  new year's start; the new year's update files begin after it; a bootstrap started in
  the new year takes the newest baseline; before the new baseline is published nothing
  of the new year is listed and nothing is held (years in the names are the baselines',
  not the calendar's).

Noticed, not in this review's reach: a store down across the year's turn, when NCBI
empties ``updatefiles/`` for the new baseline's files, cannot tell whether update files
of the year before were published after the last it applied (the new year's start is
known from its baseline, so nothing is held); their records are in the new baseline,
which a store on the old one does not apply.

X4 **(noticed here, fixed by the integrator) A shorter baseline listing moved a recorded
   year's start.** ``updatefiles._plan`` took a year's baseline listing over the last
   number the store recorded for it (``{**known, **listed}``): a mirror that pruned the
   new year's baseline to its first files made the update files after the recorded end
   a "gap" (a false hold naming 45 files that never existed). **Fixed**: the higher of
   the two stands (NLM's baseline of a year never shrinks).
   (test_x4_a_shorter_baseline_listing_does_not_move_a_recorded_years_start)
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import logging
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import event, insert
from sqlalchemy.engine import Engine

from ingest.files import ingest_files
from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.errors import IncompleteSourceError
from litpulse.core.schema import ingest_runs
from litpulse.core.settings import Settings
from litpulse.pipeline import planning
from tests.emulator import Emulator
from tests.ingest.test_updatefiles_gaps import _applied, _configure
from tests.review.test_session35b_review import _publish
from tests.review.test_session36a_review import ISSUE_A, ISSUE_B, _copy, _titles
from tests.review.test_session37h_review import _statements
from tests.review.test_session38a_review import _issue_of
from tests.review.test_session38c_review import DAY0, _night

# ------------------------------------------------- X1: what --accept-gaps skips, named


def test_x1_the_held_run_and_accept_gaps_name_every_hole(
    emu: Emulator, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    s = _configure(emu, settings)
    _publish(emu, "updatefiles", [100])
    apply_updates(s, workers=0)
    _publish(emu, "updatefiles", [102, 104])  # 0101 and 0103 missing
    with pytest.raises(IncompleteSourceError) as err:
        apply_updates(s, workers=0)
    message = str(err.value)
    assert "pubmed26n0101.xml.gz" in message, message
    assert "pubmed26n0103.xml.gz" in message, message  # skipped too by --accept-gaps
    with caplog.at_level(logging.WARNING, logger="ingest.updatefiles"):
        apply_updates(s, workers=0, accept_gaps=True)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "pubmed26n0101.xml.gz" in warned and "pubmed26n0103.xml.gz" in warned, warned
    assert _applied(s)[-1] == "pubmed26n0104.xml.gz"


def test_x1_a_hole_after_a_new_years_unknown_start_is_named(
    emu: Emulator, settings: Settings
) -> None:
    s = _configure(emu, settings)
    _publish(emu, "updatefiles", [100])
    apply_updates(s, workers=0)
    with emu._lock:
        emu.files["updatefiles"] = {}
    _publish(emu, "updatefiles", [50, 52], year=27)  # 2027's start unknown, 0051 missing
    with pytest.raises(IncompleteSourceError) as err:
        apply_updates(s, workers=0)
    message = str(err.value)
    assert "pubmed27n0050.xml.gz" in message and "--accept-gaps" in message, message
    assert "pubmed27n0051.xml.gz" in message, message


# ------------------------------------------ X2: the held windows read by an index


def _window_end_by_index(engine: Engine, statements: list[tuple[str, object]]) -> list[str]:
    """The plan lines of the SELECTs of ``ingest_runs`` in ``statements``, and whether one
    reads it by an index condition on ``window_end``."""
    lines: list[str] = []
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        if not sqlite:  # the statistics autovacuum keeps; tiny tables scanned by choice
            cur.execute("ANALYZE ingest_runs")
            cur.execute("SET enable_seqscan = off")
        for stmt, params in statements:
            if not stmt.lstrip().upper().startswith("SELECT") or "FROM ingest_runs" not in stmt:
                continue
            cur.execute(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + stmt, params)
            lines += [str(row[-1] if sqlite else row[0]) for row in cur.fetchall()]
        if not sqlite:
            cur.execute("RESET enable_seqscan")
        cur.close()
    return lines


def test_x2_held_windows_reads_the_runs_after_the_mark_by_index(settings: Settings) -> None:
    engine = db.connect(settings)
    with engine.begin() as conn:
        conn.execute(insert(ingest_runs), [_night(i) for i in range(40)])
    mark = planning.last_watermark(settings, engine)
    assert mark == DAY0 + dt.timedelta(days=40)
    with _statements(engine) as seen:
        assert planning.held_windows_past(mark, engine) == []
    plan = _window_end_by_index(engine, seen)
    if engine.dialect.name == "sqlite":
        used = [ln for ln in plan if re.search(r"SEARCH ingest_runs USING .*window_end>", ln)]
    else:
        used = [ln for ln in plan if re.search(r"Index Cond: .*window_end >", ln)]
    assert used, plan


# ------------------------------- X3: the MD5 of the file read, not of the path's file


def test_x3_a_copy_replaced_while_read_records_no_other_files_md5(
    settings: Settings, tmp_path: Path
) -> None:
    cut = ISSUE_A[:-12]  # a damaged stream: its parse takes no content MD5
    copy = _copy(tmp_path, cut)
    fresh = tmp_path / "fresh.xml.gz"
    fresh.write_bytes(ISSUE_B)
    engine = db.connect(settings)
    replaced = [False]

    def rename_over(conn: object) -> None:  # another process finishing its download
        if not replaced[0] and _titles(settings):
            replaced[0] = True
            os.replace(fresh, copy)

    event.listen(engine, "commit", rename_over)
    try:
        ingest_files(settings, [copy], workers=0, batch_size=1)
    finally:
        event.remove(engine, "commit", rename_over)
    assert replaced[0], "the copy was not replaced while it was read"
    assert _titles(settings)[21] == ("21 as first issued", False)  # the cut copy's
    recorded = _issue_of(settings, copy)
    assert recorded != hashlib.md5(gzip.decompress(ISSUE_B)).hexdigest()
    assert recorded in (None, hashlib.md5(cut).hexdigest()), recorded


def test_x4_a_shorter_baseline_listing_does_not_move_a_recorded_years_start(
    emu: Emulator, settings: Settings
) -> None:
    """(integrator, from this review's note) ``_plan`` took a year's baseline listing over
    the last number the store recorded for it (``{**known, **listed}``): a mirror that
    pruned the new year's baseline to its first files made the update files after the
    recorded end look like a gap (a false hold naming files that never existed).
    NLM's baseline of a year never shrinks: the higher number stands."""
    from tests.review.test_session35b_review import _prune, _publish

    s = _configure(emu, settings)
    _publish(emu, "updatefiles", [100])
    apply_updates(s, workers=0)
    _publish(emu, "baseline", [47], year=27)  # December: the store sees 2027's baseline
    apply_updates(s, workers=0)
    _prune(emu, "baseline")
    _publish(emu, "baseline", [1, 2], year=27)  # the mirror keeps only its first files
    _publish(emu, "updatefiles", range(48, 51), year=27)
    apply_updates(s, workers=0)
    assert _applied(s)[-1] == "pubmed27n0050.xml.gz"
