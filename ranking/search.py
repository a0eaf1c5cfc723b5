"""Search the published index version: candidates, filter, fuse, re-rank, explain.

Modes (:class:`~litpulse.core.states.SearchMode`): ``hybrid`` (default) asks both indexes
of the published version, ``semantic`` the vector index, ``lexical`` the lexical one. The
query is embedded with the model version the published index was built with and the
``rerank_candidates`` nearest neighbours are fetched from FAISS; the
``rerank_candidates`` best BM25 matches from the lexical index (:mod:`ranking.lexical`).
Their rows are read from the database in one query (filters applied in SQL). In hybrid
mode every candidate then gets both inputs (the cosine from its stored vector, the BM25
restricted to the candidates), the two parts are fused (RRF or a min-max mix, ranks and
ranges taken over the candidates that pass the filters) and the survivors are re-ranked by
:func:`ranking.scoring.score_article` with recency and citation impact. When the filters
are selective the lists are widened ×4 (up to the whole index) until ``k`` articles
survive or the indexes are exhausted. Deleted articles never come back; retracted ones
only on request. ``sort=date`` returns the same hits newest first (ties and undated
last by PMID, highest first), reproducible for one index version and reference day.

A published version without a lexical index (made before there was one) answers hybrid
queries semantically (the explanation says ``"mode": "semantic"``).

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
from litpulse.core.states import Fusion, SearchMode, SearchSort
from litpulse.core.timeutil import iso, parse_date
from ranking.scoring import Relevance, ScoringOptions, score_article

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy import Engine

__all__ = [
    "MAX_QUERY_CHARS",
    "Hit",
    "NoIndexError",
    "SearchFilters",
    "SearchResult",
    "relevances",
    "search",
    "run_search",
    "sort_by_date",
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


class LexicalSearcher(Protocol):
    """What search needs of :class:`ranking.lexical.LexicalIndex`."""

    @property
    def size(self) -> int: ...

    def search(self, query: str, k: int) -> list[tuple[int, float]]: ...

    def scores(self, query: str, pmids: Sequence[int]) -> dict[int, float]: ...

    def explain(self, query: str, pmids: Sequence[int]) -> dict[int, Any]: ...


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
    lexical: float = 0.0
    bm25: float | None = None

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
            "lexical": self.lexical,
            "bm25": self.bm25,
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
    mode: SearchMode = SearchMode.SEMANTIC
    sort: SearchSort = SearchSort.SCORE
    requested_mode: SearchMode = SearchMode.SEMANTIC

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "index_version": self.index_version,
            "model_version": self.model_version,
            "mode": str(self.mode),
            "requested_mode": str(self.requested_mode),
            "sort": str(self.sort),
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
    lexical: LexicalSearcher | None = None,
    mode: SearchMode | str = SearchMode.HYBRID,
    sort: SearchSort | str = SearchSort.SCORE,
) -> SearchResult:
    """Search and return the hits with the index and model versions used.

    Args:
        settings: Store, model and scoring defaults.
        query: Free text, 1..512 characters after trimming.
        k: Hits wanted (>= 1).
        filters: Which articles may be returned (default: any live, non-retracted).
        options: Weights, half-life and fusion (default from the settings).
        engine: Database engine (default :func:`litpulse.core.db.connect`).
        index: The vector index to search (default the published one).
        embed: Turns the query into a ``(1, d)`` float32 vector (default: the index's own
            model version through :func:`ranking.embed.encode_query`).
        lexical: The lexical index (default the one of ``index``'s version, if it has one).
        mode: ``hybrid``, ``semantic`` or ``lexical``.
        sort: ``score`` (best first) or ``date`` (the same hits, newest first).

    Raises:
        ConfigError: An empty or over-long query, ``k`` < 1, or an unknown mode or sort.
        NoIndexError: Nothing is published yet, or lexical mode on a version without a
            lexical index.
    """
    import numpy as np

    text = _checked_query(query, k)
    requested, order = _mode(mode), _sort(sort)
    filters = filters or SearchFilters()
    options = options or ScoringOptions.from_settings(settings)
    if options.today is None:  # one reference day for every candidate of this query
        options = dataclasses.replace(options, today=options.reference_day())
    engine = engine or db.connect(settings)
    if index is None:
        index = _open_index(settings, engine)
    if lexical is None:
        lexical = getattr(index, "lexical", None)
    effective = requested
    if lexical is None:
        if requested == SearchMode.LEXICAL:
            raise NoIndexError(f"index {index.id} has no lexical index yet: run "
                               "`litpulse index refresh`")
        effective = SearchMode.SEMANTIC
    vector = None
    if effective != SearchMode.LEXICAL:
        embed = embed or _query_embedder(settings, engine, index.model_version)
        vector = np.ascontiguousarray(np.asarray(embed(text), dtype=np.float32).reshape(1, -1))
    pool = _candidates(settings, engine, index, lexical, vector, text, k, filters.clauses(),
                       effective)
    hits = _hits(pool, options, effective, lexical, text, k)
    if order == SearchSort.DATE:
        hits = sort_by_date(hits)
    logger.info(
        "query %r (%s): %d candidates, %d pass filters, returning %d (index %s)",
        text[:60], effective, pool.seen, len(pool.rows), len(hits), index.id,
    )
    return SearchResult(
        query=text,
        index_version=str(index.id),
        model_version=str(index.model_version),
        hits=tuple(hits),
        candidates=pool.seen,
        options=options,
        filters=filters,
        mode=effective,
        sort=order,
        requested_mode=requested,
    )


def _mode(value: SearchMode | str) -> SearchMode:
    try:
        return SearchMode(value)
    except ValueError:
        raise ConfigError(f"mode must be hybrid, semantic or lexical, got {value!r}") from None


def _sort(value: SearchSort | str) -> SearchSort:
    try:
        return SearchSort(value)
    except ValueError:
        raise ConfigError(f"sort must be score or date, got {value!r}") from None


def sort_by_date(hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` newest first; equal dates, and undated hits (last), by PMID, highest first."""
    return sorted(hits, key=lambda h: (h.best_date is None,
                                       -(h.best_date.toordinal() if h.best_date else 0),
                                       -h.pmid))

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


@dataclass
class _Pool:
    """The candidates of one query: cosine and BM25 by PMID, and the rows passing the
    filters."""

    sims: dict[int, float] = field(default_factory=dict)
    bm25: dict[int, float] = field(default_factory=dict)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    seen: int = 0


def _candidates(
    settings: Settings, engine: Engine, index: SearchableIndex,
    lexical: LexicalSearcher | None, vector: np.ndarray | None, text: str, k: int,
    conds: list[Any], mode: SearchMode,
) -> _Pool:
    """Nearest neighbours and best BM25 matches, and the rows of those passing the filters.

    Starts at ``settings.rerank_candidates`` of each and widens by :data:`WIDEN_FACTOR`
    while fewer than ``k`` pass. In hybrid mode the missing input of each passing
    candidate is then filled in (cosine from its stored vector, BM25 of the candidates).
    """
    pool = _Pool()
    dense = mode != SearchMode.LEXICAL
    lex = lexical if mode != SearchMode.SEMANTIC else None
    size = max(int(index.size) if dense else 0, int(lex.size) if lex is not None else 0)
    n = min(max(settings.rerank_candidates, k), size)
    seen: set[int] = set()
    while n > 0:
        fresh: list[int] = []
        if dense and vector is not None:
            scores, pmids = index.search(vector, min(n, int(index.size)) or 1)
            for score, pmid in zip(scores[0].tolist(), pmids[0].tolist(), strict=True):
                if pmid < 0 or pmid in pool.sims or not math.isfinite(score):
                    continue
                pool.sims[int(pmid)] = float(score)
        if lex is not None:
            for pmid, score in lex.search(text, n):
                pool.bm25.setdefault(pmid, score)
        for pmid in (*pool.sims, *pool.bm25):
            if pmid not in seen:
                seen.add(pmid)
                fresh.append(pmid)
        pool.rows.update(_load_rows(engine, fresh, conds))
        if len(pool.rows) >= k or n >= size:
            break
        n = min(n * WIDEN_FACTOR, size)
        logger.debug("only %d of %d candidates pass the filters; widening to %d",
                     len(pool.rows), k, n)
    pool.seen = len(seen)
    if mode == SearchMode.HYBRID and lex is not None:
        _fill_in(pool, index, lex, vector, text)
    return pool


def _fill_in(pool: _Pool, index: SearchableIndex, lex: LexicalSearcher,
             vector: np.ndarray | None, text: str) -> None:
    """Cosine of the passing lexical-only candidates, BM25 of the semantic-only ones."""
    import numpy as np

    reconstruct = getattr(index, "reconstruct", None)
    if vector is not None and reconstruct is not None:
        q = vector[0]
        for pmid in pool.rows:
            if pmid not in pool.sims:
                try:
                    pool.sims[pmid] = float(np.dot(np.asarray(reconstruct(pmid)), q))
                except (RuntimeError, KeyError):  # not in the vector index (not embedded)
                    continue
    missing = [p for p in pool.rows if p not in pool.bm25]
    if missing:
        pool.bm25.update(lex.scores(text, missing))


def _ranks(values: dict[int, float]) -> dict[int, int]:
    """1-based ranks, best first (ties: lower PMID first)."""
    order = sorted(values, key=lambda p: (-values[p], p))
    return {p: i for i, p in enumerate(order, start=1)}


def _minmax(values: dict[int, float]) -> tuple[float, float]:
    return (min(values.values()), max(values.values())) if values else (0.0, 0.0)


def _scaled(x: float | None, lo: float, hi: float) -> float:
    if x is None:
        return 0.0
    return 1.0 if hi <= lo else (x - lo) / (hi - lo)


def relevances(sims: dict[int, float], bm25: dict[int, float], pmids: Iterable[int],
               mode: SearchMode, options: ScoringOptions) -> dict[int, Relevance]:
    """The similarity and lexical parts of each candidate (see :mod:`ranking.scoring`).

    Args:
        sims: Cosine by PMID (candidates without one have no semantic part).
        bm25: BM25 by PMID (those without one matched no query term).
        pmids: The candidates that passed the filters: ranks and ranges are theirs.
        mode: The effective search mode.
        options: Fusion and its k.
    """
    ids = list(pmids)
    cos = {p: sims[p] for p in ids if p in sims}
    lex = {p: bm25[p] for p in ids if p in bm25 and bm25[p] > 0}
    cos_rank, lex_rank = _ranks(cos), _ranks(lex)
    (clo, chi), (llo, lhi) = _minmax(cos), _minmax(lex)
    if mode == SearchMode.LEXICAL:
        llo = 0.0  # BM25 / best BM25: 1 for the best match
    rrf = mode == SearchMode.HYBRID and options.fusion == Fusion.RRF
    k = options.rrf_k
    how = (f"RRF (k={k}): (k+1)/(k+rank)" if rrf else
           "min-max over the candidates" if mode == SearchMode.HYBRID else "")
    out = {}
    for p in ids:
        c, b = cos.get(p), lex.get(p)
        if rrf:
            sim_v = (k + 1) / (k + cos_rank[p]) if p in cos_rank else 0.0
            lex_v = (k + 1) / (k + lex_rank[p]) if p in lex_rank else 0.0
        elif mode == SearchMode.HYBRID:
            sim_v, lex_v = _scaled(c, clo, chi), _scaled(b, llo, lhi)
        elif mode == SearchMode.LEXICAL:
            sim_v, lex_v = 0.0, _scaled(b, llo, lhi)
        else:
            sim_v, lex_v = (c or 0.0), 0.0
        out[p] = Relevance(mode=mode, similarity=sim_v, lexical=lex_v, cosine=c, bm25=b,
                           similarity_rank=cos_rank.get(p), lexical_rank=lex_rank.get(p),
                           how=how)
    return out


def _hits(pool: _Pool, options: ScoringOptions, mode: SearchMode,
          lexical: LexicalSearcher | None, text: str, k: int) -> list[Hit]:
    """The ``k`` best scored hits, best first (ties: higher similarity, then lower PMID),
    with the matched terms of each in its explanation."""
    rels = relevances(pool.sims, pool.bm25, pool.rows, mode, options) if lexical else {}
    hits = [_hit(pmid, row, options, rels.get(pmid), pool.sims.get(pmid, 0.0))
            for pmid, row in pool.rows.items()]
    hits.sort(key=lambda h: (-h.score, -h.similarity, h.pmid))
    hits = hits[:k]
    if lexical is None or not hits:
        return hits
    if mode == SearchMode.SEMANTIC:  # shown, not used: BM25 of the hits only
        pool.bm25.update(lexical.scores(text, [h.pmid for h in hits]))
        rels = relevances(pool.sims, pool.bm25, [h.pmid for h in hits], mode, options)
    matches = lexical.explain(text, [h.pmid for h in hits])
    out = []
    for h in hits:
        match = matches.get(h.pmid)
        rel = rels[h.pmid]
        if match is not None:
            rel = dataclasses.replace(rel, terms=tuple(t.to_dict() for t in match.terms))
        out.append(_hit(h.pmid, pool.rows[h.pmid], options, rel, h.similarity))
    return out


def _hit(pmid: int, row: dict[str, Any], options: ScoringOptions, rel: Relevance | None,
         cosine: float) -> Hit:
    s = score_article(cosine, row, options, rel)
    if row.get("is_retracted"):
        s.explanation["retracted"] = True
    return Hit(
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
        lexical=s.lexical,
        bm25=rel.bm25 if rel is not None else None,
    )


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
    mode: SearchMode | str = SearchMode.HYBRID,
    sort: SearchSort | str = SearchSort.SCORE,
) -> list[Hit]:
    """The ``k`` best hits for ``query``; see :func:`run_search` and :class:`SearchFilters`.

    ``weights`` overrides the settings' weights by name (``similarity``, ``recency``,
    ``citation``, ``lexical``); ``half_life_days`` the recency half-life; ``mode``
    (``hybrid``, ``semantic``, ``lexical``) and ``sort`` (``score``, ``date``) as in
    :func:`run_search`.

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
    return list(run_search(settings, query, k=k, filters=filters, options=options, mode=mode,
                           sort=sort).hits)
