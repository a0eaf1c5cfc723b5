"""Hostile review (session 36h): the iCite API refresh and the snapshot loader must agree.

Code under review: ``ingest/citations.py`` (``litpulse citations refresh``),
``ingest/icite_snapshot.py`` (``litpulse citations load``) and ``litpulse/core/impact.py``
(the ranking's use of what they store). The API is the loopback emulator
(``tests/emulator.py``, answering a PMID twice through the hostile subclass of
``tests/ingest/test_icite_refresh_review.py``); the snapshots are small CSVs in the real
file's format (a header naming iCite's columns, ``True``/``False`` flags). SQLite and
PostgreSQL alike.

Attacked and held (no test kept): blank, ``NaN``, ``NA`` fields and JSON ``null`` (NULL,
the article keeps what it had, both loaders); negative, infinite, fractional and
past-int4 counts, years 0 and 10000 (the record quarantined, both); an RCR ``null`` for a
young article beside a real count (stored, the impact from citations per year, at least
neutral, both stores equal); an extra CSV column or JSON key (ignored, both); a snapshot
dated before the API's values (skipped, its rows counted ``skipped``) and one dated after
(written), ``--as-of`` a date taken as midnight UTC and an aware time in +05:00 compared
in UTC on SQLite as on PostgreSQL; a refresh whose second batch fails, run again: the
rerun asks only the PMIDs not written, each PMID refreshed once, the stored values those
of a clean run.

Defects (each a strict xfail asserting the right behaviour until fixed):

X1 **The same damaged data stores different values depending on the loader: a PMID
   given twice.** iCite answering PMID 1 twice (``citation_count`` 5 with
   ``citations_per_year`` 1.0, then 7 with ``citations_per_year`` blank): the API refresh
   stores nothing for the article (both copies quarantined, "neither copy is trusted");
   ``litpulse citations load`` of a snapshot holding the same two rows stores count 7 and
   1.0 (the later row, the earlier's values filling its blanks). Likewise a damaged copy
   (count ``-7``) beside an intact one: the snapshot loads the intact row and quarantines
   the damaged one, the API quarantines both and stores nothing. The ranking then weighs
   the article neutral after the refresh and by its count after the load.
   **Fixed**: one rule, ``ingest.citations.merge_icite`` (the snapshot's ``_merge`` moved
   there): ``read_icite`` stores a PMID's records as they would be one after the other and
   rejects a damaged copy on its own; the refresh stores the intact copies and counts each
   quarantined record in the run (``details.rejected``, ``quarantined``).

X2 **A field iCite drops is a blank in the API's answer and a refused file in the
   snapshot.** An API answer without the ``provisional`` key stores the record's other
   values (the flag NULL: not known, what the article had stays); a snapshot without the
   ``provisional`` column is refused whole (``ConfigError``: "no column provisional"), so
   a month's snapshot of 40M rows loads nothing where the API stores every count.
   **Fixed**: ``ingest.icite_snapshot`` needs ``pmid`` and at least one of the metrics'
   columns (``METRICS``); a metric column absent from the header is a missing value in
   every row (logged), as a key the API leaves out (``icite_values`` reads it as
   ``None``); a CSV with none of them is still refused ("no column citation_count, ...").

X3 **A fetch that brought no values makes a newer snapshot's values be skipped.** An
   article loaded from a January snapshot (count 5), then asked of the API, which does
   not answer for it (a PMID iCite leaves out, or a record quarantined or refused): the
   fetch stamps ``icite_fetched_at`` now and the article keeps the January values. A
   snapshot of a later month (count 9) is then skipped for it ("iCite values fetched
   after the snapshot"): the store keeps January's count, stamped as if fetched today,
   and the refresh policy does not ask again for up to 180 days.
   **Fixed**: a column ``articles.icite_values_at`` (what the values held are as of),
   written with the values by ``icite_update`` and the snapshot's ``UPDATE … FROM``, not
   by a fetch that brought none; ``icite_not_newer`` compares it, not
   ``icite_fetched_at`` (the schedule's). A store made before it gets its
   ``icite_fetched_at`` where it holds values (``upgrade_fill``).

X4 **A refresh or load killed after a batch committed leaves a run counting nothing.**
   ``litpulse citations refresh`` of 4 PMIDs in batches of 2: while its second request is
   in flight (the first batch's 2 articles written) the run's row says ``updated 0``;
   ``litpulse citations load`` blocked after its first batch (checkpoint written) says
   ``updated 0`` too. Both write their counts only when the run closes, so a kill then
   (the OOM killer, a node lost) leaves a run that the next start closes ``abandoned``
   with zero counts although its batches stay in the store, and ``litpulse status`` and
   the data-quality gate read those counts (``ingest.runs.add_run_counts`` exists for
   this: the store's article batches call it, these two loaders did not).
   **Fixed**: ``ingest.citations._write`` and ``ingest.icite_snapshot._commit`` add each
   batch's counts to the run's row with ``add_run_counts`` in the batch's own transaction
   (the run's whole counts are still written as it closes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingest.citations import ICITE_FIELDS, refresh_citations
from ingest.icite_snapshot import SCOPE, load_snapshot
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.impact import row_citation_impact
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.ingest.test_icite_refresh_review import HostileIcite

HEADER = "pmid,year,citation_count,citations_per_year,relative_citation_ratio,provisional"
SRC = SourceRef("generated", "review36h")


@pytest.fixture
def icite() -> Iterator[HostileIcite]:
    emu = HostileIcite()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _seed(settings: Settings, pmids: list[int]) -> None:
    Store(db.connect(settings)).apply([
        Record(pmid=p, version=1, title=f"Article {p}", source=SRC,
               entrez_date=dt.date(2020, 1, 1))
        for p in pmids
    ])  # fmt: skip


def _icite(settings: Settings, pmid: int) -> dict[str, Any]:
    cols = [articles.c[c] for c in ICITE_FIELDS]
    with db.connect(settings).connect() as conn:
        row = conn.execute(select(*cols).where(articles.c.pmid == pmid)).mappings().one()
    return dict(row)


def _clear(settings: Settings, pmids: list[int]) -> None:
    with db.connect(settings).begin() as conn:
        conn.execute(
            articles.update().where(articles.c.pmid.in_(pmids))
            .values(**dict.fromkeys(ICITE_FIELDS), icite_fetched_at=None)
        )  # fmt: skip


def _csv(tmp_path: Path, name: str, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / name / "icite_metadata.csv"
    path.parent.mkdir()
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _api(pmid: int, **fields: Any) -> dict[str, Any]:
    return {"pmid": pmid, "year": 2020, "provisional": "No", **fields}


def test_x1_a_pmid_given_twice_is_stored_alike_by_both_loaders(
    icite: HostileIcite, settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, [1, 2])
    as_of = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    # PMID 1: two intact copies that differ; PMID 2: an intact copy and a damaged one
    rows = [
        "1,2020,5,1.0,,False", "1,2020,7,,,False",
        "2,2020,4,2.0,1.5,False", "2,2020,-7,2.0,1.5,False",
    ]  # fmt: skip
    load_snapshot(settings, _csv(tmp_path, "snap", rows), as_of=as_of)
    by_snapshot = {p: _icite(settings, p) for p in (1, 2)}
    assert by_snapshot[1]["citation_count"] == 7 and by_snapshot[1]["citations_per_year"] == 1.0
    assert by_snapshot[2]["citation_count"] == 4

    _clear(settings, [1, 2])
    icite.extra = [
        _api(1, citation_count=5, citations_per_year=1.0, relative_citation_ratio=None),
        _api(1, citation_count=7, citations_per_year=None, relative_citation_ratio=None),
        _api(2, citation_count=4, citations_per_year=2.0, relative_citation_ratio=1.5),
        _api(2, citation_count=-7, citations_per_year=2.0, relative_citation_ratio=1.5),
    ]
    s = icite.configure(settings, ncbi_api_key="k", max_retries=1)
    counts = refresh_citations(s, pmids=[1, 2])
    assert (counts.requested, counts.updated, counts.unknown) == (2, 2, 0)
    by_api = {p: _icite(settings, p) for p in (1, 2)}
    assert by_api == by_snapshot
    run = Store(db.connect(s)).runs(1)[0]
    assert run["details"]["rejected"] == 1  # the damaged copy of PMID 2, quarantined


def test_x2_a_field_icite_dropped_is_a_blank_for_both_loaders(
    icite: HostileIcite, settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, [3])
    icite.extra = [{"pmid": 3, "year": 2020, "citation_count": 3,
                    "citations_per_year": 1.0, "relative_citation_ratio": 0.5}]  # fmt: skip
    s = icite.configure(settings, ncbi_api_key="k", max_retries=1)
    assert refresh_citations(s, pmids=[3]).updated == 1
    by_api = _icite(settings, 3)
    assert by_api["citation_count"] == 3 and by_api["icite_provisional"] is None

    _clear(settings, [3])
    header = "pmid,year,citation_count,citations_per_year,relative_citation_ratio,doi"
    path = _csv(tmp_path, "snap", ["3,2020,3,1.0,0.5,10.1/x"], header=header)
    counts = load_snapshot(settings, path, as_of=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    assert counts.updated == 1
    assert _icite(settings, 3) == by_api


def test_x3_a_fetch_without_values_does_not_hold_back_a_newer_snapshot(
    icite: HostileIcite, settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, [4])
    january = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    load_snapshot(settings, _csv(tmp_path, "jan", ["4,2020,5,1.0,1.0,False"]), as_of=january)
    s = icite.configure(settings, ncbi_api_key="k", max_retries=1)
    assert refresh_citations(s, pmids=[4]).unknown == 1  # iCite does not answer for it
    later = db.utcnow() - dt.timedelta(hours=1)  # a snapshot dated after January's values
    counts = load_snapshot(settings, _csv(tmp_path, "later", ["4,2020,9,2.0,2.0,False"]),
                           as_of=later)  # fmt: skip
    assert counts.updated == 1
    assert _icite(settings, 4)["citation_count"] == 9


def test_equal_stored_data_weighs_alike_on_both_loaders_and_stores(
    icite: HostileIcite, settings: Settings, tmp_path: Path
) -> None:
    """Held: the same iCite record (a young article's RCR null) stored by either loader
    gives the ranking the same impact, on SQLite as on PostgreSQL (``settings`` runs both)."""
    _seed(settings, [5])
    load_snapshot(settings, _csv(tmp_path, "snap", ["5,2020,12,3.0,,True"]),
                  as_of=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))  # fmt: skip
    by_snapshot = _icite(settings, 5)
    _clear(settings, [5])
    icite.extra = [_api(5, citation_count=12, citations_per_year=3.0,
                        relative_citation_ratio=None, provisional="Yes")]  # fmt: skip
    refresh_citations(icite.configure(settings, ncbi_api_key="k", max_retries=1), pmids=[5])
    by_api = _icite(settings, 5)
    assert by_api == by_snapshot
    impact = row_citation_impact(by_api, 2000)
    assert impact.source == "icite_citations_per_year"
    assert impact == row_citation_impact(by_snapshot, 2000)


class _Watching(HostileIcite):
    """iCite that, at its second request, reads what the running refresh's run row says
    (what a refresh killed then leaves: closed ``abandoned`` with those counts)."""

    settings: Settings | None = None
    seen: dict[str, Any] | None = None
    calls: int = 0

    def icite_json(self, params: dict[str, str]) -> bytes:
        self.calls += 1
        if self.calls == 2 and self.settings is not None:
            self.seen = Store(db.connect(self.settings)).runs(1)[0]
        return super().icite_json(params)


def test_x4_a_killed_refresh_or_load_counts_what_it_stored(
    settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, [6, 7, 8, 9, 16, 17, 18])
    emu = _Watching()
    emu.start()
    try:
        for p in (6, 7, 8, 9):
            emu.set_icite(p, citation_count=p)
        s = emu.configure(settings, ncbi_api_key="k", max_retries=1, icite_batch=2)
        emu.settings = s
        refresh_citations(s, pmids=[6, 7, 8, 9])
    finally:
        emu.stop()
    assert emu.seen is not None and emu.seen["status"] == "running"
    assert emu.seen["updated"] == 2  # the first batch, committed before the second request

    # the snapshot: the load blocks on a pipe after its first batch, as a kill would find it
    fifo = tmp_path / "pipe" / "icite_metadata.csv"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    result: list[Any] = []
    as_of = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    loader = threading.Thread(
        target=lambda: result.append(load_snapshot(settings, fifo, as_of=as_of, batch_size=2))
    )
    loader.start()
    store = Store(db.connect(settings))
    with fifo.open("w") as pipe:
        pipe.write(HEADER + "\n16,2020,60,1.0,1.0,False\n17,2020,70,1.0,1.0,False\n")
        pipe.flush()
        for _ in range(500):  # the first batch is committed with its checkpoint
            mark = store.get_checkpoint(SCOPE, hashlib.sha1(str(fifo).encode()).hexdigest())
            if mark is not None and "offset" in mark["value"]:
                break
            time.sleep(0.01)
        running = store.runs(1)[0]
        pipe.write("18,2020,80,1.0,1.0,False\n")
    loader.join(10)
    assert result and result[0].updated == 3
    assert running["status"] == "running" and running["updated"] == 2
