"""Tests of the run ledger (ingest.runs): the one open/close helper and the store counts."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from ingest.runs import (
    ARTICLE_SOURCES,
    STORE_LEASE,
    IngestCounts,
    StoreBusyError,
    recorded_run,
    store_writer,
)
from ingest.store import Store, store_counts
from litpulse.core import db
from litpulse.core.settings import Settings
from litpulse.core.states import RunStatus
from tests.ingest.test_store import make_record


def test_recorded_run_closes_succeeded_with_counts_and_details(sqlite_settings: Settings) -> None:
    store = Store(db.connect(sqlite_settings))
    with recorded_run(store, "files", target="a.xml") as run:
        run.counts = IngestCounts(inserted=2)
        run.details = {"files": ["a.xml"]}
    row = store.get_run(run.id)
    assert row["status"] == RunStatus.SUCCEEDED
    assert (row["inserted"], row["details"]["files"], row["target"]) == (2, ["a.xml"], "a.xml")


def test_recorded_run_records_a_failure_redacted_and_raises(sqlite_settings: Settings) -> None:
    store = Store(db.connect(sqlite_settings))
    with pytest.raises(RuntimeError, match="secret"):
        with recorded_run(store, "eutils", redact=lambda t: t.replace("secret", "***")) as run:
            run.counts = IngestCounts(updated=1)
            run.details = {"window": "w"}
            run.on_failure = lambda: {"requests": 3}
            raise RuntimeError("key=secret")
    row = store.get_run(run.id)
    assert row["status"] == RunStatus.FAILED
    assert row["error"] == "RuntimeError: key=***"
    assert row["updated"] == 1
    assert row["details"] == {"window": "w", "requests": 3}


def test_status_counts_come_from_the_one_count_query(sqlite_settings: Settings) -> None:
    store = Store(db.connect(sqlite_settings))
    store.apply([make_record(1, refs=(2,)), make_record(2)])
    with store.engine.connect() as conn:
        counts = store_counts(conn)
    status = store.status(runs=0)
    assert counts["live"] == status["articles"] == 2
    assert counts["references"] == status["references"] == 1
    assert counts["newest_best_date"] == status["newest_best_date"] is not None
    assert counts["with_abstract"] == 2


@pytest.mark.parametrize("source", sorted(ARTICLE_SOURCES))
def test_a_run_that_writes_articles_is_refused_while_another_process_writes(
    settings: Settings, source: str
) -> None:
    """Two writers would each decide against the state they read: the second one, on any
    host, is refused before it opens a run."""
    store = Store(db.connect(settings))
    other = db.acquire_lease(store.engine, STORE_LEASE, holder="otherhost:1:x", heartbeat=False)
    assert other is not None
    try:
        with pytest.raises(StoreBusyError, match="otherhost") as err:
            with recorded_run(store, source):
                raise AssertionError("must not run")
        assert err.value.retryable
        assert store.runs() == []
        # iCite runs write only the citation columns: not refused
        with recorded_run(store, "citations") as run:
            pass
        assert store.get_run(run.id)["status"] == RunStatus.SUCCEEDED
    finally:
        other.release()
    with recorded_run(store, source):  # free again
        assert db.lease_holder(store.engine, STORE_LEASE) is not None
    assert db.lease_holder(store.engine, STORE_LEASE) is None


def test_the_store_lease_is_reentrant_within_a_process(sqlite_settings: Settings) -> None:
    store = Store(db.connect(sqlite_settings))
    with store_writer(store.engine):
        holder = db.lease_holder(store.engine, STORE_LEASE)
        with recorded_run(store, "files"), recorded_run(store, "updatefiles"):
            assert db.lease_holder(store.engine, STORE_LEASE) == holder
        assert db.lease_holder(store.engine, STORE_LEASE) == holder  # the outer one holds on
    assert db.lease_holder(store.engine, STORE_LEASE) is None


def test_another_thread_is_another_writer(sqlite_settings: Settings) -> None:
    import threading

    store = Store(db.connect(sqlite_settings))
    refused: list[BaseException] = []

    def second() -> None:
        try:
            with recorded_run(store, "files"):
                pass
        except StoreBusyError as exc:
            refused.append(exc)

    with store_writer(store.engine):
        t = threading.Thread(target=second)
        t.start()
        t.join(30)
    assert len(refused) == 1



def test_a_run_no_check_is_to_come_for_is_judged_even_when_killed(settings: Settings) -> None:
    """An update-file run (``recorded_run(judged=True)``) killed after a batch committed
    (``os._exit``: no ``finally`` runs): the run, the row it wrote and the quarantine entry
    it stored are judged, so a window meeting them again counts them met again
    (``reseen``, ``requarantined``), not new: nothing else would ever judge them."""
    import multiprocessing
    import os

    from ingest.records import QuarantineEntry
    from litpulse.core.schema import ingest_runs, quarantine
    from tests.ingest.test_store import src

    def killed() -> None:
        db.dispose_engines()
        store = Store(db.connect(settings))
        with recorded_run(store, "updatefiles", judged=True) as run:
            store.apply([make_record(7, source=src(1)),
                         QuarantineEntry("no PMID", "<PubmedArticle/>", src(1), line=3)],
                        run_id=run.id)  # fmt: skip
            os._exit(0)  # killed: the run stays running, nothing after this runs

    db.dispose_engines()
    child = multiprocessing.get_context("fork").Process(target=killed)
    child.start()
    child.join(60)
    assert child.exitcode == 0
    with db.connect(settings).connect() as conn:
        status, judged = conn.execute(select(ingest_runs.c.status, ingest_runs.c.judged_at)).one()
        entry_judged = conn.execute(select(quarantine.c.judged_at)).scalar_one()
    assert status == RunStatus.RUNNING and judged is not None and entry_judged is not None
    store = Store(db.connect(settings))
    window = store.start_run("eutils")
    counts = store.apply([make_record(7, source=src(1)),
                          QuarantineEntry("no PMID", "<PubmedArticle/>", src(1), line=3)],
                         run_id=window)  # fmt: skip
    assert (counts.unchanged, counts.reseen, counts.requarantined) == (1, 1, 1)
