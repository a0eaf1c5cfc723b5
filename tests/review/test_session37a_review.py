"""Hostile review (session 37a) of the Airflow DAGs as a data engineer operates them: manual
triggers and their params (``airflow dags trigger --conf``, the UI's trigger form), clears,
backfills over scheduled runs, asset-triggered runs queued behind a running one, kills.

World: the DAG files run by Airflow 3.3's own ``dag.test()`` in a child process
(``tests/dags/dag_runner.py``'s way, with its output kept to read what the task log says),
against the loopback NCBI emulator; the DAG files' task callables in this process where
the scheduler is not the point.

Defects (each first a strict xfail asserting the right behaviour):

X1 **A mistyped key in a manual trigger's conf is silently ignored, and the run does
   something else than asked.** Airflow validates the *declared* params of a conf (a
   ``first_day`` that is not a date, a ``shards`` of ``"16"`` are refused at the trigger),
   but a key it does not know is merged into the params and never looked at
   (``SerializedParamsDict.deep_merge`` adds it). The engineer pulls one old day as the
   README shows, with one letter wrong: ``airflow dags trigger litpulse_nightly_ingest
   --conf '{"firstday": "2024-01-09"}'``. The run ingests *yesterday* instead (the plain
   trigger's day), passes, emits ``litpulse_articles``, and the day asked for was never
   ingested; nothing in the task log names the key. The same with ``{"shard": 16}`` for
   ``litpulse_reindex`` or ``litpulse_bootstrap`` (4 or 8 shards, silently) and
   ``{"accept-gaps": true}`` for the bootstrap. Reproduction:
   ``test_x1_a_mistyped_conf_key_fails_the_run_naming_it`` (``dag.test`` with that conf)
   and ``test_x1_shards_typo_refused_by_reindex_and_bootstrap`` (the task callables).
   At fault: every task reading ``params`` (``dag_support.ingest_days``, the ``shards`` and
   ``accept_gaps`` reads of ``dags/litpulse_reindex.py`` and ``dags/litpulse_bootstrap.py``).
   Expected: the run fails at its first task reading the params with ``ConfigError`` (not
   retried) naming the unknown key and the DAG's params, before anything is ingested.
   **Fixed**: ``dag_support.run_params(context)``, the one reader of a run's params, refuses
   a conf key that is no param of the run's DAG (``ConfigError`` naming it and the params);
   ``ingest_days`` and the bootstrap's and reindex's tasks read the params through it.
X3 **The DAGs without params ignore a conf the same way.** ``airflow dags trigger
   litpulse_retrain --conf '{"from_base": true}'`` (the engineer expects ``litpulse retrain
   --from-base``: a fresh adapter from all articles) continues the active adapter, or skips
   the round as "not due", and says nothing of ``from_base``; the same for any conf given
   to ``litpulse_index_refresh``. X1's reader was called only where a param is read.
   Reproduction: ``test_x3_a_conf_on_a_dag_without_params_is_refused`` (the first task's
   callable). Expected: the first task fails with X1's ``ConfigError`` (the DAG takes no
   params). **Fixed**: ``retrain_due`` and ``index_model_current`` read the run's params
   through ``run_params`` first.

X2 **A DAG run that fails without a task failing (its ``dagrun_timeout``, a deadlock) is
   never alerted.** The README promises "Failures ... go to ``LITPULSE_ALERT_WEBHOOK_URL``"
   and "a run times out after N h". Every alert hangs on the tasks: ``task_failed``
   (``on_failure_callback`` of each task) and ``RunBudget`` (when a task *starts or
   finishes* late). At ``dagrun_timeout`` Airflow 3.3's scheduler sets every unfinished task
   instance to ``skipped`` (``SchedulerJobRunner._schedule_dag_run``) and fails the run: no
   task fails, so no task callback runs, and only the DAG's own ``on_failure_callback``
   (reason ``timed_out``; ``all_tasks_deadlocked`` likewise) is called — none is set. The
   realistic case: a task that never starts, so no execution timeout, no late start, no
   failure — the retrain task routed to ``LITPULSE_TRAIN_QUEUE=gpu`` while the GPU worker is
   down, or ``ingest_window`` waiting for an ``ncbi`` pool nobody created (the scheduler
   only logs "Tasks using non-existent pool 'ncbi' will not be scheduled"). The run turns
   ``failed`` 12 h (nightly), 24 h (retrain) or 7 days (bootstrap) later, its tasks
   ``skipped``, and the on-call engineer hears nothing; the nightly's next run reaches back
   over the day, the retrain's week is lost. Reproduction:
   ``test_x2_a_timed_out_run_is_alerted`` (each DAG file's ``on_failure_callback`` called
   with the context the dag processor gives it). At fault: ``dag_support.dag_args`` (no
   DAG-level failure callback). Expected: one alert naming the DAG, the run, that it timed
   out (or deadlocked), the task that was left and whether it ever started, with the way
   out; a run failed by a task (reason ``task_failure``) is not alerted twice.
   **Fixed**: ``dag_support.run_failed``, the ``on_failure_callback`` of every litpulse DAG
   (``dag_args``), alerts a run failed for any reason but ``task_failure``, naming the task
   left, whether it started (else its pool and queue) and the REST clear of the whole run.

Attacks that held (read in Airflow 3.3.2's code, or run):

* Declared params typed wrongly (``{"shards": "16"}``, ``{"first_day": "2024-02-30"}``,
  ``{"accept_gaps": null}``): refused at the trigger by Airflow (``create_dagrun`` validates
  the merged params with a format checker), for the UI's form and the CLI alike.
* A backfill whose ``--to-date`` lies in the future: the run of the incomplete day is
  created queued and starts only once its ``run_after`` (the interval's end) has passed.
  ``--reprocess-behavior`` over an existing scheduled run makes it a ``backfill`` run (no
  reach-back to the watermark); over a running one it is skipped (``in flight``).
* A task SIGKILLed: the supervisor reports ``up_for_retry`` (non-zero exit, retries left);
  the leases of the dead process are taken over at once on its host.
* ``max_map_length = 4096`` (airflow.cfg) covers the bootstrap's ~1,300 baseline files.
* The LocalExecutor real-scheduler test, with X2's DAG-level callback installed: CLI and
  REST clears, backfills and the reprocessing of a failed day still pass (a DAG callback
  does not break clearing as ``deadline=`` did); its new last step is X2 for real.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import articles, ingest_runs
from litpulse.core.settings import Settings
from tests.dags.conftest import RUNNER, airflow_env, airflow_home, emulator  # noqa: F401
from tests.emulator import Emulator

UTC = dt.UTC
DAGS = Path(__file__).resolve().parents[2] / "dags"
#: The day the engineer means to pull by hand (a Tuesday).
OLD_DAY = dt.date(2024, 1, 9)


def _dag_test(
    home: Path, runs: list[dict[str, Any]], env: dict[str, str], tmp: Path
) -> tuple[dict[str, Any], str]:
    """``dag.test()`` runs in a child process (the DAG runner); its report and its output
    (the task logs ``dag.test`` prints)."""
    spec, out = tmp / "spec.json", tmp / "out.json"
    spec.write_text(json.dumps({"runs": runs}))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "run", str(spec), str(out)],
        env=airflow_env(home, env), capture_output=True, text=True, timeout=300, cwd=tmp,
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    return dict(json.loads(out.read_text())), proc.stdout + proc.stderr


def _dag_module(name: str) -> tuple[ModuleType, Any]:
    """The DAG file ``dags/<name>.py`` executed in this process, and its DAG."""
    spec = importlib.util.spec_from_file_location(f"review37a_{name}", DAGS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, getattr(module, name)()


# ----------------------------------------------------------------- X1: mistyped conf keys


def test_x1_a_mistyped_conf_key_fails_the_run_naming_it(
    airflow_home: Path, emulator: Emulator, tmp_path: Path  # noqa: F811 - the fixtures
) -> None:
    for i in range(3):
        emulator.add_article(7000 + i, edat=OLD_DAY, title=f"Statins and memory {i}")
    settings = emulator.configure(Settings.from_env({}, home=tmp_path / "lp"))
    conf = {"firstday": OLD_DAY.isoformat()}  # meant: first_day
    report, output = _dag_test(
        airflow_home, [{"dag_id": "litpulse_nightly_ingest", "conf": conf}],
        emulator.env(settings), tmp_path,
    )
    (run,) = report["runs"]
    with db.connect(settings).connect() as conn:
        windows = conn.execute(select(ingest_runs.c.window_start)).scalars().all()
        stored = conn.execute(select(func.count()).select_from(articles)).scalar_one()
    db.dispose_engines()
    # before: success, yesterday ingested (an ingest run of another day), OLD_DAY not
    assert run["state"] == "failed", (run, windows)
    assert run["tasks"]["ingest_window"] == "failed", run["tasks"]
    assert windows == [] and stored == 0, (windows, stored)
    assert "'firstday', which litpulse_nightly_ingest does not take" in output, output[-3000:]
    assert "first_day, last_day" in output, output[-3000:]
    assert not report["asset_events"], report["asset_events"]


@pytest.mark.parametrize("dag_id", ["litpulse_reindex", "litpulse_bootstrap"])
def test_x1_shards_typo_refused_by_reindex_and_bootstrap(
    dag_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litpulse.pipeline.planning as planning

    module, dag = _dag_module(dag_id)
    monkeypatch.setattr(module, "settings", lambda: None)
    planned: list[int] = []
    monkeypatch.setattr(planning, "plan_embedding_shards",
                        lambda _s, n, **_k: planned.append(n) or [])  # fmt: skip
    conf = {"shard": 16}  # meant: shards
    params = {**{k: dag.params[k] for k in dag.params}, **conf}  # as Airflow merges them
    ctx = {"params": params, "dag": dag, "dag_run": SimpleNamespace(conf=conf)}
    monkeypatch.setattr(module, "get_current_context", lambda: ctx)
    call = dag.task_dict["plan_shards"].python_callable
    with pytest.raises(ConfigError) as err:
        call() if dag_id == "litpulse_reindex" else call({})
    assert "shard" in str(err.value) and "shards" in str(err.value)
    assert planned == []


@pytest.mark.parametrize(("dag_id", "task_id"), [
    ("litpulse_retrain", "retrain_due"),
    ("litpulse_index_refresh", "index_model_current"),
])
def test_x3_a_conf_on_a_dag_without_params_is_refused(
    dag_id: str, task_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litpulse.pipeline.planning as planning

    module, dag = _dag_module(dag_id)
    monkeypatch.setattr(module, "settings", lambda: None)
    asked: list[str] = []
    monkeypatch.setattr(planning, "retrain_due", lambda _s: asked.append("due") or
                        SimpleNamespace(due=True, reason="due"))  # fmt: skip
    monkeypatch.setattr(planning, "refresh_waits_for_reindex",
                        lambda _s, **_k: asked.append("reindex"))  # fmt: skip
    conf = {"from_base": True}
    dag_run = SimpleNamespace(conf=conf, run_type="manual", run_after=None, start_date=None,
                              clear_number=0)  # fmt: skip
    ctx = {"params": dict(conf), "dag": dag, "dag_run": dag_run}
    import airflow.sdk

    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: ctx)
    if hasattr(module, "get_current_context"):
        monkeypatch.setattr(module, "get_current_context", lambda: ctx)
    with pytest.raises(ConfigError) as err:
        dag.task_dict[task_id].python_callable()
    assert "'from_base'" in str(err.value) and "params: none" in str(err.value)
    assert asked == []


# --------------------------------------------------------- X2: a timed-out run is alerted


@pytest.mark.parametrize(("dag_id", "task_id"), [
    ("litpulse_nightly_ingest", "ingest_window"),
    ("litpulse_retrain", "retrain"),
    ("litpulse_bootstrap", "apply_files"),
])
def test_x2_a_timed_out_run_is_alerted(
    dag_id: str, task_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litpulse.pipeline import dag_support

    _module, dag = _dag_module(dag_id)
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(dag_support, "notify", lambda _s, text, details: sent.append(
        (text, dict(details))) or True)  # fmt: skip
    run_id = "scheduled__2026-12-06T02:00:00+00:00"
    started = dt.datetime(2026, 12, 6, 2, 0, 5, tzinfo=UTC)
    # what the dag processor passes (``_execute_dag_callbacks``): the template context of
    # the last unfinished task instance, which the scheduler has just set to skipped
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=-1,
                         state="skipped", start_date=None, try_number=0)  # fmt: skip
    dag_run = SimpleNamespace(dag_id=dag_id, run_id=run_id, start_date=started,
                              run_type="scheduled", conf={})  # fmt: skip
    callbacks = dag.on_failure_callback or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    for reason in ("task_failure", "timed_out"):
        ctx = {"dag": dag, "run_id": run_id, "reason": reason, "ti": ti, "dag_run": dag_run}
        for callback in callbacks:
            callback(ctx)
        if reason == "task_failure":  # the task's own callback told it
            assert sent == [], sent
    assert len(sent) == 1, (dag_id, sent)
    text, details = sent[0]
    hours = dag.dagrun_timeout.total_seconds() / 3600
    assert dag_id in text and run_id in text and "timed out" in text, text
    assert f"{hours:g} h" in text, text
    assert task_id in text and "no task of it ever started" in text, text
    assert details["reason"] == "timed_out" and details["task_id"] == task_id, details
