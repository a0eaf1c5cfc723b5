"""litpulse_index_refresh: embed what is new, refresh the FAISS index, emit the asset, digest."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import TriggerRule, dag, get_current_context, task

from litpulse.pipeline.dag_support import (
    ARTICLES,
    INDEX,
    dag_args,
    index_event,
    run_params,
    settings,
)

DAG_ID = "litpulse_index_refresh"

DOC_MD = """
### litpulse index refresh

**Trigger.** Every `litpulse_articles` asset event (a finished, quality-checked nightly ingest).

**What it does.** `index_model_current` skips the run (reason in its log) while a newly
promoted model waits for `litpulse_reindex` to re-embed the corpus in shards (a run of it
is queued or running, or the promotion is less than an hour old). When the published index
is for another model than the active one and no such run is coming (an inline re-index of
`litpulse models promote` was killed, the last litpulse_reindex run failed, or
`litpulse_reindex` is paused: its queued runs never start and a promotion queues none —
unpause it, and trigger it where no run is queued), it **fails**
with `ConsistencyError` (alerted, not retried) instead of skipping every night: finish the
re-index with `airflow dags trigger litpulse_reindex` (or clear the failed shards of its
last run) or `litpulse index refresh`; embeddings already written are kept. Then
`embed_pending` embeds the new and changed articles with the *active* model
version (`ranking.embed.embed_pending`), then `refresh_index` adds them to (and removes
deleted articles from) the FAISS index and publishes a new index version atomically
(`ranking.refresh.refresh_index`), emitting **`litpulse_index`** with the index report.
When it publishes nothing (every article unchanged, e.g. a rerun of a day; or a new
version would drop live articles, the reason in its log) `refresh_index` is **skipped**
and no `litpulse_index` event is emitted: the asset means a new index version.
Then `digest` (after `refresh_index` succeeded or skipped) records each saved search's new
matches and sends what is pending by e-mail and webhook
(`litpulse.pipeline.digest.digest_step`; a failed delivery is retried by the next digest,
so the task itself does not fail on it).

**Resuming.** Embeddings are stored per (PMID, model version, text hash): a failed or killed
run re-embeds nothing already done. Publishing is write-aside-then-switch, so searches never
see a half-built index; a rerun is safe.

**On failure.** `ConsistencyError` (index and database disagree) is not retried: run
`litpulse index check`, then `litpulse index refresh --rebuild` if needed. Other errors a
task raises (a `MemoryError`, a database hiccup) are retried twice, 2 and 4 min later (the
count restarts at every clear). A task killed from outside (the OOM killer, a lost worker)
raises nothing: Airflow retries it itself, twice, after its own delay (2 min growing with
the try number, at most 8 min: `max_retry_delay`). Then clear the failed task:
`airflow tasks clear litpulse_index_refresh --only-failed --yes`, the UI's *Clear* or the
REST API `clearTaskInstances`.

**Alerts.** Failures, and tasks that start or finish more than 4 h after their run started,
go to `LITPULSE_ALERT_WEBHOOK_URL` (always logged). A run still going after 8 h times out (alerted).
"""


@dag(
    **dag_args(
        DAG_ID, schedule=[ARTICLES], tags=["litpulse", "index", "faiss"], doc_md=DOC_MD,
        retries=2, alert_after_hours=4, timeout_hours=8,
    )
)
def litpulse_index_refresh() -> None:
    @task.short_circuit(retries=0)
    def index_model_current() -> bool:
        """Skip while a litpulse_reindex run re-embeds for a promoted model (reason logged);
        fail when a re-index is pending and none is coming (also: that DAG is paused)."""
        import logging

        from litpulse.pipeline.dag_support import active_runs, dag_paused
        from litpulse.pipeline.planning import refresh_waits_for_reindex

        run_params(get_current_context())  # it takes none: a conf given to it fails here
        reason = refresh_waits_for_reindex(
            settings(),
            reindex_runs=lambda: active_runs("litpulse_reindex"),
            reindex_paused=lambda: dag_paused("litpulse_reindex"),
        )
        if reason:
            logging.getLogger(__name__).info("skipping the incremental refresh: %s", reason)
        return reason is None

    @task(execution_timeout=dt.timedelta(hours=4))
    def embed_pending() -> int:
        """Embed new and changed articles with the active model; returns how many."""
        from ranking.embed import embed_pending as run

        return int(run(settings()))

    @task(outlets=[INDEX], execution_timeout=dt.timedelta(hours=2))
    def refresh_index(embedded: int) -> Any:
        """Add/remove vectors and publish a new index version; emits the index asset, or
        skips (no event) when nothing was published."""
        from ranking.refresh import refresh_index as run

        report = run(settings(), embed=False).to_dict()  # embed_pending did it
        yield index_event(report, embedded)

    # after a refresh that published nothing too; a short-circuit skips it all the same
    @task(execution_timeout=dt.timedelta(hours=1), trigger_rule=TriggerRule.NONE_FAILED)
    def digest() -> dict[str, Any]:
        """Saved searches: record the new matches, send e-mail and webhook (report)."""
        from litpulse.pipeline.digest import digest_step

        return digest_step(settings())

    embedded = embed_pending()
    index_model_current() >> embedded
    refresh_index(embedded) >> digest()


litpulse_index_refresh()
