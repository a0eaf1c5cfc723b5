"""litpulse_nightly_ingest: a day of PubMed per run (and missed nights), checked, the asset."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Metadata, dag, get_current_context, task

from litpulse.pipeline.dag_support import (
    ARTICLES,
    CITATIONS_POKE_S,
    NCBI_POOL,
    NIGHTLY_DAG_ID,
    POOL_POKE_S,
    POOL_WATCH,
    dag_args,
    day_param,
    ingest_days,
    ingested,
    ingested_window,
    settings,
)

DAG_ID = NIGHTLY_DAG_ID

DOC_MD = """
### litpulse nightly ingest

**What it does.** Each run ingests its data interval: the interval
`[D 02:00, D+1 02:00)` (`CronDataIntervalTimetable("0 2 * * *")`, UTC) ingests the UTC day
`D`, complete two hours before the run starts, from PubMed E-utilities into the litpulse
store (`ingest.eutils.ingest_window(settings, D, D+1)`, half-open; it re-reads
`LITPULSE_WINDOW_OVERLAP_DAYS` earlier days for late-indexed records, and asks EFetch again
for the PMIDs earlier windows listed but did not get: `litpulse missing`), refreshes
iCite citations, then checks data quality, then emits the **`litpulse_articles`** asset (with
the window and the counts as metadata), which triggers `litpulse_index_refresh`. The window
moves the watermark only once `refresh_citations` and `data_quality` both passed (as with
`litpulse nightly`): when the refresh fails, `data_quality` does not run
(`upstream_failed`) and the window stays held (`litpulse status` lists it) until the
cleared tasks pass, or a later scheduled run ingests it again.
`ingest_window` decides the run's window once and hands it on (XCom) to `data_quality` and
`publish_articles`: a cleared `data_quality` checks the window that was ingested.

**Missed nights are caught up, within a bound.** With `catchup=False`, after the scheduler
was down or the DAG paused Airflow creates only the latest interval's run. A *scheduled*
run whose interval starts after the nightly watermark (where the last window that passed
its data-quality check ends; the CLI's `litpulse nightly` starts there too) reaches back:
it ingests from 00:00 UTC of the watermark's day to the end of its interval in one window,
checked whole. A night whose run failed is caught up the same way by the next scheduled run.
At most `LITPULSE_NIGHTLY_MAX_DAYS` days (default 14) per run: a run further behind fails
`ingest_window` at once (`DataQualityError`, not retried, alerted) and names the backfill of
the missed days (`airflow backfill create --dag-id litpulse_nightly_ingest --from-date
FIRST --to-date DAY_AFTER_LAST --max-active-runs 1`); run it, then clear the failed run.
Manual and backfill runs ingest exactly their days.

**Manual runs.** `airflow dags trigger litpulse_nightly_ingest` (no logical date) ingests the
last full UTC day before the trigger. Pick days with the params (inclusive ISO dates):
`airflow dags trigger litpulse_nightly_ingest --conf '{"first_day": "2026-11-28",
"last_day": "2026-11-29"}'`; params win over a logical date's data interval. Only complete
UTC days: a `last_day` of today or later is refused at the start (`ConfigError`, not
retried), and so is a range of more than `LITPULSE_NIGHTLY_MAX_DAYS` days (the message
names the backfill that ingests it one day per run). A conf key that is no param
(`firstday`) fails `ingest_window` at once, naming it: Airflow would ignore it.

**Reruns and backfills are safe.** A window is idempotent: a rerun finds every record
`unchanged`; checkpoints let a killed run resume. Backfill one day per run, one run at a
time: `airflow backfill create --dag-id litpulse_nightly_ingest --from-date 2026-01-01
--to-date 2026-01-08 --max-active-runs 1` (a backfill does **not** obey the DAG's
`max_active_runs`; without `--max-active-runs 1` it starts up to 10 runs at once). Unpause
the DAG first: Airflow starts no run of a paused DAG, backfill or not (they wait `queued`).

**A failed run.** Fix the cause, then clear its failed and upstream-failed tasks; they run
again: `airflow tasks clear litpulse_nightly_ingest --only-failed --yes` (every failed run of
the DAG; `-s`/`-e` with the logical date limit it to scheduled runs of those days), the UI's
*Clear*, or the REST API `POST /api/v2/dags/litpulse_nightly_ingest/clearTaskInstances`
with `{"dag_run_id": RUN, "only_failed": true, "dry_run": false}`. A backfill over failed
days: add `--reprocess-behavior failed`. When `data_quality` failed on what the window
returned (no record on a weekday, too many quarantined) and the cause was the source (a
mirror, NCBI), the window must be ingested again, not only judged again: clear
`ingest_window` with what follows it, `airflow tasks clear litpulse_nightly_ingest -t
ingest_window --downstream -s DAY -e DAY --yes` (the UI: *Clear* on `ingest_window` with
*Downstream*); a rerun searches the window afresh.

**Retries.** Transient NCBI failures (429, 5xx, timeouts: `TransientSourceError`) are retried
3 times, 2, 4 and 8 min after the first, second and third failure (after NCBI's `Retry-After`
instead when it asks for longer, at most 1 h); the count restarts at every clear.
Non-retryable errors (`InvalidRequestError`, `ParseError`, `ConfigError`,
`DataQualityError`) fail at once: retrying cannot help. A task killed from outside
(worker lost) is retried by Airflow itself, at most 8 min later.

**Pool.** `ingest_window` and `refresh_citations` run in the pool **`ncbi`** (1 slot: every
E-utilities and iCite call of all runs goes through one process, which keeps itself under
3 requests/s, 10 with an API key). While a manual `litpulse citations refresh` runs,
`await_citations_refresh` (a sensor in reschedule mode, outside the pool, looking every
30 s) waits for it, up to `LITPULSE_CITATIONS_WAIT_S`, holding no slot: past it the refresh
is skipped with a note, and the run goes on. Create it once:
`airflow pools set ncbi 1 "NCBI E-utilities/iCite calls of all litpulse runs (rate limit)"`.
The API key can live in Airflow's secrets backend as the connection `litpulse_ncbi`
(password = key, login = e-mail); else `LITPULSE_NCBI_API_KEY` of the worker.

**When `data_quality` fails** (`DataQualityError`): read its log. *Empty weekday*: check
NCBI's status page and the emulator/mirror URL (`LITPULSE_EUTILS_URL`), then clear the run.
*Quarantine rate*: `litpulse quarantine` lists the bad records and their reasons.
*Not moving forward*: the run inserted/updated nothing, no earlier window moved the
watermark up to this one, and the newest entrez date is days old: look for failed earlier
runs. Thresholds: `LITPULSE_MAX_QUARANTINE_RATE` (with `LITPULSE_QUALITY_MIN_QUARANTINED`),
`LITPULSE_QUALITY_EXPECT_WEEKDAYS`, `LITPULSE_QUALITY_MAX_STALENESS_DAYS`.

**Alerts.** A failed task, and a task that starts or finishes more than 6 h after its run
started, post to `LITPULSE_ALERT_WEBHOOK_URL` (always logged). A run still going after 12 h
times out, alerted too (naming the task left). Airflow warns of no missing pool (its
scheduler's log only: "Tasks using non-existent pool 'ncbi' will not be scheduled"):
`ncbi_pool_watch` (a sensor beside `ingest_window`, outside the pool, looking every 10 s)
alerts once when `ingest_window` has waited about 30 s for a slot while no run holds one
(the pool `ncbi` is missing or has 0 slots), naming `airflow pools get ncbi` and the
`airflow pools set` that makes it, and is skipped; the run waits and goes on once the pool
has a slot.
"""


@dag(
    **dag_args(
        DAG_ID, schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
        tags=["litpulse", "ingest", "pubmed"], doc_md=DOC_MD,
        alert_after_hours=6, timeout_hours=12,
        params={
            "first_day": day_param(
                "First UTC day (inclusive)",
                "Empty: the run's data interval, or the last full UTC day.",
            ),
            "last_day": day_param("Last UTC day (inclusive)", "Empty: the same as first_day."),
        },
    )
)
def litpulse_nightly_ingest() -> None:
    @task(pool=NCBI_POOL, execution_timeout=dt.timedelta(hours=4))
    def ingest_window() -> dict[str, Any]:
        """Decide the run's window (params, else the data interval, reaching back to the
        watermark on a scheduled run; refused when not complete or too long) and ingest it
        from E-utilities (alerting on PMIDs given up); the window and the counts go to XCom."""
        from litpulse.pipeline.nightly import ingest_eutils_window as run

        s = settings()
        window = ingest_days(get_current_context(), s)
        return ingested(window, run(s, *window).to_dict())

    @task.sensor(task_id=POOL_WATCH, mode="reschedule", poke_interval=POOL_POKE_S,
                 timeout=dt.timedelta(hours=12), soft_fail=True)  # fmt: skip
    def ncbi_pool_watch() -> bool:
        """Beside ``ingest_window``, outside the pool: alert within about a minute when it
        waits for a slot of ``ncbi`` while no run holds one (the pool is missing or has no
        slot: Airflow says so only in its scheduler's log), then skip; the run goes on."""
        from litpulse.pipeline.dag_support import pool_slot_awaited

        return pool_slot_awaited(get_current_context())

    @task.sensor(mode="reschedule", poke_interval=CITATIONS_POKE_S,
                 timeout=dt.timedelta(hours=25), soft_fail=True)  # fmt: skip
    def await_citations_refresh() -> bool:
        """Wait for a citation refresh another process runs, up to
        ``LITPULSE_CITATIONS_WAIT_S``, outside the ``ncbi`` pool: rescheduled between
        looks, it holds no slot meanwhile."""
        from litpulse.pipeline.dag_support import citations_refresh_awaited

        return citations_refresh_awaited(get_current_context())

    @task(pool=NCBI_POOL, execution_timeout=dt.timedelta(hours=2), trigger_rule="none_failed")
    def refresh_citations() -> dict[str, Any]:
        """Refresh iCite citation counts of the articles that need it, once the wait is over
        (a refresh another process still runs: the task succeeds with ``skipped`` and a
        note, as ``litpulse nightly``'s step)."""
        from litpulse.pipeline.nightly import citations_step

        return citations_step(settings(), wait_s=0.0)

    @task
    def data_quality(ingest: dict[str, Any]) -> dict[str, Any]:
        """After refresh_citations (a failed refresh leaves the window held from the
        watermark): fail (DataQualityError, not retried) on an empty weekday, quarantine or
        staleness of the window ingest_window ingested; once passed, it may move the
        watermark."""
        from litpulse.pipeline.nightly import check_window

        return check_window(settings(), ingest["counts"], ingested_window(ingest))

    @task(outlets=[ARTICLES], retries=0)
    def publish_articles(
        ingest: dict[str, Any], citations: dict[str, Any], quality: dict[str, Any]
    ) -> Any:
        """Emit the articles asset with the run's window and counts (triggers the index
        refresh)."""
        first, after = ingested_window(ingest)
        yield Metadata(
            ARTICLES,
            {
                "window_start": first.isoformat(),
                "window_end": after.isoformat(),
                **{k: int(v) for k, v in ingest["counts"].items()},
                "quarantine_rate": quality.get("quarantine_rate", 0.0),
                "citations": citations,
            },
        )

    ingest = ingest_window()
    ncbi_pool_watch()
    citations = refresh_citations()
    quality = data_quality(ingest)
    # as `litpulse nightly`: a window is through once the refresh and the check passed
    ingest >> await_citations_refresh() >> citations >> quality
    publish_articles(ingest, citations, quality)


litpulse_nightly_ingest()
