"""Similar articles: the nearest neighbours of an article's own vector.

The published index version gives back the article's stored vector
(:meth:`ranking.index_files.PublishedIndex.reconstruct`) and is searched with it, so
"similar" means the same thing as search's similarity (cosine under the index's model
version), with no query text involved. The article itself is left out, and so are deleted
articles and — unless asked — retracted ones; when filters remove too many the neighbour
list widens ×4 (up to the whole index), as in :mod:`ranking.search`, and where an IVF
index's probed lists run dry the passing articles are scored exactly
(:func:`ranking.search.nearest`). A deleted article is not found, even while its vector
is still in the index (until the next refresh removes it). Hits are ordered by
cosine, best first (ties: lower PMID first; an IVF index's in blocks, as search's pages,
so that its pages stay slices of one list), and carry the details of a result list
(:mod:`ranking.details`); their ``score`` is the cosine, and their ``recency`` and
``citation`` (with explanations) are the values search gives the same article, shown
beside it, not mixed in.

Example:
    >>> res = similar_articles(settings, 31415926, k=5)              # doctest: +SKIP
    >>> [(h.pmid, round(h.similarity, 3)) for h in res.hits]          # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from ranking.details import published_text, with_details
from ranking.scoring import ScoringOptions, citation_value, recency_value
from ranking.search import (
    MAX_OFFSET,
    Hit,
    NoIndexError,
    SearchableIndex,
    SearchFilters,
    load_rows,
    nearest,
    next_page,
    widened,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["MAX_SIMILAR", "SimilarResult", "similar_articles"]

logger = logging.getLogger(__name__)

#: Most similar articles one call returns.
MAX_SIMILAR = 100


@dataclass(frozen=True)
class SimilarResult:
    """The articles nearest to one article, and where they came from."""

    pmid: int
    title: str
    index_version: str
    model_version: str
    hits: tuple[Hit, ...]
    include_retracted: bool = False
    #: the source article itself is retracted (it is shown whatever ``include_retracted``)
    retracted: bool = False
    #: neighbours skipped before ``hits`` (a page of the one ordered list)
    offset: int = 0
    #: whether a next page holds more neighbours
    has_more: bool = False
    #: more neighbours follow than the deepest offset (:data:`ranking.search.MAX_OFFSET`)
    #: reaches: not paged
    truncated: bool = False
    #: the store as read (:func:`litpulse.core.db.store_version`): pages with the same
    #: index and store versions are slices of one list
    store_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "pmid": self.pmid,
            "title": self.title,
            "retracted": self.retracted,
            "index_version": self.index_version,
            "model_version": self.model_version,
            "store_version": self.store_version,
            "include_retracted": self.include_retracted,
            "offset": self.offset,
            "has_more": self.has_more,
            "truncated": self.truncated,
            "results": [h.to_dict() for h in self.hits],
        }


def _vector(index: Any, pmid: int) -> Any:
    import numpy as np

    try:
        vec = index.reconstruct(pmid)
    except (RuntimeError, KeyError):  # FAISS: RuntimeError; other indexes: KeyError
        raise NotFoundError(
            f"PMID {pmid} is not in index {index.id} (unknown, deleted, or not embedded yet)"
        ) from None
    return np.ascontiguousarray(np.asarray(vec, dtype=np.float32).reshape(1, -1))


def _title(engine: Engine, pmid: int) -> tuple[str, bool]:
    """The title of a live ``pmid`` (retracted too) and whether it is retracted, read
    through search's own rule of which rows are live (:meth:`SearchFilters.clauses`).

    Raises:
        NotFoundError: No such article, or it is deleted (its vector may still be in the
            index until the next refresh removes it).
    """
    live = SearchFilters(include_retracted=True).clauses()
    with engine.connect() as conn:
        row = conn.execute(
            select(articles.c.title, articles.c.is_retracted)
            .where(articles.c.pmid == pmid, *live)
        ).first()
    if row is None:
        raise NotFoundError(f"PMID {pmid} is not found (unknown or deleted)")
    return str(row[0] or ""), bool(row[1])


def similar_articles(
    settings: Settings,
    pmid: int,
    *,
    k: int = 10,
    include_retracted: bool = False,
    engine: Engine | None = None,
    index: SearchableIndex | None = None,
    offset: int = 0,
) -> SimilarResult:
    """The ``k`` articles whose vectors are nearest to ``pmid``'s own, best first, after
    the first ``offset`` of them.

    Pages of one article, whatever their ``k``, are disjoint slices of one ordered list
    (cosine, then PMID; an IVF index's in blocks of ``rerank_candidates``:
    :func:`_block_list`), as long as the published index and the store stay the same.

    Args:
        settings: Store and index settings.
        pmid: The article.
        k: How many (1..:data:`MAX_SIMILAR`).
        include_retracted: Also return retracted articles (flagged ``retracted``).
        engine: Database engine (default :func:`litpulse.core.db.connect`).
        index: The vector index (default the published one); needs ``reconstruct``.
        offset: Neighbours to skip (0..:data:`ranking.search.MAX_OFFSET`).

    Raises:
        ConfigError: ``k`` outside 1..:data:`MAX_SIMILAR`, or ``offset`` outside
            0..:data:`ranking.search.MAX_OFFSET`.
        NoIndexError: Nothing is published yet.
        NotFoundError: ``pmid`` is unknown, deleted, or not in the index.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SIMILAR:
        raise ConfigError(f"k must be an integer in 1..{MAX_SIMILAR}, got {k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ConfigError(f"offset must be an integer in 0..{MAX_OFFSET}, got {offset!r}")
    engine = engine or db.connect(settings)
    if index is None:
        from ranking.index_files import open_published

        index = open_published(settings, engine)
        if index is None:
            raise NoIndexError("no index is published yet: run `litpulse index refresh`")
    with engine.connect() as conn:  # before ranking: a write meanwhile shows on the next
        version = db.store_version(conn)
    title, retracted = _title(engine, int(pmid))  # a deleted article is not found
    import numpy as np

    vector = _vector(index, int(pmid))
    # neither title nor abstract: the zero vector, similar to nothing (as is a vector of NaN
    # an older release stored)
    if not vector.any() or not np.isfinite(vector).all():
        return SimilarResult(
            pmid=int(pmid), title=title, index_version=str(index.id),
            model_version=str(index.model_version), hits=(),
            include_retracted=include_retracted, retracted=retracted, offset=offset,
            store_version=version,
        )  # fmt: skip
    conds = SearchFilters(include_retracted=include_retracted).clauses()
    size = int(index.size)
    want = offset + k + 1  # one beyond the page: whether another page follows
    if getattr(index, "kind", "flat") == "flat":
        ranked, sims, rows = _exact_list(engine, index, vector, int(pmid), conds, want, size)
    else:
        ranked, sims, rows = _block_list(engine, index, vector, int(pmid), conds, want, size,
                                         settings.rerank_candidates)  # fmt: skip
    best = ranked[offset : offset + k]
    options = ScoringOptions.from_settings(settings)
    hits = [_hit(p, rows[p], sims[p], int(pmid), options) for p in best]
    logger.info(
        "similar to %d: %d neighbours listed, returning %d (index %s)",
        pmid,
        len(ranked),
        len(hits),
        index.id,
    )
    has_more, truncated = next_page(len(ranked) > offset + k, offset, k)
    return SimilarResult(
        pmid=int(pmid),
        title=title,
        index_version=str(index.id),
        model_version=str(index.model_version),
        hits=tuple(with_details(engine, hits, "")),
        include_retracted=include_retracted,
        retracted=retracted,
        offset=offset,
        # a next page only where its offset is accepted; more past it is said
        has_more=has_more,
        truncated=truncated,
        store_version=version,
    )


def _exact_list(
    engine: Engine, index: Any, vector: Any, pmid: int, conds: list[Any], want: int, size: int
) -> tuple[list[int], dict[int, float], dict[int, dict[str, Any]]]:
    """The first ``want`` (at least) neighbours of ``pmid`` passing ``conds`` in a flat
    (exact) index, in (cosine, PMID) order, with their cosines and rows: one list
    whatever ``want``, as FAISS's answer is exact (its ties at the cut resolved)."""
    n = min(want + 1, size)  # the article itself is among its neighbours
    sims: dict[int, float] = {}
    rows: dict[int, dict[str, Any]] = {}
    while n > 0:
        pairs, complete = nearest(engine, index, vector, n, conds)
        fresh = []
        for other, score in pairs:
            if other == pmid or other in sims:
                continue
            sims[other] = score
            fresh.append(other)
        rows.update(load_rows(engine, fresh, conds))
        if n >= size or complete:
            break
        if len(rows) >= want:
            # FAISS cuts a tie at the end of its list in its own order, not by PMID: the
            # page is one slice of the (cosine, PMID) order only when the last neighbour
            # it needs is nearer than the farthest seen (else an unseen one of that
            # cosine may come first; identical texts, e.g. errata, tie exactly)
            last = sorted(rows, key=lambda p: (-sims[p], p))[want - 1]
            if sims[last] > min(sims.values()):
                break
            n = min(size, max(n + 1, n * 2))
            continue
        n = widened(n, len(rows), want, size)
    return sorted(rows, key=lambda p: (-sims[p], p)), sims, rows


def _block_list(
    engine: Engine,
    index: Any,
    vector: Any,
    pmid: int,
    conds: list[Any],
    want: int,
    size: int,
    block: int,
) -> tuple[list[int], dict[int, float], dict[int, dict[str, Any]]]:
    """The first ``want`` (at least) neighbours of ``pmid`` passing ``conds`` in an
    approximate (IVF) index, with their cosines and rows, in blocks of ``block`` that
    depend on neither the page nor ``k`` (as search's pages: :func:`ranking.search._page`):
    block ``i`` is the best ``block`` not listed before among the neighbours of a search
    for ``(i + 1) * block`` that pass (widened until that many pass); once a search reaches
    every passing article, all the rest of it is the last block.

    FAISS answers a shallow search from the lists it probes, a deeper one (the probed
    lists ran dry) by scoring every passing article exactly (:func:`nearest`), which
    ranks articles of other lists among those a shallower search listed: one list for
    every ``want`` would repeat some neighbours on later pages and never show others.
    """
    listed: list[int] = []
    sims: dict[int, float] = {}
    rows: dict[int, dict[str, Any]] = {}
    known: dict[int, dict[str, Any] | None] = {}  # rows read (None: it does not pass)
    final, tier = False, 0
    while len(listed) < want and not final:
        depth = (tier + 1) * block
        n = min(depth + 1, size)  # the article itself is among its neighbours
        while True:
            pairs, complete = nearest(engine, index, vector, n, conds)
            found = {other: score for other, score in pairs if other != pmid}  # this search's
            todo = [p for p in found if p not in known]
            loaded = load_rows(engine, todo, conds)
            known.update((p, loaded.get(p)) for p in todo)
            passing = {p: row for p in found if (row := known[p]) is not None}
            final = complete or n >= size
            if final or len(passing) >= depth:
                break
            n = widened(n, len(passing), depth, size)
        fresh = sorted((p for p in passing if p not in sims), key=lambda p: (-found[p], p))
        if not final:
            fresh = fresh[:block]
        sims.update((p, found[p]) for p in fresh)
        rows.update((p, passing[p]) for p in fresh)
        listed += fresh
        tier += 1
    return listed, sims, rows


def _hit(
    pmid: int, row: dict[str, Any], cosine: float, source: int, options: ScoringOptions
) -> Hit:
    """A neighbour: its score is the cosine; recency and citation are search's values for
    it (the same settings and day), shown beside it and not mixed in."""
    recency, recency_info = recency_value(row.get("best_date"), options)
    citation, citation_info = citation_value(row, options)
    explanation: dict[str, Any] = {
        "similar_to": source,
        "text": f"cosine {cosine:.3f} between this article's vector and PMID {source}'s",
        "recency": {**recency_info, "value": recency},
        "citation": {**citation_info, "value": citation},
    }
    if row.get("is_retracted"):
        explanation["retracted"] = True
    return Hit(
        pmid=pmid,
        title=row.get("title") or "",
        score=cosine,
        similarity=cosine,
        recency=recency,
        citation=citation,
        journal=row.get("journal"),
        pub_year=row.get("pub_year"),
        best_date=row.get("best_date"),
        published=published_text(row),
        explanation=explanation,
    )
