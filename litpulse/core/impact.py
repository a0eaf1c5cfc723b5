"""Recency and citation impact: the one home of the formulas ranking and retraining share.

* :func:`recency_decay` — ``0.5 ** (age_days / half_life_days)``: 1.0 today, 0.5 one
  half-life ago; a negative age (a future date) counts as today.
* :func:`saturate` — ``ln(1 + x) / (ln(1 + x) + ln(1 + ref))``: 0 at 0, 0.5 at ``ref``,
  strictly increasing, always below 1.
* :func:`citation_impact` — the best citation evidence known, mapped into [0, 1) so that a
  typical article lands on :data:`NEUTRAL_CITATION`: iCite's Relative Citation Ratio
  (``saturate(rcr, 1)``), else citations per year (``saturate(cpy, 2)``; from a count ÷
  years when only a count is known; for an article under :data:`YOUNG_DAYS` old, which
  has had no time to be cited, it can only raise the value above neutral), else in-corpus
  citations per year, which can only raise the value (``0.5 + 0.5 · rate / (rate + 1)``),
  else neutral.
* :func:`row_citation_impact` — :func:`citation_impact` of an article row's columns
  (:data:`CITATION_COLUMNS`): the evidence ranking scores with, read once for everyone
  who weighs articles by it (ranking's score, retraining's sampling weight).

Example:
    >>> recency_decay(365, 365.0)
    0.5
    >>> citation_impact(rcr=1.0).value
    0.5
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NEUTRAL_CITATION",
    "RCR_REFERENCE",
    "CPY_REFERENCE",
    "CORPUS_REFERENCE",
    "CITATION_COLUMNS",
    "DAYS_PER_YEAR",
    "YOUNG_DAYS",
    "CitationImpact",
    "age_days",
    "citation_impact",
    "row_citation_impact",
    "recency_decay",
    "saturate",
    "years_of",
]

#: Citation value of an article without any citation data (a typical article).
NEUTRAL_CITATION = 0.5
#: RCR that maps to 0.5 (iCite: 1.0 is the field's median NIH-funded paper).
RCR_REFERENCE = 1.0
#: Citations per year that map to 0.5 when no RCR is known.
CPY_REFERENCE = 2.0
#: In-corpus citations per year at which the in-corpus value is 0.75.
CORPUS_REFERENCE = 1.0
#: Days per year when ages become citation rates.
DAYS_PER_YEAR = 365.25
#: Days under which an article's citation count says nothing against it (iCite has no RCR
#: for it yet either): its value from citations per year is at least neutral.
YOUNG_DAYS = 365


def recency_decay(age_days: float, half_life_days: float) -> float:
    """``0.5 ** (age_days / half_life_days)``; negative ages count as 0.

    Raises:
        ValueError: ``half_life_days`` is not positive.
    """
    if not half_life_days > 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days!r}")
    return float(0.5 ** (max(0.0, age_days) / half_life_days))


def saturate(x: float, reference: float) -> float:
    """``ln(1+x) / (ln(1+x) + ln(1+reference))``: 0 at 0, 0.5 at ``reference``, < 1.

    Negative inputs count as 0.
    """
    lx = math.log1p(max(0.0, x))
    return lx / (lx + math.log1p(reference))


def age_days(day: dt.date | None, today: dt.date) -> int | None:
    """Whole days from ``day`` to ``today`` (0 for a future day); ``None`` without a day."""
    return None if day is None else max(0, (today - day).days)


def years_of(age: int | None) -> float:
    """An age in years for citation rates: at least 1; 1 when the age is unknown."""
    return 1.0 if age is None else max(1.0, age / DAYS_PER_YEAR)


@dataclass(frozen=True)
class CitationImpact:
    """A citation-impact value and where it came from.

    Attributes:
        value: In [0, 1); :data:`NEUTRAL_CITATION` when nothing is known.
        source: ``icite_rcr``, ``icite_citations_per_year``, ``icite_citation_count``,
            ``in_corpus`` or ``missing``.
        raw: The input used (RCR, citations per year, in-corpus count), or ``None``.
        rate_per_year: In-corpus citations per year (``in_corpus`` only).
    """

    value: float
    source: str
    raw: float | None = None
    rate_per_year: float | None = None


def citation_impact(
    *,
    rcr: float | None = None,
    citations_per_year: float | None = None,
    citation_count: float | None = None,
    cited_by_in_corpus: float | None = None,
    age: int | None = None,
) -> CitationImpact:
    """The citation impact from the best evidence available (see the module docstring).

    Args:
        rcr: iCite Relative Citation Ratio.
        citations_per_year: iCite citations per year.
        citation_count: iCite citation count (used when no rate is known).
        cited_by_in_corpus: Citations from inside our corpus.
        age: The article's age in days (``None``: unknown; rates then use one year).
    """
    if rcr is not None:
        return CitationImpact(saturate(rcr, RCR_REFERENCE), "icite_rcr", rcr)
    source = "icite_citations_per_year"
    if citations_per_year is None and citation_count is not None:
        citations_per_year = citation_count / years_of(age)
        source = "icite_citation_count"
    if citations_per_year is not None:
        value = saturate(citations_per_year, CPY_REFERENCE)
        if age is not None and age < YOUNG_DAYS:  # too young for few citations to count
            value = max(NEUTRAL_CITATION, value)
        return CitationImpact(value, source, citations_per_year)
    local = cited_by_in_corpus or 0.0
    if local > 0:
        rate = local / years_of(age)
        value = NEUTRAL_CITATION + (1 - NEUTRAL_CITATION) * rate / (rate + CORPUS_REFERENCE)
        return CitationImpact(value, "in_corpus", local, rate)
    return CitationImpact(NEUTRAL_CITATION, "missing")


#: The ``articles`` columns the citation impact reads, in :func:`citation_impact`'s order.
CITATION_COLUMNS = (
    "relative_citation_ratio",
    "citations_per_year",
    "citation_count",
    "cited_by_in_corpus",
)


def _number(value: Any) -> float | None:
    """A finite number >= 0 from a column value; anything else (NULL, text, NaN, a
    negative count or ratio: impossible, written before ingest refused it) is unknown."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def row_citation_impact(row: Mapping[str, Any], age: int | None) -> CitationImpact:
    """:func:`citation_impact` of an article row ``age`` days old (``None``: no date).

    Args:
        row: The article's columns; read are :data:`CITATION_COLUMNS` (a missing key, NULL
            or a value that is no finite number counts as unknown).
        age: Its age in days (:func:`age_days`).
    """
    rcr, cpy, count, local = (_number(row.get(c)) for c in CITATION_COLUMNS)
    return citation_impact(
        rcr=rcr, citations_per_year=cpy, citation_count=count, cited_by_in_corpus=local, age=age
    )
