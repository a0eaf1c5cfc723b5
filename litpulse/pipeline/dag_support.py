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

from airflow.sdk import Asset, Metadata, Param, RetryDecision, RetryPolicy

from litpulse.core.errors import ConfigError, DataQualityError, LitpulseError
from litpulse.core.timeutil import as_utc, day_start, parse_date
from litpulse.pipeline.alerts import notify

if TYPE_CHECKING:
    from airflow.sdk import Context

    from litpulse.core.settings import Settings

__all__ = [
    "ARTICLES",
    "CATCHUP_GRACE",
    "CITATIONS_POKE_S",
    "DEFAULT_ARGS",
    "INDEX",
    "MAX_RETRY_AFTER",
    "MODEL",
    "NCBI_CONN_ID",
    "NCBI_POOL",
    "NIGHTLY_DAG_ID",
    "POOL_POKE_S",
    "POOL_WATCH",
    "START_DATE",
    "LitpulseRetryPolicy",
    "RunBudget",
    "active_runs",
    "dag_paused",
    "attempt_since_clear",
    "backfill_command",
    "backoff_delay",
    "catchup_skip_reason",
    "citations_refresh_awaited",
    "dag_args",
    "day_param",
    "index_event",
    "index_metadata",
    "pool_slot_awaited",
    "ingest_days",
    "ingested",
    "ingested_window",
    "reach_back",
    "retry_after",
    "run_overdue",
    "run_failed",
    "run_params",
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

#: The DAG that ingests PubMed day by day (named in the backfill commands it prints).
NIGHTLY_DAG_ID = "litpulse_nightly_ingest"

#: Earliest day a backfill can reach (catchup is off: nothing runs by itself before today).
START_DATE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
OWNER = "litpulse-data"
#: The Airflow pool of every task calling NCBI E-utilities or iCite (1 slot: rate limit).
NCBI_POOL = "ncbi"
#: Seconds between two looks of the nightly DAG's wait for a manual citation refresh (a
#: sensor in ``reschedule`` mode: between looks it holds no worker and no pool slot).
CITATIONS_POKE_S = 30.0
#: Seconds between two looks of a DAG's pool watch (:func:`pool_slot_awaited`), how long
#: a pooled task may wait for a slot no litpulse task holds before the watch alerts, and
#: the second look that rules out a slot freed between two scheduler loops.
POOL_POKE_S = 10.0
POOL_WAIT_S = 30.0
POOL_RECHECK_S = 5.0
#: The task id of the nightly's pool watch (:func:`pool_slot_awaited`).
POOL_WATCH = "ncbi_pool_watch"
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
#: Longest wait a server's ``Retry-After`` may impose before a task's retry: a 429 saying
#: "come back tomorrow" must not schedule the retry after its run has timed out (the
#: shortest run timeout of an NCBI task's DAG, the nightly's, is 12 h; 3 retries at most
#: an hour apart stay well inside it).
MAX_RETRY_AFTER = dt.timedelta(hours=1)


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


def retry_after(
    exception: BaseException, cap: dt.timedelta = MAX_RETRY_AFTER
) -> dt.timedelta | None:
    """The server's ``Retry-After`` an exception carries, at most ``cap``; ``None`` when it
    carries none (or nothing usable: zero, negative, not a number).

    >>> from litpulse.core.errors import RateLimitedError
    >>> retry_after(RateLimitedError("429", retry_after=86400)).total_seconds()
    3600.0
    """
    raw = getattr(exception, "retry_after", None)
    try:
        seconds = float(raw) if raw is not None else math.nan
    except (TypeError, ValueError):
        return None
    if not seconds > 0:  # NaN, zero, negative
        return None
    return dt.timedelta(seconds=min(seconds, cap.total_seconds()))


class LitpulseRetryPolicy(RetryPolicy):
    """Retry exactly the errors litpulse marks retryable, on a schedule clears do not stretch.

    * a :class:`~litpulse.core.errors.LitpulseError` with ``retryable = False`` (bad request,
      parse error, configuration, data quality, consistency) fails at once: repeating
      the call gives the same answer;
    * a retryable one (429, 5xx, timeouts, checksum mismatch) is retried after
      :func:`backoff_delay` of the attempt *since the last clear* (2, 4, 8 min; Airflow's
      own formula uses the try number, which keeps growing over clears, and adds up to
      100 % jitter), or after the server's ``Retry-After`` when it sent a longer one,
      at most :data:`MAX_RETRY_AFTER` (1 h): a shorter ``Retry-After`` never shortens the
      backoff, a longer one never outlives the run;
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
        after = retry_after(exception)
        if after is not None:
            delay = after if delay is None else max(delay, after)
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


def citations_refresh_awaited(context: Mapping[str, Any]) -> bool:
    """The look of the nightly DAG's wait before its citation refresh (a sensor in
    ``reschedule`` mode, outside the ``ncbi`` pool): done once no other citation refresh
    holds the store's lease (``litpulse citations refresh`` asks iCite for the same
    articles), or once the sensor has waited ``LITPULSE_CITATIONS_WAIT_S`` since its first
    look (the refresh then finds it busy and is skipped with a note, as the nightly's step).
    Between looks the task is rescheduled: no pool slot is held, so other runs' NCBI tasks
    go on meanwhile.
    """
    from ingest.citations import REFRESH_LEASE
    from litpulse.core.db import connect, live_holder
    from litpulse.core.timeutil import utcnow

    s = settings()
    holder = live_holder(connect(s), REFRESH_LEASE)
    if holder is None:
        return True
    ti = context["ti"]
    first = ti.get_first_reschedule_date(context)
    waited = 0.0 if first is None else (utcnow() - as_utc(first)).total_seconds()
    if waited >= s.citations_wait_s:
        logger.warning("citation refresh of %s still runs after %.0f s: the night's refresh "
                       "is skipped (LITPULSE_CITATIONS_WAIT_S)", holder, waited)  # fmt: skip
        return True
    logger.info("a citation refresh runs (%s): waiting (%.0f of %.0f s)", holder, waited,
                s.citations_wait_s)  # fmt: skip
    return False


def _pooled_tasks(dag: Any, but: str) -> dict[str, str]:
    """``{task_id: pool}`` of the tasks of ``dag`` in a pool of their own (not
    ``default_pool``), but the task ``but``."""
    out = {}
    for task in getattr(dag, "tasks", None) or []:
        pool = str(getattr(task, "pool", None) or "default_pool")
        if pool != "default_pool" and task.task_id != but:
            out[str(task.task_id)] = pool
    return out


def _pool_wait(ti: Any, dag_id: str, run_id: str, pooled: Mapping[str, str]) -> list[str] | None:
    """``None`` once a pooled task of this run is past ``scheduled`` (it got its slot, or
    finished without one); else this run's pooled tasks left ``scheduled`` while no task of
    the DAG holds a slot (none ``queued`` or ``running``, in any run): empty while another
    run holds it, or while none is scheduled yet."""
    states = ti.get_task_states(dag_id=dag_id, run_ids=[run_id], task_ids=list(pooled))
    mine = dict(states.get(run_id) or {})
    if any(state not in (None, "scheduled") for state in mine.values()):
        return None
    waiting = sorted(k for k, state in mine.items() if state == "scheduled")
    if waiting and ti.get_ti_count(dag_id=dag_id, task_ids=list(pooled),
                                   states=["queued", "running"]):  # fmt: skip
        return []
    return waiting


def pool_slot_awaited(
    context: Mapping[str, Any],
    wait_s: float = POOL_WAIT_S,
    recheck_s: float = POOL_RECHECK_S,
) -> bool:
    """The look of a DAG's pool watch (a sensor in ``reschedule`` mode, in
    ``default_pool``, beside the DAG's first pooled task): done once a task of the run in a
    pool of its own (``ncbi``) got a slot, or finished without one.

    Airflow 3.3 tells nobody that a task names a pool that does not exist, or one of 0
    slots: the scheduler only logs "Tasks using non-existent pool" and leaves the task
    ``scheduled`` until the run's ``dagrun_timeout`` (the nightly's: 12 h); a task cannot
    read pools (the execution API has none). It can read task states: when a pooled task
    of this run is still ``scheduled`` ``wait_s`` after the watch's first look while no
    task of the DAG holds a slot (none ``queued`` or ``running``, in any run), at two looks
    ``recheck_s`` apart (a slot freed just now is taken at the scheduler's next loop), the
    pool is missing or has no slot (else a task of another DAG holds it, or the executor
    is full: the scheduler queues nothing past ``core.parallelism``). Then it alerts once,
    naming the commands that tell and make the pool, and the watch is skipped: the run
    goes on, gets its slot once the pool exists, and is not failed by the watch.

    Raises:
        AirflowSkipException: After the alert.
    """
    import time

    from airflow.sdk.exceptions import AirflowSkipException

    from litpulse.core.timeutil import utcnow

    ti = context["ti"]
    dag_id, task_id, run_id, _ = _where(context)
    pooled = _pooled_tasks(context.get("dag"), task_id)
    waiting = _pool_wait(ti, dag_id, run_id, pooled) if pooled else None
    if waiting is None:
        return True
    first = ti.get_first_reschedule_date(context)
    waited = 0.0 if first is None else (utcnow() - as_utc(first)).total_seconds()
    if not waiting or waited < wait_s:
        return False
    time.sleep(recheck_s)
    waiting = _pool_wait(ti, dag_id, run_id, pooled)
    if not waiting:
        return waiting is None
    pools = {p for t, p in pooled.items() if any(k == t or k.startswith(f"{t}_") for k in waiting)}
    text = (
        f"litpulse: DAG {dag_id} run {run_id}: {', '.join(waiting)} has waited {waited:.0f} s "
        f"for a slot of the pool {', '.join(repr(p) for p in sorted(pools))} while no "
        "litpulse task holds one: the pool does not exist or has no slots (else a task of "
        "another DAG holds it, or the executor has no free slot: core.parallelism)"
        f"{_pool_checks(pools)}. The run waits: it goes on once it gets a slot, else it "
        "times out (dagrun_timeout)"
    )
    _alert(text, {"dag_id": dag_id, "run_id": run_id, "reason": "pool_slot_missing",
                  "tasks": waiting, "pools": sorted(pools), "waited_s": round(waited)})  # fmt: skip
    raise AirflowSkipException(text)


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


def run_failed(context: Context) -> None:
    """The DAG's ``on_failure_callback``: alert a run that failed without a task failing.

    Airflow fails a run at its ``dagrun_timeout`` (reason ``timed_out``) or when no task can
    run any more (``all_tasks_deadlocked``) by setting its unfinished tasks to ``skipped``:
    no task fails, so no :func:`task_failed` alert, and a task that never started (a queue
    without a worker, a pool with no free or no slot) never started *late* for
    :class:`RunBudget` either. The dag processor calls this with the context of the task
    that was left (``ti``: of the unfinished ones, the one that started last; where none
    started, any of them, so the alert then names every pool and queue of the DAG). A run
    failed by a task (``task_failure``) was alerted by it.
    """
    reason = str(context.get("reason") or "")
    if reason == "task_failure":
        return
    dag_id, task_id, run_id, map_index = _where(context)
    dag = context.get("dag")
    ti = context.get("ti")
    where = f"{task_id}[{map_index}]" if map_index != -1 else task_id
    # the pool watch starts at once and waits beside the work it watches: Airflow names it
    # as the task that started last when that work never got a slot
    started = None if task_id == POOL_WATCH else getattr(ti, "start_date", None)
    timeout = getattr(dag, "dagrun_timeout", None)
    if reason == "timed_out":
        what = "timed out" + (
            f" after {timeout.total_seconds() / 3600:g} h (dagrun_timeout)" if timeout else ""
        ) + ": its unfinished tasks were skipped"
    elif reason == "all_tasks_deadlocked":
        what = "failed: none of its unfinished tasks could run any more (deadlock)"
    else:
        what = f"failed ({reason or 'no reason given'})"
    if ti is None:
        left = ""
    elif started is None:
        # Airflow names the unfinished task that started last; none did, so it names one of
        # them (in the order the database returns them), not necessarily the one waiting
        # for a slot: name every pool and queue of the DAG's tasks
        pools: set[str] = set()
        queues: set[str] = set()
        try:
            for task in getattr(dag, "tasks", None) or []:
                pools.add(str(getattr(task, "pool", None) or "default_pool"))
                queues.add(str(getattr(task, "queue", None) or "default"))
        except Exception:  # noqa: BLE001 - the alert goes out with what is known
            pass
        left = (
            f"; no task of it ever started ({where}, the one Airflow names, "
            f"{'only watched' if task_id == POOL_WATCH else 'neither'}): a task "
            f"waits for a free slot in its pool (this DAG's: "
            f"{', '.join(repr(p) for p in sorted(pools)) or 'unknown'}: does each exist, "
            "with slots, or do other tasks hold them?"
            f"{_pool_checks(pools)}) and for a worker on its queue ("
            f"{', '.join(repr(q) for q in sorted(queues)) or 'unknown'}: is one listening?)"
        )
    else:
        left = f"; {where} was still running (started {as_utc(started).isoformat()})"
    text = (
        f"litpulse: DAG {dag_id} run {run_id} {what}{left}. Once the cause is fixed, clear "
        f"the whole run (the UI's Clear on the run, or POST /api/v2/dags/{dag_id}/"
        f'clearTaskInstances with {{"dag_run_id": "{run_id}", "only_failed": false}})'
    )
    _alert(
        text,
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "reason": reason,
            "task_id": task_id,
            "map_index": map_index,
            "task_started": as_utc(started).isoformat() if started else None,
            "timeout_hours": timeout.total_seconds() / 3600 if timeout else None,
        },
    )


def _pool_checks(pools: set[str]) -> str:
    """How to tell whether the DAG's own pools exist, and how to make ``ncbi``: Airflow
    warns of no missing pool (its DAG processor does not check them; the scheduler only
    logs "Tasks using non-existent pool"), and a task cannot ask (the Task SDK has no pool
    call): :func:`pool_slot_awaited` tells from the task states, :func:`run_failed` at the
    run's ``dagrun_timeout``."""
    ours = sorted(p for p in pools if p != "default_pool")
    if not ours:
        return ""
    text = "; " + ", ".join(f"`airflow pools get {p}`" for p in ours) + " tells"
    if NCBI_POOL in ours:
        text += (f"; `airflow pools set {NCBI_POOL} 1 \"NCBI E-utilities/iCite calls of all "
                 "litpulse runs (rate limit)\"` makes it")
    return text


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


def backfill_command(first: dt.date, last: dt.date) -> str:
    """The backfill that ingests the UTC days ``first`` to ``last`` (inclusive), one run per
    day, one run at a time (a run's logical date is 02:00 of its day, so ``--to-date`` is
    the day after the last).

    >>> backfill_command(dt.date(2026, 1, 1), dt.date(2026, 1, 7)).split(" --")[1:]
    ['dag-id litpulse_nightly_ingest', 'from-date 2026-01-01', 'to-date 2026-01-08', \
'max-active-runs 1']
    """
    return (
        f"airflow backfill create --dag-id {NIGHTLY_DAG_ID} --from-date {first.isoformat()} "
        f"--to-date {(last + dt.timedelta(days=1)).isoformat()} --max-active-runs 1"
    )


def window_days(
    interval: tuple[dt.datetime | None, dt.datetime | None],
    run_after: dt.datetime | None,
    first_day: str | dt.date | None = None,
    last_day: str | dt.date | None = None,
    *,
    now: dt.datetime | None = None,
    max_days: int | None = None,
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

    Days given as params must have happened: a last day not complete at ``now`` (default:
    the clock) is refused, and so is a range of more than ``max_days`` days (when given),
    with the backfill command that ingests it one day per run.

    Raises:
        ConfigError: Params that are not ISO dates, in the wrong order, not complete yet
            or too many (not retryable: the same params fail the same way).

    >>> t = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
    >>> [d.date().isoformat() for d in window_days((None, None), t)]
    ['2026-11-30', '2026-12-01']
    """
    if first_day or last_day:
        first = _date(first_day or last_day)
        last = _date(last_day or first_day)
        if last < first:
            raise ConfigError(f"last_day {last} is before first_day {first}")
        _check_params(first, last, as_utc(now) if now else dt.datetime.now(dt.UTC), max_days)
    elif interval[0] is not None and interval[1] is not None:
        start, end = interval[0].astimezone(dt.UTC), interval[1].astimezone(dt.UTC)
        first = start.date()
        last = max(first, (end - dt.timedelta(days=1)).date())
    else:
        when = (run_after or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        first = last = when.date() - dt.timedelta(days=1)
    return day_start(first), day_start(last + dt.timedelta(days=1))


def _check_params(first: dt.date, last: dt.date, now: dt.datetime, max_days: int | None) -> None:
    """Refuse ``first_day..last_day`` params for days not complete at ``now``, or too many."""
    end = day_start(last + dt.timedelta(days=1))
    if end > now:
        what = "is in the future" if day_start(last) > now else "is not over yet"
        raise ConfigError(
            f"last_day {last} {what} (it ends at {end:%Y-%m-%d %H:%M} UTC; now "
            f"{now:%Y-%m-%d %H:%M} UTC): a run can only ingest UTC days that are complete; "
            f"the last complete day is {(now - dt.timedelta(days=1)).date()}"
        )
    days = (last - first).days + 1
    if max_days is not None and days > max_days:
        raise ConfigError(
            f"first_day {first} to last_day {last} is {days} days, more than one run ingests "
            f"(LITPULSE_NIGHTLY_MAX_DAYS={max_days}: a long range holds the ncbi pool for "
            f"hours and is redone whole on a failure): backfill it one day per run, one run "
            f"at a time: `{backfill_command(first, last)}`"
        )


def reach_back(
    window: tuple[dt.datetime, dt.datetime],
    mark: dt.datetime | None,
    max_days: int,
) -> tuple[dt.datetime, dt.datetime]:
    """A scheduled run's window reaching back to the nightly watermark ``mark``.

    With ``catchup=False`` Airflow creates only the latest interval's run after nights the
    scheduler missed (an outage, a paused DAG); ingesting only that interval would lose the
    nights before it silently. When ``mark`` (where the succeeded, checked windows end:
    :func:`litpulse.pipeline.planning.last_watermark`) lies before the window, the window
    starts at midnight of the mark's UTC day instead, as the CLI nightly starts at the mark.
    ``None`` (nothing ingested yet) or a mark at or after the window's start leave it as is.

    Raises:
        DataQualityError: The window would cover more than ``max_days`` UTC days; the
            message names the backfill of the missed days (not retryable).

    >>> day = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)
    >>> start, end = reach_back((day, day + dt.timedelta(days=1)),
    ...                         dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC), 14)
    >>> start.isoformat(), end.isoformat()
    ('2026-12-01T00:00:00+00:00', '2026-12-05T00:00:00+00:00')
    """
    start, end = window
    if mark is None or as_utc(mark) >= start:
        return window
    missed_from = as_utc(mark).date()
    first = day_start(missed_from)
    days = (end - first).days
    if days > max_days:
        missed_to = (start - dt.timedelta(days=1)).date()
        raise DataQualityError(
            f"the nightly ingest is {(start - first).days} day(s) behind: the last checked "
            f"window ends at {as_utc(mark):%Y-%m-%d %H:%M} UTC, so the days {missed_from} to "
            f"{missed_to} were never ingested (the scheduler was down or the DAG paused, or "
            f"their runs failed), and this run would ingest {days} days, more than "
            f"LITPULSE_NIGHTLY_MAX_DAYS={max_days}. Backfill them one day per run, one run at "
            f"a time: `{backfill_command(missed_from, missed_to)}`; then clear this run "
            f"(`airflow tasks clear {NIGHTLY_DAG_ID} --only-failed --yes`): it ingests its "
            "own days"
            + (f"; or set LITPULSE_NIGHTLY_MAX_DAYS={days} on the workers and clear this run "
               "to ingest them all in it" if days <= _most_nightly_days() else "")
        )
    logger.warning(
        "the nightly watermark is at %s, before this run's window: ingesting from %s "
        "(%d days) to catch up on nights no run ingested", as_utc(mark).isoformat(),
        first.date(), days,
    )
    return first, end


def _most_nightly_days() -> int:
    """The upper end of ``LITPULSE_NIGHTLY_MAX_DAYS``'s range."""
    import dataclasses

    from litpulse.core.settings import Settings

    field = next(f for f in dataclasses.fields(Settings) if f.name == "nightly_max_days")
    return int(field.metadata["max"])


def run_params(context: Mapping[str, Any]) -> Mapping[str, Any]:
    """The params of the run of ``context``, once its conf names only params of its DAG.

    Airflow validates the declared params of a trigger's conf (a ``first_day`` that is not
    a date is refused at the trigger) but merges a key it does not know into the params and
    never looks at it: ``--conf '{"firstday": "2024-01-09"}'`` would run as a plain trigger
    (yesterday) and ``{"shard": 16}`` with the default shards, silently. Every task reading
    the params reads them here, and the first task of a DAG without params calls it too.

    Raises:
        ConfigError: The conf holds a key that is no param of the DAG (not retryable: the
            same conf fails the same way); the message names it and the DAG's params.
    """
    params = context.get("params") or {}
    dag = context.get("dag")
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    declared = getattr(dag, "params", None)
    if declared is None or not isinstance(conf, Mapping):
        return params
    unknown = sorted(str(k) for k in conf if k not in declared)
    if unknown:
        dag_id = getattr(dag, "dag_id", "this DAG")
        known = ", ".join(sorted(str(k) for k in declared)) or "none"
        raise ConfigError(
            f"the run's conf names {', '.join(repr(k) for k in unknown)}, which "
            f"{dag_id} does not take (its params: {known}); nothing was done: trigger it "
            "again with the params' own names (Airflow ignores a key it does not know, so "
            "the run would not do what was asked)"
        )
    return params


def ingest_days(
    context: Mapping[str, Any],
    settings: Settings | None = None,
    *,
    now: dt.datetime | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """The window of the nightly-ingest run of ``context`` (params, data interval, run).

    :func:`window_days` of the context. With ``settings``, the params' range is bounded by
    ``LITPULSE_NIGHTLY_MAX_DAYS``, and a *scheduled* run without params reaches back to the
    nightly watermark (:func:`reach_back`); manual runs (params, a logical date or none)
    and backfill runs keep exactly their days. The ``ingest_window`` task computes it
    once and hands it to the tasks after it through XCom (:func:`ingested`).
    """
    params = run_params(context)
    dag_run = context.get("dag_run")
    first_day, last_day = params.get("first_day"), params.get("last_day")
    window = window_days(
        (context.get("data_interval_start"), context.get("data_interval_end")),
        getattr(dag_run, "run_after", None),
        first_day,
        last_day,
        now=now,
        max_days=settings.nightly_max_days if settings is not None else None,
    )
    run_type = getattr(dag_run, "run_type", None)
    scheduled = str(getattr(run_type, "value", run_type) or "") == "scheduled"
    if settings is None or not scheduled or first_day or last_day:
        return window
    from litpulse.pipeline.planning import last_watermark

    return reach_back(window, last_watermark(settings), settings.nightly_max_days)


def ingested(window: tuple[dt.datetime, dt.datetime], counts: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ingest_window`` task's XCom: the window it ingested and the counts."""
    return {
        "window_start": window[0].isoformat(),
        "window_end": window[1].isoformat(),
        "counts": {k: int(v) for k, v in counts.items()},
    }


def ingested_window(result: Mapping[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    """The window an ``ingest_window`` XCom (:func:`ingested`) names: the one the run's
    later tasks check and announce."""
    return (
        as_utc(dt.datetime.fromisoformat(str(result["window_start"]))),
        as_utc(dt.datetime.fromisoformat(str(result["window_end"]))),
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
    run timeout of ``timeout_hours``, alerted (:func:`run_failed`).
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
        # a run failed by its timeout or a deadlock: no task fails, so no task alerts
        "on_failure_callback": run_failed,
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


def index_event(report: Mapping[str, Any], embedded: int) -> Metadata:
    """The ``litpulse_index`` asset event of an index refresh report (``yield`` it from the
    task whose outlet is :data:`INDEX`).

    ``litpulse_index`` means "a new index version is published": a report that published
    nothing (every record unchanged, a second bootstrap, a refresh that would drop live
    articles) skips the task instead, since Airflow emits no asset event for a skipped task
    (a succeeded one emits its outlets' events whatever it yields). The reason is logged.

    Raises:
        AirflowSkipException: ``report["published"]`` is false.
    """
    if not report.get("published"):
        from airflow.sdk.exceptions import AirflowSkipException

        why = report.get("reason") or "nothing changed"
        raise AirflowSkipException(
            f"no new index version published ({why}; index {report.get('id')} stays): "
            "no litpulse_index event"
        )
    return Metadata(INDEX, index_metadata(report, embedded))


def day_param(title: str, description: str) -> Param:
    """An optional UTC day (ISO date text) given when a run is triggered by hand."""
    return Param(None, type=["null", "string"], format="date", title=title,
                 description=description)
