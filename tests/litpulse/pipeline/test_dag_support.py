"""The helpers the DAGs share (litpulse.pipeline.dag_support): windows, catch-up, budgets, retries.

Importing the module imports ``airflow.sdk``, which reads its configuration once: the
fixture points ``AIRFLOW_HOME`` at a temporary folder first, so nothing lands in ``~``.
"""

from __future__ import annotations

import datetime as dt
import logging
from types import ModuleType, SimpleNamespace

import pytest

from litpulse.core.errors import ConfigError, InvalidRequestError, TransientSourceError

UTC = dt.UTC




def _days(window: tuple[dt.datetime, dt.datetime]) -> list[str]:
    return [w.isoformat() for w in window]


def test_window_from_params_then_interval_then_last_full_day(sup: ModuleType) -> None:
    interval = (dt.datetime(2026, 11, 29, 2, tzinfo=UTC), dt.datetime(2026, 11, 30, 2, tzinfo=UTC))
    after = dt.datetime(2026, 12, 2, 0, 30, tzinfo=UTC)
    # a scheduled run: its data interval, day D
    assert _days(sup.window_days(interval, after)) == [
        "2026-11-29T00:00:00+00:00",
        "2026-11-30T00:00:00+00:00",
    ]
    # `airflow dags trigger` without a logical date: the last full UTC day before it
    assert _days(sup.window_days((None, None), after)) == [
        "2026-12-01T00:00:00+00:00",
        "2026-12-02T00:00:00+00:00",
    ]
    # params win, inclusive days; one alone is that day
    assert _days(sup.window_days(interval, after, "2026-11-20", "2026-11-22")) == [
        "2026-11-20T00:00:00+00:00",
        "2026-11-23T00:00:00+00:00",
    ]
    assert _days(sup.window_days((None, None), after, None, "2026-11-21")) == [
        "2026-11-21T00:00:00+00:00",
        "2026-11-22T00:00:00+00:00",
    ]
    with pytest.raises(ConfigError, match="before first_day"):
        sup.window_days((None, None), after, "2026-11-22", "2026-11-20")
    with pytest.raises(ConfigError, match="not an ISO date"):
        sup.window_days((None, None), after, "yesterday")


def test_ingest_days_reads_the_task_context(sup: ModuleType) -> None:
    run = SimpleNamespace(run_after=dt.datetime(2026, 12, 2, 9, tzinfo=UTC))
    ctx = {"params": {"first_day": None, "last_day": None}, "dag_run": run,
           "data_interval_start": None, "data_interval_end": None}
    assert sup.ingest_days(ctx)[0] == dt.datetime(2026, 12, 1, tzinfo=UTC)


def test_only_a_late_scheduled_run_is_a_catch_up(sup: ModuleType) -> None:
    slot = dt.datetime(2026, 11, 29, 4, tzinfo=UTC)
    wednesday = dt.datetime(2026, 12, 2, 10, tzinfo=UTC)
    reason = sup.catchup_skip_reason("scheduled", slot, wednesday)
    assert reason is not None and "catch-up of the 2026-11-29T04:00:00+00:00 slot" in reason
    assert "78.0 h late" in reason
    assert sup.catchup_skip_reason("scheduled", slot, slot + dt.timedelta(hours=5)) is None
    assert sup.catchup_skip_reason("manual", slot, wednesday) is None
    assert sup.catchup_skip_reason("backfill", slot, wednesday) is None
    assert sup.catchup_skip_reason("scheduled", slot, None) is None


def test_run_budget_alerts_late_runs_only(
    sup: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(UTC)
    budget = sup.RunBudget(hours=6)
    assert set(budget.callbacks()) == {"on_execute_callback", "on_success_callback"}

    def ctx(hours_ago: float, map_index: int = -1) -> dict:
        started = now - dt.timedelta(hours=hours_ago)
        run = SimpleNamespace(dag_id="d", run_id="r1", start_date=started)
        ti = SimpleNamespace(dag_id="d", task_id="t", map_index=map_index)
        return {"dag_run": run, "ti": ti}

    with caplog.at_level(logging.ERROR, logger="litpulse.pipeline.alerts"):
        budget(ctx(1))
        budget(ctx(7, map_index=3))  # mapped: only index 0 alerts
        assert not caplog.records
        budget(ctx(7))
    [record] = caplog.records
    assert "DAG d run r1 is late at task t: running for 7.0 h" in record.getMessage()
    assert sup.run_overdue(None, now, 6) is None
    with pytest.raises(ConfigError):
        sup.RunBudget(hours=0)


def test_backoff_restarts_at_every_clear(sup: ModuleType) -> None:
    # two clears of a task with 3 retries that failed all its tries: try 9, max_tries 11
    assert sup.attempt_since_clear(9, 11, 3) == 1
    assert sup.attempt_since_clear(11, 11, 3) == 3
    assert sup.attempt_since_clear(1, 3, 3) == 1
    minutes = [sup.backoff_delay(n).total_seconds() / 60 for n in (1, 2, 3, 4, 40)]
    assert minutes == [2, 4, 8, 8, 8]
    with pytest.raises(ConfigError):
        sup.backoff_delay(0)


def test_retry_policy_without_task_context(sup: ModuleType) -> None:
    policy = sup.LitpulseRetryPolicy()
    assert policy.evaluate(InvalidRequestError("bad"), 1, 3).action.value == "fail"
    decision = policy.evaluate(TransientSourceError("503"), 1, 3)
    assert decision.action.value == "retry" and decision.retry_delay is None


def test_ncbi_key_from_the_airflow_connection(
    sup: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITPULSE_NCBI_API_KEY", "env-key")
    assert sup.settings().ncbi_api_key == "env-key"  # no connection: the environment
    monkeypatch.setenv("AIRFLOW_CONN_LITPULSE_NCBI", "generic://ops%40example.org:conn-key@")
    s = sup.settings()
    assert (s.ncbi_api_key, s.ncbi_email) == ("conn-key", "ops@example.org")


def test_dag_paused_reads_the_task_sdk_and_knows_an_unknown_dag(
    sup: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dag_paused` asks the running task's ``get_dag`` (the Task SDK); a DAG the API
    server answers 404 for is ``None`` (not deployed), every other error is raised."""
    import airflow.sdk
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    answers: dict[str, object] = {}

    def get_dag(dag_id: str) -> object:
        answer = answers[dag_id]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(dag_id=dag_id, is_paused=answer)

    ti = SimpleNamespace(get_dag=get_dag)
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ti": ti})

    def error(status: int) -> AirflowRuntimeError:
        return AirflowRuntimeError(ErrorResponse(
            error=ErrorType.API_SERVER_ERROR,
            detail={"status_code": status, "message": "The Dag was not found"}))

    answers |= {"paused": True, "active": False, "gone": error(404), "down": error(500)}
    assert sup.dag_paused("paused") is True
    assert sup.dag_paused("active") is False
    assert sup.dag_paused("gone") is None
    with pytest.raises(AirflowRuntimeError):
        sup.dag_paused("down")
