"""The order of sources stays transitive and resume-safe (ingest/rules.py).

Regression guards from the hostile review of an attempt (b50197c, reverted) to rank an
EFetch against a numbered NLM file by fetch time: an EFetch that changes nothing must
never let an older NLM file overwrite a newer one's record, and a file killed before its
deletion and resumed after such an EFetch must end as a clean run. They hold under the
order that replaced both (an NLM file by its number and as-of time, the time the store
first read it; an EFetch after every file first read before it was fetched), with the
review's first finding (a resumed file read again, with a new fetch time, outranked an
EFetch made meanwhile) and the upgrade of an older store below.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from ingest.eutils import ingest_window
from ingest.parse import parse_bytes
from ingest.records import Deletion, SourceRef, nlm_sequence
from ingest.store import Store
from ingest.updatefiles import apply_updates
from litpulse.core import db
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import Emulator, article_xml, gz, pubmed_set
from tests.ingest.test_eutils_hostile import _settings

DAY = dt.date(2024, 3, 5)
FIRST = dt.date(2024, 1, 3)
SINCE, UNTIL = dt.datetime(2024, 3, 5), dt.datetime(2024, 3, 6)


def _row(settings: Settings, pmid: int) -> dict[str, Any]:
    with db.connect(settings).connect() as conn:
        row = conn.execute(select(articles).where(articles.c.pmid == pmid)).one()
    return dict(row._mapping)


def _with_pmc(pmid: int, pmc: str, **kw: Any) -> bytes:
    xml = article_xml(pmid, edat=DAY, **kw)
    own = f'<ArticleId IdType="pubmed">{pmid}</ArticleId>'.encode()
    return xml.replace(own, own + f'<ArticleId IdType="pmc">{pmc}</ArticleId>'.encode())


def _at(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2024, 3, day, hour, tzinfo=dt.UTC)


def _file(number: int, fetched: dt.datetime, kind: str = "updatefile") -> SourceRef:
    return SourceRef(kind, f"pubmed26n{number:04d}.xml.gz",  # type: ignore[arg-type]
                     sequence=nlm_sequence(26, number), fetched_at=fetched)  # fmt: skip


def _efetch(fetched: dt.datetime) -> SourceRef:
    return SourceRef("eutils", f"efetch {fetched.isoformat()}", fetched_at=fetched)


def _parsed(elements: list[bytes], ref: SourceRef) -> list[Any]:
    return parse_bytes(pubmed_set(elements), source_ref=ref)


def test_an_unchanged_efetch_never_lets_the_baseline_overwrite_a_newer_update_file(
    emu: Emulator, settings: Settings
) -> None:
    s = _settings(emu, settings)
    newer = _with_pmc(101, "PMC1111111")
    emu.add_file("baseline", "pubmed26n0001.xml.gz", gz(pubmed_set([article_xml(101, edat=DAY)])))
    emu.add_file("updatefiles", "pubmed26n0002.xml.gz", gz(pubmed_set([newer])))
    apply_updates(s)  # the update files first (a store started without its baseline)
    assert _row(s, 101)["pmcid"] == "PMC1111111"
    emu.add_article(101, edat=DAY, xml=newer)  # EFetch serves exactly the same record
    counts = ingest_window(s, SINCE, UNTIL)
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 1)
    apply_updates(s, include_baseline=True)  # then the baseline, older than n0002
    assert _row(s, 101)["pmcid"] == "PMC1111111"


def test_without_the_efetch_the_baseline_never_overwrites_a_newer_update_file(
    emu: Emulator, settings: Settings
) -> None:
    """The control of the finding above: the same files, no EFetch between them."""
    s = _settings(emu, settings)
    emu.add_file("baseline", "pubmed26n0001.xml.gz", gz(pubmed_set([article_xml(101, edat=DAY)])))
    emu.add_file("updatefiles", "pubmed26n0002.xml.gz",
                 gz(pubmed_set([_with_pmc(101, "PMC1111111")])))  # fmt: skip
    apply_updates(s)
    apply_updates(s, include_baseline=True)
    assert _row(s, 101)["pmcid"] == "PMC1111111"


def test_an_unchanged_efetch_never_lets_an_older_update_file_win(settings: Settings) -> None:
    store = Store(db.connect(settings))
    newer = _with_pmc(101, "PMC2222222")
    store.apply(_parsed([newer], _file(1401, _at(1))))
    counts = store.apply(_parsed([newer], _efetch(_at(2))))  # repeats it: changes nothing
    assert (counts.updated, counts.unchanged) == (0, 1)
    store.apply(_parsed([_with_pmc(101, "PMC1111111")], _file(1400, _at(3))))
    assert _row(settings, 101)["pmcid"] == "PMC2222222"


def test_a_file_killed_before_its_deletion_ends_as_a_clean_run_after_an_unchanged_efetch(
    settings: Settings,
) -> None:
    store = Store(db.connect(settings))

    def run(pmid: int, *, killed: bool) -> dict[str, Any]:
        # one store, two PMID families: 101.. the clean run, 201.. the killed one
        base = article_xml(pmid, edat=FIRST, mdat=FIRST)
        store.apply(_parsed([base], _file(5, _at(1), "baseline")))
        upd = _file(1400, _at(2))  # first read at 2; its fetch time kept (ingest files)
        items = _parsed([article_xml(pmid + p, edat=DAY) for p in (1, 2, 3)], upd)
        items.append(Deletion(pmid, upd))
        store.apply(items[:2] if killed else items, batch_size=1)
        # PubMed still serves the record as it was (E-utilities behind the update file)
        store.apply(_parsed([base], _efetch(_at(3))))
        if killed:
            store.apply(items, batch_size=1)  # the killed run resumed
        row = _row(settings, pmid)
        return {k: row[k] for k in ("is_deleted", "source_kind", "source_position")}

    assert run(201, killed=True) == run(101, killed=False)


# -- the total order: a file's as-of time, an EFetch after the files read before it ------


def test_a_file_resumed_after_an_efetch_never_undoes_it_and_ends_as_a_clean_run(
    settings: Settings,
) -> None:
    """A resumed update file is read again with a new fetch time; the store ranks it by
    the time it first read the file, so an EFetch made meanwhile stays newer (the first
    failure of the reverted fetch-time order)."""
    store = Store(db.connect(settings))

    def run(pmid: int, *, killed: bool) -> dict[str, Any]:
        number = 1400 + pmid // 100  # a file of its own per run (a file's time is its own)
        first, again = _file(number, _at(1)), _file(number, _at(3))
        items = _parsed([article_xml(pmid, edat=DAY), article_xml(pmid + 1, edat=DAY)], first)
        items.append(Deletion(pmid, first))
        store.apply(items[:1] if killed else items, batch_size=1)
        # PubMed serves the record at 2, its PMC id added (Version, DateRevised as they were)
        store.apply(_parsed([_with_pmc(pmid, "PMC3333333")], _efetch(_at(2))))
        if killed:  # the run resumed at 3: the same file, read again
            resumed = _parsed([article_xml(pmid, edat=DAY), article_xml(pmid + 1, edat=DAY)],
                              again)  # fmt: skip
            store.apply([*resumed, Deletion(pmid, again)], batch_size=1)
        row = _row(settings, pmid)
        return {k: row[k] for k in ("is_deleted", "pmcid", "source_kind", "source_time")}

    killed, clean = run(201, killed=True), run(101, killed=False)
    assert killed == clean == {"is_deleted": False, "pmcid": "PMC3333333",
                               "source_kind": "eutils", "source_time": _at(2).timestamp()}


def test_an_efetch_ranks_below_a_file_first_read_after_it(settings: Settings) -> None:
    store = Store(db.connect(settings))
    store.apply(_parsed([_with_pmc(101, "PMC1111111")], _efetch(_at(1))))
    # a file the store first reads later may carry newer state: it wins on equal revision
    store.apply(_parsed([_with_pmc(101, "PMC2222222")], _file(1400, _at(2))))
    assert _row(settings, 101)["pmcid"] == "PMC2222222"
    # and an EFetch after that read ranks after the file
    store.apply(_parsed([_with_pmc(101, "PMC4444444")], _efetch(_at(3))))
    row = _row(settings, 101)
    assert (row["pmcid"], row["source_kind"]) == ("PMC4444444", "eutils")
    # the file read again (a replay, a mirror, a re-run) changes nothing
    counts = store.apply(_parsed([_with_pmc(101, "PMC2222222")], _file(1400, _at(4))))
    assert (counts.updated, counts.unchanged) == (0, 1)
    assert _row(settings, 101)["pmcid"] == "PMC4444444"


def test_a_store_of_an_earlier_release_gets_its_files_as_of_times(settings: Settings) -> None:
    """Rows written before ``source_times`` existed: the files' times are taken from them
    once, so an EFetch after them outranks the baseline as in a new store."""
    from ingest import store as store_module
    from litpulse.core.schema import checkpoints, source_times

    engine = db.connect(settings)
    store = Store(engine)
    store.apply(_parsed([article_xml(101, edat=DAY)], _file(5, _at(1), "baseline")))
    with engine.begin() as conn:  # as a store of the release before
        conn.execute(source_times.delete())
        scope, key = store_module.SOURCE_TIMES_CHECKPOINT
        gone = conn.execute(checkpoints.delete().where(
            checkpoints.c.scope == scope, checkpoints.c.key == key
        )).rowcount  # fmt: skip
        assert gone == 1
    store_module._SOURCE_TIMES_CURRENT.clear()
    store.apply(_parsed([_with_pmc(101, "PMC5555555")], _efetch(_at(2))))
    row = _row(settings, 101)
    assert (row["pmcid"], row["source_kind"]) == ("PMC5555555", "eutils")
    with engine.connect() as conn:
        times = conn.execute(select(source_times.c.sequence, source_times.c.as_of)).all()
    assert times == [(nlm_sequence(26, 5), _at(1).timestamp())]


def test_ranks_are_one_order_and_a_read_at_the_same_instant_as_a_file_comes_after_it() -> None:
    from ingest.rules import SourceRanks

    f1, f2 = nlm_sequence(26, 1400), nlm_sequence(26, 1401)
    rank = SourceRanks([(_at(2).timestamp(), f2), (_at(1).timestamp(), f1)])
    files = [rank(f1, _at(1).timestamp()), rank(f2, _at(2).timestamp())]
    others = [rank(0, _at(day).timestamp()) for day in (1, 2, 3)] + [rank(0, 0.0)]
    assert rank(0, 0.0) < files[0] < others[0] < files[1] < others[1] < others[2]
    # a file read late (a gap filled) with a lower number than one read before: still
    # below it, and an EFetch after both reads ranks after both
    late = rank(nlm_sequence(26, 1399), _at(4).timestamp())
    assert late < files[0] and rank(0, _at(5).timestamp()) > files[1] > late


def test_a_later_deletion_of_a_deleted_record_moves_its_rank_as_a_touch_does(
    settings: Settings,
) -> None:
    """A tombstone met by a later deletion ranks from that deletion (as a live row's source
    moves to a later source repeating it), so a source ranked between the two deletions,
    applied after both, does not bring the record back: the later deletion says it is gone
    (the review's fuzzing found a killed run and a clean one ending apart on this)."""
    store = Store(db.connect(settings))
    store.apply(_parsed([article_xml(101, edat=DAY)], _file(1400, _at(1))))
    store.apply([Deletion(101, _file(1402, _at(2)))])
    counts = store.apply([Deletion(101, _efetch(_at(4)))])  # withdrawn, seen again later
    assert (counts.deleted, counts.unchanged) == (0, 1)
    row = _row(settings, 101)
    assert (row["is_deleted"], row["source_kind"]) == (True, "eutils")
    # an EFetch made between the two deletions, applied only now: older than the second
    store.apply(_parsed([article_xml(101, edat=DAY)], _efetch(_at(3))))
    assert _row(settings, 101)["is_deleted"]
