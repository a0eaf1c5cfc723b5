"""litpulse_nightly_ingest: one day of PubMed per run, quality-checked, then the asset."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Metadata, dag, get_current_context, task

from litpulse.pipeline.dag_support import (
    ARTICLES,
    NCBI_POOL,
    dag_args,
    day_param,
    ingest_days,
    settings,
)

DAG_ID = "litpulse_nightly_ingest"

DOC_MD = """
### litpulse nightly ingest

**What it does.** Each run ingests exactly its data interval: the interval
`[D 02:00, D+1 02:00)` (`CronDataIntervalTimetable("0 2 * * *")`, UTC) ingests the UTC day
`D`, complete two hours before the run starts, from PubMed E-utilities into the litpulse
store (`ingest.eutils.ingest_window(settings, D, D+1)`, half-open; it re-reads
`LITPULSE_WINDOW_OVERLAP_DAYS` earlier days for late-indexed records, and asks EFetch again
for the PMIDs earlier windows listed but did not get: `litpulse missing`), refreshes
iCite citations, checks data quality, then emits the **`litpulse_articles`** asset (with the
counts as metadata), which triggers `litpulse_index_refresh`.

**Manual runs.** `airflow dags trigger litpulse_nightly_ingest` (no logical date) ingests the
last full UTC day before the trigger. Pick days with the params (inclusive ISO dates):
`airflow dags trigger litpulse_nightly_ingest --conf '{"first_day": "2026-11-28",
"last_day": "2026-11-29"}'`; params win over a logical date's data interval.

**Reruns and backfills are safe.** A window is idempotent: a rerun finds every record
`unchanged`; checkpoints let a killed run resume. Backfill one day per run, one run at a
time: `airflow backfill create --dag-id litpulse_nightly_ingest --from-date 2026-01-01
--to-date 2026-01-08 --max-active-runs 1` (a backfill does **not** obey the DAG's
`max_active_runs`; without `--max-active-runs 1` it starts up to 10 runs at once).

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
when it sends one); the count restarts at every clear. Non-retryable errors
(`InvalidRequestError`, `ParseError`, `ConfigError`, `DataQualityError`) fail at once:
retrying cannot help. A task killed from outside (worker lost) is retried by Airflow itself,
at most 8 min later.

**Pool.** `ingest_window` and `refresh_citations` run in the pool **`ncbi`** (1 slot: every
E-utilities and iCite call of all runs goes through one process, which keeps itself under
3 requests/s, 10 with an API key). Create it once:
`airflow pools set ncbi 1 "NCBI E-utilities/iCite calls of all litpulse runs (rate limit)"`.
The API key can live in Airflow's secrets backend as the connection `litpulse_ncbi`
(password = key, login = e-mail); else `LITPULSE_NCBI_API_KEY` of the worker.

**When `data_quality` fails** (`DataQualityError`): read its log. *Empty weekday*: check
NCBI's status page and the emulator/mirror URL (`LITPULSE_EUTILS_URL`), then clear the run.
*Quarantine rate*: `litpulse quarantine` lists the bad records and their reasons.
*Not moving forward*: the run inserted/updated nothing, no earlier window moved the
watermark up to this one, and the newest entrez date is days old: look for failed earlier
runs. Thresholds: `LITPULSE_MAX_QUARANTINE_RATE`, `LITPULSE_QUALITY_EXPECT_WEEKDAYS`,
`LITPULSE_QUALITY_MAX_STALENESS_DAYS`.

**Alerts.** A failed task, and a task that starts or finishes more than 6 h after its run
started, post to `LITPULSE_ALERT_WEBHOOK_URL` (always logged). A run still going after 12 h
times out.
"""


def _days() -> tuple[dt.datetime, dt.datetime]:
    """The UTC days this run ingests (params, else data interval, else the last full day)."""
    return ingest_days(get_current_context())


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
    def ingest_window() -> dict[str, int]:
        """Ingest the run's days from E-utilities (alerting on PMIDs given up); the counts
        go to XCom."""
        from litpulse.pipeline.nightly import ingest_eutils_window as run

        first, after = _days()
        return run(settings(), first, after).to_dict()

    @task(pool=NCBI_POOL, execution_timeout=dt.timedelta(hours=2))
    def refresh_citations() -> dict[str, Any]:
        """Refresh iCite citation counts of the articles that need it."""
        from ingest.citations import refresh_citations as run

        return run(settings()).to_dict()

    @task
    def data_quality(counts: dict[str, int]) -> dict[str, Any]:
        """Fail (DataQualityError, not retried) on an empty weekday, quarantine or staleness;
        once passed, the window may move the nightly watermark."""
        from litpulse.pipeline.nightly import check_window

        return check_window(settings(), counts, _days())

    @task(outlets=[ARTICLES], retries=0)
    def publish_articles(
        counts: dict[str, int], citations: dict[str, Any], quality: dict[str, Any]
    ) -> Any:
        """Emit the articles asset with the run's counts (triggers the index refresh)."""
        first, after = _days()
        yield Metadata(
            ARTICLES,
            {
                "window_start": first.isoformat(),
                "window_end": after.isoformat(),
                **{k: int(v) for k, v in counts.items()},
                "quarantine_rate": quality.get("quarantine_rate", 0.0),
                "citations": citations,
            },
        )

    counts = ingest_window()
    citations = refresh_citations()
    quality = data_quality(counts)
    counts >> citations
    publish_articles(counts, citations, quality)


litpulse_nightly_ingest()
