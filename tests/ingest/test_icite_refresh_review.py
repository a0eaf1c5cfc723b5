"""Hostile review: the daily iCite API refresh and what ranking makes of its numbers.

The real client (:mod:`ingest.citations`, :mod:`ingest.http`) runs against the loopback
emulator (:mod:`tests.emulator`); where iCite has to misbehave in a way the emulator's
fault plan cannot express (one batch that always fails, duplicate records, records with
null metrics) a subclass of :class:`Emulator` here answers differently. Known defects are
``xfail(strict=True)``; the rest pin what holds.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select, update

from ingest.citations import REFRESH_POLICY, due_pmids, refresh_citations
from ingest.records import Deletion, Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import InvalidRequestError, TransientSourceError
from litpulse.core.impact import NEUTRAL_CITATION
from litpulse.core.schema import articles, quarantine
from litpulse.core.settings import Settings
from ranking.scoring import ScoringOptions, citation_value, score_article
from tests.emulator import Emulator, _HttpError

TODAY = dt.date.today()
SRC = SourceRef("generated", "icite-review")


# ----------------------------------------------------------------------------- helpers


@dataclass
class HostileIcite(Emulator):
    """The emulator, with an iCite that can always fail for one PMID, answer a PMID
    twice, or add records nobody asked for."""

    poison: dict[int, int] = field(default_factory=dict)  # pmid -> HTTP status
    extra: list[dict[str, Any]] = field(default_factory=list)  # appended to every answer

    def icite_json(self, params: dict[str, str]) -> bytes:
        pmids = [int(p) for p in re.split(r"[,\s]+", params.get("pmids", "")) if p.isdigit()]
        for p in pmids:
            if p in self.poison:
                raise _HttpError(self.poison[p], b"<html>iCite internal error</html>")
        doc = json.loads(super().icite_json(params))
        doc["data"].extend(self.extra)
        return json.dumps(doc).encode()


@pytest.fixture
def hostile() -> Iterator[HostileIcite]:
    emu = HostileIcite()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _fast(emu: Emulator, settings: Settings, **overrides: Any) -> Settings:
    """Settings pointed at ``emu``: 10 requests/s (a key, never sent to iCite), quick backoff."""
    values: dict[str, Any] = {"ncbi_api_key": "review-key", "max_retries": 2}
    values.update(overrides)
    return emu.configure(settings, **values)


def _seed(settings: Settings, dates: Mapping[int, dt.date | None], **kw: Any) -> None:
    Store(db.connect(settings)).apply(
        [Record(pmid=p, version=1, title=f"Article {p}", source=SRC, entrez_date=d, **kw)
         for p, d in dates.items()]
    )  # fmt: skip


def _row(settings: Settings, pmid: int) -> dict[str, Any]:
    with db.connect(settings).connect() as conn:
        return dict(conn.execute(select(articles).where(articles.c.pmid == pmid)).one()._mapping)


def _set(settings: Settings, pmid: int, **values: Any) -> None:
    with db.connect(settings).begin() as conn:
        conn.execute(update(articles).where(articles.c.pmid == pmid).values(**values))


def _asked(emu: Emulator) -> list[int]:
    """Every PMID sent to iCite in a request that got an answer (fault-free)."""
    out: list[int] = []
    for r in emu.requests("/icite"):
        if r.fault is None:
            out += [int(p) for p in r.params["pmids"].split(",")]
    return out


def _opts() -> ScoringOptions:
    return ScoringOptions(1.0, 0.2, 0.2, 365.0, today=TODAY)


# ------------------------------------------------ fewer PMIDs answered than asked


def test_unknown_pmid_is_asked_again_on_its_schedule_not_every_night_nor_never(
    emu: Emulator, settings: Settings
) -> None:
    """iCite does not know a brand-new PMID (1) nor an old one (2): both keep their
    in-corpus count, are not asked the next night, and are asked again once their
    interval (7 days young, 180 days old) has passed."""
    _seed(settings, {1: TODAY, 2: TODAY - dt.timedelta(days=4000)})
    _seed(settings, {3: TODAY}, references=(1,))  # 3 cites 1 inside the corpus
    emu.set_icite(3, citation_count=4, relative_citation_ratio=1.1)
    s = _fast(emu, settings)
    counts = refresh_citations(s)
    assert (counts.requested, counts.updated, counts.unknown) == (3, 1, 2)
    assert _row(s, 1)["cited_by_in_corpus"] == 1 and _row(s, 1)["citation_count"] is None
    engine = db.connect(s)
    now = db.utcnow()
    assert due_pmids(engine, now=now + dt.timedelta(days=1)) == []
    assert due_pmids(engine, now=now + dt.timedelta(days=8)) == [1, 3]
    assert due_pmids(engine, now=now + dt.timedelta(days=181)) == [1, 2, 3]


def test_records_nobody_asked_for_are_ignored_even_for_stored_articles(
    hostile: HostileIcite, sqlite_settings: Settings
) -> None:
    _seed(sqlite_settings, {10: TODAY, 11: TODAY})
    hostile.set_icite(10, citation_count=5)
    hostile.extra = [{"pmid": 11, "citation_count": 999, "relative_citation_ratio": 9.0}]
    s = _fast(hostile, sqlite_settings)
    counts = refresh_citations(s, pmids=[10])
    assert (counts.requested, counts.updated, counts.unknown) == (1, 1, 0)
    assert _row(s, 11)["citation_count"] is None and _row(s, 11)["icite_fetched_at"] is None
    assert _row(s, 10)["citation_count"] == 5


def test_a_duplicate_record_with_a_damaged_copy_is_counted_where_it_is_quarantined(
    hostile: HostileIcite, sqlite_settings: Settings
) -> None:
    _seed(sqlite_settings, {20: TODAY})
    hostile.set_icite(20, citation_count=7, relative_citation_ratio=1.5)
    hostile.extra = [{"pmid": 20, "citation_count": -7, "relative_citation_ratio": 1.5}]
    s = _fast(hostile, sqlite_settings)
    refresh_citations(s, pmids=[20])
    run = Store(db.connect(s)).runs(1)[0]
    with db.connect(s).connect() as conn:
        rows = conn.execute(select(quarantine).where(quarantine.c.run_id == run["id"])).all()
    assert len(rows) == 1  # the damaged copy is quarantined ...
    # ... and the run that quarantined it says so (ingest_runs counts drive `status` and
    # the data-quality gate)
    assert run["details"]["rejected"] == len(rows)


# ------------------------------------------------ nulls, provisional flags, years


def test_a_null_metric_does_not_erase_a_known_value(emu: Emulator, settings: Settings) -> None:
    """A PMID iCite leaves out keeps what it had; a PMID iCite answers with ``null``
    (unknown) for its count should not lose the count it had either: unknown is not 0
    and not "forget"."""
    _seed(settings, {30: TODAY - dt.timedelta(days=2000)})
    emu.set_icite(30, citation_count=50, relative_citation_ratio=2.0, citations_per_year=8.0)
    s = _fast(emu, settings)
    refresh_citations(s, pmids=[30])
    before = citation_value(_row(s, 30), _opts())[0]
    emu.set_icite(30, citation_count=None, relative_citation_ratio=None, citations_per_year=None)
    refresh_citations(s, pmids=[30])
    row = _row(s, 30)
    assert row["citation_count"] == 50
    assert citation_value(row, _opts())[0] == pytest.approx(before)


def test_year_zero_quarantines_the_record_and_the_article_keeps_its_values(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    _seed(sqlite_settings, {40: TODAY})
    emu.set_icite(40, citation_count=3, relative_citation_ratio=0.9)
    s = _fast(emu, sqlite_settings)
    refresh_citations(s, pmids=[40])
    emu.set_icite(40, citation_count=30, relative_citation_ratio=4.0, year=0)
    counts = refresh_citations(s, pmids=[40])
    assert counts.rejected == 1
    row = _row(s, 40)
    assert (row["citation_count"], row["relative_citation_ratio"]) == (3, 0.9)
    (q,) = Store(db.connect(s)).quarantined()
    assert q["pmid"] == 40 and "year" in q["reason"]


def test_a_year_far_in_the_future_is_as_impossible_as_year_zero(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    # 10000, not 2999: the bound is the years the PubMed parser stores (1000..9999), not
    # the clock, since iCite dates ahead-of-print records ahead (session 33b, B4)
    _seed(sqlite_settings, {41: TODAY})
    emu.set_icite(41, citation_count=3, relative_citation_ratio=0.9, year=10000)
    s = _fast(emu, sqlite_settings)
    counts = refresh_citations(s, pmids=[41])
    assert _row(s, 41)["icite_year"] != 10000
    assert counts.rejected == 1


def test_the_explanation_says_when_the_rcr_is_provisional(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    _seed(sqlite_settings, {50: TODAY - dt.timedelta(days=200)})
    emu.set_icite(50, citation_count=2, relative_citation_ratio=0.4, provisional="Yes")
    s = _fast(emu, sqlite_settings)
    refresh_citations(s, pmids=[50])
    row = _row(s, 50)
    assert row["icite_provisional"] is True
    _, info = citation_value(row, _opts())
    assert "provisional" in info["text"].lower()


# ------------------------------------------------ bad answers, 429, 5xx storms


@pytest.mark.parametrize("kind", ["garbage", "truncate", "429", "502"])
def test_a_bad_answer_is_retried_and_the_batch_lands_once(
    emu: Emulator, sqlite_settings: Settings, kind: str
) -> None:
    """An HTML page in a 200, a body cut short, 429 (Retry-After honoured), a 5xx."""
    _seed(sqlite_settings, {60: TODAY, 61: TODAY})
    emu.set_icite(60, citation_count=6)
    emu.set_icite(61, citation_count=7)
    emu.faults.add(kind, path="/icite", times=1, retry_after="0.6")
    s = _fast(emu, sqlite_settings)
    t0 = time.monotonic()
    counts = refresh_citations(s)
    took = time.monotonic() - t0
    assert (counts.updated, counts.unknown) == (2, 0)
    assert sorted(_asked(emu)) == [60, 61] and len(emu.requests("/icite")) == 2
    if kind == "429":
        assert took >= 0.6  # Retry-After waited for
    run = Store(db.connect(s)).runs(1)[0]
    assert run["status"] == "succeeded" and run["details"]["retries"] == 1


def test_a_body_that_is_not_json_is_retried(
    hostile: HostileIcite, sqlite_settings: Settings
) -> None:
    """A 200 whose JSON is malformed (cut mid-document, Content-Length matching)."""
    _seed(sqlite_settings, {62: TODAY})
    hostile.set_icite(62, citation_count=2)
    calls = {"n": 0}
    real = HostileIcite.icite_json

    def flaky(self: HostileIcite, params: dict[str, str]) -> bytes:
        calls["n"] += 1
        body = real(self, params)
        return body[: len(body) // 2] if calls["n"] == 1 else body

    hostile.icite_json = flaky.__get__(hostile)  # type: ignore[method-assign]
    s = _fast(hostile, sqlite_settings)
    assert refresh_citations(s).updated == 1 and calls["n"] == 2


def test_retry_after_beyond_the_cap_fails_at_once_and_keeps_earlier_batches(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    _seed(sqlite_settings, {70: TODAY, 71: TODAY, 72: TODAY})
    for p in (70, 71, 72):
        emu.set_icite(p, citation_count=p)
    emu.faults.add("429", path="/icite", times=1, after=1, retry_after="3600")
    s = _fast(emu, sqlite_settings, icite_batch=1)
    t0 = time.monotonic()
    with pytest.raises(TransientSourceError) as err:
        refresh_citations(s)
    assert time.monotonic() - t0 < 5 and err.value.retry_after == pytest.approx(3600, abs=5)
    assert _row(s, 70)["citation_count"] == 70 and _row(s, 71)["icite_fetched_at"] is None
    assert Store(db.connect(s)).runs(1)[0]["status"] == "failed"


def test_a_5xx_storm_keeps_partial_progress_and_the_rerun_asks_only_the_rest(
    emu: Emulator, settings: Settings
) -> None:
    """Killed by a storm after two batches: the next run asks for each remaining PMID
    exactly once, none of the first two batches again, and none is skipped."""
    pmids = list(range(100, 110))
    _seed(settings, dict.fromkeys(pmids, TODAY))
    for p in pmids:
        emu.set_icite(p, citation_count=p)
    emu.faults.add("503", path="/icite", times=50, after=2)
    s = _fast(emu, settings, icite_batch=3, max_retries=2)
    with pytest.raises(TransientSourceError):
        refresh_citations(s)
    first = _asked(emu)
    assert first == pmids[:6]
    emu.faults.clear()
    counts = refresh_citations(s)
    assert counts.requested == 4 and _asked(emu)[len(first) :] == pmids[6:]
    assert all(_row(s, p)["citation_count"] == p for p in pmids)
    runs = Store(db.connect(s)).runs(2)
    assert [r["status"] for r in runs] == ["succeeded", "failed"]
    assert runs[1]["details"]["citations"]["updated"] == 6  # the failed run's own count


@pytest.mark.parametrize("status", [500, 400])
def test_one_batch_that_always_fails_does_not_block_every_other_article(
    hostile: HostileIcite, sqlite_settings: Settings, status: int
) -> None:
    """iCite answers 500 (or 400) for any request containing PMID 200 (a record its
    server chokes on). The PMIDs in the other batches must still be refreshed (the bad
    batch skipped or split), if not the first night then the next: instead the same
    first batch fails, night after night, and nothing after it is ever asked."""
    pmids = list(range(200, 208))
    _seed(sqlite_settings, dict.fromkeys(pmids, TODAY))
    for p in pmids:
        hostile.set_icite(p, citation_count=p)
    hostile.poison = {200: status}
    s = _fast(hostile, sqlite_settings, icite_batch=2, max_retries=1)
    for _night in range(2):
        try:
            refresh_citations(s)
        except (TransientSourceError, InvalidRequestError):
            pass
    refreshed = [p for p in pmids[2:] if _row(s, p)["citation_count"] == p]
    assert refreshed == pmids[2:]


def test_a_batch_of_only_pmids_icite_refuses_is_stamped_when_icite_answers_for_others(
    hostile: HostileIcite, settings: Settings
) -> None:
    """Both PMIDs of the only batch due are refused (both halves fail): iCite still
    answers for an article it answered before (the store holds its values), so the two
    are stamped and wait their turn; the run succeeds (session 33b, B1)."""
    _seed(settings, {200: TODAY, 201: TODAY, 300: TODAY})
    _set(settings, 300, citation_count=3, icite_fetched_at=db.utcnow())  # not due
    hostile.set_icite(300, citation_count=3)
    hostile.poison = {200: 500, 201: 500}
    s = _fast(hostile, settings, icite_batch=2, max_retries=0)
    counts = refresh_citations(s)
    assert (counts.requested, counts.updated, counts.unknown) == (2, 0, 2)
    assert all(_row(s, p)["icite_fetched_at"] is not None for p in (200, 201))
    assert Store(db.connect(s)).runs(1)[0]["details"]["icite_refused"] == [200, 201]
    assert due_pmids(db.connect(s)) == []


def test_icite_down_is_not_taken_for_refused_records(emu: Emulator, settings: Settings) -> None:
    """iCite answers nothing: the run fails and stamps nothing, whether the batches hold
    one PMID (a failing single-PMID batch is not refused when iCite answers for no other
    PMID either) or several, with or without an article iCite answered before."""
    _seed(settings, {1: TODAY, 2: TODAY, 3: TODAY, 9: TODAY})
    _set(settings, 9, citation_count=1, icite_fetched_at=db.utcnow())  # iCite knew it
    emu.faults.add("503", path="/icite", times=1000)
    for size in (1, 2, 3):
        s = _fast(emu, settings, icite_batch=size, max_retries=0)
        with pytest.raises(TransientSourceError):
            refresh_citations(s)
        assert [_row(s, p)["icite_fetched_at"] for p in (1, 2, 3)] == [None] * 3
    _set(settings, 9, citation_count=None)  # nothing iCite is known to answer for
    with pytest.raises(TransientSourceError):
        refresh_citations(_fast(emu, settings, icite_batch=2, max_retries=0))
    assert [_row(settings, p)["icite_fetched_at"] for p in (1, 2, 3)] == [None] * 3


# ------------------------------------------------ which articles each night (scale)


def _simulate_nights(engine: Any, start: dt.datetime, nights: int, cap: int) -> dict[int, int]:
    """Run the nightly selection ``nights`` times (a day apart), stamping what it picks as
    fetched that night (what the refresh's write does); returns pmid -> times picked."""
    picked: dict[int, int] = {}
    for n in range(nights):
        now = start + dt.timedelta(days=n)
        due = due_pmids(engine, now=now, limit=cap)
        with engine.begin() as conn:
            conn.execute(
                update(articles).where(articles.c.pmid.in_(due)).values(icite_fetched_at=now)
            )
        for p in due:
            picked[p] = picked.get(p, 0) + 1
    return picked


def test_every_due_article_is_refreshed_within_a_bounded_number_of_nights(
    sqlite_settings: Settings,
) -> None:
    """At PubMed scale the default cap (20,000 a night) is far below what the policy
    makes due (~1.5M articles under a year / 7 d + ~6M of 1-5 years / 30 d + ~30M older
    / 180 d, about 580,000 a night). Scaled down: 70 young articles due weekly, a cap
    of 5 a night, one 3-year-old and one 10-year-old article long overdue. Stale-first
    (oldest fetch first) would reach both within days; newest-first never does."""
    engine = db.connect(sqlite_settings)
    dates = {1000 + i: TODAY - dt.timedelta(days=1 + i) for i in range(70)}
    dates |= {1: TODAY - dt.timedelta(days=3 * 365), 2: TODAY - dt.timedelta(days=3650)}
    _seed(sqlite_settings, dates)
    start = db.utcnow()
    with engine.begin() as conn:
        conn.execute(update(articles).values(icite_fetched_at=start - dt.timedelta(days=8)))
        conn.execute(update(articles).where(articles.c.pmid.in_([1, 2]))
                     .values(icite_fetched_at=start - dt.timedelta(days=400)))  # fmt: skip
    picked = _simulate_nights(engine, start, nights=30, cap=5)
    assert picked.get(1, 0) >= 1 and picked.get(2, 0) >= 1
    assert set(dates) <= set(picked)  # nobody starves for a month


def test_with_room_under_the_cap_every_due_article_is_refreshed_the_same_night(
    sqlite_settings: Settings,
) -> None:
    engine = db.connect(sqlite_settings)
    _seed(sqlite_settings, {3000 + i: TODAY - dt.timedelta(days=50 * i) for i in range(60)})
    picked = _simulate_nights(engine, db.utcnow(), nights=1, cap=100)
    assert len(picked) == 60
    # then nothing is asked again until its own interval has passed
    assert min(i for _, i in REFRESH_POLICY) == 7
    assert due_pmids(engine, now=db.utcnow() + dt.timedelta(days=6)) == []


def test_deleted_articles_are_never_refreshed(emu: Emulator, sqlite_settings: Settings) -> None:
    _seed(sqlite_settings, {80: TODAY, 81: TODAY})
    later = SourceRef("generated", "icite-review-deletion")  # a later source than SRC
    assert Store(db.connect(sqlite_settings)).apply([Deletion(81, later)]).deleted == 1
    emu.set_icite(80, citation_count=1)
    emu.set_icite(81, citation_count=1)
    s = _fast(emu, sqlite_settings)
    assert refresh_citations(s).requested == 1
    assert refresh_citations(s, pmids=[81]).requested == 0
    assert 81 not in _asked(emu) and _row(s, 81)["citation_count"] is None


# ------------------------------------------------ ranking: what the numbers become


def test_a_brand_new_article_is_not_penalised_once_icite_learns_of_it(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """Before iCite knows a paper published this week its citation value is neutral; the
    night iCite lists it (count 0, no RCR yet, 0 citations/year: all a week-old paper can
    have) it falls to 0 — the worst possible — so the refresh pushes every fresh paper
    below the unknown ones. Zero citations at one week says as little as a zero in-corpus
    count, which the score keeps neutral."""
    _seed(sqlite_settings, {90: TODAY - dt.timedelta(days=5)})
    s = _fast(emu, sqlite_settings)
    before, info = citation_value(_row(s, 90), _opts())
    assert before == NEUTRAL_CITATION and info["source"] == "missing"
    emu.set_icite(90, citation_count=0, relative_citation_ratio=None, citations_per_year=0.0,
                  year=TODAY.year, provisional="Yes")  # fmt: skip
    refresh_citations(s, pmids=[90])
    after, _ = citation_value(_row(s, 90), _opts())
    assert after >= NEUTRAL_CITATION - 0.05


def test_an_article_without_icite_data_is_neutral_not_penalised(sqlite_settings: Settings) -> None:
    _seed(sqlite_settings, {91: TODAY})
    value, info = citation_value(_row(sqlite_settings, 91), _opts())
    assert value == NEUTRAL_CITATION and info["source"] == "missing"
    assert "neutral" in info["text"]


@pytest.mark.parametrize(
    ("rcr", "source"),
    [
        (float("nan"), "icite_citations_per_year"),
        (float("inf"), "icite_citations_per_year"),
        (1e300, "icite_rcr"),
        (1e-300, "icite_rcr"),
    ],  # fmt: skip
)
def test_odd_rcr_values_never_give_a_score_out_of_range(rcr: float, source: str) -> None:
    row = {"best_date": TODAY - dt.timedelta(days=800), "relative_citation_ratio": rcr,
           "citations_per_year": 2.0, "citation_count": 4}  # fmt: skip
    s = score_article(0.5, row, _opts())
    assert 0.0 <= s.citation < 1.0 and math.isfinite(s.score)
    assert s.explanation["components"]["citation"]["source"] == source
    assert s.explanation["score"] == pytest.approx(
        sum(c["contribution"] for c in s.explanation["components"].values())
    )


def test_a_negative_rcr_in_the_store_counts_as_unknown(sqlite_settings: Settings) -> None:
    """The ingest rule calls a negative RCR impossible (never stored); a row holding one
    (written before the rule, or by hand) should be read like a NaN: unknown, next
    source; instead saturate() clamps it to 0 and the article gets citation 0.0."""
    _seed(sqlite_settings, {92: TODAY - dt.timedelta(days=800)})
    _set(sqlite_settings, 92, relative_citation_ratio=-3.0, citations_per_year=2.0)
    value, info = citation_value(_row(sqlite_settings, 92), _opts())
    assert info["source"] != "icite_rcr"
    assert value == pytest.approx(0.5)


@pytest.mark.parametrize(
    "cols",
    [
        {"relative_citation_ratio": 2.5},
        {"citations_per_year": 3.25},
        {"citation_count": 42},
        {"cited_by_in_corpus": 3},
        {},
    ],  # fmt: skip
)
def test_the_explanation_text_matches_the_numbers(
    emu: Emulator, sqlite_settings: Settings, cols: dict[str, Any]
) -> None:
    """The number after ``->`` in the citation text is the value scored, and the text of
    the whole score adds up to it."""
    _seed(sqlite_settings, {93: TODAY - dt.timedelta(days=3 * 365)})
    if cols:
        _set(sqlite_settings, 93, **cols)
    row = _row(sqlite_settings, 93)
    s = score_article(0.7, row, _opts())
    comp = s.explanation["components"]["citation"]
    shown = re.findall(r"(?:->|neutral) ([0-9.]+)", comp["text"])
    assert shown and float(shown[-1]) == pytest.approx(s.citation, abs=5e-4)
    total = float(s.explanation["text"].rsplit("=", 1)[1])
    assert total == pytest.approx(s.score, abs=5e-5)


def test_refresh_moves_the_ranking_the_way_the_numbers_say(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """Same date, same similarity: after the refresh the higher RCR ranks first and the
    explanation names the RCR it used."""
    day = TODAY - dt.timedelta(days=900)
    _seed(sqlite_settings, {94: day, 95: day})
    emu.set_icite(94, relative_citation_ratio=0.5, citation_count=3)
    emu.set_icite(95, relative_citation_ratio=4.0, citation_count=40)
    s = _fast(emu, sqlite_settings)
    refresh_citations(s)
    a, b = (score_article(0.6, _row(s, p), _opts()) for p in (94, 95))
    assert b.score > a.score
    assert "relative citation ratio 4 " in b.explanation["components"]["citation"]["text"]


# ------------------------------------------------ two refreshes at once


def test_two_refreshes_at_once_do_not_both_ask_for_the_same_articles(
    emu: Emulator, sqlite_settings: Settings
) -> None:
    """iCite runs hold no lease ("iCite runs ... go on beside them"): a `litpulse
    citations refresh` started while the nightly's refresh runs selects the same due set
    and asks iCite for all of it a second time."""
    pmids = list(range(500, 520))
    _seed(sqlite_settings, dict.fromkeys(pmids, TODAY))
    for p in pmids:
        emu.set_icite(p, citation_count=1)
    emu.faults.add("slow", path="/icite", times=100, delay=0.2)
    s = _fast(emu, sqlite_settings, icite_batch=4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            refresh_citations(s)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors or all("busy" in str(e).lower() for e in errors)
    asked = [r for r in emu.requests("/icite")]
    got = [int(p) for r in asked for p in r.params["pmids"].split(",")]
    assert sorted(got) == pmids  # each PMID asked once
