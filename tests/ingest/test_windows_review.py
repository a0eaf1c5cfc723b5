"""Hostile review of the E-utilities windows and their edges: can a record go missing?

Each test drives the real client (``ingest.eutils``, ``ingest.http``, ``ingest.missing``,
``ingest.runs``) and the nightly's own window decisions (``litpulse.pipeline.planning``,
``litpulse.pipeline.nightly``) against the loopback emulator, which stands in for NCBI
(subclassed here where NCBI's behaviour needs to differ). PubMed dates are NLM's US
Eastern days; our clock is UTC.

The tests marked ``xfail(strict=True)`` are defects found by this review: each asserts
what a demanding user expects (no record lost, or a loud, specific failure) and fails on
the current code for the reason given. The others are edges checked that hold.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from ingest.eutils import ingest_window, search_pmids
from ingest.http import eutils_client
from ingest.quality import check_ingest
from ingest.store import Store
from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.errors import ConsistencyError, DataQualityError, TransientSourceError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from litpulse.pipeline.nightly import _window, check_window, ingest_eutils_window
from litpulse.pipeline.planning import last_watermark
from tests import emulator as emulation
from tests.emulator import Emulator

UTC = dt.UTC


class ReviewEmulator(Emulator):
    """The emulator with the NCBI behaviours this review needs.

    ``outage``: ESearch answers every query with an empty result and no error (Count 0,
    "No items found"), as a degraded backend can. ``ignore_uid``: ESearch ignores the
    ``lo:hi[uid]`` clause of a term. ``on_search``: called with each ESearch's params
    before it is answered (to change PubMed between two requests of one run).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.outage = False
        self.ignore_uid = False
        self.on_search: Callable[[dict[str, str]], None] | None = None

    def esearch(self, params: dict[str, str]) -> bytes:
        if self.on_search is not None:
            self.on_search(params)
        if self.outage:
            return emulation._esearch_doc(
                "<Count>0</Count><RetMax>0</RetMax><RetStart>0</RetStart><IdList/>"
                "<TranslationSet/><QueryTranslation>all[sb]</QueryTranslation>"
                "<WarningList><OutputMessage>No items found.</OutputMessage></WarningList>"
            )
        if self.ignore_uid:
            params = {**params, "term": "all[sb]"}
        return super().esearch(params)


@pytest.fixture
def emu() -> Iterator[ReviewEmulator]:
    server = ReviewEmulator()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _settings(emu: Emulator, base: Settings, **kw: Any) -> Settings:
    # an API key: 10 requests/s, so the splits below stay quick
    return emu.configure(base.replace(ncbi_api_key="review-key", ncbi_email="t@example.org"), **kw)


def _stored(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        return set(
            conn.execute(select(articles.c.pmid).where(articles.c.is_deleted.is_(False))).scalars()
        )


def _at(day: dt.date, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def _night(settings: Settings, window: tuple[dt.datetime, dt.datetime]) -> dict[str, Any]:
    """One nightly's E-utilities part, as ``litpulse nightly`` and the nightly DAG run it:
    the window ingested (held from the watermark), then its data-quality check, which
    releases it (raises ``DataQualityError`` and keeps it held when it fails)."""
    counts = ingest_eutils_window(settings, *window, checked=True)
    return check_window(settings, counts.to_dict(), window)


# ===================================================================== defects (xfail)


def test_an_update_file_run_that_applied_no_file_does_not_carry_the_watermark(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """README: run ``litpulse ingest --updatefiles`` daily beside the E-utilities nightly.
    The nightly has not succeeded for four days (an NCBI outage); the update-file run of
    today succeeds having applied *no* file (NLM published none yet: the mirror lags, or
    the yearly baseline pause). ``last_watermark`` takes any succeeded update-file run to
    cover everything up to a day before it started, so the recovering nightly starts
    yesterday, and the records entered on the days in between are searched by no window
    and were in no file: lost, with no alert."""
    s = _settings(emu, sqlite_settings)
    today = dt.datetime.now(UTC).date()
    last_good = today - dt.timedelta(days=6)
    emu.add_article(1, edat=last_good)
    ingest_window(s, _at(last_good), _at(last_good + dt.timedelta(days=1)))  # the last night
    mark = last_watermark(s)
    assert mark == _at(last_good + dt.timedelta(days=1))
    emu.add_article(2, edat=today - dt.timedelta(days=4))  # a day the nightly never ran
    counts = apply_updates(s)  # nothing listed: applies no file, and succeeds
    assert counts.inserted == 0 and Store(db.connect(s)).runs(1)[0]["status"] == "succeeded"
    since, until = _window(s, db.connect(s), None, None)  # the recovering nightly
    ingest_window(s, since, until)
    assert 2 in _stored(s), (
        f"record 2 (entrez date {today - dt.timedelta(days=4)}) lost: the watermark "
        f"jumped from {mark:%Y-%m-%d %H:%M} to {since:%Y-%m-%d %H:%M} on an update-file run "
        "that applied no file"
    )


#: A Friday, its weekend and the Monday after (UTC and Eastern days alike).
FRI = dt.date(2024, 1, 5)
SAT, SUN, MON = (FRI + dt.timedelta(days=n) for n in (1, 2, 3))


def test_an_empty_answer_for_a_weekend_window_is_not_passed_silently(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """Nightly at 00:30 UTC (19:30 in Bethesda). Friday's window ran before PubMed's
    Friday ended; the records entered on Friday evening (Eastern) are left to the
    Saturday window's overlap day. That night ESearch answers nothing (no error, Count 0).
    The window [Sat 00:30, Sun 00:30) touches no weekday, so the check passes and the
    watermark moves; Sunday's window searches Saturday on: the Friday evening record is
    never fetched. ESearch searched Friday (a weekday, whose records the store holds)
    and found nothing: that cannot be a healthy source."""
    s = _settings(emu, sqlite_settings)
    for pmid in range(100, 110):
        emu.add_article(pmid, edat=FRI)
    _night(s, (_at(FRI, 0, 30), _at(SAT, 0, 30)))
    emu.add_article(150, edat=FRI)  # entered Friday 21:00 Eastern (Sat 02:00 UTC)
    emu.outage = True
    try:  # the Saturday night: an empty answer
        _night(s, (_at(SAT, 0, 30), _at(SUN, 0, 30)))
    except DataQualityError:
        failed_loudly = True  # what a user wants: the window stays held, rerun later
    else:
        failed_loudly = False
    emu.outage = False
    emu.add_article(160, edat=SUN)
    emu.add_article(170, edat=MON)
    _night(s, _window(s, db.connect(s), None, _at(MON, 0, 30)))  # Sunday night
    assert failed_loudly or 150 in _stored(s), (
        "record 150 (entrez date Friday) lost: the Saturday window's empty ESearch passed "
        "the data-quality check and moved the watermark past Friday"
    )


def test_a_window_pulled_by_hand_does_not_bridge_the_eastern_evening_after_the_mark(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """The nightly runs at 03:00 UTC: its window ends Tuesday 03:00 UTC, i.e. Monday
    22:00 in Bethesda. Records PubMed enters later that Monday evening carry Monday's
    entrez date. The Wednesday nightly fails; an operator pulls Wednesday by hand
    (``litpulse ingest --eutils --since <Wed> --until <Wed>``), which searches Tuesday
    and Wednesday. ``last_watermark`` takes that window as following the nightly's
    without a gap (its overlap day starts Tuesday 00:00 UTC, before Tuesday 03:00 UTC),
    so the mark moves to Thursday; Monday's evening was searched by neither window."""
    s = _settings(emu, sqlite_settings)
    mon = dt.date(2024, 1, 8)
    tue, wed, thu = (mon + dt.timedelta(days=n) for n in (1, 2, 3))
    emu.add_article(200, edat=mon)
    ingest_window(s, _at(mon, 3), _at(tue, 3))  # the Monday night's run, at Tue 03:00 UTC
    mark = last_watermark(s)
    emu.add_article(250, edat=mon)  # entered Monday 23:00 Eastern (Tue 04:00 UTC)
    emu.add_article(260, edat=wed)
    ingest_window(s, _at(wed), _at(thu))  # the hand-run Wednesday
    since, until = _window(s, db.connect(s), None, _at(thu, 3))  # the next nightly
    ingest_window(s, since, until)
    assert 250 in _stored(s), (
        f"record 250 (entrez date {mon}) lost: the watermark moved from "
        f"{mark:%Y-%m-%d %H:%M} over the hand-run window to {since:%Y-%m-%d %H:%M}"
    )


# ===================================================================== edges that hold


def test_a_record_whose_entrez_date_is_back_dated_is_caught_by_its_modification_date(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """NLM sets EDAT to the publication date for a record entering PubMed more than a
    year after publication (CRDT is the real day). The edat pass cannot see it; the mdat
    pass does, as long as PubMed stamps a new record's modification date on entry."""
    s = _settings(emu, sqlite_settings)
    day = dt.date(2024, 4, 10)
    emu.add_article(300, edat=day)
    emu.add_article(301, edat=dt.date(2021, 1, 1), mdat=day)  # back-dated EDAT
    ingest_window(s, _at(day), _at(day + dt.timedelta(days=1)))
    assert _stored(s) == {300, 301}
    run = Store(db.connect(s)).runs(1)[0]["details"]
    assert (run["edat_count"], run["mdat_count"]) == (1, 2)


def test_a_revision_of_a_record_in_a_closed_window_is_fetched_by_the_next_window(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    s = _settings(emu, sqlite_settings)
    day = dt.date(2024, 4, 10)
    emu.add_article(310, edat=day - dt.timedelta(days=30), mdat=day - dt.timedelta(days=30))
    ingest_window(s, _at(day - dt.timedelta(days=30)), _at(day - dt.timedelta(days=29)))
    assert Store(db.connect(s)).get_article(310)["version"] == 1
    revised = emulation.article_xml(310, edat=day - dt.timedelta(days=30), mdat=day,
                                    title="A revised title for the review")  # fmt: skip
    emu.add_article(310, edat=day - dt.timedelta(days=30), mdat=day, xml=revised)
    counts = ingest_window(s, _at(day), _at(day + dt.timedelta(days=1)))
    assert counts.updated == 1
    assert Store(db.connect(s)).get_article(310)["title"] == "A revised title for the review"


@pytest.mark.parametrize("count", [9999, 10000])
def test_a_day_at_the_esearch_limit_is_searched_whole_within_the_paging_limit(
    emu: ReviewEmulator, sqlite_settings: Settings, count: int
) -> None:
    """9,999 matches fit one request (retstart 0 + retmax 9,999); 10,000 must be split."""
    day = dt.date(2024, 5, 2)
    with emu._lock:  # bulk: add_article one by one renders nothing, but locks each time
        for pmid in range(50_000_000, 50_000_000 + count):
            emu.articles[pmid] = emulation.EmuArticle(pmid, day, day)
    s = _settings(emu, sqlite_settings)
    found = search_pmids(eutils_client(s), term="all[sb]", datetype="edat", start=day,
                         end=day, cap=s.esearch_cap)  # fmt: skip
    assert found.pmids == set(range(50_000_000, 50_000_000 + count))
    assert found.splits == (0 if count == 9999 else 1)
    for req in emu.requests("esearch"):
        assert int(req.params["retstart"]) + int(req.params["retmax"]) <= 9999


def test_a_record_added_between_the_requests_of_a_split_day_is_fetched_by_the_next_night(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A day over the cap is split by PMID range: the first page is kept when the rest
    adds up to the count it saw. A record entered between those two requests (the newest
    PMID, in the kept page's range) is not in this run's list; the next nightly's overlap
    searches that day again and stores it."""
    s = _settings(emu, sqlite_settings, esearch_cap=40, efetch_batch=200)
    day = dt.date(2024, 5, 7)
    for pmid in range(1000, 1100):
        emu.add_article(pmid, edat=day)
    seen: list[dict[str, str]] = []

    def enter_one(params: dict[str, str]) -> None:
        seen.append(params)
        if params["datetype"] == "mdat" and "[uid]" in params["term"] and 5000 not in emu.articles:
            emu.add_article(5000, edat=day)  # after the mdat pass saw the day's first page

    emu.on_search = enter_one
    until = _at(day + dt.timedelta(days=1), 0, 30)
    ingest_window(s, _at(day, 0, 30), until)
    emu.on_search = None
    assert 5000 in emu.articles and 5000 not in _stored(s)  # entered while the run searched
    assert set(range(1000, 1100)) <= _stored(s)
    assert Store(db.connect(s)).runs(1)[0]["details"]["esearch_splits"] >= 2
    ingest_window(s, *_window(s, db.connect(s), None, until + dt.timedelta(days=1)))
    assert 5000 in _stored(s)


def test_a_day_that_cannot_be_split_fails_the_run_loudly_and_holds_the_watermark(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A server that ignores the PMID range keeps one day over the cap however it is cut:
    the run fails with a ConsistencyError naming the day, stores nothing, and the
    watermark stays where it was."""
    s = _settings(emu, sqlite_settings, esearch_cap=5, max_retries=0)
    day = dt.date(2024, 5, 9)
    emu.add_article(400, edat=day - dt.timedelta(days=3))
    ingest_window(s, _at(day - dt.timedelta(days=3)), _at(day - dt.timedelta(days=2)))
    mark = last_watermark(s)
    assert mark is not None
    for pmid in range(401, 413):
        emu.add_article(pmid, edat=day)
    emu.ignore_uid = True
    with pytest.raises(ConsistencyError, match=r"esearch edat 2024-05-09: PMID \d+ alone counts"):
        ingest_window(s, mark, _at(day + dt.timedelta(days=1)))
    assert Store(db.connect(s)).runs(1)[0]["status"] == "failed"
    assert last_watermark(s) == mark
    assert _stored(s) == {400}


def test_a_window_failing_part_way_holds_the_watermark_and_the_rerun_stores_everything(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    s = _settings(emu, sqlite_settings, efetch_batch=20, max_retries=0)
    day = dt.date(2024, 6, 4)
    emu.add_article(500, edat=day - dt.timedelta(days=1))
    ingest_window(s, _at(day - dt.timedelta(days=1)), _at(day))
    mark = last_watermark(s)
    assert mark == _at(day)
    for pmid in range(600, 700):
        emu.add_article(pmid, edat=day)
    emu.faults.add("503", path="efetch", times=1, after=2)  # the third batch fails
    window = _window(s, db.connect(s), None, _at(day + dt.timedelta(days=1), 1))
    with pytest.raises(TransientSourceError):
        _night(s, window)
    assert last_watermark(s) == mark  # a failed run moves nothing
    stored_before = _stored(s)
    assert 0 < len(stored_before & set(range(600, 700))) < 100  # part-way
    window = _window(s, db.connect(s), None, _at(day + dt.timedelta(days=1), 2))
    assert window[0] == mark
    report = _night(s, window)
    assert report["ok"] and _stored(s) == {500, *range(600, 700)}
    assert last_watermark(s) == window[1]


def test_a_record_entered_on_an_eastern_evening_across_the_dst_change_is_caught(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """Nightly at 20:00 in Bethesda (an Airflow timetable in America/New_York): 01:00 UTC
    before the spring change, 00:00 UTC after. A record entered at 22:00 EST on the
    Saturday (EDAT Saturday) after that night's run is caught by the Sunday run."""
    from zoneinfo import ZoneInfo

    eastern = ZoneInfo("America/New_York")
    sat, sun, mon = dt.date(2024, 3, 9), dt.date(2024, 3, 10), dt.date(2024, 3, 11)
    runs = [
        dt.datetime.combine(d, dt.time(20), tzinfo=eastern) for d in (dt.date(2024, 3, 8), sat, sun)
    ]
    s = _settings(emu, sqlite_settings, quality_expect_weekdays=False)
    emu.add_article(700, edat=sat)
    _night(s, (runs[0], runs[1]))  # until Sun 01:00 UTC
    emu.add_article(701, edat=sat)  # Saturday 22:00 EST
    emu.add_article(702, edat=sun)
    window = _window(s, db.connect(s), None, runs[2])  # until Mon 00:00 UTC (EDT)
    _night(s, window)
    assert {700, 701, 702} <= _stored(s)
    assert window[1] == _at(mon)  # 20:00 EDT


def test_a_catch_up_after_ten_days_down_is_one_window_that_stores_every_day(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    s = _settings(emu, sqlite_settings, esearch_cap=30, efetch_batch=100)
    first = dt.date(2024, 7, 1)
    emu.add_article(800, edat=first)
    _night(s, (_at(first, 0, 30), _at(first + dt.timedelta(days=1), 0, 30)))
    expected = {800}
    for n in range(1, 12):
        for k in range(8):
            pmid = 1000 + 10 * n + k
            emu.add_article(pmid, edat=first + dt.timedelta(days=n))
            expected.add(pmid)
    window = _window(s, db.connect(s), None, _at(first + dt.timedelta(days=12), 0, 30))
    assert window[0] == _at(first + dt.timedelta(days=1), 0, 30)
    report = _night(s, window)
    assert report["ok"] and _stored(s) == expected
    run = Store(db.connect(s)).runs(1)[0]
    assert run["status"] == "succeeded" and run["details"]["esearch_splits"] >= 1


def test_an_empty_answer_on_a_weekday_window_fails_the_check_and_holds_the_window(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """The contrast to the Saturday defect: a weekday window with an empty answer fails,
    stays held, and the rerun after the outage fetches the day."""
    s = _settings(emu, sqlite_settings)
    wed = dt.date(2024, 1, 10)
    emu.add_article(900, edat=wed - dt.timedelta(days=1))
    _night(s, (_at(wed, 0, 30) - dt.timedelta(days=1), _at(wed, 0, 30)))
    mark = last_watermark(s)
    emu.add_article(901, edat=wed)
    emu.outage = True
    window = (_at(wed, 0, 30), _at(wed + dt.timedelta(days=1), 0, 30))
    with pytest.raises(DataQualityError, match="includes a weekday but returned no record"):
        _night(s, window)
    assert last_watermark(s) == mark
    emu.outage = False
    _night(s, _window(s, db.connect(s), None, window[1] + dt.timedelta(hours=1)))
    assert {900, 901} <= _stored(s)


def test_a_record_efetch_keeps_leaving_out_is_owed_reported_and_fetched_later(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """EFetch returns fewer records than asked, twice: the PMID is owed (run counts,
    ``status``), the window still passes its check and moves the mark, and the next
    window, whose dates do not list it, asks for it and stores it."""
    s = _settings(emu, sqlite_settings, efetch_batch=100)
    day = dt.date(2024, 8, 6)
    for pmid in range(1200, 1210):
        emu.add_article(pmid, edat=day)
    emu.faults.add("drop", path="efetch", times=2)
    counts = ingest_eutils_window(s, _at(day), _at(day + dt.timedelta(days=1)))
    report = check_ingest(s, counts, (_at(day), _at(day + dt.timedelta(days=1))))
    store = Store(db.connect(s))
    assert counts.missing == 1 and report.ok
    assert store.status()["missing"] == {"waiting": 1, "given_up": 0}
    (lost,) = store.runs(1)[0]["details"]["missing_pmids"]
    assert lost not in _stored(s)
    later = dt.date(2024, 8, 20)
    ingest_window(s, _at(later), _at(later + dt.timedelta(days=1)))
    assert lost in _stored(s) and store.status()["missing"] == {"waiting": 0, "given_up": 0}


def test_two_overlapping_runs_of_one_window_do_not_both_write(
    emu: ReviewEmulator, sqlite_settings: Settings
) -> None:
    """A second run started while the first is fetching is refused (the store-writer
    lease), and the first stores every record once."""
    from litpulse.core.errors import BusyError

    s = _settings(emu, sqlite_settings, efetch_batch=10)
    day = dt.date(2024, 9, 3)
    for pmid in range(1300, 1340):
        emu.add_article(pmid, edat=day)
    window = (_at(day), _at(day + dt.timedelta(days=1)))
    emu.faults.add("slow", path="efetch", times=2, delay=0.5)
    outcome: dict[str, Any] = {}

    def first() -> None:
        outcome["first"] = ingest_window(s, *window)

    t = threading.Thread(target=first)
    t.start()
    try:
        deadline = dt.datetime.now(UTC) + dt.timedelta(seconds=10)
        while not emu.requests("efetch") and dt.datetime.now(UTC) < deadline:
            threading.Event().wait(0.02)
        with pytest.raises(BusyError):
            ingest_window(s, *window)
    finally:
        t.join(30)
    assert outcome["first"].inserted == 40 and _stored(s) == set(range(1300, 1340))
