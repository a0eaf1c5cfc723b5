"""The DAGs under a real Airflow 3.3 scheduler, against the loopback NCBI emulator.

Airflow's metadata database is a fresh PostgreSQL database of each deployment (the
litpulse store the tasks write is SQLite).

LocalExecutor: first ``litpulse_bootstrap``, triggered with ``airflow dags trigger``
on 3 baseline files and 1 update file: its fetchers run as mapped task instances, at most
the DAG's bound at once, the store ends in the state a clean ``litpulse bootstrap`` gives on
the same files, the index is published, and a second trigger finds nothing pending. Then
unpausing runs the latest data interval and the asset triggers
``litpulse_index_refresh``; a plain ``airflow dags trigger`` ingests the last full UTC day;
a task failed on purpose (a non-retryable E-utilities error) is cleared with ``airflow tasks
clear`` and, on another run, with the REST API ``clearTaskInstances``, and succeeds; two
days are backfilled one run at a time (``--max-active-runs 1``), the first failing on
purpose, then reprocessed by the documented ``--reprocess-behavior failed``; unpausing the
weekly retrain does not retrain last Sunday; the store and the published index hold every
day; the NCBI key came from the Airflow connection ``litpulse_ncbi``; none of those runs (the
``ncbi`` pool in place) raised a pool alert; then the pool is deleted (an engineer who never
made it): the next run's ``ncbi_pool_watch`` alerts within about a minute naming the
commands that check and make it (39c X1) and skips, the run waiting on; nothing ever takes
a slot, so the run times out and that is alerted too, naming the pool.

CeleryExecutor (Redis broker and result backend on 127.0.0.1:6379, database 13, a queue of
this test alone): the same chain through one ``airflow celery worker``, then a reindex
whose mapped shards run on several of the worker's slots.

Timings of each step are printed (``pytest -s``) and kept in ``HOME/timings.json``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text, update

from litpulse.core import db
from litpulse.core.schema import (
    articles,
    embeddings,
    index_versions,
    ingest_runs,
    model_versions,
)
from litpulse.core.settings import Settings
from ranking.models import published_index_row
from tests.conftest import fresh_postgres_database
from tests.dags.airflow_stack import AirflowStack, StackError, wait_for
from tests.dags.conftest import REPO, publish_bootstrap_files
from tests.emulator import Emulator
from tests.ingest.test_bootstrap import _files as source_file_rows
from tests.ingest.test_crash_resume import child_env, differences, snapshot
from tests.litpulse.pipeline.test_alerts import _Receiver
from tests.ranking.test_index import _activate

pytestmark = [pytest.mark.airflow_integration, pytest.mark.postgres, pytest.mark.timeout(1800)]

NIGHTLY, REFRESH, RETRAIN, REINDEX, BOOTSTRAP = (
    "litpulse_nightly_ingest",
    "litpulse_index_refresh",
    "litpulse_retrain",
    "litpulse_reindex",
    "litpulse_bootstrap",
)
API_KEY = "test-key-from-the-airflow-connection"
#: An E-utilities answer litpulse classifies as InvalidRequestError (not retryable).
INVALID = "Invalid db name specified: pubmedx"
REDIS_DB = 13


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _latest_interval_day(now: dt.datetime) -> dt.date:
    """Day ``D`` of the latest complete ``0 2 * * *`` interval ``[D 02:00, D+1 02:00)``."""
    boundary = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if boundary > now:
        boundary -= dt.timedelta(days=1)
    return boundary.date() - dt.timedelta(days=1)


class Corpus:
    """Articles served by the emulator, by day, with distinct PMIDs."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.by_day: dict[dt.date, set[int]] = {}
        self.next_pmid = 7000

    def add(self, day: dt.date, n: int) -> set[int]:
        pmids = set(range(self.next_pmid, self.next_pmid + n))
        self.next_pmid += n
        for pmid in sorted(pmids):
            self.emu.add_article(
                pmid,
                edat=day,
                title=f"Statin therapy and memory, cohort {pmid}",
                abstract=f"We followed {pmid % 97 + 20} adults on statins for cognitive decline.",
            )
            self.emu.set_icite(pmid, citation_count=pmid % 13, relative_citation_ratio=1.0)
        self.by_day.setdefault(day, set()).update(pmids)
        return pmids


def _settings(emu: Emulator, tmp: Path) -> tuple[Settings, dict[str, str]]:
    settings = emu.configure(
        Settings.from_env({}, home=tmp / "litpulse"),
        # due at once: only the catch-up guard may keep the retrain from training
        retrain_min_new_articles=1,
    )
    return settings, emu.env(settings)


def _live(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        return set(
            conn.execute(select(articles.c.pmid).where(articles.c.is_deleted.is_(False))).scalars()
        )


def _status(settings: Settings, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "litpulse", "status", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout))


def _interval(run: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    """``(start_date, end_date)`` of a run or task instance."""
    start, end = run["start_date"], run["end_date"]
    return dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)


def _states(tis: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    return {k: v["state"] for k, v in tis.items()}


class Clock:
    """Named durations, printed and written to ``timings.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marks: dict[str, float] = {}
        self.t0 = time.monotonic()

    def lap(self, name: str, since: float) -> float:
        seconds = round(time.monotonic() - since, 1)
        self.marks[name] = seconds
        self.path.write_text(json.dumps(self.marks, indent=2))
        print(f"[timing] {name}: {seconds} s", flush=True)
        return seconds


@pytest.fixture
def webhook() -> Iterator[_Receiver]:
    """A loopback alert webhook answering 204 to every POST (its bodies kept)."""

    def ok(conn: socket.socket, body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    receiver = _Receiver(ok)
    yield receiver
    receiver.close()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    """Start :class:`AirflowStack` deployments; every one is stopped at teardown."""
    stacks: list[AirflowStack] = []
    with contextlib.ExitStack() as databases:

        def make(**kwargs: Any) -> AirflowStack:
            url = databases.enter_context(fresh_postgres_database("airflow_test"))
            stack = AirflowStack(home=tmp_path / f"airflow{len(stacks)}", database_url=url,
                                 **kwargs)  # fmt: skip
            stacks.append(stack)
            return stack

        yield make
        for stack in stacks:
            stack.stop()
            leftover = [n for n, p in stack.procs.items() if p.poll() is None]
            assert not leftover, f"still running: {leftover}"


def _wait_refresh_after(stack: AirflowStack, after: str, timeout: float) -> dict[str, Any]:
    """The index refresh run queued after ``after`` (ISO time), once every run finished."""

    def newest() -> dict[str, Any] | None:
        stack.check_alive()
        runs = stack.runs(REFRESH)
        later = [r for r in runs if r["queued_at"] and r["queued_at"] > after]
        if later and all(r["state"] in ("success", "failed") for r in runs):
            return later[-1]
        return None

    try:
        return wait_for(f"an index refresh after {after}", newest, timeout)
    except StackError as exc:
        raise StackError(f"{exc}\n{stack.tail()}") from None


def _fetcher_bound() -> int:
    """``max_active_tis_per_dagrun`` of the bootstrap's fetchers, as the DAG file sets it."""
    text = (REPO / "dags" / f"{BOOTSTRAP}.py").read_text()
    found = re.search(r"^FETCHERS = (\d+)", text, re.M)
    assert found, "dags/litpulse_bootstrap.py no longer sets FETCHERS"
    return int(found.group(1))


def _most_at_once(tis: list[dict[str, Any]]) -> int:
    """The most task instances running at one time (from their start and end dates)."""
    spans = [_interval(ti) for ti in tis]
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def _counts(settings: Settings) -> dict[str, int]:
    """Rows of the tables a bootstrap writes."""
    with db.connect(settings).connect() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (articles, embeddings, index_versions, ingest_runs)}  # fmt: skip


def _bootstrap_dag(
    stack: AirflowStack, emulator: Emulator, settings: Settings, clean: dict[str, Any],
    files: dict[str, str], clock: Clock,
) -> set[int]:  # fmt: skip
    """Step 0 of the LocalExecutor test: trigger ``litpulse_bootstrap`` twice.

    ``files`` maps the served file names to their folder; ``clean`` is the snapshot and
    ``source_files`` of a clean ``litpulse bootstrap`` on them. Returns the live PMIDs.
    """
    # each download takes 2 s: fetchers stay in flight long enough to overlap
    for name, folder in files.items():
        emulator.faults.add("slow", path=f"=/pubmed/{folder}/{name}", times=1, delay=2.0)
    t = time.monotonic()
    stack.unpause(BOOTSTRAP)
    # one shard: one encoder load (the celery test maps 4 shards; dag.test() 2)
    stack.cli("dags", "trigger", BOOTSTRAP, "--run-id", "bootstrap", "--conf", '{"shards": 1}')
    run = stack.wait_run(BOOTSTRAP, "bootstrap", timeout=300)
    tis = stack.tasks(BOOTSTRAP, "bootstrap")
    assert run["state"] == "success", (_states(tis), stack.tail())
    clock.lap("bootstrap: trigger -> success (4 files, 1 shard)", t)
    fetchers = {ti["map_index"]: ti for ti in tis.values() if ti["task_id"] == "fetch_file"}
    assert sorted(fetchers) == list(range(len(files))), sorted(fetchers)
    assert all(ti["state"] == "success" for ti in fetchers.values()), _states(tis)
    assert len({ti["pid"] for ti in fetchers.values()}) == len(files)  # a process each
    at_once = _most_at_once(list(fetchers.values()))
    print(f"[bootstrap] fetchers: at most {at_once} in flight (bound {_fetcher_bound()})",
          flush=True)  # fmt: skip
    assert 2 <= at_once <= _fetcher_bound()  # side by side, never more than the bound
    shards = sorted(ti["map_index"] for ti in tis.values() if ti["task_id"] == "embed_shard")
    assert shards == [0]  # the conf's shard count, not the default 8

    # the store: exactly what the CLI gives on the same files; every record embedded
    engine = db.connect(settings)
    diff = differences(snapshot(engine), clean["snapshot"])
    assert not diff, diff
    assert source_file_rows(engine) == clean["files"]
    live = _live(settings)
    assert live == {p for p, a in clean["snapshot"]["articles"].items() if not a["is_deleted"]}
    with engine.connect() as conn:
        published = conn.execute(
            select(index_versions).where(index_versions.c.status == "published")
        ).all()
        vectors = conn.execute(select(func.count()).select_from(embeddings)).scalar()
    assert vectors == len(live)
    assert len(published) == 1 and published[0].size == len(live)
    events = stack.get("/assets/events", source_dag_id=BOOTSTRAP)["asset_events"]
    assert [e["extra"]["size"] for e in events] == [len(live)], events

    # a second trigger: nothing pending, nothing downloaded, embedded or published
    before, gets = _counts(settings), _downloads(emulator)
    t = time.monotonic()
    stack.cli("dags", "trigger", BOOTSTRAP, "--run-id", "bootstrap_again",
              "--conf", '{"shards": 1}')  # fmt: skip
    again = stack.wait_run(BOOTSTRAP, "bootstrap_again", timeout=180)
    tis = stack.tasks(BOOTSTRAP, "bootstrap_again")
    assert again["state"] == "success", (_states(tis), stack.tail())
    clock.lap("bootstrap: second trigger -> success (nothing pending)", t)
    assert tis["fetch_file"]["state"] == "skipped"  # mapped over no file
    assert not [k for k in tis if k.startswith("fetch_file[")]
    assert _counts(settings) == before
    assert _downloads(emulator) == gets
    return live


def _downloads(emulator: Emulator) -> int:
    """Requests for a PubMed file (not its ``.md5``)."""
    return sum(1 for r in emulator.requests("/pubmed/") if r.path.endswith(".xml.gz"))


def _cli_bootstrap(emulator: Emulator, settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """Start a clean ``litpulse bootstrap --no-embed`` into ``settings`` (another home)."""
    env = {**child_env(settings), **emulator.env(settings)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "litpulse", "bootstrap", "--no-embed", "--workers", "1"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _clean_state(proc: subprocess.Popen[bytes], settings: Settings, log: Path) -> dict[str, Any]:
    """The snapshot and ``source_files`` of the finished CLI run of :func:`_cli_bootstrap`."""
    assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
    engine = db.connect(settings)
    return {"snapshot": snapshot(engine), "files": source_file_rows(engine)}


def test_local_executor_chain_clear_backfill_catchup(
    stack_factory: Any, emulator: Emulator, tmp_path: Path, sup: ModuleType,
    webhook: _Receiver,
) -> None:
    corpus = Corpus(emulator)
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    latest = _latest_interval_day(now)
    manual = today - dt.timedelta(days=1)  # the last full UTC day
    rest_day = today - dt.timedelta(days=6)
    backfill = [today - dt.timedelta(days=12), today - dt.timedelta(days=11)]
    corpus.add(latest, 5)
    corpus.add(rest_day, 3)
    for day in backfill:
        corpus.add(day, 3)
    settings, env = _settings(emulator, tmp_path)
    env["LITPULSE_ALERT_WEBHOOK_URL"] = webhook.url  # every process's, the dag-processor's too
    base, upd = publish_bootstrap_files(emulator, tmp_path / "files")
    files = {p.name: "baseline" for p in base.files} | {p.name: "updatefiles" for p in upd.files}
    # the reference: a clean `litpulse bootstrap` in another home, beside the stack's start
    cli_settings, cli_log = settings.replace(home=tmp_path / "cli"), tmp_path / "cli.log"
    cli = _cli_bootstrap(emulator, cli_settings, cli_log)
    stack = stack_factory(executor="LocalExecutor", extra_env=env)
    clock = Clock(tmp_path / "timings.json")

    t = time.monotonic()
    stack.start()
    stack.cli("connections", "add", "litpulse_ncbi", "--conn-type", "generic",
              "--conn-login", "ops@example.org", "--conn-password", API_KEY)
    clock.lap("start (migrate, pool, api-server, dag-processor, scheduler)", t)

    # -- 0. the bootstrap DAG on 3 baseline files and 1 update file, triggered twice
    t = time.monotonic()
    clean = _clean_state(cli, cli_settings, cli_log)
    clock.lap("bootstrap: the CLI reference, waited for after the start", t)
    boot = _bootstrap_dag(stack, emulator, settings, clean, files, clock)
    clock.lap("bootstrap: added in all", t)
    assert boot == set(base.live_pmids) | set(upd.live_pmids)
    assert not boot & set().union(*corpus.by_day.values())  # apart from the daily PMIDs

    # -- 1. unpausing runs the latest interval; its asset triggers the index refresh
    t = time.monotonic()
    stack.unpause(REFRESH)
    stack.unpause(NIGHTLY)
    first = stack.wait_run(NIGHTLY, _first_run(stack, NIGHTLY), timeout=240)
    assert first["state"] == "success", (stack.tasks(NIGHTLY, first["dag_run_id"]), stack.tail())
    assert first["run_type"] == "scheduled"
    assert first["data_interval_start"].startswith(latest.isoformat())
    clock.lap("trigger -> ingest run success", t)
    refresh = _wait_refresh_after(stack, first["queued_at"], timeout=240)
    assert refresh["state"] == "success", stack.tasks(REFRESH, refresh["dag_run_id"])
    assert refresh["run_type"] == "asset_triggered"
    clock.lap("trigger -> index refresh success", t)
    assert _live(settings) == boot | corpus.by_day[latest]
    # the NCBI key came from the Airflow connection, not from LITPULSE_*
    assert "LITPULSE_NCBI_API_KEY" not in env
    assert any(r.params.get("api_key") == API_KEY for r in emulator.requests("esearch"))

    # -- 2. a backfill of two days, one run at a time; the first day fails on purpose
    emulator.faults.add("error200", path="esearch", times=1, message=INVALID)
    t = time.monotonic()
    days = ("--from-date", backfill[0].isoformat(),
            "--to-date", (backfill[-1] + dt.timedelta(days=1)).isoformat())
    stack.cli("backfill", "create", "--dag-id", NIGHTLY, *days, "--max-active-runs", "1")
    runs = _wait_backfill(stack, n=2, timeout=300)
    clock.lap("backfill of 2 days (the first fails)", t)
    assert [r["data_interval_start"][:10] for r in runs] == [d.isoformat() for d in backfill]
    assert [r["state"] for r in runs] == ["failed", "success"], stack.tail()

    # -- 3. a plain trigger fails on purpose; `airflow tasks clear` reruns it
    fresh = corpus.add(manual, 3)
    emulator.faults.add("error200", path="esearch", times=1, message=INVALID)
    stack.cli("dags", "trigger", NIGHTLY, "--run-id", "manual_plain")
    failed = stack.wait_run(NIGHTLY, "manual_plain", timeout=180)
    tis = stack.tasks(NIGHTLY, "manual_plain")
    assert failed["state"] == "failed" and failed["logical_date"] is None
    assert tis["ingest_window"]["state"] == "failed"
    assert tis["ingest_window"]["try_number"] == 1  # not retried: InvalidRequestError
    assert tis["publish_articles"]["state"] == "upstream_failed"
    t = time.monotonic()
    out = stack.cli("tasks", "clear", NIGHTLY, "--only-failed", "--yes")
    assert "Traceback" not in out
    cleared = stack.wait_run(NIGHTLY, "manual_plain", timeout=180)
    assert cleared["state"] == "success", (_states(stack.tasks(NIGHTLY, "manual_plain")),
                                           stack.tail())
    clock.lap("CLI clear -> success", t)
    assert fresh <= _live(settings)  # the last full UTC day

    # -- 4. another failure, cleared with the REST API clearTaskInstances
    emulator.faults.add("error200", path="esearch", times=1, message=INVALID)
    resp = stack.request(
        "POST", f"/dags/{NIGHTLY}/dagRuns",
        json={"dag_run_id": "manual_rest", "logical_date": None,
              "conf": {"first_day": rest_day.isoformat()}},
    )
    assert resp.status_code == 200, resp.text
    assert stack.wait_run(NIGHTLY, "manual_rest", timeout=180)["state"] == "failed"
    t = time.monotonic()
    resp = stack.request(
        "POST", f"/dags/{NIGHTLY}/clearTaskInstances",
        json={"dag_run_id": "manual_rest", "only_failed": True, "dry_run": False},
    )
    assert resp.status_code == 200, resp.text
    assert {ti["task_id"] for ti in resp.json()["task_instances"]} >= {"ingest_window"}
    assert stack.wait_run(NIGHTLY, "manual_rest", timeout=180)["state"] == "success"
    clock.lap("REST clear -> success", t)
    assert corpus.by_day[rest_day] <= _live(settings)

    # -- 5. the documented backfill over failed days reprocesses the failed one
    wait_for("the first backfill to complete",
             lambda: all(b["completed_at"] for b in stack.get("/backfills", dag_id=NIGHTLY)
                         ["backfills"]), 90)
    t = time.monotonic()
    stack.cli("backfill", "create", "--dag-id", NIGHTLY, *days, "--max-active-runs", "1",
              "--reprocess-behavior", "failed")
    runs = _wait_backfill(stack, n=2, timeout=300)
    clock.lap("backfill --reprocess-behavior failed -> success", t)
    assert [r["state"] for r in runs] == ["success", "success"], stack.tail()
    (s0, e0), (s1, e1) = (_interval(r) for r in runs)
    assert e1 <= s0 or e0 <= s1, f"backfill runs overlapped: {runs}"
    for day in backfill:
        assert corpus.by_day[day] <= _live(settings)

    # -- 6. unpausing the weekly retrain does not retrain last Sunday's slot
    stack.unpause(RETRAIN)
    catchup = _first_run(stack, RETRAIN, timeout=60)
    done = stack.wait_run(RETRAIN, catchup, timeout=120)
    tis = _states(stack.tasks(RETRAIN, catchup))
    assert done["run_type"] == "scheduled"
    slot, started = (dt.datetime.fromisoformat(done[k]) for k in ("logical_date", "start_date"))
    if sup.catchup_skip_reason("scheduled", slot, started) is not None:  # days after its slot
        assert tis == {"retrain_due": "success", "retrain": "skipped",
                       "publish_model": "skipped"}, (tis, done)  # fmt: skip
    else:  # unpaused on a Sunday within the grace of 04:00 UTC: a late run, no catch-up
        assert tis["retrain_due"] == "success" and tis["retrain"] == "success", (tis, done)

    # -- 7. the store and the published index hold every ingested day
    # the asset event is emitted by publish_articles, before its run's end_date is written:
    # a refresh triggered by the last ingest run is queued after that run *started*
    last_ingest = max(r["start_date"] for r in stack.runs(NIGHTLY))
    final = _wait_refresh_after(stack, last_ingest, timeout=300)
    assert final["state"] == "success"
    live = _live(settings)
    expected = boot | set().union(*corpus.by_day.values())
    assert live == expected
    status = _status(settings, env)
    assert status["articles"] == len(expected)
    assert status["index"]["size"] == len(expected)
    assert status["index"]["version"]
    with db.connect(settings).connect() as conn:
        statuses = conn.execute(
            select(ingest_runs.c.status).where(ingest_runs.c.source == "eutils")
        ).scalars().all()
    assert statuses.count("succeeded") >= 5
    # -- 8. the ncbi pool missing (never made, or deleted): Airflow 3.3 tells nobody, the
    # task waits `scheduled`; the run's ncbi_pool_watch alerts within about a minute (39c
    # X1), naming the pool and the commands, and skips itself: the run waits on (it would go
    # on once the pool exists: 39c measured it to success, 48-56 s to the alert). No run
    # above (the pool in place) raised a pool alert.
    assert not _pool_alerts(webhook), _pool_alerts(webhook)
    t = time.monotonic()
    stack.cli("pools", "delete", "ncbi")
    stack.cli("dags", "trigger", NIGHTLY, "--run-id", "manual_stuck")
    wait_for("ingest_window to wait for a pool slot", lambda: stack.tasks(
        NIGHTLY, "manual_stuck").get("ingest_window", {}).get("state") == "scheduled", 60)
    try:
        alert = wait_for("an alert of the missing pool",
                         lambda: (_pool_alerts(webhook) or [None])[0], 120)  # fmt: skip
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.tasks(NIGHTLY, 'manual_stuck')}\n"
                             f"{stack.tail()}") from None  # fmt: skip
    text_ = alert["text"]
    assert "manual_stuck" in text_ and "ingest_window" in text_ and "'ncbi'" in text_, text_
    assert "airflow pools get ncbi" in text_ and "airflow pools set ncbi 1" in text_, text_
    assert alert["details"]["dag_id"] == NIGHTLY and alert["details"]["run_id"] == "manual_stuck"
    assert stack.run(NIGHTLY, "manual_stuck")["state"] == "running"  # nothing failed: it waits

    def watch_done() -> str | None:
        state = stack.tasks(NIGHTLY, "manual_stuck").get(sup.POOL_WATCH, {}).get("state")
        return state if state in ("skipped", "failed", "success") else None

    assert wait_for("the watch to end", watch_done, 30) == "skipped"
    clock.lap("a missing pool -> alerted within a minute", t)
    # -- 9. a run whose task never starts (no slot of the ncbi pool) times out: no task
    # fails, so the DAG's own failure callback (run by the dag-processor) alerts it (37a X2)
    t = time.monotonic()
    engine = create_engine(stack.database_url)
    with engine.begin() as conn:  # the run started 13 h ago: past its 12 h dagrun_timeout
        conn.execute(text("UPDATE dag_run SET start_date = start_date - interval '13 hours' "
                          "WHERE dag_id = :d AND run_id = 'manual_stuck'"), {"d": NIGHTLY})
    engine.dispose()
    assert stack.wait_run(NIGHTLY, "manual_stuck", timeout=60)["state"] == "failed"

    def timed_out() -> dict[str, Any] | None:
        for body in list(webhook.bodies):
            alert = json.loads(body)
            if alert["details"].get("reason") == "timed_out":
                return dict(alert)
        return None

    alert = wait_for("the timed-out run's alert", timed_out, 90)
    assert "manual_stuck" in alert["text"] and "timed out after 12 h" in alert["text"], alert
    # none started: Airflow names any unfinished task, so the alert names the DAG's pools
    assert "no task of it ever started" in alert["text"] and "'ncbi'" in alert["text"], alert
    assert "airflow pools get ncbi" in alert["text"], alert  # 39c: the watch skipped, not it
    clock.lap("a run timed out -> alerted", t)

    # hygiene: the generated admin password is private; the JWT secret is long enough
    assert stack.password_file.stat().st_mode & 0o077 == 0
    assert (stack.home / ".airflow-secrets").stat().st_mode & 0o077 == 0
    assert len(stack.cli("config", "get-value", "api_auth", "jwt_secret").strip()) >= 64
    assert not re.search("InsecureKeyLengthWarning", stack.log("api-server").read_text())
    clock.lap("whole test", clock.t0)


def _pool_alerts(receiver: _Receiver) -> list[dict[str, Any]]:
    """The alerts that say a task waits for a pool slot (``ncbi_pool_watch``'s)."""
    out = []
    for body in list(receiver.bodies):
        alert = json.loads(body)
        if alert["details"].get("reason") == "pool_slot_missing":
            out.append(dict(alert))
    return out


def _first_run(stack: AirflowStack, dag_id: str, timeout: float = 120) -> str:
    """The id of the first run of ``dag_id``, once there is one."""

    def probe() -> str | None:
        stack.check_alive()
        runs = stack.runs(dag_id)
        return runs[0]["dag_run_id"] if runs else None

    return wait_for(f"a first run of {dag_id}", probe, timeout)


def _wait_backfill(stack: AirflowStack, n: int, timeout: float) -> list[dict[str, Any]]:
    """The ``n`` backfill runs once all finished; fails as soon as two run at once."""

    def probe() -> list[dict[str, Any]] | None:
        stack.check_alive()
        runs = [r for r in stack.runs(NIGHTLY) if r["run_type"] == "backfill"]
        running = [r for r in runs if r["state"] == "running"]
        assert len(running) <= 1, f"backfill runs in parallel: {running}"
        if len(runs) >= n and all(r["state"] in ("success", "failed") for r in runs):
            return sorted(runs, key=lambda r: r["data_interval_start"])
        return None

    try:
        return wait_for("the backfill runs", probe, timeout)
    except StackError as exc:
        raise StackError(f"{exc}\n{stack.tail()}") from None


# ----------------------------------------------------------------------------- Celery


@pytest.fixture
def celery_queue() -> Iterator[tuple[str, str]]:
    """``(broker URL, queue)``: Redis database 13 on 127.0.0.1:6379 and a queue of this test
    alone, so parallel test sessions never take each other's tasks; its keys are deleted
    at the end (task results expire after 10 min). Skipped locally without Redis; CI
    (``CI=true``) starts it and fails here."""
    import redis

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no server"
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis unavailable: {exc}")
    queue = f"litpulse-test-{uuid.uuid4().hex[:8]}"
    yield url, queue
    keys = list(client.scan_iter(match=f"*{queue}*"))
    if keys:
        client.delete(*keys)


def test_celery_executor_chain_and_mapped_shards(
    celery_queue: tuple[str, str], stack_factory: Any, emulator: Emulator, tmp_path: Path
) -> None:
    pytest.importorskip("airflow.providers.celery")
    corpus = Corpus(emulator)
    now = dt.datetime.now(dt.UTC)
    latest = _latest_interval_day(now)
    corpus.add(latest, 8)
    settings, env = _settings(emulator, tmp_path)
    redis_url, queue = celery_queue
    env = {
        **env,
        "LITPULSE_TRAIN_QUEUE": queue,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": redis_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
        "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": '{"result_expires": 600}',
    }
    stack = stack_factory(executor="CeleryExecutor", extra_env=env)
    clock = Clock(tmp_path / "timings.json")
    t = time.monotonic()
    stack.start(worker_args=("--queues", queue, "--concurrency", "4",
                             "--celery-hostname", f"{queue}@%h"))
    clock.lap("start with a celery worker", t)

    t = time.monotonic()
    stack.unpause(REFRESH)
    stack.unpause(NIGHTLY)
    first = stack.wait_run(NIGHTLY, _first_run(stack, NIGHTLY), timeout=240)
    assert first["state"] == "success", (stack.tasks(NIGHTLY, first["dag_run_id"]), stack.tail())
    clock.lap("celery: trigger -> ingest run success", t)
    refresh = _wait_refresh_after(stack, first["queued_at"], timeout=240)
    assert refresh["state"] == "success"
    clock.lap("celery: trigger -> index refresh success", t)
    assert _live(settings) == corpus.by_day[latest]

    # -- a model promoted 3 hours ago whose re-index is queued in a *paused* litpulse_reindex:
    # that run never starts, so the index refresh fails saying so instead of skipping
    # every night; unpausing lets the queued run re-index, and the refresh goes through
    t = time.monotonic()
    engine = db.connect(settings)
    _activate(engine, "m-paused", settings)
    with engine.begin() as conn:
        conn.execute(update(model_versions).where(model_versions.c.id == "m-paused")
                     .values(promoted_at=db.utcnow() - dt.timedelta(hours=3)))
    resp = stack.request("POST", f"/dags/{REINDEX}/dagRuns",
                         json={"dag_run_id": "shards", "logical_date": None,
                               "conf": {"shards": 4}})
    assert resp.status_code == 200, resp.text
    assert stack.get(f"/dags/{REINDEX}")["is_paused"]
    resp = stack.request("POST", f"/dags/{REFRESH}/dagRuns",
                         json={"dag_run_id": "while-paused", "logical_date": None})
    assert resp.status_code == 200, resp.text
    failed = stack.wait_run(REFRESH, "while-paused", timeout=240)
    gate = stack.tasks(REFRESH, "while-paused")["index_model_current"]
    assert failed["state"] == "failed" and gate["state"] == "failed", (failed, gate)
    said = "\n".join(p.read_text(errors="replace")
                     for p in (stack.home / "logs").rglob("*.log")
                     if "while-paused" in str(p) and "index_model_current" in str(p))
    assert "airflow dags unpause litpulse_reindex" in said, said[-3000:]
    assert stack.run(REINDEX, "shards")["state"] == "queued"
    clock.lap("celery: paused reindex -> the refresh fails and says so", t)

    t = time.monotonic()
    stack.unpause(REINDEX)
    run = stack.wait_run(REINDEX, "shards", timeout=300)
    tis = stack.tasks(REINDEX, "shards")
    assert run["state"] == "success", (_states(tis), stack.tail())
    clock.lap("celery: reindex with 4 mapped shards", t)
    resp = stack.request("POST", f"/dags/{REFRESH}/dagRuns",
                         json={"dag_run_id": "after-reindex", "logical_date": None})
    assert resp.status_code == 200, resp.text
    after = stack.wait_run(REFRESH, "after-reindex", timeout=240)
    assert after["state"] == "success", stack.tasks(REFRESH, "after-reindex")
    assert published_index_row(engine).model_version == "m-paused"
    shards = {k: v for k, v in tis.items() if k.startswith("embed_shard[")}
    assert set(shards) == {f"embed_shard[{i}]" for i in range(4)}
    # every task went through the Celery queue of this test and its one worker
    for name, ti in tis.items():
        assert ti["queue"] == queue, name
        assert ti["executor"] in (None, "CeleryExecutor"), (name, ti["executor"])
        assert ti["hostname"] and ti["pid"], name
    # ... and the worker executed each shard (its log names the task instance)
    worker_log = stack.log("worker").read_text(errors="replace")
    for i in range(4):
        assert re.search(
            rf"Executing workload in Celery: .*task_id='embed_shard'.*map_index={i}\b", worker_log
        ), f"shard {i} not in the worker log"
    # one worker, 4 slots: shards ran side by side, each in its own task process
    overlap = _most_at_once(list(shards.values()))
    print(f"[celery] shard pids {[s['pid'] for s in shards.values()]}, hosts "
          f"{sorted({s['hostname'] for s in shards.values()})}, executor "
          f"{sorted({str(s['executor']) for s in shards.values()})}, at most {overlap} shards "
          "at once", flush=True)
    assert len({s["pid"] for s in shards.values()}) == 4
    assert overlap >= 2, [_interval(s) for s in shards.values()]  # side by side
    clock.lap("celery: whole test", clock.t0)
