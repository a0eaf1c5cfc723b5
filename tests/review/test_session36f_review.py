"""Hostile review (session 36f): local copies read with ``litpulse ingest --files``, and
the root element as written.

Code under review: ``ingest/files.py`` (``_earlier_issues``, ``_note_first_issues``),
``ingest/store.py`` (``Store.reissue``, ``Store.note_first_issue``, ``source_times``),
``ingest/updatefiles.py`` (the plan, ``source_files``) and ``ingest/parse.py`` (the root
start tag, ``_ROOT_OPEN_RE``), driven through the CLI and the loopback emulator
(``tests/emulator.py``); the oracle is a clean run, or lxml's parse of the document.

Defects (each a strict xfail asserting the correct behaviour until fixed):

X1 **A second, different copy of a file read only through ``--files`` is half applied.**
   The store read ``pubmed26n0002.xml.gz`` (issue A) only from a local copy (no
   ``source_files`` row); the operator then gives ``ingest --files`` another copy under
   the same name (NLM's re-issue fetched by hand). The number's one as-of time makes it
   the same source as issue A: its items at or before the positions A stored are
   "replays", skipped: 21 revised, 22 left as A has it, silently. (test_x1_..., both
   stores)
   **Fixed**: ``Store.file_issues`` also says whether the file was applied from NLM's
   server; where it was not, the issue read last is ``source_times.md5`` (the first
   copy's, ``Store.note_first_issue``), and ``ingest.files._earlier_issues`` tells each
   copy by its MD5: that issue is read as ever, an earlier one is left out with a
   warning, any other is read whole as a re-issue (``ingest.files._reissue`` calls
   ``Store.reissue`` before its first item: ranked after the copy read before, reported
   in the run's ``details.reissued``; a resumed run finds it the issue read last).
   Not done: a store whose first copy was read by a release before 36a (no MD5 in
   ``source_times``) still reads a second, different copy as the same source.

X2 **An unpacked ``.xml`` copy read before the server's ``.gz`` is not told apart.**
   ``ingest --files pubmed26n0002.xml`` (issue A, unpacked) records no MD5, so the
   update-file run that then applies the server's issue B applies it as the copy read
   again: half a replay, 22 left as issue A has it. (test_x2_..., both stores)
   **Fixed** with X1: the MD5 of an unpacked copy whose read is the file's first is
   recorded as a ``.xml.gz``'s is (``_note_first_issues``), so the server's issue is a
   re-issue of it (applied whole, ranked after it); that copy read again is then an
   earlier issue, left out (an unpacked copy of a re-issued file whose MD5 is no earlier
   issue is refused as before). Its MD5 is never the ``.gz``'s: the server's ``.xml.gz``
   of the same content is applied whole as a re-issue too (nothing changes, but the run
   reports a re-issue).

X3 **A file name whose case changes between runs is applied again, a second
   ``source_files`` row.** File 2 applied as ``pubmed26n0002.xml.gz``; a later listing
   spells it ``PubMed26N0002.xml.gz`` only (a mirror copied through a case-insensitive
   share): the planner compares names, so it is downloaded and applied again, and
   ``source_files`` holds both spellings. (test_x3_..., SQLite: planning)
   **Fixed**: ``applied_files`` keys each NLM file by NLM's spelling of its name
   (``RemoteFile.key``, ``ingest.records.nlm_file_name``), and the plan, the re-issue
   check and ``note_listed`` compare that key; ``_store_file`` keeps one row of a file
   (it drops a row of another spelling as it writes the listed one), so a re-issue
   listed under the new spelling is applied once and recorded once. The download still
   uses the listed spelling (a case-sensitive server). Not done: the progress mark of a
   file a killed run began is keyed by the listed spelling: resumed under another one,
   the file is replayed from its start (nothing changes; slower).

X4 **A ``>`` inside a quoted attribute of the root start tag cuts the root there.**
   ``<PubmedArticleSet xmlns:x="urn:x" note="a>b">``: ``_ROOT_OPEN_RE`` (``[^>]*``)
   stops at the attribute's ``>``; the first batch still parses (the rest of the tag is
   its first gap), but every later batch fails under the cut root, is re-parsed record by
   record under it (the root declares namespaces) and every record of it is quarantined:
   records 42 and 43 (after a first batch of 128 KiB) are lost. (test_x4_..., both stores)
   **Fixed**: ``_ROOT_OPEN_RE`` (``ingest.parse``) reads a quoted attribute value whole,
   and ``_start`` reads on while the head ends inside one (``_ROOT_OPEN_QUOTE_RE``), so
   a ``>`` in a value past the first read does not send the file to the pull parser.

Attacked and held (after X1's fix): two different copies of one file given to one
``ingest --files`` run: the second is read whole as a re-issue of the first.

Attacked and held (not a defect): CR-only line ends (``\\r``, as XML allows) give
every quarantine entry of such a file line 1; so does lxml (libxml2 counts only
``\\n``): the lines are lxml's, as for every other file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from ingest.updatefiles import apply_updates
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.schema import quarantine
from litpulse.core.settings import Settings
from tests.ingest.test_windows_review import ReviewEmulator, _settings
from tests.review.test_session36a_review import (
    ISSUE_A,
    ISSUE_B,
    N1,
    N2,
    _art,
    _copy,
    _file,
    _rows,
    _runs,
    _titles,
)

RE_ISSUED = (("21 as re-issued", False), ("22 as re-issued", False))


def _both(s: Settings) -> tuple[tuple[str, bool], tuple[str, bool]]:
    got = _titles(s)
    return got[21], got[22]


# ------------------------------- X1: a second copy of a file read only through --files


def test_x1_a_second_copy_of_a_file_read_only_from_copies_is_applied_whole(
    env: Settings, tmp_path: Path
) -> None:
    """Issue A of file 2 read from a local copy; then a copy of issue B under the same
    name: applied whole (a re-issue, ranked after A), never half. Issue A's copy read
    again then changes nothing."""
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    new = tmp_path / "new"
    new.mkdir()
    assert main(["ingest", "--files", str(_copy(new, ISSUE_B))]) == 0
    assert _both(env) == RE_ISSUED, "half of the second copy applied"
    before = _rows(env)
    assert main(["ingest", "--files", str(_copy(tmp_path, ISSUE_A))]) == 0
    assert _rows(env) == before


# ------------------------------ X2: an unpacked copy read before the server's .xml.gz


def test_x2_an_unpacked_copy_then_another_issue_from_the_server(
    emu: ReviewEmulator, env: Settings, tmp_path: Path
) -> None:
    import gzip

    s = _settings(emu, env)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    plain = _copy(tmp_path, gzip.decompress(ISSUE_A), N2.removesuffix(".gz"))
    assert main(["ingest", "--files", str(plain)]) == 0
    emu.add_file("updatefiles", N2, ISSUE_B)
    apply_updates(s, workers=0)
    assert _both(s) == RE_ISSUED, "the server's issue half applied"
    before = _rows(s)
    assert main(["ingest", "--files", str(plain)]) == 0  # the copy again: now earlier
    assert _rows(s) == before


# ---------------------------------------- X3: a name whose case changes between runs


def test_x3_a_file_listed_later_under_another_spelling_is_not_applied_again(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    s = _settings(emu, sqlite_settings)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    emu.add_file("updatefiles", N2, ISSUE_A)
    apply_updates(s, workers=0)
    before = _rows(s)
    emu.files["updatefiles"]["PubMed26N0002.xml.gz"] = emu.files["updatefiles"].pop(N2)
    apply_updates(s, workers=0)
    assert _runs(s)[-1]["details"]["files"] == []
    assert _rows(s) == before
    emu.add_file("updatefiles", "PubMed26N0002.xml.gz", ISSUE_B)  # then NLM re-issues it
    apply_updates(s, workers=0)
    assert _both(s) == RE_ISSUED
    files = {name.lower(): md5 for name, md5, _counts in _rows(s)[1]}
    assert len(_rows(s)[1]) == 2, "a second row of file 2"
    assert files[N2] == hashlib.md5(ISSUE_B).hexdigest()


# ------------------------------------------ X4: '>' in a quoted attribute of the root


def _root_doc(root: bytes, eol: bytes = b"\n") -> bytes:
    big = _art(41, "Record 41", abstract="word " * 30_000)  # over a batch: 42, 43 in the next
    body = b"\n".join([big, _art(42, "Record 42"), _art(43, "Record 43")])
    doc = b'<?xml version="1.0" ?>\n' + root + b"\n" + body + b"\n</PubmedArticleSet>\n"
    return doc.replace(b"\n", eol)


@pytest.mark.parametrize("long", [False, True], ids=["short", "over-a-read"])
def test_x4_a_root_with_a_gt_in_a_quoted_attribute(
    env: Settings, tmp_path: Path, long: bool
) -> None:
    """The root declares a namespace and has a ``>`` in two quoted values (the second
    value, where ``long``, runs past the first read of the file)."""
    pad = b"y" * (40_000 if long else 1)
    doc = _root_doc(b'<PubmedArticleSet xmlns:x="urn:x" note="a>b" x:k=\'c>' + pad + b"'>")
    tree = etree.fromstring(doc)  # the oracle: lxml reads three records
    want = {int(e) for e in tree.xpath("//PMID/text()")}
    path = tmp_path / "gt.xml"
    path.write_bytes(doc)
    assert main(["ingest", "--files", str(path)]) == 0
    assert set(_titles(env)) == want == {41, 42, 43}
    with db.connect(env).connect() as conn:
        assert conn.execute(select(quarantine.c.reason)).all() == []


# -------------------------------------------------------------------- held (not defects)


def test_two_copies_of_one_file_in_one_run_the_later_is_applied_whole(
    env: Settings, tmp_path: Path
) -> None:
    """Two different copies of file 2 given to one ``ingest --files`` run: the second
    (as given) is read whole as a re-issue of the first, as in two runs (X1)."""
    new = tmp_path / "new"
    new.mkdir()
    old_copy, new_copy = _copy(tmp_path, ISSUE_A), _copy(new, ISSUE_B)
    assert main(["ingest", "--files", str(old_copy), str(new_copy)]) == 0
    assert _both(env) == RE_ISSUED
    assert [r["path"] for r in _runs(env)[-1]["details"]["reissued"]] == [str(new_copy.resolve())]
