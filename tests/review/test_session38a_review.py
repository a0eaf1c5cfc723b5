"""Session 38a: issue #12's ingest speed, the content MD5 that review 37c's X5 added.

The parse takes the MD5 of the bytes it unpacks anyway (:class:`ingest.parse.ContentDigest`;
in :func:`ingest.parallel.parse_ordered`, ``contents``: the worker that parses a job, or
stripe 0 of a striped one, sends it with the job's end), equal to
:func:`litpulse.core.checksums.content_md5`'s, so that ``ingest --files`` need not unpack
a file once more to learn it (the next commit).
"""

from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import pytest

from ingest.parallel import parse_ordered
from ingest.parse import ContentDigest, iter_items, iter_units, source_ref_for
from litpulse.app.demo.pubmed_xml import pubmed_set
from litpulse.core.checksums import content_md5
from tests.review.test_session36a_review import (
    ISSUE_A,
    ISSUE_B,
    _art,
    _copy,
)


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
