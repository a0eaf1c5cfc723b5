"""Hostile review (session 39c) of the Airflow DAGs as a data engineer operates them: the
``ncbi`` pool nobody created (38d X4's leftover), then what earlier reviews did not cover.

World: a real Airflow 3.3 deployment (``tests/dags/airflow_stack.py``: scheduler,
dag-processor, API server, LocalExecutor, metadata database on the test PostgreSQL) over
the repository's ``dags/`` and ``airflow.cfg``, against the loopback NCBI emulator, its
alerts posted to a loopback webhook.

Defects (each first a strict xfail asserting the right behaviour):

X1 **A nightly run waiting for a missing ``ncbi`` pool waits silently for 12 h.** Airflow
   3.3 tells nobody that a task names a pool that does not exist: the scheduler logs
   "Tasks using non-existent pool 'ncbi' will not be scheduled" and leaves the task
   ``scheduled``; the dag-processor's ``DagBag.dag_warnings`` would warn of it, but Airflow
   never passes it the known pools (``known_pools`` is ``None`` everywhere in 3.3.2), and
   a task cannot ask (the execution API has no pool route). A data engineer who set up a
   fresh deployment and forgot ``airflow pools set ncbi ...`` (or whose pool was deleted)
   hears of it only from the run-timeout alert, 12 h later, with the night lost.
   Reproduction: ``test_x1_a_missing_pool_is_alerted_within_a_minute`` (the pool deleted,
   the nightly unpaused: no alert came in 120 s). Expected: within about a minute, an
   alert naming the run, the task waiting, the pool and the commands that check and make
   it; once the pool exists the run goes on to success; a run with the pool in place
   raises no such alert. **Fixed**: ``dag_support.pool_slot_awaited``, the look of the
   nightly's new ``ncbi_pool_watch`` (a sensor in reschedule mode beside ``ingest_window``,
   in ``default_pool``, every 10 s): from what a task may read (the Task SDK's task states
   and counts), when ``ingest_window`` is still ``scheduled`` 30 s after the watch's first
   look while no task of the DAG is ``queued`` or ``running`` (twice, 5 s apart), it alerts
   once (reason ``pool_slot_missing``) naming the pool, ``airflow pools get ncbi`` and
   ``airflow pools set ncbi 1 ...``, and is skipped; the run goes on to success once the
   pool exists. Measured: alerted 48 and 54 s after the unpause (2 shared cores). The
   watch waits beside the work, so when the slot stays held until the 12 h timeout Airflow
   names *it* as the task left, started: ``run_failed`` takes it for the work not started
   (``test_x1_a_timed_out_run_whose_watch_still_waits_names_the_pool``: it said
   "ncbi_pool_watch was still running" and named no pool).

X2 **A backfill of a paused nightly never starts, and the instructions do not say so.**
   A new deployment's DAGs are paused (``dags_are_paused_at_creation``); the engineer
   fills in history first, as the README and the DAG's doc show: ``airflow backfill create
   --dag-id litpulse_nightly_ingest --from-date ... --max-active-runs 1``. Airflow 3.3 takes
   it, and its runs stay ``queued`` for good: the scheduler starts no queued run of a paused
   DAG, backfill or not (``DagRun.get_queued_dag_runs_to_set_running`` joins
   ``DagModel.is_paused == false``; apache/airflow#60768), and a paused DAG's runs are never
   examined, so no timeout and no alert either. Reproduction: the end of X1's test (a
   backfill of the paused DAG still ``queued`` 10 s later, 20 s when first run; it runs
   once unpaused) and
   ``test_x2_the_backfill_instructions_say_to_unpause_first`` (neither the README's
   backfill line nor the DAG's doc names unpausing). **Fixed** (documentation): both say to
   unpause the DAG first, and why.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.dags.airflow_stack import wait_for
from tests.dags.conftest import emulator  # noqa: F401 - fixture
from tests.dags.test_real_scheduler import (  # noqa: F401 - fixtures
    NIGHTLY,
    Corpus,
    _first_run,
    _latest_interval_day,
    _live,
    _settings,
    _states,
    stack_factory,
    webhook,
)
from tests.emulator import Emulator
from tests.litpulse.pipeline.test_alerts import _Receiver

pytestmark = [pytest.mark.airflow_integration, pytest.mark.postgres, pytest.mark.timeout(900)]


def _pool_alerts(receiver: _Receiver) -> list[dict[str, Any]]:
    """The alerts that say a task waits for a pool slot."""
    out = []
    for body in list(receiver.bodies):
        alert = json.loads(body)
        if alert["details"].get("reason") == "pool_slot_missing":
            out.append(dict(alert))
    return out


def test_x1_a_missing_pool_is_alerted_within_a_minute(
    stack_factory: Any,  # noqa: F811
    emulator: Emulator,  # noqa: F811
    tmp_path: Path,
    webhook: _Receiver,  # noqa: F811
) -> None:
    corpus = Corpus(emulator)
    now = dt.datetime.now(dt.UTC)
    latest = _latest_interval_day(now)
    corpus.add(latest, 3)
    manual = now.date() - dt.timedelta(days=3)
    corpus.add(manual, 2)
    settings, env = _settings(emulator, tmp_path)
    env["LITPULSE_ALERT_WEBHOOK_URL"] = webhook.url
    stack = stack_factory(executor="LocalExecutor", extra_env=env)
    stack.start()
    stack.cli("pools", "delete", "ncbi")  # the engineer never made it

    t = time.monotonic()
    stack.unpause(NIGHTLY)
    run_id = _first_run(stack, NIGHTLY, timeout=60)
    try:
        alert = wait_for("an alert of the missing pool",
                         lambda: (_pool_alerts(webhook) or [None])[0], 120)  # fmt: skip
    except AssertionError as exc:
        states = _states(stack.tasks(NIGHTLY, run_id))
        raise AssertionError(f"{exc}\n{states}\n{stack.tail()}") from None
    waited = time.monotonic() - t
    print(f"[39c X1] missing pool alerted {waited:.0f} s after the unpause", flush=True)
    text = alert["text"]
    assert run_id in text and "ingest_window" in text and "'ncbi'" in text, text
    assert "airflow pools get ncbi" in text and "airflow pools set ncbi 1" in text, text
    assert alert["details"]["dag_id"] == NIGHTLY and alert["details"]["run_id"] == run_id
    assert stack.run(NIGHTLY, run_id)["state"] == "running"  # nothing failed: it waits

    # the engineer makes the pool: the same run goes on, and ends in success
    stack.cli("pools", "set", "ncbi", "1", "NCBI E-utilities/iCite calls (rate limit)")
    done = stack.wait_run(NIGHTLY, run_id, timeout=240)
    assert done["state"] == "success", (_states(stack.tasks(NIGHTLY, run_id)), stack.tail())
    assert corpus.by_day[latest] <= _live(settings)

    # with the pool in place, a run raises no pool alert
    resp = stack.request("POST", f"/dags/{NIGHTLY}/dagRuns",
                         json={"dag_run_id": "with_pool", "logical_date": None,
                               "conf": {"first_day": manual.isoformat()}})  # fmt: skip
    assert resp.status_code == 200, resp.text
    again = stack.wait_run(NIGHTLY, "with_pool", timeout=240)
    assert again["state"] == "success", (_states(stack.tasks(NIGHTLY, "with_pool")), stack.tail())
    assert len(_pool_alerts(webhook)) == 1, _pool_alerts(webhook)
    assert corpus.by_day[manual] <= _live(settings)

    # X2: a backfill of the paused DAG stays queued; it runs once the DAG is unpaused
    old_day = now.date() - dt.timedelta(days=5)
    corpus.add(old_day, 2)
    resp = stack.request("PATCH", f"/dags/{NIGHTLY}", json={"is_paused": True})
    assert resp.status_code == 200, resp.text
    stack.cli("backfill", "create", "--dag-id", NIGHTLY, "--from-date", old_day.isoformat(),
              "--to-date", (old_day + dt.timedelta(days=1)).isoformat(),
              "--max-active-runs", "1")  # fmt: skip
    backfill = wait_for("the backfill run", lambda: [
        r for r in stack.runs(NIGHTLY) if r["run_type"] == "backfill"], 30)  # fmt: skip
    time.sleep(10)
    assert stack.run(NIGHTLY, backfill[0]["dag_run_id"])["state"] == "queued"
    stack.unpause(NIGHTLY)
    assert stack.wait_run(NIGHTLY, backfill[0]["dag_run_id"], timeout=180)["state"] == "success"
    assert corpus.by_day[old_day] <= _live(settings)


def test_x1_a_timed_out_run_whose_watch_still_waits_names_the_pool(
    webhook: _Receiver,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the slot stays held (another run, 0 slots created after the watch's look), the
    watch is still waiting at the run's timeout: Airflow names it as the unfinished task
    that started last. The alert must still say the run's work never started, and name the
    pool (not "ncbi_pool_watch was still running")."""
    import importlib.util

    from litpulse.pipeline.dag_support import POOL_WATCH

    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("LITPULSE_ALERT_WEBHOOK_URL", webhook.url)
    path = Path(__file__).resolve().parents[2] / "dags" / f"{NIGHTLY}.py"
    spec = importlib.util.spec_from_file_location("review39c_nightly", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = getattr(module, NIGHTLY)()
    assert POOL_WATCH in dag.task_dict and dag.task_dict[POOL_WATCH].pool == "default_pool"
    run_id = "scheduled__2026-12-06T02:00:00+00:00"
    started = dt.datetime(2026, 12, 6, 2, 0, 5, tzinfo=dt.UTC)
    # the dag processor's context: the unfinished task that started last, the watch
    ti = SimpleNamespace(dag_id=NIGHTLY, task_id=POOL_WATCH, run_id=run_id, map_index=-1,
                         state="skipped", start_date=started, try_number=1)  # fmt: skip
    dag_run = SimpleNamespace(dag_id=NIGHTLY, run_id=run_id, start_date=started, conf={})
    callbacks = dag.on_failure_callback
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        callback({"dag": dag, "run_id": run_id, "reason": "timed_out", "ti": ti,
                  "dag_run": dag_run})  # fmt: skip
    [text] = [json.loads(b)["text"] for b in webhook.bodies]
    assert "no task of it ever started" in text and "still running" not in text, text
    assert "airflow pools get ncbi" in text and "airflow pools set ncbi 1" in text, text


def test_x2_the_backfill_instructions_say_to_unpause_first() -> None:
    import re

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    bullet = readme[readme.index("- Backfill one run at a time") :]
    bullet = bullet[: bullet.index("\n- ")]
    doc = (repo / "dags" / f"{NIGHTLY}.py").read_text()
    para = doc[doc.index("**Reruns and backfills are safe.**") :]
    para = para[: para.index("\n\n")]
    for text in (bullet, para):
        assert re.search(r"unpause", text, re.I) and re.search(r"\bpaused\b", text), text
