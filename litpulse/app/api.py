"""The HTTP API and the researchers' web page (FastAPI).

Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

=========================  ==========================================================
``GET /``                  the search page (``litpulse/app/web/index.html``)
``GET /search``            ranked hits with score components and explanations
``GET /export``            the same search as a RIS, BibTeX or CSV download
``GET /articles/{pmid}``   everything stored about one article (404 when unknown)
``GET /status``            freshness: newest article, counts, index and model versions
``POST /feedback``         a researcher's relevant / not relevant judgement
=========================  ==========================================================

Bad input is a 4xx with a message: FastAPI's 422 for malformed parameters,
:class:`~litpulse.core.errors.ConfigError` → 400, :class:`~litpulse.core.errors.NotFoundError` →
404, nothing published yet or another :class:`~litpulse.core.errors.LitpulseError` → 503.

Example:
    >>> app = create_app(Settings.from_env())                        # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from litpulse.core import __version__, db
from litpulse.core.errors import ConfigError, LitpulseError, NotFoundError
from litpulse.core.schema import articles, index_versions, ingest_runs
from litpulse.core.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ranking.search import SearchResult

__all__ = ["create_app", "FeedbackIn", "MAX_PMID"]

logger = logging.getLogger(__name__)

#: Largest PMID accepted in a path or body (the BIGINT range).
MAX_PMID = 2**63 - 1


class FeedbackIn(BaseModel):
    """A relevance judgement on one search result."""

    model_config = ConfigDict(str_strip_whitespace=True, extra="forbid")

    query: str = Field(min_length=1, max_length=512, description="The query searched.")
    pmid: int = Field(ge=1, le=MAX_PMID, description="The judged article.")
    relevant: bool = Field(description="Whether the article answers the query.")
    user: str = Field(min_length=1, max_length=255, description="Who judged it.")


def _web_file(name: str) -> str:
    return resources.files("litpulse.app").joinpath("web", name).read_text(encoding="utf-8")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _get_article(engine: Any, pmid: int) -> dict[str, Any]:
    from ingest.store import Store

    return Store(engine).get_article(pmid)


def _status(settings: Settings, engine: Any) -> dict[str, Any]:
    from ranking.embed import active_model

    a = articles.c
    with engine.connect() as conn:
        live, deleted, retracted, with_abstract, with_icite, newest, updated = conn.execute(
            select(
                func.count().filter(a.is_deleted.is_(False)),
                func.count().filter(a.is_deleted.is_(True)),
                func.count().filter(a.is_deleted.is_(False), a.is_retracted.is_(True)),
                func.count().filter(a.is_deleted.is_(False), a.has_abstract.is_(True)),
                func.count().filter(a.is_deleted.is_(False), a.icite_fetched_at.is_not(None)),
                func.max(a.best_date).filter(a.is_deleted.is_(False)),
                func.max(a.updated_at),
            )
        ).one()
        idx = conn.execute(
            select(index_versions)
            .where(index_versions.c.status == "published")
            .order_by(index_versions.c.published_at.desc().nulls_last())
            .limit(1)
        ).first()
        run = conn.execute(
            select(ingest_runs.c.source, ingest_runs.c.finished_at)
            .where(ingest_runs.c.status == "succeeded")
            .order_by(ingest_runs.c.finished_at.desc().nulls_last())
            .limit(1)
        ).first()
    return {
        "version": __version__,
        "articles": {
            "live": int(live or 0),
            "deleted": int(deleted or 0),
            "retracted": int(retracted or 0),
            "with_abstract": int(with_abstract or 0),
            "with_citations": int(with_icite or 0),
            "newest_best_date": _iso(newest),
            "last_updated_at": _iso(updated),
        },
        "last_ingest": (
            {"source": run.source, "finished_at": _iso(run.finished_at)} if run else None
        ),
        "index": (
            {
                "version": idx.id,
                "model_version": idx.model_version,
                "kind": idx.kind,
                "size": idx.size,
                "published_at": _iso(idx.published_at),
            }
            if idx
            else None
        ),
        "model_version": active_model(settings, engine).id,
        "scoring": {
            "weight_similarity": settings.weight_similarity,
            "weight_recency": settings.weight_recency,
            "weight_citation": settings.weight_citation,
            "recency_half_life_days": settings.recency_half_life_days,
        },
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "results"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The litpulse FastAPI application.

    Args:
        settings: The settings (default :meth:`Settings.from_env`).
    """
    from fastapi import Depends, FastAPI, Path, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from sqlalchemy.exc import OperationalError

    from ranking.scoring import ScoringOptions
    from ranking.search import NoIndexError, SearchFilters, run_search

    settings = settings or Settings.from_env()
    app = FastAPI(
        title="litpulse",
        version=__version__,
        description=(
            "Search a continuously updated PubMed index ranked by semantic similarity, "
            "recency and citation impact, with an explanation of every score."
        ),
    )
    app.state.settings = settings

    def engine() -> Any:
        return db.connect(settings)

    # -------------------------------------------------------------------- errors
    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": message})

    @app.exception_handler(NoIndexError)
    async def _no_index(_request: Request, exc: NoIndexError) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(ConfigError)
    async def _bad_config(_request: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(LitpulseError)
    async def _unavailable(_request: Request, exc: LitpulseError) -> JSONResponse:
        return _error(503, f"{type(exc).__name__}: {exc}")

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        logger.error("database error: %s", exc)
        return _error(503, "the database is unavailable; try again shortly")

    # ---------------------------------------------------------------- searching
    q_param = Query(..., min_length=1, max_length=512, description="Free-text query.")
    since_param = Query(None, description="Earliest publication date (YYYY-MM-DD).")
    until_param = Query(None, description="Latest publication date (YYYY-MM-DD).")
    mesh_param = Query(None, max_length=255, description="MeSH descriptor (repeatable).")
    type_param = Query(
        None, alias="type", max_length=255, description="Publication type (repeatable)."
    )
    lang_param = Query(None, max_length=8, description="Language code, e.g. eng.")
    abstract_param = Query(None, description="true: only with an abstract; false: only without.")
    retracted_param = Query(False, description="Also return retracted articles.")

    def weight(name: str) -> Any:
        return Query(None, ge=0, le=1000, allow_inf_nan=False, description=f"Weight of {name}.")

    half_life_param = Query(
        None, gt=0, le=1e6, allow_inf_nan=False, description="Recency half-life in days."
    )

    def search_spec(
        q: str = q_param,
        since: dt.date | None = since_param,
        until: dt.date | None = until_param,
        mesh: list[str] | None = mesh_param,
        ptype: list[str] | None = type_param,
        language: str | None = lang_param,
        has_abstract: bool | None = abstract_param,
        include_retracted: bool = retracted_param,
        w_sim: float | None = weight("similarity"),
        w_recency: float | None = weight("recency"),
        w_citation: float | None = weight("citation impact"),
        half_life: float | None = half_life_param,
    ) -> Any:
        """The query parameters /search and /export share: query, filters, scoring."""
        filters = SearchFilters(
            since=since,
            until=until,
            mesh=tuple(mesh or ()),
            publication_type=tuple(ptype or ()),
            language=language,
            has_abstract=has_abstract,
            include_retracted=include_retracted,
        )
        options = ScoringOptions.from_settings(
            settings,
            weights={"similarity": w_sim, "recency": w_recency, "citation": w_citation},
            half_life_days=half_life,
        )
        return q, filters, options

    spec_dep = Depends(search_spec)

    def do_search(spec: Any, k: int) -> SearchResult:
        q, filters, options = spec
        return run_search(settings, q, k=k, filters=filters, options=options, engine=engine())

    @app.get("/search", summary="Ranked search with explanations")
    def search_endpoint(
        k: int = Query(10, ge=1, le=100, description="Number of results."),
        spec: Any = spec_dep,
    ) -> dict[str, Any]:
        result = do_search(spec, k)
        return result.to_dict()

    @app.get(
        "/export",
        summary="Download the results of a search as RIS, BibTeX or CSV",
        response_class=Response,
    )
    def export_endpoint(
        format: str = Query("ris", pattern="^(ris|bibtex|csv)$", description="File format."),
        k: int = Query(50, ge=1, le=500, description="Number of results."),
        spec: Any = spec_dep,
    ) -> Any:  # a Response (annotations are resolved in this module's globals)
        from litpulse.app.export import FORMATS, load_export_rows, render

        result = do_search(spec, k)
        rows = load_export_rows(engine(), [h.pmid for h in result.hits])
        media, ext = FORMATS[format]
        body = render(format, list(result.hits), rows)
        filename = f"litpulse-{_slug(result.query)}.{ext}"
        return Response(
            content=body.encode("utf-8"),
            media_type=f"{media}; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    # ----------------------------------------------------------------- articles
    @app.get("/articles/{pmid}", summary="One stored article")
    def article_endpoint(
        pmid: int = Path(..., ge=1, le=MAX_PMID, description="PubMed id."),
    ) -> dict[str, Any]:
        return _get_article(engine(), pmid)

    @app.get("/status", summary="Freshness of the store, index and model")
    def status_endpoint() -> dict[str, Any]:
        return _status(settings, engine())

    @app.post("/feedback", summary="Record a relevance judgement", status_code=201)
    def feedback_endpoint(item: FeedbackIn) -> dict[str, Any]:
        try:
            from retrain.feedback import record_feedback
        except ImportError as exc:
            raise LitpulseError("feedback recording is not installed") from exc
        fid = record_feedback(
            settings, query=item.query, pmid=item.pmid, relevant=item.relevant, user=item.user
        )
        return {"id": fid, "pmid": item.pmid, "relevant": item.relevant}

    # ---------------------------------------------------------------------- page
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> Any:
        return HTMLResponse(_web_file("index.html"))

    return app
