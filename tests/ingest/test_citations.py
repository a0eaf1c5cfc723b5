"""iCite refresh against the emulator: fields filled, unknown PMIDs, policy, retries, CLI."""

from __future__ import annotations

import argparse
import datetime as dt
import json

import pytest
from sqlalchemy import select, update

from ingest.citations import (
    ICITE_FIELDS,
    CitationCounts,
    due_pmids,
    icite_values,
    parse_icite,
    refresh_citations,
)
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.app.cli import COMMANDS
from litpulse.app.cli import citations as cli
from litpulse.core import db
from litpulse.core.errors import ConfigError, TransientSourceError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.emulator import Emulator

TODAY = dt.date.today()


def _seed(
    settings: Settings, pmids_dates: dict[int, dt.date], refs: dict[int, tuple[int, ...]]
) -> None:
    src = SourceRef("generated", "test")
    records = [
        Record(
            pmid=p,
            version=1,
            title=f"Article {p}",
            source=src,
            entrez_date=d,
            references=refs.get(p, ()),
        )
        for p, d in pmids_dates.items()
    ]
    Store(db.connect(settings)).apply(records)


def _row(settings: Settings, pmid: int) -> dict[str, object]:
    with db.connect(settings).connect() as conn:
        return dict(conn.execute(select(articles).where(articles.c.pmid == pmid)).one()._mapping)


def test_fields_filled_and_unknown_pmid_keeps_its_corpus_count(
    emu: Emulator, settings: Settings
) -> None:
    # 2 and 3 cite 1 inside the corpus; iCite knows 2 and 3 but not 1
    _seed(settings, {1: TODAY, 2: TODAY, 3: TODAY}, {3: (1,), 2: (1,)})
    emu.set_icite(
        3,
        citation_count=42,
        relative_citation_ratio=2.5,
        citations_per_year=14.0,
        year=2023,
        provisional="Yes",
    )
    emu.set_icite(
        2,
        citation_count=0,
        relative_citation_ratio=None,
        citations_per_year=0.0,
        year=2024,
        provisional="No",
    )
    s = emu.configure(settings)
    counts = refresh_citations(s)
    assert counts == CitationCounts(requested=3, updated=2, unknown=1)
    three = _row(s, 3)
    assert (three["citation_count"], three["relative_citation_ratio"]) == (42, 2.5)
    assert three["citations_per_year"] == 14.0 and three["icite_year"] == 2023
    assert three["icite_provisional"] is True and three["icite_fetched_at"] is not None
    two = _row(s, 2)
    assert two["citation_count"] == 0 and two["relative_citation_ratio"] is None
    assert two["icite_provisional"] is False
    one = _row(s, 1)  # unknown to iCite: keeps its in-corpus count, marked as asked
    assert one["citation_count"] is None and one["cited_by_in_corpus"] == 2
    assert one["icite_fetched_at"] is not None
    run = Store(db.connect(s)).runs(1)[0]
    assert run["source"] == "citations" and run["details"]["citations"] == counts.to_dict()
    # everything is fresh now: a second refresh asks for nothing
    before = len(emu.requests("/icite"))
    assert refresh_citations(s).requested == 0
    assert len(emu.requests("/icite")) == before


def test_refresh_policy_depends_on_article_age(sqlite_settings: Settings) -> None:
    ages = {10: 30, 11: 30, 12: 800, 13: 800, 14: 4000, 15: 4000}  # age in days
    _seed(sqlite_settings, {p: TODAY - dt.timedelta(days=a) for p, a in ages.items()}, {})
    engine = db.connect(sqlite_settings)
    now = db.utcnow()
    fetched = {10: 8, 11: 6, 12: 31, 13: 29, 14: 181, 15: 179}  # days since last fetch
    with engine.begin() as conn:
        for p, d in fetched.items():
            conn.execute(
                update(articles)
                .where(articles.c.pmid == p)
                .values(icite_fetched_at=now - dt.timedelta(days=d))
            )
    assert due_pmids(engine, now=now) == [10, 12, 14]


def test_cap_per_run_takes_never_fetched_then_newest(sqlite_settings: Settings) -> None:
    ages = {20: 900, 21: 10, 22: 400, 23: 5000, 24: 30}  # age in days
    _seed(sqlite_settings, {p: TODAY - dt.timedelta(days=a) for p, a in ages.items()}, {})
    engine = db.connect(sqlite_settings)
    now = db.utcnow()
    with engine.begin() as conn:  # 24 was fetched long ago: due, but after never-fetched ones
        conn.execute(
            update(articles).where(articles.c.pmid == 24)
            .values(icite_fetched_at=now - dt.timedelta(days=60))
        )  # fmt: skip
    assert due_pmids(engine, now=now) == [20, 21, 22, 23, 24]
    assert due_pmids(engine, now=now, limit=2) == [21, 22]  # never fetched, newest first
    assert due_pmids(engine, now=now, limit=4) == [20, 21, 22, 23]


def test_batches_retries_and_explicit_pmids(emu: Emulator, sqlite_settings: Settings) -> None:
    pmids = list(range(100, 125))
    _seed(sqlite_settings, dict.fromkeys(pmids, TODAY), {})
    for p in pmids:
        emu.set_icite(p, citation_count=p)
    emu.faults.add("503", path="/icite", times=1)
    emu.faults.add("garbage", path="/icite", times=1)
    s = emu.configure(sqlite_settings, icite_batch=10)
    counts = refresh_citations(s, pmids=[*pmids[:15], 999_999])  # 999999 is not in the store
    assert counts == CitationCounts(requested=15, updated=15, unknown=0)
    sent = [r for r in emu.requests("/icite") if r.fault is None]
    assert [len(r.params["pmids"].split(",")) for r in sent] == [10, 5]
    assert _row(s, 114)["citation_count"] == 114 and _row(s, 115)["citation_count"] is None
    assert emu.max_rate("/icite") <= s.rate_limit


def test_parse_icite_rejects_unexpected_bodies() -> None:
    with pytest.raises(TransientSourceError):
        parse_icite({"error": "bad"})
    assert parse_icite({"data": [{"pmid": "7", "citation_count": "3", "provisional": True}]}) == {
        7: {
            "citation_count": 3,
            "relative_citation_ratio": None,
            "citations_per_year": None,
            "icite_year": None,
            "icite_provisional": True,
        }
    }
    with pytest.raises(ConfigError):
        CitationCounts(requested=-1)


def test_cli_citations_refresh_json(
    emu: Emulator, sqlite_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(sqlite_settings, {5: TODAY, 6: TODAY}, {})
    emu.set_icite(5, citation_count=9)
    s = emu.configure(sqlite_settings)
    parser = argparse.ArgumentParser(prog="litpulse")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["citations", "refresh", "--pmid", "5", "--json"])
    assert args.func(args, s) == 0
    assert json.loads(capsys.readouterr().out) == {"requested": 1, "updated": 1, "unknown": 0}
    args = parser.parse_args(["citations", "refresh"])
    assert args.func(args, s) == 0
    assert "unknown" in capsys.readouterr().out
    assert "citations" in COMMANDS


def test_icite_values_is_the_one_mapping_for_api_and_snapshot_rows() -> None:
    api = {"pmid": 7, "citation_count": 3, "relative_citation_ratio": 1.5,
           "citations_per_year": 0.5, "year": 2020, "provisional": "Yes"}  # fmt: skip
    snapshot = {k: str(v) for k, v in api.items()} | {"provisional": "True"}
    assert icite_values(api) == icite_values(snapshot, strict=True)
    assert icite_values(api) == (7, {
        "citation_count": 3, "relative_citation_ratio": 1.5, "citations_per_year": 0.5,
        "icite_year": 2020, "icite_provisional": True,
    })  # fmt: skip
    blank = {"pmid": "8", "citation_count": "", "relative_citation_ratio": "", "provisional": ""}
    assert icite_values(blank, strict=True) == (8, dict.fromkeys(ICITE_FIELDS))
    # unreadable values: NULL from the API, an error (a malformed row) from the snapshot
    for field, bad in [("citation_count", "many"), ("relative_citation_ratio", "inf"),
                       ("year", "1e12"), ("provisional", "Maybe"), ("pmid", "0")]:  # fmt: skip
        row = {**snapshot, field: bad}
        with pytest.raises(ValueError, match=field):
            icite_values(row, strict=True)
        if field != "pmid":
            lenient = icite_values(row)
            assert lenient is not None and None in lenient[1].values()
    assert icite_values({**api, "pmid": "x"}) is None
