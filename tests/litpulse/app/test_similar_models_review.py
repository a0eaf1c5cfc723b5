"""Review of "similar articles" (``GET /similar/{pmid}``, ``litpulse similar``) and of the
model registry as users meet it (``/models``, ``/models/plot.png``, ``litpulse models``).

The tests marked "found by the review, fixed" were strict xfails first; the rest are
properties checked to hold.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from litpulse.app.cli import main
from litpulse.app.cli import models as models_cli
from litpulse.app.cli import similar as similar_cli
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from ranking.similar import similar_articles
from tests.litpulse.app.apistore import UNLIMITED, clone_store
from tests.ranking.corpus import ARTICLES, HashIndex, article_rows, load_corpus, real_corpus

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402
from litpulse.app.models_plot import metric_series, plot_size, render_plot  # noqa: E402
from retrain import registry  # noqa: E402
from retrain.report import model_history  # noqa: E402
from tests.retrain.histories import evaluation, register_history, role, training  # noqa: E402


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return real_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def store(real: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """This module's own copy of the corpus and its published index (it is changed)."""
    return clone_store(real, tmp_path_factory.mktemp("review") / "home", **UNLIMITED)


@pytest.fixture(scope="module")
def client(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        yield c


def _cli_similar(argv: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict:
    parser = argparse.ArgumentParser(prog="litpulse")
    sub = parser.add_subparsers(dest="command", required=True)
    similar_cli.register(sub)
    args = parser.parse_args(["similar", *argv, "--json"])
    assert args.func(args, settings) == 0
    return json.loads(capsys.readouterr().out)


def _models(argv: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="litpulse")
    sub = parser.add_subparsers(dest="command", required=True)
    models_cli.register(sub)
    args = parser.parse_args(["models", *argv])
    assert args.func(args, settings) == 0
    return capsys.readouterr().out


def _strict_json(text: str) -> object:
    """``json.loads`` that refuses NaN/Infinity, as every other JSON parser does."""

    def refuse(name: str) -> object:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ similar: what holds


def test_similar_never_lists_itself_deleted_or_retracted(client: TestClient) -> None:
    live = set(ARTICLES) - {106}
    for pmid in (101, 105, 201, 403):
        for k in (1, 3, 50):
            body = client.get(f"/similar/{pmid}", params={"k": k}).json()
            got = [h["pmid"] for h in body["results"]]
            assert len(got) == len(set(got)) == min(k, len(live - {pmid, 105}))
            assert pmid not in got and 106 not in got and 105 not in got
            sims = [h["similarity"] for h in body["results"]]
            assert sims == sorted(sims, reverse=True)
            assert all(h["score"] == h["similarity"] for h in body["results"])
        with_r = client.get(f"/similar/{pmid}", params={"k": 50, "include_retracted": True})
        got = {h["pmid"] for h in with_r.json()["results"]}
        assert got == live - {pmid} and 106 not in got


def test_api_and_cli_list_the_same(client: TestClient, store: Settings,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    for pmid, k, extra in ((201, 5, []), (101, 18, ["--include-retracted"])):
        cli = _cli_similar([str(pmid), "-k", str(k), *extra], store, capsys)
        api = client.get(f"/similar/{pmid}", params={"k": k,
                                                     "include_retracted": bool(extra)}).json()
        assert [h["pmid"] for h in cli["results"]] == [h["pmid"] for h in api["results"]]
        assert cli["index_version"] == api["index_version"]


def test_unknown_deleted_or_unindexed_source_is_404_or_exit_1(
    client: TestClient, store: Settings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # stored after the index was published: the article exists, but has no vector yet
    row = dict(next(r for r in article_rows() if r["pmid"] == 201), pmid=777, doi="10.1/777")
    with db.connect(store).begin() as conn:
        conn.execute(insert(articles), [row])
    assert client.get("/articles/777").status_code == 200
    r = client.get("/similar/777")
    assert r.status_code == 404 and "not embedded yet" in r.json()["detail"]
    for pmid in (106, 999999):  # deleted (its vector still in the index), unknown
        assert client.get(f"/similar/{pmid}").status_code == 404
    monkeypatch.setenv("LITPULSE_HOME", str(store.home))
    assert main(["similar", "106"]) == 1
    assert main(["similar", "777"]) == 1
    assert "not embedded yet" in capsys.readouterr().err


def test_neighbour_deleted_or_retracted_after_publish_is_left_out(
    real: Settings, tmp_path: Path
) -> None:
    s = clone_store(real, tmp_path / "home", **UNLIMITED)
    before = [h.pmid for h in similar_articles(s, 201, k=5).hits]
    assert {202, 203} <= set(before)
    with db.connect(s).begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == 203).values(is_deleted=True))
        conn.execute(update(articles).where(articles.c.pmid == 202).values(is_retracted=True))
    after = [h.pmid for h in similar_articles(s, 201, k=5).hits]
    assert len(after) == 5 and not {202, 203} & set(after)
    flagged = similar_articles(s, 201, k=5, include_retracted=True).hits
    assert [h.retracted for h in flagged if h.pmid == 202] == [True]
    assert 203 not in [h.pmid for h in flagged]


@pytest.mark.parametrize("k", [0, -1, 101])
def test_cli_k_out_of_range_is_a_clear_error(
    real: Settings, k: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError):
        similar_articles(real, 201, k=k)
    monkeypatch.setenv("LITPULSE_HOME", str(real.home))
    assert main(["similar", "201", "-k", str(k)]) == 2
    assert "k must be" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["/similar/0", "/similar/-3", "/similar/abc",
                                 "/similar/201?k=0", "/similar/201?k=abc",
                                 "/similar/99999999999999999999"])
def test_api_bad_input_is_422(client: TestClient, url: str) -> None:
    assert client.get(url).status_code == 422


# ------------------------------------------------------------- similar: confirmed defects


# found by the review, fixed: CLI passes an unbounded PMID to SQLite: OverflowError traceback
# instead of a clear error (API caps at MAX_PMID)
def test_cli_huge_pmid_is_a_clear_error_not_a_traceback(
    real: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(real.home))
    try:
        rc = main(["similar", "99999999999999999999"])
    except SystemExit as exc:  # argparse refusing it is a clear error too
        rc = exc.code
    assert rc in (1, 2)


# found by the review, fixed: k bounds differ: GET /similar allows 1..50, `litpulse similar`
# (which says it is the same) allows 1..100
@pytest.mark.parametrize("k", [51, 100])
def test_api_and_cli_accept_the_same_k(
    client: TestClient, store: Settings, k: int, capsys: pytest.CaptureFixture[str]
) -> None:
    api_ok = client.get("/similar/201", params={"k": k}).status_code == 200
    try:
        _cli_similar(["201", "-k", str(k)], store, capsys)
        cli_ok = True
    except ConfigError:
        cli_ok = False
    assert api_ok == cli_ok


# found by the review, fixed: an article with neither title nor abstract is the zero vector
# ('similar to nothing'), yet similar lists k arbitrary articles at cosine 0, ordered by PMID
def test_a_zero_vector_article_is_similar_to_nothing(sqlite_settings: Settings) -> None:
    engine = db.connect(sqlite_settings)
    load_corpus(engine)
    row = dict(next(r for r in article_rows() if r["pmid"] == 503), pmid=601, title="",
               abstract="", has_abstract=False, text_hash="blank", doi="10.1/601")
    with engine.begin() as conn:
        conn.execute(insert(articles), [row])
    index = HashIndex.of()
    index = HashIndex({**index.vectors, 601: 0 * index.vectors[503]})
    hits = similar_articles(sqlite_settings, 601, k=5, engine=engine, index=index).hits
    assert [(h.pmid, h.similarity) for h in hits] == []


# ---------------------------------------------------------------- models: what holds


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size


def _register(settings: Settings, tag: str, parent: str | None, *, fresh: float = 0.5,
              fresh_queries: int = 20, train: dict | None = None) -> str:
    vid = registry.new_version_id((tag * 6)[:6])
    cand = role(vid, fresh, 0.9)
    cand["fresh"]["queries"] = fresh_queries
    if fresh_queries == 0:  # what retrieval_metrics records for an empty held-out set
        cand["fresh"].update({"recall@10": 0.0, "mrr@10": 0.0})
    registry.register(
        settings, id=vid, adapter_path=f"/{tag}", adapter_sha256=(tag * 64)[:64], parent_id=parent,
        window_start=None, window_end=None, pair_counts={"title_abstract": 3},
        options={"batch_size": 2}, training=train or training(3, 10),
        metrics=evaluation(cand, role("base", 0.3, 0.8), role("base", 0.3, 0.8), False, ["no"]),
        status="rejected",
    )
    return vid


def test_plot_with_one_and_many_versions(sqlite_settings: Settings,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    a = _register(sqlite_settings, "a", None)
    history = model_history(sqlite_settings)
    assert _png_size(render_plot(history)) == plot_size(1, 2)
    for i in range(25):
        _register(sqlite_settings, f"{i:06x}", a)
    history = model_history(sqlite_settings)
    assert len(history) == 26
    assert _png_size(render_plot(history)) == plot_size(26, 2)
    doc = _strict_json(_models(["report", "--json"], sqlite_settings, capsys))
    assert doc["count"] == 26 and doc["active"] == "base"  # type: ignore[index]


def test_models_json_page_and_cli_agree_after_rollback(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = register_history(sqlite_settings)
    with TestClient(create_app(sqlite_settings), raise_server_exceptions=False) as c:
        api = c.get("/models").json()
        assert c.get("/models/plot.png").status_code == 200
    cli = _strict_json(_models(["report", "--json"], sqlite_settings, capsys))
    assert api == cli
    assert [v["status"] for v in api["versions"]] == ["rejected", "rejected"]
    text = _models(["report"], sqlite_settings, capsys)
    assert "rolled back by tester" in text and "rejected by the gate" in text


# --------------------------------------------------------------- models: confirmed defects


def _diverged(settings: Settings) -> None:
    """A retrain whose LoRA run diverged: NaN losses (recorded as they came), recall 0."""
    t = training(3, 10)
    t["first_loss"] = t["last_loss"] = math.nan
    _register(settings, "d", None, fresh=0.0, train=t)


# found by the review, fixed: a version whose training loss is NaN (a diverged retrain) makes GET
# /models answer 500 (JSONResponse refuses NaN), so the models page cannot load
def test_models_json_survives_a_diverged_version(sqlite_settings: Settings) -> None:
    register_history(sqlite_settings)
    _diverged(sqlite_settings)
    with TestClient(create_app(sqlite_settings), raise_server_exceptions=False) as c:
        r = c.get("/models", headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert _strict_json(r.text)["count"] == 3  # type: ignore[index]


# found by the review, fixed: `models report --json` prints NaN for a diverged version's loss: not
# JSON (json.dump allow_nan default)
def test_models_report_json_is_json_with_a_diverged_version(
    sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _diverged(sqlite_settings)
    doc = _strict_json(_models(["report", "--json"], sqlite_settings, capsys))
    assert doc["count"] == 1  # type: ignore[index]


# found by the review, fixed: an empty held-out set (queries 0, 'not measured' by the gate) is
# drawn as recall 0.0 on the plot instead of no point
def test_plot_leaves_out_an_unmeasured_held_out_set(sqlite_settings: Settings) -> None:
    _register(sqlite_settings, "a", None, fresh=0.6)
    _register(sqlite_settings, "b", None, fresh_queries=0)
    own = {(s.metric, s.heldout, s.role): s.values
           for s in metric_series(model_history(sqlite_settings))}
    first, second = own["recall@10", "fresh", "version"]
    assert first == 0.6 and math.isnan(second)
