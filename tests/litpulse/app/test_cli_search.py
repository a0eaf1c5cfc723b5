"""``litpulse search`` and ``litpulse serve`` argument handling and output."""

from __future__ import annotations

import argparse
import json

import pytest

from litpulse.app.cli import search as cli
from litpulse.core.settings import Settings
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
    assert "mode hybrid" in out and "BM25" in out and "crispr" in out and "[rrf]" in out

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
