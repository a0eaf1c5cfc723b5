"""The shared recency and citation-impact formulas (litpulse.core.impact)."""

from __future__ import annotations

import math

import pytest

from litpulse.core.impact import (
    NEUTRAL_CITATION,
    age_days,
    citation_impact,
    recency_decay,
    saturate,
    years_of,
)


def test_recency_decay_halves_per_half_life() -> None:
    assert recency_decay(0, 365.0) == 1.0
    assert recency_decay(365, 365.0) == pytest.approx(0.5)
    assert recency_decay(730, 365.0) == pytest.approx(0.25)
    assert recency_decay(-10, 365.0) == 1.0  # a future date counts as today
    with pytest.raises(ValueError):
        recency_decay(1, 0.0)


def test_saturate_is_half_at_reference_and_bounded() -> None:
    assert saturate(0.0, 1.0) == 0.0
    assert saturate(-3.0, 1.0) == 0.0
    assert saturate(2.0, 2.0) == pytest.approx(0.5)
    assert saturate(3.0, 1.0) == pytest.approx(math.log(4) / (math.log(4) + math.log(2)))
    assert 0.97 < saturate(1e12, 1.0) < 1.0


def test_citation_impact_prefers_the_best_evidence() -> None:
    assert citation_impact(rcr=1.0, citations_per_year=50.0).source == "icite_rcr"
    assert citation_impact(rcr=1.0).value == pytest.approx(0.5)
    cpy = citation_impact(citations_per_year=2.0, citation_count=100.0)
    assert cpy.source == "icite_citations_per_year" and cpy.value == pytest.approx(0.5)
    count = citation_impact(citation_count=4.0, age=int(2 * 365.25))
    assert count.source == "icite_citation_count" and count.raw == pytest.approx(2.0, abs=0.01)
    local = citation_impact(cited_by_in_corpus=1.0, age=None)
    assert local.source == "in_corpus" and local.value == pytest.approx(0.75)
    assert local.rate_per_year == pytest.approx(1.0)
    assert citation_impact(cited_by_in_corpus=0).value == NEUTRAL_CITATION
    assert citation_impact().source == "missing"


def test_age_and_years() -> None:
    import datetime as dt

    today = dt.date(2025, 1, 1)
    assert age_days(None, today) is None
    assert age_days(dt.date(2025, 6, 1), today) == 0
    assert age_days(dt.date(2024, 1, 1), today) == 366
    assert years_of(None) == 1.0 and years_of(10) == 1.0
    assert years_of(int(3 * 365.25)) == pytest.approx(3.0, abs=0.01)
