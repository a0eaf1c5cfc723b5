"""litpulse_reindex: after a promotion, re-embed the corpus in mapped shards and rebuild."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from litpulse.core.widths import SHARDS_MAX
from litpulse.pipeline.dag_support import (
    INDEX,
    MODEL,
    dag_args,
    index_event,
    run_params,
    settings,
)

DAG_ID = "litpulse_reindex"

DOC_MD = """
### litpulse reindex

**Trigger.** Every `litpulse_model` asset event (a model version was promoted), or by hand
with the `shards` parameter.

**What it does.** `plan_shards` splits the live corpus into `shards` PMID shards
(`pmid % shards`) for the active model version; `embed_shard` runs once per shard as a
**mapped task** (`.expand()`), so the shards run in parallel: **at most 4 at once** with the
shipped `airflow.cfg` (`[core] max_active_tasks_per_dag = 4`, which in Airflow 3 caps the
running tasks of each DAG run), and never more than the free executor slots (`[core]
parallelism = 8`; with Celery, the workers' `worker_concurrency`). To run more shards at once
raise `max_active_tasks_per_dag` (in `airflow.cfg` or `AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG`
where the scheduler runs; it applies to every litpulse DAG) up to 8, the bound `embed_shard`
sets itself (`max_active_tis_per_dag=8`), with `parallelism` and the worker slots to match.
`publish_index` rebuilds the FAISS index for that model version and publishes it atomically,
emitting **`litpulse_index`**; when it publishes nothing (the reason in its log) it is
skipped and no `litpulse_index` event is emitted.

**Resuming.** A shard embeds only the articles that have no vector for the model version yet:
clearing one failed shard redoes only what is missing. If the active model changes while
this runs, the shards fail with `ConsistencyError` (not retried): the newer promotion has
queued its own reindex run.

**On failure.** Clear the failed shards only: `airflow tasks clear litpulse_reindex
--only-failed --yes` (or the UI / REST `clearTaskInstances`); `publish_index` follows.
Failures, and tasks that start or finish more than 24 h after their run started, alert to
`LITPULSE_ALERT_WEBHOOK_URL`; a run times out after 48 h (alerted).

**Sizing.** One shard of PubMed (~38M articles) / 16 is ~2.4M texts: about 2 h on one GPU
with all-MiniLM-L6-v2. Raise `shards` and add GPU workers to go faster, and raise the
per-run task cap above (4) to use more than 4 of them at once.
"""


@dag(
    **dag_args(
        DAG_ID, schedule=[MODEL], tags=["litpulse", "index", "embedding"], doc_md=DOC_MD,
        retries=2, alert_after_hours=24, timeout_hours=48,
        params={
            "shards": Param(4, type="integer", minimum=1, maximum=SHARDS_MAX, title="PMID shards"),
        },
    )
)
def litpulse_reindex() -> None:
    @task(retries=0)
    def plan_shards() -> list[dict[str, Any]]:
        """One small dict per shard: shard number, shard count, model version."""
        from litpulse.pipeline.planning import plan_embedding_shards

        shards = int(run_params(get_current_context())["shards"])
        return [s.to_dict() for s in plan_embedding_shards(settings(), shards)]

    @task(execution_timeout=dt.timedelta(hours=6), max_active_tis_per_dag=8)
    def embed_shard(shard: dict[str, Any]) -> int:
        """Embed the shard's articles that lack a vector for the model version."""
        from litpulse.pipeline.planning import EmbeddingShard, embed_shard

        return embed_shard(settings(), EmbeddingShard.from_dict(shard))

    @task(outlets=[INDEX], execution_timeout=dt.timedelta(hours=6))
    def publish_index(embedded: list[int], shards: list[dict[str, Any]]) -> Any:
        """Rebuild the index for the active model version and publish it atomically;
        skipped when another model was promoted after the shards were planned (its own
        run publishes: this one would embed the whole corpus for it in one task)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from litpulse.pipeline.planning import superseded_plan
        from ranking.refresh import refresh_index

        why = superseded_plan(settings(), shards)
        if why is not None:
            raise AirflowSkipException(f"{why}; no index published by this run")
        report = refresh_index(settings(), rebuild=True).to_dict()
        yield index_event(report, sum(embedded))

    planned = plan_shards()
    publish_index(embed_shard.expand(shard=planned), planned)


litpulse_reindex()
