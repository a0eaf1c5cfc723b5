"""The rows the store writes: an article from a record, a tombstone, a quarantine entry.

Everything the store derives from one record alone — its content hash, the article
columns (with the JSON columns already serialised), its MeSH and publication-type terms
and its references — is computed once by :func:`prepare` into a :class:`PreparedRecord`.
That can run in a parse worker process (:mod:`ingest.parallel`), so the writer only
decides and writes.

One JSON serialisation per record: the record without its source is dumped once
(compact, ``ensure_ascii=False``: the text :func:`content_hash` defines, written by
msgspec's encoder straight from the dataclasses, several times faster than building a
dict for ``json.dumps``); its SHA-1 is the content hash, and the ``record``, ``mesh``
and ``publication_types`` columns are cut from that same text (``authors``, where each
author gains its display ``name``, is encoded apart by the same encoder). In serialised
JSON a quote inside a string is always escaped, so a top-level key such as ``,"mesh":``
cannot occur inside a value, which makes the cuts exact (the tests decode every column
and compare).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from typing import Any, NamedTuple

import msgspec

from ingest.records import Author, Deletion, QuarantineEntry, Record, SourceRef

__all__ = [
    "ARTICLE_COLUMNS",
    "JSON_COLUMNS",
    "PreparedRecord",
    "StoreItem",
    "article_row",
    "content_hash",
    "prepare",
    "prepare_item",
    "quarantine_row",
    "tombstone_row",
]

#: Every column of ``articles`` the store writes, in one fixed order.
ARTICLE_COLUMNS = (
    "pmid version date_revised source_sequence source_time source_kind source_location "
    "source_position title vernacular_title abstract journal pub_year pub_month pub_day "
    "pub_date_raw article_date entrez_date best_date language doi pmcid is_retracted is_book "
    "is_deleted deleted_at has_abstract text_hash content_hash authors mesh publication_types "
    "record cited_by_in_corpus ingested_at updated_at"
).split()
#: Columns whose values in the rows built here are serialised JSON text.
JSON_COLUMNS = frozenset({"authors", "mesh", "publication_types", "record"})
#: The columns of :attr:`PreparedRecord.values`: those a record alone determines.
PREPARED_COLUMNS = tuple(
    c for c in ARTICLE_COLUMNS if c not in ("source_position", "ingested_at", "updated_at")
)
_TERM_MAX = 255
_encode = msgspec.json.Encoder().encode


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
            ``source_position``, ``ingested_at`` and ``updated_at``; JSON columns as
            text); :attr:`row` is the same as a dict.
        terms: ``(kind, term, major)`` of its MeSH descriptors and publication types.
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


def _between(text: str, key: str, next_key: str) -> str:
    """The serialised value of top-level ``key`` (followed by ``next_key``) in ``text``."""
    start = text.index(f',"{key}":') + len(key) + 4
    return text[start : text.index(f',"{next_key}":', start)]


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
    text = body.decode()
    abstract = rec.abstract
    pd = rec.pub_date
    src = rec.source
    title = rec.title
    lang = rec.language
    pmid = rec.pmid
    values = (  # the order of PREPARED_COLUMNS (checked below)
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
        rec.article_date,
        rec.entrez_date,
        rec.best_date,
        lang[:8] if lang else None,
        rec.doi,
        rec.pmcid,
        bool(rec.is_retracted),
        bool(rec.is_book),
        False,  # is_deleted
        None,  # deleted_at
        bool(abstract.strip()),
        hashlib.sha1(f"{title}\n{abstract}".encode()).hexdigest(),
        chash,
        _authors_json(rec.authors),
        _between(text, "mesh", "keywords"),
        _between(text, "publication_types", "languages"),
        f'{text[:-1]},"source":{_source_json(src)}}}',
        0,  # cited_by_in_corpus
    )  # fmt: skip
    terms: dict[tuple[str, str], bool] = {}
    for m in rec.mesh:
        key = ("mesh", m.descriptor[:_TERM_MAX])
        terms[key] = terms.get(key, False) or m.major
    for pt in rec.publication_types:
        terms.setdefault(("ptype", pt[:_TERM_MAX]), False)
    return PreparedRecord(
        pmid, rec.version, rec.date_revised, src, chash, values,
        tuple((k, t, major) for (k, t), major in terms.items()),
        tuple(sorted({c for c in rec.references if c != pmid})),
    )  # fmt: skip


#: The columns :func:`prepare` fills, in its order (must be :data:`PREPARED_COLUMNS`).
_PREPARE_ORDER = (
    "pmid version date_revised source_sequence source_time source_kind source_location title "
    "vernacular_title abstract journal pub_year pub_month pub_day pub_date_raw article_date "
    "entrez_date best_date language doi pmcid is_retracted is_book is_deleted deleted_at "
    "has_abstract text_hash content_hash authors mesh publication_types record "
    "cited_by_in_corpus"
).split()
if tuple(_PREPARE_ORDER) != PREPARED_COLUMNS:  # pragma: no cover - a column added or moved
    raise ImportError("ingest.rows.prepare does not fill the columns of PREPARED_COLUMNS")


def prepare_item(item: Any) -> Any:
    """:func:`prepare` for a record; every other item as it is."""
    return prepare(item) if type(item) is Record else item


def article_row(prep: PreparedRecord, position: int, now: dt.datetime) -> dict[str, Any]:
    """The full ``articles`` row of a prepared record stored at ``position`` of its source."""
    row = dict(zip(PREPARED_COLUMNS, prep.values, strict=True))
    row["source_position"] = position
    row["ingested_at"] = row["updated_at"] = now
    return row


def tombstone_row(pmid: int, src: SourceRef, position: int, now: dt.datetime) -> dict[str, Any]:
    """A full row for a deleted PMID (only the deletion columns overwrite a stored row)."""
    return {
        "pmid": pmid,
        "version": 0,
        "date_revised": None,
        "source_sequence": src.sequence,
        "source_time": src.fetched_at.timestamp(),
        "source_kind": src.kind,
        "source_location": src.location,
        "source_position": position,
        "title": "",
        "vernacular_title": None,
        "abstract": "",
        "journal": None,
        "pub_year": None,
        "pub_month": None,
        "pub_day": None,
        "pub_date_raw": None,
        "article_date": None,
        "entrez_date": None,
        "best_date": None,
        "language": None,
        "doi": None,
        "pmcid": None,
        "is_retracted": False,
        "is_book": False,
        "is_deleted": True,
        "deleted_at": now,
        "has_abstract": False,
        "text_hash": "",
        "content_hash": "",
        "authors": "[]",
        "mesh": "[]",
        "publication_types": "[]",
        "record": "{}",
        "cited_by_in_corpus": 0,
        "ingested_at": now,
        "updated_at": now,
    }


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
