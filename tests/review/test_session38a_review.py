"""Session 38a: issue #12's ingest speed, the content MD5 that review 37c's X5 added.

``ingest --files`` (:func:`ingest.files.ingest_files`) unpacked every NLM-named
``.xml.gz`` once more before its parse to take its content MD5
(:func:`litpulse.core.checksums.content_md5`, 0.25-0.9 s for the bench's 12 MiB file, on
the writer's CPU). On a file's first read nothing needs it before the file is stored: it
is recorded (``source_times.md5``: :meth:`ingest.store.Store.note_first_issue`) so that a
later update-file run, or a later copy, tells the same content from another issue.

**Changed** (speed, no defect): the parse takes the MD5 of the bytes it unpacks anyway
(:class:`ingest.parse.ContentDigest`; in the worker that parses the file, or stripe 0 of
a striped one, which sends it with the job's end: :func:`ingest.parallel.parse_ordered`
``contents``), and ``ingest_files`` records it once the file's last batch is stored. It
is still computed in the writer, eagerly, only where a comparison needs it before the
parse (an issue recorded and the copy's bytes not that MD5; a copy that is not the first
read: :func:`ingest.files._reissue` records it before the first item), and for a first
read whose stream the parse did not read whole (a damaged gzip stream: its bytes' MD5, as
before). An unpacked ``.xml`` copy read first is told by its bytes' MD5 as before, taken
by its parse too (one MD5 of the whole file less in the writer), unless its bytes are gzip
(the parse unpacks them: its bytes' MD5 is computed then, as before).

The new window: a run killed after a first read's items are stored and before its MD5 is
recorded leaves the file's as-of time with no issue (``source_times.md5`` NULL), which the
rules already treat as an unknown issue (:data:`ingest.store.UNKNOWN_ISSUE`): the server's
copy, of the same content or of another, is applied whole as a re-issue of it, never
half; the same copy read again is the first read still and records the MD5 (tests below).

What held (run, unchanged): ``tests/ingest/test_files.py``, ``test_parallel.py``,
``test_crash_resume.py``, ``test_updatefiles*.py``, ``test_parse.py``, the review files of
sessions 35a, 36a, 36f, 37c (X4-X6, X8) and 37g.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import pytest
from sqlalchemy import select

from ingest.files import ingest_files
from ingest.parallel import parse_ordered
from ingest.parse import ContentDigest, iter_items, iter_units, source_ref_for
from ingest.updatefiles import apply_updates
from litpulse.app.demo.pubmed_xml import pubmed_set
from litpulse.core import db
from litpulse.core.checksums import content_md5
from litpulse.core.schema import source_times
from litpulse.core.settings import Settings
from tests.ingest.test_windows_review import ReviewEmulator, _settings
from tests.review.test_session35a_review import _killed_once
from tests.review.test_session36a_review import (
    ISSUE_A,
    ISSUE_B,
    N1,
    N2,
    _art,
    _copy,
    _file,
    _runs,
    _titles,
)

FIRST = (("21 as first issued", False), ("22 as first issued", False))
RE_ISSUED = (("21 as re-issued", False), ("22 as re-issued", False))
#: Issue A's content packed otherwise (as NLM's server may pack it): other gzip bytes.
ISSUE_A_REPACKED = gzip.compress(gzip.decompress(ISSUE_A), compresslevel=1, mtime=1)


def _both(s: Settings) -> tuple[tuple[str, bool], tuple[str, bool]]:
    got = _titles(s)
    return got[21], got[22]


def _issue_of(s: Settings, path: Path) -> str | None:
    """The MD5 ``source_times`` holds of the NLM file ``path`` is a copy of."""
    seq = source_ref_for(path).sequence
    t = source_times.c
    with db.connect(s).connect() as conn:
        md5: str | None = conn.execute(select(t.md5).where(t.sequence == seq)).scalar()
    return md5


def _content(data: bytes) -> str:
    return hashlib.md5(gzip.decompress(data)).hexdigest()


# ------------------------------------------- the parse takes the content MD5 it unpacks


def _padded_members() -> bytes:
    """Two gzip members, NUL padding between and after (read as one document)."""
    doc = pubmed_set([_art(1, "one"), _art(2, "two")])
    return gzip.compress(doc[:200]) + b"\0" * 8 + gzip.compress(doc[200:]) + b"\0" * 4


DOCUMENTS = {
    "gzip": ISSUE_A,
    "plain": gzip.decompress(ISSUE_A),
    "members and padding": _padded_members(),
    # not a PubmedArticleSet: the pull parser reads it (from the start again where its
    # prolog was too long to hold: the MD5 starts again with it)
    "html page": gzip.compress(b"<html><body>Service unavailable</body></html>"),
    "long prolog, other root": gzip.compress(
        b"<?xml version='1.0'?>" + b"<!--" + b"x" * (1 << 21) + b"--><Other/>"
    ),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_parse_takes_the_content_md5_that_content_md5_computes(
    name: str, tmp_path: Path
) -> None:
    path = tmp_path / "doc.xml.gz"
    path.write_bytes(DOCUMENTS[name])
    want = content_md5(path)
    whole, stripe = ContentDigest(), ContentDigest()
    with path.open("rb") as fh:
        list(iter_items(fh, content=whole))
    with path.open("rb") as fh:
        for _u, items in iter_units(fh, part=0, parts=2, content=stripe):
            list(items or ())
    assert (whole.hexdigest, stripe.hexdigest) == (want, want)


def test_a_damaged_stream_gives_no_content_md5() -> None:
    digest = ContentDigest()
    items = list(iter_items(io.BytesIO(ISSUE_A[:-12]), content=digest))
    assert items, "the records before the cut are read"
    assert digest.hexdigest is None


@pytest.mark.parametrize(("workers", "stripe"), [(0, None), (1, None), (2, True), (2, False)])
def test_parse_ordered_hands_the_content_md5_of_the_jobs_asked(
    workers: int, stripe: bool | None, tmp_path: Path
) -> None:
    """Each job asked gets its MD5 by the time its items are read (striped: from stripe
    0, whichever stripe sends the end); the others none; the items are unchanged."""
    paths = [_copy(tmp_path, data, f"pubmed26n000{i + 1}.xml.gz")
             for i, data in enumerate((ISSUE_A, ISSUE_B, ISSUE_A[:-12]))]  # fmt: skip
    contents: dict[int, str | None] = {0: None, 2: None}
    got, items_of = {}, {}
    for index, items in parse_ordered(
        [(p, source_ref_for(p)) for p in paths], workers=workers, parse=iter_items,
        stripe=stripe, contents=contents, prepare=False,
    ):  # fmt: skip
        items_of[index] = len(list(items))
        got[index] = contents.get(index, "not asked")
    assert got == {0: _content(ISSUE_A), 1: "not asked", 2: None}
    assert items_of == {i: len(list(iter_items(p))) for i, p in enumerate(paths)}


@pytest.mark.parametrize(("workers", "stripe"), [(0, None), (2, None), (2, False)])
def test_a_first_read_records_the_content_md5_its_parse_took(
    settings: Settings, tmp_path: Path, workers: int, stripe: bool | None
) -> None:
    copy = _copy(tmp_path, ISSUE_A)
    ingest_files(settings, [copy], workers=workers, stripe=stripe)
    assert _issue_of(settings, copy) == _content(ISSUE_A)
    assert _both(settings) == FIRST


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unpacked_first_copy_records_its_bytes_md5_its_parse_took(
    settings: Settings, tmp_path: Path, workers: int
) -> None:
    plain = _copy(tmp_path, gzip.decompress(ISSUE_A), N2.removesuffix(".gz"))
    ingest_files(settings, [plain], workers=workers)
    assert _issue_of(settings, plain) == _content(ISSUE_A)


def test_gzip_bytes_under_an_unpacked_name_are_recorded_by_their_bytes(
    settings: Settings, tmp_path: Path
) -> None:
    """Held: a ``.xml`` copy is told by its bytes' MD5, as before, gzip bytes too (its
    parse unpacks them: the MD5 it took is not recorded)."""
    odd = _copy(tmp_path, ISSUE_A, N2.removesuffix(".gz"))
    ingest_files(settings, [odd], workers=0)
    assert _issue_of(settings, odd) == hashlib.md5(ISSUE_A).hexdigest()
    assert _both(settings) == FIRST


def test_a_damaged_first_copy_is_recorded_by_its_bytes(
    settings: Settings, tmp_path: Path
) -> None:
    """Held: a cut ``.xml.gz`` read first is told by its bytes' MD5, as before."""
    copy = _copy(tmp_path, ISSUE_A[:-12])
    ingest_files(settings, [copy], workers=0)
    assert _issue_of(settings, copy) == hashlib.md5(ISSUE_A[:-12]).hexdigest()


# --------------------------- killed before the content MD5 of a first read is recorded


def _killed_before_the_md5(s: Settings, copy: Path) -> None:
    """``ingest --files copy`` killed once its items are all stored: the next commit (the
    content MD5's) does not happen."""
    with _killed_once(s, lambda: len(_titles(s)) == 2):
        ingest_files(s, [copy], workers=0, batch_size=1)
    assert _both(s) == FIRST
    assert _issue_of(s, copy) is None, "the kill missed the window"


@pytest.mark.parametrize(
    ("server", "want"), [(ISSUE_A_REPACKED, FIRST), (ISSUE_B, RE_ISSUED)],
    ids=["same-content", "other-content"],
)  # fmt: skip
def test_killed_before_the_md5_then_the_servers_copy_is_applied_whole(
    emu: ReviewEmulator, settings: Settings, tmp_path: Path, server: bytes, want: object
) -> None:
    """The as-of time is of an issue not recorded: the server's copy, of the same
    content or not, is applied whole as a re-issue of an unknown issue, never half."""
    s = _settings(emu, settings)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    _killed_before_the_md5(s, _copy(tmp_path, ISSUE_A))
    emu.add_file("updatefiles", N2, server)
    apply_updates(s, workers=0)
    assert _both(s) == want
    assert [r["was"] for r in _runs(s)[-1]["details"]["reissued"]] == ["unknown"]


def test_killed_before_the_md5_then_resumed_records_it(
    emu: ReviewEmulator, settings: Settings, tmp_path: Path
) -> None:
    """The same copy read again is the first read still: it records the MD5, and the
    server's copy of the same content (other gzip bytes) is then no re-issue."""
    s = _settings(emu, settings)
    emu.add_file("updatefiles", N1, _file(_art(11, "Record 11")))
    copy = _copy(tmp_path, ISSUE_A)
    _killed_before_the_md5(s, copy)
    ingest_files(s, [copy], workers=0)
    assert _issue_of(s, copy) == _content(ISSUE_A)
    emu.add_file("updatefiles", N2, ISSUE_A_REPACKED)
    apply_updates(s, workers=0)
    assert not _runs(s)[-1]["details"].get("reissued"), "the same content as a re-issue"
    assert _both(s) == FIRST


def test_killed_before_the_md5_then_another_copy_is_read_whole(
    settings: Settings, tmp_path: Path
) -> None:
    """Another copy (another path) of another issue, after the kill: read whole as a
    re-issue of the unknown issue, and its own content MD5 recorded for what follows."""
    _killed_before_the_md5(settings, _copy(tmp_path, ISSUE_A))
    (tmp_path / "b").mkdir()
    other = _copy(tmp_path / "b", ISSUE_B)
    ingest_files(settings, [other], workers=0)
    assert _both(settings) == RE_ISSUED
    assert [r["was"] for r in _runs(settings)[-1]["details"]["reissued"]] == ["unknown"]
    assert _issue_of(settings, other) == _content(ISSUE_B)
