"""Field extraction: one parsed ``PubmedArticle``/``PubmedBookArticle``/``DeleteCitation``
element into a :class:`~ingest.records.Record`, :class:`~ingest.records.Deletion`s or a
:class:`~ingest.records.QuarantineEntry`.

The rules (inline markup, references, authors, ORCIDs, DOIs) are listed in
:mod:`ingest.parse`; the dates are read by :mod:`ingest.dates`.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lxml import etree

from ingest import dates
from ingest.dates import read_pub_date, read_ymd
from ingest.records import (
    AbstractSection,
    Author,
    Deletion,
    Item,
    MeshHeading,
    PartialDate,
    QuarantineEntry,
    Record,
    SourceRef,
)
from litpulse.core.states import RETRACTED_TYPE
from litpulse.core.text import clean_doi

__all__ = [
    "COMPILED",
    "MAX_PMID",
    "MAX_VERSION",
    "deletions",
    "element_entry",
    "flatten_text",
    "id_value",
    "pmid_guess",
    "quarantine_line",
    "record_or_quarantine",
]

#: Largest PMID accepted: NCBI issues them as positive 32-bit integers.
MAX_PMID = 2**31 - 1
#: Largest ``Version`` of a PMID accepted (real ones are single digits).
MAX_VERSION = 999
_INT32_MAX = 2**31 - 1


def quarantine_line(line: int | None) -> int | None:
    """A line number that fits the quarantine table's integer column, else None."""
    return line if line is not None and 0 < line <= _INT32_MAX else None


def element_entry(
    elem: Any, ref: SourceRef, reason: str, offset: int, *, pmid: int | None = None
) -> QuarantineEntry:
    """The quarantine entry of a parsed element: its XML, the reason and its line."""
    return QuarantineEntry(
        reason=reason,
        raw_xml=etree.tostring(elem, encoding="unicode", with_tail=False),
        source=ref,
        pmid=pmid,
        line=quarantine_line((elem.sourceline or 1) + offset),
    )


#: Inline formatting elements whose boundaries may stand between two words.
_WORD_MARKUP = frozenset({"i", "b", "u", "em", "strong", "italic", "bold"})


def flatten_text(elem: Any) -> str:
    """The plain text of an element with inline markup removed and whitespace normalised.

    ``H<sub>2</sub>O`` → ``H2O``; ``<i>in vivo</i> study`` → ``in vivo study``. Where
    italic/bold/underline markup sits between two letters with no space (``the<i>TERT</i>
    gene``, as some records have it), a space is put back so words are not glued;
    sub/superscripts and MathML are joined as they are (``x<sup>2</sup>`` → ``x2``).

    Args:
        elem: An lxml element.

    Returns:
        The text, whitespace runs collapsed to one space, stripped.
    """
    if len(elem):
        text = _flatten_children(elem)
    else:
        text = elem.text
        if not text:
            return ""
    return _squeeze(text)


def deletions(elem: Any, ref: SourceRef, offset: int = 0) -> Iterator[Item]:
    for child in elem.iterchildren("PMID"):
        pmid = id_value(child.text, MAX_PMID)
        if pmid is not None:
            yield Deletion(pmid, ref)
        else:
            problem = _id_problem(child.text, "PMID", MAX_PMID)
            yield element_entry(child, ref, f"DeleteCitation with {problem}", offset)


def id_value(text: str | None, high: int) -> int | None:
    """The identifier in ``text`` (ASCII digits, surrounding blanks allowed) if within
    ``1..high``, else None. ``str.isdigit`` alone would take ``²`` or ``١٢٣``."""
    if not text:
        return None
    if not (text.isdigit() and text.isascii()):
        text = text.strip()
        if not (text.isdigit() and text.isascii()):
            return None
    if len(text) > 10:
        return None
    value = int(text)
    return value if 1 <= value <= high else None


def _id_problem(text: str | None, what: str, high: int) -> str:
    """What is wrong with an identifier :func:`_id_value` refused, for a reason."""
    t = (text or "").strip()
    shown = repr(t if len(t) <= 40 else t[:40] + "...")
    if t.isdigit() and t.isascii():
        return f"{what} {shown} out of range 1..{high}"
    return f"non-integer {what} {shown}"


def record_or_quarantine(elem: Any, ref: SourceRef, is_book: bool, offset: int = 0) -> Item:
    """The record of a ``PubmedArticle``/``PubmedBookArticle`` element, else its
    quarantine entry. Articles go through the compiled reader when it was built; it
    hands back (None) whatever it is not sure to read exactly as :func:`_article` does."""
    if _READER is not None and not is_book:
        try:
            rec = _READER(elem, ref)
        except Exception:  # noqa: BLE001 - the Python reader decides (and quarantines)
            rec = None
        if rec is not None:
            return rec
    pmid: int | None = None
    try:
        return _book(elem, ref) if is_book else _article(elem, ref)
    except _BadRecord as exc:
        reason, pmid = exc.reason, exc.pmid
    except Exception as exc:  # noqa: BLE001 - a bad record must not stop the file
        reason = f"{type(exc).__name__} while reading the record: {exc}"
        pmid = pmid_guess(elem)
    return element_entry(elem, ref, reason, offset, pmid=pmid)


class _BadRecord(Exception):
    def __init__(self, reason: str, pmid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pmid = pmid


def pmid_guess(elem: Any) -> int | None:
    """Best-effort PMID of a broken record (first PMID, else ArticleId IdType=pubmed)."""
    for p in elem.iter("PMID", "ArticleId"):
        if p.tag == "ArticleId" and p.get("IdType") != "pubmed":
            continue
        return id_value(p.text, MAX_PMID)
    return None


def _read_pmid(pmid_el: Any, where: str) -> tuple[int, int]:
    if pmid_el is None:
        raise _BadRecord(f"{where} without PMID")
    pmid = id_value(pmid_el.text, MAX_PMID)
    if pmid is None:
        raise _BadRecord(f"{where} with {_id_problem(pmid_el.text, 'PMID', MAX_PMID)}")
    ver = pmid_el.get("Version")
    if ver is None:
        return pmid, 1
    version = id_value(ver, MAX_VERSION)
    if version is None:
        problem = _id_problem(ver, "Version", MAX_VERSION)
        raise _BadRecord(f"{where} of PMID {pmid} with {problem}", pmid)
    return pmid, version


def _two_parts(elem: Any, first: str, second: str) -> tuple[Any, Any]:
    """The children of ``elem`` tagged ``first`` and ``second`` (the last of each; None)."""
    one = two = None
    for child in elem:
        tag = child.tag
        if tag == first:
            one = child
        elif tag == second:
            two = child
    return one, two


def _article(elem: Any, ref: SourceRef) -> Record:
    """Read one ``PubmedArticle`` into a record.

    Longer than the usual 80 lines on purpose: this is the parser's hot path, one pass
    over each level of the element with local variables; splitting it into helpers would
    add calls and objects for every record (:mod:`bench.parse` measures it).
    """
    # The hot path: one pass over each level with local variables (no helper objects).
    mc, pd_el = _two_parts(elem, "MedlineCitation", "PubmedData")
    if mc is None:
        raise _BadRecord("PubmedArticle without MedlineCitation", pmid_guess(elem))

    pmid_el = article = None
    date_completed = date_revised = None
    mesh: tuple[MeshHeading, ...] = ()
    keywords: list[str] = []
    retraction_in: list[int] = []
    cites: list[int] = []
    for child in mc:
        tag = child.tag
        if tag == "PMID":
            if pmid_el is None:
                pmid_el = child
        elif tag == "Article":
            article = child
        elif tag == "MeshHeadingList":
            mesh = _mesh(child)
        elif tag == "DateRevised":
            date_revised = read_ymd(child)
        elif tag == "DateCompleted":
            date_completed = read_ymd(child)
        elif tag == "KeywordList":
            for kw in child:
                t = flatten_text(kw)
                if t:
                    keywords.append(t)
        elif tag == "CommentsCorrectionsList":
            for cc in child:
                rt = cc.get("RefType")
                if rt == "RetractionIn":
                    _append_pmid(cc, retraction_in)
                elif rt == "Cites":
                    _append_pmid(cc, cites)
    pmid, version = _read_pmid(pmid_el, "MedlineCitation")
    if article is None:
        raise _BadRecord("MedlineCitation without Article", pmid)

    title = ""
    vernacular_title = journal = journal_iso = volume = issue = pages = doi = None
    abstract: tuple[AbstractSection, ...] = ()
    authors: tuple[Author, ...] = ()
    pub_date = _NO_DATE
    article_date = None
    publication_types: list[str] = []
    languages: list[str] = []
    for child in article:
        tag = child.tag
        if tag == "Journal":
            for jc in child:
                jt = jc.tag
                if jt == "JournalIssue":
                    for ji in jc:
                        jit = ji.tag
                        if jit == "PubDate":
                            pub_date = read_pub_date(ji)
                        elif jit == "Volume":
                            volume = ji.text
                        elif jit == "Issue":
                            issue = ji.text
                elif jt == "Title":
                    journal = jc.text
                elif jt == "ISOAbbreviation":
                    journal_iso = jc.text
        elif tag == "ArticleTitle":
            title = flatten_text(child)
        elif tag == "Abstract":
            abstract = _abstract(child)
        elif tag == "AuthorList":
            authors = _authors(child)
        elif tag == "Pagination":
            for pg in child:
                if pg.tag == "MedlinePgn":
                    pages = pg.text
        elif tag == "ELocationID":
            if doi is None and child.get("EIdType") == "doi" and child.get("ValidYN") != "N":
                doi = _clean_doi(child.text)
        elif tag == "Language":
            t = child.text
            if t:
                languages.append(t.strip())
        elif tag == "PublicationTypeList":
            for pt in child:
                t = pt.text
                if t:
                    publication_types.append(t.strip())
        elif tag == "ArticleDate":
            if article_date is None and child.get("DateType", "Electronic") == "Electronic":
                article_date = read_ymd(child)
        elif tag == "VernacularTitle":
            vernacular_title = flatten_text(child) or None

    entrez_date = pubmed_date = None
    pmcid = id_doi = None
    references: list[int] = []
    if pd_el is not None:
        for child in pd_el:
            tag = child.tag
            if tag == "ReferenceList":
                _reference_pmids(child, references)
            elif tag == "History":
                for h in child:
                    status = h.get("PubStatus")
                    if status == "entrez":
                        if entrez_date is None:
                            entrez_date = read_ymd(h)
                    elif status == "pubmed":
                        if pubmed_date is None:
                            pubmed_date = read_ymd(h)
            elif tag == "ArticleIdList":
                for aid in child:
                    id_type = aid.get("IdType")
                    if id_type == "doi":
                        if id_doi is None:
                            id_doi = _clean_doi(aid.text)
                    elif id_type == "pmc":
                        if pmcid is None and aid.text:
                            pmcid = aid.text.strip() or None
    if cites:
        references.extend(cites)
    return Record(
        pmid=pmid,
        version=version,
        title=title,
        source=ref,
        abstract_sections=abstract,
        vernacular_title=vernacular_title,
        journal=journal,
        journal_iso=journal_iso,
        volume=volume,
        issue=issue,
        pages=pages,
        pub_date=pub_date,
        article_date=article_date,
        entrez_date=entrez_date,
        pubmed_date=pubmed_date,
        date_completed=date_completed,
        date_revised=date_revised,
        authors=authors,
        mesh=mesh,
        keywords=tuple(keywords),
        publication_types=tuple(publication_types),
        languages=tuple(languages),
        doi=doi or id_doi,
        pmcid=pmcid,
        references=tuple(dict.fromkeys(references)) if references else (),
        is_retracted=bool(retraction_in) or RETRACTED_TYPE in publication_types,
        retraction_in=tuple(dict.fromkeys(retraction_in)) if retraction_in else (),
        is_book=False,
        status=mc.get("Status"),
    )


def _reference_pmids(reference_list: Any, out: list[int]) -> None:
    for aid in reference_list.iter("ArticleId"):
        if aid.get("IdType") == "pubmed":
            pmid = id_value(aid.text, MAX_PMID)
            if pmid is not None:  # an odd reference is dropped, the record kept
                out.append(pmid)


def _book(elem: Any, ref: SourceRef) -> Record:
    doc, data = _two_parts(elem, "BookDocument", "PubmedBookData")
    if doc is None:
        raise _BadRecord("PubmedBookArticle without BookDocument", pmid_guess(elem))
    pmid_el = None
    f = _ArticleFields()
    book_title = None
    date_revised = None
    keywords: list[str] = []
    references: list[int] = []
    for child in doc:
        tag = child.tag
        if tag == "PMID":
            if pmid_el is None:
                pmid_el = child
        elif tag == "Book":
            for b in child:
                btag = b.tag
                if btag == "BookTitle":
                    book_title = flatten_text(b)
                elif btag == "PubDate":
                    f.pub_date = read_pub_date(b)
                elif btag == "ELocationID" and b.get("EIdType") == "doi" and f.doi is None:
                    f.doi = _clean_doi(b.text)
        elif tag == "DateRevised":
            date_revised = read_ymd(child)
        elif tag == "KeywordList":
            keywords.extend(t for t in map(flatten_text, child) if t)
        elif tag == "PublicationType":
            if child.text:
                f.publication_types.append(child.text.strip())
        elif tag == "AuthorList":
            if child.get("Type", "authors") == "authors":
                f.authors = _authors(child)
        elif tag == "ReferenceList":  # books keep theirs in the BookDocument
            _reference_pmids(child, references)
        else:
            f.dispatch(tag, child)
    pmid, version = _read_pmid(pmid_el, "BookDocument")
    history: dict[str, dt.date | None] = {}
    own_ids: dict[str, str] = {}
    if data is not None:
        _pubmed_data(data, history, own_ids, references)
    title = f.title or book_title or ""
    return Record(
        pmid=pmid,
        version=version,
        title=title,
        source=ref,
        abstract_sections=f.abstract,
        vernacular_title=f.vernacular_title,
        journal=book_title,
        pub_date=f.pub_date,
        article_date=f.article_date,
        entrez_date=history.get("entrez"),
        pubmed_date=history.get("pubmed"),
        date_revised=date_revised,
        authors=f.authors,
        keywords=tuple(keywords),
        publication_types=tuple(f.publication_types),
        languages=tuple(f.languages),
        doi=f.doi or own_ids.get("doi"),
        pmcid=own_ids.get("pmc"),
        references=_dedup(references),
        is_retracted=RETRACTED_TYPE in f.publication_types,
        is_book=True,
    )


class _ArticleFields:
    """Mutable scratch space filled from the children of ``Article``/``BookDocument``."""

    __slots__ = (
        "title",
        "vernacular_title",
        "abstract",
        "journal",
        "journal_iso",
        "volume",
        "issue",
        "pages",
        "pub_date",
        "article_date",
        "authors",
        "publication_types",
        "languages",
        "doi",
    )

    def __init__(self) -> None:
        self.title = ""
        self.vernacular_title: str | None = None
        self.abstract: tuple[AbstractSection, ...] = ()
        self.journal: str | None = None
        self.journal_iso: str | None = None
        self.volume: str | None = None
        self.issue: str | None = None
        self.pages: str | None = None
        self.pub_date = _NO_DATE
        self.article_date: dt.date | None = None
        self.authors: tuple[Author, ...] = ()
        self.publication_types: list[str] = []
        self.languages: list[str] = []
        self.doi: str | None = None

    def dispatch(self, tag: str, child: Any) -> None:
        if tag == "ArticleTitle":
            self.title = flatten_text(child)
        elif tag == "Abstract":
            self.abstract = _abstract(child)
        elif tag == "AuthorList":
            self.authors = _authors(child)
        elif tag == "Journal":
            self._journal(child)
        elif tag == "Language":
            if child.text:
                self.languages.append(child.text.strip())
        elif tag == "PublicationTypeList":
            self.publication_types.extend(p.text.strip() for p in child if p.text)
        elif tag == "Pagination":
            for p in child.iterchildren("MedlinePgn"):
                self.pages = _text(p)
        elif tag == "ELocationID":
            if self.doi is None and child.get("EIdType") == "doi" and child.get("ValidYN") != "N":
                self.doi = _clean_doi(child.text)
        elif tag == "ArticleDate":
            if self.article_date is None and child.get("DateType", "Electronic") == "Electronic":
                self.article_date = read_ymd(child)
        elif tag == "VernacularTitle":
            self.vernacular_title = flatten_text(child) or None

    def _journal(self, journal: Any) -> None:
        for child in journal:
            tag = child.tag
            if tag == "JournalIssue":
                for ji in child:
                    jt = ji.tag
                    if jt == "PubDate":
                        self.pub_date = read_pub_date(ji)
                    elif jt == "Volume":
                        self.volume = ji.text
                    elif jt == "Issue":
                        self.issue = ji.text
            elif tag == "Title":
                self.journal = child.text
            elif tag == "ISOAbbreviation":
                self.journal_iso = child.text


_NO_DATE = PartialDate()


def _pubmed_data(
    pd_el: Any,
    history: dict[str, dt.date | None],
    own_ids: dict[str, str],
    references: list[int],
) -> None:
    for child in pd_el:
        tag = child.tag
        if tag == "History":
            for h in child:
                status = h.get("PubStatus")
                if (status == "entrez" or status == "pubmed") and status not in history:
                    history[status] = read_ymd(h)
        elif tag == "ArticleIdList":
            for aid in child:
                id_type = aid.get("IdType")
                if id_type in ("doi", "pmc") and id_type not in own_ids and aid.text:
                    value = _clean_doi(aid.text) if id_type == "doi" else aid.text.strip()
                    if value:
                        own_ids[id_type] = value
        elif tag == "ReferenceList":
            _reference_pmids(child, references)


def _abstract(abstract: Any) -> tuple[AbstractSection, ...]:
    sections = []
    for at in abstract.iterchildren("AbstractText"):
        text = flatten_text(at)
        label = at.get("Label")
        if text or label:
            sections.append(AbstractSection(text, label or None, at.get("NlmCategory")))
    return tuple(sections)


def _authors(author_list: Any) -> tuple[Author, ...]:
    out = []
    for a in author_list:
        if a.tag != "Author" or a.get("ValidYN") == "N":
            continue
        last = fore = initials = collective = orcid = None
        affs: list[str] = []
        for c in a:
            tag = c.tag
            if tag == "LastName":
                last = c.text
            elif tag == "ForeName":
                fore = c.text
            elif tag == "Initials":
                initials = c.text
            elif tag == "AffiliationInfo":
                for af in c:
                    if af.tag == "Affiliation":
                        t = af.text if not len(af) else flatten_text(af)
                        if t:
                            affs.append(t.strip())
            elif tag == "CollectiveName":
                collective = flatten_text(c) or None
            elif tag == "Identifier":
                if orcid is None and c.get("Source") == "ORCID" and c.text:
                    orcid = _clean_orcid(c.text)
        out.append(Author(last, fore, initials, collective, tuple(affs), orcid))
    return tuple(out)


def _mesh(mesh_list: Any) -> tuple[MeshHeading, ...]:
    out = []
    cache = _MESH_CACHE
    for mh in mesh_list:
        descriptor = ui = None
        major = False
        quals: list[str] = []
        for c in mh:
            if c.tag == "DescriptorName":
                descriptor = c.text
                ui = c.get("UI")
                if c.get("MajorTopicYN") == "Y":
                    major = True
            else:  # QualifierName
                q = c.text
                if q:
                    quals.append(q)
                if c.get("MajorTopicYN") == "Y":
                    major = True
        if descriptor:
            # Headings repeat across records (Humans, Male...): share the frozen objects.
            key = (descriptor, ui, major, *quals)
            heading = cache.get(key)
            if heading is None:
                if len(cache) >= _MESH_CACHE_SIZE:
                    cache.clear()
                heading = cache[key] = MeshHeading(descriptor, ui, major, tuple(quals))
            out.append(heading)
    return tuple(out)


_MESH_CACHE: dict[tuple[Any, ...], MeshHeading] = {}
_MESH_CACHE_SIZE = 50_000


# --------------------------------------------------------------------------- text helpers


def _text(el: Any) -> str | None:
    t = el.text if not len(el) else flatten_text(el)
    if t:
        t = t.strip()
    return t or None


def _squeeze(text: str) -> str:
    # Substring tests are much cheaper than split/join on long non-ASCII text, and most
    # PubMed text has no whitespace runs at all.
    if "  " in text or "\n" in text or "\t" in text or "\r" in text:
        return " ".join(text.split())
    return text.strip()


def _markup_spaces(before: str, inner: str, after: str) -> tuple[bool, bool]:
    """Whether a space lost between a word and italic/bold markup holding ``inner`` goes
    back before it (``before``: the text just before) and after it (``after``: just after).

    Only between two letters, and not for markup of one letter or around a Greek letter:
    such markup belongs to its word (``NF-<i>κ</i>B``, ``TNF<i>α</i>``, ``p<i>K</i>a``).
    The one home of the rule: the compiled reader calls it too.
    """
    if len(inner) < 2:
        return False, False

    def apart(left: str, right: str) -> bool:
        return left.isalpha() and right.isalpha() and not (_greek(left) or _greek(right))

    return apart(before[-1:], inner[:1]), apart(inner[-1:], after[:1])


def _greek(char: str) -> bool:
    return "\u0370" <= char <= "\u03ff" or "\u1f00" <= char <= "\u1fff"


def _flatten_children(elem: Any) -> str:
    head = elem.text
    parts: list[str] = [head] if head else []
    for child in elem:
        inner = child.text if not len(child) else "".join(child.itertext())
        tail = child.tail
        if child.tag in _WORD_MARKUP and inner:
            # Put back a space lost between a word and italic/bold markup.
            space_before, space_after = _markup_spaces(parts[-1] if parts else "", inner,
                                                       tail or "")  # fmt: skip
            if space_before:
                parts.append(" ")
            parts.append(inner)
            if space_after:
                parts.append(" ")
        elif inner:
            parts.append(inner)
        if tail:
            parts.append(tail)
    return "".join(parts)


def _clean_doi(text: str | None) -> str | None:
    """The DOI of an ELocationID or ArticleId: as a lookup reads it (``doi: 10.…``, a
    ``doi.org`` link, :func:`litpulse.core.text.clean_doi`), else its first word, a
    link's or ``doi:`` prefix off."""
    if not text:
        return None
    whole = clean_doi(text)
    if whole is not None:
        return whole
    words = text.split()
    if not words:
        return None
    doi = words[0].rstrip(",.")
    low = doi.lower()
    for prefix in ("https://doi.org/", "http://dx.doi.org/", "doi:"):
        if low.startswith(prefix):
            doi = doi[len(prefix) :]
            break
    return doi or None


def _clean_orcid(text: str) -> str | None:
    t = text.strip().rstrip("/")
    t = t.rpartition("/")[2]
    return t or None


def _append_pmid(cc: Any, out: list[int]) -> None:
    for p in cc.iterchildren("PMID"):
        pmid = id_value(p.text, MAX_PMID)
        if pmid is not None:
            out.append(pmid)


def _dedup(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(values))


# --------------------------------------------------------------------------- compiled reader


def _compiled_reader() -> Callable[[Any, SourceRef], Record | None] | None:
    """``ArticleReader.read`` of ``ingest/_cfields.pyx`` if it was built (setup.py), else
    None. It reads a ``PubmedArticle`` with the rules above (given this module's helpers)
    but walks libxml2's nodes in C; where it is unsure it returns None."""
    try:
        from ingest._cfields import ArticleReader

        reader: Callable[[Any, SourceRef], Record | None] = ArticleReader(
            sys.modules[__name__], dates
        ).read
    except (ImportError, TypeError) as exc:  # not built, or built for other records
        if not isinstance(exc, ImportError):
            logging.getLogger(__name__).warning("compiled article reader not used: %s", exc)
        return None
    return reader


_READER = _compiled_reader()
#: Whether the compiled article reader is in use (``pip install -e .`` builds it).
COMPILED = _READER is not None
