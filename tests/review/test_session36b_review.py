"""Hostile review (session 36b): the record cutter and the parallel parse on hostile XML.

Code under review: ``ingest/boundaries.py`` (:func:`pieces` cuts the decompressed
stream at record tags with ``bytes.find``, blind to comments and CDATA;
:func:`split_records` re-cuts a batch that is not well-formed), ``ingest/parse.py`` (the
batches, the record-by-record fallback) and ``ingest/parallel.py`` (one file striped over
the parse workers). Each file is ingested with ``litpulse ingest --files`` (one and two
workers, SQLite and PostgreSQL) and the store compared with an oracle: lxml's own parse
of the same records, with the one malformed record quarantined and every other kept.

Attacked and held (one file of them kept as test_held_..., through the CLI on both
stores; each compared with the oracle through the parse with one process and two
stripes): ``<PubmedArticle>`` and ``</PubmedArticle>`` written
in a comment, a CDATA section or a PI, inside a record or between two; escaped
``&lt;PubmedArticle&gt;`` text; a commented-out ``<DeleteCitation>``; a DOCTYPE whose
internal subset holds an entity whose value is ``<PubmedArticle>`` (records using its
entities are quarantined, as documented); a UTF-8 BOM, CRLF line ends, ISO-8859-1 over
several batches, UTF-16 (LE with a BOM, BE without); a root start tag with ``>`` in an
attribute; ``PubmedBookArticle``, ``DeleteCitation`` and ``PubmedArticle`` interleaved;
a record (of each kind) whose end tag is missing followed by good ones; two gzip members
that split the document mid-stream; a truncated gzip (every whole record kept, one entry
for the cut with its line). The cutter fed in blocks of 1..39, 64, 100 and 333 bytes cuts
the same bytes into the same batches (its pieces differ where an end tag is missing or a
start tag is commented out, but the batch re-cut by :func:`split_records` gives the same
items). Also held: XXE and billion laughs in a document that is not a
``PubmedArticleSet`` (the pull parser: nothing resolved, the laughs refused at once), a
prolog of 1.5 MB (comments, PIs, blank lines: quarantine lines still right), an empty
``<PubmedArticleSet/>``, two whole documents as gzip members (both kept, one entry for
the second prolog), fields mixing CDATA, comments, PIs and character references (the
compiled reader and the Python one agree).

Not pursued: a root start tag with a quoted ``>`` in an attribute
(``<PubmedArticleSet note="a>b">``) is cut at that ``>`` (``_ROOT_OPEN_RE``): every batch
after the first fails and is re-cut record by record (the records are kept; slower),
and were that root also to declare namespaces, X2's records would be lost again. A
document in UTF-8 whose declaration says UTF-16 has each record quarantined (lxml refuses
the whole). CR-only line ends give every quarantine entry line 1 (lines are counted by
``\n``). Since X3, a record over the cap whose text holds a commented-out record start
tag before its end is two entries (its head "over the limit, without its end tag", and a
syntax error for the rest), not one: the cutter cannot tell that tag from the next
record's (a broken record over the cap followed by a good one must not take the good one
with it), and an extra entry loses nothing.

Defects (each a strict xfail asserting the correct behaviour until fixed):

X1 **One unterminated comment, CDATA section or PI opener inside a record loses every
   record after it in the batch (up to 8 MiB: thousands).** An abstract holding
   ``values <? 0.05`` (an unescaped ``<`` a broken producer let through), ``see <!--
   draft`` or ``x <![CDATA[ y``: the batch is not well-formed, so it is re-cut by
   :func:`split_records`, which takes "markup left open" to run to the end of the batch:
   the bad record and the 2,995 good ones after it became one quarantine entry, and
   ``_units`` even keeps the batch open (up to ``MAX_BATCH_BYTES``, 8 MiB) waiting for
   the comment's end. Only records before it were stored. (test_x1_..., three openers,
   SQLite one worker, PostgreSQL two workers)
   **Fixed**: :func:`split_records` (``_scan``) takes an opener whose terminator the
   batch does not hold for text: the record holding it is cut at its own end tag and
   quarantined alone (its PMID and line), every other record of the batch is parsed.
   The batch itself still stays open up to ``MAX_BATCH_BYTES`` (bounded; re-cut record
   by record, slower, only for such a file). Such a batch is 8 MiB, and looking afresh
   from each record for the terminator, the next ``<PubmedArticle`` or the next end tag
   scanned the rest of the batch each time: 40,000 ``DeleteCitation`` blocks after an
   unclosed comment took 69 s, every record holding ``<?`` 4.8 s for 4,000. The re-cut
   now remembers what it found ahead (``boundaries._Seen``: each is looked for again
   only once passed) and is linear: 0.5 s for 130,000 blocks (8 MiB).
   (test_x1_the_re_cut_..., counting the bytes ``find`` scans; it passes on the old code
   too, which gave up at the first opener)

X2 **A namespace prefix the root declares costs every good record that uses it in a
   batch with one bad record.** ``<PubmedArticleSet xmlns:mml="...MathML">`` and records
   with ``<mml:math>`` in their abstracts parse in the batch (the root is written in
   front of it), but when one record of the batch is malformed each record is parsed
   again alone, without the root: ``Namespace prefix mml on math is not defined``
   quarantines the good ones too. (test_x2_..., SQLite one worker, PostgreSQL two)
   **Fixed**: ``ingest.parse._parse_batch`` parses each record of a re-cut batch under
   the root start tag as written where that root declares namespaces (as the batch was,
   and as a gap already was), and takes its one child; under any other root a record is
   parsed alone as before, so libxml2's messages stay "Premature end of data in tag
   PubmedArticle line N", not a mismatch with the root's end tag.

X3 **A record whose end tag is missing, followed by a good one, costs the good one too
   when both are in the reader's buffer and together pass the record cap.** The cutter
   took the first ``</PubmedArticle>`` in its buffer before looking for the next record's
   start tag: with ``LITPULSE_MAX_RECORD_BYTES=65536`` (the lowest allowed) a 40 KB record
   without its end tag and the 40 KB good record after it are one "record of 80935 bytes
   over the limit", quarantined and skipped unread. The same file uncompressed (read in
   16 KiB blocks, so the next start tag is found before the good record's end tag) keeps
   the good record: the store depends on how the file is compressed. (test_x3_..., gzip,
   SQLite one worker, PostgreSQL two)
   **Fixed**: :func:`ingest.boundaries.pieces`, where the span up to the first end tag
   found is over the cap, ends the record at a record start tag before that end tag
   ("without its end tag"), as it does when it meets the start tag first; the parse then
   quarantines the broken record alone. Only spans over the cap are searched again, so
   the fast path costs nothing more (a shorter merged span is re-cut by
   :func:`split_records`, as before).

X4 **A UTF-32 document is quarantined whole.** ``_utf16_codec`` left UTF-32 "to
   libxml2", but the root start tag is looked for in the raw bytes, so the document went
   to the pull parser, which failed at its first byte ("Start tag expected"): every
   record lost, where lxml's own parse reads them all. (test_x4_..., SQLite one worker,
   PostgreSQL two)
   **Fixed**: ``ingest.parse._wide_codec`` (was ``_utf16_codec``) knows UTF-32 by its
   BOM or a first ``<`` in four bytes, and :func:`_as_utf8` transcodes it as it did
   UTF-16 (its declaration rewritten to UTF-8), so it is cut and capped like any other.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import select

from ingest.boundaries import split_records
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.schema import articles, quarantine
from litpulse.core.settings import Settings
from tests.ingest.hostile import PROLOG, article, corpus, deletion, document

N = 1500


def _ingest(
    s: Settings, path: Path, workers: int, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> dict[str, Any]:
    """``litpulse ingest --files PATH --json`` with ``workers`` parse workers."""
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    if s.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", s.database_url)
    monkeypatch.setenv("LITPULSE_INGEST_WORKERS", str(workers))
    capsys.readouterr()
    assert main(["ingest", "--files", str(path), "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def _store(s: Settings) -> tuple[dict[int, tuple[str, str]], list[dict[str, Any]]]:
    """(pmid -> (title, abstract) of the live articles, quarantine rows)."""
    a = articles.c
    with db.connect(s).connect() as conn:
        rows = conn.execute(select(a.pmid, a.title, a.abstract).where(a.deleted_at.is_(None)))
        stored = {r.pmid: (r.title, r.abstract) for r in rows}
        q = [dict(r._mapping) for r in conn.execute(select(quarantine))]
    return stored, q


def _oracle(
    records: list[bytes], root: bytes = b"<PubmedArticleSet>"
) -> dict[int, tuple[str, str]]:
    """lxml's own parse of each well-formed record: pmid -> (title, abstract)."""
    out = {}
    for raw in records:
        try:
            set_ = etree.fromstring(root + raw + b"</PubmedArticleSet>")
        except etree.XMLSyntaxError:
            continue
        for el in set_:
            pmid = int(el.findtext(".//PMID"))
            title = "".join(el.find(".//ArticleTitle").itertext())
            abstract = "".join(el.find(".//AbstractText").itertext())
            out[pmid] = (title, abstract)
    return out


@pytest.fixture(params=["sqlite-1", "postgresql-2"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, int]:
    """A store and the parse workers its ingest runs with (SQLite 1, PostgreSQL 2)."""
    kind, workers = request.param.split("-")
    url = request.getfixturevalue("postgres_url") if kind == "postgresql" else ""
    s = Settings.from_env({}, home=tmp_path / "home", database_url=url)
    if url:
        from tests.conftest import _truncate

        _truncate(db.connect(s))
    return s, int(workers)


def _book(pmid: int) -> bytes:
    return (
        f'<PubmedBookArticle><BookDocument><PMID Version="1">{pmid}</PMID><Book>'
        f"<BookTitle>Book {pmid}</BookTitle><PubDate><Year>2020</Year></PubDate></Book>"
        f"<ArticleTitle>Chapter {pmid}.</ArticleTitle><Abstract><AbstractText>Abstract of "
        f"{pmid}.</AbstractText></Abstract></BookDocument><PubmedBookData><ArticleIdList>"
        f'<ArticleId IdType="pubmed">{pmid}</ArticleId></ArticleIdList></PubmedBookData>'
        "</PubmedBookArticle>\n"
    ).encode()


def test_held_a_hostile_file_is_stored_as_lxml_reads_it(
    store: tuple[Settings, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Record tags in comments, CDATA, PIs and escaped text, a BOM, CRLF, books and
    deletions interleaved, a record without its end tag before a good one, gzip members
    cut mid-record: stored as lxml reads the file (the broken record alone quarantined)."""
    s, workers = store
    tags = "<![CDATA[<PubmedArticle> </PubmedArticle> <DeleteCitation>]]> &lt;PubmedArticle&gt;"
    records = [
        article(1, abstract=tags),
        b"<!-- <PubmedArticle> </DeleteCitation> -->\n<?note </PubmedArticle>?>\n",
        article(2).replace(b"<Language>", b"<!-- </PubmedArticle><PubmedArticle> --><Language>"),
        _book(3),
        deletion("1"),
        article(4).replace(b"</PubmedArticle>", b""),  # no end tag: quarantined alone
        article(5),
        _book(6),
        b"<!--" + deletion("5") + b"-->\n",  # a comment, not a deletion
        article(7, title="Caf\u00e9 <i>na\u00efve</i>"),
    ]
    good = [r for i, r in enumerate(records) if i not in (4, 5)]  # deletion of 1, broken 4
    data = (b"\xef\xbb\xbf" + document(records)).replace(b"\n", b"\r\n")
    cut = data.index(b"<PMID", data.index(b"Chapter 6"))  # the gzip members split PMID 6
    path = tmp_path / "hostile.xml.gz"
    path.write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]))
    counts = _ingest(s, path, workers, monkeypatch, capsys)
    stored, q = _store(s)
    root = etree.fromstring(b"<PubmedArticleSet>" + b"".join(good) + b"</PubmedArticleSet>")
    want = {
        int(el.findtext(".//PMID")): (
            " ".join("".join(el.find(".//ArticleTitle").itertext()).split()),
            "".join(el.find(".//AbstractText").itertext()),
        )
        for el in root
        if isinstance(el.tag, str) and el.findtext(".//PMID") != "1"
    }
    assert stored == want, counts
    first = data[: data.index(b'<PMID Version="1">4<')].count(b"\n") + 1  # its first line
    assert [e["pmid"] for e in q] == [4], q
    assert first <= q[0]["line"] <= first + 6, (first, q[0]["line"])


# ---------------------------------------------------------------- X1 unterminated markup


@pytest.mark.parametrize(
    "frag",
    ["values <? 0.05 were", "see <!-- draft", "x <![CDATA[ y"],
    ids=["pi", "comment", "cdata"],
)
def test_x1_unterminated_markup_in_one_record_costs_that_record_only(
    store: tuple[Settings, int],
    frag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    s, workers = store
    records = corpus(N, {5: article(5, abstract=frag)})
    path = tmp_path / "hostile.xml"
    path.write_bytes(document(records))
    counts = _ingest(s, path, workers, monkeypatch, capsys)
    stored, q = _store(s)
    want = _oracle(records)
    assert 5 not in want and len(want) == N - 1
    assert stored == want, (len(stored), counts)
    first = 4 + 6 * 4  # record 5's first line (2 of prolog, the root, 6 lines a record)
    assert [e["pmid"] for e in q] == [5], q
    assert first <= q[0]["line"] < first + 6, q[0]["line"]
    assert counts["quarantined"] == 1


class _Counted(bytes):
    """Bytes that count how many bytes their ``find`` looks through."""

    scanned = 0

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:  # type: ignore[override]
        lo = 0 if start is None else start
        hi = len(self) if end is None else min(end, len(self))
        at = super().find(sub, lo, hi)
        _Counted.scanned += (at + len(sub) if at >= 0 else hi) - lo
        return at


@pytest.mark.parametrize("tail", ["deletions", "every-record"])
def test_x1_the_re_cut_of_a_batch_left_open_stays_linear(tail: str) -> None:
    if tail == "deletions":  # no <PubmedArticle after them: each looked for to the end
        items = [article(1, abstract="see <!-- draft")]
        items += [deletion(str(i)) for i in range(2, 6000)] + [article(9999)]
    else:  # every record holds an unclosed opener: its terminator looked for to the end
        items = [article(i, abstract=f"p <? 0.0{i}") for i in range(1, 1500)]
    data = _Counted(b"".join(items))
    _Counted.scanned = 0
    cut = list(split_records(data, 1))
    assert sum(kind == "item" for kind, _, _ in cut) == len(items)
    assert _Counted.scanned < 12 * len(data), _Counted.scanned / len(data)


# ------------------------------------------------------------- X2 namespaces of the root


def test_x2_a_prefix_the_root_declares_holds_in_a_batch_re_cut(
    store: tuple[Settings, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    s, workers = store
    root = b'<PubmedArticleSet xmlns:mml="http://www.w3.org/1998/Math/MathML">'
    mml = "<mml:math><mml:mi>x</mml:mi></mml:math>"
    records = corpus(40, {7: article(7, abstract=f"Let {mml} be"), 20: article(20, title=mml)})
    records[9] = records[9].replace(b"</ArticleTitle>", b"</ArticleTitl>")  # PMID 10
    path = tmp_path / "ns.xml"
    path.write_bytes(PROLOG + root + b"\n" + b"".join(records) + b"</PubmedArticleSet>\n")
    counts = _ingest(s, path, workers, monkeypatch, capsys)
    stored, q = _store(s)
    want = _oracle(records, root)
    assert 10 not in want and want[7] == ("Title 7.", "Let x be")
    assert stored == want, sorted(set(want) - set(stored))
    assert [e["pmid"] for e in q] == [10], q
    assert counts["quarantined"] == 1


# ---------------------------------------------------- X3 missing end tag, then a good one


def test_x3_a_record_without_its_end_tag_never_takes_the_next_one_with_it(
    store: tuple[Settings, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    s, workers = store
    big = " ".join(["word"] * 8000)  # 40 KB: two of them pass the lowest record cap
    broken = article(2, abstract=big).replace(b"</PubmedArticle>", b"")
    records = [article(1), broken, article(3, abstract=big), article(4)]
    path = tmp_path / "cut.xml.gz"
    path.write_bytes(gzip.compress(document(records)))
    monkeypatch.setenv("LITPULSE_MAX_RECORD_BYTES", str(1 << 16))
    counts = _ingest(s, path, workers, monkeypatch, capsys)
    stored, q = _store(s)
    assert sorted(stored) == [1, 3, 4], counts
    assert stored == _oracle(records)
    assert [e["pmid"] for e in q] == [2], q
    assert "over the limit" not in q[0]["reason"], q[0]["reason"]


# ----------------------------------------------------------------------------- X4 UTF-32


def test_x4_a_utf32_document_is_read_as_lxml_reads_it(
    store: tuple[Settings, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    s, workers = store
    records = corpus(
        5, {2: article(2, title="Caf\u00e9 \U0001f600"), 4: article(4, title="\u00b5g")}
    )
    text = document(records, prolog=b'<?xml version="1.0" encoding="UTF-32"?>\n').decode()
    path = tmp_path / "wide.xml"
    path.write_bytes(text.encode("utf-32"))
    counts = _ingest(s, path, workers, monkeypatch, capsys)
    stored, q = _store(s)
    oracle = etree.fromstring(path.read_bytes())
    want = {
        int(el.findtext(".//PMID")): (
            el.findtext(".//ArticleTitle"),
            el.findtext(".//AbstractText"),
        )
        for el in oracle
    }
    assert want[2] == ("Caf\u00e9 \U0001f600", "Abstract of 2.")
    assert stored == want, (counts, q)
    assert q == []
