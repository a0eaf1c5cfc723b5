"""``litpulse similar PMID``: table and JSON output, errors."""

from __future__ import annotations

import argparse
import json

import pytest

from litpulse.app.cli import similar as cli
from litpulse.core.errors import NotFoundError
from litpulse.core.settings import Settings
from ranking.similar import similar_articles
from tests.ranking.corpus import ARTICLES, real_corpus


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="litpulse")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return real_corpus(tmp_path_factory)


def test_similar_table_and_json(real: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["similar", "201", "-k", "3"])
    assert args.func(args, real) == 0
    out = capsys.readouterr().out
    want = [h.pmid for h in similar_articles(real, 201, k=3).hits]
    assert ARTICLES[201]["title"] in out.splitlines()[0]
    assert all(str(p) in out for p in want) and "cosine" in out
    args = parse(["similar", "101", "-k", "18", "--include-retracted", "--json"])
    assert args.func(args, real) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pmid"] == 101 and 101 not in [h["pmid"] for h in data["results"]]
    assert [h["retracted"] for h in data["results"] if h["pmid"] == 105] == [True]


def test_similar_errors(real: Settings) -> None:
    with pytest.raises(SystemExit):
        parse(["similar", "abc"])
    args = parse(["similar", "999999"])
    with pytest.raises(NotFoundError):
        args.func(args, real)
