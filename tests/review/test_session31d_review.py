"""Hostile review (session 31d) of the Airflow operations a data engineer performs: retries,
clears of one task or a whole run, backfills and manual runs over past intervals, runs
overlapping, asset-triggered runs, mapped tasks.

World: the DAG files' own task callables (``dags/litpulse_nightly_ingest.py`` loaded in this
process, as tests/dags/test_operations.py does), driven with the task context Airflow gives
them (``run_type``, params, data interval), against the loopback NCBI emulator, on SQLite
and PostgreSQL.

Defects (was a strict xfail asserting the correct behaviour; fixed in the same session,
now a plain test: ``last_watermark`` starts its chain where the first run, by start time,
began; a window ending before that neither starts the chain nor cuts it):

D1. **A manual or backfill run of a day older than the first nightly window drags the
    nightly watermark back to that day, and the next scheduled run fails (or re-ingests
    weeks).** The nightly DAG has ingested 2024-03-04..03-07 one night at a time (watermark
    2024-03-08 00:00). The engineer pulls one old day by hand, as the README offers
    (``airflow dags trigger litpulse_nightly_ingest --conf '{"first_day": "2024-01-04"}'``;
    a backfill run of that day does the same: "Manual and backfill runs keep exactly their
    days"); it ingests that day and passes its check. ``last_watermark`` now answers
    2024-01-05 00:00: it is "the end of the windows that follow one another without a gap
    *from the earliest*", and the earliest window is now the old day's, followed by a gap.
    The next scheduled run (2024-03-08) reaches back to it and fails ``ingest_window`` with
    ``DataQualityError``: "the nightly ingest is 63 day(s) behind ... the days 2024-01-05 to
    2024-03-07 were never ingested" (false for 03-04..03-07) and names a backfill of two
    months; every night fails the same way until those two months are backfilled (ingested
    for nothing: the deployment never held them and did not want them). With a gap under
    ``LITPULSE_NIGHTLY_MAX_DAYS`` the scheduled run silently ingests the whole gap instead;
    the same happens while a documented backfill of history before the first night is
    under way (each backfilled day moves the mark back to it), and an old run that failed
    its check or was killed before it (held: its span reaches its start) does the same.
    What the engineer loses: the nightly ingest stops (no new records, no index refresh,
    no digest) after a documented operation. Reproduction:
    ``test_d1_a_manual_run_of_an_old_day_leaves_the_watermark`` (both databases). At fault:
    ``litpulse/pipeline/planning.py::last_watermark`` (the chain is started at the window
    that *begins* earliest, whatever ran first). Suggested fix: start the chain at the
    store's first ingest (the span of the earliest run by ``started_at``, or the update-file
    spans that cover all before), and let a window that ends before that chain's beginning
    (history pulled by hand or a backfill) neither start nor cut the chain; or ignore, for
    the watermark, windows of manual/backfill runs that end before the current mark.

Attacks that held (plain tests below, both databases):

* ``data_quality`` cleared and run again after it succeeded (same XCom counts; the run was
  judged already, the empty-weekday checkpoint is set once): passes again, the watermark
  unchanged (``test_held_data_quality_cleared_...``).
* A worker killed after ``ingest_window`` stored its window, before its XCom: the retry
  searches a new generation, its records met again are not "reseen" (the first run is
  unjudged) so the check judges the whole window once, and ``release_watermark`` releases
  both runs; ``ingest_window`` cleared alone after ``data_quality`` passed leaves a run of
  the window pending for ever, but ``last_watermark`` takes the max of the window's runs, so
  the mark stays (``test_held_ingest_cleared_alone_...``).
* The scheduled run of two days ago cleared after newer runs succeeded ingests its own day
  only and leaves the mark (``test_held_a_run_of_two_days_ago_...``).

Held by reading (no test here):
* A retry of ``ingest_window`` whose reach-back window changed between tries (a backfill's
  check moved the mark): the retry ingests its own, shorter window; the first try's rows are
  taken over by the next window meeting them.
* Reindex: a shard cleared after another model was promoted fails with ``ConsistencyError``
  and ``publish_index`` skips (``superseded_plan``); a ``publish_index`` or ``publish_model``
  cleared after it succeeded republishes the same model's index (a second version, a second
  event: work, no loss). Bootstrap: fetchers never write (a cleared or failed ``fetch_file``
  returns ``applied``/``left to the writer``); the one writer applies in ``source_files``
  order, so a cleared map index cannot re-apply an older file. The index refresh during a
  reindex of another model skips, and a refresh during a same-model reindex races only on
  upserts (``db.upsert`` on ``(pmid, model_version)``).
* A backfill run of a bad day whose check comes after the scheduled run reaching back over
  the same day ingested: the scheduled run takes the bad records over (no check judged them
  yet) and fails too; the next night meets them judged and passes. Per the documented rule
  (only what an earlier check judged is "met again"): a spurious alert, no loss.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import Emulator, running_emulator

UTC = dt.UTC
DAGS = Path(__file__).resolve().parents[2] / "dags"
#: The nightly DAG ran from this Monday on, one night at a time.
MONDAY = dt.date(2024, 3, 4)
#: A day two months before the first night, pulled by hand.
OLD_DAY = dt.date(2024, 1, 4)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    yield from running_emulator()


def _at(day: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), UTC)


def _ctx(
    day: dt.date,
    run_type: str = "scheduled",
    first_day: str | None = None,
    last_day: str | None = None,
) -> dict[str, Any]:
    """The task context of the nightly run of the interval ``[day 02:00, +1 day)``."""
    return {
        "params": {"first_day": first_day, "last_day": last_day},
        "data_interval_start": _at(day, 2),
        "data_interval_end": _at(day + dt.timedelta(days=1), 2),
        "dag_run": SimpleNamespace(run_after=_at(day + dt.timedelta(days=1), 2), run_type=run_type),
    }


def _stored(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        return set(conn.execute(select(articles.c.pmid)).scalars())


class Nightly:
    """The nightly DAG file's own tasks, run the way Airflow runs them: ``ingest_window``
    with the run's context, ``data_quality`` with its XCom."""

    def __init__(self, sup: ModuleType, settings: Settings, monkeypatch: pytest.MonkeyPatch):
        spec = importlib.util.spec_from_file_location(
            "review31d_litpulse_nightly_ingest", DAGS / "litpulse_nightly_ingest.py"
        )
        assert spec is not None and spec.loader is not None
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        dag = self.module.litpulse_nightly_ingest()
        self.tasks = {
            t: dag.task_dict[t].python_callable
            for t in ("ingest_window", "data_quality", "publish_articles")
        }
        self.monkeypatch = monkeypatch
        monkeypatch.setattr(self.module, "settings", lambda: settings)

    def ingest(self, ctx: dict[str, Any]) -> dict[str, Any]:
        self.monkeypatch.setattr(self.module, "get_current_context", lambda: ctx)
        return dict(self.tasks["ingest_window"]())

    def quality(self, xcom: dict[str, Any]) -> dict[str, Any]:
        return dict(self.tasks["data_quality"](xcom))

    def run(self, ctx: dict[str, Any]) -> dict[str, Any]:
        xcom = self.ingest(ctx)
        self.quality(xcom)
        return xcom


def _nights(emulator: Emulator, nightly: Nightly, n: int) -> None:
    """PubMed adds a record every day; the nightly DAG ingests ``n`` nights from MONDAY."""
    for i in range(n + 1):
        emulator.add_article(200 + i, edat=MONDAY + dt.timedelta(days=i), title=f"Trial {i}")
    for i in range(n):
        nightly.run(_ctx(MONDAY + dt.timedelta(days=i)))


# ------------------------------------------------------------------------------------ D1


def test_d1_a_manual_run_of_an_old_day_leaves_the_watermark(
    sup: ModuleType, settings: Settings, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litpulse.pipeline.planning import last_watermark

    s = emulator.configure(settings)
    nightly = Nightly(sup, s, monkeypatch)
    _nights(emulator, nightly, 4)  # 03-04 .. 03-07
    thursday_end = _at(MONDAY + dt.timedelta(days=4))
    assert last_watermark(s) == thursday_end
    # an old day pulled by hand (`airflow dags trigger ... --conf {"first_day": OLD_DAY}`)
    emulator.add_article(100, edat=OLD_DAY, title="An old cohort pulled by hand")
    old = nightly.run(_ctx(MONDAY + dt.timedelta(days=4), "manual", OLD_DAY.isoformat()))
    assert old["window_start"] == _at(OLD_DAY).isoformat()
    assert 100 in _stored(s)
    # the nightly's own chain is untouched: its mark stays where the last night ended
    assert last_watermark(s) == thursday_end, (
        f"the watermark moved back from {thursday_end} to {last_watermark(s)}"
    )
    # and the next scheduled run ingests its own day, not two months
    friday = MONDAY + dt.timedelta(days=4)
    xcom = nightly.ingest(_ctx(friday))
    assert (xcom["window_start"], xcom["window_end"]) == (
        _at(friday).isoformat(),
        _at(friday + dt.timedelta(days=1)).isoformat(),
    )


# ------------------------------------------------------------------- attacks that held


def test_held_data_quality_cleared_after_it_passed_passes_again_and_keeps_the_mark(
    sup: ModuleType, settings: Settings, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data_quality`` cleared and run again after it succeeded judges the same XCom counts
    the same way (the run and its weekdays were judged already) and moves nothing."""
    from litpulse.pipeline.planning import last_watermark

    s = emulator.configure(settings)
    nightly = Nightly(sup, s, monkeypatch)
    _nights(emulator, nightly, 2)
    xcom = nightly.ingest(_ctx(MONDAY + dt.timedelta(days=2)))
    first = nightly.quality(xcom)
    mark = last_watermark(s)
    assert mark == _at(MONDAY + dt.timedelta(days=3))
    again = nightly.quality(xcom)  # the cleared task, its XCom unchanged
    assert again["ok"] and again["records"] == first["records"]
    assert again["quarantine_rate"] == first["quarantine_rate"]
    assert last_watermark(s) == mark


def test_held_ingest_cleared_alone_or_retried_after_it_stored_keeps_the_mark(
    sup: ModuleType, settings: Settings, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ingest_window`` run again after its window was stored (a worker killed before the
    XCom, Airflow's retry; or the task cleared alone after ``data_quality`` passed): the
    new run of the window waits for a check that never comes, yet the mark stays; a retry
    whose check follows judges the window once and releases both runs."""
    from litpulse.pipeline.planning import last_watermark

    s = emulator.configure(settings)
    nightly = Nightly(sup, s, monkeypatch)
    _nights(emulator, nightly, 2)
    wednesday = MONDAY + dt.timedelta(days=2)
    emulator.add_article(300, edat=wednesday, title="A second Wednesday record")
    nightly.ingest(_ctx(wednesday))  # stored; the worker is killed before its XCom
    assert last_watermark(s) == _at(wednesday)  # held: its check has not passed
    retry = nightly.ingest(_ctx(wednesday))  # Airflow's retry: the same window
    assert retry["window_start"] == _at(wednesday).isoformat()
    report = nightly.quality(retry)
    assert report["ok"], report["problems"]
    assert last_watermark(s) == _at(wednesday + dt.timedelta(days=1))
    nightly.ingest(_ctx(wednesday))  # cleared alone: no check follows
    assert last_watermark(s) == _at(wednesday + dt.timedelta(days=1))
    thursday = nightly.ingest(_ctx(wednesday + dt.timedelta(days=1)))
    assert thursday["window_start"] == _at(wednesday + dt.timedelta(days=1)).isoformat()
    assert {200, 201, 202, 300} <= _stored(s)


def test_held_a_run_of_two_days_ago_cleared_after_newer_ones_ingests_its_own_day(
    sup: ModuleType, settings: Settings, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole scheduled run of Tuesday cleared on Friday, after Wednesday's and Thursday's
    succeeded: it reaches back to nothing (the mark is past its start), ingests and checks
    its own day again, and the mark stays where Thursday ended."""
    from litpulse.pipeline.planning import last_watermark

    s = emulator.configure(settings)
    nightly = Nightly(sup, s, monkeypatch)
    _nights(emulator, nightly, 4)
    mark = last_watermark(s)
    assert mark == _at(MONDAY + dt.timedelta(days=4))
    tuesday = MONDAY + dt.timedelta(days=1)
    xcom = nightly.run(_ctx(tuesday))  # the cleared run: both tasks again
    assert (xcom["window_start"], xcom["window_end"]) == (
        _at(tuesday).isoformat(),
        _at(tuesday + dt.timedelta(days=1)).isoformat(),
    )
    assert last_watermark(s) == mark
