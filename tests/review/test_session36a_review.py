"""Hostile review (session 36a): update files and local copies as an operator handles them.

Code under review: ``ingest/files.py`` (``litpulse ingest --files``: a local copy named
like an NLM file is that file's source), ``ingest/updatefiles.py`` (the listing, the plan,
``source_files``), ``ingest/store.py`` (``source_times``, ``Store.reissue``) and
``ingest/rules.py`` (a numbered file is one source, positions decide within it), driven
through the CLI and the loopback emulator (``tests/emulator.py``).

Attacked and held (kept as a test, not a defect): a file the update-file run applied,
then given again to ``litpulse ingest --files``, then the next update-file run: the rows
(titles, versions, sources and positions), ``source_files`` and what the runs say
(``left`` 0, the watermark set) are those of a store that never saw the local copy.
An ``./``-prefixed or absolute-URL href, and one name listed twice, are read once.

Defects (each a strict xfail asserting the correct behaviour until fixed):

X1 **An old local copy of a re-issued file, given to ``ingest --files``, undoes the new
   issue.** ``pubmed26n0002.xml.gz`` was applied, NLM re-issued it and the update-file
   run applied the new issue; the operator then runs ``litpulse ingest --files
   old/pubmed26n0002.xml.gz`` (the copy of the first issue). The store gives the copy the
   re-issue's as-of time (the number's one time), so its items are "the same source" as
   the new issue's and positions decide: a record the old issue holds further down than
   the new issue does (22) silently goes back to its old title, a newer version replaced
   by an older one. (test_x1_..., both stores)
   **Fixed**: ``Store.reissue`` keeps the MD5 of the issue a re-issue replaces
   (``source_times.earlier``, a new nullable column; ``Store.file_issues`` reads them with
   the MD5 applied), and ``ingest_files`` checks each ``.xml.gz`` copy of a file applied
   from NLM's server by its MD5 (``ingest.files._earlier_issues``): a copy of an earlier
   issue is left out with a warning and listed in the run's ``details.skipped`` (as the
   earlier source it is, it would change nothing). A store whose re-issue an earlier
   release applied has no earlier MD5 recorded: such a copy is refused as X2's is.

X2 **A local copy that is no issue this store applied is half applied.** The store applied
   issue A of file 2; the operator gives ``ingest --files`` another copy under the same
   name (NLM's re-issue fetched by hand before the nightly run found it, or an edited
   copy): it is taken for issue A read again, so each of its items at or before the
   position issue A stored for the PMID is a "replay" and skipped, the others applied: the
   store holds half of each. It must be refused with a clear message (nothing applied),
   or applied whole. (test_x2_..., both stores)
   **Fixed** with X1: a ``.xml.gz`` copy whose MD5 is neither the issue applied nor an
   earlier one is a ``ConfigError`` (exit 2) naming it, both MD5s and the ways out
   (``--updatefiles`` applies a re-issue; an edited copy goes under another name, a plain
   file), before any run is recorded. An unpacked ``.xml`` copy (its MD5 is not the
   published one) is read as before, unless the file was re-issued: then refused, its
   issue cannot be told. Not done: in a store that read file N only through ``--files``
   (no ``source_files`` row; X5 records the first copy's MD5, unused here), a second,
   different copy of N is still read as the same source, half of it a replay:
   ``ingest.files`` takes a changed local file for a newer read of it by design (a file
   rewritten between two runs), and the number's one as-of time makes that a replay.
   (Since fixed by review 36f's X1: such a copy is applied whole as a re-issue.)

X3 **A listing whose hrefs carry a query string or a fragment loses those files.**
   ``<a href="pubmed26n0002.xml.gz?download=1">`` (a CDN's or a web mirror's index) or
   ``…xml.gz#top``: ``parse_listing`` requires the name to end the href, so the file is
   not listed at all: the newest file is silently missed, an earlier one holds every later
   file back as "not on the server". (test_x3_..., SQLite: planning)
   **Fixed**: ``_HREF_RE`` (``ingest.updatefiles``) takes a query string or a fragment
   after the name (``.md5`` links stay out).

X4 **One file listed under two spellings of its name is applied twice.** A mirror that
   lists ``pubmed26n0002.xml.gz`` and ``PubMed26N0002.xml.gz`` (a copy made through a
   case-insensitive share) gets two plan entries of one number: downloaded and applied
   twice, two ``source_files`` rows, the run's counts and files doubled.
   (test_x4_..., SQLite: planning)
   **Fixed**: ``parse_listing`` keeps one file per number (``ingest.records.
   nlm_file_order``), NLM's all-lower-case spelling where it is listed. Not done: a file
   applied under one spelling and listed later under another only (the planner compares
   names) is applied again as a replay: no row changes, a second ``source_files`` row.
   (Since fixed by review 36f's X3: the planner keys files by NLM's spelling.)

X5 (found after the first four) **A file read first from a local copy, then applied from
   the server under another issue, is half applied.** ``ingest --files`` of a copy of
   ``pubmed26n0002.xml.gz`` (issue A) before the update-file run applies it; NLM has
   re-issued it meanwhile. The run applies the server's issue B as a first application
   (nothing in ``source_files``), under the as-of time the copy's read recorded: the same
   source, so B's items at or before the positions A stored are "replays": 21 revised, 22
   left as issue A has it, for good (``source_files`` then records B's MD5).
   (test_x5_..., both stores)
   **Fixed**: ``ingest --files`` records the MD5 of a ``.xml.gz`` copy whose read is the
   file's first (``Store.note_first_issue``: ``source_times.md5``), and ``_store_file``
   calls ``Store.reissue`` for every file it applies (it returns the MD5 replaced): an
   issue other than the one the as-of time is of is a re-issue, ranked after the copy and
   reported as one; the copy's MD5 joins the earlier issues, so the copy read again is
   skipped (X1). Not done: a resumed run of such a re-issue (killed in it) does not report
   it again (``source_files`` holds no earlier MD5 to compare).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingest.updatefiles import apply_updates
from litpulse.app.cli import main
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.schema import articles, ingest_runs, source_files
from litpulse.core.settings import Settings
from litpulse.pipeline.planning import last_watermark
from tests.ingest.test_windows_review import ReviewEmulator, _settings

DAY = dt.date(2026, 1, 5)
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


def _rows(s: Settings) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every stored row as the rules see it, and ``source_files``."""
    a, f = articles.c, source_files.c
    with db.connect(s).connect() as conn:
        rows = conn.execute(select(
            a.pmid, a.title, a.version, a.is_deleted, a.source_kind, a.source_sequence,
            a.source_time, a.source_position,
        ).order_by(a.pmid)).all()  # fmt: skip
        files = conn.execute(select(f.name, f.md5, f.counts).order_by(f.name)).all()
    return [tuple(r) for r in rows], [tuple(r) for r in files]


def _runs(s: Settings) -> list[dict[str, Any]]:
    with db.connect(s).connect() as conn:
        rows = conn.execute(select(ingest_runs).order_by(ingest_runs.c.id)).all()
    return [dict(r._mapping) for r in rows]


#: File 2 as first issued, and as NLM re-issued it: the same records in another order,
#: revised (the same version and revision date: the later issue must win by its rank).
ISSUE_A = _file(_art(21, "21 as first issued"), _art(22, "22 as first issued"))
ISSUE_B = _file(_art(22, "22 as re-issued"), _art(21, "21 as re-issued"))


def _copy(tmp_path: Path, data: bytes, name: str = N2) -> Path:
    path = tmp_path / "copies" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------ X1: an old copy of a re-issued file given again


def test_x1_an_old_copy_of_a_reissued_file_changes_nothing(
    emu: ReviewEmulator, env: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """File 2 applied, re-issued and applied again by the update-file runs; ``litpulse
    ingest --files`` of a copy of its first issue must change nothing (the copy is that
    earlier issue, which the new one outranks) and say so."""
    s = _settings(emu, env)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    apply_updates(s, workers=0)
    emu.add_file("updatefiles", N2, ISSUE_B)
    apply_updates(s, workers=0)
    before = _rows(s)
    assert _titles(s)[22] == ("22 as re-issued", False)
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    assert _titles(s)[22] == ("22 as re-issued", False), "the old issue's record won"
    assert _rows(s) == before
    assert "earlier issue" in caplog.text
    apply_updates(s, workers=0)  # the nightly run after it: nothing to do, nothing moved
    assert _runs(s)[-1]["details"]["files"] == []
    assert _rows(s) == before


# ------------------------------------------ X2: a copy that is no issue this store applied


def test_x2_a_copy_that_is_no_applied_issue_is_refused_not_half_applied(
    emu: ReviewEmulator, env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue A of file 2 applied by the update-file run; the operator gives ``ingest
    --files`` NLM's new issue fetched by hand (another MD5 under the same name). Refused
    with a clear message, nothing stored; the update-file run then applies the re-issue
    whole."""
    s = _settings(emu, env)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    apply_updates(s, workers=0)
    before = _rows(s)
    capsys.readouterr()
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_B))]) == 2
    err = capsys.readouterr().err
    assert N2 in err and "--updatefiles" in err, err
    assert _rows(s) == before, "half of the copy applied"
    emu.add_file("updatefiles", N2, ISSUE_B)
    apply_updates(s, workers=0)
    got = _titles(s)
    assert (got[21], got[22]) == (("21 as re-issued", False), ("22 as re-issued", False))


# ---------------------------------------- X3: hrefs with a query string or a fragment


def _listing_rewritten(emu: ReviewEmulator, how: Any) -> None:
    original = emu.listing
    emu.listing = lambda kind: how(original(kind))  # type: ignore[method-assign]


def test_x3_hrefs_with_a_query_string_or_a_fragment_are_listed(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A web mirror's index links ``NAME?download=1`` (file 2) and ``NAME#top`` (file 3),
    file 1 by an absolute URL: every file is applied, once."""
    s = _settings(emu, sqlite_settings)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    emu.add_file("updatefiles", N3, _file(_art(31, "31 of file 3")))
    _listing_rewritten(emu, lambda page: page.replace(
        f'href="{N2}"'.encode(), f'href="{N2}?download=1"'.encode()
    ).replace(
        f'href="{N3}"'.encode(), f'href="./{N3}#top"'.encode()
    ).replace(
        f'href="{N1}"'.encode(), f'href="{emu.url}/pubmed/updatefiles/{N1}"'.encode()
    ))  # fmt: skip
    apply_updates(s, workers=0)
    assert _runs(s)[-1]["details"]["files"] == [N1, N2, N3]
    assert {11, 21, 22, 31} <= set(_titles(s))


# --------------------------------------------- X4: one file listed under two spellings


def test_x4_a_file_listed_under_two_spellings_is_applied_once(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    s = _settings(emu, sqlite_settings)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    emu.add_file("updatefiles", "PubMed26N0002.xml.gz", ISSUE_A)
    apply_updates(s, workers=0)
    run = _runs(s)[-1]
    assert run["details"]["files"] == [N1, N2]
    assert run["inserted"] == 3 and run["unchanged"] == 0, run
    assert [r[0] for r in _rows(s)[1]] == [N1, N2]
    apply_updates(s, workers=0)
    assert _runs(s)[-1]["details"]["files"] == []


# ------------------------- X5: a local copy read first, then another issue from the server


def test_x5_a_file_read_from_a_local_copy_then_another_issue_from_the_server(
    emu: ReviewEmulator, env: Settings, tmp_path: Path
) -> None:
    """The operator loads a local copy of file 2 (issue A) with ``ingest --files`` before
    the update-file run applies it; NLM has re-issued it meanwhile (the server holds
    issue B). The update-file run must apply issue B whole, ranked after the copy read."""
    s = _settings(emu, env)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    emu.add_file("updatefiles", N2, ISSUE_B)
    apply_updates(s, workers=0)
    got = _titles(s)
    assert (got[21], got[22]) == (("21 as re-issued", False), ("22 as re-issued", False))
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0  # now earlier
    got = _titles(s)
    assert (got[21], got[22]) == (("21 as re-issued", False), ("22 as re-issued", False))


# -------------------------------------------------------------------- held (not defects)


def test_a_file_given_to_ingest_files_after_it_was_applied_changes_nothing(
    emu: ReviewEmulator, env: Settings, tmp_path: Path
) -> None:
    """Files 1-2 applied by the update-file run; ``ingest --files`` of the same file 2
    (also listed twice, ``./``-prefixed: read once); then the nightly update-file run
    applies file 3: the rows, ``source_files`` and the runs are as if the local copy had
    never been read."""
    s = _settings(emu, env)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11"), deleted=(24,)))
    emu.add_file("updatefiles", N2, ISSUE_A)
    _listing_rewritten(emu, lambda page: re.sub(
        rb'(<a href=")(pubmed26n0002\.xml\.gz">[^\n]*)', rb"\1./\2\n\1\2", page
    ))  # fmt: skip
    apply_updates(s, workers=0)
    before = _rows(s)
    copy = _copy(tmp_path, ISSUE_A)
    assert main(["ingest", "--files", str(copy), str(copy)]) == 0
    assert _rows(s) == before
    emu.add_file("updatefiles", N3, _file(_art(31, "31 of file 3")))
    apply_updates(s, workers=0)
    rows, files = _rows(s)
    assert (rows[:-1], files[:-1]) == before
    assert rows[-1][:2] == (31, "31 of file 3")
    last = _runs(s)[-1]["details"]
    assert (last["files"], last["left"]) == ([N3], 0)
    assert last_watermark(s) is not None
