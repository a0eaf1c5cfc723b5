"""Hostile review (session 34a) of concurrency: two writers of one store at once, on
SQLite and PostgreSQL, must lose nothing.

Reviewed: the store-writer lease every ingest run takes (:func:`ingest.runs.store_writer`,
:func:`ingest.runs.recorded_run`) and what :meth:`ingest.store.Store.apply` does under it;
the database leases themselves (:func:`litpulse.core.db.acquire_lease`, :class:`Lease`:
expiry, renewal, takeover); the iCite writers (``litpulse citations refresh`` /
``citations load``: :mod:`ingest.citations`, :mod:`ingest.icite_snapshot`), which take no
store-writer lease, against an ingest of the same PMIDs (columns written, quarantine
entries); the quarantine table written by both; the in-corpus counts and the
``updated_at`` watermarks (lexical index, embeddings, retrain window) as they depend on
one writer at a time; the one-time upgrades run at the first write.

Every test drives the real code; the races are forced deterministically (a takeover made
by :func:`acquire_lease` while the first writer still holds its block; a holder whose
clock lags, made by giving its lease calls that clock: the one seam patched, since a
second host cannot be had in a test), never left to timing.

Each defect was a strict xfail asserting the correct behaviour; all four were fixed in the
same session and are plain tests now:

* S1: the batch's transaction verifies the store-writer lease last, before its commit
  (:func:`ingest.runs.verify_store_writer`; the bootstrap's recount ranges and the
  catch-up marks too): a writer that lost it rolls the batch back (``LeaseLostError``).
* Q1: the ingest's resolution leaves entries whose reason begins
  :data:`ingest.records.ICITE_REASON` (both iCite writers build their reasons from it).
* D1: :func:`litpulse.core.db.retry_conflicts` runs a transaction PostgreSQL rolled back
  for a deadlock or a serialization failure again: an ingest batch (its counts and
  touched PMIDs put back first), an iCite API batch, a snapshot batch.
* L1: leases are stamped and judged by the database's clock (:func:`db.db_now`).

Defects:

S1 **A store writer whose lease was taken over keeps writing.** ``store_writer`` takes the
   ``store-writer`` lease once; :meth:`Store.apply` never checks it again (unlike the
   index publish, the retrain and the nightly, which ``check``/``verify`` their leases).
   A writer whose heartbeat stalled past the lease's TTL (a suspended VM or container, a
   SIGSTOPped process, a swap storm) loses the lease to the next ingest, wakes up and
   goes on committing batches beside it: two writers deciding against the state each
   read (an older version upserted over a newer one), moving the in-corpus counts under
   each other, and stamping rows with ``updated_at`` older than a watermark the index
   refresh already read — exactly what the lease exists to exclude.
Q1 **An ingest resolves the iCite quarantine entries of the PMIDs it writes.** The batch's
   ``UPDATE quarantine SET resolved_at = now WHERE pmid IN (written) AND resolved_at IS
   NULL`` meets every open entry of the PMID, also those ``citations refresh`` (source
   kind ``icite``) and ``citations load`` (a snapshot row) stored: a revision of the
   article "resolves" a damaged iCite record that nothing fixed; it leaves ``litpulse
   quarantine`` and the open count silently.
D1 **A deadlock between an ingest batch and an iCite load fails one of them.** On
   PostgreSQL an ingest batch locks its article rows in its file's order (then the cited
   rows' counts), and ``citations load`` (no store-writer lease: it writes only the
   iCite columns) locks a snapshot batch's rows in the snapshot's order; two such
   transactions meeting on two rows in opposite orders deadlock, and PostgreSQL rolls one
   back (``40P01``). Nothing retries it: the ingest run (the nightly) or the snapshot load
   fails, and the CLI reports "the database cannot be reached: deadlock detected". PostgreSQL's
   rule for such a transaction is to run it again; every writer outside the lease (and
   the writer under it, which such a writer can still meet) must.
L1 **A lease is judged expired by the taker's clock, renewed by the holder's.**
   ``acquire_lease`` compares ``expires_at`` (written ``utcnow() + ttl`` by the holder's
   host) with its own host's ``utcnow()``. On PostgreSQL shared by several hosts (Airflow
   workers) a holder whose clock lags the taker's by more than the TTL (120 s) is taken
   over while alive and renewing: two nightly runs, two store writers. The store's rows
   are stamped by the database's clock for this very reason (:func:`db.db_now`).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from ingest.citations import refresh_citations
from ingest.icite_snapshot import load_snapshot
from ingest.records import Record, SourceRef
from ingest.runs import STORE_LEASE, store_writer
from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import LeaseLostError
from litpulse.core.schema import articles, locks
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from tests.emulator import Emulator

TODAY = dt.date.today()


def _record(pmid: int, title: str, *, at: dt.datetime | None = None) -> Record:
    src = SourceRef("generated", f"review34a-{title}", fetched_at=at or utcnow())
    return Record(pmid=pmid, version=1, title=title, source=src, entrez_date=TODAY)


def _title(settings: Settings, pmid: int) -> str | None:
    with db.connect(settings).connect() as conn:
        return conn.execute(select(articles.c.title).where(articles.c.pmid == pmid)).scalar()


# ---------------------------------------------------------------------------- S1


def test_s1_a_writer_that_lost_the_store_lease_writes_nothing_more(settings: Settings) -> None:
    engine = db.connect(settings)
    store = Store(engine)
    store.apply([_record(101, "first")])
    with store_writer(engine):
        # this writer's heartbeat stalled past the TTL (a suspended process): its lease
        # expired and the next ingest took it over, as acquire_lease does
        with engine.begin() as conn:
            conn.execute(update(locks).where(locks.c.name == STORE_LEASE)
                         .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
        other = db.acquire_lease(engine, STORE_LEASE, holder="elsewhere:1:-:-:review34a",
                                 heartbeat=False)
        assert other is not None  # the other ingest writes now
        # the stalled writer wakes up and goes on with its next batch
        with pytest.raises(LeaseLostError):
            store.apply([_record(101, "stale"), _record(102, "stale")])
    assert _title(settings, 101) == "first"
    assert _title(settings, 102) is None


# ---------------------------------------------------------------------------- Q1


def test_q1_an_ingest_leaves_the_icite_refresh_entries_of_its_pmids_open(
    emu: Emulator, settings: Settings
) -> None:
    store = Store(db.connect(settings))
    store.apply([_record(201, "v1")])
    emu.set_icite(201, citation_count=30, year=0)  # impossible: quarantined
    s = emu.configure(settings, ncbi_api_key="review-key", max_retries=2)
    assert refresh_citations(s, pmids=[201]).rejected == 1
    (entry,) = store.quarantined(pmid=201)
    assert entry["source_kind"] == "icite"
    # a revision of the article arrives: it says nothing of iCite's record
    store.apply([_record(201, "v2", at=utcnow() + dt.timedelta(seconds=5))])
    assert _title(settings, 201) == "v2"
    assert [e["id"] for e in store.quarantined(pmid=201)] == [entry["id"]]


SNAPSHOT_HEADER = (
    "pmid,doi,title,authors,year,journal,is_research_article,citation_count,"
    "field_citation_rate,expected_citations_per_year,citations_per_year,"
    "relative_citation_ratio,nih_percentile,human,animal,molecular_cellular,x_coord,"
    "y_coord,apt,is_clinical,cited_by_clin,cited_by,references,provisional,last_modified\n"
)


def test_q1_an_ingest_leaves_the_icite_snapshot_entries_of_its_pmids_open(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(db.connect(settings))
    store.apply([_record(202, "v1")])
    csv = tmp_path / "icite_metadata.csv"
    csv.write_text(SNAPSHOT_HEADER + "202,,A title,,2019,J,True,-5,1.0,1.0,2.0,1.5,50.0,0.5,"
                   "0.25,0.25,0.0,0.4,0.3,False,,,,False,2026-05-01\n")  # a negative count
    as_of = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    assert load_snapshot(settings, csv, as_of=as_of).malformed == 1
    (entry,) = store.quarantined(pmid=202)
    store.apply([_record(202, "v2", at=utcnow() + dt.timedelta(seconds=5))])
    assert _title(settings, 202) == "v2"
    assert [e["id"] for e in store.quarantined(pmid=202)] == [entry["id"]]


# ---------------------------------------------------------------------------- L1


@pytest.fixture
def lagging_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A switch that makes this process's lease calls read a clock 200 s behind (another
    host's, NTP-less): the one seam of this file, since no second host is at hand."""
    from litpulse.core import db as dbmod

    real = dbmod.utcnow

    class Switch:
        def __enter__(self) -> None:
            monkeypatch.setattr(dbmod, "utcnow", lambda: real() - dt.timedelta(seconds=200))

        def __exit__(self, *exc: object) -> None:
            monkeypatch.setattr(dbmod, "utcnow", real)

    yield Switch()


@pytest.mark.postgres
def test_l1_a_live_holder_on_a_host_whose_clock_lags_keeps_its_lease(
    pg_settings: Settings, lagging_clock: Any
) -> None:
    engine = db.connect(pg_settings)
    with lagging_clock:  # the holder's host: its clock runs 200 s behind
        held = db.acquire_lease(engine, "nightly", holder="hostA:1:-:-:review34a",
                                heartbeat=False)
        assert held is not None
        assert held.renew()  # alive, renewing on time
    # another host, its clock right, asks for the lease at once
    taken = db.acquire_lease(engine, "nightly", holder="hostB:1:-:-:review34a",
                             heartbeat=False)
    assert taken is None
    assert db.lease_holder(engine, "nightly")[0] == "hostA:1:-:-:review34a"  # type: ignore[index]


# ---------------------------------------------------------------------------- D1


def _waiting_on_locks(engine: Any, n: int) -> None:
    """Until ``n`` sessions of this database wait for a lock (PostgreSQL)."""
    for _ in range(500):
        with engine.connect() as conn:
            k = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )).scalar_one()  # fmt: skip
        if k >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"never {n} sessions waiting for a lock")


@pytest.mark.postgres
@pytest.mark.parametrize("victim", ["ingest", "snapshot"])
def test_d1_an_ingest_and_a_snapshot_load_that_deadlock_both_finish(
    pg_settings: Settings, tmp_path: Path, victim: str
) -> None:
    """The interleaving is forced: the test holds row 200; the snapshot (rows 300, 200,
    100, in that order, as the articles lie) locks 300 and waits for 200; the ingest
    (revisions of 100, then 300) locks 100 and waits for 300; the test lets 200 go, and
    the snapshot waits for 100: a cycle. Which transaction PostgreSQL rolls back follows
    whose deadlock check runs first: the ingest's when 200 goes at once (its check runs
    deadlock_timeout, 1 s, after it began waiting), the snapshot's when 200 goes after
    that."""
    engine = db.connect(pg_settings)
    t0 = utcnow()
    Store(engine).apply([_record(p, "v1", at=t0) for p in (300, 200, 100)])
    csv = tmp_path / "icite_metadata.csv"
    csv.write_text(SNAPSHOT_HEADER + "".join(
        f"{p},,A title,,2019,J,True,7,1.0,1.0,2.0,1.5,50.0,0.5,0.25,0.25,0.0,0.4,0.3,"
        "False,,,,False,2026-05-01\n" for p in (300, 200, 100)))  # fmt: skip
    errors: dict[str, BaseException] = {}
    counts: dict[str, Any] = {}

    def load() -> None:
        try:
            load_snapshot(pg_settings, csv, as_of=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors["snapshot"] = exc

    def ingest() -> None:
        later = t0 + dt.timedelta(seconds=5)
        try:
            counts["ingest"] = Store(engine).apply(
                [_record(100, "v2", at=later), _record(300, "v2", at=later)]
            ).to_dict()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors["ingest"] = exc

    with engine.connect() as holder:
        tx = holder.begin()
        holder.execute(text("SELECT pmid FROM articles WHERE pmid = 200 FOR UPDATE")).all()
        loading = threading.Thread(target=load)
        loading.start()
        _waiting_on_locks(engine, 1)
        ingesting = threading.Thread(target=ingest)
        ingesting.start()
        _waiting_on_locks(engine, 2)
        if victim == "snapshot":
            time.sleep(1.5)  # past the ingest's deadlock check: the snapshot's finds it
        tx.commit()
    loading.join(30)
    ingesting.join(30)
    assert errors == {}
    # a batch run again counts once (its first attempt's counts were put back)
    assert (counts["ingest"]["updated"], counts["ingest"]["inserted"]) == (2, 0)
    with engine.connect() as conn:
        rows = conn.execute(select(articles.c.pmid, articles.c.title, articles.c.citation_count)
                            .order_by(articles.c.pmid)).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [(100, "v2", 7), (200, "v1", 7), (300, "v2", 7)]

