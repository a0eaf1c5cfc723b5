"""Retraining's article weight takes the citation value ranking uses (found by a hostile
review): the same columns, the same formula, the same age."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import update

from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings

TODAY = dt.date(2025, 1, 1)


def test_retrain_weight_uses_icite_citations_per_year_like_ranking(settings: Settings) -> None:
    from ranking.scoring import ScoringOptions, citation_value
    from retrain.pairs import _load_articles, article_weight

    engine = db.connect(settings)
    src = SourceRef("generated", "review")
    Store(engine).apply([Record(pmid=9001, version=1, title="Young and much cited", source=src)])
    published = dt.date(2024, 6, 1)
    with engine.begin() as conn:
        conn.execute(
            update(articles)
            .where(articles.c.pmid == 9001)
            .values(
                best_date=published,
                relative_citation_ratio=None,
                citation_count=36,
                citations_per_year=60.0,
                icite_provisional=True,
                abstract="An abstract.",
            )
        )
    today = TODAY
    row = next(r for r in _load_articles(engine) if r.pmid == 9001)
    assert (row.citations_per_year, row.citation_count) == (60.0, 36)
    weight = article_weight(row, now=today, half_life_days=365)
    ranking, info = citation_value(
        {"citations_per_year": 60.0, "citation_count": 36, "best_date": published},
        ScoringOptions(today=today),
    )
    assert info["source"] == "icite_citations_per_year"
    recency = 0.5 ** ((today - published).days / 365)
    assert weight == pytest.approx(recency * (0.5 + ranking))
    assert weight > recency  # much cited: above a typical article, not "no data"


CASES: list[dict[str, Any]] = [
    {"relative_citation_ratio": 2.0, "citations_per_year": 60.0, "citation_count": 36},
    {"relative_citation_ratio": 0.0, "cited_by_in_corpus": 5},
    {"citations_per_year": 0.0},
    {"citation_count": 12},  # no rate: count ÷ years
    {"citation_count": 12, "best_date": None},  # ... of an article without a date
    {"cited_by_in_corpus": 3},
    {},
]


@pytest.mark.parametrize("case", CASES)
def test_retrain_citation_factor_is_rankings_value_for_every_source(case: dict[str, Any]) -> None:
    """Each evidence ranking can use (RCR, rate, count, in-corpus, none) weighs the same."""
    from ranking.scoring import ScoringOptions, citation_value
    from retrain.pairs import ArticleRow, article_weight

    best = case.get("best_date", dt.date(2022, 3, 1))
    row = ArticleRow(
        pmid=1, title="t", abstract="a", best_date=best,
        updated_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        relative_citation_ratio=case.get("relative_citation_ratio"),
        cited_by_in_corpus=case.get("cited_by_in_corpus", 0),
        citations_per_year=case.get("citations_per_year"),
        citation_count=case.get("citation_count"),
    )  # fmt: skip
    ranking, _ = citation_value({**case, "best_date": best}, ScoringOptions(today=TODAY))
    recency = 1.0 if best is None else 0.5 ** ((TODAY - best).days / 365)
    weight = article_weight(row, now=TODAY, half_life_days=365)
    assert weight == pytest.approx(recency * (0.5 + ranking))
