"""DAG integrity, and the nightly chain run with ``dag.test()`` against the emulator.

The chain: ``litpulse_nightly_ingest`` for one day → ``litpulse_index_refresh`` →
``litpulse_retrain`` (short-circuited: the corpus is far below the threshold) →
``litpulse_reindex`` (two mapped shards) → ``litpulse_nightly_ingest`` for an empty
weekday (fails its data-quality check without retrying). The assertions read what landed in the
litpulse store, the published index and the model registry, and the asset events.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from litpulse.core import db
from litpulse.core.schema import articles, embeddings, index_versions, ingest_runs, model_versions
from litpulse.core.settings import Settings
from tests.dags.conftest import REPO, RUNNER, airflow_env, run_dags
from tests.emulator import Emulator

EXPECTED_DAGS = {
    "litpulse_nightly_ingest",
    "litpulse_index_refresh",
    "litpulse_retrain",
    "litpulse_reindex",
    "litpulse_bootstrap",
}


@pytest.fixture(scope="module")
def dagbag_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Parse the DAGs folder in a child process (fresh ``sys.modules``)."""
    home = tmp_path_factory.mktemp("dagbag_home")
    out = home / "check.json"
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "check", str(out)],
        env=airflow_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def test_a_mistyped_setting_does_not_break_parsing(tmp_path: Path) -> None:
    """Settings are read inside tasks; parsing reads LITPULSE_TRAIN_QUEUE alone."""
    out = tmp_path / "check.json"
    env = airflow_env(
        tmp_path, {"LITPULSE_EFETCH_BATCH": "lots", "LITPULSE_NO_SUCH": "1",
                   "LITPULSE_TRAIN_QUEUE": "gpu"},
    )
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "check", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["import_errors"] == {}
    assert set(report["dags"]) == EXPECTED_DAGS
    assert report["dags"]["litpulse_retrain"]["tasks"]["retrain"]["queue"] == "gpu"


def test_dagbag_has_no_import_errors(dagbag_report: dict) -> None:
    assert dagbag_report["import_errors"] == {}
    assert set(dagbag_report["dags"]) == EXPECTED_DAGS


def test_parsing_dags_does_not_import_heavy_libraries(dagbag_report: dict) -> None:
    assert dagbag_report["heavy_modules"] == []


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_every_dag_has_owner_retries_tags_docs(dagbag_report: dict, dag_id: str) -> None:
    dag = dagbag_report["dags"][dag_id]
    assert dag["owner"] == "litpulse-data"
    assert dag["tags"] and "litpulse" in dag["tags"]
    assert len(dag["doc_md"]) > 200, "doc_md must tell the on-call engineer what to do"
    assert dag["retries"] >= 1
    # Airflow 3.3.2's deadline alerts break `tasks clear`, REST clearTaskInstances and
    # `dags test`: our own run budget (a callback on every task) replaces them
    assert dag["deadline"] == 0
    assert dag["max_active_runs"] == 1
    assert dag["catchup"] is False
    for task_id, task in dag["tasks"].items():
        assert task["owner"] == "litpulse-data", task_id
        assert task["has_retry_policy"], task_id
        assert task["has_on_failure_callback"], task_id
        assert task["has_run_budget"], task_id
        if task["retries"]:
            # Airflow 3.3: a multiplier, not a boolean
            assert task["retry_exponential_backoff"] == 2.0, task_id
            assert task["max_retry_delay_s"] == 8 * 60, task_id


def test_retry_policy_retries_only_transient_errors(dagbag_report: dict) -> None:
    decisions = dagbag_report["retry_decisions"]["no_context"]
    assert decisions["TransientSourceError"] == {"action": "retry", "delay": None}
    assert decisions["RateLimitedError"] == {"action": "retry", "delay": 7.0}
    assert decisions["InvalidRequestError"]["action"] == "fail"
    assert decisions["DataQualityError"]["action"] == "fail"
    assert decisions["OSError"]["action"] == "default"


def test_retry_delays_restart_at_every_clear(dagbag_report: dict) -> None:
    """2, 4, 8 min after the 1st, 2nd, 3rd failure since the last clear, whatever the try
    number (Airflow's own formula took try 9 after two clears: 2**8 * 2 min, capped)."""
    decisions = dagbag_report["retry_decisions"]
    for case, minutes in (("fresh", 2), ("cleared", 2), ("third", 8)):
        # a Retry-After shorter than the backoff (7 s) does not shorten it
        for name in ("TransientSourceError", "OSError", "RateLimitedError"):
            assert decisions[case][name] == {"action": "retry", "delay": minutes * 60.0}, (
                case,
                name,
            )
        assert decisions[case]["InvalidRequestError"]["action"] == "fail"


def test_every_ncbi_call_is_in_the_ncbi_pool(dagbag_report: dict) -> None:
    """E-utilities and iCite: a backfill's citation refresh never runs beside an ingest."""
    pooled = {
        (dag_id, task_id)
        for dag_id, dag in dagbag_report["dags"].items()
        for task_id, task in dag["tasks"].items()
        if task["pool"] == "ncbi"
    }
    assert pooled == {
        ("litpulse_nightly_ingest", "ingest_window"),
        ("litpulse_nightly_ingest", "refresh_citations"),
    }


def test_the_digest_runs_after_the_index_is_published(dagbag_report: dict) -> None:
    tasks = dagbag_report["dags"]["litpulse_index_refresh"]["tasks"]
    assert tasks["digest"]["upstream"] == ["refresh_index"]
    assert tasks["refresh_index"]["upstream"] == ["embed_pending"]


def test_the_quality_check_waits_for_the_citations_refresh(dagbag_report: dict) -> None:
    """A window is through once the refresh and the check passed (as `litpulse nightly`)."""
    tasks = dagbag_report["dags"]["litpulse_nightly_ingest"]["tasks"]
    assert tasks["refresh_citations"]["upstream"] == ["await_citations_refresh"]
    assert tasks["await_citations_refresh"]["upstream"] == ["ingest_window"]
    assert tasks["data_quality"]["upstream"] == ["ingest_window", "refresh_citations"]


def test_nightly_ingest_has_window_params(dagbag_report: dict) -> None:
    assert dagbag_report["dags"]["litpulse_nightly_ingest"]["params"] == {
        "first_day": None,
        "last_day": None,
    }


def test_dags_folder_loads_the_way_every_airflow_command_does(
    airflow_home: Path, tmp_path: Path
) -> None:
    """`airflow dags list --local` (no `-B`, cwd elsewhere, PYTHONPATH without dags/): no
    import errors; the shared helpers live in the installed package, not beside the DAGs."""
    env = airflow_env(airflow_home)
    env["PYTHONPATH"] = str(REPO)  # the package, as an installed checkout has it
    out = {}
    for cmd in ("list-import-errors", "list"):
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", "dags", cmd, "--local", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        # Airflow prints a warning (graphviz) on stdout before the JSON
        line = [x for x in proc.stdout.splitlines() if x.startswith("[")][-1]
        out[cmd] = json.loads(line)
    assert out["list-import-errors"] == []
    assert {d["dag_id"] for d in out["list"]} == EXPECTED_DAGS


def test_schedules(dagbag_report: dict) -> None:
    dags = dagbag_report["dags"]
    assert dags["litpulse_nightly_ingest"]["timetable"] == "CronDataIntervalTimetable"
    assert dags["litpulse_index_refresh"]["timetable"] == "AssetTriggeredTimetable"
    assert dags["litpulse_reindex"]["timetable"] == "AssetTriggeredTimetable"
    assert dags["litpulse_retrain"]["timetable"] == "CronTriggerTimetable"
    assert dags["litpulse_bootstrap"]["timetable"] == "NullTimetable"  # by hand, once


def test_bootstrap_maps_fetchers_beside_one_ordered_writer(dagbag_report: dict) -> None:
    """Fetchers are mapped with a bound in flight below the DAG's task limit, so the writer
    always gets a slot; the writer runs beside them (not after them); shards follow it."""
    tasks = dagbag_report["dags"]["litpulse_bootstrap"]["tasks"]
    fetch, apply = tasks["fetch_file"], tasks["apply_files"]
    assert fetch["mapped"] and fetch["upstream"] == ["list_files"]
    assert 1 <= fetch["max_active_tis_per_dagrun"] < 4  # airflow.cfg max_active_tasks_per_dag
    assert not apply["mapped"] and apply["upstream"] == ["list_files"]
    assert tasks["plan_shards"]["upstream"] == ["apply_files"]
    assert tasks["embed_shard"]["mapped"] and tasks["embed_shard"]["upstream"] == ["plan_shards"]
    assert tasks["publish_index"]["upstream"] == ["embed_shard"]
    # accept_gaps: `litpulse bootstrap --accept-gaps`, off unless a run asks for it
    assert dagbag_report["dags"]["litpulse_bootstrap"]["params"] == {
        "shards": 8, "accept_gaps": False,
    }


def test_documented_dags_test_command(
    airflow_home: Path, emulator: Emulator, tmp_path: Path
) -> None:
    """`airflow dags test litpulse_nightly_ingest 2026-11-30T02:00:00+00:00` (the README's
    debugging command) on the DAG as shipped: it ingests the day 2026-11-29 and exits 0."""
    day = dt.date(2026, 11, 29)
    for i in range(3):
        emulator.add_article(2000 + i, edat=day, title=f"Aspirin and stroke, trial {i}")
        emulator.set_icite(2000 + i, citation_count=i)
    settings = emulator.configure(Settings.from_env({}, home=tmp_path / "lp"))
    env = airflow_env(airflow_home, emulator.env(settings))
    for cmd in (
        ["pools", "set", "ncbi", "1", "NCBI E-utilities/iCite calls (rate limit)"],
        ["dags", "test", "litpulse_nightly_ingest", "2026-11-30T02:00:00+00:00"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "airflow", *cmd],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    engine = db.connect(settings)
    with engine.connect() as conn:
        live = set(conn.execute(select(articles.c.pmid)).scalars())
    assert live == {2000, 2001, 2002}


# ------------------------------------------------------------------------- the chain

DAY = dt.date(2024, 1, 2)  # a Tuesday
N_DAY = 24


def _serve(emu: Emulator) -> None:
    for i in range(N_DAY):
        pmid = 1000 + i
        emu.add_article(
            pmid,
            edat=DAY,
            title=f"Statin therapy and dementia risk cohort number {i}",
            abstract=f"We followed {100 + i} adults taking statins for memory decline.",
        )
        emu.set_icite(pmid, citation_count=i, relative_citation_ratio=0.5 + i / 10)
    # outside the window: must not be ingested
    emu.add_article(5000, edat=DAY + dt.timedelta(days=5), title="A later record on kidneys")


@pytest.mark.slow
def test_nightly_chain_with_dag_test(
    airflow_home: Path, emulator: Emulator, tmp_path: Path
) -> None:
    _serve(emulator)
    settings = emulator.configure(Settings.from_env({}, home=tmp_path / "lp"))
    env = emulator.env(settings)
    # a manual run's interval is the last one complete at its logical date:
    # [Jan 2 02:00, Jan 3 02:00), which ingests the day Jan 2
    logical = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(2), dt.UTC)
    empty_logical = logical + dt.timedelta(days=7)
    report = run_dags(
        airflow_home,
        [
            {"dag_id": "litpulse_nightly_ingest", "logical_date": logical.isoformat()},
            {"dag_id": "litpulse_index_refresh"},
            {"dag_id": "litpulse_retrain"},
            {"dag_id": "litpulse_reindex", "conf": {"shards": 2}},
            # a Tuesday a week later that PubMed "forgot": fails its quality check
            {"dag_id": "litpulse_nightly_ingest", "logical_date": empty_logical.isoformat()},
        ],
        env,
        tmp_path,
    )
    ingest, refresh, retrain, reindex, empty = report["runs"]
    assert ingest["data_interval"] == ["2024-01-02T02:00:00+00:00", "2024-01-03T02:00:00+00:00"]

    assert ingest["state"] == "success", ingest
    assert set(ingest["tasks"].values()) == {"success"}, ingest["tasks"]
    assert refresh["state"] == "success", refresh
    assert set(refresh["tasks"].values()) == {"success"}, refresh["tasks"]
    # far fewer than LITPULSE_RETRAIN_MIN_NEW_ARTICLES: short-circuited
    assert retrain["tasks"] == {
        "retrain_due": "success",
        "retrain": "skipped",
        "publish_model": "skipped",
    }
    assert reindex["state"] == "success", reindex
    assert {k for k in reindex["tasks"] if k.startswith("embed_shard")} == {
        "embed_shard[0]",
        "embed_shard[1]",
    }

    # what landed in the store
    engine = db.connect(settings)
    with engine.connect() as conn:
        live = set(
            conn.execute(select(articles.c.pmid).where(articles.c.is_deleted.is_(False))).scalars()
        )
        cited = conn.execute(
            select(func.count()).where(articles.c.citation_count.is_not(None))
        ).scalar()
        run = conn.execute(
            select(ingest_runs)
            .where(ingest_runs.c.source == "eutils")
            .order_by(ingest_runs.c.id)
            .limit(1)
        ).one()
        vectors = conn.execute(select(func.count()).select_from(embeddings)).scalar()
        indexes = conn.execute(select(index_versions).order_by(index_versions.c.created_at)).all()
        models = conn.execute(select(func.count()).select_from(model_versions)).scalar()
    assert live == {1000 + i for i in range(N_DAY)}
    assert cited == N_DAY
    assert run.status == "succeeded"
    assert run.inserted == N_DAY
    # exactly the run's day (ingest_window re-reads one overlap day before it)
    assert _aware(run.window_start) == dt.datetime.combine(DAY, dt.time(), dt.UTC)
    assert _aware(run.window_end) == dt.datetime.combine(DAY, dt.time(), dt.UTC) + dt.timedelta(
        days=1
    )
    assert vectors == N_DAY
    published = [r for r in indexes if r.status == "published"]
    assert len(published) == 1 and published[0].size == N_DAY
    assert published[0].model_version == "base"
    assert models == 0

    # the assets, with their metadata
    events = {e["asset"]: e for e in report["asset_events"]}
    assert events["litpulse_articles"]["extra"]["inserted"] == N_DAY
    assert events["litpulse_articles"]["extra"]["window_start"].startswith("2024-01-02")
    assert events["litpulse_index"]["extra"]["size"] == N_DAY
    assert "litpulse_model" not in events
    assert [e["dag_id"] for e in report["asset_events"] if e["asset"] == "litpulse_articles"] == [
        "litpulse_nightly_ingest"
    ]  # once: the empty day emitted nothing

    # the empty weekday: DataQualityError is not retryable, so it failed at once
    # (with retries=3 and no policy it would sit in up_for_retry)
    assert empty["state"] == "failed"
    assert empty["tasks"]["ingest_window"] == "success"
    assert empty["tasks"]["data_quality"] == "failed"
    assert empty["tasks"]["publish_articles"] == "upstream_failed"


def test_a_failed_citations_refresh_holds_the_watermark_until_cleared(
    airflow_home: Path, emulator: Emulator, tmp_path: Path
) -> None:
    """As ``litpulse nightly``: a night whose ``refresh_citations`` failed is not through,
    so its window does not move the watermark; ``data_quality`` waits for the refresh
    (before: it ran beside it and released the window whatever the refresh did). The run
    again (``dag.test`` clears its task instances) once iCite answers moves it."""
    from litpulse.pipeline.nightly import check_window, ingest_eutils_window
    from litpulse.pipeline.planning import held_windows, last_watermark

    tuesday, wednesday = DAY, DAY + dt.timedelta(days=1)
    for n, day in enumerate((tuesday, wednesday)):
        for i in range(3):
            pmid = 1000 + 10 * n + i
            emulator.add_article(pmid, edat=day, title=f"Statins and memory, cohort {n}{i}")
            emulator.set_icite(pmid, citation_count=i)
    settings = emulator.configure(Settings.from_env({}, home=tmp_path / "lp"))
    icite_down = settings.replace(icite_url=f"{emulator.url}/no-icite/")  # 404: not retried

    def night(day: dt.date, s: Settings) -> dict:
        logical = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(2), dt.UTC)
        folder = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        folder.mkdir()
        runs = [{"dag_id": "litpulse_nightly_ingest", "logical_date": logical.isoformat()}]
        (run,) = run_dags(airflow_home, runs, emulator.env(s), folder)["runs"]
        db.dispose_engines()
        return dict(run)

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), dt.UTC)

    # the night before, through (as its DAG run does): the watermark at Wednesday
    window = (midnight(tuesday), midnight(wednesday))
    check_window(settings, ingest_eutils_window(settings, *window).to_dict(), window)
    db.dispose_engines()
    assert last_watermark(settings) == midnight(wednesday)
    failed = night(wednesday, icite_down)
    assert failed["state"] == "failed", failed
    assert last_watermark(settings) == midnight(wednesday)  # held where it was
    assert failed["tasks"]["ingest_window"] == "success", failed["tasks"]
    assert failed["tasks"]["refresh_citations"] == "failed", failed["tasks"]
    assert failed["tasks"]["data_quality"] == "upstream_failed", failed["tasks"]
    assert [w["window_start"] for w in held_windows(settings)] == [
        midnight(wednesday).isoformat()
    ]
    cleared = night(wednesday, settings)
    assert cleared["state"] == "success", cleared
    assert last_watermark(settings) == midnight(wednesday + dt.timedelta(days=1))
    assert held_windows(settings) == []


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def test_train_queue_reads_its_one_variable(caplog: pytest.LogCaptureFixture) -> None:
    from litpulse.pipeline import dag_support

    assert dag_support.train_queue({"LITPULSE_EFETCH_BATCH": "lots"}) == "default"
    assert dag_support.train_queue({"LITPULSE_TRAIN_QUEUE": " gpu "}) == "gpu"
    dag_support.logger.addHandler(caplog.handler)  # Airflow's logging may stop propagation
    try:
        assert dag_support.train_queue({"LITPULSE_TRAIN_QUEUE": "  "}) == "default"
    finally:
        dag_support.logger.removeHandler(caplog.handler)
    assert "LITPULSE_TRAIN_QUEUE is blank" in caplog.text


@pytest.mark.slow
def test_index_refresh_fails_loudly_when_a_pending_reindex_has_no_run_coming(
    airflow_home: Path, tmp_path: Path
) -> None:
    """A promotion whose inline re-index was killed a day ago: the published index is on
    'base', 'm2' is active, no litpulse_reindex run exists. The refresh DAG's first task
    asks Airflow (the Task SDK's run count) and fails instead of skipping every night."""
    from sqlalchemy import update

    from ranking.refresh import refresh_index
    from tests.ranking.test_index import _activate, add_articles

    settings = Settings.from_env({}, home=tmp_path / "lp")
    engine = db.connect(settings)
    add_articles(engine, [1, 2, 3])
    refresh_index(settings, embed=False)
    _activate(engine, "m2", settings)
    with engine.begin() as conn:
        conn.execute(update(model_versions).values(
            promoted_at=db.utcnow() - dt.timedelta(days=1)))
    db.dispose_engines()
    env = {"LITPULSE_HOME": str(settings.home), "LITPULSE_DATABASE_URL": settings.database_url}
    report = run_dags(airflow_home, [{"dag_id": "litpulse_index_refresh"}], env, tmp_path)
    (run,) = report["runs"]
    assert run["state"] == "failed", run
    assert run["tasks"]["index_model_current"] == "failed", run["tasks"]
    assert run["tasks"]["embed_pending"] != "success", run["tasks"]
