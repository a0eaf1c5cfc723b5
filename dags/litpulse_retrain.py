"""litpulse_retrain: weekly LoRA fine-tuning on the new literature, behind a promotion gate."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import CronTriggerTimetable, Metadata, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from litpulse.pipeline.dag_support import (
    MODEL,
    catchup_skip_reason,
    dag_args,
    run_params,
    scalars,
    settings,
    train_queue,
)

DAG_ID = "litpulse_retrain"

DOC_MD = """
### litpulse retrain

**Schedule.** Sundays 04:00 UTC (`CronTriggerTimetable`; no data interval: the training
window is "everything new since the last training"). No catch-up: with `catchup=False`
Airflow still creates the latest past Sunday's run when the DAG is unpaused (or the
scheduler comes back); a scheduled run that starts more than 6 h after its slot skips
everything (`retrain_due` logs "catch-up of the … slot"). Retrain now by hand:
`airflow dags trigger litpulse_retrain`.

**What it does.**
1. `retrain_due` short-circuits (skips the rest, with the reason in its log) on a catch-up
   run, or when fewer than `LITPULSE_RETRAIN_MIN_NEW_ARTICLES` live articles arrived since
   the last training.
2. `retrain` mines recency/citation-weighted pairs plus expert feedback, trains a LoRA adapter,
   evaluates it on fresh *and* older held-out sets and promotes it only if it passes the gate
   (`LITPULSE_GATE_FRESH_MARGIN`, `LITPULSE_GATE_OLDER_TOLERANCE`) (`retrain.run.retrain`).
3. `publish_model` emits **`litpulse_model`** only when a candidate was promoted; that asset
   triggers `litpulse_reindex`, which re-embeds the corpus in parallel shards and publishes
   the new index (the promotion itself defers that work to it). Until then searches use the
   previous index version, consistently: each index embeds queries with its own model.
   A rejected or skipped candidate skips this task: the active model and index stay.

**GPU.** Training uses `LITPULSE_DEVICE` (auto picks CUDA when visible). With CeleryExecutor,
route this task to a GPU worker: `LITPULSE_TRAIN_QUEUE=gpu` where the DAGs are parsed, and
`airflow celery worker --queues gpu` on the GPU host.

**On failure.** A `BudgetError` (the job would exceed its time/memory budget) is not retried:
lower the pair count or move it to a bigger worker. Other failures retry once, 2 min later;
then clear the task (`airflow tasks clear litpulse_retrain --only-failed --yes`, the UI or
the REST API). Roll back a bad promotion with `litpulse models rollback`. Failures, and tasks
that start or finish more than 12 h after their run started, alert to
`LITPULSE_ALERT_WEBHOOK_URL`; a run times out after 24 h (alerted).
"""


@dag(
    **dag_args(
        DAG_ID, schedule=CronTriggerTimetable("0 4 * * 0", timezone="UTC"),
        tags=["litpulse", "retrain", "lora"], doc_md=DOC_MD,
        retries=1, alert_after_hours=12, timeout_hours=24,
    )
)
def litpulse_retrain() -> None:
    @task.short_circuit(retries=0)
    def retrain_due() -> bool:
        """Whether this is no catch-up and enough new articles arrived (reason logged)."""
        import logging

        from litpulse.pipeline.planning import retrain_due as due

        log = logging.getLogger(__name__)
        context = get_current_context()
        run_params(context)  # it takes none: a conf given to it fails the run here
        dag_run = context["dag_run"]
        catchup = catchup_skip_reason(dag_run.run_type, dag_run.run_after, dag_run.start_date,
                                      cleared=getattr(dag_run, "clear_number", 0) or 0)
        if catchup is not None:
            log.info("retrain due: False (%s)", catchup)
            return False
        decision = due(settings())
        log.info("retrain due: %s (%s)", decision.due, decision.reason)
        return decision.due

    @task(execution_timeout=dt.timedelta(hours=10), queue=train_queue())
    def retrain() -> dict[str, Any]:
        """Train, evaluate and (if the gate passes) promote a candidate model version."""
        from litpulse.pipeline.planning import defer_reindex, lexical_negatives
        from retrain.run import RetrainBusyError
        from retrain.run import retrain as run

        s = settings()
        try:
            report = run(s, min_new_articles=s.retrain_min_new_articles, reindex=defer_reindex,
                         negatives=lexical_negatives(s))
        except RetrainBusyError as exc:  # another retrain (an operator's) trains this data
            raise AirflowSkipException(str(exc)) from exc
        data = report.to_dict()
        return {**scalars(data), "reasons": "; ".join(data.get("reasons") or [])}

    @task(outlets=[MODEL], retries=0)
    def publish_model(report: dict[str, Any]) -> Any:
        """Emit the model asset when a candidate was promoted; skip otherwise."""
        from litpulse.pipeline.planning import promoted_model

        model_id = promoted_model(report)
        if model_id is None:
            status, reasons = report.get("status"), report.get("reasons")
            raise AirflowSkipException(f"no promotion ({status}): {reasons}")
        yield Metadata(MODEL, {"model_version": model_id, **report})

    report = retrain()
    retrain_due() >> report
    publish_model(report)


litpulse_retrain()
