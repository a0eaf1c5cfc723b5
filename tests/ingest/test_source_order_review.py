"""A hostile review of one total order of sources (297295d) and the withdrawal check
(e4c43e8).

The first two tests were strict xfails, defects of the reviewed code, and pass since the
fix: a file's first read is recorded in a transaction of its own before its first batch
(and by ``ingest --files`` as it fixes its fetch times), and every source without a
number ranks as an EFetch does (after the files first read before it). The other tests
are attacks that held.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ingest.eutils import ingest_window
from ingest.files import ingest_files
from ingest.parse import parse_bytes
from ingest.records import Deletion, SourceRef, nlm_sequence
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import source_times
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from tests.emulator import Emulator, article_xml, gz, pubmed_set
from tests.ingest.test_eutils_hostile import _settings
from tests.ingest.test_source_order import _at, _efetch, _file, _row, _with_pmc
from tests.ingest.test_withdrawals import _live

DAY = dt.date(2024, 3, 5)
SINCE, UNTIL = dt.datetime(2024, 3, 5), dt.datetime(2024, 3, 6)


# ------------------------------------------------------------------------------ helpers


def _parsed(elements: list[bytes], ref: SourceRef, deletions: tuple[int, ...] = ()) -> list[Any]:
    return parse_bytes(pubmed_set(elements, deletions), source_ref=ref)


def _state(settings: Settings, pmid: int) -> dict[str, Any]:
    row = _row(settings, pmid)
    return {k: row[k] for k in ("is_deleted", "pmcid", "version")}


# ------------------------------------------------------------- findings (strict xfails)


def test_files_killed_before_a_files_first_commit_end_as_a_clean_run(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``litpulse ingest --files`` of two NLM files dies while it stores the second (its
    first batch rolls back: a crash, a kill, a database error); the nightly E-utilities
    window then stores a record of that file as PubMed serves it now (a PMC id added);
    the same command is run again. A clean run (both files, then the window) keeps the
    PMC id; the resumed one must end the same."""
    store = Store(db.connect(settings))

    def run(pmid: int, first: int, *, killed: bool) -> dict[str, Any]:
        folder = tmp_path / str(pmid)
        folder.mkdir()
        a = folder / f"pubmed26n{first:04d}.xml.gz"
        b = folder / f"pubmed26n{first + 1:04d}.xml.gz"
        a.write_bytes(gz(pubmed_set([article_xml(pmid + 1, edat=DAY)])))
        b.write_bytes(gz(pubmed_set([article_xml(pmid, edat=DAY)])))
        if killed:
            real = Store._apply_batch

            def dies_in_b(self: Store, conn: Any, batch: list[Any], *args: Any) -> Any:
                if any(getattr(i, "source", None) is not None and i.source.location == str(b)
                       for i in batch):  # fmt: skip
                    raise RuntimeError("killed while storing the second file")
                return real(self, conn, batch, *args)

            monkeypatch.setattr(Store, "_apply_batch", dies_in_b)
            with pytest.raises(RuntimeError, match="killed"):
                ingest_files(settings, [a, b], workers=0)
            monkeypatch.setattr(Store, "_apply_batch", real)
        else:
            ingest_files(settings, [a, b], workers=0)
        # the nightly window, after the command: PubMed added a PMC id (same revision)
        store.apply(_parsed([_with_pmc(pmid, "PMC7777777")], _efetch(utcnow())))
        ingest_files(settings, [a, b], workers=0)  # the command run again
        return _state(settings, pmid)

    clean = run(101, 1401, killed=False)
    assert clean["pmcid"] == "PMC7777777"
    assert run(201, 1403, killed=True) == clean


def test_a_local_export_read_after_an_efetch_wins_whether_or_not_an_nlm_file_was_read(
    settings: Settings,
) -> None:
    """A user's PubMed export (``ingest --files export.xml``) read after an EFetch of the
    same record carries what PubMed shows later (a PMC id, same Version and DateRevised).
    Between two sources the later one wins on equal revision: whether the store once
    read an NLM file about other records must not change that."""
    store = Store(db.connect(settings))

    def run(pmid: int, *, nlm_file_read: bool) -> str | None:
        if nlm_file_read:  # any NLM file, about another record
            store.apply(_parsed([article_xml(pmid + 50, edat=DAY)], _file(1400, _at(1))))
        store.apply(_parsed([article_xml(pmid, edat=DAY)], _efetch(_at(2))))
        export = SourceRef("file", f"/home/u/export-{pmid}.xml", fetched_at=_at(3))
        store.apply(_parsed([_with_pmc(pmid, "PMC8888888")], export))
        pmcid: str | None = _row(settings, pmid)["pmcid"]
        return pmcid

    assert run(101, nlm_file_read=False) == "PMC8888888"  # the later read wins
    assert run(201, nlm_file_read=True) == "PMC8888888"


# ------------------------------------------------------------------- attacks that held


def test_a_file_killed_after_its_first_commit_keeps_its_first_as_of_time(
    settings: Settings,
) -> None:
    """The control of the first finding: once one batch committed, the as-of time is
    the first read's, and an EFetch made in between stays newer when the file resumes."""
    store = Store(db.connect(settings))
    first = _file(1402, _at(1))
    items = _parsed([article_xml(p, edat=DAY) for p in (301, 302, 303)], first)
    store.apply(items[:1], batch_size=1)
    store.apply(_parsed([_with_pmc(303, "PMC1212121")], _efetch(_at(2))))
    again = _file(1402, _at(3))
    store.apply(_parsed([article_xml(p, edat=DAY) for p in (301, 302, 303)], again),
                batch_size=1)  # fmt: skip
    assert _row(settings, 303)["pmcid"] == "PMC1212121"
    with db.connect(settings).connect() as conn:
        as_of = conn.execute(select(source_times.c.as_of).where(
            source_times.c.sequence == nlm_sequence(26, 1402))).scalar_one()  # fmt: skip
    assert as_of == _at(1).timestamp()


def test_a_deletion_and_its_record_in_one_file_rerun_counts_unchanged(
    settings: Settings,
) -> None:
    """A file that stores a record and deletes it (and deletes an unknown PMID) is
    counted once; the same file read again (another mirror, later) changes nothing."""
    store = Store(db.connect(settings))
    elements = [article_xml(401, edat=DAY), article_xml(402, edat=DAY)]
    first = store.apply(_parsed(elements, _file(1405, _at(1)), (401, 499)), batch_size=2)
    assert (first.inserted, first.deleted, first.unchanged) == (2, 1, 1)
    again = SourceRef("file", "/mirror/pubmed26n1405.xml.gz", sequence=nlm_sequence(26, 1405),
                      fetched_at=_at(4))  # fmt: skip
    counts = store.apply(_parsed(elements, again, (401, 499)), batch_size=1)
    assert (counts.inserted, counts.updated, counts.deleted, counts.unchanged) == (0, 0, 0, 4)
    assert _live(settings) == {402}


def test_a_bare_tombstone_keeps_an_older_file_out_and_yields_to_a_later_efetch(
    settings: Settings,
) -> None:
    store = Store(db.connect(settings))
    store.apply([Deletion(501, _file(1406, _at(1)))])  # DeleteCitation of an unknown PMID
    counts = store.apply(_parsed([article_xml(501, edat=DAY)], _file(5, _at(2), "baseline")))
    assert counts.unchanged == 1 and _row(settings, 501)["is_deleted"]
    store.apply(_parsed([article_xml(501, edat=DAY)], _efetch(_at(3))))  # PubMed serves it
    assert not _row(settings, 501)["is_deleted"]


def _window_served(emu: Emulator, settings: Settings, pmids: range) -> Settings:
    s = _settings(emu, settings, max_retries=1)
    for pmid in pmids:
        emu.add_article(pmid, edat=DAY)
    ingest_window(s, SINCE, UNTIL)
    return s


def test_an_esearch_outage_in_the_withdrawal_check_deletes_nothing_and_a_rerun_deletes_once(
    emu: Emulator, settings: Settings
) -> None:
    """ESearch fails while the check asks for an unlisted PMID alone: the window fails
    and nothing is deleted; run again, it deletes the withdrawn record once."""
    s = _window_served(emu, settings, range(101, 104))
    emu.delete(102)
    searches = len(emu.requests("esearch"))
    ingest_window(s, SINCE, UNTIL)  # counts the window's own ESearch requests
    own = len(emu.requests("esearch")) - searches - 1  # minus the check's one request
    emu.add_article(102, edat=DAY)  # served again: back to the state before
    ingest_window(s, SINCE, UNTIL)
    assert _live(s) == {101, 102, 103}
    emu.delete(102)
    emu.faults.add("backend", path="esearch", times=50, after=own)
    with pytest.raises(Exception, match="Search Backend failed"):
        ingest_window(s, SINCE, UNTIL)
    assert emu.requests("esearch")[-1].params["term"] == "102:102[uid]"  # the check's ask
    assert _live(s) == {101, 102, 103}  # PubMed could not say: nothing deleted
    emu.faults.clear()
    ingest_window(s, SINCE, UNTIL)
    assert _live(s) == {101, 103}
    details = Store(db.connect(s)).runs(1)[0]["details"]["unlisted"]
    assert (details["withdrawn"], details["counts"]["deleted"]) == ([102], 1)
    ingest_window(s, SINCE, UNTIL)  # and again: nothing more
    assert Store(db.connect(s)).runs(1)[0]["details"]["unlisted"]["checked"] == 0
