"""``GET /similar/{pmid}``: the articles nearest to one article's own vector.

Included by :func:`litpulse.app.api.create_app` (``app.include_router(router)``); the
settings are the application's (``app.state.settings``). Reading is open, like ``/search``.
Answers 404 for a PMID the published index does not hold or the store holds deleted
(its vector stays until the next refresh), 503 before anything is published (the
application's error handlers).

Example:
    >>> client.get("/similar/31415926", params={"k": 5}).json()["results"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request

from litpulse.app.api import MAX_PMID, _responses
from litpulse.core import db
from litpulse.core.settings import Settings
from ranking.search import MAX_OFFSET
from ranking.similar import MAX_SIMILAR

__all__ = ["router"]

router = APIRouter()


@router.get(
    "/similar/{pmid}",
    summary="Articles similar to one article (nearest vectors)",
    responses=_responses(400, 404),
)
def similar_endpoint(
    request: Request,
    pmid: int = Path(..., ge=1, le=MAX_PMID, description="PubMed id of the article."),
    k: int = Query(10, ge=1, le=MAX_SIMILAR, description="Number of similar articles."),
    include_retracted: bool = Query(False, description="Also return retracted articles."),
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description="Neighbours to skip: pages, "
                        "whatever their k, are disjoint slices of one list (cosine, then "
                        "PMID; an IVF index's in blocks of LITPULSE_RERANK_CANDIDATES, "
                        "as /search's pages); `has_more` tells whether a next page holds "
                        "more."),
) -> dict[str, Any]:
    """The ``k`` nearest articles by cosine of their stored vectors, without the article
    itself, deleted articles and (unless asked) retracted ones; with the same per-article
    fields as ``/search`` (``score`` is the cosine). ``offset`` pages through them."""
    from ranking.similar import similar_articles

    settings: Settings = request.app.state.settings
    result = similar_articles(
        settings, pmid, k=k, include_retracted=include_retracted, engine=db.connect(settings),
        offset=offset,
    )
    return result.to_dict()
