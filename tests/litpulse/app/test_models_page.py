"""``/models`` (JSON and the page), ``/models/plot.png`` and the plot's series."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.models_api import wants_html  # noqa: E402
from litpulse.app.models_plot import metric_series, plot_size, render_plot  # noqa: E402
from litpulse.core.settings import Settings  # noqa: E402
from retrain.report import model_history  # noqa: E402
from tests.retrain.histories import register_history  # noqa: E402


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # decodes the whole image
        assert img.format == "PNG"
        return img.size


def test_models_json(settings: Settings, client: TestClient) -> None:
    empty = client.get("/models")
    assert empty.status_code == 200 and empty.json() == {
        "active": "base",
        "count": 0,
        "versions": [],
    }
    a, b = register_history(settings)
    r = client.get("/models", headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["active"] == "base" and [v["id"] for v in doc["versions"]] == [a, b]
    va, vb = doc["versions"]
    assert vb["parent_id"] == a and va["children"] == [b]
    assert va["summary"] == "rolled back by tester" and vb["summary"] == "rejected by the gate"
    assert va["gate_reasons"] == ["fresh gained", "older held"]
    assert {c["relation"] for c in vb["comparisons"]} == {"parent", "base"}
    assert va["pairs"]["citation"] == 30 and va["training"]["epochs"] == 1.0
    assert "/models" in client.get("/openapi.json").json()["paths"]


def test_models_page_and_its_files(client: TestClient) -> None:
    page = client.get("/models", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<img id="models-plot" src="models/plot.png"' in html and 'alt="Line chart' in html
    assert "<caption" in html and html.count('<th scope="col">') == 7
    assert '<script src="models/models.js"' in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    js = client.get("/models/models.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "versions-body" in js.text  # the script fills the page's table
    assert client.get("/models/models.css").status_code == 200
    assert client.get("/models/nothing.txt").status_code == 404
    # the search page links to it
    assert 'href="models"' in client.get("/").text


def test_plot_one_point_per_version(settings: Settings, client: TestClient) -> None:
    empty = client.get("/models/plot.png")
    assert empty.status_code == 200 and empty.headers["content-type"] == "image/png"
    assert _png_size(empty.content) == plot_size(0, 1)

    register_history(settings)
    history = model_history(settings)
    series = metric_series(history)
    # fresh and older, recall@10 and mrr@10, each version and the base model
    assert {(s.metric, s.heldout, s.role) for s in series} == {
        (m, h, r)
        for m in ("recall@10", "mrr@10")
        for h in ("fresh", "older")
        for r in ("version", "base")
    }
    for s in series:
        assert s.versions == tuple(v.id for v in history)
    own = {(s.metric, s.heldout, s.role): s.values for s in series}
    assert own["recall@10", "fresh", "version"] == (0.6, 0.5)
    assert own["recall@10", "fresh", "base"] == (0.35, 0.3)
    assert own["mrr@10", "older", "version"] == (0.475, 0.45)

    r = client.get("/models/plot.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert _png_size(r.content) == plot_size(2, 2)


def test_a_metric_only_some_versions_have(settings: Settings) -> None:
    from retrain import registry
    from tests.retrain.histories import evaluation, role

    register_history(settings)
    vid = registry.new_version_id("c" * 6)
    registry.register(
        settings,
        id=vid,
        adapter_path="/c",
        adapter_sha256="c" * 64,
        parent_id=None,
        window_start=None,
        window_end=None,
        pair_counts={"title_abstract": 3},
        options={},
        metrics=evaluation(
            role(vid, 0.7, 0.9, querylike={"hit@5": 0.4}),
            role("base", 0.3, 0.8),
            role("base", 0.3, 0.8),
            False,
            ["no"],
        ),
    )
    history = model_history(settings)
    hit = [s for s in metric_series(history) if s.metric == "hit@5"]
    assert [s.role for s in hit] == ["version"]  # the base model has no such value
    assert math.isnan(hit[0].values[0]) and math.isnan(hit[0].values[1])
    assert hit[0].values[2] == 0.4
    assert _png_size(render_plot(history)) == plot_size(3, 3)


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0", False),
    ],
)
def test_wants_html(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html
