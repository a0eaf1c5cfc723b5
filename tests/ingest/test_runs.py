"""Tests of the run ledger (ingest.runs): the one open/close helper and the store counts."""

from __future__ import annotations

import pytest

from ingest.runs import IngestCounts, recorded_run
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
