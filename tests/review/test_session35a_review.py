"""Hostile review (session 35a): an update file NLM re-issues under the same name.

Code under review: ``ingest/updatefiles.py`` (the listing, the plan, what is skipped as
applied), ``ingest/bootstrap.py`` (the same plan, staged files, ``_is_applied``),
``ingest/rules.py`` (a numbered file is one source: its items at or before the stored
position are replays) and ``ingest/store.py`` (``source_times``: a file's as-of time),
against the loopback emulator (``tests/emulator.py``: its listing now gives each file the
"Last modified" time of its latest publication and its size, as NCBI's Apache index does:
``<a href="pubmed26n0002.xml.gz">pubmed26n0002.xml.gz</a>  2025-12-11 14:08  1234``).

Attacked and held (kept as tests, not defects): a mirror that copies an applied file
again with the same content (its listing entry changes, its MD5 does not) applies
nothing again and reads that one ``.md5`` only; a run whose listing entries are
unchanged reads no applied file's ``.md5``; a ``.md5`` that changes while the file does
not (a mirror mid-update) is not applied over the store: its MD5 never matches; a
listing of names only (no dates, no sizes) still finds a re-issue of the newest applied
file (its ``.md5`` is read each run), and an applied file's ``.md5`` answered with an
error page holds no new file back (checked again by the next run: a refinement of this
session's own X1 fix, which failed the run). Not pursued: a re-issue an older release's store
missed before this one (its files have no listing entry recorded: each is taken as it is
listed, except the two newest, rather than 1,300 ``.md5`` requests).

Defects (each a strict xfail asserting the correct behaviour until fixed; 34d's D2 is X1):

X1 **An update file NLM re-issues under its name after it was applied is never applied
   again.** ``pubmed26n0002.xml.gz`` is applied, then the mirror serves a new issue of it
   (new content, new ``.md5``): ``apply_updates`` skips every name in ``source_files`` and
   never reads an applied file's ``.md5`` again, so a record only the new issue holds,
   a revision or a deletion in it, is in no file the store will ever read, silently. And
   were it read, ``ingest.rules`` takes a numbered file for one source whatever its
   content: every item at or before the position the first issue stored is a replay that
   changes nothing. (test_x1_..., both stores; 34d's test_d2_... too)
   **Fixed**: the listing's entry of each file (modification time and size, as NCBI's
   index and a ``file://`` mirror list them) is kept when it is applied
   (``source_files.listed``); a run reads the ``.md5`` of an applied file again only where
   that entry changed, or, where either is not known, of the two newest applied files
   (``ingest.updatefiles.find_reissues``; an unchanged entry costs no request). A new MD5
   is a re-issue: pending again, in number order. ``Store.reissue`` gives it an as-of
   time of its own (``source_times.md5``), later than the earlier issue's, so it ranks
   after that issue and before file N+1; ``StoredState.same_source`` takes a row an earlier
   issue wrote (an earlier time) for an earlier source, not a replay. Its records and
   deletions then decide as file N's: a later file's rows stand.

X2 **A re-issue applied is told nowhere.** The run that applies it must say so: its
   details (``reissued``: name, MD5, the MD5 it replaces), the log and ``litpulse status``
   ("re-issued file applied again"). (test_x2_x5_..., both stores)
   **Fixed**: the run's ``details.reissued`` lists each (name, ``md5``, ``was``,
   ``earlier_only``), the log warns "re-issued file applied again: NAME …", and
   ``litpulse status`` prints it under the runs table
   (``ingest.updatefiles.reissue_notes``).

X3 **A run killed in the middle of a re-issue must end, resumed, as a clean run.** The
   first batches of the new issue are committed, ``source_files`` still holds the first
   issue's MD5; the next run must find the re-issue again and apply it so that the store
   ends as one uninterrupted application of the new issue would leave it (a deletion
   late in the file of a record stored early in it included). (test_x3_..., both stores)
   **Fixed** with X1: the resumed run finds the re-issue again (``source_files`` keeps
   the earlier MD5 until the file's last batch commits), and ``Store.reissue`` keeps the
   as-of time the killed run gave that issue (same MD5), so its items up to where the
   kill landed are replays, as a resumed file's are.

X4 **A re-issue of a baseline file while a bootstrap is half-way is never applied.**
   ``litpulse bootstrap --max-files 1`` applied ``pubmed26n0001``; NLM re-issues it; the
   bootstrap's next call plans from the same ``source_files`` names (and its stagers skip
   a file recorded applied), so the new issue is never read. (test_x4_..., both stores)
   **Fixed**: ``pending_files`` plans with the applied MD5s and listing entries
   (``ingest.updatefiles.applied_files``, as ``apply_updates`` does), and
   ``bootstrap._is_applied`` takes a re-issue for applied only once its new MD5 is
   recorded (a stager skipped it, and the writer waited for it for ever); the DAG's file
   dicts carry ``listed`` and ``reissue``.

X5 **A re-issue that drops a record the first issue held says nothing of it.** The
   record stays stored (no issue deleted it, and NLM may have moved it to another file),
   but the run should say how many records only the earlier issue held, so that an
   operator can look. (test_x2_x5_..., both stores)
   **Fixed**: ``Store.earlier_issue_rows`` counts the live rows the file's earlier issue
   wrote and its new issue did not write or touch (their source time is before the new
   as-of time); the run reports it (``earlier_only``, the log, ``litpulse status``). One
   scan of ``articles`` by ``source_sequence`` per re-issue (no index: re-issues are rare).

X6 (found in this session's own fix of X1) **A re-issue whose ``.md5`` a mirror copies
   after the file is missed for good.** ``find_reissues`` compared the file's listing
   entry alone: a run between the two copies (rsync copies ``NAME`` before
   ``NAME.md5``) found the entry changed and the ``.md5`` still naming the MD5 applied,
   recorded the new entry as checked, and once the ``.md5`` landed nothing in the file's
   entry changed again: the new issue was never applied. (test_x6_..., SQLite: planning)
   **Fixed**: a file's entry is its own and its ``.md5``'s (``listed_entries``: ``"<file's
   time and size> | <.md5's>"``), so the ``.md5`` landing later changes it again.

X7 **A copy staged before NLM re-issued the file hides the re-issue for good.** A
   bootstrap's writer applies a verified staged copy (staged by the DAG's ``fetch_file``
   or a killed call's prefetch) and recorded it under the listing entry of its own plan,
   made after the re-issue: the entry recorded is the new issue's, the MD5 the first
   issue's, and no later run finds the entry changed. (test_x7_..., SQLite: staging)
   **Fixed**: the stager writes the entry of what it verified into the staged file's
   marker (a second line: an older release's reader takes such a marker for unreadable
   and stages the file again), and the writer records that one. A copy staged by an older
   release has none: recorded as not known, it is checked only among the newest.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from ingest.bootstrap import load_files, pending_files, stage_file
from ingest.updatefiles import apply_updates
from litpulse.app.cli import main
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.errors import ChecksumError
from litpulse.core.schema import articles, ingest_runs, source_files
from litpulse.core.settings import Settings
from tests.ingest.test_windows_review import ReviewEmulator, _settings, _stored

DAY = dt.date(2026, 1, 5)
LATER = dt.date(2026, 1, 9)
N1, N2, N3 = "pubmed26n0001.xml.gz", "pubmed26n0002.xml.gz", "pubmed26n0003.xml.gz"


def _file(*elements: bytes, deleted: tuple[int, ...] = ()) -> bytes:
    return gz(pubmed_set(list(elements), deleted))


def _art(pmid: int, title: str, **kw: Any) -> bytes:
    return article_xml(pmid, edat=DAY, title=title, **kw)


def _titles(s: Settings) -> dict[int, tuple[str, bool]]:
    """PMID -> (title, deleted) of every stored row."""
    a = articles.c
    with db.connect(s).connect() as conn:
        rows = conn.execute(select(a.pmid, a.title, a.is_deleted)).all()
    return {pmid: (title, bool(gone)) for pmid, title, gone in rows}


def _last_run(s: Settings) -> dict[str, Any]:
    r = ingest_runs.c
    with db.connect(s).connect() as conn:
        row = conn.execute(select(ingest_runs).order_by(r.id.desc()).limit(1)).first()
    assert row is not None
    return dict(row._mapping)


def _md5_reads(emu: ReviewEmulator, name: str) -> int:
    return len([q for q in emu.requests(f"/pubmed/updatefiles/{name}.md5")])


#: File 2's first issue: 21, 23 and 24 (24 also in file 1).
ISSUE_A = _file(_art(21, "21 as first issued"), _art(23, "23 as first issued"),
                _art(24, "24 of file 2"))  # fmt: skip
#: File 2's new issue: 21 revised in place, 22 new, 23 as file 3 has it too (same
#: version and revision date, another title: file 3 must win), 24 deleted, and 31
#: deleted (file 3 holds it: a deletion of file 2 must not undo a later file's record).
ISSUE_B = _file(
    _art(21, "21 as re-issued"), _art(22, "22 only in the re-issue"),
    _art(23, "23 as re-issued", mdat=LATER), deleted=(24, 31),
)  # fmt: skip
FILE_3 = _file(_art(23, "23 of file 3", mdat=LATER), _art(31, "31 of file 3"))
#: Where the re-issue leaves the store: as if file 2 had been issued so in the first place.
AFTER_B = {
    11: ("Record 11", False),
    21: ("21 as re-issued", False),
    22: ("22 only in the re-issue", False),
    23: ("23 of file 3", False),
    24: ("24 of file 2", True),
    31: ("31 of file 3", False),
}


def _publish_and_apply(emu: ReviewEmulator, s: Settings) -> None:
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11"), _art(24, "24 of file 1")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    emu.add_file("updatefiles", N3, FILE_3)
    apply_updates(s, workers=0)
    assert _titles(s)[21] == ("21 as first issued", False)


# ------------------------------------------------------------- X1: the re-issue applied


def test_x1_a_reissued_update_file_is_applied_in_its_place(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """Files 1-3 applied; NLM re-issues file 2 (new content and ``.md5``). The next run
    must apply it so that the store ends as if file 2 had been issued so in the first
    place: 22 stored, 21 revised, 24 deleted as file 2's, and file 3's newer rows kept
    (23's title, 31 live though the re-issue deletes it)."""
    s = _settings(emu, settings)
    _publish_and_apply(emu, s)
    emu.add_file("updatefiles", N2, ISSUE_B)  # re-issued: a later "Last modified"
    apply_updates(s, workers=0)
    got = _titles(s)
    assert {p: got.get(p) for p in AFTER_B} == AFTER_B
    with db.connect(s).connect() as conn:
        md5 = conn.execute(
            select(source_files.c.md5).where(source_files.c.name == N2)
        ).scalar_one()  # fmt: skip
    assert md5 == emu.files["updatefiles"][N2].md5, "source_files still holds the first issue"
    apply_updates(s, workers=0)  # applied once: the next run finds nothing to do
    assert _last_run(s)["details"]["files"] == []


# ------------------------------------------- X2, X5: the re-issue reported, and what it drops


def test_x2_x5_a_reissue_applied_is_reported_with_the_records_it_dropped(
    emu: ReviewEmulator, env: Settings, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The run that applies a re-issue says so (details, log, ``litpulse status``), and
    how many records only the earlier issue held: 24 (file 2 wrote it over file 1's),
    which the re-issue drops, stays stored (no issue deleted it)."""
    s = _settings(emu, env)
    _publish_and_apply(emu, s)
    with db.connect(s).connect() as conn:
        was = conn.execute(
            select(source_files.c.md5).where(source_files.c.name == N2)
        ).scalar_one()  # fmt: skip
    emu.add_file("updatefiles", N2, _file(_art(21, "21 as re-issued"), _art(23, "23")))
    apply_updates(s, workers=0)
    assert _titles(s)[21] == ("21 as re-issued", False)
    assert 24 in _stored(s), "a record no issue deleted stays stored"
    told = _last_run(s)["details"].get("reissued")
    assert told and told[0]["name"] == N2 and told[0]["was"] == was, told
    assert told[0]["earlier_only"] == 1, told  # 24; 23 is file 3's
    assert "re-issued file applied again" in caplog.text
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"re-issued file applied again: {N2}" in out
    assert "1 record(s) only the earlier issue held kept" in out


# ------------------------------------------------------- X3: a kill in the middle of it


@contextmanager
def _killed_once(s: Settings, reached: Callable[[], bool]) -> Iterator[None]:
    """The process dies at the store's first commit from when ``reached()`` holds of
    what is committed (an exception before that commit): what committed before stays."""
    engine = db.connect(s)
    fired = [False]

    def before(conn: Any) -> None:
        if not fired[0] and reached():
            fired[0] = True
            raise RuntimeError("killed")

    event.listen(engine, "commit", before)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            yield
    finally:
        event.remove(engine, "commit", before)


def test_x3_a_reissue_killed_half_way_resumes_to_the_clean_state(
    emu: ReviewEmulator, settings: Settings
) -> None:
    """The new issue of file 2 holds 22 first and, last, a deletion of 22 after a
    revision of 21: killed after its first batch (one item a batch), the resumed run must
    end as one run over the new issue would: 22 deleted, 21 revised."""
    s = _settings(emu, settings).replace(store_batch=1)
    _publish_and_apply(emu, s)
    emu.add_file("updatefiles", N2, _file(
        _art(22, "22 only in the re-issue"), _art(21, "21 as re-issued"), deleted=(22,),
    ))  # fmt: skip
    with _killed_once(s, lambda: _titles(s)[21] == ("21 as re-issued", False)):
        apply_updates(s, workers=0)  # killed after 22 and 21, before the deletion of 22
    assert _titles(s)[22] == ("22 only in the re-issue", False), "the kill missed the file"
    apply_updates(s, workers=0)
    got = _titles(s)
    assert got[22] == ("22 only in the re-issue", True)
    assert got[21] == ("21 as re-issued", False)
    assert got[23] == ("23 of file 3", False)
    assert _last_run(s)["status"] == "succeeded"


# ------------------------------------------------ X4: a re-issue in a half-way bootstrap


def test_x4_a_baseline_file_reissued_while_a_bootstrap_is_half_way_is_applied(
    emu: ReviewEmulator, settings: Settings
) -> None:
    s = _settings(emu, settings)
    emu.add_file("baseline", N1, _file(_art(11, "11 as first issued")))
    emu.add_file("baseline", N2, _file(_art(21, "21 of the baseline")))
    emu.add_file("updatefiles", N3, _file(_art(31, "31 of file 3")))
    load_files(s, workers=0, prefetch=0, max_files=1)
    emu.add_file("baseline", N1, _file(_art(11, "11 as re-issued"), _art(12, "12 new")))
    load_files(s, workers=0, prefetch=1)
    got = _titles(s)
    assert got.get(11) == ("11 as re-issued", False)
    assert got.get(12) == ("12 new", False)
    assert {21, 31} <= _stored(s)


# ------------------------------------- X6: the file copied first, its .md5 a run later


def test_x6_a_reissue_whose_md5_lands_a_run_after_the_file_is_applied(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A mirror (rsync: names in order) copies the new issue of file 2, and a run comes
    before it copies its ``.md5``: the file's entry changed, its ``.md5`` still names the
    MD5 applied. Once the ``.md5`` lands (only its own entry changes), the next run must
    apply the new issue. (Planning: SQLite; X1 applies a re-issue on both stores.)"""
    s = _settings(emu, sqlite_settings)
    _publish_and_apply(emu, s)
    applied = emu.files["updatefiles"][N2].md5
    emu.add_file("updatefiles", N2, ISSUE_B, md5=applied)  # the file copied, not its .md5
    apply_updates(s, workers=0)
    assert _titles(s)[21] == ("21 as first issued", False)
    emu.publish_md5("updatefiles", N2)  # the .md5 copied a run later
    apply_updates(s, workers=0)
    assert _titles(s)[21] == ("21 as re-issued", False)
    assert 22 in _stored(s)


# ------------------------------- X7: a copy staged before the re-issue, applied after it


def test_x7_a_file_staged_before_its_reissue_does_not_hide_it(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A bootstrap's fetcher (the DAG's ``fetch_file``, or a killed call's prefetch)
    staged ``pubmed26n0001`` of the baseline; NLM re-issues it before the writer runs.
    The writer applies the verified staged copy (the first issue), and must not record it
    under the listing entry of the new issue: the next run must find the re-issue.
    (Staging and planning: SQLite; X4 runs a bootstrap's re-issue on both stores.)"""
    s = _settings(emu, sqlite_settings)
    emu.add_file("baseline", N1, _file(_art(11, "11 as first issued")))
    emu.add_file("updatefiles", N2, _file(_art(21, "21 of file 2")))
    first = next(f for f in pending_files(s).pending if f.name == N1)
    assert stage_file(s, first) is not None  # staged ahead of the writer
    emu.add_file("baseline", N1, _file(_art(11, "11 as re-issued")))
    load_files(s, workers=0, prefetch=0)
    assert _titles(s)[11] == ("11 as first issued", False)  # the staged copy: as before
    load_files(s, workers=0, prefetch=0)
    assert _titles(s)[11] == ("11 as re-issued", False)


# ------------------------------------------------------------------- held (not defects)


def test_a_file_copied_again_unchanged_or_its_md5_alone_changed_is_not_applied_again(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A run with the listing unchanged reads no applied file's ``.md5``. A mirror copies
    file 2 again, the same bytes (a later "Last modified"): its ``.md5`` is read once,
    nothing is applied. Then its ``.md5`` alone changes (a mirror mid-update): the file
    served never matches it, so nothing is applied over the store (the run may fail on
    the checksum, naming the file). Planning only: SQLite."""
    s = _settings(emu, sqlite_settings)
    _publish_and_apply(emu, s)
    before = {n: _md5_reads(emu, n) for n in (N1, N2, N3)}
    apply_updates(s, workers=0)
    assert {n: _md5_reads(emu, n) for n in (N1, N2, N3)} == before, "reads of unchanged files"
    emu.add_file("updatefiles", N2, ISSUE_A)  # copied again
    apply_updates(s, workers=0)
    apply_updates(s, workers=0)
    assert _last_run(s)["details"]["files"] == []
    assert _md5_reads(emu, N2) <= before[N2] + 1
    emu.add_file("updatefiles", N2, ISSUE_A, md5="0" * 32)  # .md5 rewritten, file not
    try:
        apply_updates(s, workers=0)
    except ChecksumError as exc:
        assert N2 in str(exc)
    assert _titles(s)[21] == ("21 as first issued", False)
    with db.connect(s).connect() as conn:
        md5 = conn.execute(
            select(source_files.c.md5).where(source_files.c.name == N2)
        ).scalar_one()  # fmt: skip
    assert md5 != "0" * 32


def test_a_listing_without_dates_or_sizes_still_finds_the_newest_files_reissue(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A mirror whose index lists names only: each run reads the ``.md5`` of the newest
    applied files (``RECHECK_NEWEST``) and finds a re-issue of the newest. An applied
    file's ``.md5`` answered with an error page holds no new file back: it is checked
    again by the next run."""
    s = _settings(emu, sqlite_settings)
    original = emu.listing
    emu.listing = lambda kind: re.sub(  # type: ignore[method-assign]
        rb"</a>[^<\n]*", b"</a>", original(kind)
    )
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    apply_updates(s, workers=0)
    emu.add_file("updatefiles", N2, ISSUE_B)
    emu.add_file("updatefiles", N3, FILE_3)
    emu.faults.add("garbage", path=f"=/pubmed/updatefiles/{N2}.md5", times=1)
    apply_updates(s, workers=0)
    assert _titles(s)[31] == ("31 of file 3", False), "a new file held back"
    apply_updates(s, workers=0)
    assert _titles(s)[22] == ("22 only in the re-issue", False)
