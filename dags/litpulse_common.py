"""What every litpulse DAG shares: assets, default arguments, retry policy, alerts.

Not a DAG file (listed in ``.airflowignore``); the DAG files import it from the DAGs
folder, which Airflow puts on ``sys.path``. Only light imports here: the library
functions are imported inside the task bodies, so parsing a DAG never loads torch,
faiss or transformers.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from airflow.sdk import (
    Asset,
    DeadlineAlert,
    DeadlineReference,
    RetryDecision,
    RetryPolicy,
    SyncCallback,
)

from litpulse.alerts import deadline_missed, notify
from litpulse.errors import LitpulseError

if TYPE_CHECKING:
    from airflow.sdk import Context

    from litpulse.settings import Settings

__all__ = [
    "ARTICLES",
    "INDEX",
    "MODEL",
    "DEFAULT_ARGS",
    "START_DATE",
    "LitpulseRetryPolicy",
    "deadline",
    "scalars",
    "settings",
    "task_failed",
]

#: The store holds a newly ingested, quality-checked day of PubMed.
ARTICLES = Asset(name="litpulse_articles", uri="litpulse://articles", group="litpulse")
#: A new FAISS index version is published.
INDEX = Asset(name="litpulse_index", uri="litpulse://index", group="litpulse")
#: A new model version was promoted to active.
MODEL = Asset(name="litpulse_model", uri="litpulse://model", group="litpulse")

#: Earliest day a backfill can reach (catchup is off: nothing runs by itself before today).
START_DATE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
OWNER = "litpulse-data"


class LitpulseRetryPolicy(RetryPolicy):
    """Retry exactly the errors litpulse marks retryable.

    * a :class:`~litpulse.errors.LitpulseError` with ``retryable = False`` (bad request,
      parse error, configuration, data quality, consistency) fails at once: repeating
      the call gives the same answer;
    * a retryable one (429, 5xx, timeouts, checksum mismatch) is retried with the task's
      exponential backoff, or after the server's ``Retry-After`` when it said;
    * anything else (an unexpected ``OSError``, a killed worker) takes the task's
      standard retries.
    """

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        if isinstance(exception, LitpulseError):
            name = type(exception).__name__
            if not exception.retryable:
                return RetryDecision.fail(f"{name} is not retryable: {exception}")
            after = getattr(exception, "retry_after", None)
            delay = dt.timedelta(seconds=float(after)) if after else None
            return RetryDecision.retry(delay=delay, reason=f"{name} is transient")
        return RetryDecision.default()

    def serialize(self) -> dict[str, Any]:
        return {"__type": "LitpulseRetryPolicy"}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> LitpulseRetryPolicy:
        return cls()


def settings() -> Settings:
    """The litpulse settings of the worker (``LITPULSE_*`` in its environment)."""
    from litpulse.settings import get_settings

    return get_settings()


def scalars(report: dict[str, Any]) -> dict[str, Any]:
    """The scalar fields of a report: asset metadata and XCom values stay small."""
    return {k: v for k, v in report.items() if v is None or isinstance(v, str | int | float | bool)}


def task_failed(context: Context) -> None:
    """``on_failure_callback``: name the DAG run and the failing task, then alert."""
    ti = context.get("ti")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id", "?")
    map_index = getattr(ti, "map_index", -1)
    exc = context.get("exception")
    where = f"{task_id}[{map_index}]" if map_index not in (None, -1) else task_id
    text = f"litpulse: task {dag_id}.{where} failed in run {run_id}"
    if exc is not None:
        text += f": {type(exc).__name__}: {exc}"
    details = {
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": map_index,
        "try_number": getattr(ti, "try_number", None),
        "log_url": getattr(ti, "log_url", None),
        "error": repr(exc) if exc is not None else None,
    }
    try:
        notify(settings(), text, details)
    except Exception:  # noqa: BLE001 - never mask the failure being reported
        import logging

        logging.getLogger(__name__).exception("alert failed: %s", text)


def deadline(dag_id: str, hours: float) -> DeadlineAlert:
    """Alert when a run of ``dag_id`` is not finished ``hours`` after it was queued."""
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=hours),
        callback=SyncCallback(deadline_missed, kwargs={"dag_id": dag_id, "hours": hours}),
    )


#: Arguments of every litpulse task. ``retry_exponential_backoff`` is a multiplier in
#: Airflow 3.3: delays of 2, 4, 8 … minutes, capped by ``max_retry_delay``.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=30),
    "retry_policy": LitpulseRetryPolicy(),
    "on_failure_callback": task_failed,
    "depends_on_past": False,
}
