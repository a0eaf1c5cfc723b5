"""The HTTP side of saved searches: ``/alerts`` and the Atom feeds ``/feeds/{id}.atom``.

=============================  ====================================================
``GET /alerts``                every saved search (JSON), with its feed path
``POST /alerts``               save a search (API token; its expert owns it)
``GET /alerts/{id}``           one saved search and its newest matches
``PATCH /alerts/{id}``         change its query, threshold or filters in place (API token
                               of its owner; its id, feed, matches and watermark kept)
``DELETE /alerts/{id}``        remove it and its matches (API token of its owner)
``GET /feeds/{id}.atom``       its matches as an Atom 1.0 feed (``?page=N``: 200 a page,
                               newest first; each page links the next, RFC 5005)
=============================  ====================================================

Reading is open like ``/search``; writing needs an API token like ``POST /feedback``
(the same dependency: 401 without or with an unknown token, 403 on a read-only server).
One expert keeps at most ``LITPULSE_ALERTS_PER_EXPERT`` saved searches (every digest runs
each): past it a save is answered 403, saying so.

Example:
    >>> add_alert_routes(app, settings, engine, Depends(expert))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request  # resolved in this module's globals (annotations)
from pydantic import BaseModel, ConfigDict, Field

from litpulse.app.api import MAX_TERMS, NOT_BLANK, ErrorOut, IsoDate, Term, _responses
from litpulse.core.settings import Settings
from litpulse.core.widths import ID_MAX

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["FiltersIn", "SavedSearchEdit", "SavedSearchIn", "add_alert_routes"]

#: Newest matches shown by ``GET /alerts/{id}``.
RECENT_MATCHES = 50


class FiltersIn(BaseModel):
    """The filters of a saved search (those of ``/search``)."""

    model_config = ConfigDict(extra="forbid")

    since: IsoDate | None = Field(None, description="Earliest publication date.")
    until: IsoDate | None = Field(None, description="Latest publication date.")
    mesh: list[Term] = Field(
        default_factory=list,
        max_length=MAX_TERMS,
        description="MeSH descriptors the article must all carry.",
    )
    publication_type: list[Term] = Field(
        default_factory=list,
        max_length=MAX_TERMS,
        description="Publication types it must all have.",
    )
    language: str | None = Field(
        None, max_length=32, description="Language: a code (eng) or a name (English)."
    )
    # strict, as POST /feedback: "yes" or 1 is no boolean (JSON true/false only)
    has_abstract: bool | None = Field(
        None, strict=True, description="true: only with an abstract."
    )
    include_retracted: bool = Field(
        False, strict=True, description="Also match retracted articles."
    )

    def to_filters(self) -> Any:
        """The :class:`ranking.search.SearchFilters` these fields say."""
        from ranking.search import SearchFilters

        return SearchFilters(
            since=self.since,
            until=self.until,
            mesh=tuple(self.mesh),
            publication_type=tuple(self.publication_type),
            language=self.language,
            has_abstract=self.has_abstract,
            include_retracted=self.include_retracted,
        )


_QUERY_DESCRIPTION = ('Free-text query; a phrase in double quotes is required ("heart '
                      'failure"), a word or phrase after a capital NOT excluded, an author '
                      "required (asthma AND Smith J[au]).")
_MIN_SCORE_DESCRIPTION = "Score a new article needs (default LITPULSE_DIGEST_MIN_SCORE)."


class SavedSearchIn(FiltersIn):
    """A search to save: the query and filters of ``/search``, a name and a threshold."""

    name: str = Field(
        min_length=1,
        max_length=255,
        pattern=NOT_BLANK,
        description="A unique name (not only digits).",
    )
    query: str = Field(
        min_length=1, max_length=512, pattern=NOT_BLANK, description=_QUERY_DESCRIPTION
    )
    min_score: float | None = Field(  # strict: true or "0.7" is no threshold (a number)
        None, ge=0, le=1000, allow_inf_nan=False, strict=True,
        description=_MIN_SCORE_DESCRIPTION,
    )


class SavedSearchEdit(BaseModel):
    """What to change in a saved search; what is left out stays."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(
        None, min_length=1, max_length=512, pattern=NOT_BLANK, description=_QUERY_DESCRIPTION
    )
    min_score: float | None = Field(
        None, ge=0, le=1000, allow_inf_nan=False, strict=True,
        description="Score a new article needs; null: back to LITPULSE_DIGEST_MIN_SCORE.",
    )
    filters: FiltersIn | None = Field(
        None, description="Its filters, all replaced by these ({} clears them)."
    )


def add_alert_routes(
    app: FastAPI, settings: Settings, engine: Callable[[], Any], expert_dep: Any
) -> None:
    """Add the routes of the module docstring to ``app``."""
    from fastapi import HTTPException, Path, Query
    from fastapi.responses import Response

    from litpulse.pipeline.digest import FEED_PAGES_MAX, feed_for, matches_of
    from litpulse.pipeline.saved_searches import (
        KEEP,
        SearchLimitError,
        add_search,
        edit_search,
        get_search,
        list_searches,
        remove_search,
    )
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorOut, "description": "No saved search has this id."}
    }

    def id_param() -> Any:
        return Path(..., ge=1, le=ID_MAX, description="The saved search's id.")

    @app.get("/alerts", summary="Saved searches", responses=_responses())
    def list_endpoint() -> list[dict[str, Any]]:
        return [s.to_dict() for s in list_searches(settings, engine=engine())]

    @app.post(
        "/alerts",
        summary="Save a search (API token required)",
        status_code=201,
        responses=_responses(400, 401, 403),
    )
    def add_endpoint(item: SavedSearchIn, who: Any = expert_dep) -> dict[str, Any]:
        try:
            saved = add_search(
                settings,
                name=item.name,
                query=item.query,
                filters=item.to_filters(),
                min_score=item.min_score,
                owner=who.expert,
                owner_limit=settings.alerts_per_expert,
                engine=engine(),
            )
        except SearchLimitError as exc:
            raise HTTPException(403, str(exc)) from None
        return saved.to_dict()

    @app.get(
        "/alerts/{search_id}",
        summary="One saved search and its newest matches",
        responses={**_responses(), **not_found},
    )
    def show_endpoint(search_id: int = id_param()) -> dict[str, Any]:
        eng = engine()
        found = get_search(settings, search_id, engine=eng)
        recent = matches_of(eng, found.id, limit=RECENT_MATCHES)
        return {**found.to_dict(), "recent_matches": [m.to_dict() for m in recent]}

    def owned(search_id: int, who: Any, eng: Any) -> Any:
        found = get_search(settings, search_id, engine=eng)
        if found.owner != who.expert:
            raise HTTPException(403, f"saved search {found.id} belongs to {found.owner!r}")
        return found

    @app.patch(
        "/alerts/{search_id}",
        summary="Change a saved search in place (its owner's API token)",
        responses={**_responses(400, 401, 403), **not_found},
    )
    def edit_endpoint(
        change: SavedSearchEdit, search_id: int = id_param(), who: Any = expert_dep
    ) -> dict[str, Any]:
        eng = engine()
        found = owned(search_id, who, eng)
        # a threshold left out stays; null sets it back to LITPULSE_DIGEST_MIN_SCORE
        threshold = change.min_score if "min_score" in change.model_fields_set else KEEP
        return edit_search(
            settings, found.id, query=change.query, min_score=threshold, owner=who.expert,
            filters=None if change.filters is None else change.filters.to_filters(), engine=eng,
        ).to_dict()  # fmt: skip

    @app.delete(
        "/alerts/{search_id}",
        summary="Remove a saved search and its matches (its owner's API token)",
        responses={**_responses(401, 403), **not_found},
    )
    def remove_endpoint(search_id: int = id_param(), who: Any = expert_dep) -> dict[str, Any]:
        eng = engine()
        return remove_search(settings, owned(search_id, who, eng).id, engine=eng).to_dict()

    @app.get(
        "/feeds/{search_id}.atom",
        summary="A saved search's matches as an Atom feed",
        response_class=Response,
        responses={
            200: {
                "description": "Atom 1.0",
                "content": {"application/atom+xml": {"schema": {"type": "string"}}},
            },
            **_responses(),
            **not_found,
        },
    )
    def feed_endpoint(
        request: Request,
        search_id: int = id_param(),
        page: int = Query(1, ge=1, le=FEED_PAGES_MAX, description="Page of its matches, "
                          "newest first (RFC 5005: each page links the next)"),
        after: int | None = Query(None, ge=1, le=2**63 - 1, description="Read the "
                                  "matches after this match (each page's next link gives it: "
                                  "a reader following them reads each match once while "
                                  "matches come and go)"),
    ) -> Any:
        own = (f"{settings.public_url}/feeds/{search_id}.atom" if settings.public_url
               else str(request.url.replace(query="")))  # fmt: skip
        body = feed_for(
            settings, search_id, self_url=own, engine=engine(),
            page=page, after=after,
        )  # fmt: skip
        return Response(body, media_type="application/atom+xml; charset=utf-8")
