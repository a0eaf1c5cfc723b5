"""Hostile review (session 39c) of the Airflow DAGs as a data engineer operates them: the
``ncbi`` pool nobody created (38d X4's leftover), then what earlier reviews did not cover.

World: a real Airflow 3.3 deployment (``tests/dags/airflow_stack.py``: scheduler,
dag-processor, API server, LocalExecutor, metadata database on the test PostgreSQL) over
the repository's ``dags/`` and ``airflow.cfg``, against the loopback NCBI emulator, its
alerts posted to a loopback webhook.

Defects (each first a strict xfail asserting the right behaviour):

X1 **A nightly run waiting for a missing ``ncbi`` pool waits silently for 12 h.** Airflow
   3.3 tells nobody that a task names a pool that does not exist: the scheduler logs "Tasks
   using non-existent pool 'ncbi' will not be scheduled" and leaves the task ``scheduled``;
   the dag-processor's ``DagBag.dag_warnings`` would warn of it, but Airflow never passes it
   the known pools (``known_pools`` is ``None`` everywhere in 3.3.2), and a task cannot ask
   (the execution API has no pool route). A data engineer who set up a fresh deployment and
   forgot ``airflow pools set ncbi ...`` (or whose pool was deleted) hears of it only from
   the run-timeout alert, 12 h later, with the night lost. Reproduction: a real stack with
   the pool deleted and the nightly unpaused: no alert came in 120 s (first a test of its
   own here, starting a LocalExecutor stack: 110-163 s; the integrator folded it into step 8
   of ``tests/dags/test_real_scheduler.py``'s LocalExecutor test, which already runs the
   stack, to keep the suite's time: the pool deleted, the next run alerted within 120 s
   naming the commands, the run still running, its watch skipped, and no earlier run of that
   test, all with the pool, raised a pool alert). Expected: within about a minute, an alert
   naming the run, the task waiting, the pool and the commands that check and make it; once
   the pool exists the run goes on to success; a run with the pool in place raises no such
   alert. **Fixed**: ``dag_support.pool_slot_awaited``, the look of the nightly's new
   ``ncbi_pool_watch`` (a sensor in reschedule mode beside ``ingest_window``, in
   ``default_pool``, every 10 s): from what a task may read (the Task SDK's task states and
   counts), when ``ingest_window`` is still ``scheduled`` 30 s after the watch's first look
   while no task of the DAG is ``queued`` or ``running`` (twice, 5 s apart), it alerts once
   (reason ``pool_slot_missing``) naming the pool, ``airflow pools get ncbi`` and ``airflow
   pools set ncbi 1 ...``, and is skipped; the run goes on to success once the pool exists.
   Measured: alerted 48 and 54 s after the unpause (2 shared cores). The watch waits beside
   the work, so when the slot stays held until the 12 h timeout Airflow names *it* as the
   task left, started: ``run_failed`` takes it for the work not started
   (``test_x1_a_timed_out_run_whose_watch_still_waits_names_the_pool``: it said
   "ncbi_pool_watch was still running" and named no pool).

X2 **A backfill of a paused nightly never starts, and the instructions do not say so.**
   A new deployment's DAGs are paused (``dags_are_paused_at_creation``); the engineer
   fills in history first, as the README and the DAG's doc show: ``airflow backfill create
   --dag-id litpulse_nightly_ingest --from-date ... --max-active-runs 1``. Airflow 3.3 takes
   it, and its runs stay ``queued`` for good: the scheduler starts no queued run of a paused
   DAG, backfill or not (``DagRun.get_queued_dag_runs_to_set_running`` joins
   ``DagModel.is_paused == false``; apache/airflow#60768), and a paused DAG's runs are never
   examined, so no timeout and no alert either. Reproduction: the end of X1's first test (a
   backfill of the paused DAG still ``queued`` 20 s later; it ran once unpaused: Airflow's
   behaviour, not kept as a test) and
   ``test_x2_the_backfill_instructions_say_to_unpause_first`` (neither the README's
   backfill line nor the DAG's doc names unpausing). **Fixed** (documentation): both say to
   unpause the DAG first, and why.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.dags.test_real_scheduler import NIGHTLY, webhook  # noqa: F401 - fixture
from tests.litpulse.pipeline.test_alerts import _Receiver


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
