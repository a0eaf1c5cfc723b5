"""Run litpulse DAGs with ``dag.test()`` in a fresh process (used by the DAG tests).

Airflow reads its configuration once, at import; running it in a child process keeps
the test session's own ``airflow`` import state (none) untouched and lets each test
pick its ``AIRFLOW_HOME``. Usage::

    python tests/dags/dag_runner.py check OUT.json
    python tests/dags/dag_runner.py run SPEC.json OUT.json

``SPEC.json``: ``{"runs": [{"dag_id": ..., "logical_date": ISO or null,
"conf": {...}}]}``. The output lists each run's state, task states and data interval,
plus every asset event (asset name and its metadata).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

DAGS = Path(__file__).resolve().parents[2] / "dags"
HEAVY = ("torch", "faiss", "transformers", "sentence_transformers", "peft")


def _bag() -> Any:
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)


def check(out: Path) -> None:
    """Parse the DAGs folder; report import errors, DAG attributes and heavy imports."""
    bag = _bag()
    dags = {}
    for dag_id, dag in bag.dags.items():
        tasks = {}
        for t in dag.tasks:
            tasks[t.task_id] = {
                "owner": t.owner,
                "retries": t.retries,
                "retry_exponential_backoff": t.retry_exponential_backoff,
                "has_retry_policy": t.retry_policy is not None,
                "has_on_failure_callback": bool(t.on_failure_callback),
                "has_run_budget": bool(t.on_execute_callback) and bool(t.on_success_callback),
                "max_retry_delay_s": (
                    t.max_retry_delay.total_seconds() if t.max_retry_delay else None
                ),
                "pool": t.pool,
                "queue": t.queue,
                "mode": getattr(t, "mode", None),  # a sensor's: poke or reschedule
                "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
                "upstream": sorted(t.upstream_task_ids),
                "mapped": bool(getattr(t, "is_mapped", False))
                or "MappedOperator" in type(t).__name__,
                "max_active_tis_per_dagrun": t.max_active_tis_per_dagrun,
            }
        dags[dag_id] = {
            "owner": dag.owner,
            "tags": sorted(dag.tags),
            "doc_md": dag.doc_md or "",
            "retries": (dag.default_args or {}).get("retries"),
            "timetable": type(dag.timetable).__name__,
            "deadline": len(dag.deadline or []),
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "params": {k: dag.params.get_param(k).value for k in dag.params},
            "tasks": tasks,
        }
    result = {
        "retry_decisions": _retry_decisions(bag),
        "import_errors": {str(k): v for k, v in bag.import_errors.items()},
        "dags": dags,
        "heavy_modules": [m for m in HEAVY if m in sys.modules],
    }
    out.write_text(json.dumps(result, indent=2, default=str))


def _retry_decisions(bag: Any) -> dict[str, Any]:
    """What the shared retry policy decides for typical exceptions.

    ``fresh``: the first failure of a task never cleared (try 1 of 4); ``cleared``: the
    first failure after two clears of a task that failed all its tries each time (try 9,
    ``max_tries`` 11), with the real ``ingest_window`` task in the context, as Airflow
    passes it; ``third``: its third failure since the last clear.
    """
    from types import SimpleNamespace

    from litpulse.core.errors import (
        DataQualityError,
        InvalidRequestError,
        RateLimitedError,
        TransientSourceError,
    )
    from litpulse.pipeline.dag_support import LitpulseRetryPolicy

    policy = LitpulseRetryPolicy()
    samples = {
        "TransientSourceError": TransientSourceError("HTTP 503"),
        "RateLimitedError": RateLimitedError("HTTP 429", retry_after=7),
        "InvalidRequestError": InvalidRequestError("bad term"),
        "DataQualityError": DataQualityError("empty weekday"),
        "OSError": OSError("disk full"),
    }
    task = bag.dags["litpulse_nightly_ingest"].get_task("ingest_window")
    context: Any = {"ti": SimpleNamespace(task=task)}
    cases = {
        "no_context": (1, 3, None),
        "fresh": (1, 3, context),
        "cleared": (9, 11, context),
        "third": (11, 11, context),
    }
    out: dict[str, Any] = {}
    for case, (try_number, max_tries, ctx) in cases.items():
        out[case] = {}
        for name, exc in samples.items():
            d = policy.evaluate(exc, try_number=try_number, max_tries=max_tries, context=ctx)
            delay = d.retry_delay.total_seconds() if d.retry_delay else None
            out[case][name] = {"action": d.action.value, "delay": delay}
    return out


def run(spec_path: Path, out: Path) -> None:
    """Run each DAG of the spec once with ``dag.test()``, in order."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    spec = json.loads(spec_path.read_text())
    started = dt.datetime.now(dt.UTC)
    Pool.create_or_update_pool(
        "ncbi", slots=1, description="NCBI rate limit", include_deferred=False
    )
    bag = _bag()
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    runs = []
    for item in spec["runs"]:
        dag = bag.dags[item["dag_id"]]  # as shipped: nothing stripped
        kwargs: dict[str, Any] = {"run_conf": item.get("conf") or None}
        if item.get("logical_date"):
            kwargs["logical_date"] = dt.datetime.fromisoformat(item["logical_date"])
        t0 = time.perf_counter()
        dr = dag.test(**kwargs)
        seconds = round(time.perf_counter() - t0, 2)
        tasks = {}
        for ti in dr.get_task_instances():
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            tasks[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
        runs.append(
            {
                "dag_id": dag.dag_id,
                "state": str(getattr(dr.state, "value", dr.state)),
                "seconds": seconds,
                "tasks": tasks,
                "data_interval": [
                    dr.data_interval_start.isoformat() if dr.data_interval_start else None,
                    dr.data_interval_end.isoformat() if dr.data_interval_end else None,
                ],
            }
        )
    events = []
    from airflow.models.asset import AssetEvent, AssetModel
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.extra, AssetEvent.source_dag_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.timestamp >= started)
            .order_by(AssetEvent.id)
        ).all()
        events = [{"asset": n, "extra": e, "dag_id": d} for n, e, d in rows]
    out.write_text(json.dumps({"runs": runs, "asset_events": events}, indent=2, default=str))


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(Path(sys.argv[2]))
    elif sys.argv[1] == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
