"""What every litpulse DAG shares: assets, default arguments, retry policy, alerts, windows.

Imported by the DAG files in ``dags/`` only (``from litpulse.pipeline.dag_support import …``):
it lives in the installed package, so every way Airflow loads the DAGs folder (the
scheduler, the dag processor, ``airflow dags list --local``, ``dags test``, a Celery worker)
finds it without the DAGs folder on ``sys.path``. Library code never imports it, nor the
DAG files. Only light imports at module level: the library functions are imported inside
the task bodies, so parsing a DAG never loads torch, faiss or transformers.

Example:
    >>> run_overdue(dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC),
    ...             dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC), hours=6)
    'running for 7.0 h since it started, over its 6 h budget'
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, Param, RetryDecision, RetryPolicy

from litpulse.core.errors import ConfigError, LitpulseError
from litpulse.core.timeutil import parse_date
from litpulse.pipeline.alerts import notify

if TYPE_CHECKING:
    from airflow.sdk import Context

    from litpulse.core.settings import Settings

__all__ = [
    "ARTICLES",
    "CATCHUP_GRACE",
    "DEFAULT_ARGS",
    "INDEX",
    "MODEL",
    "NCBI_CONN_ID",
    "NCBI_POOL",
    "START_DATE",
    "LitpulseRetryPolicy",
    "RunBudget",
    "active_runs",
    "dag_paused",
    "attempt_since_clear",
    "backoff_delay",
    "catchup_skip_reason",
    "dag_args",
    "day_param",
    "index_metadata",
    "ingest_days",
    "run_overdue",
    "scalars",
    "settings",
    "task_failed",
    "train_queue",
    "window_days",
]

logger = logging.getLogger(__name__)

#: The store holds a newly ingested, quality-checked day of PubMed.
ARTICLES = Asset(name="litpulse_articles", uri="litpulse://articles", group="litpulse")
#: A new FAISS index version is published.
INDEX = Asset(name="litpulse_index", uri="litpulse://index", group="litpulse")
#: A new model version was promoted to active.
MODEL = Asset(name="litpulse_model", uri="litpulse://model", group="litpulse")

#: Earliest day a backfill can reach (catchup is off: nothing runs by itself before today).
START_DATE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
OWNER = "litpulse-data"
#: The Airflow pool of every task calling NCBI E-utilities or iCite (1 slot: rate limit).
NCBI_POOL = "ncbi"
#: Optional Airflow connection holding the NCBI API key (password) and e-mail (login).
NCBI_CONN_ID = "litpulse_ncbi"
#: A scheduled run started this long after its slot is a catch-up (see
#: :func:`catchup_skip_reason`).
CATCHUP_GRACE = dt.timedelta(hours=6)

#: Retry schedule of every task: first delay, growth factor and cap (see
#: :func:`backoff_delay`).
RETRY_DELAY = dt.timedelta(minutes=2)
RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY = dt.timedelta(minutes=8)


# ------------------------------------------------------------------------------ retries


def attempt_since_clear(try_number: int, max_tries: int, retries: int) -> int:
    """Which attempt of the current clear ``try_number`` is (1 = the first try).

    Airflow's try number keeps counting over clears; a clear sets
    ``max_tries = try_number + retries``, so ``max_tries - retries`` tries happened before it.

    >>> attempt_since_clear(1, 3, 3), attempt_since_clear(7, 9, 3), attempt_since_clear(9, 9, 3)
    (1, 1, 3)
    """
    return max(1, try_number - max(0, max_tries - retries))


def backoff_delay(
    attempt: int,
    base: dt.timedelta = RETRY_DELAY,
    factor: float = RETRY_BACKOFF,
    cap: dt.timedelta | None = MAX_RETRY_DELAY,
) -> dt.timedelta:
    """Delay before the retry that follows failed attempt ``attempt`` (1-based).

    ``base * factor ** (attempt - 1)``, at most ``cap``: 2, 4, 8, 8 … min by default.

    >>> [backoff_delay(n).total_seconds() / 60 for n in (1, 2, 3, 4)]
    [2.0, 4.0, 8.0, 8.0]
    """
    if attempt < 1:
        raise ConfigError(f"`attempt` must be >= 1, got {attempt}")
    factor = factor if factor and factor > 0 else 1.0
    try:
        seconds = base.total_seconds() * factor ** (attempt - 1)
    except OverflowError:
        seconds = math.inf
    if cap is not None:
        seconds = min(seconds, cap.total_seconds())
    return dt.timedelta(seconds=min(seconds, dt.timedelta.max.total_seconds() / 2))


class LitpulseRetryPolicy(RetryPolicy):
    """Retry exactly the errors litpulse marks retryable, on a schedule clears do not stretch.

    * a :class:`~litpulse.core.errors.LitpulseError` with ``retryable = False`` (bad request,
      parse error, configuration, data quality, consistency) fails at once: repeating
      the call gives the same answer;
    * a retryable one (429, 5xx, timeouts, checksum mismatch) is retried after the server's
      ``Retry-After`` when it sent one, else after :func:`backoff_delay` of the attempt
      *since the last clear* (2, 4, 8 min; Airflow's own formula uses the try number,
      which keeps growing over clears, and adds up to 100 % jitter);
    * anything else (an unexpected ``OSError``) takes the task's standard retries, with
      the same delays.

    The task's own ``retry_delay``, ``retry_exponential_backoff`` and ``max_retry_delay``
    are used when Airflow passes the task in the context.
    """

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        name = type(exception).__name__
        if isinstance(exception, LitpulseError) and not exception.retryable:
            return RetryDecision.fail(f"{name} is not retryable: {exception}")
        task = getattr((context or {}).get("ti"), "task", None)
        delay: dt.timedelta | None = None
        if task is not None:
            attempt = attempt_since_clear(try_number, max_tries, int(task.retries or 0))
            delay = backoff_delay(
                attempt,
                task.retry_delay,
                float(task.retry_exponential_backoff or 1.0),
                task.max_retry_delay,
            )
        after = getattr(exception, "retry_after", None)
        if after:
            delay = dt.timedelta(seconds=float(after))
        if isinstance(exception, LitpulseError):
            return RetryDecision.retry(delay=delay, reason=f"{name} is transient")
        if delay is None:
            return RetryDecision.default()
        return RetryDecision.retry(delay=delay, reason=f"unexpected {name}: standard retries")

    def serialize(self) -> dict[str, Any]:
        return {"__type": "LitpulseRetryPolicy"}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> LitpulseRetryPolicy:
        return cls()


# ----------------------------------------------------------------------------- settings


def settings() -> Settings:
    """The litpulse settings of a task: ``LITPULSE_*`` of the worker, plus the NCBI connection.

    When the Airflow connection ``litpulse_ncbi`` exists (Airflow's secrets backend), its
    password is the NCBI API key and its login, when set, the contact e-mail; they win
    over ``LITPULSE_NCBI_API_KEY`` / ``LITPULSE_NCBI_EMAIL``. Without it, the environment
    alone counts.
    """
    from litpulse.core.settings import get_settings

    base = get_settings()
    overrides = ncbi_connection_overrides()
    return base.replace(**overrides) if overrides else base


def train_queue(environ: Mapping[str, str] | None = None) -> str:
    """The Airflow queue of the training task, read while the DAG file is parsed.

    Only ``LITPULSE_TRAIN_QUEUE`` is read, not the whole settings: a mistyped
    ``LITPULSE_*`` variable must fail the tasks that read it, not the DAG's import on the
    scheduler. A blank value falls back to the settings' default with a warning.
    """
    import dataclasses

    from litpulse.core.settings import Settings, env_name

    default = str(next(f.default for f in dataclasses.fields(Settings) if f.name == "train_queue"))
    key = env_name("train_queue")
    raw = (os.environ if environ is None else environ).get(key)
    if raw is None:
        return default
    if not raw.strip():
        logger.warning("%s is blank: the training task goes to the %r queue", key, default)
        return default
    return raw.strip()


def ncbi_connection_overrides() -> dict[str, str]:
    """Settings taken from the ``litpulse_ncbi`` connection; empty when there is none."""
    try:
        from airflow.sdk import Connection

        conn = Connection.get(NCBI_CONN_ID)
    except Exception as exc:  # noqa: BLE001 - not found or no Airflow context: use the env
        logger.debug("no Airflow connection %s (%s): NCBI settings from the environment",
                     NCBI_CONN_ID, type(exc).__name__)
        return {}
    out = {}
    if getattr(conn, "password", None):
        out["ncbi_api_key"] = str(conn.password)
    if getattr(conn, "login", None):
        out["ncbi_email"] = str(conn.login)
    return out


def scalars(report: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar fields of a report: asset metadata and XCom values stay small."""
    return {k: v for k, v in report.items() if v is None or isinstance(v, str | int | float | bool)}


# ------------------------------------------------------------------------------- alerts


def _where(context: Mapping[str, Any]) -> tuple[str, str, str, int]:
    ti = context.get("ti")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id", "?")
    map_index = getattr(ti, "map_index", -1)
    map_index = -1 if map_index is None else int(map_index)
    return str(dag_id), str(task_id), str(run_id), map_index


def _alert(text: str, details: Mapping[str, Any]) -> None:
    """Post an alert; never raise (a callback must not mask what it reports)."""
    try:
        from litpulse.core.settings import get_settings

        notify(get_settings(), text, details)
    except Exception:  # noqa: BLE001 - never mask the failure being reported
        logger.exception("alert failed: %s", text)


def task_failed(context: Context) -> None:
    """``on_failure_callback``: name the DAG run and the failing task, then alert."""
    dag_id, task_id, run_id, map_index = _where(context)
    ti = context.get("ti")
    exc = context.get("exception")
    where = f"{task_id}[{map_index}]" if map_index != -1 else task_id
    text = f"litpulse: task {dag_id}.{where} failed in run {run_id}"
    if exc is not None:
        text += f": {type(exc).__name__}: {exc}"
    _alert(
        text,
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": map_index,
            "try_number": getattr(ti, "try_number", None),
            "log_url": getattr(ti, "log_url", None),
            "error": repr(exc) if exc is not None else None,
        },
    )


def run_overdue(
    started: dt.datetime | None, now: dt.datetime, hours: float
) -> str | None:
    """Why a run started at ``started`` is late at ``now`` (``None`` while within budget)."""
    if hours <= 0:
        raise ConfigError(f"`hours` must be positive, got {hours}")
    if started is None:
        return None
    age = (now - started).total_seconds() / 3600
    if age <= hours:
        return None
    return f"running for {age:.1f} h since it started, over its {hours:g} h budget"


@dataclass(frozen=True)
class RunBudget:
    """Alert when a DAG run is still going ``hours`` after it started (our own SLA check).

    Called as ``on_execute_callback`` and ``on_success_callback`` of every task of the DAG:
    each time a task starts or finishes late, one alert names the run, the task and the
    hours (mapped tasks alert from their first index only). A clear restarts the run and
    its budget. This replaces Airflow 3.3.2's ``deadline=``, whose stored alerts break
    ``airflow tasks clear``, the REST ``clearTaskInstances`` and ``airflow dags test``.

    Attributes:
        hours: The run's budget, in hours.
    """

    hours: float

    def __post_init__(self) -> None:
        if not 0 < self.hours <= 24 * 30:
            raise ConfigError(f"`hours` must be within (0, 720], got {self.hours}")

    def __call__(self, context: Context) -> None:
        dag_id, task_id, run_id, map_index = _where(context)
        if map_index > 0:
            return
        dag_run = context.get("dag_run")
        late = run_overdue(getattr(dag_run, "start_date", None), dt.datetime.now(dt.UTC),
                           self.hours)
        if late is None:
            return
        _alert(
            f"litpulse: DAG {dag_id} run {run_id} is late at task {task_id}: {late}",
            {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "hours": self.hours},
        )

    def callbacks(self) -> dict[str, Any]:
        """The ``default_args`` entries that install this check on every task."""
        return {"on_execute_callback": self, "on_success_callback": self}


# ------------------------------------------------------------------------------ windows


def window_days(
    interval: tuple[dt.datetime | None, dt.datetime | None],
    run_after: dt.datetime | None,
    first_day: str | dt.date | None = None,
    last_day: str | dt.date | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """The UTC days a nightly-ingest run covers: ``[first day 00:00, day after the last 00:00)``.

    In order of precedence:

    1. ``first_day`` / ``last_day`` (the DAG params, inclusive ISO dates; one alone means
       that single day);
    2. the run's data interval: ``[D 02:00, D+1 02:00)`` covers day ``D`` (complete two hours
       before the run starts); longer intervals cover every day they start, so consecutive
       runs ingest consecutive days with neither gap nor overlap;
    3. neither (``airflow dags trigger`` without a logical date): the last full UTC day
       before ``run_after``.

    >>> t = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
    >>> [d.date().isoformat() for d in window_days((None, None), t)]
    ['2026-11-30', '2026-12-01']
    """
    midnight = dt.time(tzinfo=dt.UTC)
    if first_day or last_day:
        first = _date(first_day or last_day)
        last = _date(last_day or first_day)
        if last < first:
            raise ConfigError(f"last_day {last} is before first_day {first}")
    elif interval[0] is not None and interval[1] is not None:
        start, end = interval[0].astimezone(dt.UTC), interval[1].astimezone(dt.UTC)
        first = start.date()
        last = max(first, (end - dt.timedelta(days=1)).date())
    else:
        when = (run_after or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        first = last = when.date() - dt.timedelta(days=1)
    return (
        dt.datetime.combine(first, midnight),
        dt.datetime.combine(last + dt.timedelta(days=1), midnight),
    )


def ingest_days(context: Mapping[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    """:func:`window_days` of the running task's context (params, data interval, run)."""
    params = context.get("params") or {}
    dag_run = context.get("dag_run")
    return window_days(
        (context.get("data_interval_start"), context.get("data_interval_end")),
        getattr(dag_run, "run_after", None),
        params.get("first_day"),
        params.get("last_day"),
    )


def _date(value: str | dt.date | None) -> dt.date:
    day = parse_date(value, "first_day/last_day")
    if day is None:
        raise ConfigError("first_day/last_day is not an ISO date (YYYY-MM-DD): nothing given")
    return day


def catchup_skip_reason(
    run_type: str | None,
    slot: dt.datetime | None,
    started: dt.datetime | None,
    grace: dt.timedelta = CATCHUP_GRACE,
    cleared: int = 0,
) -> str | None:
    """Why a scheduled run is a catch-up of a missed slot, or ``None`` when it is not.

    With ``catchup=False`` Airflow still creates the latest past slot of a cron schedule
    when a DAG is unpaused (or its scheduler comes back): unpausing the weekly retrain on
    a Wednesday would retrain "last Sunday" at once. A *scheduled* run that started more
    than ``grace`` after its slot is such a catch-up; manual runs and backfills never are,
    nor a run an engineer cleared (``cleared``: the run's ``clear_number``; a clear resets
    its start to the clear's time, hours or days after its slot).

    >>> sunday = dt.datetime(2026, 11, 29, 4, tzinfo=dt.UTC)
    >>> catchup_skip_reason("scheduled", sunday, sunday + dt.timedelta(minutes=1)) is None
    True
    >>> catchup_skip_reason("manual", sunday, sunday + dt.timedelta(days=3)) is None
    True
    >>> catchup_skip_reason("scheduled", sunday, sunday + dt.timedelta(days=1), cleared=1) is None
    True
    """
    kind = str(getattr(run_type, "value", run_type) or "")
    if kind != "scheduled" or slot is None or started is None or cleared:
        return None
    late = started - slot
    if late <= grace:
        return None
    return (
        f"catch-up of the {slot.isoformat()} slot, started {late.total_seconds() / 3600:.1f} h "
        f"late (more than {grace.total_seconds() / 3600:g} h): skipped; the next slot runs "
        "as scheduled, or trigger the DAG by hand"
    )


#: Arguments of every litpulse task. ``retry_exponential_backoff`` is a multiplier in
#: Airflow 3.3. The retry policy computes each delay itself (2, 4, 8 min after the first,
#: second, third failure since the last clear); ``max_retry_delay`` bounds the delays
#: Airflow computes alone (a task killed from outside), which grow with the try number.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": RETRY_DELAY,
    "retry_exponential_backoff": RETRY_BACKOFF,
    "max_retry_delay": MAX_RETRY_DELAY,
    "retry_policy": LitpulseRetryPolicy(),
    "on_failure_callback": task_failed,
    "depends_on_past": False,
}


# --------------------------------------------------------------------------- DAG pieces


def dag_args(
    dag_id: str,
    *,
    schedule: Any,
    tags: Sequence[str],
    doc_md: str,
    alert_after_hours: float,
    timeout_hours: float,
    retries: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``@dag(...)`` arguments of a litpulse DAG: what every one of them shares.

    No catch-up, one active run, :data:`DEFAULT_ARGS` (``retries`` overrides its count)
    plus a :class:`RunBudget` alerting ``alert_after_hours`` after a run started, and a
    run timeout of ``timeout_hours``.
    """
    default_args = {**DEFAULT_ARGS, **RunBudget(hours=alert_after_hours).callbacks()}
    if retries is not None:
        default_args["retries"] = retries
    out: dict[str, Any] = {
        "dag_id": dag_id,
        "schedule": schedule,
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": default_args,
        "tags": list(tags),
        "doc_md": doc_md,
        "dagrun_timeout": dt.timedelta(hours=timeout_hours),
    }
    if params:
        out["params"] = dict(params)
    return out


def active_runs(dag_id: str) -> int:
    """Queued and running runs of ``dag_id``, asked from inside a running task (the Task
    SDK's ``get_dr_count`` through the execution API; tasks do not reach the metadata
    database)."""
    from airflow.sdk import get_current_context

    ti = get_current_context()["ti"]
    return int(ti.get_dr_count(dag_id=dag_id, states=["queued", "running"]))


def dag_paused(dag_id: str) -> bool | None:
    """Whether ``dag_id`` is paused, asked from inside a running task (the Task SDK's
    ``get_dag`` through the execution API); ``None`` where Airflow does not know it (not
    deployed, or its file fails to import: the API answers 404). The scheduler goes on
    with no run of a paused DAG, queued or running, and an asset event creates none."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowRuntimeError

    ti = get_current_context()["ti"]
    try:
        return bool(ti.get_dag(dag_id).is_paused)
    except AirflowRuntimeError as exc:
        detail = exc.error.detail
        if isinstance(detail, dict) and detail.get("status_code") == 404:
            return None
        raise


def index_metadata(report: Mapping[str, Any], embedded: int) -> dict[str, Any]:
    """The ``litpulse_index`` asset event of a published index: its report's scalars."""
    return {"embedded": int(embedded), **scalars(report)}


def day_param(title: str, description: str) -> Param:
    """An optional UTC day (ISO date text) given when a run is triggered by hand."""
    return Param(None, type=["null", "string"], format="date", title=title,
                 description=description)
