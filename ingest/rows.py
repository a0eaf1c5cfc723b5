"""The rows the store writes: an article from a record, a tombstone, a quarantine entry.

Everything the store derives from one record alone — its plain-dict form, its content
hash, the article columns (with the JSON columns already serialised), its MeSH and
publication-type terms and its references — is computed once by :func:`prepare` into a
:class:`PreparedRecord`. That can run in a parse worker process
(:mod:`ingest.parallel`), so the writer only decides and writes.

One JSON serialisation per record: the record without its source is dumped once
(compact, ``ensure_ascii=False``); its SHA-1 is the content hash, and the ``record``,
``mesh``, ``publication_types`` and ``authors`` columns are cut from that same text
(``authors`` gains each author's display ``name``). In serialised JSON a quote inside a
string is always escaped, so a top-level key such as ``,"mesh":`` cannot occur inside a
value, which makes the cuts exact (the tests decode every column and compare).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import operator
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from ingest.records import Deletion, QuarantineEntry, Record, SourceRef

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
    "record_dict",
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
_pick_prepared = operator.itemgetter(*PREPARED_COLUMNS)

_RECORD_FIELDS = (
    "pmid", "version", "title", "source", "abstract_sections", "vernacular_title", "journal",
    "journal_iso", "volume", "issue", "pages", "pub_date", "article_date", "entrez_date",
    "pubmed_date", "date_completed", "date_revised", "authors", "mesh", "keywords",
    "publication_types", "languages", "doi", "pmcid", "references", "is_retracted",
    "retraction_in", "is_book", "status",
)  # fmt: skip
#: The explicit conversion below matches the dataclass (else the generic one is used).
_FAST = tuple(f.name for f in dataclasses.fields(Record)) == _RECORD_FIELDS
_PRIMITIVES = (str, int, float, bool, type(None))
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


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


def _iso(d: dt.date | None) -> str | None:
    return None if d is None else d.isoformat()


def record_dict(rec: Record) -> dict[str, Any]:
    """``rec.to_dict()`` (same keys in the same order), many times faster."""
    if not _FAST:  # pragma: no cover - only when Record gains or loses a field
        out: dict[str, Any] = _plain(rec)
        return out
    s, pd = rec.source, rec.pub_date
    return {
        "pmid": rec.pmid,
        "version": rec.version,
        "title": rec.title,
        "source": {
            "kind": s.kind,
            "location": s.location,
            "sequence": s.sequence,
            "fetched_at": s.fetched_at.isoformat(),
        },  # fmt: skip
        "abstract_sections": [
            {"text": a.text, "label": a.label, "category": a.category}
            for a in rec.abstract_sections
        ],
        "vernacular_title": rec.vernacular_title,
        "journal": rec.journal,
        "journal_iso": rec.journal_iso,
        "volume": rec.volume,
        "issue": rec.issue,
        "pages": rec.pages,
        "pub_date": {
            "year": pd.year,
            "month": pd.month,
            "day": pd.day,
            "raw": pd.raw,
            "season": pd.season,
        },  # fmt: skip
        "article_date": _iso(rec.article_date),
        "entrez_date": _iso(rec.entrez_date),
        "pubmed_date": _iso(rec.pubmed_date),
        "date_completed": _iso(rec.date_completed),
        "date_revised": _iso(rec.date_revised),
        "authors": [
            {
                "last_name": a.last_name,
                "fore_name": a.fore_name,
                "initials": a.initials,
                "collective_name": a.collective_name,
                "affiliations": list(a.affiliations),
                "orcid": a.orcid,
            }  # fmt: skip
            for a in rec.authors
        ],
        "mesh": [
            {
                "descriptor": m.descriptor,
                "ui": m.ui,
                "major": m.major,
                "qualifiers": list(m.qualifiers),
            }  # fmt: skip
            for m in rec.mesh
        ],
        "keywords": list(rec.keywords),
        "publication_types": list(rec.publication_types),
        "languages": list(rec.languages),
        "doi": rec.doi,
        "pmcid": rec.pmcid,
        "references": list(rec.references),
        "is_retracted": rec.is_retracted,
        "retraction_in": list(rec.retraction_in),
        "is_book": rec.is_book,
        "status": rec.status,
    }


def _plain(value: Any) -> Any:
    """Generic ``to_dict`` without deep copies (fallback of :func:`record_dict`)."""
    kind = type(value)
    if kind in _PRIMITIVES:
        return value
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    names = _FIELD_NAMES.get(kind)
    if names is None:
        if not dataclasses.is_dataclass(value):
            return {k: _plain(v) for k, v in value.items()} if isinstance(value, dict) else value
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    return {n: _plain(getattr(value, n)) for n in names}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def content_hash(plain: dict[str, Any]) -> str:
    """SHA-1 of the record without its source (field order is fixed by the dataclass)."""
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


def _authors_json(text: str, authors: tuple[Any, ...]) -> str:
    """The ``authors`` column: the record's authors, each with its display ``name`` last."""
    if not authors:
        return "[]"
    inner = _between(text, "authors", "mesh")[2:-2]  # without '[{' and '}]'
    parts = inner.split('},{"last_name":')
    if len(parts) != len(authors):  # pragma: no cover - guarded by the module doc's argument
        raise ValueError("cannot split the serialised authors")
    named = [
        f'{part},"name":{encode_basestring(a.display_name)}'
        for part, a in zip(parts, authors, strict=True)
    ]
    return "[{" + '},{"last_name":'.join(named) + "}]"


def prepare(rec: Record) -> PreparedRecord:
    """Everything the store needs of ``rec``, from one JSON serialisation."""
    plain = record_dict(rec)
    del plain["source"]
    text = _dumps(plain)
    chash = hashlib.sha1(text.encode()).hexdigest()
    abstract = rec.abstract
    pd = rec.pub_date
    src = rec.source
    row = {
        "pmid": rec.pmid,
        "version": rec.version,
        "date_revised": rec.date_revised,
        "source_sequence": src.sequence,
        "source_time": src.fetched_at.timestamp(),
        "source_kind": src.kind,
        "source_location": src.location,
        "title": rec.title,
        "vernacular_title": rec.vernacular_title,
        "abstract": abstract,
        "journal": rec.journal,
        "pub_year": pd.year,
        "pub_month": pd.month,
        "pub_day": pd.day,
        "pub_date_raw": pd.raw or None,
        "article_date": rec.article_date,
        "entrez_date": rec.entrez_date,
        "best_date": rec.best_date,
        "language": rec.language[:8] if rec.language else None,
        "doi": rec.doi,
        "pmcid": rec.pmcid,
        "is_retracted": bool(rec.is_retracted),
        "is_book": bool(rec.is_book),
        "is_deleted": False,
        "deleted_at": None,
        "has_abstract": bool(abstract.strip()),
        "text_hash": hashlib.sha1(f"{rec.title}\n{abstract}".encode()).hexdigest(),
        "content_hash": chash,
        "authors": _authors_json(text, rec.authors),
        "mesh": _between(text, "mesh", "keywords"),
        "publication_types": _between(text, "publication_types", "languages"),
        "record": f'{text[:-1]},"source":{_source_json(src)}}}',
        "cited_by_in_corpus": 0,
    }
    terms: dict[tuple[str, str], bool] = {}
    for m in rec.mesh:
        key = ("mesh", m.descriptor[:_TERM_MAX])
        terms[key] = terms.get(key, False) or m.major
    for pt in rec.publication_types:
        terms.setdefault(("ptype", pt[:_TERM_MAX]), False)
    pmid = rec.pmid
    return PreparedRecord(
        pmid, rec.version, rec.date_revised, src, chash, _pick_prepared(row),
        tuple((k, t, major) for (k, t), major in terms.items()),
        tuple(sorted({c for c in rec.references if c != pmid})),
    )  # fmt: skip


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
