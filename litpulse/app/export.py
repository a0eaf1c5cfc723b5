"""Search results as citation files: RIS, BibTeX and CSV.

Each function takes the hits of a search and the article rows behind them (the
``articles`` columns plus the ``record`` JSON, see :func:`load_export_rows`) and returns
the file's text. Reference managers (Zotero, EndNote, Mendeley, JabRef) read all three.

Example:
    >>> rows = {1: {"title": "A study", "authors": [{"last_name": "Doe", "fore_name": "J"}],
    ...             "journal": "J Test", "pub_year": 2024, "doi": None, "record": {}}}
    >>> print(to_ris([1], rows).splitlines()[0:2])
    ['TY  - JOUR', 'TI  - A study']
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from litpulse.core.schema import articles
from ranking.details import Kind, published_parts, published_text, pubmed_url
from ranking.details import one_line as _one_line

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ranking.search import Hit

__all__ = ["FORMATS", "load_export_rows", "to_ris", "to_bibtex", "to_csv", "render"]

#: format -> (media type, file extension)
FORMATS: dict[str, tuple[str, str]] = {
    "ris": ("application/x-research-info-systems", "ris"),
    "bibtex": ("application/x-bibtex", "bib"),
    "csv": ("text/csv", "csv"),
}


CSV_COLUMNS = (
    "rank", "pmid", "title", "authors", "journal", "year", "date", "volume", "issue",
    "pages", "doi", "url", "score", "similarity", "recency", "citation", "retracted", "type",
)
#: What a retracted article's RIS ``N1`` and BibTeX ``note`` say (the page's label).
RETRACTED = "Retracted article"


#: RIS reference type and BibTeX entry type of each kind.
_RIS_TYPE = {Kind.ARTICLE: "JOUR", Kind.CHAPTER: "CHAP", Kind.BOOK: "BOOK"}
_BIB_TYPE = {Kind.ARTICLE: "article", Kind.CHAPTER: "incollection", Kind.BOOK: "book"}


def load_export_rows(engine: Engine, pmids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The article columns an export needs, for these PMIDs, in one query."""
    ids = sorted({int(p) for p in pmids})
    if not ids:
        return {}
    cols = (
        articles.c.pmid, articles.c.title, articles.c.abstract, articles.c.journal,
        articles.c.pub_year, articles.c.pub_month, articles.c.pub_day, articles.c.article_date,
        articles.c.best_date, articles.c.language,
        articles.c.doi, articles.c.pmcid, articles.c.authors, articles.c.mesh,
        articles.c.publication_types, articles.c.record, articles.c.is_retracted,
        articles.c.is_book,
    )
    with engine.connect() as conn:
        return {
            int(r["pmid"]): dict(r)
            for r in conn.execute(select(*cols).where(articles.c.pmid.in_(ids))).mappings()
        }


def _authors(row: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """``(name, is_collective)`` pairs; persons as ``Last, First``."""
    out = []
    for a in row.get("authors") or []:
        if isinstance(a, str):
            out.append((_one_line(a), False))
        elif isinstance(a, Mapping):
            if a.get("collective_name"):
                out.append((_one_line(a["collective_name"]), True))
            elif a.get("last_name"):
                first = a.get("fore_name") or a.get("initials")
                name = f"{a['last_name']}, {first}" if first else str(a["last_name"])
                out.append((_one_line(name), False))
    return out


def _extra(row: Mapping[str, Any], key: str) -> str:
    rec = row.get("record") or {}
    return _one_line(rec.get(key)) if isinstance(rec, Mapping) else ""


def _mesh_terms(row: Mapping[str, Any]) -> list[str]:
    terms = []
    for m in row.get("mesh") or []:
        term = m.get("descriptor") if isinstance(m, Mapping) else m
        if term:
            terms.append(_one_line(term))
    return terms


def _hits_by_pmid(hits: Sequence[Hit | int]) -> list[tuple[int, Hit | None]]:
    out: list[tuple[int, Hit | None]] = []
    for h in hits:
        if isinstance(h, int):
            out.append((h, None))
        else:
            out.append((h.pmid, h))
    return out


def to_ris(hits: Sequence[Hit | int], rows: Mapping[int, Mapping[str, Any]]) -> str:
    """RIS records (``TY  - JOUR`` … ``ER  -``), one per hit, in rank order; a book
    chapter is ``TY  - CHAP`` with its book as ``T2``, a whole book ``TY  - BOOK``."""
    lines: list[str] = []

    def tag(name: str, value: Any) -> None:
        text = _one_line(value)
        if text:
            lines.append(f"{name}  - {text}")

    for pmid, hit in _hits_by_pmid(hits):
        row = rows.get(pmid)
        if row is None:
            continue
        kind = Kind.of(row)
        lines.append(f"TY  - {_RIS_TYPE[kind]}")
        tag("TI", row.get("title"))
        for name, _ in _authors(row):
            tag("AU", name)
        tag("PY", row.get("pub_year"))
        parts = published_parts(row)
        if parts is not None:  # RIS leaves the parts PubMed does not give empty: 2019///
            y, m, d = parts
            tag("DA", f"{y:04d}/{m:02d}/{d:02d}" if m and d
                else f"{y:04d}/{f'{m:02d}' if m else ''}//")
        if kind is Kind.ARTICLE:
            tag("T2", row.get("journal"))
            tag("JO", _extra(row, "journal_iso") or row.get("journal"))
        elif kind is Kind.CHAPTER:  # the book the chapter is in (a book has no journal)
            tag("T2", row.get("journal"))
        tag("VL", _extra(row, "volume"))
        tag("IS", _extra(row, "issue"))
        pages = _extra(row, "pages")
        if pages:
            first, _, last = pages.partition("-")
            tag("SP", first)
            tag("EP", last)
        tag("AB", row.get("abstract"))
        tag("DO", row.get("doi"))
        tag("AN", f"PMID:{pmid}")
        tag("UR", pubmed_url(pmid))
        tag("LA", row.get("language"))
        for term in _mesh_terms(row):
            tag("KW", term)
        if row.get("is_retracted"):
            tag("N1", RETRACTED)
        if hit is not None:
            tag("N1", f"litpulse score {hit.score:.4f}")
        lines.append("ER  - ")
        lines.append("")
    return "\r\n".join(lines)


_BIB_SPECIAL = re.compile(r"([&%$#_{}\\~^])")
_BIB_REPL = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    # BibTeX has no escaped brace: it counts every `{` and `}`, so `\}` would still end
    # the field (and the entry) and a lone `\{` swallow the fields after it
    "{": r"\textbraceleft{}", "}": r"\textbraceright{}",
    "\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _bib(value: Any) -> str:
    return _BIB_SPECIAL.sub(lambda m: _BIB_REPL[m.group(1)], _one_line(value))


#: The word BibTeX separates the names of a list by (any case, with blanks or the field's
#: ends either side: within a name part or at its edge, where ", " or " and " joins it).
_BIB_AND = re.compile(r"(?<!\S)and(?!\S)", re.IGNORECASE)


def _bib_person(name: str) -> str:
    """A person's ``Last, First`` for a BibTeX author list: a part holding the word
    ``and`` (a compound or group name PubMed gives as a last name, ``Smith and Wesson``)
    braced, so it stays one name (else BibTeX reads two authors there)."""
    return ", ".join("{" + part + "}" if _BIB_AND.search(part) else part
                     for part in _bib(name).split(", "))


def _bib_keyword(term: str) -> str:
    """One item of a BibTeX ``keywords`` list, whose items a comma separates: a MeSH
    heading holding one (the inverted headings, ``Asthma, Exercise-Induced``) braced, so
    that it stays one keyword where the list is split at the commas outside braces
    (biblatex's ``keywords``)."""
    text = _bib(term)
    return "{" + text + "}" if "," in text else text


def _nested(text: str) -> bool:
    """Whether every ``}`` in ``text`` closes a ``{`` before it and every ``{`` is closed."""
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def _bib_verbatim(value: Any) -> str:
    """A verbatim field's value (biblatex ``doi``, ``url``): the text as it is, on one line.

    LaTeX escapes would become part of the value (a DOI ``…_3`` written ``…\\_3`` is
    another DOI), so none is added. BibTeX still counts braces in every field, so braces
    that do not nest (``}`` before its ``{``, one left open) would end the field or swallow
    the entry: they are dropped (a DOI or URL never holds braces legitimately).
    """
    text = _one_line(value)
    return text if _nested(text) else text.replace("{", "").replace("}", "")


def to_bibtex(hits: Sequence[Hit | int], rows: Mapping[int, Mapping[str, Any]]) -> str:
    """BibTeX ``@article{pmidNNN, …}`` entries, one per hit, in rank order; a book
    chapter is ``@incollection`` with its book as ``booktitle``, a whole book ``@book``."""
    entries = []
    for pmid, _hit in _hits_by_pmid(hits):
        row = rows.get(pmid)
        if row is None:
            continue
        kind = Kind.of(row)
        fields: list[tuple[str, str]] = [("title", "{" + _bib(row.get("title")) + "}")]
        names = [("{" + _bib(n) + "}") if group else _bib_person(n) for n, group in _authors(row)]
        if names:
            fields.append(("author", " and ".join(names)))
        # an article's journal; the book a chapter is in (a whole book is in none)
        container = {Kind.ARTICLE: "journal", Kind.CHAPTER: "booktitle"}.get(kind)
        for key, value in (
            (container or "", row.get("journal") if container else None),
            ("year", row.get("pub_year")),
            ("volume", _extra(row, "volume")),
            ("number", _extra(row, "issue")),
            ("pages", _extra(row, "pages").replace("-", "--")),
        ):
            if value:
                fields.append((key, _bib(value)))
        doi = _bib_verbatim(row.get("doi"))
        if doi:
            fields.append(("doi", doi))
        fields.append(("pmid", str(pmid)))
        fields.append(("url", _bib_verbatim(pubmed_url(pmid))))
        keywords = _mesh_terms(row)
        if keywords:
            fields.append(("keywords", ", ".join(_bib_keyword(t) for t in keywords)))
        if row.get("abstract"):
            fields.append(("abstract", _bib(row["abstract"])))
        if row.get("is_retracted"):
            fields.append(("note", RETRACTED))
        body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields)
        entries.append(f"@{_BIB_TYPE[kind]}{{pmid{pmid},\n{body}\n}}\n")
    return "\n".join(entries)


#: What a spreadsheet takes for the start of a formula, at the start of a cell.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: A ``;`` and what follows it up to a formula's start (blanks, quotes): where a
#: spreadsheet whose list separator is ``;`` (Excel in most of continental Europe) starts
#: a new cell in the middle of ours.
_FORMULA_AFTER_SEMICOLON = re.compile(r';[\s"]*?(?=[=+\-@\t\r])')


def _cell(value: Any) -> Any:
    """A text cell guarded against spreadsheet formula injection: one starting ``= + -
    @``, tab or carriage return gets a leading ``'``, and so does each such start after a
    ``;`` in it (with blanks or quotes between), which a spreadsheet splitting at ``;``
    reads as a cell of its own (``a;=cmd…`` is written ``a;'=cmd…``). Only for text from
    the records: numbers this module formats itself (rank, PMID, year, scores) are written
    as they are, so that a negative score stays a number."""
    if not isinstance(value, str):
        return value
    value = _FORMULA_AFTER_SEMICOLON.sub(lambda m: m.group() + "'", value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def _number(value: float) -> str:
    """A score as the CSV writes it: fixed 6 decimals (``-0.120000``), never guarded."""
    return f"{float(value):.6f}"


def to_csv(
    hits: Sequence[Hit | int], rows: Mapping[int, Mapping[str, Any]], first_rank: int = 1
) -> str:
    """One CSV row per hit with its bibliographic fields and score components; the
    first hit's ``rank`` is ``first_rank`` (a page's offset + 1). ``type`` says what the
    record is (:class:`Kind`: ``article``, ``chapter`` or ``book``; the ``journal`` of a
    chapter or book is the book's title)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for rank, (pmid, hit) in enumerate(_hits_by_pmid(hits), start=first_rank):
        row = rows.get(pmid)
        if row is None:
            continue
        year = row.get("pub_year")
        text = [
            _one_line(row.get("title")), "; ".join(n for n, _ in _authors(row)),
            _one_line(row.get("journal")),
            year if isinstance(year, int) and not isinstance(year, bool) else _one_line(year),
            published_text(row) or "", _extra(row, "volume"), _extra(row, "issue"),
            _extra(row, "pages"), _one_line(row.get("doi")), pubmed_url(pmid),
        ]  # fmt: skip
        # the scores are numbers formatted here, never text: not guarded (a negative
        # score stays a number); the text cells from the records are
        scores = (
            [_number(hit.score), _number(hit.similarity), _number(hit.recency),
             _number(hit.citation)]
            if hit is not None else ["", "", "", ""]
        )  # fmt: skip
        retracted = "true" if row.get("is_retracted") else "false"
        writer.writerow([rank, pmid, *(_cell(v) for v in text), *scores, retracted,
                         Kind.of(row).value])
    return buf.getvalue()


def render(
    fmt: str, hits: Sequence[Hit | int], rows: Mapping[int, Mapping[str, Any]],
    first_rank: int = 1,
) -> str:
    """The export of ``hits`` in ``fmt`` (``ris``, ``bibtex`` or ``csv``); CSV ranks start
    at ``first_rank`` (a page's offset + 1)."""
    if fmt == "ris":
        return to_ris(hits, rows)
    if fmt == "bibtex":
        return to_bibtex(hits, rows)
    if fmt == "csv":
        return to_csv(hits, rows, first_rank)
    from litpulse.core.errors import ConfigError

    raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
