"""Typed, frozen records produced by the parser and consumed by the store.

A PubMed XML file yields three kinds of item, in file order:

* :class:`Record` — one ``PubmedArticle`` or ``PubmedBookArticle``;
* :class:`Deletion` — one PMID named in a ``DeleteCitation`` block;
* :class:`QuarantineEntry` — an element that could not be parsed, with its raw XML.

Every item carries a :class:`SourceRef` saying where it came from; the store uses
:meth:`SourceRef.order_key` to break ties between two records of the same PMID, version
and revision date (the later update file, or the later fetch, wins).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from litpulse.core.timeutil import utcnow

__all__ = [
    "ICITE_REASON",
    "AbstractSection",
    "Author",
    "Deletion",
    "Item",
    "MeshHeading",
    "NLM_FILE_RE",
    "PartialDate",
    "QuarantineEntry",
    "Record",
    "SourceRef",
    "baseline_frozen_by",
    "nlm_file_key",
    "nlm_file_name",
    "nlm_file_order",
    "nlm_sequence",
]

SourceKind = Literal["file", "updatefile", "baseline", "eutils", "generated"]


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from.

    Attributes:
        kind: ``file`` (local XML), ``updatefile``/``baseline`` (NLM files),
            ``eutils`` (EFetch), ``generated`` (test data).
        location: File path or name, or the request it came from.
        sequence: Of an NLM baseline/update file, its year and number
            (:func:`nlm_sequence`: ``pubmed26n1280`` → 26_000_001_280), else 0.
        fetched_at: When the bytes were read (UTC).
    """

    kind: SourceKind
    location: str
    sequence: int = 0
    fetched_at: dt.datetime = field(default_factory=utcnow)

    def order_key(self) -> tuple[int, float]:
        """Later sources sort higher: file number first, then fetch time."""
        return (self.sequence, self.fetched_at.timestamp())

    @property
    def numbered(self) -> bool:
        """A numbered NLM file (its number fixes its content)."""
        return self.sequence > 0


#: An NLM file's number has at most 9 digits (``pubmedYYnNNNN``, 4 in use).
NLM_YEAR_FACTOR = 10**9
#: The whole name of an NLM file: ``pubmedYYnNNNN.xml.gz`` as NLM publishes it, or the
#: same unpacked (``.xml``). A name that only begins like one (``pubmed26n1320_part2.xml``:
#: a file split in two, an excerpt, a hand-fixed copy) is no NLM file.
NLM_FILE_RE = re.compile(r"pubmed([0-9]{2})n([0-9]{4,9})\.xml(?:\.gz)?", re.IGNORECASE)


def nlm_file_order(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(year, number)`` of an NLM file (``/x/pubmed26n1335.xml.gz`` → ``(26, 1335)``),
    ``None`` for any other name (the whole name must be :data:`NLM_FILE_RE`'s: each
    part of a split ``pubmed26n1320_part1.xml`` is a plain file of its own)."""
    m = NLM_FILE_RE.fullmatch(os.path.basename(os.fspath(path)))
    return (int(m.group(1)), int(m.group(2))) if m else None


def baseline_frozen_by(year: int) -> dt.datetime:
    """How far PubMed's annual baseline ``pubmed{year:02}`` is taken to hold what PubMed
    held, early enough: NLM builds it late in the year before and releases it in December,
    so it holds every record of 1 November of that year (UTC). A run that applied
    baseline files and no update file reaches this far, not the day it ran
    (:func:`litpulse.pipeline.planning.last_watermark`): the E-utilities go on from here."""
    return dt.datetime(2000 + year - 1, 11, 1, tzinfo=dt.UTC)


def nlm_file_name(year: int, number: int) -> str:
    """NLM's name of file ``number`` of ``year``'s numbering: ``pubmed26n0002.xml.gz``."""
    return f"pubmed{year:02d}n{number:04d}.xml.gz"


def nlm_file_key(name: str | os.PathLike[str]) -> str:
    """How a store knows a file by name: NLM's all-lower-case spelling of an NLM file's
    name, however a listing or a copy spells it (``PubMed26N0002.xml.gz`` →
    ``pubmed26n0002.xml.gz``), any other name as it is.

    Example:
        >>> nlm_file_key("PubMed26N0002.xml.gz"), nlm_file_key("notes.xml")
        ('pubmed26n0002.xml.gz', 'notes.xml')
    """
    order = nlm_file_order(name)
    return nlm_file_name(*order) if order is not None else os.fspath(name)


def nlm_sequence(year: int, number: int) -> int:
    """The order of NLM file ``pubmed{year:02}n{number:04}``: year first, then number.

    NLM restarts its numbering with every annual baseline (the 2026 update files begin
    near ``pubmed26n1335`` while the 2025 ones ran past ``pubmed25n1500``): a store that
    goes on from last year's update files to this year's must order them by year first,
    or a later file's deletions and corrections lose to an earlier file's records.
    """
    return year * NLM_YEAR_FACTOR + number


@dataclass(frozen=True, slots=True)
class PartialDate:
    """A publication date as precise as PubMed knows it.

    ``raw`` keeps the original text (``"1998 Dec-1999 Jan"``, ``"Spring 2001"``); year,
    month and day hold the start of the period, ``None`` where unknown; ``season`` keeps
    a season name when the source gave one instead of a month.
    """

    year: int | None = None
    month: int | None = None
    day: int | None = None
    raw: str = ""
    season: str | None = None

    def as_date(self) -> dt.date | None:
        """The earliest day the date can mean, or ``None`` without a year."""
        if self.year is None:
            return None
        return dt.date(self.year, self.month or 1, self.day or 1)


@dataclass(frozen=True, slots=True)
class Author:
    """One author: a person (names) or a group (``collective_name``)."""

    last_name: str | None = None
    fore_name: str | None = None
    initials: str | None = None
    collective_name: str | None = None
    affiliations: tuple[str, ...] = ()
    orcid: str | None = None

    @property
    def display_name(self) -> str:
        """``Last FM`` for a person, the group name for a collective."""
        if self.collective_name:
            return self.collective_name
        last, first = self.last_name, self.initials or self.fore_name
        return f"{last} {first}" if last and first else last or first or ""


@dataclass(frozen=True, slots=True)
class MeshHeading:
    """A MeSH descriptor with its qualifiers; ``major`` if it or a qualifier is major."""

    descriptor: str
    ui: str | None = None
    major: bool = False
    qualifiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AbstractSection:
    """One ``AbstractText`` paragraph; ``label`` is None for unlabelled text."""

    text: str
    label: str | None = None
    category: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """One parsed PubMed record (journal article or book/chapter)."""

    pmid: int
    version: int
    title: str
    source: SourceRef
    abstract_sections: tuple[AbstractSection, ...] = ()
    vernacular_title: str | None = None
    journal: str | None = None
    journal_iso: str | None = None
    volume: str | None = None
    issue: str | None = None
    pages: str | None = None
    pub_date: PartialDate = PartialDate()
    article_date: dt.date | None = None
    entrez_date: dt.date | None = None
    pubmed_date: dt.date | None = None
    date_completed: dt.date | None = None
    date_revised: dt.date | None = None
    authors: tuple[Author, ...] = ()
    mesh: tuple[MeshHeading, ...] = ()
    keywords: tuple[str, ...] = ()
    publication_types: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    doi: str | None = None
    pmcid: str | None = None
    references: tuple[int, ...] = ()
    is_retracted: bool = False
    retraction_in: tuple[int, ...] = ()
    is_book: bool = False
    status: str | None = None

    @property
    def abstract(self) -> str:
        """The abstract as plain text; labelled sections as ``LABEL: text`` paragraphs."""
        return "\n".join(
            f"{s.label}: {s.text}" if s.label else s.text for s in self.abstract_sections
        )

    @property
    def language(self) -> str | None:
        """The first language code (``eng``), if any."""
        return self.languages[0] if self.languages else None

    @property
    def best_date(self) -> dt.date | None:
        """The date used for recency: electronic date, else publication date, else entrez."""
        return self.article_date or self.pub_date.as_date() or self.entrez_date

    def order_key(self) -> tuple[int, dt.date, tuple[int, float]]:
        """Newer records sort higher: Version, then DateRevised, then the source."""
        return (self.version, self.date_revised or dt.date.min, self.source.order_key())

    def text_hash(self) -> str:
        """SHA-1 of what gets embedded (title + abstract), to detect text changes."""
        return hashlib.sha1(f"{self.title}\n{self.abstract}".encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (dates as ISO strings)."""
        return _jsonable(asdict(self))


@dataclass(frozen=True, slots=True)
class Deletion:
    """A PMID withdrawn by NLM (``DeleteCitation``)."""

    pmid: int
    source: SourceRef


#: How the reason of every quarantine entry of iCite's data begins (an API record:
#: ``iCite record: …``; a snapshot row: ``iCite snapshot row: …``). A record or deletion
#: of the PMID stored later resolves the entries of its PubMed records, never these: the
#: article's revision says nothing of iCite's damaged record (:meth:`ingest.store.Store.
#: apply`).
ICITE_REASON = "iCite "


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """An element that could not be parsed, kept with its raw XML and the reason.

    Its raw text is storable: NUL is kept as the escape ``\\x00`` (PostgreSQL refuses NUL
    in text; a block of zeros in a damaged file would otherwise fail the batch that
    quarantines it, and with it the load, at the same place on every rerun).
    """

    reason: str
    raw_xml: str
    source: SourceRef
    pmid: int | None = None
    line: int | None = None
    #: What else tells this entry from another with the same raw text (hashed with it):
    #: empty for records (the same bad element, met again in any file, is quarantined
    #: once); an iCite snapshot row's file and line (each month's snapshot repeats a bad
    #: row, and each load must name its own file).
    key: str = ""

    def __post_init__(self) -> None:
        if "\x00" in self.raw_xml:
            object.__setattr__(self, "raw_xml", self.raw_xml.replace("\x00", "\\x00"))
        if "\x00" in self.reason:
            object.__setattr__(self, "reason", self.reason.replace("\x00", "\\x00"))

    @property
    def digest(self) -> str:
        """SHA-256 of the raw XML (and :attr:`key`): the same bad element is quarantined
        once."""
        text = f"{self.key}\n{self.raw_xml}" if self.key else self.raw_xml
        return hashlib.sha256(text.encode()).hexdigest()


Item = Record | Deletion | QuarantineEntry


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value
