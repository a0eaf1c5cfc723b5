"""Hostile review (session 32r) of the PubMed XML parser and the file-ingest path against
hostile or unusual but real-format input: ``ingest/parse.py``, ``ingest/boundaries.py``
(the byte-level cutter), ``ingest/fields.py``, the compiled reader ``ingest/_cfields.pyx``,
``ingest/rows.py``, ``ingest/parallel.py`` (one file split over workers) and
``ingest/files.py``. Every test drives the real code (``parse_bytes``, ``iter_items``,
``iter_units``, ``ingest_files``), on SQLite and PostgreSQL where a store matters.

Each defect was a strict xfail asserting the correct behaviour; all 8 were fixed in the
same session and are plain tests now: R1 a batch that fails is cut again by
``ingest.boundaries.split_records``, which skips ``<!--...-->``, ``<![CDATA[...]]>`` and
``<?...?>`` (a commented-out block stays in its gap, a CDATA tag stays text); R2 ``_units``
never closes a batch inside such markup (``boundaries.open_markup``, up to
``MAX_BATCH_BYTES``); R3 a record of a known kind in a namespace is quarantined with the
reason "record ... in XML namespace ..." (one entry per PMID of a deletion, none applied),
the pull parser filtering ``{*}Tag``; R4 an end tag is ``</Tag`` + blanks + ``>``
(``boundaries._find_end``); R5-R6 a UTF-16 document is transcoded to UTF-8
(``parse._as_utf8``) and a long prolog is read past (not held past ``PROLOG_LIMIT``), so
both take the fast path with its caps and per-record fallback; R7 the root start tag is
found after the prolog's declaration, comments, PIs and DOCTYPE (``parse._prolog``); R8
``PubmedArticleSet`` batches are parsed with ``huge_tree`` (no DOCTYPE in a batch, so no
entity can be declared; the record-bytes cap bounds a record), the pull parser keeping
libxml2's limits.

Defects:

R1 **A commented-out ``DeleteCitation`` (or record) between two records is applied when
   another record of its batch is broken.** The cutter (``ingest.boundaries.pieces``)
   finds record start tags with ``bytes.find`` and does not know comments or CDATA, so
   ``<!-- <DeleteCitation><PMID>2</PMID></DeleteCitation> -->`` between two records is
   cut out as an item. A clean batch is parsed as one document, the comment stays a
   comment and nothing happens; but when any record of the same ~128 KiB batch is not
   well-formed, ``_parse_batch`` parses the batch again piece by piece
   (``split_records``), the commented-out block is read as a real deletion and PMID 2,
   a live article, is **tombstoned** (a commented-out old version of a record is stored
   over the new one the same way), plus a spurious "between records: Comment not
   terminated" entry. Whether a deletion is applied depends on an unrelated neighbour.
   The same fallback cuts a *good* record at ``<PubmedArticle>`` text inside its CDATA
   (``<ArticleTitle>the <![CDATA[<PubmedArticle>]]> element</ArticleTitle>``): one broken
   record quarantines every such neighbour of its batch (two entries each, "Sequence
   ']]>' not allowed in content"), where the clean batch stores them.
   Reproduction: records 1, 2, the comment, 3, and a record 4 with ``<b>unclosed``:
   ``ingest_files`` stores 2 as deleted. At fault: ``ingest/parse.py::_parse_batch``
   (the per-piece fallback trusts the cutter's pieces) and ``ingest/boundaries.py``
   (comment/CDATA-blind). Fix: in the fallback, re-cut the failed batch with a cutter
   that skips ``<!-- ... -->``, ``<![CDATA[ ... ]]>`` and ``<? ... ?>`` (or parse the
   failed batch with ``recover``-free ``XMLPullParser`` feeding and take the records it
   ends), and quarantine a gap that holds a comment start together with the item that
   follows instead of parsing that item alone.
   (test_a_commented_out_deletion_is_never_applied_whatever_its_neighbours, both stores;
   test_a_broken_record_costs_no_good_neighbour_of_its_batch)
R2 **A well-formed record holding ``</PubmedArticle>`` in a CDATA section (or a comment)
   is quarantined when a batch boundary falls after that text.** The cutter ends the
   record at the first ``</PubmedArticle>`` bytes; ``_units`` closes the batch there
   once it is over ``BATCH_BYTES``; both halves then fail alone: the record is
   quarantined ("CData section not finished", its raw XML cut in the middle) and the
   rest of it is a second entry "between records". The same record a few bytes earlier
   or later in the file is stored. At fault: ``ingest/boundaries.py::pieces`` and
   ``ingest/parse.py::_units``. Fix: as R1 (skip comments/CDATA/PIs when looking for a
   record's end tag), or never end a unit on a piece whose batch would not be
   well-formed (close a unit only after an item piece that ends in a real end tag).
   (test_a_record_with_its_end_tag_inside_cdata_is_stored_wherever_a_batch_ends)
R3 **Records in an XML namespace are silently dropped: nothing stored, nothing
   quarantined, the run succeeds.** ``<PubmedArticleSet xmlns="...">`` (or ``xmlns`` on
   one ``PubmedArticle``/``DeleteCitation``) makes lxml's tags ``{uri}PubmedArticle``;
   ``_read`` skips any tag it does not know (``else: continue``) and the pull parser's
   ``tag=`` filter never matches them, so ``ingest_files`` reports ``inserted=0,
   quarantined=0`` for a file of three good records. The module promises one item per
   record ("Nothing may be silently lost"). At fault: ``ingest/parse.py::_read`` and
   ``_pull_items``/``_drain``. Fix: match the local name (``etree.QName(tag).localname``)
   and read it (or quarantine it with the reason "record in namespace ..."); an element
   of a known kind is never skipped unseen.
   (test_records_in_a_namespace_are_stored_or_quarantined_never_dropped, both stores;
   test_a_record_with_its_own_xmlns_is_not_dropped)
R4 **The last record is quarantined when its end tag has blanks before ``>``**
   (``</PubmedArticle >``, legal XML: ``ETag ::= '</' Name S? '>'``). The cutter looks for
   the exact bytes ``</PubmedArticle>``, so the last record runs to the end of the input
   and takes ``</PubmedArticleSet>`` in; parsed alone it is "Extra content at the end of
   the document" and is quarantined. At fault: ``ingest/boundaries.py`` ``_END_TAGS`` /
   ``pieces``. Fix: accept ``</Tag`` followed by blanks and ``>`` as the end tag.
   (test_an_end_tag_with_blanks_is_read_for_the_last_record_too)
R5 **LITPULSE_MAX_RECORD_BYTES and LITPULSE_MAX_TEXT_CHARS do not hold for a document
   read by the pull parser** (a UTF-16 file, whose start tag ``bytes.find`` cannot see,
   or a UTF-8 file whose ``<PubmedArticleSet>`` comes after a prolog over 1 MiB). A
   5,000-character title under a 1,000-character cap and a 30 KB record under a 20 KB
   cap are stored, where the same records in UTF-8 are quarantined with the settings'
   names; a hostile file can so make one record as large as it likes (memory). At fault:
   ``ingest/parse.py::_pull_items``/``_drain`` (no ``_cap_text``, no size check).
   Fix: transcode a non-UTF-8 document to UTF-8 before cutting (libxml2's detected
   encoding, the declaration rewritten) so it takes the fast path; in the pull parser,
   apply ``_cap_text`` and quarantine a record whose ``end`` comes more than
   ``max_record_bytes`` after its start.
   (test_the_size_caps_hold_for_a_document_read_by_the_pull_parser)
R6 **In a document read by the pull parser one broken record costs every record after
   it**: the pull parser "stops at the first syntax error", so in a UTF-16 file (or one
   behind a long prolog) a record with a mismatched tag, or one using a billion-laughs
   entity, ends the file: the 5 good records after it are neither stored nor quarantined
   one by one; one entry without a PMID stands for all (the fast path quarantines that
   record alone). Module docstring: "Hostile or broken input costs one record, never the
   file". At fault: ``ingest/parse.py::_start`` (UTF-16 and a long prolog go to
   ``_pull_items``). Fix: as R5 (transcode to UTF-8 and cut; search the root start tag
   past a long prolog by skipping comments/DOCTYPE instead of giving up at 1 MiB).
   (test_a_broken_record_in_a_pull_parsed_document_costs_that_record_only, both stores)
R7 **A clean file whose prolog names ``<PubmedArticleSet>`` in a comment (or in an
   internal-subset entity value) gets a quarantine entry**, and every batch of it is
   parsed twice (record by record): ``_ROOT_OPEN_RE`` is searched over the raw prolog,
   the root is taken inside the comment and the real start tag becomes a "gap" that does
   not parse ("Premature end of data in tag PubmedArticleSet"). At fault:
   ``ingest/parse.py::_start``. Fix: find the root start tag after skipping the
   declaration, comments, PIs and the DOCTYPE (its internal subset included).
   (test_a_root_tag_named_in_a_prolog_comment_quarantines_nothing)
R8 **LITPULSE_MAX_TEXT_CHARS above ~10 million is not kept**: README allows 1024 ..
   268435456, but the parser runs libxml2 with ``huge_tree=False``, whose text-node cap
   is 10,000,000 bytes; with the setting at 32 Mi a 12-million-character abstract is
   quarantined as "Resource limit exceeded: Text node too long, try XML_PARSE_HUGE" (a
   3.4-million-character CJK abstract already is, being 10 MB of UTF-8). At fault:
   ``ingest/parse.py`` ``_PARSER_OPTIONS`` vs ``litpulse/core/settings.py``
   ``max_text_chars``. Fix: parse with ``huge_tree=True`` (the record-bytes cap already
   bounds a record; entity expansion stays off), or bound the setting to what libxml2
   takes (and say it is bytes of UTF-8).
   (test_a_text_field_within_a_raised_text_cap_is_stored)

Examined and sound (guards below, unmarked): a hostile corpus (CDATA, character
references, ``<sub>``/``<i>``/MathML, PIs and comments in text, books, deletions, a
comment naming ``<PubmedArticle>`` between records) reads exactly as a full lxml parse of
the whole document read by the Python reader, and split over 2, 3 and 5 stripes
(``iter_units``, batches of 16 KiB) exactly as one; ``ingest_files`` with two striped
workers stores what one process stores; ISO-8859-1 declared, a UTF-8 BOM and a UTF-16
document read the right text; external entities in a UTF-16 document are never resolved;
a record straddling two concatenated gzip members is read whole.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import select

from ingest import fields
from ingest import parse as parse_mod
from ingest.files import ingest_files
from ingest.parse import ParseLimits, iter_items, iter_units, parse_bytes
from ingest.records import Deletion, QuarantineEntry, Record, SourceRef
from litpulse.core import db
from litpulse.core.schema import articles, quarantine
from litpulse.core.settings import Settings
from tests.ingest.hostile import article, deletion, laughs_doctype, xxe_doctype

REF = SourceRef("file", "review.xml")
DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _doc(*items: bytes, decl: bytes = DECL, root: bytes = b"<PubmedArticleSet>") -> bytes:
    return decl + root + b"\n" + b"".join(items) + b"</PubmedArticleSet>\n"


def _kinds(items: list[Any]) -> list[tuple[str, int | None]]:
    return [(type(i).__name__, getattr(i, "pmid", None)) for i in items]


def _rows(settings: Settings) -> dict[int, bool]:
    with db.connect(settings).connect() as conn:
        return dict(conn.execute(select(articles.c.pmid, articles.c.is_deleted)).all())


def _entries(settings: Settings) -> list[tuple[int | None, str]]:
    with db.connect(settings).connect() as conn:
        rows = conn.execute(select(quarantine.c.pmid, quarantine.c.reason)).all()
    return [(r[0], r[1]) for r in rows]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


BROKEN = article(4, title="<b>unclosed")


# --------------------------------------------------------------------------- R1


def test_a_commented_out_deletion_is_never_applied_whatever_its_neighbours(
    settings: Settings, tmp_path: Path
) -> None:
    note = b"<!-- withdrawn by hand, kept as a note: " + deletion("2").strip() + b" -->\n"
    path = _write(tmp_path, "notes.xml", _doc(article(1), article(2), note, article(3), BROKEN))
    counts = ingest_files(settings, [path], workers=0)
    assert _rows(settings) == {1: False, 2: False, 3: False}
    assert [p for p, _ in _entries(settings)] == [4]
    assert (counts.deleted, counts.quarantined) == (0, 1)


def test_a_broken_record_costs_no_good_neighbour_of_its_batch() -> None:
    good = article(3, title="the <![CDATA[<PubmedArticle>]]> element")
    items = parse_bytes(_doc(article(1), good, BROKEN, article(5)), source_ref=REF)
    assert _kinds(items) == [("Record", 1), ("Record", 3), ("QuarantineEntry", 4), ("Record", 5)]


def test_a_commented_out_deletion_in_a_clean_batch_is_a_comment(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """Guard: without a broken neighbour the comment stays a comment."""
    note = b"<!-- " + deletion("2").strip() + b" -->\n"
    path = _write(tmp_path, "notes.xml", _doc(article(1), article(2), note, article(3)))
    ingest_files(sqlite_settings, [path], workers=0)
    assert _rows(sqlite_settings) == {1: False, 2: False, 3: False}
    assert _entries(sqlite_settings) == []


# --------------------------------------------------------------------------- R2


def _cdata_record(pmid: int, before: int) -> bytes:
    return article(
        pmid, abstract="w " * before + "<![CDATA[ the tag </PubmedArticle> is text here ]]> tail"
    )


def test_a_record_with_its_end_tag_inside_cdata_is_stored_inside_a_batch() -> None:
    """Guard: away from a batch boundary the CDATA is read as text."""
    items = parse_bytes(_doc(article(6), _cdata_record(7, 10), article(8)), source_ref=REF)
    assert _kinds(items) == [("Record", 6), ("Record", 7), ("Record", 8)]
    assert items[1].abstract.endswith("the tag </PubmedArticle> is text here tail")


def test_a_record_with_its_end_tag_inside_cdata_is_stored_wherever_a_batch_ends() -> None:
    # 140 KB of abstract before the CDATA: the batch is over BATCH_BYTES at the fake end
    big = _cdata_record(7, 70_000)
    assert big.index(b"</PubmedArticle>") > parse_mod.BATCH_BYTES
    items = parse_bytes(_doc(article(6), big, article(8)), source_ref=REF)
    assert _kinds(items) == [("Record", 6), ("Record", 7), ("Record", 8)]


# --------------------------------------------------------------------------- R3


def test_records_in_a_namespace_are_stored_or_quarantined_never_dropped(
    settings: Settings, tmp_path: Path
) -> None:
    root = b'<PubmedArticleSet xmlns="http://example.org/pubmed">'
    path = _write(tmp_path, "ns.xml", _doc(article(1), article(2), article(3), root=root))
    counts = ingest_files(settings, [path], workers=0)
    seen = set(_rows(settings)) | {p for p, _ in _entries(settings)}
    assert seen == {1, 2, 3}
    assert counts.inserted + counts.quarantined == 3


def test_a_record_with_its_own_xmlns_is_not_dropped() -> None:
    own = article(1).replace(b"<PubmedArticle>", b'<PubmedArticle xmlns="http://x.org/">')
    items = parse_bytes(_doc(own, article(2)), source_ref=REF)
    assert {getattr(i, "pmid", None) for i in items} == {1, 2}


# --------------------------------------------------------------------------- R4


def test_an_end_tag_with_blanks_is_read_for_the_last_record_too() -> None:
    arts = b"".join(article(i) for i in (1, 2, 3)).replace(
        b"</PubmedArticle>", b"</PubmedArticle >"
    )
    assert etree.fromstring(_doc(arts)) is not None  # well-formed
    items = parse_bytes(_doc(arts), source_ref=REF)
    assert _kinds(items) == [("Record", 1), ("Record", 2), ("Record", 3)]


# --------------------------------------------------------------------------- R5, R6

LONG_PROLOG = DECL + b"<!-- " + b"padding " * 140_000 + b"-->\n"


def _utf16(items: list[bytes], decl_tail: bytes = b"") -> bytes:
    text = (
        '<?xml version="1.0" encoding="UTF-16"?>\n'
        + decl_tail.decode()
        + "<PubmedArticleSet>\n"
        + b"".join(items).decode()
        + "</PubmedArticleSet>\n"
    )
    return text.encode("utf-16")


def _long(items: list[bytes]) -> bytes:
    return LONG_PROLOG + b"<PubmedArticleSet>\n" + b"".join(items) + b"</PubmedArticleSet>\n"


CAPS = ParseLimits(max_record_bytes=20_000, max_text_chars=1_000)
OVER = [article(1, title="x" * 5_000), article(2, abstract="y " * 15_000), article(3)]


def test_the_size_caps_hold_for_a_utf8_document() -> None:
    """Guard: the fast path quarantines both, naming the settings."""
    items = parse_bytes(_doc(*OVER), source_ref=REF, limits=CAPS)
    assert _kinds(items) == [("QuarantineEntry", 1), ("QuarantineEntry", 2), ("Record", 3)]
    assert "LITPULSE_MAX_TEXT_CHARS" in items[0].reason
    assert "LITPULSE_MAX_RECORD_BYTES" in items[1].reason


@pytest.mark.parametrize("build", [_utf16, _long], ids=["utf16", "long-prolog"])
def test_the_size_caps_hold_for_a_document_read_by_the_pull_parser(build: Any) -> None:
    items = parse_bytes(build(OVER), source_ref=REF, limits=CAPS)
    assert _kinds(items) == [("QuarantineEntry", 1), ("QuarantineEntry", 2), ("Record", 3)]


GOOD_AFTER = [article(i) for i in range(3, 8)]


def _pulled_with_mismatch(encoding: str) -> bytes:
    items = [article(1), article(2, title="<b>unclosed"), *GOOD_AFTER]
    return _utf16(items) if encoding == "utf16" else _long(items)


def _pulled_with_laughs(_: str) -> bytes:
    head = laughs_doctype().split(b"\n", 1)[1]  # the DOCTYPE, under a UTF-16 declaration
    return _utf16([article(1), article(2, title="&lol9;"), *GOOD_AFTER], head)


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (_pulled_with_mismatch, "utf16"),
        (_pulled_with_mismatch, "long"),
        (_pulled_with_laughs, "utf16"),
    ],
    ids=["utf16-mismatch", "long-prolog-mismatch", "utf16-billion-laughs"],
)
def test_a_broken_record_in_a_pulled_document_costs_that_record_only(build: Any, kind: str) -> None:
    items = parse_bytes(build(kind), source_ref=REF)
    assert [p for t, p in _kinds(items) if t == "Record"] == [1, 3, 4, 5, 6, 7]
    assert [p for t, p in _kinds(items) if t == "QuarantineEntry"] == [2]


def test_a_broken_record_in_a_pull_parsed_document_costs_that_record_only(
    settings: Settings, tmp_path: Path
) -> None:
    path = _write(tmp_path, "utf16.xml", _pulled_with_mismatch("utf16"))
    counts = ingest_files(settings, [path], workers=0)
    assert set(_rows(settings)) == {1, 3, 4, 5, 6, 7}
    assert (counts.inserted, counts.quarantined) == (6, 1)


# --------------------------------------------------------------------------- R7


@pytest.mark.parametrize(
    "prolog",
    [
        DECL + b"<!-- records saved from a <PubmedArticleSet> answer -->\n",
        DECL + b'<!DOCTYPE PubmedArticleSet [ <!ENTITY set "<PubmedArticleSet>"> ]>\n',
    ],
    ids=["comment", "internal-subset"],
)
def test_a_root_tag_named_in_a_prolog_comment_quarantines_nothing(prolog: bytes) -> None:
    items = parse_bytes(_doc(article(1), article(2), decl=prolog), source_ref=REF)
    assert _kinds(items) == [("Record", 1), ("Record", 2)]


# --------------------------------------------------------------------------- R8


def test_a_text_field_within_a_raised_text_cap_is_stored() -> None:
    limits = ParseLimits(max_record_bytes=64 << 20, max_text_chars=32 << 20)  # README range
    items = parse_bytes(
        _doc(article(1, abstract="word " * 2_400_000), article(2)), source_ref=REF, limits=limits
    )
    assert _kinds(items) == [("Record", 1), ("Record", 2)]
    assert len(items[0].abstract) == 12_000_000 - 1


# --------------------------------------------------------------------------- guards

_TEXTS = [
    "<![CDATA[a < b & c]]> plain",
    "&#x3b1;-helix &amp; &lt;x&gt; &#946;",
    "H<sub>2</sub>O and<i>italic</i>word <sup>+</sup>",
    "<mml:math xmlns:mml='http://www.w3.org/1998/Math/MathML'><mml:msup><mml:mi>x</mml:mi>"
    "<mml:mn>2</mml:mn></mml:msup></mml:math> eq",
    "odd\u2028sep\ttab",
    "<b>bold</b><?pi x?>after",
    "c<!-- a comment -->d",
    "<![CDATA[<PubmedArticle>]]> inside",
    "long " * 600,
]
_BOOK = (
    '<PubmedBookArticle><BookDocument><PMID Version="1">{p}</PMID><Book><BookTitle book="b">'
    "Book <i>{p}</i></BookTitle><PubDate><Year>2020</Year></PubDate></Book><ArticleTitle>"
    "Chapter {p}</ArticleTitle></BookDocument><PubmedBookData><History><PubMedPubDate "
    'PubStatus="pubmed"><Year>2020</Year><Month>1</Month><Day>2</Day></PubMedPubDate>'
    "</History></PubmedBookData></PubmedBookArticle>\n"
)


def _hostile_corpus(n: int = 900) -> bytes:
    parts: list[bytes] = []
    for i in range(1, n):
        if i % 19 == 0:
            parts.append(deletion(str(100_000 + i), str(200_000 + i)))
        elif i % 13 == 0:
            parts.append(_BOOK.format(p=i).encode())
        elif i % 29 == 0:
            parts += [b"<!-- between <PubmedArticle> -->\n", article(i)]
        else:
            parts.append(
                article(i, title=_TEXTS[i % len(_TEXTS)], abstract=_TEXTS[(i * 7) % len(_TEXTS)])
            )
    return _doc(*parts)


def _reference(data: bytes) -> list[Any]:
    """A full lxml parse of the whole document, each element read by the Python reader."""
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
    )
    out: list[Any] = []
    for el in etree.fromstring(data, parser):
        if el.tag == "DeleteCitation":
            out += list(fields.deletions(el, REF))
        elif el.tag in ("PubmedArticle", "PubmedBookArticle"):
            out.append(
                fields._book(el, REF) if el.tag == "PubmedBookArticle" else fields._article(el, REF)
            )
    return out


def _striped(path: Path, parts: int) -> list[Any]:
    units: dict[int, list[Any]] = {}
    totals = set()
    for part in range(parts):
        for u, items in iter_units(path, part=part, parts=parts, source_ref=REF):
            if items is None:
                totals.add(u)
            else:
                units[u] = list(items)
    (total,) = totals
    return [x for u in range(total) for x in units[u]]


def test_hostile_corpus_reads_as_a_full_parse_and_alike_over_stripes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _hostile_corpus()
    path = _write(tmp_path, "hostile.xml", data)
    whole = list(iter_items(path, source_ref=REF))
    assert not [i for i in whole if isinstance(i, QuarantineEntry)]
    assert sum(isinstance(i, Deletion) for i in whole) > 50
    assert [repr(i) for i in whole] == [repr(i) for i in _reference(data)]
    titles = {i.pmid: i.title for i in whole if isinstance(i, Record)}
    assert titles[1] == "α-helix & <x> β"
    assert titles[2] == "H2O and italic word +"
    assert titles[3] == "x2 eq"
    assert titles[9] == "a < b & c plain"
    monkeypatch.setattr(parse_mod, "BATCH_BYTES", 1 << 14)  # many units
    assert list(iter_items(path, source_ref=REF)) == whole
    for parts in (2, 3, 5):
        assert _striped(path, parts) == whole, parts


def _stored_state(settings: Settings) -> tuple[list[Any], list[Any]]:
    cols = [
        articles.c.pmid,
        articles.c.version,
        articles.c.title,
        articles.c.abstract,
        articles.c.content_hash,
        articles.c.is_deleted,
        articles.c.source_position,
    ]
    with db.connect(settings).connect() as conn:
        arts = [tuple(r) for r in conn.execute(select(*cols).order_by(articles.c.pmid))]
        q = [
            tuple(r)
            for r in conn.execute(
                select(quarantine.c.pmid, quarantine.c.reason, quarantine.c.raw_xml).order_by(
                    quarantine.c.id
                )
            )
        ]
    return arts, q


def test_one_file_over_two_striped_workers_stores_what_one_process_stores(
    tmp_path: Path,
) -> None:
    data = _hostile_corpus().replace(  # several units of BATCH_BYTES, one broken record
        b"</PubmedArticleSet>", article(9999, title="<b>x") + b"</PubmedArticleSet>"
    )
    path = _write(tmp_path, "one.xml", data)
    states = []
    for workers, stripe in ((0, False), (2, True)):
        s = Settings.from_env({}, home=tmp_path / f"home{workers}")
        ingest_files(s, [path], workers=workers, stripe=stripe)
        states.append(_stored_state(s))
        db._ENGINES.pop(s.effective_database_url).dispose()
    assert states[0] == states[1]
    assert 9999 in [q[0] for q in states[0][1]]


@pytest.mark.parametrize("kind", ["latin1", "bom", "utf16"])
def test_declared_encodings_and_a_bom_read_the_right_text(kind: str) -> None:
    title = "Café à la crème, αβ"
    arts = [article(1, title=title), article(2)]
    if kind == "latin1":
        title = "Café à la crème"
        arts = [article(1, title=title), article(2)]
        data = (
            b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<PubmedArticleSet>\n'
            + b"".join(arts).decode().encode("latin-1")
            + b"</PubmedArticleSet>\n"
        )
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + _doc(*arts)
    else:
        data = _utf16(arts)
    items = parse_bytes(data, source_ref=REF)
    assert _kinds(items) == [("Record", 1), ("Record", 2)]
    assert items[0].title == title


def test_external_entities_in_a_utf16_document_are_never_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-32r")
    head = xxe_doctype(secret).split(b"\n", 1)[1]
    items = parse_bytes(
        _utf16([article(1, title="&xxe; &xxp; &pwd;"), article(2)], head), source_ref=REF
    )
    assert _kinds(items) == [("QuarantineEntry", 1), ("Record", 2)]
    assert not any("TOPSECRET" in repr(i) or "root:" in repr(i) for i in items)


def test_a_record_straddling_two_gzip_members_is_read_whole() -> None:
    plain = _doc(article(1), article(2, title="<i>split</i> here"), article(3))
    cut = plain.index(b"<i>split")
    data = gzip.compress(plain[:cut]) + gzip.compress(plain[cut:])
    assert parse_bytes(data, source_ref=REF) == parse_bytes(plain, source_ref=REF)
