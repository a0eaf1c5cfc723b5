"""The score formula: recency half-life, citation transform, neutral values, weights."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from ranking.scoring import (
    NEUTRAL_CITATION,
    NEUTRAL_RECENCY,
    ScoringOptions,
    citation_value,
    recency_value,
    saturate,
    score_article,
)

TODAY = dt.date(2025, 6, 1)


def opts(**kw: object) -> ScoringOptions:
    base: dict[str, object] = {
        "w_similarity": 1.0,
        "w_recency": 0.15,
        "w_citation": 0.10,
        "half_life_days": 365.0,
        "today": TODAY,
    }
    base.update(kw)
    return ScoringOptions(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("half_life", [30.0, 365.0, 1000.0])
def test_recency_halves_at_each_half_life(half_life: float) -> None:
    o = opts(half_life_days=half_life)
    age = int(half_life)
    assert recency_value(TODAY, o)[0] == 1.0
    one = recency_value(TODAY - dt.timedelta(days=age), o)[0]
    two = recency_value(TODAY - dt.timedelta(days=2 * age), o)[0]
    assert one == pytest.approx(0.5 ** (age / half_life))
    assert two == pytest.approx(one * one)
    if age == half_life:
        assert one == 0.5
        assert two == 0.25


def test_recency_future_dates_count_as_today_and_missing_is_neutral() -> None:
    o = opts()
    assert recency_value(TODAY + dt.timedelta(days=40), o)[0] == 1.0
    value, info = recency_value(None, o)
    assert value == NEUTRAL_RECENCY == 0.5
    assert info["source"] == "missing"
    # an ISO string works as well as a date
    assert recency_value("2024-06-01", o)[0] == pytest.approx(0.5)


def test_recency_strictly_decreases_with_age() -> None:
    o = opts()
    values = [recency_value(TODAY - dt.timedelta(days=d), o)[0] for d in range(0, 3000, 97)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert all(0 < v <= 1 for v in values)


def test_rcr_transform_is_monotone_bounded_and_typical_is_half() -> None:
    rcrs = [0.0, 0.01, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0, 1e6]
    values = [citation_value({"relative_citation_ratio": r}, opts())[0] for r in rcrs]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert all(0 <= v < 1 for v in values)
    assert citation_value({"relative_citation_ratio": 1.0}, opts())[0] == pytest.approx(0.5)
    assert saturate(-3.0, 1.0) == 0.0  # nonsense negatives count as zero


def test_citation_falls_back_rcr_then_per_year_then_corpus_then_neutral() -> None:
    o = opts()
    both = {"relative_citation_ratio": 3.0, "citations_per_year": 0.0}
    assert citation_value(both, o)[1]["source"] == "icite_rcr"
    per_year = citation_value({"citations_per_year": 2.0}, o)
    assert per_year[1]["source"] == "icite_citations_per_year"
    assert per_year[0] == pytest.approx(0.5)
    count = citation_value(
        {"citation_count": 8, "best_date": TODAY - dt.timedelta(days=4 * 365)}, o
    )
    assert count[1]["source"] == "icite_citation_count"
    assert count[0] == pytest.approx(saturate(8 / (4 * 365 / 365.25), 2.0))
    local = citation_value({"cited_by_in_corpus": 3, "best_date": TODAY}, o)
    assert local[1]["source"] == "in_corpus"
    assert NEUTRAL_CITATION < local[0] < 1
    assert local[1]["text"].startswith("cited 3 times inside this corpus")
    once = citation_value({"cited_by_in_corpus": 1, "best_date": TODAY}, o)
    assert once[1]["text"].startswith("cited once inside this corpus")
    # no data at all, or zero citations inside a partial corpus: neutral
    for row in ({}, {"cited_by_in_corpus": 0}, {"relative_citation_ratio": None}):
        value, info = citation_value(row, o)
        assert value == NEUTRAL_CITATION == 0.5
        assert info["source"] == "missing"


def test_in_corpus_citations_only_raise_and_grow_with_count() -> None:
    o = opts()
    day = TODAY - dt.timedelta(days=730)
    values = [
        citation_value({"cited_by_in_corpus": n, "best_date": day}, o)[0] for n in range(0, 8)
    ]
    assert values[0] == NEUTRAL_CITATION
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < 1


def test_explanation_contributions_sum_to_score() -> None:
    o = opts(w_similarity=0.7, w_recency=0.4, w_citation=0.3, half_life_days=200)
    row = {"best_date": dt.date(2023, 2, 3), "relative_citation_ratio": 2.5}
    s = score_article(0.62, row, o)
    comps = s.explanation["components"]
    assert set(comps) == {"similarity", "recency", "citation"}
    assert math.fsum(c["contribution"] for c in comps.values()) == pytest.approx(s.score)
    assert s.explanation["score"] == s.score
    for name, value in (("similarity", s.similarity), ("recency", s.recency),
                        ("citation", s.citation)):
        c = comps[name]
        assert c["value"] == value
        assert c["contribution"] == pytest.approx(c["weight"] * c["value"])
        assert isinstance(c["text"], str) and c["text"]
    assert comps["recency"]["raw"] == "2023-02-03"
    assert comps["recency"]["age_days"] == (TODAY - dt.date(2023, 2, 3)).days
    assert comps["citation"]["raw"] == 2.5
    assert comps["similarity"]["weight"] == 0.7
    assert "=" in s.explanation["text"]


def test_weights_change_the_order_as_expected() -> None:
    old_classic = {"best_date": dt.date(2005, 1, 1), "relative_citation_ratio": 12.0}
    new_paper = {"best_date": TODAY - dt.timedelta(days=10), "relative_citation_ratio": None}

    def order(o: ScoringOptions) -> list[str]:
        scored = {
            "classic": score_article(0.60, old_classic, o).score,
            "new": score_article(0.58, new_paper, o).score,
        }
        return sorted(scored, key=lambda name: -scored[name])

    # similarity alone: the (slightly) closer classic wins
    assert order(opts(w_similarity=1, w_recency=0, w_citation=0)) == ["classic", "new"]
    # recency weight lifts the new paper
    assert order(opts(w_similarity=1, w_recency=0.5, w_citation=0)) == ["new", "classic"]
    # citation weight brings the classic back
    assert order(opts(w_similarity=1, w_recency=0.2, w_citation=1.0)) == ["classic", "new"]
    # a longer half-life shrinks the recency gap
    short = score_article(0.5, old_classic, opts(half_life_days=100)).recency
    long = score_article(0.5, old_classic, opts(half_life_days=10000)).recency
    assert short < long


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("w_similarity", -0.1),
        ("w_recency", float("nan")),
        ("w_citation", float("inf")),
        ("half_life_days", 0),
        ("half_life_days", -5),
        ("half_life_days", float("inf")),
        ("w_recency", "0.2"),
    ],
)
def test_invalid_options_raise_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        opts(**{field: value})


def test_all_zero_weights_rejected() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        opts(w_similarity=0, w_recency=0, w_citation=0)


def test_options_from_settings_and_overrides() -> None:
    s = Settings.from_env(
        {}, weight_similarity=0.9, weight_recency=0.3, weight_citation=0.2,
        recency_half_life_days=180.0,
    )
    o = ScoringOptions.from_settings(s)
    assert (o.w_similarity, o.w_recency, o.w_citation, o.half_life_days) == (0.9, 0.3, 0.2, 180)
    o2 = ScoringOptions.from_settings(
        s, weights={"recency": 0.0, "citation": None}, half_life_days=30
    )
    assert (o2.w_similarity, o2.w_recency, o2.w_citation, o2.half_life_days) == (
        0.9, 0.0, 0.2, 30.0,
    )
    with pytest.raises(ConfigError, match="unknown weight"):
        ScoringOptions.from_settings(s, weights={"popularity": 1.0})
