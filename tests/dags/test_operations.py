"""The DAGs as a data engineer operates them (found by a hostile review): missed nights,
params, retries, asset events.

Fast: the shared helpers (``litpulse.pipeline.dag_support``), the nightly's library
functions against the loopback emulator, and the DAG files' own task callables, loaded in
this process with ``AIRFLOW_HOME`` pointed at a temporary folder first.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from litpulse.core import db
from litpulse.core.errors import (
    ConfigError,
    DataQualityError,
    LitpulseError,
    RateLimitedError,
    TransientSourceError,
)
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import Emulator

UTC = dt.UTC
DAGS = Path(__file__).resolve().parents[2] / "dags"
MONDAY = dt.date(2024, 1, 8)




def _dag_module(name: str) -> tuple[ModuleType, Any]:
    """The DAG file ``dags/<name>.py`` executed in this process, and its DAG."""
    spec = importlib.util.spec_from_file_location(f"review_ops_{name}", DAGS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, getattr(module, name)()


def _at(day: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), UTC)


def _stored(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        return set(conn.execute(select(articles.c.pmid)).scalars())


# ------------------------------------------------ 1. days missed by the scheduler are lost


def _ctx(
    day: dt.date,
    run_type: str = "scheduled",
    first_day: str | None = None,
    last_day: str | None = None,
) -> dict[str, Any]:
    """The task context of the nightly-ingest run of the interval ``[day 02:00, +1 day)``."""
    return {"params": {"first_day": first_day, "last_day": last_day},
            "data_interval_start": _at(day, 2),
            "data_interval_end": _at(day + dt.timedelta(days=1), 2),
            "dag_run": SimpleNamespace(run_after=_at(day + dt.timedelta(days=1), 2),
                                       run_type=run_type)}


def _days(window: tuple[dt.datetime, dt.datetime]) -> tuple[dt.date, dt.date]:
    """First and last UTC day of a half-open window of whole days."""
    return window[0].date(), (window[1] - dt.timedelta(days=1)).date()


def test_nights_missed_by_the_scheduler_are_ingested_or_alerted(
    sup: ModuleType, sqlite_settings: Settings, emulator: Emulator
) -> None:
    """The scheduler is down Tuesday to Friday night (or the DAG paused). With
    ``catchup=False`` Airflow creates only the latest interval's run when it comes back:
    Friday's. Friday's run ingests Friday (plus one overlap day) and its quality check passes
    (it inserted records), so Wednesday's records are never ingested, silently. The
    scheduled run must reach back to where the last window ended (the watermark the CLI
    nightly uses), and its check must see (and release) that same window."""
    from litpulse.pipeline.nightly import check_window, ingest_eutils_window
    from litpulse.pipeline.planning import last_watermark

    s = emulator.configure(sqlite_settings)
    emulator.add_article(1, edat=MONDAY, title="Statins and the gut")

    def nightly_run(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        # the tasks ingest_window (decides the window) -> data_quality (the same window)
        days = sup.ingest_days(_ctx(day), s)
        counts = ingest_eutils_window(s, *days).to_dict()
        check_window(s, counts, days)
        return days

    assert nightly_run(MONDAY) == (_at(MONDAY), _at(MONDAY + dt.timedelta(days=1)))
    # the scheduler is down from Tuesday; PubMed goes on adding records
    emulator.add_article(2, edat=MONDAY + dt.timedelta(days=2), title="Kinase signalling")
    friday = MONDAY + dt.timedelta(days=4)
    emulator.add_article(3, edat=friday, title="Gut microbiome in mice")
    # ... every weekday (a weekday the window covers without a record fails its check)
    emulator.add_article(4, edat=MONDAY + dt.timedelta(days=1), title="Tuesday's trial")
    emulator.add_article(5, edat=MONDAY + dt.timedelta(days=3), title="Thursday's cohort")
    # Saturday morning it is back: catchup=False creates only Friday's interval run
    window = nightly_run(friday)
    assert _days(window) == (MONDAY + dt.timedelta(days=1), friday), window
    assert 2 in _stored(s), "Wednesday's record was never ingested and nothing failed"
    assert _stored(s) == {1, 2, 3, 4, 5}
    # the window that was checked is the one that was ingested: it moved the watermark
    assert last_watermark(s) == _at(friday + dt.timedelta(days=1))
    # the next night is back to one day
    saturday = friday + dt.timedelta(days=1)
    assert nightly_run(saturday) == (_at(saturday), _at(saturday + dt.timedelta(days=1)))


def test_a_run_too_far_behind_fails_at_once_with_the_backfill_and_the_backfill_works(
    sup: ModuleType, sqlite_settings: Settings, emulator: Emulator
) -> None:
    """Beyond LITPULSE_NIGHTLY_MAX_DAYS the scheduled run searches nothing and fails
    (not retryable) naming the backfill of exactly the missed days; backfill runs keep
    their own days, and the cleared run then ingests its own day only."""
    from litpulse.pipeline.nightly import check_window, ingest_eutils_window
    from litpulse.pipeline.planning import last_watermark

    s = emulator.configure(sqlite_settings, nightly_max_days=3)
    days = [MONDAY + dt.timedelta(days=i) for i in range(11)]
    for i, day in enumerate(days):
        emulator.add_article(100 + i, edat=day, title=f"Statin cohort of day {i}")

    def run(ctx: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
        window = sup.ingest_days(ctx, s)
        check_window(s, ingest_eutils_window(s, *window).to_dict(), window)
        return window

    run(_ctx(days[0]))
    # ten nights later: days[1]..days[9] missed, days[10] is the run's own interval
    searched = len(emulator.requests("esearch"))
    with pytest.raises(DataQualityError) as err:
        sup.ingest_days(_ctx(days[10]), s)
    assert not err.value.retryable
    command = ("airflow backfill create --dag-id litpulse_nightly_ingest --from-date "
               f"{days[1]} --to-date {days[10]} --max-active-runs 1")
    assert command in str(err.value), err.value
    assert "LITPULSE_NIGHTLY_MAX_DAYS=3" in str(err.value)
    assert "set LITPULSE_NIGHTLY_MAX_DAYS=10 on the workers" in str(err.value)  # the other way
    assert len(emulator.requests("esearch")) == searched  # refused before any search
    # a manual run of a day in the gap, and one by logical date, keep exactly their days
    assert _days(run(_ctx(days[10], "manual", str(days[5])))) == (days[5], days[5])
    assert _days(sup.ingest_days(_ctx(days[7], "manual"), s)) == (days[7], days[7])
    # the backfill the message names: one run per day, each exactly its own day
    for day in days[1:10]:
        assert _days(run(_ctx(day, "backfill"))) == (day, day)
    assert last_watermark(s) == _at(days[10])
    # the failed run, cleared: its own day only
    assert _days(run(_ctx(days[10]))) == (days[10], days[10])
    assert _stored(s) == {100 + i for i in range(11)}


def test_reach_back_is_bounded_and_leaves_windows_at_or_after_the_mark(sup: ModuleType) -> None:
    day = (_at(MONDAY), _at(MONDAY + dt.timedelta(days=1)))
    assert sup.reach_back(day, None, 14) == day  # nothing ingested yet
    assert sup.reach_back(day, day[0], 14) == day
    assert sup.reach_back(day, day[1], 14) == day  # a mark after the start: as is
    # a CLI nightly left the mark mid-day: the whole UTC day is ingested again
    mark = _at(MONDAY - dt.timedelta(days=2), 9)
    assert sup.reach_back(day, mark, 3) == (_at(MONDAY - dt.timedelta(days=2)), day[1])
    with pytest.raises(DataQualityError, match="more than LITPULSE_NIGHTLY_MAX_DAYS=2"):
        sup.reach_back(day, mark, 2)
    # a year and more behind: the backfill only (no setting reaches that far)
    with pytest.raises(DataQualityError) as err:
        sup.reach_back(day, _at(MONDAY - dt.timedelta(days=400)), 14)
    assert "--from-date 2022-12-04 --to-date 2024-01-08" in str(err.value)
    assert "set LITPULSE_NIGHTLY_MAX_DAYS" not in str(err.value)


# ------------------------------------------------------------- 2. params in the future


def test_a_manual_run_for_days_in_the_future_is_refused(sup: ModuleType) -> None:
    now = dt.datetime.now(UTC)
    future = (now + dt.timedelta(days=30)).date().isoformat()
    ctx = {"params": {"first_day": future, "last_day": None},
           "data_interval_start": None, "data_interval_end": None,
           "dag_run": SimpleNamespace(run_after=now)}
    with pytest.raises(LitpulseError) as err:
        sup.ingest_days(ctx)
    assert not err.value.retryable
    assert isinstance(err.value, ConfigError)
    assert "in the future" in str(err.value)


@pytest.mark.parametrize(
    ("first", "last", "said"),
    [
        (0, None, "is not over yet"),  # today: not complete
        (-3, 0, "is not over yet"),  # a range ending today
        (-3, 2, "in the future"),  # a range ending after today
    ],
)
def test_params_must_be_complete_days(
    sup: ModuleType, first: int, last: int | None, said: str
) -> None:
    now = dt.datetime(2026, 12, 4, 22, 30, tzinfo=UTC)
    today = now.date()

    def day(offset: int | None) -> str | None:
        return None if offset is None else (today + dt.timedelta(days=offset)).isoformat()

    with pytest.raises(ConfigError, match=said) as err:
        sup.window_days((None, None), now, day(first), day(last), now=now)
    assert not err.value.retryable
    assert "the last complete day is 2026-12-03" in str(err.value)
    # yesterday is complete
    yesterday = (today - dt.timedelta(days=1)).isoformat()
    assert sup.window_days((None, None), now, yesterday, None, now=now)[1] == _at(today)


def test_a_param_range_longer_than_a_run_may_take_is_refused_with_the_backfill(
    sup: ModuleType, sqlite_settings: Settings
) -> None:
    """Two years in one run would hold the ncbi pool for hours (and redo it all on a
    failure): more than LITPULSE_NIGHTLY_MAX_DAYS days is refused with the backfill."""
    s = sqlite_settings.replace(nightly_max_days=14)
    ctx = _ctx(MONDAY, "manual", "2024-01-01", "2025-12-31")
    with pytest.raises(ConfigError) as err:
        sup.ingest_days(ctx, s)
    assert not err.value.retryable
    assert ("airflow backfill create --dag-id litpulse_nightly_ingest --from-date 2024-01-01 "
            "--to-date 2026-01-01 --max-active-runs 1") in str(err.value)
    ok = _ctx(MONDAY, "manual", "2024-01-01", "2024-01-14")  # 14 days: allowed
    assert _days(sup.ingest_days(ok, s)) == (dt.date(2024, 1, 1), dt.date(2024, 1, 14))


def test_the_dag_tasks_use_the_window_ingest_window_decided(
    sup: ModuleType, sqlite_settings: Settings, emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The DAG file's own tasks: ``ingest_window`` decides the window once (reaching back on
    a scheduled run, refusing future params before any search); ``data_quality`` and
    ``publish_articles`` take it from its XCom, never from the context again."""
    from litpulse.pipeline.planning import last_watermark

    module, dag = _dag_module("litpulse_nightly_ingest")
    s = emulator.configure(sqlite_settings)
    monkeypatch.setattr(module, "settings", lambda: s)
    task = {t: dag.task_dict[t].python_callable
            for t in ("ingest_window", "data_quality", "publish_articles")}
    friday = MONDAY + dt.timedelta(days=4)
    emulator.add_article(1, edat=MONDAY, title="Statins and the gut")
    emulator.add_article(2, edat=MONDAY + dt.timedelta(days=2), title="Kinase signalling")
    emulator.add_article(3, edat=friday, title="Gut microbiome in mice")
    # PubMed adds records every weekday (one the window covers without any fails its check)
    emulator.add_article(4, edat=MONDAY + dt.timedelta(days=1), title="Tuesday's trial")
    emulator.add_article(5, edat=MONDAY + dt.timedelta(days=3), title="Thursday's cohort")

    def context(ctx: dict[str, Any]) -> None:
        monkeypatch.setattr(module, "get_current_context", lambda: ctx)

    def no_context() -> dict[str, Any]:
        raise AssertionError("a task after ingest_window decided the window again")

    context(_ctx(MONDAY))
    monday = task["ingest_window"]()
    monkeypatch.setattr(module, "get_current_context", no_context)
    task["data_quality"](monday)
    context(_ctx(friday))
    out = task["ingest_window"]()
    assert out["window_start"] == _at(MONDAY + dt.timedelta(days=1)).isoformat()
    assert out["window_end"] == _at(friday + dt.timedelta(days=1)).isoformat()
    assert out["counts"]["inserted"] == 4
    monkeypatch.setattr(module, "get_current_context", no_context)
    quality = task["data_quality"](out)
    assert last_watermark(s) == _at(friday + dt.timedelta(days=1))
    [event] = list(task["publish_articles"](out, {"fetched": 3}, quality))
    assert event.extra["window_start"] == out["window_start"]
    assert event.extra["window_end"] == out["window_end"]
    assert event.extra["inserted"] == 4
    # future params: refused in ingest_window, before any search
    searched = len(emulator.requests("esearch"))
    tomorrow = (dt.datetime.now(UTC) + dt.timedelta(days=1)).date().isoformat()
    context(_ctx(friday, "manual", tomorrow))
    with pytest.raises(ConfigError, match="in the future"):
        task["ingest_window"]()
    assert len(emulator.requests("esearch")) == searched


# ------------------------------------------------------- 3. Retry-After without a bound


def _task(retries: int = 3) -> SimpleNamespace:
    return SimpleNamespace(retries=retries, retry_delay=dt.timedelta(minutes=2),
                           retry_exponential_backoff=2.0,
                           max_retry_delay=dt.timedelta(minutes=8))


def test_a_huge_retry_after_does_not_outlive_the_run(sup: ModuleType) -> None:
    task = _task()
    decision = sup.LitpulseRetryPolicy().evaluate(
        RateLimitedError("HTTP 429 from efetch", retry_after=86400),
        try_number=1, max_tries=3, context={"ti": SimpleNamespace(task=task)},
    )
    assert decision.action.value == "retry"
    # the nightly's dagrun_timeout: a retry scheduled later than that never runs
    assert decision.retry_delay is not None
    assert decision.retry_delay <= dt.timedelta(hours=12), decision
    # the documented cap, with or without the task in the context
    assert decision.retry_delay == sup.MAX_RETRY_AFTER == dt.timedelta(hours=1)
    bare = sup.LitpulseRetryPolicy().evaluate(
        RateLimitedError("HTTP 429", retry_after=86400), try_number=1, max_tries=3)
    assert bare.retry_delay == sup.MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("try_number", "retry_after", "minutes"),
    [
        (1, 7, 2),  # a tiny Retry-After does not shorten the 2 min backoff
        (2, 7, 4),
        (3, 7, 8),
        (1, 600, 10),  # a longer one is waited for
        (3, 600, 10),
        (2, float("inf"), 60),  # capped
        (1, 0, 2),  # nothing usable: the backoff
        (1, -5, 2),
    ],
)
def test_retry_after_never_shortens_the_backoff(
    sup: ModuleType, try_number: int, retry_after: float, minutes: int
) -> None:
    decision = sup.LitpulseRetryPolicy().evaluate(
        RateLimitedError("HTTP 429", retry_after=retry_after),
        try_number=try_number, max_tries=3, context={"ti": SimpleNamespace(task=_task())},
    )
    assert decision.action.value == "retry"
    assert decision.retry_delay == dt.timedelta(minutes=minutes)


def test_a_retry_after_on_another_transient_error_is_bounded_too(sup: ModuleType) -> None:
    exc = TransientSourceError("HTTP 503")
    exc.retry_after = 10**9  # type: ignore[attr-defined]
    decision = sup.LitpulseRetryPolicy().evaluate(
        exc, try_number=1, max_tries=3, context={"ti": SimpleNamespace(task=_task())})
    assert decision.retry_delay == sup.MAX_RETRY_AFTER


# ------------------------------------- 4. litpulse_index emitted though nothing published


@pytest.mark.parametrize(
    ("dag_name", "task_id"),
    [("litpulse_index_refresh", "refresh_index"), ("litpulse_bootstrap", "publish_index"),
     ("litpulse_reindex", "publish_index")],
)
def test_no_index_asset_event_when_nothing_was_published(
    sup: ModuleType, monkeypatch: pytest.MonkeyPatch, dag_name: str, task_id: str
) -> None:
    """A task with ``outlets=[INDEX]`` that succeeds emits the asset event (the yielded
    ``Metadata`` only adds its extra); only a skip emits none, as ``publish_model`` of the
    retrain DAG does. A rerun of a day (every record unchanged) or a second bootstrap run
    publishes nothing, yet the asset says a new index version is out."""
    from airflow.sdk.exceptions import AirflowSkipException

    import ranking.refresh

    module, dag = _dag_module(dag_name)
    report = {"published": False, "id": "v1", "size": 24, "kind": "unchanged",
              "model_version": "base"}
    monkeypatch.setattr(module, "settings", lambda: None)
    monkeypatch.setattr(ranking.refresh, "refresh_index",
                        lambda *_a, **_k: SimpleNamespace(to_dict=lambda: report))
    call = dag.task_dict[task_id].python_callable
    args: tuple[Any, ...] = {"litpulse_index_refresh": (0,), "litpulse_bootstrap": ([0, 0],),
                             "litpulse_reindex": ([0, 0], [])}[dag_name]  # fmt: skip
    with pytest.raises(AirflowSkipException):
        list(call(*args))
    # a published version: the event, with the report
    report = {**report, "published": True, "id": "v2"}
    [event] = list(call(*args))
    assert event.asset.name == "litpulse_index"
    assert event.extra["id"] == "v2" and event.extra["embedded"] == 0


def test_the_digest_still_runs_after_a_refresh_that_published_nothing(sup: ModuleType) -> None:
    """A skipped ``refresh_index`` must not skip the digest (pending deliveries are retried
    by it); the short-circuit before them still skips everything after it."""
    _, dag = _dag_module("litpulse_index_refresh")
    assert dag.task_dict["digest"].trigger_rule == "none_failed"
    assert dag.task_dict["index_model_current"].ignore_downstream_trigger_rules is True


# ---------------------------------------------- the bootstrap DAG's accept_gaps param


def test_the_bootstrap_dag_applies_past_a_missing_file_only_with_its_accept_gaps_param(
    sup: ModuleType, sqlite_settings: Settings, emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The param ``accept_gaps`` (default false) is ``litpulse bootstrap --accept-gaps``:
    without it the files after a number missing from the listing wait (the writer applies
    those before, then fails naming the missing file); with it (a file NLM withdrew) the
    fetchers' list and the writer go past it."""
    from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
    from litpulse.core.errors import IncompleteSourceError
    from litpulse.core.schema import source_files

    module, dag = _dag_module("litpulse_bootstrap")
    assert dag.params["accept_gaps"] is False
    s = emulator.configure(sqlite_settings, ingest_workers=0)
    monkeypatch.setattr(module, "settings", lambda: s)
    task = {t: dag.task_dict[t].python_callable for t in ("list_files", "apply_files")}
    for name, pmids in (("pubmed25n0001.xml.gz", [1, 2]), ("pubmed25n0003.xml.gz", [3])):
        kind = "baseline" if name.endswith("0001.xml.gz") else "updatefiles"
        data = gz(pubmed_set([article_xml(p, edat=MONDAY) for p in pmids]))
        emulator.add_file(kind, name, data)  # n0002: withdrawn

    def run(accept_gaps: bool) -> list[str]:
        params = {"shards": 8, "accept_gaps": accept_gaps}
        monkeypatch.setattr(module, "get_current_context", lambda: {"params": params})
        return [f["name"] for f in task["list_files"]()]

    def applied() -> list[str]:
        with db.connect(s).connect() as conn:
            return sorted(conn.execute(select(source_files.c.name)).scalars())

    assert run(accept_gaps=False) == ["pubmed25n0001.xml.gz"]
    with pytest.raises(IncompleteSourceError, match=r"pubmed25n0002\.xml\.gz"):
        task["apply_files"]()
    assert applied() == ["pubmed25n0001.xml.gz"] and _stored(s) == {1, 2}
    assert run(accept_gaps=True) == ["pubmed25n0003.xml.gz"]
    assert task["apply_files"]()["applied"] == 1
    assert applied() == ["pubmed25n0001.xml.gz", "pubmed25n0003.xml.gz"]
    assert _stored(s) == {1, 2, 3}


# ------------------------------------------------------------------- the doc findings


def test_the_docs_state_the_real_shard_cap_and_the_killed_worker_delay() -> None:
    import configparser

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(DAGS.parent / "airflow.cfg")
    cap = cfg.getint("core", "max_active_tasks_per_dag")
    reindex = (DAGS / "litpulse_reindex.py").read_text()
    assert "as many workers as the pool allows" not in " ".join(reindex.split())
    assert f"**at most {cap} at once**" in reindex
    assert "max_active_tasks_per_dag" in reindex
    refresh = " ".join((DAGS / "litpulse_index_refresh.py").read_text().split())
    assert "Out-of-memory or a killed worker is retried twice (2 and 4 min" not in refresh
    assert "A task killed from outside" in refresh and "Airflow retries it itself" in refresh
