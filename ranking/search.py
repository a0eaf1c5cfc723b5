"""Search the published index: embed, fetch neighbours, filter, re-rank, explain.

A query is embedded with the model version the published index was built with, the
``rerank_candidates`` nearest neighbours are fetched from FAISS, their rows are read from
the database in one query (filters applied in SQL), and the survivors are re-ranked by
:func:`ranking.scoring.score_article`. When the filters are selective the neighbour list
is widened ×4 (up to the whole index) until ``k`` articles survive or the index is
exhausted. Deleted articles never come back; retracted ones only on request.

Example:
    >>> hits = search(settings, "CRISPR off-target effects", k=5, since="2024-01-01",
    ...               mesh="Humans")                                  # doctest: +SKIP
    >>> hits[0].pmid, round(hits[0].score, 3), hits[0].explanation["text"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import and_, exists, func, select

from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import article_terms, articles
from litpulse.core.settings import Settings
from litpulse.core.timeutil import iso, parse_date
from ranking.scoring import ScoringOptions, score_article

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy import Engine

__all__ = [
    "MAX_QUERY_CHARS",
    "Hit",
    "NoIndexError",
    "SearchFilters",
    "SearchResult",
    "search",
    "run_search",
]

logger = logging.getLogger(__name__)

#: Longest query accepted, in characters.
MAX_QUERY_CHARS = 512
#: Factor by which the neighbour list grows while too few candidates pass the filters.
WIDEN_FACTOR = 4

_ROW_COLUMNS = (
    articles.c.pmid,
    articles.c.title,
    articles.c.journal,
    articles.c.pub_year,
    articles.c.best_date,
    articles.c.language,
    articles.c.has_abstract,
    articles.c.is_retracted,
    articles.c.relative_citation_ratio,
    articles.c.citations_per_year,
    articles.c.citation_count,
    articles.c.cited_by_in_corpus,
)


class NoIndexError(NotFoundError):
    """Nothing is published yet, so there is nothing to search."""


class SearchableIndex(Protocol):
    """What search needs of :class:`ranking.index_files.PublishedIndex`."""

    @property
    def id(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def size(self) -> int: ...

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Hit:
    """One search result with its score components and explanation."""

    pmid: int
    title: str
    score: float
    similarity: float
    recency: float
    citation: float
    journal: str | None = None
    pub_year: int | None = None
    best_date: dt.date | None = None
    explanation: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dates as ISO strings)."""
        return {
            "pmid": self.pmid,
            "title": self.title,
            "journal": self.journal,
            "pub_year": self.pub_year,
            "best_date": iso(self.best_date),
            "score": self.score,
            "similarity": self.similarity,
            "recency": self.recency,
            "citation": self.citation,
            "explanation": self.explanation,
        }


def _terms(name: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{name} must be text, got {item!r}")
        item = item.strip()
        if len(item) > 255:
            raise ConfigError(f"{name} is longer than 255 characters")
        if item:
            out.append(item)
    return tuple(out)


@dataclass(frozen=True)
class SearchFilters:
    """Which articles may be returned.

    Args:
        since: Earliest ``best_date`` (inclusive); articles without a date are then out.
        until: Latest ``best_date`` (inclusive).
        mesh: MeSH descriptors the article must all carry (case-insensitive).
        publication_type: Publication types it must all have (case-insensitive).
        language: Language code, e.g. ``eng`` (case-insensitive).
        has_abstract: ``True`` only with an abstract, ``False`` only without, ``None`` any.
        include_retracted: Also return retracted articles (flagged in the explanation).

    Raises:
        ConfigError: A malformed date, ``since`` after ``until`` or an over-long term.
    """

    since: dt.date | None = None
    until: dt.date | None = None
    mesh: tuple[str, ...] = ()
    publication_type: tuple[str, ...] = ()
    language: str | None = None
    has_abstract: bool | None = None
    include_retracted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "since", parse_date(self.since, "since"))
        object.__setattr__(self, "until", parse_date(self.until, "until"))
        if self.since and self.until and self.since > self.until:
            raise ConfigError(f"since ({self.since}) must not be after until ({self.until})")
        object.__setattr__(self, "mesh", _terms("mesh", self.mesh))
        object.__setattr__(
            self, "publication_type", _terms("publication_type", self.publication_type)
        )
        lang = (self.language or "").strip().lower() or None
        if lang is not None and len(lang) > 8:
            raise ConfigError(f"language must be a code like 'eng', got {self.language!r}")
        object.__setattr__(self, "language", lang)

    @property
    def selective(self) -> bool:
        """Whether anything beyond the always-on deleted/retracted rule applies."""
        return bool(
            self.since
            or self.until
            or self.mesh
            or self.publication_type
            or self.language
            or self.has_abstract is not None
        )

    def clauses(self) -> list[Any]:
        """SQL conditions on ``articles`` (deleted rows are always excluded)."""
        conds: list[Any] = [articles.c.is_deleted.is_(False)]
        if not self.include_retracted:
            conds.append(articles.c.is_retracted.is_(False))
        if self.since:
            conds.append(articles.c.best_date >= self.since)
        if self.until:
            conds.append(articles.c.best_date <= self.until)
        if self.language:
            conds.append(func.lower(articles.c.language) == self.language)
        if self.has_abstract is not None:
            conds.append(articles.c.has_abstract.is_(bool(self.has_abstract)))
        for kind, terms in (("mesh", self.mesh), ("ptype", self.publication_type)):
            for term in terms:
                conds.append(
                    exists().where(
                        and_(
                            article_terms.c.pmid == articles.c.pmid,
                            article_terms.c.kind == kind,
                            func.lower(article_terms.c.term) == term.lower(),
                        )
                    )
                )
        return conds

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "mesh": list(self.mesh),
            "publication_type": list(self.publication_type),
            "language": self.language,
            "has_abstract": self.has_abstract,
            "include_retracted": self.include_retracted,
        }


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query and where they came from."""

    query: str
    index_version: str
    model_version: str
    hits: tuple[Hit, ...]
    candidates: int
    options: ScoringOptions
    filters: SearchFilters

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "index_version": self.index_version,
            "model_version": self.model_version,
            "candidates": self.candidates,
            "options": self.options.to_dict(),
            "filters": self.filters.to_dict(),
            "results": [h.to_dict() for h in self.hits],
        }


def _open_index(settings: Settings, engine: Engine) -> SearchableIndex:
    from ranking.index_files import open_published

    index = open_published(settings, engine)
    if index is None:
        raise NoIndexError(
            "no index is published yet: ingest articles, then run `litpulse index refresh`"
        )
    return index


def _load_rows(
    engine: Engine, pmids: Sequence[int], conds: list[Any]
) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    with engine.connect() as conn:
        for start in range(0, len(pmids), db.IN_CHUNK):
            chunk = list(pmids[start : start + db.IN_CHUNK])
            stmt = select(*_ROW_COLUMNS).where(articles.c.pmid.in_(chunk), *conds)
            for r in conn.execute(stmt).mappings():
                rows[int(r["pmid"])] = dict(r)
    return rows


def run_search(
    settings: Settings,
    query: str,
    *,
    k: int = 10,
    filters: SearchFilters | None = None,
    options: ScoringOptions | None = None,
    engine: Engine | None = None,
    index: SearchableIndex | None = None,
    embed: Callable[[str], np.ndarray] | None = None,
) -> SearchResult:
    """Search and return the hits with the index and model versions used.

    Args:
        settings: Store, model and scoring defaults.
        query: Free text, 1..512 characters after trimming.
        k: Hits wanted (>= 1).
        filters: Which articles may be returned (default: any live, non-retracted).
        options: Weights and half-life (default from the settings).
        engine: Database engine (default :func:`litpulse.core.db.connect`).
        index: The index to search (default the published one).
        embed: Turns the query into a ``(1, d)`` float32 vector (default: the index's own
            model version through :func:`ranking.embed.encode_query`).

    Raises:
        ConfigError: An empty or over-long query, or ``k`` < 1.
        NoIndexError: Nothing is published yet.
    """
    import numpy as np

    text = _checked_query(query, k)
    filters = filters or SearchFilters()
    options = options or ScoringOptions.from_settings(settings)
    if options.today is None:  # one reference day for every candidate of this query
        options = dataclasses.replace(options, today=options.reference_day())
    engine = engine or db.connect(settings)
    if index is None:
        index = _open_index(settings, engine)
    embed = embed or _query_embedder(settings, engine, index.model_version)
    vector = np.ascontiguousarray(np.asarray(embed(text), dtype=np.float32).reshape(1, -1))
    sims, rows = _candidates(settings, engine, index, vector, k, filters.clauses())
    hits = _hits(sims, rows, options)
    logger.info(
        "query %r: %d candidates, %d pass filters, returning %d (index %s)",
        text[:60], len(sims), len(rows), min(k, len(hits)), index.id,
    )
    return SearchResult(
        query=text,
        index_version=str(index.id),
        model_version=str(index.model_version),
        hits=tuple(hits[:k]),
        candidates=len(sims),
        options=options,
        filters=filters,
    )


def _checked_query(query: str, k: int) -> str:
    """The trimmed query.

    Raises:
        ConfigError: An empty or over-long query, or ``k`` < 1.
    """
    text = (query or "").strip()
    if not text:
        raise ConfigError("query must not be empty")
    if len(text) > MAX_QUERY_CHARS:
        raise ConfigError(f"query must be at most {MAX_QUERY_CHARS} characters")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return text


def _query_embedder(settings: Settings, engine: Engine,
                    model_version: str) -> Callable[[str], np.ndarray]:
    """Query text → vector with the index's own model version."""
    from ranking.embed import encode_query, model_spec

    spec = model_spec(settings, model_version, engine)

    def embed(text: str) -> np.ndarray:
        return encode_query(settings, spec, text)

    return embed


def _candidates(
    settings: Settings, engine: Engine, index: SearchableIndex, vector: np.ndarray, k: int,
    conds: list[Any],
) -> tuple[dict[int, float], dict[int, dict[str, Any]]]:
    """Nearest neighbours and the rows of those passing the filters.

    Starts at ``settings.rerank_candidates`` neighbours and widens by
    :data:`WIDEN_FACTOR` while fewer than ``k`` pass. Returns ``(similarity by PMID,
    row by PMID)``.
    """
    size = int(index.size)
    sims: dict[int, float] = {}
    rows: dict[int, dict[str, Any]] = {}
    n = min(max(settings.rerank_candidates, k), size)
    while n > 0:
        scores, pmids = index.search(vector, n)
        fresh = []
        for score, pmid in zip(scores[0].tolist(), pmids[0].tolist(), strict=True):
            if pmid < 0 or pmid in sims or not math.isfinite(score):
                continue
            sims[int(pmid)] = float(score)
            fresh.append(int(pmid))
        rows.update(_load_rows(engine, fresh, conds))
        if len(rows) >= k or n >= size:
            break
        n = min(n * WIDEN_FACTOR, size)
        logger.debug("only %d of %d candidates pass the filters; widening to %d", len(rows), k, n)
    return sims, rows


def _hits(sims: dict[int, float], rows: dict[int, dict[str, Any]],
          options: ScoringOptions) -> list[Hit]:
    """Scored hits, best first (ties: higher similarity, then lower PMID)."""
    hits = []
    for pmid, row in rows.items():
        s = score_article(sims[pmid], row, options)
        if row.get("is_retracted"):
            s.explanation["retracted"] = True
        hits.append(
            Hit(
                pmid=pmid,
                title=row.get("title") or "",
                score=s.score,
                similarity=s.similarity,
                recency=s.recency,
                citation=s.citation,
                journal=row.get("journal"),
                pub_year=row.get("pub_year"),
                best_date=row.get("best_date"),
                explanation=s.explanation,
            )
        )
    hits.sort(key=lambda h: (-h.score, -h.similarity, h.pmid))
    return hits


def search(
    settings: Settings,
    query: str,
    *,
    k: int = 10,
    since: dt.date | str | None = None,
    until: dt.date | str | None = None,
    mesh: str | Sequence[str] | None = None,
    publication_type: str | Sequence[str] | None = None,
    language: str | None = None,
    has_abstract: bool | None = None,
    include_retracted: bool = False,
    weights: Mapping[str, float | None] | None = None,
    half_life_days: float | None = None,
) -> list[Hit]:
    """The ``k`` best hits for ``query``; see :func:`run_search` and :class:`SearchFilters`.

    ``weights`` overrides the settings' weights by name (``similarity``, ``recency``,
    ``citation``); ``half_life_days`` the recency half-life.

    Raises:
        ConfigError: Invalid query, k, filter or weight.
        NoIndexError: Nothing is published yet (run ``litpulse index refresh``).
    """
    filters = SearchFilters(
        since=parse_date(since, "since"),
        until=parse_date(until, "until"),
        mesh=_terms("mesh", mesh),
        publication_type=_terms("publication_type", publication_type),
        language=language,
        has_abstract=has_abstract,
        include_retracted=include_retracted,
    )
    options = ScoringOptions.from_settings(
        settings, weights=weights, half_life_days=half_life_days
    )
    return list(run_search(settings, query, k=k, filters=filters, options=options).hits)
