"""What a result list shows of each article beyond its score: authors, an abstract
snippet with the query's terms highlighted, MeSH terms, publication types, DOI, links,
and whether it was retracted.

:func:`with_details` reads these columns for the final hits only (one query, never for
every candidate) and returns the hits with the fields filled in. Snippets are built by
:mod:`ranking.snippets`. The store knows a retraction from the record itself (publication
type ``Retracted Publication`` or a ``CommentsCorrections RefType="RetractionIn"``: the
``is_retracted`` column); search leaves retracted articles out unless asked.

Example:
    >>> hits = with_details(engine, hits, "malaria vaccine")  # doctest: +SKIP
    >>> hits[0].authors, hits[0].snippet.text                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import enum
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.timeutil import as_date
from ranking.snippets import highlight_spans, highlight_terms, snippet

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ranking.search import Hit

__all__ = [
    "AUTHORS_SHOWN", "Kind", "author_names", "doi_url", "links", "one_line", "published_parts",
    "published_text", "pubmed_url", "with_details",
]  # fmt: skip

#: Authors named per result; the rest are counted (``author_count``), as "et al.".
AUTHORS_SHOWN = 6

def one_line(value: Any) -> str:
    """A stored value as one line of text (runs of white space, line breaks, one blank)."""
    return re.sub(r"\s+", " ", str(value or "")).strip()


class Kind(enum.Enum):
    """What a record is, as a reference: a search result says it (``kind``), an export's
    RIS ``TY`` and BibTeX entry type follow it.

    A PubMed Bookshelf record (``PubmedBookArticle``, stored with ``is_book``) keeps its
    book's title as ``journal`` (:func:`ingest.fields`): one whose own title is another
    is a chapter of that book (a GeneReviews chapter), else it is the whole book.
    """

    ARTICLE = "article"
    CHAPTER = "chapter"
    BOOK = "book"

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Kind:
        """The kind of a row holding ``is_book``, ``journal`` and ``title``."""
        if not row.get("is_book"):
            return cls.ARTICLE
        book = one_line(row.get("journal"))
        return cls.CHAPTER if book and one_line(row.get("title")) != book else cls.BOOK


_COLUMNS = (
    articles.c.pmid,
    articles.c.is_book,
    articles.c.abstract,
    articles.c.authors,
    articles.c.mesh,
    articles.c.publication_types,
    articles.c.doi,
    articles.c.is_retracted,
)


def pubmed_url(pmid: int) -> str:
    """The PubMed page of an article."""
    return f"https://pubmed.ncbi.nlm.nih.gov/{int(pmid)}/"


def doi_url(doi: str | None) -> str | None:
    """The doi.org resolver link of a DOI (percent-encoded), or ``None``."""
    doi = (doi or "").strip()
    if not doi:
        return None
    return "https://doi.org/" + urllib.parse.quote(doi, safe="/()[];:,")


def links(pmid: int, doi: str | None) -> dict[str, str | None]:
    """``{"pubmed": url, "doi": url or None}``."""
    return {"pubmed": pubmed_url(pmid), "doi": doi_url(doi)}


def author_names(authors: Sequence[Any] | None) -> list[str]:
    """Display names (``Last FM`` or a collective's name) of a stored author list."""
    out = []
    for a in authors or ():
        if not isinstance(a, Mapping):
            continue
        name = (
            a.get("name")
            or a.get("collective_name")
            or " ".join(
                p for p in (a.get("last_name"), a.get("initials") or a.get("fore_name")) if p
            )
        )
        if name:
            out.append(str(name))
    return out


def _mesh_names(mesh: Sequence[Any] | None) -> tuple[str, ...]:
    """Descriptors, major topics first (each group in record order)."""
    items = [m for m in mesh or () if isinstance(m, Mapping) and m.get("descriptor")]
    items.sort(key=lambda m: not m.get("major"))
    return tuple(str(m["descriptor"]) for m in items)


def _rows(engine: Engine, pmids: Sequence[int]) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    with engine.connect() as conn:
        for start in range(0, len(pmids), db.IN_CHUNK):
            chunk = list(pmids[start : start + db.IN_CHUNK])
            for r in conn.execute(select(*_COLUMNS).where(articles.c.pmid.in_(chunk))).mappings():
                rows[int(r["pmid"])] = dict(r)
    return rows


def with_details(engine: Engine, hits: Sequence[Hit], query: str) -> list[Hit]:
    """``hits`` with authors, snippet, MeSH, publication
    types, DOI and the retracted flag filled in from the store.

    The snippet and the title highlight the terms of :func:`ranking.snippets.highlight_terms`
    (the hit's matched BM25 terms, else the query's terms; ``query`` empty: none).
    """
    from ranking.lexical import query_phrases

    rows = _rows(engine, [h.pmid for h in hits])
    phrases = query_phrases(query) if query else ()
    out = []
    for hit in hits:
        row = rows.get(hit.pmid)
        if row is None:
            out.append(hit)
            continue
        terms = highlight_terms(hit.explanation, query)
        names = author_names(row["authors"])
        out.append(
            dataclasses.replace(
                hit,
                authors=tuple(names[:AUTHORS_SHOWN]),
                author_count=len(names),
                snippet=snippet(row["abstract"] or "", terms, phrases=phrases),
                title_highlights=highlight_spans(hit.title, terms),
                mesh=_mesh_names(row["mesh"]),
                publication_types=tuple(str(t) for t in row["publication_types"] or ()),
                doi=row["doi"],
                retracted=bool(row["is_retracted"]),
                kind=Kind.of({"is_book": row["is_book"], "journal": hit.journal,
                              "title": hit.title}).value,
            )
        )
    return out


def published_parts(row: Mapping[str, Any]) -> tuple[int, int | None, int | None] | None:
    """When an article was published, as precisely as PubMed says: ``(year, month, day)``
    with the parts it does not give as ``None``. Its electronic date (``article_date``),
    else its issue date (``pub_year``, ``pub_month``, ``pub_day``), else its
    ``best_date`` (the entrez date); ``None`` without any. ``best_date`` itself is the
    first day such a date can mean (recency, sorting): a year-only ``2019`` is not
    shown as ``2019-01-01``."""
    year = row.get("pub_year")
    if not row.get("article_date") and year:
        month, day = row.get("pub_month"), row.get("pub_day")
        return int(year), int(month) if month else None, int(day) if month and day else None
    day_of = as_date(row.get("article_date") or row.get("best_date"))
    return None if day_of is None else (day_of.year, day_of.month, day_of.day)


def published_text(row: Mapping[str, Any]) -> str | None:
    """:func:`published_parts` as ISO text: ``2019``, ``2019-11`` or ``2019-11-20``."""
    parts = published_parts(row)
    if parts is None:
        return None
    year, month, day = parts
    return f"{year:04d}" + (f"-{month:02d}" if month else "") + (f"-{day:02d}" if day else "")
