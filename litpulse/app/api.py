"""The HTTP API and the researchers' web page (FastAPI).

Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``):

=========================  ==========================================================
``GET /``                  the search page (``litpulse/app/web/index.html``, code in
                           ``/static/app.js`` and ``/static/app.css``)
``GET /search``            ranked hits with score components and explanations (``offset``:
                           a page), authors, snippet, MeSH, publication types, links
``GET /similar/{pmid}``    nearest articles to one article (:mod:`litpulse.app.similar_api`)
``GET /export``            the same search as a RIS, BibTeX or CSV download
``GET /articles/{pmid}``   everything stored about one article (404 when unknown)
``GET /articles/doi/{doi}``   the same, by DOI (``same_doi``: other PMIDs with it)
``GET /status``            freshness: newest article, counts, index and model versions
``POST /feedback``         an expert's relevant / not relevant judgement (API token)
``/alerts``, ``/feeds``    saved searches and their Atom feeds (:mod:`litpulse.app.alerts_api`)
=========================  ==========================================================

Reading needs nothing; writing needs an API token (``Authorization: Bearer <token>``)
made by ``litpulse tokens create --expert NAME`` (see :mod:`litpulse.app.tokens`). While no
token exists the server is read-only: writes are answered 403. A judgement is recorded
under the token's expert; the body's ``user`` field is accepted for compatibility only
when it names that same expert (else 403). Each expert may send
``settings.api_feedback_per_hour`` judgements an hour (then 429).

Every answer passes :class:`~litpulse.app.apiguard.ApiGuard`: security headers (a CSP
without inline code, no framing), bodies over ``settings.api_max_body_bytes`` answered
413 unread, a body not all sent within 30 s answered 408, and a token bucket per client
address (``api_rate_per_second``, ``api_rate_burst``) answering 429 with ``Retry-After``.

Errors are ``{"detail": message}`` (:class:`ErrorOut`) and documented per operation:
400 a rule JSON Schema cannot say (``since`` after ``until``, every weight 0) or a body
that is not JSON text, 401/403 authentication, 404 unknown article, 413 body too large,
429 too many requests, 503 nothing published yet or the database is down or busy (a
writer holds it, or every connection is in use: with ``Retry-After``). Malformed
parameters are FastAPI's 422, which never echoes the input back.

Example:
    >>> app = create_app(Settings.from_env())                        # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from sqlalchemy import select

from litpulse.core import __version__, db
from litpulse.core.errors import ConfigError, DeviceError, LitpulseError, NotFoundError
from litpulse.core.schema import ingest_runs
from litpulse.core.settings import Settings, bounds
from litpulse.core.states import RunStatus
from litpulse.core.timeutil import iso
from litpulse.core.widths import PMID_MAX

if TYPE_CHECKING:
    from fastapi import FastAPI

    from litpulse.app.tokens import TokenInfo
    from ranking.scoring import ScoringOptions
    from ranking.search import SearchFilters, SearchResult

__all__ = [
    "create_app", "prepare_to_serve", "SearchSpec", "ErrorOut", "FeedbackIn", "FeedbackOut",
    "MAX_PMID", "MAX_TERMS",
]

logger = logging.getLogger(__name__)

#: Largest PMID accepted in a path or body (:data:`litpulse.core.widths.PMID_MAX`).
MAX_PMID = PMID_MAX

#: Most MeSH descriptors, and most publication types, one search may require.
MAX_TERMS = 20

#: Files of ``litpulse/app/web`` served under ``/static/``, with their media types.
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
                "alerts.js": "text/javascript; charset=utf-8"}

#: Seconds a client is told to wait when every database connection is in use (503).
BUSY_RETRY_AFTER_S = 5

#: Longest part of a validation error's location repeated back (a client's key name).
MAX_LOC_CHARS = 40

#: "Holds a character that is not whitespace", spelled out rather than ``\S``: JSON
#: Schema's regex dialect (ECMA-262), pydantic's (Rust) and Python's disagree on what
#: ``\s`` is (NEL, U+001C-U+001F, BOM), and the text is normalised by Python later.
NOT_BLANK = (
    r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
    r"\u3000\ufeff]"
)


def _whole_number(value: Any) -> Any:
    """``2.0`` is the integer 2, as in JSON Schema; text and booleans stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ErrorOut(BaseModel):
    """Every error answer but 422: one message."""

    detail: str = Field(description="What went wrong, and what to do about it.")


class FeedbackIn(BaseModel):
    """A relevance judgement on one search result."""

    # no stripping here: the schema's length and pattern apply to the text as sent (the
    # recorder normalises whitespace, and answers 400 for a text that is only whitespace)
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1, max_length=512, pattern=NOT_BLANK,
                       description="The query searched.")
    pmid: Annotated[  # constraints before the validator, so the schema shows them
        int,
        Field(ge=1, le=MAX_PMID, description="The judged article."),
        BeforeValidator(_whole_number),
    ]
    relevant: bool = Field(description="Whether the article answers the query.")
    user: str | None = Field(
        None, min_length=1, max_length=255, pattern=NOT_BLANK,
        description="Deprecated: the judgement is recorded under the API token's expert. "
        "Accepted only when it names that expert (else 403).",
    )


class FeedbackOut(BaseModel):
    """A recorded judgement."""

    id: int = Field(description="The judgement's id (the same when an expert changes it).")
    pmid: int
    relevant: bool
    expert: str = Field(description="Who judged: the expert of the API token.")


def _iso_date_only(value: Any) -> Any:
    """Dates as ``YYYY-MM-DD`` text only (pydantic would also take Unix timestamps)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date YYYY-MM-DD")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date_only)]
# A validator in Annotated runs only when Query sits inside Annotated too, not as the
# default; and FastAPI resolves the annotations in this module's globals.
SinceParam = Annotated[
    IsoDate | None, Query(description="Earliest publication date (YYYY-MM-DD).")
]
UntilParam = Annotated[
    IsoDate | None, Query(description="Latest publication date (YYYY-MM-DD).")
]
Term = Annotated[str, StringConstraints(max_length=255)]

_ERRORS = {
    400: "A rule the schema cannot express (`since` after `until`, every weight 0, a text "
         "that is only whitespace or holds a control character other than tab, line feed "
         "and carriage return), or a body that cannot be read as JSON text.",
    401: "No API token, or an unknown or revoked one (`Authorization: Bearer <token>`).",
    403: "The server is read-only (no API token exists), or `user` names another expert.",
    404: "No such article.",
    410: "The article was withdrawn from PubMed (a DeleteCitation): only its PMID and "
         "when it was deleted are given.",
    413: "The request body is larger than the server accepts.",
    429: "Too many requests from this client, or judgements from this expert.",
    503: "Nothing is published yet, or the database is unavailable or busy (a writer "
         "holds it, or every connection is in use: with `Retry-After`).",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of an operation (413, 429 and 503 always)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, 413, 429, 503}):
        out[code] = {"model": ErrorOut, "description": _ERRORS[code]}
    out[429]["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                           "schema": {"type": "integer", "minimum": 1}}}
    out[503]["headers"] = {"Retry-After": {
        "description": "Seconds to wait (the database busy: a writer holds it, or every "
                       "connection is in use).",
        "schema": {"type": "integer", "minimum": 1}}}  # fmt: skip
    if 401 in out:
        out[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


def _web_file(name: str) -> str:
    return resources.files("litpulse.app").joinpath("web", name).read_text(encoding="utf-8")


def _article_answer(art: dict[str, Any]) -> Any:
    """A stored article as ``GET /articles/…`` answers it: 410 for one PubMed withdrew
    (PubMed shows nothing of it any more), else the article with its ``links`` (PubMed,
    doi.org), as search results carry them."""
    from fastapi.responses import JSONResponse

    from ranking.details import links

    if art["is_deleted"]:
        return JSONResponse(status_code=410, content={
            "detail": f"PMID {art['pmid']} was withdrawn from PubMed (deleted "
                      f"{art['deleted_at']})",
            "pmid": art["pmid"], "is_deleted": True, "deleted_at": art["deleted_at"],
        })  # fmt: skip
    return {**art, "links": links(art["pmid"], art["doi"])}


def _get_article(engine: Any, pmid: int) -> dict[str, Any]:
    from ingest.store import Store

    return Store(engine).get_article(pmid)


def _status(settings: Settings, engine: Any) -> dict[str, Any]:
    from ingest.missing import counts as missing_counts
    from ingest.missing import untold_count
    from ingest.store import store_counts
    from ranking.embed import active_model
    from ranking.index_status import serving_problem
    from ranking.models import published_index_row

    idx = published_index_row(engine)
    with engine.connect() as conn:
        counts = store_counts(conn)
        owed = missing_counts(conn)
        alerts_owed = untold_count(conn)
        run = conn.execute(
            select(ingest_runs.c.source, ingest_runs.c.finished_at)
            # a succeeded run has finished: the newest along ix_ingest_runs_status_finished
            .where(ingest_runs.c.status == RunStatus.SUCCEEDED,
                   ingest_runs.c.finished_at.is_not(None))
            .order_by(ingest_runs.c.finished_at.desc())
            .limit(1)
        ).first()
    return {
        "version": __version__,
        "articles": {
            k: counts[k]
            for k in ("live", "deleted", "retracted", "with_abstract", "with_citations",
                      "newest_best_date", "last_updated_at")
        },  # fmt: skip
        "last_ingest": (
            {"source": run.source, "finished_at": iso(run.finished_at)} if run else None
        ),
        # PMIDs E-utilities listed and EFetch has not returned: owed, or given up
        "missing": owed,
        # given-up PMIDs whose alert no webhook took yet (the next ingest posts them)
        "alerts_owed": alerts_owed,
        # quarantine entries still open (no later record or deletion of their PMID stored)
        "quarantined": counts["quarantined"],
        "index": (
            {
                "version": idx.id,
                "model_version": idx.model_version,
                "kind": idx.kind,
                "size": idx.size,
                "published_at": iso(idx.published_at),
                # why searches fail now and what repairs it (None: they are served)
                "problem": serving_problem(settings, engine),
            }
            if idx
            else None
        ),
        "model_version": active_model(settings, engine).id,
        "scoring": {
            "weight_similarity": settings.weight_similarity,
            "weight_recency": settings.weight_recency,
            "weight_citation": settings.weight_citation,
            "weight_lexical": settings.weight_lexical,
            "recency_half_life_days": settings.recency_half_life_days,
        },
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "results"


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` as plain ``X``: a query string cannot say null (an
    optional parameter is simply absent), and fuzzers would send ``null`` as text."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    rest = [o for o in options if o != {"type": "null"}]
    if len(rest) != 1 or len(rest) == len(options):
        return schema
    return {**{k: v for k, v in schema.items() if k != "anyOf"}, **rest[0]}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, with null taken out of the query parameters' types."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title, version=app.version, openapi_version=app.openapi_version,
        description=app.description, routes=app.routes,
        separate_input_output_schemas=app.separate_input_output_schemas,
    )
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param.get("in") == "query" and "schema" in param:
                    param["schema"] = _without_null(param["schema"])
    app.openapi_schema = spec
    return spec


def _short(part: Any) -> Any:
    if isinstance(part, str) and len(part) > MAX_LOC_CHARS:
        return part[: MAX_LOC_CHARS - 1] + "…"
    return part


def validation_detail(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's validation errors without the input, the context or long key names."""
    return [
        {
            "loc": [_short(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", ""))[:200],
            "type": str(err.get("type", "")),
        }
        for err in list(errors)[:20]
    ]


def _install_error_handlers(app: FastAPI) -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from ranking.search import ArticleQuery, NoIndexError
    from retrain.feedback import FeedbackLimitError

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": message}, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": validation_detail(exc.errors())})

    @app.exception_handler(NoIndexError)
    async def _no_index(_request: Request, exc: NoIndexError) -> JSONResponse:
        return error(503, str(exc))

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(DeviceError)
    async def _no_device(_request: Request, exc: DeviceError) -> JSONResponse:
        return error(503, str(exc))  # the host's state (a GPU asked for, missing): no request's

    @app.exception_handler(ConfigError)
    async def _bad_config(_request: Request, exc: ConfigError) -> JSONResponse:
        if isinstance(exc, ArticleQuery):  # a PMID or a DOI alone: where that article is
            return JSONResponse(status_code=400,
                                content={"detail": str(exc), "article": exc.path})  # fmt: skip
        return error(400, str(exc))

    @app.exception_handler(FeedbackLimitError)
    async def _over_limit(_request: Request, exc: FeedbackLimitError) -> JSONResponse:
        seconds = max(1, int(exc.retry_after + 0.999))
        return error(429, f"{exc}; retry in {seconds} s", {"Retry-After": str(seconds)})

    @app.exception_handler(LitpulseError)
    async def _unavailable(_request: Request, exc: LitpulseError) -> JSONResponse:
        return error(503, f"{type(exc).__name__}: {exc}")

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        logger.error("database error: %s", exc)
        if db.lock_waited_out(exc):  # reachable: a writer (the nightly) held the lock
            return error(503, "the database is busy: another writer holds it; try again "
                              "shortly", {"Retry-After": str(BUSY_RETRY_AFTER_S)})  # fmt: skip
        return error(503, "the database is unavailable; try again shortly")

    @app.exception_handler(PoolTimeout)
    async def _no_connection(_request: Request, exc: PoolTimeout) -> JSONResponse:
        # every pooled connection in use (writes waiting on a writer's lock, a hung
        # server) past the pool's wait: the server's state, not the request's
        logger.error("no database connection free: %s", exc)
        return error(503, "the server is busy: every database connection is in use; try "
                          "again shortly", {"Retry-After": str(BUSY_RETRY_AFTER_S)})  # fmt: skip

    @app.exception_handler(DBAPIError)
    async def _db_refused(request: Request, exc: DBAPIError) -> JSONResponse:
        # permission denied (42501), a read-only transaction or standby (25006): the role
        # this server connects as may not write (a read-only API role); nothing was written
        if getattr(exc.orig, "sqlstate", None) in ("42501", "25006"):
            logger.error("the database refuses %s %s: %s", request.method, request.url.path,
                         exc.orig)  # fmt: skip
            return error(503, "the database refuses writes to this server's role (a "
                              "read-only role?); nothing was recorded")  # fmt: skip
        raise exc  # any other: the guard's 500, logged


def _catch_up(settings: Settings) -> None:
    """Bring the data filters read up to date with what was written before the server
    started (a store of a previous release, or its writer in a rolling upgrade): the
    period ends of date filters (:meth:`ingest.store.Store.catch_up_period_ends`; the
    term spellings are caught up when the store is opened). A role that may not write
    leaves it to the next writer, with a warning."""
    from sqlalchemy.exc import DBAPIError

    from ingest.store import Store

    try:
        Store(db.connect(settings)).catch_up_period_ends()
    except DBAPIError as exc:
        logger.warning("period ends not caught up (%s): the next ingest does it", exc)


def _warn_if_read_only(settings: Settings) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from litpulse.app.tokens import any_active_token

    try:
        if not any_active_token(db.connect(settings)):
            logger.warning(
                "no API token exists: the API is read-only (POST /feedback answers 403) "
                "until an admin runs `litpulse tokens create --expert NAME`"
            )
    except SQLAlchemyError as exc:  # the first request will say so too
        logger.warning("cannot read the API tokens: %s", exc)


@dataclass(frozen=True)
class SearchSpec:
    """What ``/search`` and ``/export`` share: the query, its filters and the scoring."""

    query: str
    filters: SearchFilters
    options: ScoringOptions
    mode: str = "hybrid"
    sort: str = "score"


def prepare_to_serve(settings: Settings) -> str | None:
    """Make a server's first search cost what every other does, and keep the slowest low.

    Loads the published index and its query encoder (:func:`ranking.search.warm_up`), then
    moves everything loaded so far (the model's half a million Python objects) out of the
    garbage collector's sight (``gc.freeze``): a full collection over them takes ~0.4 s,
    which would otherwise stall whichever request triggers it. Frozen objects are still
    freed: the encoder cache, evicting an old model version after a promotion, unfreezes,
    collects and freezes again (``ranking.embed.load_encoder``). Returns the index id, or
    ``None`` when nothing is published yet.
    """
    import gc

    from ranking.search import warm_up

    ready = warm_up(settings)
    gc.collect()
    gc.freeze()
    return ready


def create_app(settings: Settings | None = None) -> FastAPI:
    """The litpulse FastAPI application.

    Args:
        settings: The settings (default :meth:`Settings.from_env`).
    """
    from fastapi import Depends, FastAPI

    from litpulse.app.alerts_api import add_alert_routes
    from litpulse.app.apiguard import ApiGuard
    from litpulse.app.models_api import router as models_router
    from litpulse.app.similar_api import router as similar_router

    settings = settings or Settings.from_env()
    resolved = settings

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _warn_if_read_only(resolved)
        _catch_up(resolved)
        yield

    app = FastAPI(
        title="litpulse",
        version=__version__,
        description=(
            "Search a continuously updated PubMed index ranked by semantic similarity, "
            "recency and citation impact, with an explanation of every score. Reading is "
            "open; writing (feedback) needs an API token: `Authorization: Bearer <token>`, "
            "from `litpulse tokens create --expert NAME`."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.add_middleware(
        ApiGuard,
        max_body_bytes=settings.api_max_body_bytes,
        rate=settings.api_rate_per_second,
        burst=settings.api_rate_burst,
        unmetered=("/static/",),
    )
    _install_error_handlers(app)

    def engine() -> Any:
        return db.connect(resolved)

    _add_search_routes(app, settings, engine, Depends(_search_spec_dependency(settings)))
    _add_store_routes(app, settings, engine, Depends(_expert_dependency(engine)))
    add_alert_routes(app, settings, engine, Depends(_expert_dependency(engine)))
    app.include_router(models_router)  # /models, /models/plot.png (litpulse.app.models_api)
    app.include_router(similar_router)
    _add_page_routes(app)
    return app


def _expert_dependency(engine: Callable[[], Any]) -> Callable[..., TokenInfo]:
    """The dependency naming the expert of a request's API token (401/403 otherwise)."""
    from fastapi import HTTPException, Security
    from fastapi.security import HTTPBearer

    from litpulse.app.tokens import TokenState, any_active_token, verify_token

    bearer = HTTPBearer(
        auto_error=False,
        description="An API token from `litpulse tokens create --expert NAME`.",
    )
    bearer_dep = Security(bearer)

    def expert(creds: Any = bearer_dep) -> TokenInfo:  # HTTPAuthorizationCredentials | None
        """The expert of the request's API token; 401/403 otherwise."""
        eng = engine()
        unauthorized = {"WWW-Authenticate": "Bearer"}
        if creds is not None:
            info = verify_token(eng, creds.credentials)
            if info is not None and info.state is TokenState.ACTIVE:
                return info
            if info is not None:
                raise HTTPException(401, "this API token was revoked", headers=unauthorized)
        if not any_active_token(eng):
            raise HTTPException(
                403,
                "this server is read-only: no API token exists; an admin creates one with "
                "`litpulse tokens create --expert NAME`",
            )
        if creds is None:
            raise HTTPException(
                401, "an API token is required: send `Authorization: Bearer <token>`",
                headers=unauthorized,
            )
        raise HTTPException(401, "unknown API token", headers=unauthorized)

    return expert


def _search_spec_dependency(settings: Settings) -> Callable[..., SearchSpec]:
    """The dependency reading the query parameters of /search and /export."""
    from fastapi import Query

    from ranking.scoring import ScoringOptions
    from ranking.search import SearchFilters

    q_param = Query(
        ..., min_length=1, max_length=512, pattern=NOT_BLANK,
        description='Free-text query; a phrase in double quotes is required ("heart failure"), '
                    "a word or phrase after a capital NOT excluded, an author required "
                    "(asthma AND Smith J[au]; [1au] first, [lastau] last author).",
    )
    mesh_param = Query(
        None, max_length=MAX_TERMS,
        description=f"MeSH descriptor the article must carry (repeatable, {MAX_TERMS} at most).",
    )
    type_param = Query(
        None, alias="type", max_length=MAX_TERMS,
        description=f"Publication type the article must have (repeatable, {MAX_TERMS} at most).",
    )
    lang_param = Query(
        None, max_length=32, description="Language: a code (eng) or a name (English)."
    )
    abstract_param = Query(None, description="true: only with an abstract; false: only without.")
    retracted_param = Query(False, description="Also return retracted articles.")

    def ranged(setting: str, description: str) -> Any:
        """An option standing for a setting, within its range (the CLI's and the
        setting's: ``ScoringOptions`` holds every query to it)."""
        low, high = bounds(setting)
        return Query(None, ge=low, le=high, allow_inf_nan=False, description=description)

    def weight(name: str, setting: str) -> Any:
        return ranged(setting, f"Weight of {name} (at least one weight must be > 0, else "
                               "400).")

    half_life_param = ranged("recency_half_life_days", "Recency half-life in days.")
    lexical_param = ranged(
        "weight_lexical",
        "Share of the lexical (BM25) part of the relevance in hybrid mode, 0..1.",
    )
    mode_param = Query(
        "hybrid", description="Indexes asked: hybrid (both, fused), semantic (vectors) or "
        "lexical (BM25).",
    )
    sort_param = Query(
        "score", description="score: best first; date: the same results newest first "
        "(ties and undated last by PMID, highest first).",
    )

    def search_spec(
        q: str = q_param,
        since: SinceParam = None,
        until: UntilParam = None,
        mesh: list[Term] | None = mesh_param,
        ptype: list[Term] | None = type_param,
        language: str | None = lang_param,
        has_abstract: bool | None = abstract_param,
        include_retracted: bool = retracted_param,
        w_sim: float | None = weight("similarity", "weight_similarity"),
        w_recency: float | None = weight("recency", "weight_recency"),
        w_citation: float | None = weight("citation impact", "weight_citation"),
        half_life: float | None = half_life_param,
        w_lexical: float | None = lexical_param,
        mode: Literal["hybrid", "semantic", "lexical"] = mode_param,
        sort: Literal["score", "date"] = sort_param,
    ) -> SearchSpec:
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
            weights={"similarity": w_sim, "recency": w_recency, "citation": w_citation,
                     "lexical": w_lexical},
            half_life_days=half_life,
        )
        return SearchSpec(query=q, filters=filters, options=options, mode=mode, sort=sort)

    return search_spec


def _add_search_routes(
    app: FastAPI, settings: Settings, engine: Callable[[], Any], spec_dep: Any
) -> None:
    """``GET /search`` and ``GET /export``."""
    from fastapi import Query
    from fastapi.responses import Response

    from ranking.search import MAX_OFFSET, MAX_PAGE, run_search

    def do_search(spec: SearchSpec, k: int, offset: int | None = None) -> SearchResult:
        return run_search(settings, spec.query, k=k, filters=spec.filters,
                          options=spec.options, engine=engine(), mode=spec.mode,
                          sort=spec.sort, offset=offset)

    @app.get("/search", summary="Ranked search with explanations", responses=_responses(400))
    def search_endpoint(
        k: int = Query(10, ge=1, le=MAX_PAGE, description="Number of results."),
        offset: int = Query(0, ge=0, le=MAX_OFFSET, description="Results to skip: pages "
                            "of one query, whatever their k, are disjoint slices of one "
                            "list of results (in blocks of LITPULSE_RERANK_CANDIDATES, "
                            "each ranked from a deeper candidate list)."),
        spec: SearchSpec = spec_dep,
    ) -> dict[str, Any]:
        result = do_search(spec, k, offset)
        return result.to_dict()

    export_types = {
        "application/x-research-info-systems": {"schema": {"type": "string"}},
        "application/x-bibtex": {"schema": {"type": "string"}},
        "text/csv": {"schema": {"type": "string"}},
    }

    @app.get(
        "/export",
        summary="Download the results of a search as RIS, BibTeX or CSV",
        response_class=Response,
        responses={200: {"description": "The file, as an attachment.", "content": export_types},
                   **_responses(400)},
    )
    def export_endpoint(
        format: Literal["ris", "bibtex", "csv"] = Query("ris", description="File format."),
        k: int = Query(50, ge=1, le=500, description="Number of results."),
        offset: int = Query(0, ge=0, le=MAX_OFFSET, description="Results to skip: the "
                            "file holds exactly the page `GET /search` shows for the same "
                            "parameters."),
        spec: SearchSpec = spec_dep,
    ) -> Any:  # a Response (annotations are resolved in this module's globals)
        from litpulse.app.export import FORMATS, load_export_rows, render

        # the page /search answers (its blocks, its date order), not a search of its own
        result = do_search(spec, k, offset)
        rows = load_export_rows(engine(), [h.pmid for h in result.hits])
        media, ext = FORMATS[format]
        body = render(format, list(result.hits), rows, first_rank=offset + 1)
        filename = f"litpulse-{_slug(result.query)}.{ext}"
        return Response(
            content=body.encode("utf-8"),
            media_type=f"{media}; charset=utf-8",
            # what GET /search says of its page: files exported page by page tell whether
            # they are slices of one list (the same three) or not
            headers={"Content-Disposition": f'attachment; filename="{filename}"',
                     "X-Litpulse-Index-Version": result.index_version,
                     "X-Litpulse-Store-Version": result.store_version,
                     "X-Litpulse-Has-More": "true" if result.has_more else "false",
                     # more match past the deepest offset: said, never left as the end
                     "X-Litpulse-Truncated": "true" if result.truncated else "false"},
        )  # fmt: skip


def _add_store_routes(
    app: FastAPI, settings: Settings, engine: Callable[[], Any], expert_dep: Any
) -> None:
    """``GET /articles/{pmid}``, ``GET /articles/doi/{doi}``, ``GET /status`` and
    ``POST /feedback``."""
    from fastapi import HTTPException, Path

    @app.get("/articles/{pmid}", summary="One stored article", responses=_responses(404, 410))
    def article_endpoint(
        pmid: int = Path(..., ge=1, le=MAX_PMID, description="PubMed id."),
    ) -> Any:
        return _article_answer(_get_article(engine(), pmid))

    doi_answers = _responses(400, 404, 410)
    doi_answers[400] = {**doi_answers[400], "description": (
        "The path is not a DOI (a DOI reads 10.NNNN/suffix; `doi:` or a doi.org link "
        "in front is read too).")}  # fmt: skip

    @app.get("/articles/doi/{doi:path}", summary="One stored article, by DOI",
             responses=doi_answers)
    def article_by_doi_endpoint(doi: str) -> Any:
        """The live article with this DOI (any case; ``doi:`` or a ``doi.org`` link
        aside), as ``GET /articles/{pmid}`` gives it, with ``same_doi``: the other PMIDs
        PubMed gave that DOI (an erratum, a duplicate); 410 when only a withdrawn article
        had it."""
        from ingest.store import Store

        return _article_answer(Store(engine()).article_by_doi(doi))

    @app.get("/status", summary="Freshness of the store, index and model",
             responses=_responses())
    def status_endpoint() -> dict[str, Any]:
        return _status(settings, engine())

    @app.post(
        "/feedback",
        summary="Record a relevance judgement (API token required)",
        status_code=201,
        responses=_responses(400, 401, 403, 404),
    )
    def feedback_endpoint(item: FeedbackIn, who: Any = expert_dep) -> FeedbackOut:
        from ranking.search import checked_query
        from retrain.feedback import FeedbackSource, clean_expert, record_feedback

        checked_query(item.query)  # a query no search answers has no result to judge
        if item.user is not None and clean_expert(item.user) != clean_expert(who.expert, new=False):
            raise HTTPException(
                403, f"`user` must be the API token's expert ({who.expert!r}) or be left out"
            )
        fid = record_feedback(
            settings, query=item.query, pmid=item.pmid, relevant=item.relevant,
            user=who.expert, source=FeedbackSource.API, token_id=who.id,
            max_per_hour=settings.api_feedback_per_hour, engine=engine(),
        )
        return FeedbackOut(id=fid, pmid=item.pmid, relevant=item.relevant, expert=who.expert)


def _add_page_routes(app: FastAPI) -> None:
    """The search page ``GET /`` and its ``/static/`` files."""
    from fastapi import HTTPException
    from fastapi.responses import HTMLResponse, Response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> Any:
        return HTMLResponse(_web_file("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Any:
        media = STATIC_FILES.get(name)
        if media is None:
            raise HTTPException(404, "Not Found")
        return Response(_web_file(name), media_type=media,
                        headers={"Cache-Control": "no-cache"})
