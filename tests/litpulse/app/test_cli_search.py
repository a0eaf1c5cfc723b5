"""``litpulse search`` and ``litpulse serve`` argument handling and output."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from litpulse.app.cli import search as cli
from litpulse.core.settings import Settings
from tests.conftest import free_port
from tests.ranking.corpus import ARTICLES, real_corpus


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="litpulse")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return real_corpus(tmp_path_factory)


def test_search_table_and_explain(real: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["search", "malaria vaccine for children", "-k", "2", "--explain"])
    assert args.func(args, real) == 0
    out = capsys.readouterr().out
    assert "201" in out and ARTICLES[201]["title"][:40] in out
    assert "cosine similarity" in out and "half-life 365 days" in out


def test_search_by_author_names_the_author_in_the_results_line(
    real: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(["search", "malaria vaccine for children AND Doe J[au]", "-k", "2"])
    assert args.func(args, real) == 0
    out = capsys.readouterr().out
    assert "201" in out and "; authors Doe J[au]" in out
    args = parse(["search", "malaria AND Roe J[au]"])
    assert args.func(args, real) == 0
    assert "no results; authors Roe J[au]" in capsys.readouterr().err


def test_search_json_with_filters(real: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse([
        "search", "gene editing", "-k", "50", "--mesh", "Humans", "--type", "Journal Article",
        "--language", "eng", "--has-abstract", "--since", "2000-01-01", "--include-retracted",
        "--w-sim", "1", "--w-recency", "0.5", "--w-citation", "0", "--half-life", "90",
        "--json",
    ])
    assert args.func(args, real) == 0
    data = json.loads(capsys.readouterr().out)
    expected = {
        p for p, a in ARTICLES.items()
        if "Humans" in a["mesh"] and "Journal Article" in a["ptype"] and a["lang"] == "eng"
        and a["abstract"] and a["best"] and not a.get("deleted")
    }
    assert 105 in expected  # the retracted one, asked for
    assert {h["pmid"] for h in data["results"]} == expected
    assert data["options"]["half_life_days"] == 90 and data["options"]["w_citation"] == 0
    assert isinstance(data["results"][0]["explanation"], str)


@pytest.mark.parametrize(
    "argv",
    [["search", "x", "-k", "0"], ["search", "x", "--since", "soon"], ["search"],
     ["serve", "--port", "eighty"]],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2


def test_serve_defaults_to_loopback() -> None:
    args = parse(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_search_modes_and_sort_by_date(real: Settings,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["search", "CRISPR gene editing", "-k", "4", "--explain"])
    assert args.mode == "hybrid" and args.sort == "score"
    assert args.func(args, real) == 0
    out = capsys.readouterr().out
    assert "mode hybrid" in out and "BM25" in out and "crispr" in out and "[mix]" in out

    args = parse(["search", "CRISPR gene editing", "-k", "4", "--mode", "lexical",
                  "--sort", "date", "--json"])
    assert args.func(args, real) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "lexical" and data["sort"] == "date"
    dates = [h["best_date"] for h in data["results"] if h["best_date"]]
    assert dates == sorted(dates, reverse=True)
    assert all(h["bm25"] > 0 for h in data["results"])
    with pytest.raises(SystemExit):
        parse(["search", "x", "--mode", "fuzzy"])
def test_serve_loads_the_model_first_and_freezes_the_heap(
    real: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before uvicorn answers anything, the index and encoder are loaded and the loaded
    objects are out of the collector's sight (no ~0.4 s full collection mid-search)."""
    import gc

    import uvicorn

    from ranking import embed as em

    em.clear_cache()
    seen: dict[str, Any] = {}

    def fake_run(app: Any, **kw: Any) -> None:  # uvicorn itself is tested by `server`
        seen.update(frozen=gc.get_freeze_count(), encoders=len(em._ENCODERS), **kw)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    args = parse(["serve", "--port", "8765"])
    try:
        assert args.func(args, real) == 0
    finally:
        gc.unfreeze()
    assert seen["port"] == 8765 and seen["host"] == "127.0.0.1"
    assert seen["encoders"] == 1 and seen["frozen"] > 10_000
    assert f"index {_published(real)} loaded" in capsys.readouterr().err


# ------------------------------------------------------------ a running server answers


@pytest.fixture(scope="module")
def server(real: Settings) -> Iterator[str]:
    """A real ``litpulse serve`` app (uvicorn on 127.0.0.1, a free port) over ``real``."""
    import uvicorn

    from litpulse.app.api import create_app

    port = free_port()
    config = uvicorn.Config(create_app(real), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


def _search(settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    args = parse(["search", "malaria vaccine for children", "-k", "3", "--w-recency", "0.3",
                  "--json"])  # fmt: skip
    assert args.func(args, settings) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_search_asks_a_running_server(
    real: Settings, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    local, err = _search(real.replace(search_server_url=""), capsys)
    assert err == ""  # no server configured: in process, silently
    remote, err = _search(real.replace(search_server_url=server), capsys)
    assert f"answered by the server at {server}" in err
    assert remote["index_version"] == local["index_version"]
    assert remote["options"]["w_recency"] == 0.3  # the CLI's options travel
    assert [(h["pmid"], round(h["score"], 6)) for h in remote["results"]] == [
        (h["pmid"], round(h["score"], 6)) for h in local["results"]
    ]


@pytest.mark.parametrize("sort", ["score", "date"])
def test_in_process_answer_is_the_servers(
    real: Settings, sort: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a server the CLI ranks exactly as `GET /search` would (its first page), also
    when filters make the candidate lists widen (min-max fusion depends on the pool)."""
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    settings = real.replace(search_server_url="", rerank_candidates=4)
    query = ["CRISPR gene editing", "-k", "3", "--since", "2021-01-01", "--sort", sort]
    args = parse(["search", *query, "--json"])
    assert args.func(args, settings) == 0
    local = json.loads(capsys.readouterr().out)["results"]
    with TestClient(create_app(settings)) as client:
        params = {"q": query[0], "k": 3, "since": "2021-01-01", "sort": sort}
        remote = client.get("/search", params=params).json()["results"]
    assert local and [(h["pmid"], round(h["score"], 6)) for h in local] == [
        (h["pmid"], round(h["score"], 6)) for h in remote
    ]


def test_search_runs_in_process_without_a_server(
    real: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    data, err = _search(real.replace(search_server_url=url), capsys)
    assert f"no server at {url}: searching in process" in err
    assert data["results"] and data["results"][0]["pmid"] == 201


def test_search_ignores_a_server_of_another_store(
    real: Settings, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.core import db
    from ranking.refresh import refresh_index
    from tests.ranking.corpus import load_corpus

    other = Settings.from_env({}, home=tmp_path / "other", search_server_url=server)
    load_corpus(db.connect(other))
    mine = refresh_index(other)
    data, err = _search(other, capsys)
    assert f"serves index {_published(real)}, this store publishes {mine.id}" in err
    assert data["index_version"] == mine.id


def _published(settings: Settings) -> str:
    from ranking.index_files import open_published

    return str(open_published(settings).id)


# ------------------------------------------------------------------ _options_differ


def test_cli_takes_a_server_answer_ranked_the_same_way() -> None:
    from litpulse.app.cli.search import _options_differ
    from ranking.scoring import ScoringOptions

    ours = ScoringOptions(fusion="mix", rrf_k=10).to_dict()
    served = ScoringOptions(fusion="mix", rrf_k=60).to_dict()
    # with mix fusion rrf_k is not used (ranking.search._fuse: rrf only when fusion is
    # rrf): the answers are identical, yet the CLI loads the model to search in process
    assert _options_differ(served, ours) == ""
