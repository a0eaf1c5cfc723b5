"""litpulse_nightly_ingest: one day of PubMed per run, quality-checked, then the asset."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Metadata, dag, get_current_context, task
from litpulse_common import ARTICLES, DEFAULT_ARGS, START_DATE, deadline, settings

DAG_ID = "litpulse_nightly_ingest"

DOC_MD = """
### litpulse nightly ingest

**What it does.** Each run ingests exactly its data interval: the interval
`[D 02:00, D+1 02:00)` (`CronDataIntervalTimetable("0 2 * * *")`, UTC) ingests the UTC day
`D`, complete two hours before the run starts, from PubMed E-utilities into the litpulse
store (`ingest.eutils.ingest_window(settings, D, D+1)`, half-open; it re-reads
`LITPULSE_WINDOW_OVERLAP_DAYS` earlier days for late-indexed records), refreshes
iCite citations, checks data quality, then emits the **`litpulse_articles`** asset (with the
counts as metadata), which triggers `litpulse_index_refresh`.

**Reruns and backfills are safe.** A window is idempotent: a rerun finds every record
`unchanged`; checkpoints let a killed run resume. Backfill a range with
`airflow backfill create --dag-id litpulse_nightly_ingest --from-date 2026-01-01
--to-date 2026-01-08` (runs one at a time: `max_active_runs=1`).

**Retries.** Transient NCBI failures (429, 5xx, timeouts: `TransientSourceError`) are retried
with exponential backoff (2, 4, 8 min). Non-retryable errors (`InvalidRequestError`,
`ParseError`, `ConfigError`, `DataQualityError`) fail at once: retrying cannot help.

**Pool.** `ingest_window` runs in the pool **`ncbi`** (1 slot: every E-utilities call of all
runs goes through one process, which keeps itself under 3 requests/s, 10 with an API key).
Create it once: `airflow pools set ncbi 1 "NCBI E-utilities (rate limit)"`.

**When `data_quality` fails** (`DataQualityError`): read its log. *Empty weekday*: check
NCBI's status page and the emulator/mirror URL (`LITPULSE_EUTILS_URL`), then clear the run.
*Quarantine rate*: `litpulse quarantine` lists the bad records and their reasons.
*Stale watermark*: the newest entrez date is days old; look for failed earlier runs.
Thresholds: `LITPULSE_MAX_QUARANTINE_RATE`, `LITPULSE_QUALITY_EXPECT_WEEKDAYS`,
`LITPULSE_QUALITY_MAX_STALENESS_DAYS`.

**Alerts.** A failed task and a run still going 6 h after it was queued post to
`LITPULSE_ALERT_WEBHOOK_URL` (always logged).
"""


def _days() -> tuple[dt.datetime, dt.datetime]:
    """The UTC days this run ingests: ``[first day 00:00, day after the last 00:00)``.

    A run's data interval ``[D 02:00, D+1 02:00)`` covers day ``D`` (complete two hours
    before the run starts); longer intervals cover every day they start, so consecutive
    runs ingest consecutive days with neither gap nor overlap (``ingest_window`` adds
    ``LITPULSE_WINDOW_OVERLAP_DAYS`` itself for late-indexed records).
    """
    ctx = get_current_context()
    start, end = ctx.get("data_interval_start"), ctx.get("data_interval_end")
    if start is None or end is None:
        from litpulse.errors import ConfigError

        raise ConfigError("this run has no data interval; trigger it with a logical date")
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    first = start.date()
    last = max(first, (end - dt.timedelta(days=1)).date())
    midnight = dt.time(tzinfo=dt.UTC)
    return (
        dt.datetime.combine(first, midnight),
        dt.datetime.combine(last + dt.timedelta(days=1), midnight),
    )


@dag(
    dag_id=DAG_ID,
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["litpulse", "ingest", "pubmed"],
    doc_md=DOC_MD,
    deadline=deadline(DAG_ID, hours=6),
    dagrun_timeout=dt.timedelta(hours=12),
)
def litpulse_nightly_ingest() -> None:
    @task(pool="ncbi", execution_timeout=dt.timedelta(hours=4))
    def ingest_window() -> dict[str, int]:
        """Ingest the run's data interval from E-utilities; the counts go to XCom."""
        from ingest.eutils import ingest_window as run

        first, after = _days()
        return run(settings(), first, after).to_dict()

    @task(execution_timeout=dt.timedelta(hours=2))
    def refresh_citations() -> dict[str, Any]:
        """Refresh iCite citation counts of the articles that need it."""
        from ingest.citations import refresh_citations as run

        return run(settings()).to_dict()

    @task
    def data_quality(counts: dict[str, int]) -> dict[str, Any]:
        """Fail (DataQualityError, not retried) on an empty weekday, quarantine or staleness."""
        from litpulse.quality import check_ingest

        return check_ingest(settings(), counts, _days()).to_dict()

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
