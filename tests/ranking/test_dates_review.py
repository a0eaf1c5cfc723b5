"""Review: PubMed dates, from the XML to what a user filters, sorts and exports.

Every record here goes the real way: PubMed XML through :func:`ingest.parse.parse_bytes`,
:class:`ingest.store.Store`, a real published index (:func:`ranking.refresh.refresh_index`
with a tiny random encoder), then :func:`ranking.search.search`, the HTTP API, the CLI,
the exports and a saved-search digest. All articles share the words "sepsis biomarker",
and the corpus is far smaller than ``LITPULSE_RERANK_CANDIDATES``, so a query with a large
``k`` returns exactly the articles that pass its filters.

The ``xfail(strict=True)`` tests state what a demanding user expects where the code does
otherwise; the plain ones pin what holds.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine

from ingest.parse import parse_bytes
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.settings import Settings
from litpulse.core.timeutil import iso, utcnow
from ranking import embed as em
from ranking.refresh import refresh_index
from ranking.search import search
from tests.tiny_encoder import build_tiny_encoder

TODAY = utcnow().date()
NEXT_YEAR = TODAY.year + 1
QUERY = "sepsis biomarker"


def _ymd(tag: str, y: object, m: object, d: object, attrs: str = "") -> str:
    return f"<{tag}{attrs}><Year>{y}</Year><Month>{m}</Month><Day>{d}</Day></{tag}>"


#: pmid -> (PubDate children, ArticleDate element or "", entrez date or None)
CORPUS: dict[int, tuple[str, str, dt.date | None]] = {
    1001: ("<Year>2019</Year>", "", None),  # year only
    1002: ("<MedlineDate>2019 Nov-Dec</MedlineDate>", "", None),
    1003: ("<Year>2019</Year><Season>Winter</Season>", "", None),
    1004: ("<MedlineDate>Winter 2023-2024</MedlineDate>", "", None),
    1005: ("<MedlineDate>Nov-Dec 2019</MedlineDate>", "", None),
    1006: ("<MedlineDate>Dec 2019-Jan 2020</MedlineDate>", "", None),
    # printed in the January 2020 issue, published online in November 2019
    1007: ("<Year>2020</Year><Month>Jan</Month>",
           _ymd("ArticleDate", 2019, 11, 20, ' DateType="Electronic"'), None),
    # ahead of print: the issue is next year, entered today
    1008: (f"<Year>{NEXT_YEAR}</Year><Month>Jan</Month>", "", TODAY),
    1009: ("<Year>2019</Year><Month>Feb</Month><Day>30</Day>", "", None),  # no such day
    1010: ("<Year>98</Year>", "", dt.date(1998, 5, 1)),  # two-digit year
    1011: ("<Year>2019</Year><Month>Jun</Month><Day>01</Day>", "", None),
    1012: ("<Year>2019</Year><Month>Dec</Month><Day>31</Day>", "", None),
    1013: ("<Year>2020</Year><Month>Jan</Month><Day>01</Day>", "", None),
    1014: ("<Year>2019</Year><Month>May</Month><Day>31</Day>", "", None),
    # an electronic date that does not exist: the publication date is used
    1015: ("<Year>2019</Year><Month>Mar</Month>",
           _ymd("ArticleDate", 2019, 2, 30, ' DateType="Electronic"'), None),
    # a two-digit year in the electronic date beside a good issue date
    1016: ("<Year>2020</Year><Month>Jan</Month><Day>15</Day>",
           _ymd("ArticleDate", 19, 11, 20, ' DateType="Electronic"'), None),
    1017: ("", "", dt.date(2019, 7, 4)),  # no publication date: entrez
    1018: (f"<Year>{TODAY.year}</Year><Month>{TODAY.month}</Month><Day>{TODAY.day}</Day>",
           "", None),
    1019: ("<Year>2020</Year><Month>Feb</Month><Day>29</Day>", "", None),  # leap day
}


def _article(pmid: int, pub: str, article_date: str, entrez: dt.date | None) -> str:
    status = ' PubStatus="entrez"'
    history = (
        "<History>" + _ymd("PubMedPubDate", entrez.year, entrez.month, entrez.day, status)
        + "</History>" if entrez else ""
    )
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE"><PMID Version="1">{pmid}</PMID>'
        f"<Article><Journal><JournalIssue><PubDate>{pub}</PubDate></JournalIssue>"
        f"<Title>J Test</Title></Journal>"
        f"<ArticleTitle>Sepsis biomarker study number {pmid}.</ArticleTitle>"
        f"<Abstract><AbstractText>Sepsis biomarker lactate in cohort {pmid}.</AbstractText>"
        f"</Abstract>{article_date}<Language>eng</Language></Article></MedlineCitation>"
        f"<PubmedData>{history}</PubmedData></PubmedArticle>"
    )


def _xml(pmids: list[int] | None = None) -> bytes:
    body = "".join(_article(p, *CORPUS[p]) for p in (pmids or list(CORPUS)))
    head = '<?xml version="1.0" encoding="utf-8"?>\n'
    return f"{head}<PubmedArticleSet>{body}</PubmedArticleSet>".encode()


def _records(pmids: list[int] | None = None) -> dict[int, Record]:
    items = parse_bytes(_xml(pmids), source_ref=SourceRef("file", "dates.xml"))
    out = {i.pmid: i for i in items if isinstance(i, Record)}
    assert set(out) == set(pmids or CORPUS), items
    return out


RECORDS = _records()


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-dates"), max_seq_length=32)


@pytest.fixture(autouse=True)
def _fresh_encoders() -> Iterator[None]:
    em.clear_cache()
    yield
    em.clear_cache()


def _world(settings: Settings, tiny: str) -> Settings:
    """The corpus stored through the ingest and a real index published over it."""
    s = settings.replace(model=tiny, max_seq_length=32, search_server_url="",
                         api_rate_per_second=10000.0, api_rate_burst=100000)
    Store(db.connect(s)).apply(list(_records().values()))
    report = refresh_index(s)
    assert report.published and report.size == len(CORPUS)
    return s


@pytest.fixture
def world(settings: Settings, tiny: str) -> Settings:
    """On SQLite and PostgreSQL."""
    return _world(settings, tiny)


@pytest.fixture
def sqlite_world(sqlite_settings: Settings, tiny: str) -> Settings:
    return _world(sqlite_settings, tiny)


def found(s: Settings, **filters: Any) -> dict[int, Any]:
    """PMID -> hit of every article passing ``filters``."""
    hits = search(s, QUERY, k=100, **filters)
    return {h.pmid: h for h in hits}


def _api(s: Settings) -> Any:
    from fastapi.testclient import TestClient

    from litpulse.app.api import create_app

    return TestClient(create_app(s))


def _cli(s: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from litpulse.app.cli import search as cli

    parser = argparse.ArgumentParser(prog="litpulse")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    capsys.readouterr()
    assert args.func(args, s) == 0
    return capsys.readouterr().out


# ----------------------------------------------------------------- parsing: what holds


@pytest.mark.parametrize(
    ("pmid", "best"),
    [
        (1001, dt.date(2019, 1, 1)),  # year only: its first day, pub_month stays None
        (1002, dt.date(2019, 11, 1)),  # "2019 Nov-Dec": the start of the period
        (1003, dt.date(2019, 1, 1)),  # "2019 Winter" (documented: January), inside 2019
        (1009, dt.date(2019, 2, 1)),  # 30 February: the day is dropped, the month kept
        (1015, dt.date(2019, 3, 1)),  # impossible electronic date -> the issue date
        (1017, dt.date(2019, 7, 4)),  # no publication date -> entrez date
        (1019, dt.date(2020, 2, 29)),  # a real leap day survives
        (1007, dt.date(2019, 11, 20)),  # the electronic date first (documented)
    ],
)
def test_best_date_of_messy_pubdates(pmid: int, best: dt.date) -> None:
    rec = RECORDS[pmid]
    assert rec.best_date == best
    assert rec.pub_date.raw or pmid == 1017


def test_partial_dates_keep_their_precision() -> None:
    assert (RECORDS[1001].pub_date.year, RECORDS[1001].pub_date.month) == (2019, None)
    assert RECORDS[1009].pub_date.day is None and RECORDS[1009].pub_date.month == 2
    assert RECORDS[1015].article_date is None
    assert RECORDS[1003].pub_date.season == "Winter"


# -------------------------------------------------------------- parsing: the defects


@pytest.mark.parametrize(
    ("pmid", "start"),
    [
        pytest.param(1004, dt.date(2023, 12, 1)),
        pytest.param(1005, dt.date(2019, 11, 1)),
        pytest.param(1006, dt.date(2019, 12, 1)),
    ],
)
def test_medline_date_ranges_mean_their_first_month(pmid: int, start: dt.date) -> None:
    rec = RECORDS[pmid]
    assert (rec.pub_date.year, rec.pub_date.month) == (start.year, start.month), rec.pub_date
    assert rec.best_date == start


@pytest.mark.parametrize(
    "pmid",
    [
        pytest.param(1010),
        pytest.param(1016),
    ],
)
def test_two_digit_year_is_not_taken_literally(pmid: int) -> None:
    rec = RECORDS[pmid]
    assert rec.best_date is not None and rec.best_date.year >= 1800, rec.best_date
    assert rec.pub_date.year is None or rec.pub_date.year >= 1800


# ------------------------------------------------- store: SQLite and PostgreSQL agree


def test_store_keeps_the_parsed_dates_on_both_databases_in_any_time_zone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UTC+14 for the process and (PostgreSQL) the session: no date shifts by a day."""
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        url = settings.effective_database_url
        args = ({"options": "-c timezone=Pacific/Kiritimati"}
                if url.startswith("postgresql") else {})
        db.connect(settings)  # the schema
        engine = create_engine(url, connect_args=args)
        try:
            store = Store(engine)
            store.apply(list(RECORDS.values()))
            for pmid, rec in RECORDS.items():
                art = store.get_article(pmid)
                pd = rec.pub_date
                assert (art["pub_year"], art["pub_month"], art["pub_day"]) == (
                    pd.year, pd.month, pd.day), pmid
                assert art["pub_date_raw"] == (pd.raw or None), pmid
                assert art["article_date"] == iso(rec.article_date), pmid
                assert art["entrez_date"] == iso(rec.entrez_date), pmid
                assert art["best_date"] == iso(rec.best_date), pmid
        finally:
            engine.dispose()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# ---------------------------------------------------------------- filters: what holds


def test_year_filter_keeps_every_2019_date_form(world: Settings) -> None:
    got = found(world, since="2019-01-01", until="2019-12-31")
    assert {1001, 1002, 1003, 1005, 1009, 1011, 1012, 1014, 1015, 1017} <= set(got)
    assert not {1008, 1010, 1013, 1018, 1019} & set(got)
    for hit in got.values():
        assert isinstance(hit.best_date, dt.date)
        assert dt.date(2019, 1, 1) <= hit.best_date <= dt.date(2019, 12, 31)


def test_filter_bounds_are_inclusive(world: Settings) -> None:
    got = found(world, since="2019-06-01", until="2019-12-31")
    assert {1011, 1012} <= set(got)  # exactly on either bound
    assert not {1013, 1014} & set(got)  # one day outside either bound
    # 1001 is dated "2019" only: every day of 2019 may be its day, June 1 included
    assert set(found(world, since="2019-06-01", until="2019-06-01")) == {1011, 1001}
    assert 1012 in found(world, since=dt.date(2019, 12, 31))
    assert 1013 not in found(world, until=dt.date(2019, 12, 31))


def test_future_date_is_capped_at_recency_one_and_sorts_cleanly(world: Settings) -> None:
    hits = found(world)
    ahead, today = hits[1008], hits[1018]
    assert ahead.best_date == dt.date(NEXT_YEAR, 1, 1)
    assert ahead.recency == pytest.approx(1.0) and ahead.recency <= 1.0
    assert today.recency == pytest.approx(1.0)
    assert all(0.0 <= h.recency <= 1.0 for h in hits.values())
    by_date = search(world, QUERY, k=100, sort="date")
    dates = [h.best_date for h in by_date]
    assert all(d is not None for d in dates)
    assert dates == sorted((d for d in dates if d is not None), reverse=True)
    assert {h.pmid for h in by_date} == set(CORPUS)


# ------------------------------------------------------------- filters: the defects


def test_year_only_article_is_not_silently_dropped_by_a_range_inside_its_year(
    world: Settings,
) -> None:
    got = found(world, since="2019-06-01", until="2019-12-31")
    assert 1001 in got, sorted(got)


def test_published_filter_counts_the_issue_date(world: Settings) -> None:
    got = found(world, since="2020-01-01", until="2020-12-31")
    assert 1007 in got, sorted(got)


# ingest.dates.period_end / ranking.search._issue_in: a period's later months count too;
# before, a season or a month range counted only its first month ("2019 Nov-Dec" was
# November: a December range silently left it out)
@pytest.mark.parametrize(
    ("pmid", "since", "until"),
    [
        (1002, "2019-12-01", "2019-12-31"),  # 2019 Nov-Dec
        (1005, "2019-12-10", "2019-12-20"),  # Nov-Dec 2019
        (1006, "2020-01-01", "2020-01-31"),  # Dec 2019-Jan 2020
        (1004, "2024-02-01", "2024-02-28"),  # Winter 2023-2024
        (1003, "2019-02-01", "2019-02-28"),  # 2019 Winter: January and February
    ],
)
def test_a_range_in_the_later_months_of_an_issue_period_meets_it(
    world: Settings, pmid: int, since: str, until: str
) -> None:
    assert pmid in found(world, since=since, until=until)


def test_a_range_after_an_issue_period_leaves_it_out(world: Settings) -> None:
    assert not {1002, 1005} & found(world, since="2020-01-01", until="2020-12-31").keys()
    assert 1004 not in found(world, since="2024-03-01", until="2024-12-31")
    assert 1006 not in found(world, since="2020-02-01", until="2020-12-31")
    assert 1003 not in found(world, since="2019-03-01", until="2019-12-31")


# ------------------------------------------- API, CLI, exports, digest: consistency


def test_api_cli_and_search_agree_on_a_date_filter(
    sqlite_world: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    s = sqlite_world
    direct = {p: iso(h.best_date) for p, h in found(s, since="2019-06-01",
                                                    until="2019-12-31").items()}
    assert direct and 1011 in direct and 1012 in direct
    resp = _api(s).get("/search", params={"q": QUERY, "k": 100, "since": "2019-06-01",
                                          "until": "2019-12-31"})
    assert resp.status_code == 200, resp.text
    api = {r["pmid"]: r["best_date"] for r in resp.json()["results"]}
    out = _cli(s, ["search", QUERY, "-k", "100", "--since", "2019-06-01",
                   "--until", "2019-12-31", "--json"], capsys)
    cli = {r["pmid"]: r["best_date"] for r in json.loads(out)["results"]}
    assert api == direct == cli
    # a malformed or reversed range is refused, not read as something else
    client = _api(s)
    assert client.get("/search", params={"q": QUERY, "since": "2019"}).status_code == 422
    assert client.get("/search", params={"q": QUERY, "since": "2019-12-31",
                                         "until": "2019-01-01"}).status_code == 400


def test_saved_search_digest_filters_dates_like_search(
    sqlite_settings: Settings, tiny: str
) -> None:
    from litpulse.pipeline.digest import matches_of, run_digest
    from litpulse.pipeline.saved_searches import add_search
    from ranking.search import SearchFilters

    s = sqlite_settings.replace(model=tiny, max_seq_length=32, search_server_url="")
    engine = db.connect(s)
    saved = add_search(s, name="sepsis 2019", query=QUERY, owner="cli:test", min_score=0.0,
                       filters=SearchFilters(since=dt.date(2019, 6, 1),
                                           until=dt.date(2019, 12, 31)))
    time.sleep(0.01)
    Store(engine).apply(list(_records().values()))
    assert refresh_index(s).published
    report = run_digest(s)
    assert not report.failures, report
    digest = {m.pmid for m in matches_of(engine, saved.id)}
    assert digest == set(found(s, since="2019-06-01", until="2019-12-31"))


def test_exports_do_not_invent_a_day_for_a_year_only_article(sqlite_world: Settings) -> None:
    client = _api(sqlite_world)
    params = {"q": QUERY, "k": 100, "since": "2019-01-01", "until": "2019-12-31"}
    ris = client.get("/export", params={**params, "format": "ris"}).text
    record = next(r for r in ris.split("ER  -") if "PMID:1001" in r)
    da = [ln for ln in record.splitlines() if ln.startswith("DA  - ")]
    assert da in ([], ["DA  - 2019///"]), da  # RIS: unknown parts left empty
    rows = list(csv.DictReader(io.StringIO(client.get(
        "/export", params={**params, "format": "csv"}).text)))
    row = next(r for r in rows if r["pmid"] == "1001")
    assert row["year"] == "2019" and row["date"] in ("", "2019"), row


def test_cli_table_does_not_show_a_day_pubmed_never_gave(
    sqlite_world: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _cli(sqlite_world, ["search", QUERY, "-k", "100", "--since", "2019-01-01",
                              "--until", "2019-01-31"], capsys)
    line = next(ln for ln in out.splitlines() if " 1001 " in f" {ln} ")
    assert "2019-01-01" not in line, line


def test_status_newest_date_is_not_in_the_future(sqlite_world: Settings) -> None:
    resp = _api(sqlite_world).get("/status")
    assert resp.status_code == 200, resp.text
    newest = resp.json()["articles"]["newest_best_date"]
    assert newest is not None and dt.date.fromisoformat(newest[:10]) <= TODAY, newest
