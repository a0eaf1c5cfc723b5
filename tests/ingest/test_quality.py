"""The nightly data-quality checks (ingest.quality)."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest

from ingest.parse import parse_bytes
from ingest.quality import check_ingest, counts_as_dict, newest_entrez_date
from ingest.records import SourceRef
from ingest.store import IngestCounts, Store
from litpulse.core import db
from litpulse.core.errors import ConfigError, DataQualityError, LitpulseError
from litpulse.core.settings import Settings
from tests.emulator import article_xml, pubmed_set

UTC = dt.UTC
TUESDAY = (dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC))
SATURDAY = (dt.datetime(2024, 1, 6, tzinfo=UTC), dt.datetime(2024, 1, 7, tzinfo=UTC))
SUNDAY = (dt.datetime(2024, 1, 7, tzinfo=UTC), dt.datetime(2024, 1, 8, tzinfo=UTC))


def _store_articles(settings: Settings, edats: list[dt.date]) -> None:
    xml = pubmed_set([article_xml(100 + i, edat=d) for i, d in enumerate(edats)])
    items = parse_bytes(xml, source_ref=SourceRef("file", "test.xml"))
    Store(db.connect(settings)).apply(items)


def test_good_run_passes(settings: Settings) -> None:
    _store_articles(settings, [dt.date(2024, 1, 2)] * 3)
    report = check_ingest(settings, IngestCounts(inserted=3), TUESDAY)
    assert report.ok
    assert report.problems == ()
    assert report.records == 3
    assert report.newest_entrez_date == dt.date(2024, 1, 2)
    assert set(report.checks) == {"quarantine_rate", "empty_weekday", "stale_watermark"}
    assert report.to_dict()["window_start"] == "2024-01-02T00:00:00+00:00"


def test_empty_weekday_fails_and_is_not_retryable(settings: Settings) -> None:
    _store_articles(settings, [dt.date(2024, 1, 1), dt.date(2024, 1, 3)])  # not Jan 2
    with pytest.raises(DataQualityError, match="includes a weekday but returned no record") as e:
        check_ingest(settings, IngestCounts(), TUESDAY)
    assert isinstance(e.value, LitpulseError)
    assert e.value.retryable is False


def test_empty_weekend_passes(settings: Settings) -> None:
    """The Sunday window searches Saturday and Sunday (its overlap day): nothing is due.
    The Saturday window searches Friday again, so an empty answer there fails."""
    _store_articles(settings, [dt.date(2024, 1, 5)])
    report = check_ingest(settings, {"inserted": 0}, SUNDAY)
    assert report.ok, report.problems
    with pytest.raises(DataQualityError, match=r"days 2024-01-05\.\.2024-01-06"):
        check_ingest(settings, {"inserted": 0}, SATURDAY)


def test_empty_weekday_allowed_by_setting(settings: Settings) -> None:
    _store_articles(settings, [dt.date(2024, 1, 2)])
    relaxed = settings.replace(quality_expect_weekdays=False)
    assert check_ingest(relaxed, IngestCounts(), TUESDAY).ok


def test_rerun_with_only_unchanged_records_is_not_empty(settings: Settings) -> None:
    _store_articles(settings, [dt.date(2024, 1, 2)])
    assert check_ingest(settings, IngestCounts(unchanged=5), TUESDAY).ok
    # a repeated window whose batches were all skipped reports them (whole_window): an
    # empty count is an empty source, whatever the store holds of the day
    with pytest.raises(DataQualityError, match="returned no record"):
        check_ingest(settings, IngestCounts(), TUESDAY)


def test_quarantine_rate_above_threshold_fails(sqlite_settings: Settings) -> None:
    s = sqlite_settings.replace(max_quarantine_rate=0.05, quality_max_staleness_days=0)
    ok = check_ingest(s, IngestCounts(inserted=95, quarantined=5), raise_on_failure=False)
    assert ok.ok and ok.quarantine_rate == pytest.approx(0.05)
    bad = check_ingest(s, IngestCounts(inserted=90, quarantined=10), raise_on_failure=False)
    assert not bad.ok
    assert "10 of 100 records quarantined" in bad.problems[0]
    with pytest.raises(DataQualityError, match="LITPULSE_MAX_QUARANTINE_RATE"):
        check_ingest(s, IngestCounts(inserted=90, quarantined=10))


def test_a_few_quarantined_records_of_a_small_run_pass_the_rate_check(
    sqlite_settings: Settings,
) -> None:
    """One permanently bad record in a quiet window (1 of 50: 2 % > 1 %) failed the night,
    and every re-run of it, the same record met again each time: a malformed file is many
    bad records, not one."""
    s = sqlite_settings.replace(quality_max_staleness_days=0)
    assert s.max_quarantine_rate == 0.01 and s.quality_min_quarantined == 5
    assert check_ingest(s, IngestCounts(inserted=49, quarantined=1)).ok
    assert check_ingest(s, IngestCounts(inserted=46, quarantined=4)).ok
    with pytest.raises(DataQualityError, match="5 of 50 records quarantined"):
        check_ingest(s, IngestCounts(inserted=45, quarantined=5))
    strict = s.replace(quality_min_quarantined=1)  # every bad record counts
    with pytest.raises(DataQualityError, match="LITPULSE_QUALITY_MIN_QUARANTINED=1"):
        check_ingest(strict, IngestCounts(inserted=49, quarantined=1))


def test_stale_watermark_fails(settings: Settings) -> None:
    _store_articles(settings, [dt.date(2023, 12, 20)])
    with pytest.raises(DataQualityError, match="newest entrez date in the store is 2023-12-20"):
        check_ingest(settings, IngestCounts(unchanged=1), TUESDAY)
    # within the allowed staleness
    _store_articles(settings, [dt.date(2023, 12, 31)])
    assert check_ingest(settings, IngestCounts(unchanged=1), TUESDAY).ok
    assert newest_entrez_date(db.connect(settings)) == dt.date(2023, 12, 31)


def test_every_problem_is_named(sqlite_settings: Settings) -> None:
    report = check_ingest(sqlite_settings, IngestCounts(), TUESDAY, raise_on_failure=False)
    assert not report.ok
    assert len(report.problems) == 2  # empty weekday + empty store (stale)
    assert "store is missing" in report.problems[1]


def test_counts_as_dict_accepts_counts_and_mappings() -> None:
    assert counts_as_dict(IngestCounts(inserted=2))["inserted"] == 2
    assert counts_as_dict({"updated": 3})["updated"] == 3
    assert counts_as_dict(None) == dict.fromkeys(
        ("inserted", "updated", "unchanged", "deleted", "quarantined", "requarantined",
         "reseen", "missing"), 0,
    )
    with pytest.raises(ConfigError):
        counts_as_dict(3)


def test_window_must_move_forward(sqlite_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="must be after its start"):
        check_ingest(sqlite_settings, IngestCounts(inserted=1), (TUESDAY[1], TUESDAY[0]))


# ------------------------------------------------------------ moving forward: runs and dates


def _window_run(settings: Settings, window: tuple[dt.datetime, dt.datetime], **counts: int) -> None:
    store = Store(db.connect(settings))
    run = store.start_run("eutils", window_start=window[0], window_end=window[1])
    store.finish_run(run, IngestCounts(**counts))


def test_replay_with_old_entrez_dates_passes_when_the_run_inserted(settings: Settings) -> None:
    """A mirror or replay: the records carry 2023 entrez dates, the run inserted them."""
    _store_articles(settings, [dt.date(2023, 6, 1)] * 3)
    _window_run(settings, TUESDAY, inserted=3)
    report = check_ingest(settings, IngestCounts(inserted=3), TUESDAY)
    assert report.ok, report.problems
    assert report.progress == ("run", "runs")
    assert report.progress_watermark == TUESDAY[1]
    assert report.to_dict()["progress"] == ["run", "runs"]


def test_rerun_after_a_recent_window_that_inserted_passes(settings: Settings) -> None:
    """Nothing new this time, old dates, but yesterday's window inserted records."""
    _store_articles(settings, [dt.date(2023, 6, 1)])
    monday = (TUESDAY[0] - dt.timedelta(days=1), TUESDAY[0])
    _window_run(settings, monday, inserted=1)
    _window_run(settings, TUESDAY, unchanged=1)
    report = check_ingest(settings, IngestCounts(unchanged=1), TUESDAY)
    assert report.ok, report.problems
    assert report.progress == ("runs",)
    assert report.progress_watermark == TUESDAY[0]


def test_not_moving_forward_names_runs_and_dates(settings: Settings) -> None:
    """Windows keep succeeding but none brought a record for a week, dates are old too."""
    _store_articles(settings, [dt.date(2023, 12, 20)])
    old = (dt.datetime(2023, 12, 20, tzinfo=UTC), dt.datetime(2023, 12, 21, tzinfo=UTC))
    _window_run(settings, old, inserted=1)
    _window_run(settings, TUESDAY, unchanged=1)
    with pytest.raises(DataQualityError) as e:
        check_ingest(settings, IngestCounts(unchanged=1), TUESDAY)
    text = str(e.value)
    assert "not moving forward: this run inserted or updated no record" in text
    assert "the newest window that did ended 2023-12-21T00:00:00+00:00" in text
    assert "the newest entrez date in the store is 2023-12-20" in text
    # a window that inserted but failed afterwards is no progress either
    store = Store(db.connect(settings))
    run = store.start_run("eutils", window_start=TUESDAY[0], window_end=TUESDAY[1])
    store.finish_run(run, IngestCounts(inserted=4), status="failed", error="killed")
    assert not check_ingest(
        settings, IngestCounts(), TUESDAY, raise_on_failure=False
    ).ok


# ------------------------------------- quarantined records met again are not new bad records


def _malformed(pmid: int, day: dt.date) -> bytes:
    return article_xml(pmid, edat=day).replace(b"<ArticleTitle>", b"<ArticleTitle>Q&A <i>x")


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), UTC)


def test_quarantined_elements_met_again_after_their_check_are_counted_apart(
    settings: Settings,
) -> None:
    """An element quarantined and judged by its window's quality check, met again (the
    next window's overlap day), is counted as met *again*, and the check judges the bad
    records new to the store. Met again before any check judged it (a try killed before
    its check, searched again), it is still new: a rerun does not escape the check."""
    from ingest.eutils import ingest_window
    from tests.emulator import running_emulator

    monday, tuesday, wednesday = (dt.date(2024, 1, 8) + dt.timedelta(days=i) for i in range(3))
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(contextlib.contextmanager(running_emulator)())
        for pmid in range(101, 107):
            emulator.add_article(pmid, edat=monday, xml=_malformed(pmid, monday))
            emulator.add_article(pmid + 100, edat=monday)
        for pmid in range(301, 313):
            emulator.add_article(pmid, edat=tuesday)
        s = emulator.configure(settings.replace(quality_max_staleness_days=0))
        first = ingest_window(s, _at(monday), _at(tuesday), check_follows=True)
        assert (first.quarantined, first.requarantined) == (6, 0)
        # killed before its check: the rerun searches the window again and meets them
        rerun = ingest_window(s, _at(monday), _at(tuesday), restart=True, check_follows=True)
        assert (rerun.quarantined, rerun.requarantined) == (6, 0)
        with pytest.raises(DataQualityError, match="6 of 12 records quarantined"):
            check_ingest(s, rerun, (_at(monday), _at(tuesday)))
        # the next window searches Monday again
        nxt = ingest_window(s, _at(tuesday), _at(wednesday), check_follows=True)
        assert (nxt.quarantined, nxt.requarantined, nxt.inserted) == (6, 6, 12)
        report = check_ingest(s, nxt, (_at(tuesday), _at(wednesday)))
        assert report.ok and report.quarantine_rate == 0.0
        assert report.to_dict()["requarantined"] == 6


# ------------------------------------------------------- the answer, day by day (Q1, Q2)


def test_covered_days_are_pubmeds_days_the_window_covers_for_12_hours() -> None:
    from ingest.dates import covered_days

    def at(day: int, hour: int, month: int = 1) -> dt.datetime:
        return dt.datetime(2024, month, day, hour, tzinfo=UTC)

    mon, tue, wed, sun = (dt.date(2024, 1, d) for d in (8, 9, 10, 7))
    # the DAG's [Mon, Tue) UTC: Bethesda's Sunday 19:00 .. Monday 19:00
    assert covered_days(at(8, 0), at(9, 0)) == [mon]
    # the CLI nightly at 02:00: Sunday 21:00 .. Monday 21:00
    assert covered_days(at(8, 2), at(9, 2)) == [mon]
    # at 02:00 on a Monday: Monday has not begun in Bethesda
    assert covered_days(at(7, 2), at(8, 2)) == [sun]
    # a catch-up window, Monday 21:00 .. Wednesday 21:00 Eastern
    assert covered_days(at(9, 2), at(11, 2)) == [tue, wed]
    # an hour's window covers no day for 12 hours; exactly 12 hours do
    assert covered_days(at(8, 10), at(8, 11)) == []
    assert covered_days(at(8, 5), at(8, 17)) == [mon]  # EST: the day begins at 05:00 UTC
    # summer time: the day begins at 04:00 UTC
    assert covered_days(at(8, 4, 7), at(8, 16, 7)) == [dt.date(2024, 7, 8)]
    assert covered_days(at(8, 5, 7), at(8, 16, 7)) == []


def test_a_day_the_answer_leaves_out_while_the_store_holds_its_records_fails(
    settings: Settings,
) -> None:
    """A searched day of which ESearch lists nothing, while the store holds records
    entered then, proves the answer short, a weekend day included (the DAG's Monday
    window searches Saturday and Sunday only). ESearch down (Count 0, no error) and EFetch
    serving: the records are served, not listed (``missed``). Both down: an answer that
    listed nothing proves no withdrawal, and nothing is deleted."""
    from ingest.eutils import ingest_window
    from tests.ingest.test_windows_review import ReviewEmulator

    sat, sun, mon = dt.date(2024, 1, 6), dt.date(2024, 1, 7), dt.date(2024, 1, 8)
    emulator = ReviewEmulator().start()
    try:
        for pmid in range(100, 104):
            emulator.add_article(pmid, edat=sat)
        s = emulator.configure(settings.replace(quality_max_staleness_days=0))
        assert check_ingest(s, ingest_window(s, _at(sat), _at(sun)), (_at(sat), _at(sun))).ok
        emulator.outage = True  # ESearch: Count 0 of every day, and of every PMID alone
        counts = ingest_window(s, _at(sun), _at(mon))
        assert counts.total == 0
        unlisted = Store(db.connect(s)).runs(1)[0]["details"]["unlisted"]
        assert (unlisted["found"], unlisted["missed"]) == (4, 4)
        with pytest.raises(DataQualityError, match=r"no record of PubMed's day\(s\) 2024-01-06"):
            check_ingest(s, counts, (_at(sun), _at(mon)))
        emulator.faults.add("drop", path="efetch", times=4, drop=100)  # EFetch too
        counts = ingest_window(s, _at(sun), _at(mon))
        unlisted = Store(db.connect(s)).runs(1)[0]["details"]["unlisted"]
        kept = [100, 101, 102, 103]
        assert (unlisted["found"], unlisted["kept"], unlisted["withdrawn"]) == (0, kept, [])
        with pytest.raises(DataQualityError, match=r"no record of PubMed's day\(s\) 2024-01-06"):
            check_ingest(s, counts, (_at(sun), _at(mon)))
        assert Store(db.connect(s)).existing_pmids(range(100, 104)) == set(range(100, 104))
    finally:
        emulator.stop()


def test_a_search_too_short_for_withdrawals_fails_the_window(settings: Settings) -> None:
    """More stored records of the window's days unlisted than withdrawals explain: none is
    deleted (as before), and the check no longer passes the window with a warning."""
    from ingest.eutils import ingest_window
    from tests.emulator import running_emulator

    tue, wed, thu = dt.date(2024, 1, 9), dt.date(2024, 1, 10), dt.date(2024, 1, 11)
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(contextlib.contextmanager(running_emulator)())
        for pmid in range(1000, 1100):
            emulator.add_article(pmid, edat=tue)
        s = emulator.configure(settings.replace(quality_max_staleness_days=0, efetch_batch=20))
        assert check_ingest(s, ingest_window(s, _at(tue), _at(wed)), (_at(tue), _at(wed))).ok
        for pmid in range(1040, 1100):  # the mirror lists 40 of Tuesday's 100
            del emulator.articles[pmid]
        emulator.add_article(2000, edat=wed)
        counts = ingest_window(s, _at(wed), _at(thu))
        with pytest.raises(DataQualityError, match=r"than withdrawals explain \(60 unlisted"):
            check_ingest(s, counts, (_at(wed), _at(thu)))
        assert Store(db.connect(s)).existing_pmids(range(1040, 1100)) == set(range(1040, 1100))


def test_a_weekday_the_window_covers_needs_a_record_entered_on_it(settings: Settings) -> None:
    """A catch-up window whose own weekdays came back empty fails even when its overlap
    day's records came back; a rerun of a passed window (all unchanged) still passes; a
    weekday covered for less than 12 hours (Monday at 02:00 UTC) is not required."""
    from ingest.eutils import ingest_window
    from tests.emulator import running_emulator

    sat, sun, mon, tue, wed, thu = (dt.date(2024, 1, 6) + dt.timedelta(days=i) for i in range(6))

    def at2(day: dt.date) -> dt.datetime:
        return _at(day) + dt.timedelta(hours=2)

    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(contextlib.contextmanager(running_emulator)())
        emulator.add_article(1, edat=sat)
        s = emulator.configure(settings.replace(quality_max_staleness_days=0))
        # the CLI nightly at Monday 02:00: Saturday's record again, an empty Sunday, and
        # Monday not begun in Bethesda: passes
        monday_night = (at2(sun), at2(mon))
        assert check_ingest(s, ingest_window(s, *monday_night), monday_night).ok
        emulator.add_article(2, edat=mon)
        first = (at2(mon), at2(tue))
        assert check_ingest(s, ingest_window(s, *first), first).ok
        again = ingest_window(s, *first)  # a rerun: everything unchanged
        assert again.unchanged == again.total
        assert check_ingest(s, again, first).ok
        emulator.add_article(4, edat=thu)  # Wednesday never synced
        catch_up = (at2(tue), _at(thu) + dt.timedelta(hours=23))
        counts = ingest_window(s, *catch_up)
        assert (counts.unchanged, counts.inserted) == (1, 1)  # Monday's again, Thursday's
        with pytest.raises(DataQualityError, match=r"weekday\(s\) 2024-01-09, 2024-01-10, each"):
            check_ingest(s, counts, catch_up)
        allowed = s.replace(quality_expect_weekdays=False)
        assert check_ingest(allowed, counts, catch_up).ok


def test_a_window_with_a_query_is_not_judged_day_by_day(settings: Settings) -> None:
    from ingest.eutils import ingest_window
    from tests.emulator import running_emulator

    mon, tue, wed = dt.date(2024, 1, 8), dt.date(2024, 1, 9), dt.date(2024, 1, 10)
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(contextlib.contextmanager(running_emulator)())
        emulator.add_article(1, edat=mon, title="Statins")
        emulator.add_article(2, edat=tue, title="Kinases")
        s = emulator.configure(settings.replace(quality_max_staleness_days=0))
        counts = ingest_window(s, _at(tue), _at(wed), query="statins")
        assert counts.total == 1
        assert check_ingest(s, counts, (_at(tue), _at(wed))).ok


# ------------------------------ the share is judged over the records new to the check


def test_the_share_is_of_the_records_new_to_the_check(sqlite_settings: Settings) -> None:
    """A day's 20 new records, 5 malformed, behind an overlap day of 500 records an
    earlier check judged (``reseen``): 25 %, not 5 of 520. The same 500 taken over from a
    run no check judged are new to this check, and count."""
    s = sqlite_settings.replace(quality_max_staleness_days=0)
    day = {"inserted": 15, "unchanged": 500, "quarantined": 5}
    report = check_ingest(s, {**day, "reseen": 500}, raise_on_failure=False)
    assert not report.ok and report.quarantine_rate == pytest.approx(0.25)
    assert report.records == 520 and report.to_dict()["reseen"] == 500
    assert report.problems[0].startswith(
        "5 of 20 records quarantined (25.00%), of the records new to the check (500 more "
        "met again, judged by an earlier check), above LITPULSE_MAX_QUARANTINE_RATE=1.00%"
    )
    taken = check_ingest(s, day, raise_on_failure=False)
    assert taken.ok and taken.quarantine_rate == pytest.approx(5 / 520)
    # everything met again, judged: nothing new to the check, no share (no division by 0)
    judged = check_ingest(s, {"unchanged": 7, "reseen": 7, "quarantined": 2, "requarantined": 2})
    assert judged.ok and judged.quarantine_rate == 0.0


def test_a_window_killed_before_its_check_and_searched_again_reads_as_the_clean_run(
    settings: Settings,
) -> None:
    """A clean day of 1,000 good and 5 bad records passes (0.5 %). Killed before its
    check and searched again, the rerun meets the good ones unchanged, stored by a run
    no check judged: it takes them over and judges them with the bad ones, 5 of 1,005,
    as the clean run would. The next window meets them again, judged now (``reseen``):
    its own 20 new records with 5 malformed fail it (25 %), undiluted by the 1,005."""
    from sqlalchemy import select

    from ingest.eutils import ingest_window
    from litpulse.core.schema import articles, ingest_runs
    from tests.emulator import EmuArticle, running_emulator

    monday, tuesday, wednesday = (dt.date(2024, 1, 8) + dt.timedelta(days=i) for i in range(3))
    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(contextlib.contextmanager(running_emulator)())
        with emulator._lock:  # synthetic records, rendered on demand
            for pmid in range(1000, 2000):
                emulator.articles[pmid] = EmuArticle(pmid, monday, monday)
        for pmid in range(2000, 2005):
            emulator.add_article(pmid, edat=monday, xml=_malformed(pmid, monday))
        s = emulator.configure(
            settings.replace(quality_max_staleness_days=0, ncbi_api_key="k",
                             ncbi_email="t@example.org"),
            efetch_batch=1000,
        )  # fmt: skip
        engine = db.connect(s)
        first = ingest_window(s, _at(monday), _at(tuesday), check_follows=True)
        assert (first.inserted, first.quarantined) == (1000, 5)
        clean = check_ingest(s, first, raise_on_failure=False)  # no window: judges nothing
        assert clean.ok and clean.quarantine_rate == pytest.approx(5 / 1005)
        # killed before its check: the rerun searches the window again
        rerun = ingest_window(s, _at(monday), _at(tuesday), restart=True, check_follows=True)
        assert (rerun.unchanged, rerun.reseen, rerun.quarantined, rerun.requarantined) == (
            1000, 0, 5, 0)  # fmt: skip
        report = check_ingest(s, rerun, (_at(monday), _at(tuesday)))
        assert report.ok and report.quarantine_rate == clean.quarantine_rate
        with engine.connect() as conn:
            runs = conn.execute(select(ingest_runs.c.id, ingest_runs.c.judged_at)
                                .order_by(ingest_runs.c.id)).all()  # fmt: skip
            owners = set(conn.execute(select(articles.c.run_id).distinct()).scalars())
        assert [judged is not None for _, judged in runs] == [True, True]  # the window's
        assert owners == {runs[-1][0]}  # taken over by the rerun, which its check judged
        # the next window searches Monday again, and Tuesday: 20 new, 5 of them malformed
        for pmid in range(3000, 3015):
            emulator.add_article(pmid, edat=tuesday)
        for pmid in range(3015, 3020):
            emulator.add_article(pmid, edat=tuesday, xml=_malformed(pmid, tuesday))
        nxt = ingest_window(s, _at(tuesday), _at(wednesday), check_follows=True)
        assert (nxt.inserted, nxt.unchanged, nxt.reseen) == (15, 1000, 1000)
        assert (nxt.quarantined, nxt.requarantined) == (10, 5)
        with pytest.raises(DataQualityError, match=r"5 of 20 records quarantined \(25\.00%\)"):
            check_ingest(s, nxt, (_at(tuesday), _at(wednesday)))
