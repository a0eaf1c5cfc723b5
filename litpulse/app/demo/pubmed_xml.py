"""The one PubMed XML builder: elements, ``DeleteCitation`` blocks and whole documents.

Shared by the corpus generator (:mod:`litpulse.app.demo.generate`), the E-utilities
emulator of the tests and the tests themselves, so every piece of PubMed XML the project
writes is built the same way.

Example:
    >>> import datetime as dt
    >>> date_xml("DateRevised", dt.date(2024, 5, 2))
    '<DateRevised><Year>2024</Year><Month>05</Month><Day>02</Day></DateRevised>'
    >>> deletion_xml([7, 8])
    '<DeleteCitation><PMID Version="1">7</PMID><PMID Version="1">8</PMID></DeleteCitation>\\n'
"""

from __future__ import annotations

import datetime as dt
import gzip
import html
import io
from collections.abc import Iterable, Sequence

__all__ = [
    "DOCTYPE",
    "article_xml",
    "date_xml",
    "default_title",
    "deletion_xml",
    "document",
    "gz",
    "pubmed_set",
]

#: The DOCTYPE line of 2025/2026 PubMed files (biopython ships this DTD, so Entrez.parse
#: validates offline).
DOCTYPE = (
    '<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
    '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">'
)
#: Start and end of a generated ``PubmedArticleSet`` file.
HEADER = f'<?xml version="1.0" encoding="utf-8"?>\n{DOCTYPE}\n<PubmedArticleSet>\n'
FOOTER = "</PubmedArticleSet>\n"


def date_xml(tag: str, d: dt.date, attrs: str = "") -> str:
    """``<tag attrs><Year/><Month/><Day/></tag>`` with two-digit month and day."""
    return (
        f"<{tag}{attrs}><Year>{d.year}</Year><Month>{d.month:02d}</Month>"
        f"<Day>{d.day:02d}</Day></{tag}>"
    )


def deletion_xml(pmids: Sequence[int]) -> str:
    """A ``DeleteCitation`` block naming ``pmids`` (empty string for none)."""
    if not pmids:
        return ""
    inner = "".join(f'<PMID Version="1">{p}</PMID>' for p in pmids)
    return f"<DeleteCitation>{inner}</DeleteCitation>\n"


def document(parts: Iterable[str], *, doctype: bool = True) -> str:
    """A ``PubmedArticleSet`` document of ``parts`` (elements as text, each ending a line)."""
    head = HEADER if doctype else '<?xml version="1.0" encoding="UTF-8"?>\n<PubmedArticleSet>\n'
    return head + "".join(parts) + FOOTER


def article_xml(
    pmid: int,
    *,
    edat: dt.date,
    mdat: dt.date | None = None,
    title: str | None = None,
    abstract: str | None = None,
    version: int = 1,
    book: bool = False,
    refs: Sequence[int] = (),
    mesh: Sequence[tuple[str, str, bool]] = (),
    author: tuple[str, str, str] = ("Tester", "Ada", "A"),
) -> bytes:
    """A small but complete ``PubmedArticle`` (or ``PubmedBookArticle``) element.

    Args:
        pmid: The record's PMID.
        edat: Its entrez (and publication) date.
        mdat: Its revision date (default ``edat``).
        title: Article title (default a numbered one); escaped here.
        abstract: Abstract text (default a numbered one); escaped here.
        version: The PMID's ``Version``.
        book: A ``PubmedBookArticle`` instead of a journal article.
        refs: PMIDs of its ``ReferenceList`` (journal articles).
        mesh: ``(descriptor, UI, major)`` of its MeSH headings (journal articles).
        author: ``(last name, fore name, initials)`` of its one author.

    Longer than the usual 80 lines: it is a template of one element, written out.
    """
    mdat = mdat or edat
    title = html.escape(title or default_title(pmid))
    abstract = html.escape(abstract or f"We report result {pmid}. Methods were emulated.")
    history = (
        "<History>"
        + date_xml("PubMedPubDate", edat, ' PubStatus="entrez"')
        + date_xml("PubMedPubDate", edat, ' PubStatus="pubmed"')
        + date_xml("PubMedPubDate", mdat, ' PubStatus="medline"')
        + "</History>"
    )
    last, fore, initials = (html.escape(a) for a in author)
    mesh_list = ref_list = ""
    if mesh:
        mesh_list = "<MeshHeadingList>" + "".join(
            f'<MeshHeading><DescriptorName UI="{ui}" MajorTopicYN="{"Y" if major else "N"}">'
            f"{html.escape(name)}</DescriptorName></MeshHeading>"
            for name, ui, major in mesh
        ) + "</MeshHeadingList>"
    if refs:
        ref_list = "<ReferenceList>" + "".join(
            '<Reference><Citation>c</Citation><ArticleIdList>'
            f'<ArticleId IdType="pubmed">{r}</ArticleId></ArticleIdList></Reference>'
            for r in refs
        ) + "</ReferenceList>"
    if book:
        body = (
            "<PubmedBookArticle><BookDocument>"
            f'<PMID Version="{version}">{pmid}</PMID>'
            "<ArticleIdList><ArticleId IdType=\"bookaccession\">NBK{pmid}</ArticleId>"
            "</ArticleIdList>"
            '<Book><Publisher><PublisherName>Emulator Press</PublisherName></Publisher>'
            f"<BookTitle book=\"emu\">Handbook of emulation {pmid}</BookTitle>"
            f"<PubDate><Year>{edat.year}</Year></PubDate></Book>"
            f"<ArticleTitle>{title}</ArticleTitle>"
            "<Language>eng</Language>"
            f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract>"
            "</BookDocument><PubmedBookData>"
            f"{history}<PublicationStatus>ppublish</PublicationStatus>"
            f'<ArticleIdList><ArticleId IdType="pubmed">{pmid}</ArticleId></ArticleIdList>'
            "</PubmedBookData></PubmedBookArticle>"
        )  # fmt: skip
    else:
        body = (
            '<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM">'
            f'<PMID Version="{version}">{pmid}</PMID>'
            + date_xml("DateRevised", mdat)
            + '<Article PubModel="Print"><Journal>'
            '<ISSN IssnType="Print">0000-0000</ISSN><JournalIssue CitedMedium="Print">'
            f"<Volume>1</Volume><PubDate><Year>{edat.year}</Year>"
            f"<Month>{edat.month:02d}</Month><Day>{edat.day:02d}</Day></PubDate>"
            "</JournalIssue><Title>Journal of Emulated Results</Title>"
            "<ISOAbbreviation>J Emul Res</ISOAbbreviation></Journal>"
            f"<ArticleTitle>{title}</ArticleTitle>"
            f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract>"
            '<AuthorList CompleteYN="Y"><Author ValidYN="Y">'
            f"<LastName>{last}</LastName><ForeName>{fore}</ForeName><Initials>{initials}</Initials>"
            "</Author></AuthorList>"
            "<Language>eng</Language><PublicationTypeList>"
            '<PublicationType UI="D016428">Journal Article</PublicationType>'
            f"</PublicationTypeList></Article>{mesh_list}</MedlineCitation><PubmedData>"
            f"{history}<PublicationStatus>ppublish</PublicationStatus>"
            f'<ArticleIdList><ArticleId IdType="pubmed">{pmid}</ArticleId></ArticleIdList>'
            f"{ref_list}</PubmedData></PubmedArticle>"
        )
    return body.encode()


def default_title(pmid: int) -> str:
    """The title :func:`article_xml` gives a record without one."""
    return f"Emulated finding number {pmid} on cell signalling"


def gz(data: bytes) -> bytes:
    """Gzip ``data`` reproducibly (mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as fh:
        fh.write(data)
    return buf.getvalue()


def pubmed_set(elements: Iterable[bytes], deletions: Iterable[int] = ()) -> bytes:
    """A ``PubmedArticleSet`` document (bytes) of the given elements and deleted PMIDs."""
    return (
        b'<?xml version="1.0" ?>\n'
        + DOCTYPE.encode()
        + b"\n<PubmedArticleSet>\n"
        + b"\n".join(elements)
        + b"\n"
        + deletion_xml(list(deletions)).encode()
        + b"</PubmedArticleSet>\n"
    )
