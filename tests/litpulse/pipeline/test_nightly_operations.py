"""The nightly chain as an operator meets it (found by a hostile review): the watermark after
a failed step, retries, the summary, update files before E-utilities, cleared runs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from litpulse.core import db
from litpulse.core.errors import DataQualityError, TransientSourceError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import Emulator, article_xml, running_emulator

MONDAY = dt.date(2024, 1, 8)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    yield from running_emulator()


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _stored(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        return set(conn.execute(select(articles.c.pmid)).scalars())


# ------------------------------------------------------------------ 1. the nightly watermark


def test_a_nightly_failed_by_its_quality_check_is_ingested_again_by_the_rerun(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    from ingest.eutils import ingest_window
    from litpulse.pipeline.nightly import _window, run_nightly

    s = emulator.configure(sqlite_settings)
    # the nightly did not run for five days; NCBI answers the catch-up window with nothing
    since, until = _at(MONDAY), _at(MONDAY + dt.timedelta(days=5))
    with pytest.raises(DataQualityError, match="returned no record"):
        run_nightly(s, since=since, until=until, citations=False, retrain=False)
    # NCBI is fixed: the Wednesday records are there; the operator runs the nightly again
    emulator.add_article(1, edat=MONDAY + dt.timedelta(days=2), title="Statins and the gut")
    start, end = _window(s, db.connect(s), None, until + dt.timedelta(hours=1))
    ingest_window(s, start, end)
    assert 1 in _stored(s), f"the rerun's window {start}..{end} skipped the failed days"


# --------------------------------------------------------- 2. the DAG's quality gate on retry


def _malformed(pmid: int, day: dt.date) -> bytes:
    return article_xml(pmid, edat=day).replace(b"<ArticleTitle>", b"<ArticleTitle>Q&A <i>x")


def test_the_quality_gate_after_an_ingest_retry_sees_the_whole_window(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    from ingest.quality import check_ingest
    from litpulse.pipeline.dag_support import window_days
    from litpulse.pipeline.nightly import ingest_eutils_window

    day = MONDAY
    for pmid in (101, 102, 103):  # batch 0: all malformed
        emulator.add_article(pmid, edat=day, xml=_malformed(pmid, day))
    for pmid in (104, 105, 106):  # batch 1
        emulator.add_article(pmid, edat=day)
    # every quarantined record counts (the default minimum of 5 would pass these 3)
    s = emulator.configure(sqlite_settings.replace(quality_min_quarantined=1), efetch_batch=3,
                           max_retries=0)  # fmt: skip
    # the DAG run of `day` (data interval [day 02:00, day+1 02:00))
    first, after = window_days(
        (_at(day) + dt.timedelta(hours=2), _at(day) + dt.timedelta(days=1, hours=2)), None
    )
    emulator.faults.add("503", path="efetch", after=1, times=100)
    with pytest.raises(TransientSourceError):
        ingest_eutils_window(s, first, after)  # try 1: batch 0 stored, batch 1 fails
    emulator.faults.clear()
    counts = ingest_eutils_window(s, first, after).to_dict()  # try 2 (Airflow's retry)
    with pytest.raises(DataQualityError, match="quarantined"):
        check_ingest(s, counts, (first, after))  # 3 of 6 quarantined > 1 %


def test_the_night_after_a_bad_day_is_not_failed_again_by_the_same_bad_records(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    """Monday has 5 malformed records of 10: Monday's night fails its quality check (they
    are new). Tuesday's window searches Monday again (the one-day overlap) and meets the
    same 5: already in quarantine, not new, so Tuesday's 10 good records pass; the bad
    ones are said again as a warning, not a failure of every night after."""
    from ingest.quality import check_ingest
    from litpulse.pipeline.dag_support import window_days
    from litpulse.pipeline.nightly import ingest_eutils_window

    tuesday = MONDAY + dt.timedelta(days=1)
    for pmid in range(101, 106):
        emulator.add_article(pmid, edat=MONDAY, xml=_malformed(pmid, MONDAY))
    for pmid in range(106, 111):
        emulator.add_article(pmid, edat=MONDAY)
    for pmid in range(201, 211):
        emulator.add_article(pmid, edat=tuesday)
    s = emulator.configure(sqlite_settings)

    def night(day: dt.date) -> dict[str, int]:
        first, after = window_days(
            (_at(day) + dt.timedelta(hours=2), _at(day) + dt.timedelta(days=1, hours=2)), None
        )
        counts = ingest_eutils_window(s, first, after).to_dict()
        return counts

    monday = night(MONDAY)
    with pytest.raises(DataQualityError, match="5 of 10 records quarantined"):
        check_ingest(s, monday, (_at(MONDAY), _at(tuesday)))
    counts = night(tuesday)
    assert counts["quarantined"] == 5 and counts["requarantined"] == 5, counts
    report = check_ingest(s, counts, (_at(tuesday), _at(tuesday + dt.timedelta(days=1))))
    assert report.ok, report.problems
    assert _stored(s) >= set(range(201, 211))


# ----------------------------------------------------------------- 3. the nightly summary


def test_the_nightly_summary_says_the_digest_was_not_delivered() -> None:
    from litpulse.pipeline.nightly import NightlyReport

    report = NightlyReport(
        source="eutils", window_start=None, window_end=None,
        ingest={"inserted": 3}, quality={"ok": True}, citations=None, embedded=3,
        index={"published": True, "size": 3, "kind": "full", "model_version": "base"},
        retrain=None, retrain_decision=None,
        steps=(("ingest", 1.0), ("quality", 0.1), ("index", 1.0), ("digest", 0.2)),
        digest={"index_version": "v1", "matched": 2, "searches": [], "emailed": 0,
                "posted": 0, "failures": ["webhook for 'statins': HTTP 500"],
                "warnings": [], "skipped": None},
    )
    rows = {step: text for step, _, text in report.summary_rows()}
    assert "digest" in rows and "webhook" in rows["digest"], rows


# ------------------------------------------- 4. update-file runs and the E-utilities mark


def test_the_first_eutils_nightly_after_update_files_starts_where_they_ended(
    sqlite_settings: Settings,
) -> None:
    from ingest.runs import recorded_run
    from ingest.store import Store
    from litpulse.pipeline.nightly import _window

    s = sqlite_settings
    engine = db.connect(s)
    # what ingest.updatefiles.apply_updates and ingest.bootstrap.load_files record
    with recorded_run(Store(engine), "updatefiles", target="https://ftp.ncbi.nlm.nih.gov/") as run:
        run.details = {"files": ["pubmed26n1300.xml.gz"], "bootstrap": True}
    finished = db.utcnow()
    # the first `litpulse nightly` (E-utilities) three days after the bootstrap ended
    start, _ = _window(s, engine, None, finished + dt.timedelta(days=3))
    assert start <= finished, f"the first window starts {start}, days after the update files"


# --------------------------------------------- 5. the retrain DAG's catch-up on a clear


def _retrain_due_callable():  # the real task callable of dags/litpulse_retrain.py
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "dags" / "litpulse_retrain.py"
    spec = importlib.util.spec_from_file_location("hostile_review_retrain_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.litpulse_retrain()
    return module, dag.task_dict["retrain_due"].python_callable


def test_a_cleared_scheduled_retrain_run_is_not_skipped_as_a_catch_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    import litpulse.pipeline.planning as planning

    module, retrain_due = _retrain_due_callable()
    slot = dt.datetime(2026, 11, 29, 4, tzinfo=dt.UTC)  # Sunday 04:00 UTC
    # retrain_due failed at 04:01 (database down); the engineer cleared the run on Monday 09:30
    cleared = SimpleNamespace(
        run_type="scheduled", run_after=slot, logical_date=slot,
        start_date=slot + dt.timedelta(days=1, hours=5, minutes=30),
        queued_at=slot + dt.timedelta(days=1, hours=5, minutes=30), clear_number=1,
    )
    monkeypatch.setattr(module, "get_current_context", lambda: {"dag_run": cleared})
    monkeypatch.setattr(module, "settings", lambda: None)
    monkeypatch.setattr(
        planning, "retrain_due",
        lambda _s: planning.RetrainDecision(True, 900, 500, None, "900 new articles"),
    )
    assert retrain_due() is True


# ------------------------------------ 6. a later one-off window jumps the watermark over a gap


def test_a_later_one_day_window_does_not_move_the_nightly_watermark_over_a_gap(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    from ingest.eutils import ingest_window
    from litpulse.pipeline.nightly import _window

    s = emulator.configure(sqlite_settings)
    day = MONDAY
    emulator.add_article(1, edat=day, title="Kinase signalling in yeast")
    ingest_window(s, _at(day), _at(day + dt.timedelta(days=1)))  # last good nightly window
    emulator.add_article(2, edat=day + dt.timedelta(days=2), title="Statins and the gut")
    later = day + dt.timedelta(days=5)
    emulator.add_article(3, edat=later, title="Gut microbiome in mice")
    # the nightly is broken for days; someone pulls one later day by hand to look at it
    ingest_window(s, _at(later), _at(later + dt.timedelta(days=1)))
    # the nightly runs again (no --since): its window must reach record 2
    since, until = _window(s, db.connect(s), None, _at(later + dt.timedelta(days=2)))
    ingest_window(s, since, until)
    assert 2 in _stored(s), f"the nightly window {since}..{until} jumped the gap"


# --------------------------------- 7. the documented recovery of an empty-weekday failure


def test_the_documented_recovery_of_an_empty_weekday_ingests_the_window_again(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    from litpulse.pipeline.dag_support import window_days
    from litpulse.pipeline.nightly import check_window, ingest_eutils_window
    from litpulse.pipeline.planning import last_watermark

    s = emulator.configure(sqlite_settings)
    days = window_days(
        (_at(MONDAY) + dt.timedelta(hours=2), _at(MONDAY) + dt.timedelta(days=1, hours=2)), None
    )
    # try 1: the mirror answers nothing; ingest_window succeeds, data_quality fails
    counts = ingest_eutils_window(s, *days).to_dict()  # task ingest_window -> XCom
    with pytest.raises(DataQualityError, match="returned no record"):
        check_window(s, counts, days)  # task data_quality
    assert last_watermark(s) == days[0], "a window that failed its check moved the watermark"
    # the engineer fixes the mirror (LITPULSE_EUTILS_URL) ...
    emulator.add_article(1, edat=MONDAY, title="Statins and the gut")
    # `--only-failed` would run data_quality alone, on ingest_window's XCom: the same
    # empty counts, failed again (what the DAG's docs warned against)
    with pytest.raises(DataQualityError, match="returned no record"):
        check_window(s, counts, days)
    # ... so, as documented, the engineer clears ingest_window with its downstream tasks:
    counts = ingest_eutils_window(s, *days).to_dict()  # a fresh search of the window
    check_window(s, counts, days)  # data_quality passes
    assert 1 in _stored(s)
    assert last_watermark(s) == days[1], "the window that passed its check is not through"


# --------------------------- 8. a citations failure makes the nightly skip the quality gate


def test_a_window_whose_nightly_failed_at_citations_is_still_quality_checked(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    from litpulse.pipeline.nightly import run_nightly

    day = MONDAY
    for pmid in (101, 102, 103):
        emulator.add_article(pmid, edat=day, xml=_malformed(pmid, day))
    for pmid in (104, 105, 106):
        emulator.add_article(pmid, edat=day)
    # every quarantined record counts (the default minimum of 5 would pass these 3)
    s = emulator.configure(sqlite_settings.replace(quality_min_quarantined=1), max_retries=0)
    until = _at(day + dt.timedelta(days=5))  # the nightly catches up a week
    emulator.faults.add("503", path="/icite/", times=100)
    with pytest.raises(TransientSourceError):
        run_nightly(s, since=_at(day), until=until, retrain=False)  # iCite is down tonight
    emulator.faults.clear()
    # the operator runs the nightly again once iCite is back
    with pytest.raises(DataQualityError, match="quarantined"):
        run_nightly(s, retrain=False, until=until + dt.timedelta(hours=1))


def _nightly_killed_at_its_quality_check(settings: Settings, since: dt.datetime,
                                         until: dt.datetime) -> None:
    """In a forked child: the nightly, SIGKILLed as its data-quality step starts."""
    import os
    import signal

    import ingest.quality
    from litpulse.pipeline.nightly import run_nightly

    def killed(*_: object, **__: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    ingest.quality.check_ingest = killed  # type: ignore[assignment]
    db.dispose_engines()  # the child opens its own connections
    run_nightly(settings, since=since, until=until, citations=False, retrain=False)


def test_a_nightly_killed_before_its_quality_check_is_ingested_again_by_the_rerun(
    sqlite_settings: Settings, emulator: Emulator
) -> None:
    import multiprocessing

    from litpulse.pipeline.nightly import _window

    s = emulator.configure(sqlite_settings)
    since, until = _at(MONDAY), _at(MONDAY + dt.timedelta(days=5))
    child = multiprocessing.get_context("fork").Process(
        target=_nightly_killed_at_its_quality_check, args=(s, since, until)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -9, "the nightly was not killed at its check"
    start, _ = _window(s, db.connect(s), None, until + dt.timedelta(hours=1))
    assert start <= since, f"the rerun starts at {start}: the unchecked window is skipped"


def test_the_nightly_skips_its_retrain_while_an_operators_retrain_runs(
    settings: Settings,
) -> None:
    """A retrain refused by the ``retrain`` lease raises :class:`RetrainBusyError` (the CLI
    exits 75); the nightly's retrain step records it as skipped, naming the holder, and the
    night goes on to its digest."""
    from litpulse.pipeline import nightly
    from retrain.run import LEASE

    engine = db.connect(settings)
    lease = db.acquire_lease(engine, LEASE, holder="operator-host:4242:1")
    assert lease is not None
    try:
        step = nightly._retrain(settings, progress=False)
    finally:
        lease.release()
    assert step["status"] == "skipped"
    assert "another retrain (operator-host:4242:1" in step["reasons"][0]
