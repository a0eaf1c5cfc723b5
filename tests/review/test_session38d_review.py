"""Review 38d: the small leftovers the session-37 notes listed.

Findings (each that changes behaviour a strict xfail before its fix):

X1 **An update file's re-issue check opens a transaction and sends a query for every
   file, re-issued or not.** ``updatefiles._store_file`` (update-file runs and the
   bootstrap) calls ``Store.reissue`` inside a transaction of its own for each file it
   applies; for a file this store never read (every baseline file of a bootstrap, every
   new daily file) or read as this same issue, ``reissue`` reads the file's
   ``source_times`` row and changes nothing. Reproduced: three fresh update files applied
   by ``apply_updates`` sent three re-issue reads (``SELECT source_times.as_of,
   source_times.md5, ...``), a bootstrap of its baseline one per file.
   **Fixed**: a run reads the issues its store read of its files at its start
   (``Store.issues_read``: one query for up to 500 files, under the writer's lease) and
   ``_store_file`` asks ``Store.reissue`` only of a file read before as another issue, or
   one the plan or a killed run's progress mark says is a re-issue: 0 reads for the 3
   fresh files; every re-issue test (31g, 34d, 35a, 36a, 36f, 37c, 37g) green.
   (test_x1_fresh_files_send_no_reissue_check)

X2 **``litpulse status`` imports FAISS for its ``devices`` line on a CPU build.**
   ``ranking.faiss_ops.faiss_device`` imports ``faiss`` under ``LITPULSE_USE_GPU=auto``
   (the default) to ask whether it has GPU entry points; the default install's
   ``faiss-cpu`` never has. Reproduced: ``litpulse status --json`` in a child process
   leaves ``faiss`` in ``sys.modules``.
   **Fixed**: ``ranking.faiss_ops._unimported_cpu_faiss`` (as 37g did for torch) reads
   the installed metadata while faiss is not imported yet: the ``faiss`` package found is
   faiss-cpu's and each ``*.so`` in it is the size faiss-cpu's ``RECORD`` lists (a GPU
   build installed over it replaces them): a CPU build, answered without importing faiss;
   anything else asks faiss as before. Measured (fresh processes, this 2-core machine at a
   load of 6-7): ``faiss_device`` 56-87 ms -> 7-11 ms; ``litpulse status`` itself 1.7-2.3
   s either way, the load's noise larger than the import it saves (faiss loads in ~0.1 s
   once numpy is in, as status has it).
   (test_x2_status_on_faiss_cpu_does_not_import_faiss)

X3 **A CUDA out-of-memory error halves the embedding batch for the process's life.**
   37e X3's ``ranking.embed._FITS`` keeps the halved batch per encoder for ever: a
   serving process whose card was briefly held by another process embeds at an eighth
   of ``LITPULSE_EMBED_BATCH_SIZE`` until it restarts. Reproduced with 37e's stand-in
   encoder (a card holding 10 texts a batch, then 1,000 once the other process left):
   the batch stays at 8 over 40 calls of 800 texts.
   **Fixed**: ``_FITS`` holds a ``_Fit`` per encoder; after ``REGROW_AFTER`` (64) batches
   go through at the halved size it doubles (never above the setting); a doubling that
   runs out of memory again halves it back and doubles the wait. Measured with the
   stand-in: 8 -> 16 -> 32 -> 64 within 6 calls of 800 texts; on a card still holding
   only 20, 5 out-of-memory tries in 40 calls (64 and 32 once, then 32 after 3, 6 and 12
   calls), every text embedded.
   (test_x3_a_halved_embedding_batch_grows_back)

X4 **A run whose pool ``ncbi`` is missing is alerted only at its 12 h timeout, without
   the check that tells.** Airflow 3.3 never warns of a missing pool: its DAG processor
   builds the ``BundleDagBag`` without ``known_pools`` (``dag_processing/processor.py``),
   so the ``NONEXISTENT_POOL`` DAG warning is never made, and the scheduler only logs
   "Tasks using non-existent pool 'ncbi' will not be scheduled". A task cannot ask either:
   the Task SDK's execution API has no pool call, and tasks may not reach the metadata
   database. ``ingest_window`` waits, never started, until ``dagrun_timeout``; 37a's
   alert then says "does each exist" of the DAG's pools, but not how to tell, nor the
   command that makes ``ncbi``. Reproduced: ``run_failed`` of the nightly DAG's timed-out
   run, no task started, logs an alert without ``airflow pools get ncbi``.
   **Fixed** (the part that can be): the alert adds ``airflow pools get POOL`` for each
   of the DAG's own pools and, for ``ncbi``, the ``airflow pools set ncbi 1 ...`` that
   makes it (``dag_support._pool_checks``); the DAG's doc and the README's Airflow
   set-up say Airflow does not warn and to run ``airflow pools get ncbi``.
   **NOT FIXED**: an alert before the timeout. It needs a watchdog task beside the pooled
   ones (a reschedule-mode sensor asking ``ti.get_task_states`` whether ``ingest_window``
   is still ``scheduled`` while no other run holds the slot): a change of the DAG's shape
   that wants the real-scheduler test the brief rules out; a design question.
   (test_x4_a_run_that_never_started_names_the_pool_check)

Held (tested, no defect):

* A retrain killed right after its promotion commits: the ``promoted`` event is written
  in the promotion's own transaction (``registry._switch``), so a SIGKILL at the next SQL
  statement leaves the version active *with* its event; the next ``index refresh``
  finishes the re-index (tests/litpulse/pipeline/test_reindex_heal.py). Killed by the
  crash-resume harness (``self_killing``) before the first statement after the commit.
  (test_held_a_promotion_killed_after_its_commit_keeps_its_event)

Refactors (no behaviour change; the existing tests green): the CLI's exit code 75 is
``cli._common.EX_TEMPFAIL`` (was ``cli.nightly.EXIT_BUSY``, imported by ``alerts run``
and ``main``); ``planning.held_windows(mark="read")`` is ``held_windows`` (reads the
watermark) and ``held_windows_past(mark, engine)``; ``bootstrap.MARKER`` is
``updatefiles.STAGED_MARKER``; the E-utilities search mark's rules (``window_key``,
``listed_pmids``, ``forget_listed``) live in ``ingest.checkpoints``, so
``quality._forget_listed`` (a wrapper with lazy imports) is gone — there was no import
cycle, only quality's wish not to import eutils (lxml, the HTTP client).

Install (no test: pip's behaviour): the ``gpu`` extra installed faiss-gpu-cu12 beside the
faiss-cpu every install takes; both wheels install the ``faiss`` package, so the one
installed last overwrites the other's files and uninstalling either takes files the
other needs (faiss issue #2892: faiss-cpu installed after faiss-gpu hid the GPU; removing
it then gave "No module named 'faiss'"). No extra can remove a base dependency: the
README says, after ``pip install -e '.[gpu]'``, to uninstall faiss-cpu and reinstall
faiss-gpu-cu12 without deps, so that its files are whole and alone (``pip check`` then
reports faiss-cpu missing; a later ``pip install -e .`` undoes it). (The helper removed
the extra; the integrator kept it, with those two lines: the project's brief names a
``gpu`` extra for GPU hosts.)
X2's metadata check reads a faiss-cpu whose libraries were overwritten as "ask faiss".

Noticed, not filed: 37g X2's torch check and X2's FAISS check both answer "CPU build"
only while the library is not imported; a process that imported either (the API server
after its first search) asks the library itself, as before.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from litpulse.core import db
from litpulse.core.settings import Settings

# ------------------------------------------------------------------------------- X1


def _reissue_reads(settings: Settings) -> list[str]:
    """The statements ``Store.reissue`` sends to read a file's issue (as they go)."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        flat = " ".join(statement.split())
        if "source_times.earlier, source_times.location" in flat:
            seen.append(flat)

    event.listen(db.connect(settings), "before_cursor_execute", before)
    return seen


def test_x1_fresh_files_send_no_reissue_check(settings: Settings, tmp_path: Path) -> None:
    from ingest import updatefiles
    from litpulse.app.demo.generate import generate_corpus
    from tests.emulator import running_emulator

    corpus = generate_corpus(tmp_path / "corpus", n_records=30, n_files=3, seed=11,
                             first_file_number=1)  # fmt: skip
    for emu in running_emulator():
        s = emu.configure(settings.replace(ingest_workers=0))
        for f in corpus.files:
            emu.add_file("updatefiles", f.name, f.read_bytes())
        reads = _reissue_reads(s)
        counts = updatefiles.apply_updates(s)
        assert counts.inserted > 0
        assert len(updatefiles.applied_files(db.connect(s))[0]) == 3
        assert reads == [], f"{len(reads)} re-issue reads for 3 files never read before"


# ------------------------------------------------------------------------------- X2


def _faiss_cpu_only() -> bool:
    """Whether the importable faiss is faiss-cpu's, with no GPU distribution beside it."""
    try:
        importlib.metadata.distribution("faiss-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return not any(n.startswith("faiss-gpu") for n in names)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_x2_status_on_faiss_cpu_does_not_import_faiss(env: Settings) -> None:
    if not _faiss_cpu_only():
        pytest.skip("faiss here is not faiss-cpu alone: it must be asked")
    code = ("import sys, runpy; sys.argv = ['litpulse', 'status', '--json']\n"
            "try:\n    runpy.run_module('litpulse', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('FAISS', 'faiss' in sys.modules, file=sys.stderr)\n")
    environ = {k: v for k, v in os.environ.items() if k != "LITPULSE_USE_GPU"}
    proc = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert '"devices"' in proc.stdout, proc.stderr[-2000:]
    faiss = json.loads(proc.stdout)["devices"]["faiss"]
    assert faiss["device"] == "cpu", faiss
    assert "CPU build" in faiss["why"], faiss
    assert "FAISS False" in proc.stderr, "litpulse status imported faiss to say cpu"


# ------------------------------------------------------------------------------- X3


def test_x3_a_halved_embedding_batch_grows_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    from ranking.embed import embed_texts
    from tests.review.test_session37e_review import CudaEncoderStandIn

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)  # no card to free here
    settings = Settings.from_env({}, home=tmp_path / "home").replace(
        embed_precision="fp32", embed_batch_size=64)
    encoder = CudaEncoderStandIn(fits=10)
    embed_texts(encoder, [f"text {i}" for i in range(100)], settings)  # type: ignore[arg-type]
    assert encoder.batches[-1] == 8  # 64, 32, 16 ran out of memory
    encoder.fits = 1000  # the process that held the card left it
    texts = [f"article {i}" for i in range(800)]
    for _ in range(40):
        vectors = embed_texts(encoder, texts, settings)  # type: ignore[arg-type]
        assert vectors.shape == (800, 4)
    assert max(encoder.batches) == 64, "never above the setting"
    assert encoder.batches[-1] == 64, f"the batch stayed at {encoder.batches[-1]}"
    # grown back on a card that still cannot hold it: halved again, every text embedded
    encoder.fits = 20
    before = len(encoder.batches)
    for _ in range(40):
        assert embed_texts(encoder, texts, settings).shape == (800, 4)  # type: ignore[arg-type]
    tried = encoder.batches[before:]
    assert max(tried) <= 64 and tried[-1] <= 20
    failed = sum(1 for b in tried if b > 20)
    assert failed <= 8, f"{failed} out-of-memory tries in 40 calls: the growth backs off"


# --------------------------------------------------------- held: a killed promotion


@pytest.mark.parametrize("settings", ["sqlite", "postgresql"], indirect=True)
def test_held_a_promotion_killed_after_its_commit_keeps_its_event(
    settings: Settings, tmp_path: Path
) -> None:
    from retrain import registry
    from tests.ingest.test_crash_resume import child_env, kill_when, self_killing
    from tests.retrain.test_registry import _register

    vid = _register(settings, "e")
    # the retrain's own promotion call (retrain.run._decide), its re-index never reached
    script = ("from litpulse.core.settings import Settings\n"
              "from retrain import registry\n"
              "s = Settings.from_env()\n"
              f"registry.promote(s, {vid!r}, by='gate', reason='passed', "
              "reindex=lambda s: registry.active_version(s))\n")
    engine = db.connect(settings)
    active = "SELECT count(*) FROM model_versions WHERE status = 'active'"
    kill_when(self_killing(["-c", script], engine, active, 1, 1), child_env(settings),
              lambda: False, tmp_path / "child.log", label="promoted", timeout=120)  # fmt: skip
    version = registry.get_model(settings, vid)
    assert version.status == "active"
    assert [e["event"] for e in version.events] == ["registered", "promoted"]
    assert version.events[-1]["by"] == "gate" and version.events[-1]["reason"] == "passed"


# ------------------------------------------------------------------------------- X4


def test_x4_a_run_that_never_started_names_the_pool_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import datetime as dt
    import logging
    from types import SimpleNamespace

    from litpulse.pipeline.dag_support import run_failed
    from tests.review.test_session37a_review import _dag_module

    monkeypatch.setenv("LITPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LITPULSE_ALERT_WEBHOOK_URL", raising=False)
    _module, dag = _dag_module("litpulse_nightly_ingest")
    run_id = "scheduled__2026-12-06T02:00:00+00:00"
    # what the dag processor passes a timed-out run whose tasks never started (37a X2)
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id="plan", run_id=run_id, map_index=-1,
                         state="skipped", start_date=None, try_number=0)  # fmt: skip
    dag_run = SimpleNamespace(dag_id=dag.dag_id, run_id=run_id, run_type="scheduled",
                              start_date=dt.datetime(2026, 12, 6, 2, tzinfo=dt.UTC), conf={})
    capfd.readouterr()
    with caplog.at_level(logging.ERROR, logger="litpulse.pipeline.alerts"):
        run_failed({"dag": dag, "run_id": run_id, "reason": "timed_out", "ti": ti,
                    "dag_run": dag_run})  # fmt: skip
    # the alert is always logged (alerts.notify), and posted where a webhook is set; where
    # the log line lands depends on who configured logging first in this process (Airflow's
    # structlog may hold the stream an earlier test had): the record and the fds both
    out = capfd.readouterr()
    lines = (out.out + out.err).splitlines() + [r.getMessage() for r in caplog.records]
    alert = "\n".join(line for line in lines if "ALERT" in line)
    assert "no task of it ever started" in alert, alert
    assert "`airflow pools get ncbi`" in alert, alert
    assert "`airflow pools set ncbi 1" in alert, alert
