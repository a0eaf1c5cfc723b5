"""Hostile review (session 31a) of the full-size ingest path of issue #12: the parallel
parse (ingest/parallel.py), the store's bulk paths (ingest/store.py, litpulse/core/db.py),
``litpulse ingest --files``, the bootstrap, the update files and the iCite snapshot loader
(``litpulse citations load FILE``, ingest/icite_snapshot.py), on SQLite and PostgreSQL.

Defects (were strict xfails asserting the correct behaviour; fixed in the same session,
now plain tests on both databases: A1 ``_copy_update`` coalesces as ``icite_update`` does;
A2 ``iter_batches`` merges a PMID met again in a batch by the same rule, ``_merge``):

A1 **PostgreSQL only: a snapshot row with a missing value wipes the value the article had.**
   The user loses known iCite values (an RCR, a citation rate) on PostgreSQL for every
   article whose row in the snapshot carries ``NaN``/``NA``/empty for that column (iCite
   leaves the RCR empty for recent papers), while SQLite, and the daily API refresh on both
   databases, keep them: the two databases end in different states from the same file.
   Reproduction: seed PMID 7; load a snapshot whose row gives it RCR 3.5 (``--as-of``
   2026-04-01); load next month's snapshot (``--as-of`` 2026-05-01) whose row for 7 has
   RCR ``NaN``: SQLite keeps 3.5, PostgreSQL stores NULL. At fault:
   ``ingest/icite_snapshot.py::_copy_update`` sets ``{c: s[c] for c in cols}`` (the staged
   value, NULL included), where the SQLite path (``ingest.citations.icite_update``) sets
   ``coalesce(b_c, articles.c)`` ("a null from iCite is 'not known', not 'none': what the
   article had stays"). Fix: ``.values({c: func.coalesce(s[c], a[c]) for c in cols}, ...)``
   in ``_copy_update``.
A2 **A PMID met twice in one snapshot file: what is stored depends on where a batch
   boundary falls.** ``iter_batches`` keeps only the later row of a PMID met twice in one
   batch (``values[pmid] = parsed``: its missing values included, so they replace the
   earlier row's values before the write's coalesce can keep them); met in two batches, the
   earlier row is written, then the later one is coalesced over it. Reproduction (SQLite;
   on PostgreSQL A1 makes both NULL): PMID 7 in two consecutive rows, RCR 3.5 then ``NaN``;
   ``load_snapshot(batch_size=1)`` stores RCR 3.5, ``batch_size=2`` stores NULL (and
   ``updated`` is 2 against 1). So ``LITPULSE_ICITE_SNAPSHOT_BATCH``, or a resumed load
   run with another batch size, changes the stored values. At fault:
   ``ingest/icite_snapshot.py::iter_batches`` (the ``values[parsed[0]] = parsed[1]``
   merge). Fix: merge a repeated PMID's later row over the earlier one by the write rule
   (``{k: new[k] if new[k] is not None else old[k]}``), so a batch applies what the rows
   applied one by one would (or count the repeat and apply whole rows in order).

Attacks that held:

* A snapshot load failing inside its third batch's transaction (as a kill there leaves the
  store) and run again, over quoted commas, a title spanning two lines, a stray quote, a
  repeated PMID, an impossible count and a cut-off last line, in batches of 3: it resumes
  at the committed offset and ends in the clean load's state (values, fetch times and
  quarantine alike), on both databases (plain test below).
* Read and sound: the parse workers' items equal the in-process ones (``_wire``/
  ``prepare_item`` prepare only records; quarantine entries escape NUL themselves);
  striped units, spilling and lazy jobs are covered by tests/ingest/test_parallel.py;
  ``ingest --files`` fixes each file's fetch time before its first batch, so a rerun
  replays to the stored position; the bootstrap reuses a verified staged copy of a file
  partly applied (a file replaced on the mirror afterwards is not mixed in: the staged
  copy is applied whole; a numbered NLM file is one source by design, ingest/rules.py);
  the snapshot checkpoint is written in the batch's transaction and a changed file or
  another ``--as-of`` starts a new load (``first_read_at``); iCite integers are range
  checked before the PostgreSQL ``COPY`` (no int4 overflow failing a batch).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from ingest.icite_snapshot import load_snapshot
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings

AS_OF = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
EARLIER = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
HEADER = (
    "pmid,doi,title,authors,year,journal,is_research_article,citation_count,"
    "field_citation_rate,expected_citations_per_year,citations_per_year,"
    "relative_citation_ratio,nih_percentile,human,animal,molecular_cellular,x_coord,y_coord,"
    "apt,is_clinical,cited_by_clin,cited_by,references,provisional,last_modified\n"
)
_ICITE = (
    "citation_count",
    "relative_citation_ratio",
    "citations_per_year",
    "icite_year",
    "icite_provisional",
)


def _snapshot_row(
    pmid: int,
    *,
    count: str = "10",
    cpy: str = "2.0",
    rcr: str = "1.5",
    year: str = "2019",
    provisional: str = "False",
) -> str:
    return (
        f'{pmid},,"A title, with a comma",,{year},J,True,{count},1.0,1.0,{cpy},{rcr},50.0,'
        f"1.0,0.0,0.0,0.0,0.0,0.1,False,,,,{provisional},2026-05-01\n"
    )


def _seed(settings: Settings, pmids: list[int]) -> None:
    src = SourceRef("generated", "test")
    Store(db.connect(settings)).apply(
        [Record(pmid=p, version=1, title=f"Article {p}", source=src) for p in pmids]
    )


def _icite(settings: Settings, pmid: int) -> dict[str, Any]:
    with db.connect(settings).connect() as conn:
        row = conn.execute(
            select(*(articles.c[c] for c in _ICITE)).where(articles.c.pmid == pmid)
        ).one()
    return dict(zip(_ICITE, row, strict=True))


# ========================================================================== A1


def test_a1_a_missing_snapshot_value_keeps_what_the_article_had_on_both_databases(
    settings: Settings, tmp_path: Path
) -> None:
    _seed(settings, [7])
    # an earlier load (an API refresh stores through the same rule) gave it every value
    first = tmp_path / "march.csv"
    first.write_text(HEADER + _snapshot_row(7, count="42", rcr="3.5", cpy="6.0"))
    load_snapshot(settings, first, as_of=EARLIER)
    assert _icite(settings, 7)["relative_citation_ratio"] == 3.5
    # next month's snapshot has no RCR for it yet (iCite writes NaN for a recent paper)
    later = tmp_path / "april.csv"
    later.write_text(HEADER + _snapshot_row(7, count="45", rcr="NaN", cpy="6.5"))
    load_snapshot(settings, later, as_of=AS_OF)
    got = _icite(settings, 7)
    assert got["citation_count"] == 45
    # "a null from iCite is 'not known', not 'none': what the article had stays"
    assert got["relative_citation_ratio"] == 3.5, got


# ========================================================================== A2


def test_a2_a_pmid_met_twice_ends_the_same_whatever_the_batch_size(
    settings: Settings, tmp_path: Path
) -> None:
    # the same two rows, for PMID 7 loaded in batches of 1 and for PMID 8 in batches of 2
    _seed(settings, [7, 8])
    got = {}
    for pmid, size in ((7, 1), (8, 2)):
        f = tmp_path / f"snapshot{size}.csv"
        f.write_text(HEADER + _snapshot_row(pmid, count="42", rcr="3.5")
                     + _snapshot_row(pmid, count="45", rcr="NaN"))  # fmt: skip
        load_snapshot(settings, f, as_of=AS_OF, batch_size=size)
        got[size] = _icite(settings, pmid)
    # rows applied in order by the write rule (a NaN keeps what was known): RCR 3.5
    assert got[1] == got[2], got
    assert got[2]["relative_citation_ratio"] == 3.5 and got[2]["citation_count"] == 45


# ================================================================== attacks that held


def test_held_a_snapshot_load_failing_mid_file_resumes_to_the_clean_state(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quoted commas, a title over two lines, a stray quote, a repeated PMID, a bad count
    and a cut-off last line, over batches of 3; the 3rd batch's transaction fails (as a
    kill in it would leave the store), then the load is run again."""
    from sqlalchemy import delete

    import ingest.icite_snapshot as snap
    from litpulse.core.schema import checkpoints, quarantine

    pmids = list(range(1, 13))
    _seed(settings, pmids)
    rows = [_snapshot_row(p, count=str(p)) for p in pmids]
    rows[2] = rows[2].replace('"A title, with a comma"', '"A title\nover, two lines"')
    rows[4] = rows[4].replace('"A title, with a comma"', '"A stray quote, never closed')
    rows[6] = _snapshot_row(3, count="99")  # PMID 3 again, later
    rows[8] = _snapshot_row(9, count="many")
    f = tmp_path / "icite_metadata.csv"
    f.write_text(HEADER + "".join(rows) + "12,,cut off,,20")
    engine = db.connect(settings)
    cols = [articles.c.pmid, *(articles.c[c] for c in (*_ICITE, "icite_fetched_at"))]

    def state() -> tuple[Any, ...]:
        with engine.connect() as conn:
            got = conn.execute(select(*cols).order_by(articles.c.pmid)).all()
            bad = conn.execute(select(quarantine.c.line, quarantine.c.pmid)
                               .order_by(quarantine.c.line)).all()  # fmt: skip
        return [tuple(r) for r in got], [tuple(r) for r in bad]

    clean_counts = load_snapshot(settings, f, as_of=AS_OF, batch_size=3)
    clean = state()
    with engine.begin() as conn:  # back to before the load
        conn.execute(update(articles).values({c: None for c in (*_ICITE, "icite_fetched_at")}))
        conn.execute(delete(quarantine))
        conn.execute(delete(checkpoints).where(checkpoints.c.scope == snap.SCOPE))
    real, calls = snap._write, []

    def dying(*args: Any, **kw: Any) -> int:
        calls.append(1)
        if len(calls) == 3:
            real(*args, **kw)
            raise KeyboardInterrupt  # inside the batch's transaction: rolled back
        return real(*args, **kw)

    monkeypatch.setattr(snap, "_write", dying)
    with pytest.raises(KeyboardInterrupt):
        load_snapshot(settings, f, as_of=AS_OF, batch_size=3)
    monkeypatch.setattr(snap, "_write", real)
    resumed = load_snapshot(settings, f, as_of=AS_OF, batch_size=3)
    assert state() == clean
    counts = [r[1] for r in clean[0]]
    # PMID 3's later row; the stray quote's row (5), the bad count (9) and the cut-off
    # last line (12) quarantined; the row after the stray quote (6) read again, its own
    assert counts == [1, 2, 99, 4, None, 6, None, 8, None, 10, 11, 12]
    assert [pmid for _line, pmid in clean[1]] == [5, 9, 12]
    assert 0 < resumed.rows < clean_counts.rows
