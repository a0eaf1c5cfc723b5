"""A window's check of what PubMed withdrew (``ingest.eutils._check_unlisted``).

ESearch and EFetch simply stop returning a withdrawn PMID. A window of all PubMed finds
the live records the store holds entered in its days that its ESearch no longer lists,
asks EFetch for them, and deletes those EFetch does not serve and ESearch does not list
when asked for alone. Every other record stays as it is: served, it is stored as any; one
a short search left out in bulk is not taken for a withdrawal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from ingest.eutils import ingest_window
from ingest.parse import parse_bytes
from ingest.records import SourceRef, nlm_sequence
from ingest.store import Store
from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import Emulator, article_xml, gz, pubmed_set
from tests.ingest.test_eutils_hostile import _settings

DAY = dt.date(2024, 3, 5)
SINCE, UNTIL = dt.datetime(2024, 3, 5), dt.datetime(2024, 3, 6)


def _live(settings: Settings) -> set[int]:
    with db.connect(settings).connect() as conn:
        q = select(articles.c.pmid).where(articles.c.is_deleted.is_(False))
        return set(conn.execute(q).scalars())


def _unlisted(settings: Settings) -> dict[str, Any]:
    details: dict[str, Any] = Store(db.connect(settings)).runs(1)[0]["details"]
    return details["unlisted"]


def _ingested(emu: Emulator, settings: Settings, pmids: range = range(101, 104),
              **kw: Any) -> Settings:
    """Settings on ``emu``; PubMed serves ``pmids`` entered on DAY, and the window ran."""
    s = _settings(emu, settings, **kw)
    for pmid in pmids:
        emu.add_article(pmid, edat=DAY, title=f"asthma study {pmid}")
    ingest_window(s, SINCE, UNTIL)
    return s


def test_a_record_an_update_file_stored_and_pubmed_withdrew_is_deleted_by_the_window(
    emu: Emulator, settings: Settings
) -> None:
    s = _settings(emu, settings)
    records = [article_xml(p, edat=DAY) for p in (101, 102, 103)]
    emu.add_file("updatefiles", "pubmed26n1400.xml.gz", gz(pubmed_set(records)))
    apply_updates(s)
    for pmid in (101, 103):  # PubMed serves two; it withdrew 102 since the file
        emu.add_article(pmid, edat=DAY)
    counts = ingest_window(s, SINCE, UNTIL)
    assert _live(s) == {101, 103} and counts.deleted == 0  # the window's own counts
    unlisted = _unlisted(s)
    assert (unlisted["checked"], unlisted["withdrawn"]) == (1, [102])
    assert unlisted["counts"]["deleted"] == 1
    # the update file replayed changes nothing: the deletion is newer than its first read
    replay = SourceRef("updatefile", "pubmed26n1400.xml.gz", sequence=nlm_sequence(26, 1400))
    counts = Store(db.connect(s)).apply(parse_bytes(pubmed_set(records), source_ref=replay))
    assert counts.unchanged == 3 and _live(s) == {101, 103}
    # PubMed serves it again (reinstated): the next window that lists it lifts the deletion
    emu.add_article(102, edat=DAY, xml=records[1])
    ingest_window(s, SINCE, UNTIL)
    assert _live(s) == {101, 102, 103}
    assert _unlisted(s)["checked"] == 0


def test_a_record_efetch_still_serves_is_kept_and_stored_as_served(
    emu: Emulator, settings: Settings
) -> None:
    s = _ingested(emu, settings)
    # PubMed moved 102's entrez date out of the window: not listed, still served
    later = DAY + dt.timedelta(days=30)
    emu.add_article(102, edat=later, xml=article_xml(102, edat=later, title="Moved"))
    ingest_window(s, SINCE, UNTIL)
    unlisted = _unlisted(s)
    assert (unlisted["checked"], unlisted["found"], unlisted["withdrawn"]) == (1, 1, [])
    assert _live(s) == {101, 102, 103}
    with db.connect(s).connect() as conn:
        title = conn.execute(select(articles.c.title).where(articles.c.pmid == 102)).scalar()
    assert title == "Moved"


def test_a_record_efetch_leaves_out_but_esearch_lists_alone_is_not_deleted(
    emu: Emulator, settings: Settings
) -> None:
    s = _ingested(emu, settings)
    later = DAY + dt.timedelta(days=30)
    emu.add_article(102, edat=later, xml=article_xml(102, edat=later))  # not listed by date
    emu.faults.add("drop", path="efetch", times=2, after=1)  # the ask leaves it out, twice
    ingest_window(s, SINCE, UNTIL)
    unlisted = _unlisted(s)
    assert (unlisted["withdrawn"], unlisted["kept"]) == ([], [102])
    assert _live(s) == {101, 102, 103}


def test_a_window_with_a_query_never_deletes(emu: Emulator, settings: Settings) -> None:
    s = _ingested(emu, settings)
    emu.delete(102)
    ingest_window(s, SINCE, UNTIL, query="asthma")
    assert "unlisted" not in Store(db.connect(s)).runs(1)[0]["details"]
    assert _live(s) == {101, 102, 103}


def test_more_unlisted_than_a_withdrawal_can_be_are_not_deleted(
    emu: Emulator, settings: Settings
) -> None:
    s = _ingested(emu, settings, range(101, 111), efetch_batch=2)
    for pmid in range(102, 110):  # eight of ten gone from ESearch at once: a short search
        emu.delete(pmid)
    ingest_window(s, SINCE, UNTIL)
    unlisted = _unlisted(s)
    assert unlisted["skipped"] == "8 unlisted, 2 listed" and unlisted["withdrawn"] == []
    assert _live(s) == set(range(101, 111))
