"""Watching the model learn: ``/models`` (JSON or the page) and ``/models/plot.png``.

===========================  ===========================================================
``GET /models``              every model version, oldest first, with its lineage, the
                             pairs it trained on, its metrics against its parent and the
                             base model, the gate's reasons and its promotions and
                             rollbacks (:func:`retrain.report.model_history`) as JSON; a
                             browser (``Accept: text/html``) gets the page
                             ``litpulse/app/web/models.html`` instead
``GET /models/plot.png``     the metrics over versions (:mod:`litpulse.app.models_plot`)
===========================  ===========================================================

Reading is open like ``/search``. The router is included by
:func:`litpulse.app.api.create_app`; it reads the settings from ``app.state.settings``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from litpulse.core import db
from litpulse.core.settings import Settings

__all__ = ["router", "wants_html", "PAGE_FILES"]

router = APIRouter(tags=["models"])

#: Files of the page, served under ``/models/``, with their media types.
PAGE_FILES = {
    "models.js": "text/javascript; charset=utf-8",
    "models.css": "text/css; charset=utf-8",
}


def _web_file(name: str) -> str:
    return resources.files("litpulse.app").joinpath("web", name).read_text(encoding="utf-8")


def _history(request: Request) -> list[Any]:
    from retrain.report import model_history

    settings: Settings = request.app.state.settings
    return model_history(settings, engine=db.connect(settings))


def wants_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for HTML before JSON (a browser navigating)."""
    best: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        best[media.lower()] = max(q, best.get(media.lower(), 0.0))
    html = best.get("text/html", 0.0)
    return html > 0 and html >= best.get("application/json", 0.0)


@router.get(
    "/models",
    summary="Model versions: lineage, training pairs, metrics, gate decisions",
    responses={
        200: {
            "description": "JSON: `{active, count, versions: [...]}`; HTML (the "
            "page) when the client prefers text/html."
        }
    },
)
def models_endpoint(request: Request) -> Response:
    """Every model version, oldest first (``litpulse models report --json``)."""
    from retrain.report import history_dict

    if wants_html(request.headers.get("accept")):
        return HTMLResponse(_web_file("models.html"), headers={"Vary": "Accept"})
    return JSONResponse(history_dict(_history(request)), headers={"Vary": "Accept"})


@router.get(
    "/models/plot.png",
    summary="Plot of the held-out metrics over model versions",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "A PNG image."}},
)
def models_plot(request: Request) -> Response:
    """One panel per metric, one point per version (the base model's values dashed)."""
    from litpulse.app.models_plot import render_plot

    return Response(
        render_plot(_history(request)),
        media_type="image/png",
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/models/{name}", include_in_schema=False)
def models_page_file(name: str) -> Response:
    """The page's script and style sheet."""
    media = PAGE_FILES.get(name)
    if media is None:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    return Response(_web_file(name), media_type=media, headers={"Cache-Control": "no-cache"})
