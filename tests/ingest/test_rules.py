"""The update rules (ingest/rules.py): which source comes later.

Between two numbered NLM files the file number decides; between an E-utilities answer
and a numbered NLM file the fetch time does (an EFetch holds PubMed's record when it was
fetched, a file no newer than our first read of it), whichever way round they meet.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from ingest.parse import parse_bytes
from ingest.records import Deletion, SourceRef, nlm_sequence
from ingest.rules import StoredState, source_wins
from ingest.store import Store
from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import article_xml, pubmed_set

DAY = dt.date(2024, 3, 5)


def _at(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 3, day, hour, tzinfo=dt.UTC)


def _file(number: int, fetched: dt.datetime, kind: str = "updatefile") -> SourceRef:
    return SourceRef(kind, f"pubmed26n{number:04d}.xml.gz",  # type: ignore[arg-type]
                     sequence=nlm_sequence(26, number), fetched_at=fetched)  # fmt: skip


def _efetch(fetched: dt.datetime) -> SourceRef:
    return SourceRef("eutils", f"efetch {fetched.isoformat()}", fetched_at=fetched)


def _state(src: SourceRef) -> StoredState:
    return StoredState.written(src, 5, 1, DAY, "h")


@pytest.mark.parametrize(
    ("item", "row", "wins"),
    [
        # an EFetch after our first read of a file holds a newer record than the file ...
        (_efetch(_at(9)), _file(1400, _at(8)), True),
        # ... an EFetch before it may not: the file keeps the row
        (_efetch(_at(7)), _file(1400, _at(8)), False),
        # a file first read before an EFetch is older than the EFetch's record ...
        (_file(5, _at(2), "baseline"), _efetch(_at(3)), False),
        # ... one first read after it keeps its side
        (_file(1401, _at(4)), _efetch(_at(3)), True),
        # between numbered files the number decides, whatever the fetch times
        (_file(1400, _at(1)), _file(1399, _at(9)), True),
        (_file(1399, _at(9)), _file(1400, _at(1)), False),
        # between two EFetch answers the fetch time
        (_efetch(_at(4)), _efetch(_at(3)), True),
        (_efetch(_at(3)), _efetch(_at(4)), False),
        # a local file without a number ranks below every numbered file, as before
        (SourceRef("file", "/data/local.xml", fetched_at=_at(9)), _file(1400, _at(1)), False),
    ],
)
def test_which_source_comes_later(item: SourceRef, row: SourceRef, wins: bool) -> None:
    assert source_wins(item, 0, _state(row), touched=False) is wins


def test_the_same_time_keeps_the_files_side() -> None:
    efetch, update = _efetch(_at(8)), _file(1400, _at(8))
    assert not source_wins(efetch, 0, _state(update), touched=False)
    assert source_wins(update, 0, _state(efetch), touched=False)


def _parsed(xml: bytes, ref: SourceRef) -> list[Any]:
    return parse_bytes(pubmed_set([xml]), source_ref=ref)


def _with_pmc(pmid: int, pmc: str, **kw: Any) -> bytes:
    xml = article_xml(pmid, edat=DAY, **kw)
    own = f'<ArticleId IdType="pubmed">{pmid}</ArticleId>'.encode()
    return xml.replace(own, own + f'<ArticleId IdType="pmc">{pmc}</ArticleId>'.encode())


def _row(settings: Settings, pmid: int) -> dict[str, Any]:
    with db.connect(settings).connect() as conn:
        row = conn.execute(select(articles).where(articles.c.pmid == pmid)).one()
    return dict(row._mapping)


def test_a_replayed_baseline_never_undoes_a_later_efetch(settings: Settings) -> None:
    store = Store(db.connect(settings))
    baseline = _file(5, _at(1), "baseline")
    assert store.apply(_parsed(article_xml(101, edat=DAY), baseline)).inserted == 1
    # PubMed adds the PMC id later (PubmedData only: Version and DateRevised stay)
    assert store.apply(_parsed(_with_pmc(101, "PMC7654321"), _efetch(_at(3)))).updated == 1
    assert _row(settings, 101)["pmcid"] == "PMC7654321"
    # the baseline read again (a rerun, a new deployment's bootstrap of the same copy)
    counts = store.apply(_parsed(article_xml(101, edat=DAY), baseline))
    assert (counts.updated, counts.unchanged) == (0, 1)
    assert _row(settings, 101)["pmcid"] == "PMC7654321"
    # an update file NLM wrote after that EFetch, first read later, carries the record on
    later = _file(1400, _at(4))
    assert store.apply(_parsed(_with_pmc(101, "PMC1111111"), later)).updated == 1
    assert _row(settings, 101)["pmcid"] == "PMC1111111"


def test_a_record_served_again_after_its_deletion_is_live_and_a_replayed_deletion_keeps_it(
    settings: Settings,
) -> None:
    store = Store(db.connect(settings))
    first = dt.date(2024, 1, 3)
    store.apply(_parsed(article_xml(101, edat=first, mdat=first), _file(5, _at(1), "baseline")))
    deleting = _file(1400, _at(2))
    assert store.apply([Deletion(101, deleting)]).deleted == 1
    assert _row(settings, 101)["is_deleted"]
    # NLM reinstates it, revised: an EFetch after the deletion was read serves it
    again = article_xml(101, edat=first, mdat=DAY, title="Reinstated finding")
    assert store.apply(_parsed(again, _efetch(_at(3)))).updated == 1
    row = _row(settings, 101)
    assert not row["is_deleted"] and row["title"] == "Reinstated finding"
    # the update file read again: its deletion is older than the EFetch
    assert store.apply([Deletion(101, deleting)]).deleted == 0
    assert not _row(settings, 101)["is_deleted"]
    # an EFetch of the old revision never lifts a tombstone, whenever it is fetched
    store.apply([Deletion(101, _file(1401, _at(4)))])
    old = article_xml(101, edat=first, mdat=first)
    assert store.apply(_parsed(old, _efetch(_at(5)))).updated == 0
    assert _row(settings, 101)["is_deleted"]


def test_an_efetch_before_an_update_file_was_read_loses_the_tie(settings: Settings) -> None:
    store = Store(db.connect(settings))
    store.apply(_parsed(_with_pmc(101, "PMC1111111"), _file(1400, _at(5))))
    # fetched before that file was first read: the file's record may be the newer one
    assert store.apply(_parsed(_with_pmc(101, "PMC2222222"), _efetch(_at(4)))).updated == 0
    assert _row(settings, 101)["pmcid"] == "PMC1111111"
