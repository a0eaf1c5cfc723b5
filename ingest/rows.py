"""The rows the store writes: an article from a record, a tombstone, a quarantine entry.

Everything the store derives from one record alone — its content hash, the article
columns (with the JSON columns already serialised), its MeSH and publication-type terms
and its references — is computed once by :func:`prepare` into a :class:`PreparedRecord`.
That can run in a parse worker process (:mod:`ingest.parallel`), so the writer only
decides and writes.

One JSON serialisation per record: the record without its source is dumped once
(compact, ``ensure_ascii=False``: the text :func:`content_hash` defines, written by
msgspec's encoder straight from the dataclasses, several times faster than building a
dict for ``json.dumps``); its SHA-1 is the content hash and the ``record`` column is
that text with the source added and without what other columns hold: the authors and
MeSH headings (they were half of its bytes: the row, its COPY and its TOAST entry
shrink), the title, and the text of the abstract's sections — each section keeps its
label, category and length, and :func:`abstract_sections` cuts the texts back out of the
``abstract`` column, which joins them (every abstract was stored twice). The ``mesh`` and
``publication_types`` columns are their fields encoded by the same encoder (the same
text as inside the hashed record), ``authors`` too, each author with its display
``name`` added. The tests decode every column and compare, and put the record back
together from them (rows written before this layout hold the authors, MeSH headings,
title and sections' texts in ``record`` too; nothing reads them from there but
:func:`abstract_sections`, which takes a section's text where it is stored).

The store's rows are tuples in the order of :data:`ARTICLE_COLUMNS`, built straight
from :attr:`PreparedRecord.values` (no mapping per row), which the bulk paths hand to
the driver as they are (:func:`litpulse.core.db.bulk_insert`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

from ingest.dates import period_end
from ingest.records import (
    AbstractSection,
    Author,
    Deletion,
    QuarantineEntry,
    Record,
    SourceRef,
)
from litpulse.core.widths import LANGUAGE_MAX, PMCID_MAX, TERM_MAX

__all__ = [
    "ARTICLE_COLUMNS",
    "COLUMN_INDEX",
    "JSON_COLUMNS",
    "PreparedRecord",
    "StoreItem",
    "abstract_sections",
    "article_row",
    "content_hash",
    "other_languages",
    "prepare",
    "prepare_item",
    "quarantine_row",
    "tombstone_row",
    "with_values",
]

#: The columns of :attr:`PreparedRecord.values`: those a record alone determines, in
#: the order :func:`prepare` fills them.
PREPARED_COLUMNS = tuple(
    "pmid version date_revised source_sequence source_time source_kind source_location "
    "title vernacular_title abstract journal pub_year pub_month pub_day pub_date_raw "
    "pub_period_end article_date entrez_date best_date language doi pmcid is_retracted "
    "is_book is_deleted deleted_at has_abstract text_hash content_hash authors mesh "
    "publication_types record cited_by_in_corpus".split()
)
#: Every column of ``articles`` the store writes, in the order of its rows
#: (:func:`article_row`, :func:`tombstone_row`): the prepared ones, then the five a
#: record alone does not fix (``run_id``: the ingest run that writes the row;
#: ``first_ingested_at`` is written by an insert only: no update list of the store
#: names it).
ARTICLE_COLUMNS = (*PREPARED_COLUMNS, "source_position", "ingested_at", "first_ingested_at",
                   "updated_at", "run_id")  # fmt: skip
#: Columns whose values in the rows built here are serialised JSON text.
JSON_COLUMNS = frozenset({"authors", "mesh", "publication_types", "record"})
#: Where each column sits in a row of :data:`ARTICLE_COLUMNS`.
COLUMN_INDEX = {c: i for i, c in enumerate(ARTICLE_COLUMNS)}
_encode = msgspec.json.Encoder().encode
_new_prepared = tuple.__new__


class PreparedRecord(NamedTuple):
    """A record with everything the store derives from it alone (see the module doc).

    A named tuple of plain values, not a dataclass or a dict: thousands of these cross a
    process boundary per second, and a tuple pickles and unpickles fastest.

    Attributes:
        pmid: The PMID.
        version: ``Version`` of the PMID.
        date_revised: ``DateRevised``.
        source: Where the record came from.
        content_hash: SHA-1 of the record without its source.
        values: The values of :data:`PREPARED_COLUMNS` (the article columns except
            the five the store fixes: ``source_position``, the three times and
            ``run_id``; JSON columns as text); :attr:`row` is the same as a dict.
        terms: ``(kind, term, major)`` of its MeSH descriptors, publication types and
            (``lang``, lower case) its languages after the first.
        references: Cited PMIDs, sorted, without itself.
    """

    pmid: int
    version: int
    date_revised: dt.date | None
    source: SourceRef
    content_hash: str
    values: tuple[Any, ...]
    terms: tuple[tuple[str, str, bool], ...]
    references: tuple[int, ...]

    @property
    def row(self) -> dict[str, Any]:
        """The article columns of :attr:`values` by name."""
        return dict(zip(PREPARED_COLUMNS, self.values, strict=True))


#: What :meth:`ingest.store.Store.apply` takes (a plain :class:`Record` is prepared there).
StoreItem = PreparedRecord | Record | Deletion | QuarantineEntry


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def content_hash(plain: dict[str, Any]) -> str:
    """SHA-1 of the record without its source (field order is fixed by the dataclass).

    The definition of the content hash, from :meth:`Record.to_dict`; :func:`prepare`
    computes the same from the dataclass directly (the tests hold the two together).
    """
    body = {k: v for k, v in plain.items() if k != "source"}
    return hashlib.sha1(_dumps(body).encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _source_json(src: SourceRef) -> str:
    return _dumps({"kind": src.kind, "location": src.location, "sequence": src.sequence,
                   "fetched_at": src.fetched_at.isoformat()})  # fmt: skip


class _SectionRow(msgspec.Struct):
    """One abstract section in the ``record`` column: its text is in the ``abstract``
    column (:func:`abstract_sections`)."""

    length: int
    label: str | None
    category: str | None


def _sections_json(sections: tuple[AbstractSection, ...]) -> bytes:
    """The ``abstract_sections`` member of the ``record`` column (with its leading comma)."""
    rows = [_SectionRow(len(s.text), s.label, s.category) for s in sections]
    return b',"abstract_sections":' + _encode(rows)


def abstract_sections(stored: Iterable[Any], abstract: str) -> list[dict[str, Any]]:
    """The sections of an article's abstract, as ``Record.to_dict()`` has them, from the
    ``record`` column's ``abstract_sections`` and the ``abstract`` column: each section's
    text is cut out of the abstract (``LABEL: text`` paragraphs, one a line: the
    ``Record.abstract`` that wrote it) by its length; a row written before this layout
    holds the text itself."""
    out: list[dict[str, Any]] = []
    at = 0
    for s in stored:
        if "text" in s:  # an older row
            out.append(dict(s))
            continue
        label = s.get("label")
        if label:
            at += len(label) + 2  # "LABEL: "
        end = at + s["length"]
        out.append({"text": abstract[at:end], "label": label, "category": s.get("category")})
        at = end + 1  # the line break
    return out


class _AuthorRow(msgspec.Struct):
    """One author of the ``authors`` column: the record's fields, then the display name."""

    last_name: str | None
    fore_name: str | None
    initials: str | None
    collective_name: str | None
    affiliations: tuple[str, ...]
    orcid: str | None
    name: str


if _AuthorRow.__struct_fields__ != (*Author.__dataclass_fields__, "name"):  # pragma: no cover
    raise ImportError("ingest.rows._AuthorRow does not follow ingest.records.Author")


def _authors_json(authors: tuple[Author, ...]) -> str:
    """The ``authors`` column: the record's authors, each with its display ``name`` last."""
    if not authors:
        return "[]"
    return _encode(
        [
            _AuthorRow(
                a.last_name,
                a.fore_name,
                a.initials,
                a.collective_name,
                a.affiliations,
                a.orcid,
                a.display_name,
            )
            for a in authors
        ]  # fmt: skip
    ).decode()


def _record_json(rec: Record) -> bytes:
    """The compact JSON of ``rec`` without its source: what :func:`content_hash` hashes.

    msgspec encodes the frozen dataclasses field by field in declaration order (the
    order of :meth:`Record.to_dict`), dates as ISO text, tuples as arrays, and escapes
    strings exactly as ``json.dumps(..., ensure_ascii=False)`` (the tests compare the
    two over every character). The source (``"source":{...}``, after ``pmid``,
    ``version`` and ``title``) is cut out: its ``fetched_at`` is written differently
    and the hash leaves it out anyway.
    """
    full = _encode(rec)
    start = full.index(b',"source":')  # title's quotes are escaped: the first is the key
    return full[:start] + full[full.index(b',"abstract_sections":', start) :]


def prepare(rec: Record) -> PreparedRecord:
    """Everything the store needs of ``rec``, from one JSON serialisation."""
    body = _record_json(rec)
    chash = hashlib.sha1(body).hexdigest()
    # the record column leaves out what other columns hold: the title and the sections'
    # texts, the authors and MeSH headings (keys in field order, and no key can start
    # inside a string: its quotes are \")
    head = body.index(b',"title":')
    tail = body.index(b',"vernacular_title":', head)
    cut = body.index(b',"authors":', tail)
    mesh = body.index(b',"mesh":', cut)
    rest = body.index(b',"keywords":', mesh)
    sections = _sections_json(rec.abstract_sections)
    text = (body[:head] + sections + body[tail:cut] + body[rest:]).decode()
    abstract = rec.abstract
    pd = rec.pub_date
    src = rec.source
    title = rec.title
    lang = rec.language
    pmid = rec.pmid
    values = (  # the order of PREPARED_COLUMNS
        pmid,
        rec.version,
        rec.date_revised,
        src.sequence,
        src.fetched_at.timestamp(),
        src.kind,
        src.location,
        title,
        rec.vernacular_title,
        abstract,
        rec.journal,
        pd.year,
        pd.month,
        pd.day,
        pd.raw or None,
        period_end(pd),
        rec.article_date,
        rec.entrez_date,
        rec.best_date,
        lang[:LANGUAGE_MAX] if lang else None,
        rec.doi,
        _pmcid(rec.pmcid),
        bool(rec.is_retracted),
        bool(rec.is_book),
        False,  # is_deleted
        None,  # deleted_at
        bool(abstract.strip()),
        hashlib.sha1(f"{title}\n{abstract}".encode()).hexdigest(),
        chash,
        _authors_json(rec.authors),
        body[mesh + 8 : rest].decode(),  # the MeSH headings' text within the hashed record
        _encode(rec.publication_types).decode(),
        f'{text[:-1]},"source":{_source_json(src)}}}',
        0,  # cited_by_in_corpus
    )  # fmt: skip
    terms: dict[tuple[str, str], bool] = {}
    for m in rec.mesh:
        key = ("mesh", m.descriptor[:TERM_MAX])
        terms[key] = terms.get(key, False) or m.major
    for pt in rec.publication_types:
        terms.setdefault(("ptype", pt[:TERM_MAX]), False)
    if len(rec.languages) > 1:  # a bilingual article: its other languages are terms
        for other in other_languages(lang, rec.languages):
            terms.setdefault(("lang", other), False)
    return _new_prepared(PreparedRecord, (  # the named tuple's own __new__ is Python code
        pmid, rec.version, rec.date_revised, src, chash, values,
        tuple((k, t, major) for (k, t), major in terms.items()),
        tuple(sorted({c for c in rec.references if c != pmid})),
    ))  # fmt: skip


def _pmcid(value: str | None) -> str | None:
    """The ``pmcid`` column's value: a text longer than the column is no PMC id (the
    record keeps it); stored as it is it would fail the whole batch on PostgreSQL."""
    return value if value is None or len(value) <= PMCID_MAX else None


def other_languages(first: str | None, languages: Iterable[str]) -> list[str]:
    """The ``lang`` terms of an article: the ``language`` column holds its first
    <Language>; the others, of a bilingual article, are terms, so a language filter finds
    it by any of them (lower case, at most 8 characters, the first left out)."""
    head = (first or "")[:LANGUAGE_MAX].lower()
    out: list[str] = []
    for code in list(languages)[1:]:
        other = code.strip().lower()[:LANGUAGE_MAX]
        if other and other != head and other not in out:
            out.append(other)
    return out


def prepare_item(item: Any) -> Any:
    """:func:`prepare` for a record; every other item as it is."""
    return prepare(item) if type(item) is Record else item


def article_row(
    prep: PreparedRecord,
    position: int,
    now: dt.datetime,
    source: SourceRef | None = None,
    run_id: int | None = None,
) -> tuple[Any, ...]:
    """The full ``articles`` row (values of :data:`ARTICLE_COLUMNS`) of a prepared record
    stored at ``position`` of its source (``source``: as the store ordered it, when that
    is not the record's own; its JSON keeps the source as read) by the ingest run
    ``run_id``."""
    if source is None or source is prep.source:
        return prep.values + (position, now, now, now, run_id)
    v = prep.values
    return (*v[:3], source.sequence, source.fetched_at.timestamp(), *v[5:], position, now, now,
            now, run_id)  # fmt: skip


def tombstone_row(
    pmid: int, src: SourceRef, position: int, now: dt.datetime, run_id: int | None = None
) -> tuple[Any, ...]:
    """A full row for a deleted PMID (only the deletion columns overwrite a stored row),
    written by the ingest run ``run_id``."""
    return (
        pmid,
        0,  # version
        None,  # date_revised
        src.sequence,
        src.fetched_at.timestamp(),
        src.kind,
        src.location,
        "",  # title
        None,  # vernacular_title
        "",  # abstract
        None,  # journal
        None,  # pub_year
        None,  # pub_month
        None,  # pub_day
        None,  # pub_date_raw
        None,  # pub_period_end
        None,  # article_date
        None,  # entrez_date
        None,  # best_date
        None,  # language
        None,  # doi
        None,  # pmcid
        False,  # is_retracted
        False,  # is_book
        True,  # is_deleted
        now,  # deleted_at
        False,  # has_abstract
        "",  # text_hash
        "",  # content_hash
        "[]",  # authors
        "[]",  # mesh
        "[]",  # publication_types
        "{}",  # record
        0,  # cited_by_in_corpus
        position,  # source_position
        now,  # ingested_at
        None,  # first_ingested_at: no record of it stored yet (set when one lifts it)
        now,  # updated_at
        run_id,  # run_id
    )


def with_values(row: tuple[Any, ...], changes: dict[str, Any]) -> tuple[Any, ...]:
    """``row`` (of :data:`ARTICLE_COLUMNS`) with the columns of ``changes`` replaced."""
    out = list(row)
    for name, value in changes.items():
        out[COLUMN_INDEX[name]] = value
    return tuple(out)


def quarantine_row(item: QuarantineEntry, run_id: int | None, now: dt.datetime) -> dict[str, Any]:
    return {
        "digest": item.digest,
        "pmid": item.pmid,
        "reason": item.reason,
        "source_kind": item.source.kind,
        "source_location": item.source.location,
        "line": item.line,
        "raw_xml": item.raw_xml,
        "run_id": run_id,
        "created_at": now,
    }
