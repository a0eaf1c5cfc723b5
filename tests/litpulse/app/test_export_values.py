"""Exported values stay what they are (found by a hostile review): numbers in CSV, DOIs
in BibTeX."""

from __future__ import annotations

import csv
import io

import pytest


def _export_rows(**extra: object) -> dict[int, dict[str, object]]:
    row: dict[str, object] = {
        "title": "A study",
        "authors": [{"last_name": "Doe", "fore_name": "J"}],
        "journal": "J Test",
        "pub_year": 2024,
        "doi": None,
        "record": {},
        "is_retracted": False,
    }
    row.update(extra)
    return {1: row}


def _csv(hit: object, rows: dict[int, dict[str, object]]) -> dict[str, str]:
    from litpulse.app.export import to_csv

    out = list(csv.DictReader(io.StringIO(to_csv([hit], rows))))  # type: ignore[list-item]
    assert len(out) == 1
    return out[0]


def test_export_csv_keeps_negative_scores_numeric() -> None:
    from ranking.search import Hit

    hit = Hit(pmid=1, title="A study", score=-0.01, similarity=-0.12, recency=0.5, citation=0.5)
    got = _csv(hit, _export_rows())
    assert float(got["similarity"]) == pytest.approx(-0.12)
    assert float(got["score"]) == pytest.approx(-0.01)
    assert (got["similarity"], got["score"], got["recency"]) == ("-0.120000", "-0.010000",
                                                                 "0.500000")  # fmt: skip
    assert (got["rank"], got["pmid"], got["year"]) == ("1", "1", "2024")


def test_export_csv_still_guards_text_cells_that_look_like_formulas() -> None:
    """The guard stays for text from the records, a leading minus included."""
    from ranking.search import Hit

    hit = Hit(pmid=1, title="t", score=-0.5, similarity=-0.5, recency=0.0, citation=0.0)
    rows = _export_rows(
        title="=HYPERLINK(\"http://x\")", journal="-2+3", doi="@SUM(A1)",
        authors=[{"collective_name": "+cmd"}], record={"volume": "-1", "pages": "\t9"},
    )  # fmt: skip
    got = _csv(hit, rows)
    assert got["title"] == "'=HYPERLINK(\"http://x\")"
    assert got["journal"] == "'-2+3" and got["doi"] == "'@SUM(A1)"
    assert got["authors"] == "'+cmd" and got["volume"] == "'-1"
    assert got["score"] == "-0.500000"  # while the number beside them is not


def test_export_csv_guards_a_formula_after_a_semicolon() -> None:
    """Where ``;`` separates cells (Excel in much of Europe), what follows a ``;`` in a
    text cell starts a cell: it is guarded as a cell's start is (session 33a's A2)."""
    from ranking.search import Hit

    hit = Hit(pmid=1, title="t", score=0.5, similarity=0.5, recency=0.0, citation=0.0)
    rows = _export_rows(
        title='Outcomes;=cmd|" /C calc"!A0; in adults', journal='J; "@SUM(A1)',
        authors=[{"last_name": "Doe", "fore_name": "J"}, {"collective_name": "-2+3"}],
    )  # fmt: skip
    got = _csv(hit, rows)
    assert got["title"] == 'Outcomes;\'=cmd|" /C calc"!A0; in adults'
    assert got["journal"] == 'J; "\'@SUM(A1)' and got["authors"] == "Doe, J; '-2+3"
    assert _csv(hit, _export_rows(title="A; B; 2-3"))["title"] == "A; B; 2-3"  # else as is


def test_export_bibtex_doi_is_the_doi() -> None:
    from litpulse.app.export import to_bibtex

    doi = "10.1007/978-1-4939-9145-7_3"
    out = to_bibtex([1], _export_rows(doi=doi, title="A_b study"))
    assert f"doi = {{{doi}}}" in out, out
    assert "title = {{A\\_b study}}" in out  # text fields are still escaped
    assert "url = {https://pubmed.ncbi.nlm.nih.gov/1/}" in out


@pytest.mark.parametrize(
    "doi",
    [
        "10.1002/(SICI)1097-4636(199812)43:4<460::AID-JBM14>3.0.CO;2-#",
        "10.1000/a%b&c$d~e^f",
        "10.1000/back\\slash",
    ],
)
def test_export_bibtex_doi_keeps_every_character_a_doi_holds(doi: str) -> None:
    from litpulse.app.export import to_bibtex

    out = to_bibtex([1], _export_rows(doi=doi))
    assert f"  doi = {{{doi}}},\n" in out, out


@pytest.mark.parametrize(
    ("doi", "written"),
    [
        ("10.1000/x}, title = {owned", "10.1000/x, title = owned"),
        ("10.1000/x}", "10.1000/x"),
        ("10.1000/{x", "10.1000/x"),
        ("10.1000/}x{", "10.1000/x"),
        ("10.1000/{x}", "10.1000/{x}"),  # nested braces cannot break the entry
        ("  10.1000/x\n", "10.1000/x"),
        ("{}", "{}"),
        ("}{", None),  # nothing left: no doi field
    ],
)
def test_export_bibtex_doi_braces_never_break_the_entry(doi: str, written: str | None) -> None:
    from litpulse.app.export import _nested, to_bibtex

    out = to_bibtex([1], _export_rows(doi=doi))
    if written is None:
        assert "doi =" not in out
    else:
        assert f"  doi = {{{written}}},\n" in out, out
    assert _nested(out)  # the entry's braces balance: every field ends where it should
    assert out.count(" = {") == out.count("},\n") + 1  # one field a line, the last "}\n"


def test_export_a_whole_book_and_a_chapter_by_their_kind() -> None:
    """A Bookshelf record: a whole book (its title is the book's) is ``TY  - BOOK`` /
    ``@book`` with no journal or container; a chapter ``CHAP`` / ``@incollection`` in its
    book; the CSV's ``type`` says which (session 33a's A1)."""
    from litpulse.app.export import to_bibtex, to_csv, to_ris

    book = _export_rows(title="GeneReviews®", journal="GeneReviews®", is_book=True)
    ris = to_ris([1], book)
    assert ris.startswith("TY  - BOOK\r\n") and "TI  - GeneReviews®" in ris
    assert "T2  - " not in ris and "JO  - " not in ris
    bib = to_bibtex([1], book)
    assert bib.startswith("@book{pmid1,\n") and "journal" not in bib and "booktitle" not in bib
    chapter = _export_rows(title="A syndrome", journal="GeneReviews®", is_book=True)
    assert to_ris([1], chapter).startswith("TY  - CHAP\r\n")
    assert "  booktitle = {GeneReviews®}" in to_bibtex([1], chapter)
    kinds = [next(csv.DictReader(io.StringIO(to_csv([1], rows))))["type"]
             for rows in (_export_rows(), chapter, book)]  # fmt: skip
    assert kinds == ["article", "chapter", "book"]
