"""Hostile review (session 33d) of PubMed dates and their use: ``ingest/dates.py``
(``pub_date_of``, ``parse_medline_date``, ``period_end``), the period end the store keeps
(``ingest/rows.py``: ``pub_period_end``) and the date filters of search
(``ranking/search.py``: ``SearchFilters.clauses``, ``_best_in``, ``_issue_in``), the
recency weight (``ranking/scoring.py``, ``litpulse/core/impact.py``) and the data-quality
gate's days (``ingest/quality.py``, ``ingest.dates.covered_days``/``searched_days``).

Every test drives the real code: PubMed XML through :func:`ingest.parse.parse_bytes`,
:class:`ingest.store.Store` on SQLite and PostgreSQL, a real published index
(:func:`ranking.refresh.refresh_index` with the tests' tiny encoder), then
:func:`ranking.search.search` (the function behind ``litpulse search``, ``GET /search``,
``/export`` and the saved-search digest). The records are written with the helper of
tests/ranking/test_dates_review.py (all share the words "sepsis biomarker"; the corpus is
far smaller than ``LITPULSE_RERANK_CANDIDATES``, so a search with ``k=100`` returns exactly
the articles that pass its filters). The README's promise under test: ``--since``/``--until``
take an article in "when its best date (recency's) is, or any day of its issue's period
is, as far as PubMed gives it ... a period reaches its last month: ``2019 Nov-Dec`` is in a
December range, ``2000 Spring`` in May". Each defect was a strict xfail asserting the
correct behaviour; all three are fixed (each says how) and the tests now pass plainly.

Defects:

X1 (high) **A ``PubDate`` with a numeric month is taken in by every date range that starts
   later in its year.** ``<PubDate><Year>2019</Year><Month>03</Month><Day>05</Day>`` (the
   form ``pub_date_of`` reads on purpose, ``_small_int(month_t)``; the one the project's own
   demo generator and loopback emulator write for every record,
   ``litpulse/app/demo/pubmed_xml.py``; ``tests/fixtures/pubmed_edge_cases.xml`` holds
   ``<Month>09</Month>``) is stored with ``pub_period_end`` = 2019-12-31, as if the issue
   ran to the end of the year: ``search(since="2019-12-01", until="2019-12-31")`` returns
   the article published on 5 March 2019 (and every other numeric-month article of 2019);
   the same record with ``<Month>Mar</Month>`` is rightly left out. Silent wrong answers
   to every ``--since`` on such records, and to saved searches' digests.
   At fault: ``ingest/dates.py::period_end``: its month is found among the *alphabetic*
   tokens of ``pd.raw`` only (``"2019 03 05"`` has none), so ``month`` stays ``None`` and
   the end becomes 31 December, which is "beyond what its start says". Fix: a period end
   only from a text that names one (a dash or a season), or read the month/day tokens
   numerically as well; at least ``end`` must be ``None`` when the raw text is the plain
   ``Year Month Day`` of the ``PubDate`` elements (the stored rows need the column
   recomputed once).
   (test_x1_a_numeric_month_pubdate_is_not_in_a_range_after_its_day)
   FIXED: ``period_end`` gives an end only to a text naming a period (a dash or a
   season: ``ingest.dates.names_period``/``PERIOD_MARKS``, the marks the store's catch-up
   selects rows by too), so ``"2019 03 05"`` has none; stores of earlier releases have
   their rows' periods read again once (``Store.upgrade_period_ends``, checkpoint
   ``store/period_dates``, a page of PMIDs at a time, on the first write or API start),
   and the catch-up of rows written since its mark now recomputes their ends instead of
   only filling empty ones (tests/ingest/test_store.py tests the upgrade on wrong rows).
X2 (medium) **A period that runs into the next year without naming it is cut to its first
   month: the article is dropped from the ranges of its later months.** ``<MedlineDate>
   2001 Fall-Winter</MedlineDate>`` (Fall 2001 to Winter 2001-2002; the form of NLM's
   ``2000 Spring-Summer``, and ``1977-1978 Fall-Winter`` is real) and ``<MedlineDate>2019
   Dec-Jan</MedlineDate>`` (a December 2019-January 2020 issue) get no period end:
   ``period_end`` takes the end month (Winter → February, January) in the start's year,
   finds it *before* the start and returns ``None``. ``search(since="2001-10-01",
   until="2001-12-31")`` leaves out the Fall-Winter 2001 issue (only September counts),
   and a January 2020 range leaves out the Dec-Jan issue: both silently, though the README
   promises "a period reaches its last month". At fault: ``ingest/dates.py::period_end``
   (``end_year = max(years)`` with no wrap-around). Fix: an end month (or season end)
   before the start month in the same written year belongs to the next year
   (``end_year + 1``), as ``parse_medline_date`` already reads ``Winter 2023-2024``.
   (test_x2_a_period_running_into_the_next_year_meets_a_range_of_its_later_months)
   FIXED: an end month (or season's end) before the start's month, with no later year
   written, is in the next year: ``2001 Fall-Winter`` → 2002-02-28, ``2019 Dec-Jan`` →
   2020-01-31 (stored rows: the same one-time re-reading as X1).
X3 (medium) **EFetch's rendering of a month range, ``<Year>1994</Year><Season>Sep-Dec
   </Season>``, loses the month: the article is dated 1 January and matches ranges
   outside its period.** NCBI's EFetch serves a baseline ``<MedlineDate>1994 Sep-Dec
   </MedlineDate>`` as ``Year`` + ``Season`` holding the month range (seen for PMIDs
   8000234 and 152567 by a project validating against EFetch); the nightly ingests
   through EFetch. ``_partial_date`` looks the whole Season text up as one season word
   (``_month_or_season("Sep-Dec")`` → nothing): ``pub_month`` is ``None``, ``best_date``
   (recency, sort by date) is 1994-01-01 instead of 1994-09-01, ``pub_period_end`` is
   ``None``, and ``search(since="1994-01-01", until="1994-06-30")`` returns it. The same
   record from an update file (``MedlineDate``) is stored as September: what is stored
   depends on the path it came by, and a revision fetched by EFetch rewrites a right date
   wrong. At fault: ``ingest/dates.py::_partial_date`` (Season not read as the MedlineDate
   text it stands for). Fix: a Season that is not a single season word is read as
   ``parse_medline_date(f"{year} {season}")``.
   (test_x3_a_season_holding_a_month_range_is_read_as_the_medline_date_it_renders)
   FIXED: ``_partial_date`` reads a ``Season`` (or ``Month``) text naming no single
   season or month as the MedlineDate it renders (``parse_medline_date("1994 Sep-Dec")``):
   both forms give one ``PartialDate``, so one month, best date (recency, sort) and
   period end; rows stored by earlier releases without the month gain it, their best date
   and their end in the one-time re-reading (``ingest.store.reread_periods``).

Attacks that held (scratch scripts, not kept as tests):

* ``covered_days`` and ``searched_days`` against a reference counting each quarter hour's
  Bethesda date, 3,000 random windows of up to three days around the March and November
  2024 DST switches: the covered days agree exactly, and every covered day is searched
  (UTC dates of the window reach at least as far as its Eastern ones on both ends).
* ``parse_medline_date``/``period_end`` on ``1998 Dec-1999 Jan``, ``2000 Dec 23- 30``,
  ``1995 Jul 31-Aug 1``, ``2019 Dec 28-2020 Jan 4``, ``1977-1978 Fall-Winter``,
  ``1985-1986 Winter-Spring``, ``1990 Fall-1991 Spring``, ``2011-2012``, leap days
  (``Winter 2023-2024`` → 2024-02-29, ``1998-1999 Winter`` → 1999-02-28).
* Recency: half-lives down to 5e-324 and up to the API's 1e6, future dates, no date:
  always within [0, 1], never NaN; the API bounds ``half_life`` (``gt=0, le=1e6``,
  finite) and ``ScoringOptions`` refuses non-finite values.
* Two-digit and non-ASCII years are unknown (the next date in line stands in); an ArticleDate
  month or day in other Unicode digits reads as its value; impossible days are dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from ingest.parse import parse_bytes
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.settings import Settings
from ranking import embed as em
from ranking.refresh import refresh_index
from ranking.search import search
from tests.ranking.test_dates_review import QUERY, _article
from tests.tiny_encoder import build_tiny_encoder

#: pmid -> the PubDate children (no ArticleDate, no entrez date: the issue date is all)
CORPUS: dict[int, str] = {
    # X1: a numeric month, with and without a day; its twin spelled as PubMed usually does
    3301: "<Year>2019</Year><Month>03</Month><Day>05</Day>",
    3302: "<Year>2019</Year><Month>03</Month>",
    3303: "<Year>2019</Year><Month>Mar</Month><Day>05</Day>",
    # X2: periods running into the next year without naming it
    3311: "<MedlineDate>2001 Fall-Winter</MedlineDate>",
    3312: "<MedlineDate>2019 Dec-Jan</MedlineDate>",
    # X3: EFetch's rendering of a month range, and the baseline's
    3321: "<Year>1994</Year><Season>Sep-Dec</Season>",
    3322: "<MedlineDate>1994 Sep-Dec</MedlineDate>",
}


def _records() -> dict[int, Record]:
    body = "".join(_article(pmid, pub, "", None) for pmid, pub in CORPUS.items())
    xml = f'<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>{body}</PubmedArticleSet>'
    items = parse_bytes(xml.encode(), source_ref=SourceRef("file", "dates33d.xml"))
    out = {i.pmid: i for i in items if isinstance(i, Record)}
    assert set(out) == set(CORPUS), items
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-dates33d"), max_seq_length=32)


@pytest.fixture(autouse=True)
def _fresh_encoders() -> Iterator[None]:
    em.clear_cache()
    yield
    em.clear_cache()


@pytest.fixture
def world(settings: Settings, tiny: str) -> Settings:
    """The corpus stored through the ingest and a real index published over it (SQLite
    and PostgreSQL)."""
    s = settings.replace(model=tiny, max_seq_length=32, search_server_url="")
    Store(db.connect(s)).apply(list(_records().values()))
    report = refresh_index(s)
    assert report.published and report.size == len(CORPUS)
    return s


def found(s: Settings, **filters: Any) -> set[int]:
    """The PMIDs of every article passing ``filters``."""
    return {h.pmid for h in search(s, QUERY, k=100, **filters)}


def test_x1_a_numeric_month_pubdate_is_not_in_a_range_after_its_day(world: Settings) -> None:
    # the control: the same date with the month spelled out is rightly left out
    assert 3303 not in found(world, since="2019-12-01", until="2019-12-31")
    assert {3301, 3302, 3303} <= found(world, since="2019-03-01", until="2019-03-31")
    december = found(world, since="2019-12-01", until="2019-12-31")
    assert not {3301, 3302} & december, sorted(december)
    assert not {3301, 3302} & found(world, since="2019-04-01"), "published in March 2019"


def test_x2_a_period_running_into_the_next_year_meets_a_range_of_its_later_months(
    world: Settings,
) -> None:
    # the start month counts today
    assert 3311 in found(world, since="2001-09-01", until="2001-09-30")
    assert 3312 in found(world, since="2019-12-01", until="2019-12-31")
    # Fall-Winter 2001 runs at least through December 2001; Dec-Jan through January 2020
    assert 3311 in found(world, since="2001-10-01", until="2001-12-31")
    assert 3312 in found(world, since="2020-01-01", until="2020-01-31")


def test_x3_a_season_holding_a_month_range_is_read_as_the_medline_date_it_renders(
    world: Settings,
) -> None:
    # the baseline's MedlineDate is read right: September to December
    assert 3322 not in found(world, since="1994-01-01", until="1994-06-30")
    assert 3322 in found(world, since="1994-12-01", until="1994-12-31")
    spring = found(world, since="1994-01-01", until="1994-06-30")
    assert 3321 not in spring, "a September-December 1994 issue in a January-June range"
    assert 3321 in found(world, since="1994-12-01", until="1994-12-31")
    hits = {h.pmid: h for h in search(world, QUERY, k=100)}
    assert hits[3321].best_date == hits[3322].best_date == dt.date(1994, 9, 1)
    records = _records()
    efetch, baseline = records[3321].pub_date, records[3322].pub_date
    assert (efetch.year, efetch.month) == (baseline.year, baseline.month) == (1994, 9)
