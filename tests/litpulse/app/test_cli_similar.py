"""``litpulse similar PMID``: table and JSON output, errors."""

from __future__ import annotations

import argparse
import json

import pytest

from litpulse.app.cli import similar as cli
from litpulse.core.errors import ConfigError, NotFoundError
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


def test_similar_hits_carry_the_recency_and_citation_search_gives_them(real: Settings) -> None:
    from ranking.search import search

    hits = similar_articles(real, 201, k=20, include_retracted=True).hits
    found = {h.pmid: h for h in search(real, "gene editing CRISPR malaria vaccine children",
                                       k=50, include_retracted=True)}  # fmt: skip
    both = [h for h in hits if h.pmid in found]
    assert len(both) >= 3, [h.pmid for h in hits]
    for h in both:  # the same article, the same day, the same settings: the same values
        assert (h.recency, h.citation) == (found[h.pmid].recency, found[h.pmid].citation)
        assert 0.0 < h.recency <= 1.0 and 0.0 < h.citation < 1.0
        assert h.explanation["recency"]["value"] == h.recency
        assert h.explanation["citation"]["value"] == h.citation
        assert h.score == h.similarity  # still ordered by cosine alone


@pytest.mark.parametrize(("value", "shown"), [(-0.0004, "0.000"), (-0.0, "0.000"),
                                              (-0.0006, "-0.001"), (0.12345, "0.123")])
def test_scores_print_without_a_negative_zero(value: float, shown: str) -> None:
    from litpulse.app.cli._common import fixed

    assert fixed(value) == shown


def test_similar_pages_are_disjoint_slices_of_one_list(
    real: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """``offset`` pages through the neighbours: pages of any size are slices of the one
    list (cosine, then PMID), ``has_more`` says whether a next page holds more, and the
    CLI numbers the rows of a page from the offset and says how to go on."""
    whole = similar_articles(real, 201, k=100, include_retracted=True)
    ranked = [h.pmid for h in whole.hits]
    assert not whole.has_more and len(ranked) > 10
    seen: list[int] = []
    offset = 0
    while True:
        page = similar_articles(real, 201, k=4, offset=offset, include_retracted=True)
        assert page.offset == offset
        seen += [h.pmid for h in page.hits]
        if not page.has_more:
            break
        offset += len(page.hits)
    assert seen == ranked
    assert similar_articles(real, 201, k=3, offset=5).to_dict()["offset"] == 5
    with pytest.raises(ConfigError):
        similar_articles(real, 201, k=3, offset=-1)

    args = parse(["similar", "201", "-k", "3", "--offset", "3"])
    assert args.func(args, real) == 0
    out, err = capsys.readouterr()
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["4"], ["5"], ["6"])]
    assert [int(r[1]) for r in rows] == [h.pmid for h in similar_articles(real, 201, k=6).hits[3:]]
    assert "--offset 6" in err
