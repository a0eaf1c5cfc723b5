"""Hostile review (session 33a) of what a researcher takes away: the exports of
``litpulse/app/export.py`` (RIS, BibTeX, CSV) as ``GET /export`` serves them, and the Atom
feed of a saved search (``litpulse.pipeline.digest.feed_for`` /
``digest_channels.atom_feed``) as ``GET /feeds/ID.atom`` and ``litpulse alerts feed``
give it.

Every test drives the real code: records parsed from PubMed XML by
:func:`ingest.parse.parse_bytes` (or built as the ingest builds them), stored by
:class:`ingest.store.Store` and published by :func:`ranking.refresh.refresh_index` with the
tiny encoder (:func:`tests.ranking.corpus.indexed_world`); the FastAPI app through
``TestClient``; the CLI's ``main``. On SQLite and PostgreSQL. Each defect was a strict
xfail asserting the correct behaviour; all three were fixed in the same session and are plain
tests now:

* A1: ``load_export_rows`` reads ``is_book``; ``export.Kind.of`` tells an article, a book
  chapter (a Bookshelf record whose title is not its book's, which the store keeps as
  ``journal``) and a whole book apart; a chapter is ``TY  - CHAP`` with the book as ``T2``
  (no ``JO``) and ``@incollection`` with ``booktitle``, a whole book ``TY  - BOOK`` /
  ``@book`` (no journal); the CSV's new last column ``type`` says which. The store keeps
  no publisher, so none is written.
* A2: ``_cell`` also puts a ``'`` before each formula start that follows a ``;`` in a
  text cell (with blanks or quotes between): ``outcomes;=cmd…`` is written
  ``outcomes;'=cmd…``, so no ``;``-separated piece starts a formula.
* A3: ``atom_feed`` writes DEL and the C1 controls as character references (``&#155;``):
  the same document to a parser (the API's feed too), inert on the terminal that
  ``litpulse alerts feed`` prints it on.

Defects:

A1 (medium) **A PubMed Bookshelf record is exported as a journal article whose journal is
   the book.** The store keeps ``PubmedBookArticle`` records (``is_book``; a GeneReviews
   chapter, a whole NBK book) and searches return them, but ``to_ris`` writes every record
   as ``TY  - JOUR`` with the book's title as ``T2`` *and* as the journal abbreviation
   ``JO``, and ``to_bibtex`` writes ``@article{pmidN, ..., journal = {GeneReviews®}}``:
   Zotero, EndNote, Mendeley and BibTeX styles then cite the chapter "Example syndrome
   heart failure" as an article of the journal "GeneReviews®" (no volume, no pages), a
   silently wrong reference type in every bibliography built from the file.
   ``load_export_rows`` does not even read ``is_book``. At fault:
   ``litpulse/app/export.py`` (``load_export_rows`` columns, ``to_ris``'s fixed ``TY  -
   JOUR`` and ``JO``, ``to_bibtex``'s fixed ``@article`` and ``journal``). Fix: read
   ``is_book``; a book chapter (a title other than the book's) is ``TY  - CHAP`` with the
   book as ``T2`` (no ``JO``) and ``@incollection``/``@inbook`` with ``booktitle``; a
   whole book ``TY  - BOOK`` / ``@book``.
   (test_a1_a_bookshelf_chapter_is_not_exported_as_a_journal_article)
A2 (medium, security) **The CSV's formula guard is bypassed by a ``;`` in a text cell.**
   ``_cell`` guards a cell only at its first character, and ``csv.writer`` quotes a cell
   only for ``,``, ``"`` or a line break. Excel opens a ``.csv`` with the system's list
   separator, which is ``;`` in most of continental Europe: there, a title
   ``Heart failure outcomes;=cmd|' /C calc'!A0;`` (written unquoted) is split at its ``;``
   and the cell ``=cmd|' /C calc'!A0`` is evaluated as a formula (a DDE payload). The
   README promises "CSV text cells that a spreadsheet would take for a formula (starting
   ``=``, ``+``, ``-``, ``@``, tab, carriage return) get a leading ``'``" — OWASP's CSV
   injection guidance names this very bypass (the field separator, ``,`` or ``;``, starts
   a new cell in the middle of the input). At fault: ``litpulse/app/export.py``
   ``_cell``. Fix: guard every ``;``-separated piece of a text cell too (a ``'`` before a
   trigger that follows a ``;``, as before the cell's first character), or prefix the
   whole export with Excel's ``sep=,`` line.
   (test_a2_no_semicolon_separated_cell_starts_a_formula)
A3 (low, security) **``litpulse alerts feed`` writes stored C1 control characters and DEL
   raw to the terminal.** ``feed_for`` removes what XML 1.0 forbids (C0), but XML allows
   U+007F-U+009F, which PubMed XML can carry (``&#x9b;``; mis-decoded Windows-1252
   punctuation is common in titles), and the digest copies the title into the match;
   ``run_feed`` then does ``sys.stdout.write(feed.decode())``, so ``\\x9b2J`` (CSI: clear
   the screen) or ``\\x9d...\\x9c`` (OSC: set the window title) reach the terminal and act
   on it. Every other CLI output escapes exactly these characters "so stored bytes cannot
   act on the terminal" (``_common.print_json``: DEL and C1 as ``\\u009b``;
   ``print_table``, ``kv``, ``safe_text``: ``\\x9b``; ``quarantine --raw`` on a terminal).
   At fault: ``litpulse/app/cli/alerts.py`` ``run_feed`` (and ``atom_feed``, which
   writes them raw). Fix: write DEL and C1 as XML character references (``&#155;``:
   the same document for a parser, inert on a terminal) in ``atom_feed``, or escape them
   in ``run_feed`` when stdout is a terminal.
   (test_a3_alerts_feed_writes_no_raw_c1_control_to_the_terminal)

Attacks that held (not kept as tests, or covered by earlier reviews' tests): RIS/BibTeX
field and record injection by line breaks of every kind (``\\n``, ``\\r``, VT, FF, NEL,
U+2028/2029) and ``ER  -``/``TY  -``/``@article{`` in titles, abstracts and DOIs (one tag
a line, one record each; read back by rispy and pybtex installed aside); BibTeX specials
``{ } \\ % # $ & _ ~ ^`` in titles and names (escaped, braces balanced), ``and`` in
names (braced), a title ending in a backslash, empty title/authors/date (an entry with
``title = {{}}``, no ``year``; RIS without ``TI``/``PY``); BibTeX keys are ``pmidN``, one
per PMID (unique); CSV cells starting ``= + - @``, tab, CR, NBSP or U+3000 before ``=``
(guarded after ``_one_line`` strips), commas, quotes and line breaks in cells (the csv
module reads every field back); retracted articles marked in all three formats (CSV
``retracted``, RIS ``N1``, BibTeX ``note``) and in the feed (``[Retracted]``); the Atom
feed with ``]]>``, ``<script>``, ``&``, VT and U+FFFE in names, queries, titles and
explanations (session 31c's H2; the C0 controls are dropped, so the feed stays well-formed:
A3's feed is read by lxml). Observed, not filed: the
BibTeX ``keywords`` field joins MeSH descriptors with ``, `` and many descriptors hold a
comma (``Diabetes Mellitus, Type 2``), which Zotero and biber split into two keywords, but
no BibTeX reader agrees on a way to keep a comma in one; RIS ``SP``/``EP`` split
MEDLINE's abbreviated page ranges (``1023-9`` → ``EP  - 9``), which reference managers
join back as written; a season (``Spring 2000``) is exported as its first month
(``DA  - 2000/03//``), as ``ingest/dates.py`` documents.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import insert, select

from ingest.parse import parse_bytes
from ingest.records import Record, SourceRef
from litpulse.core import db
from litpulse.core.schema import articles, digest_matches
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from tests.ranking.corpus import BOTH_DATABASES, T0, indexed_world, make_article, world_on
from tests.tiny_encoder import build_tiny_encoder

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402

BOOK = 20301295  # a GeneReviews chapter, as NCBI serves it
FORMULA = 43300001  # a journal article whose title holds a ';' then a formula
CONTROL = 43300002  # a journal article whose title holds C1 controls and DEL
FORMULA_TITLE = "Heart failure outcomes;=cmd|' /C calc'!A0;in adults"
CONTROL_TITLE = "Heart failure \x9b2J\x9d0;pwned\x9c registry \x7f"

_BOOK_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<PubmedArticleSet>
  <PubmedBookArticle>
    <BookDocument>
      <PMID Version="1">20301295</PMID>
      <ArticleIdList><ArticleId IdType="bookaccession">NBK1116</ArticleId></ArticleIdList>
      <Book>
        <Publisher>
          <PublisherName>University of Washington, Seattle</PublisherName>
          <PublisherLocation>Seattle (WA)</PublisherLocation>
        </Publisher>
        <BookTitle book="gene">GeneReviews<sup>&#xAE;</sup></BookTitle>
        <PubDate><Year>1993</Year></PubDate>
        <AuthorList Type="editors">
          <Author><LastName>Adam</LastName><ForeName>Margaret P</ForeName>
            <Initials>MP</Initials></Author>
        </AuthorList>
        <Medium>Internet</Medium>
      </Book>
      <LocationLabel Type="chapter">Example Syndrome</LocationLabel>
      <ArticleTitle book="gene" part="example">Example syndrome heart failure</ArticleTitle>
      <Language>eng</Language>
      <AuthorList Type="authors">
        <Author><LastName>Writer</LastName><ForeName>Chapter</ForeName>
          <Initials>C</Initials></Author>
      </AuthorList>
      <PublicationType UI="D016454">Review</PublicationType>
      <Abstract>
        <AbstractText Label="CLINICAL CHARACTERISTICS">Heart failure in a syndrome.</AbstractText>
      </Abstract>
    </BookDocument>
    <PubmedBookData>
      <History>
        <PubMedPubDate PubStatus="pubmed"><Year>2010</Year><Month>3</Month><Day>20</Day>
        </PubMedPubDate>
        <PubMedPubDate PubStatus="entrez"><Year>2010</Year><Month>3</Month><Day>20</Day>
        </PubMedPubDate>
      </History>
      <PublicationStatus>ppublish</PublicationStatus>
      <ArticleIdList><ArticleId IdType="pubmed">20301295</ArticleId></ArticleIdList>
    </PubmedBookData>
  </PubmedBookArticle>
</PubmedArticleSet>
"""

_CONTROL_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<PubmedArticleSet><PubmedArticle><MedlineCitation Status="MEDLINE">
  <PMID Version="1">43300002</PMID>
  <Article><Journal><Title>J Test</Title><JournalIssue><PubDate><Year>2024</Year>
  </PubDate></JournalIssue></Journal>
  <ArticleTitle>Heart failure &#x9b;2J&#x9d;0;pwned&#x9c; registry &#x7f;</ArticleTitle>
  <Abstract><AbstractText>Heart failure registry.</AbstractText></Abstract>
  <Language>eng</Language></Article>
</MedlineCitation></PubmedArticle></PubmedArticleSet>
"""


def _records() -> list[Any]:
    book = parse_bytes(_BOOK_XML, source_ref=SourceRef("file", "books.xml", sequence=1,
                                                        fetched_at=T0))  # fmt: skip
    assert len(book) == 1 and isinstance(book[0], Record) and book[0].is_book, book
    formula = make_article(FORMULA, FORMULA_TITLE, "Heart failure outcomes in adults.")
    control = parse_bytes(_CONTROL_XML, source_ref=SourceRef("file", "c1.xml", sequence=1,
                                                             fetched_at=T0))  # fmt: skip
    assert [c.title if isinstance(c, Record) else c for c in control] == [CONTROL_TITLE]
    plain = make_article(43300003, "Heart failure and exercise", "Heart failure trial.")
    return [book[0], formula, control[0], plain]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-33a"), max_seq_length=32)


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: str
) -> Iterator[Settings]:
    yield from world_on(
        request.param, tmp_path_factory, "s33a",
        lambda home, url: indexed_world(home, url, tiny, _records(), api_rate_burst=100000,
                                        api_rate_per_second=10000.0),
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(world: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


def _export(client: TestClient, fmt: str) -> str:
    r = client.get("/export", params={"q": "heart failure", "mode": "lexical", "k": 10,
                                      "format": fmt})  # fmt: skip
    assert r.status_code == 200, r.text
    return r.text


# ------------------------------------------------------------------------------ A1


def _ris_records(text: str) -> dict[int, list[tuple[str, str]]]:
    """The RIS file's records by PMID (``AN  - PMID:N``): their ``(tag, value)`` lines."""
    out: dict[int, list[tuple[str, str]]] = {}
    record: list[tuple[str, str]] = []
    for line in text.split("\r\n"):
        if not line:
            continue
        tag, value = line[:2], line[6:]
        record.append((tag, value))
        if tag == "ER":
            pmid = next(int(v.removeprefix("PMID:")) for t, v in record if t == "AN")
            out[pmid] = record
            record = []
    return out


def _bib_entries(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """The BibTeX entries by key: ``(entry type, {field: value})`` (one field a line, as
    the export writes them; the split is checked by the balanced braces of each)."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for m in re.finditer(r"^@(\w+)\{([^,\n]+),\n(.*?)\n\}\n", text, re.MULTILINE | re.DOTALL):
        fields = {}
        for line in m.group(3).split(",\n"):
            name, _, value = line.strip().partition(" = ")
            assert value.startswith("{") and value.endswith("}"), line
            fields[name] = value[1:-1]
        out[m.group(2)] = (m.group(1).lower(), fields)
    return out


def test_a1_a_bookshelf_chapter_is_not_exported_as_a_journal_article(
    client: TestClient,
) -> None:
    ris = _ris_records(_export(client, "ris"))
    assert BOOK in ris and FORMULA in ris, ris.keys()
    assert dict(ris[FORMULA])["TY"] == "JOUR"  # a journal article stays one
    book = ris[BOOK]
    tags = dict(book)
    assert tags["TI"] == "Example syndrome heart failure"
    bib = _bib_entries(_export(client, "bibtex"))
    kind, fields = bib[f"pmid{BOOK}"]
    assert bib[f"pmid{FORMULA}"][0] == "article"
    # a chapter of a book: its type says so and the book is its book, not a journal
    assert (tags["TY"], tags.get("JO")) == ("CHAP", None), book
    assert ("T2", "GeneReviews®") in book or ("BT", "GeneReviews®") in book, book
    assert kind in ("incollection", "inbook", "inreference"), (kind, fields)
    assert "journal" not in fields and fields.get("booktitle") == "GeneReviews®", fields


def test_a1_search_results_say_a_bookshelf_record_is_a_chapter(
    client: TestClient, world: Settings, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A1's follow-up: the search JSON (API, CLI) named a chapter's book as its
    ``journal`` and said nothing else of it; each result now has its ``kind``."""
    from litpulse.app.cli import main

    r = client.get("/search", params={"q": "heart failure", "mode": "lexical", "k": 10})
    assert r.status_code == 200, r.text
    kinds = {h["pmid"]: h["kind"] for h in r.json()["results"]}
    assert kinds[BOOK] == "chapter" and kinds[FORMULA] == "article", kinds
    monkeypatch.setenv("LITPULSE_HOME", str(world.home))
    if world.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", world.database_url)
    if world.model:
        monkeypatch.setenv("LITPULSE_MODEL", world.model)
    capsys.readouterr()
    assert main(["search", "heart failure", "--mode", "lexical", "--json"]) == 0
    cli = {h["pmid"]: h["kind"] for h in json.loads(capsys.readouterr().out)["results"]}
    assert cli == kinds


# ------------------------------------------------------------------------------ A2


_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def test_a2_no_semicolon_separated_cell_starts_a_formula(client: TestClient) -> None:
    text = _export(client, "csv")
    rows = {int(r["pmid"]): r for r in csv.DictReader(io.StringIO(text))}
    assert FORMULA in rows and "cmd|' /C calc'!A0" in rows[FORMULA]["title"]
    # the same bytes as a spreadsheet reads them whose list separator is ';'
    cells = [c for row in csv.reader(io.StringIO(text), delimiter=";") for c in row]
    formulas = [c for c in cells if c.startswith(_TRIGGERS)]
    assert not formulas, formulas


# ------------------------------------------------------------------------------ A3


_C1 = re.compile(r"[\x7f-\x9f]")


def test_a3_alerts_feed_writes_no_raw_c1_control_to_the_terminal(
    world: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.app.cli import main
    from litpulse.pipeline.saved_searches import add_search

    engine = db.connect(world)
    with engine.connect() as conn:
        title = conn.execute(select(articles.c.title).where(articles.c.pmid == CONTROL)).scalar()
    assert title == CONTROL_TITLE  # stored as PubMed gave it
    search = add_search(world, name=f"hf-{world.database_url[:4] or 'lite'}",
                        query="heart failure registry", owner="cli:ann")  # fmt: skip
    with engine.begin() as conn:  # what the digest records for a match: the article's title
        conn.execute(insert(digest_matches), [{
            "search_id": search.id, "pmid": CONTROL, "title": title, "score": 0.9,
            "explanation": {"text": "matched"}, "index_version": "ix", "model_version": "base",
            "found_at": utcnow(),
        }])  # fmt: skip
    monkeypatch.setenv("LITPULSE_HOME", str(world.home))
    if world.database_url:
        monkeypatch.setenv("LITPULSE_DATABASE_URL", world.database_url)
    capsys.readouterr()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a person reading it
    assert main(["alerts", "feed", str(search.id)]) == 0
    out = capsys.readouterr().out
    root = etree.fromstring(out.strip().encode("utf-8"))
    ns = {"a": "http://www.w3.org/2005/Atom"}
    shown = root.findtext("a:entry/a:title", namespaces=ns)
    assert shown is not None and shown.startswith("Heart failure") and "registry" in shown
    assert not _C1.findall(out), sorted({hex(ord(c)) for c in _C1.findall(out)})
