"""Hostile review (session 36e): the store at its edges, SQLite and PostgreSQL alike.

Code under review: ``ingest/store.py`` (PostgreSQL ``COPY`` into staging tables and one
set-based upsert; SQLite ``executemany``), ``ingest/rows.py``, ``litpulse/core/schema.py``,
``litpulse/core/db.py`` and ``ingest/icite_snapshot.py`` (``litpulse citations load``).

Attacked and held (no test kept; each compared row by row, every table, SQLite against
PostgreSQL, through the real ``litpulse ingest --files`` and ``litpulse citations load``):
PMID 99,999,999; titles, abstracts, author names, MeSH terms and keywords holding ``\\N``,
``\\.``, backslashes, tabs and ``&#13;`` (COPY's special sequences and escapes), astral
characters (𝔘, 😀), empty and blank-only fields; ``Version`` 2147483647 and 2147483648,
years 0, -5, 99999 and 2147483648, months and days past int4 (the parser quarantines or
keeps them as raw text, the same on both stores); ``&#xD800;`` (lxml refuses it: the
record is quarantined, the same entry on both); a 4 MB abstract (quarantined by
``LITPULSE_MAX_TEXT_CHARS``, both); an iCite snapshot with a count of 2147483647 (stored)
and 2147483648 or -1 (quarantined), ``Infinity``, ``NaN``, ``5e-324`` and
``1.7976931348623157e308``, blank fields, NUL bytes and invalid UTF-8 in a row
(quarantined with NUL as ``\\x00``), a PMID not in the store: both stores identical. Two
writers: ``litpulse ingest --files`` of a revision of 3,000 stored records (batches of 50)
while ``litpulse citations load`` of all of them runs (batches of 50), on PostgreSQL (a
deadlock met and run again) and on SQLite, ends identical to the serial run; a second
``litpulse ingest`` while one runs is refused naming the holder of ``store-writer``.

Defects (each a strict xfail asserting the right behaviour until fixed):

X1 **A PMID met twice in one batch of a snapshot is counted as skipped, and the counts
   change with the batch size.** ``icite_metadata.csv`` holding PMID 1 in two rows (both
   well-formed, the article stored and live): ``litpulse citations load --batch-size 100``
   says ``updated 3, skipped 2`` for 4 stored rows and one PMID the store lacks, and
   ``--batch-size 1`` says ``updated 4, skipped 1`` for the same file and store.
   ``skipped`` is documented as "well-formed rows not written: the PMID is not live in the
   store, or the store holds iCite values fetched after the snapshot"; the repeated row
   was written (its values merged, ``_merge``), so an operator checking a load against
   the file's row count is told a stored article was not loaded. Reproduced by
   ``load_snapshot`` (what the CLI runs) on SQLite and PostgreSQL.
   **Fixed**: ``iter_batches`` counts, per PMID, the rows merged into its first row of
   the batch (``Batch.repeats``); ``_write`` adds them to ``updated`` for the PMIDs the
   update writes (one ``SELECT`` by the update's own predicate, ``icite_not_newer``, only
   for a batch that repeats a PMID), so ``updated`` is the well-formed rows written and
   ``skipped`` the rows not written, whatever the batch size (``SnapshotCounts``'s doc).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from ingest.icite_snapshot import SnapshotCounts, load_snapshot
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.settings import Settings

AS_OF = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
HEADER = "pmid,year,citation_count,citations_per_year,relative_citation_ratio,provisional"


def _seed(settings: Settings, pmids: list[int]) -> None:
    src = SourceRef("generated", "review36e")
    items: list[Any] = [
        Record(pmid=p, version=1, title=f"Article {p}", source=src, entrez_date=dt.date.today())
        for p in pmids
    ]
    Store(db.connect(settings)).apply(items)


def _snapshot(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "icite_metadata.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_x1_a_repeated_pmid_is_counted_as_written_whatever_the_batch_size(
    settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, [1, 2, 3])
    path = _snapshot(tmp_path, [
        "1,2020,5,1.0,0.5,False",
        "2,2020,6,1.0,0.5,False",
        "1,2020,7,,,False",  # PMID 1 again: written too (its blanks keep the earlier values)
        "3,2020,8,1.0,0.5,False",
        "9,2020,9,1.0,0.5,False",  # not in the store: the one row skipped
    ])  # fmt: skip
    want = SnapshotCounts(rows=5, updated=4, skipped=1, malformed=0)
    assert load_snapshot(settings, path, as_of=AS_OF, batch_size=100) == want
    # the same file again (a finished file is read again from its start), one row a batch
    assert load_snapshot(settings, path, as_of=AS_OF, batch_size=1) == want
