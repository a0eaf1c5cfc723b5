"""Review of the lookup by DOI (8a42cb3): ``doi_key``, ``Store.pmids_by_doi`` /
``article_by_doi``, ``ix_articles_doi`` and its upgrade, ``litpulse article DOI`` and
``GET /articles/doi/{doi}``.

Each strict xfail is a defect a researcher or an operator meets; the plain tests are
behaviours that hold.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError

from ingest.files import ingest_files
from ingest.records import Deletion
from ingest.store import Store
from litpulse.app.api import create_app
from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from ranking.search import checked_query
from tests.ingest.test_files import article_xml, write_xml
from tests.ingest.test_store import make_record, src

#: A SICI DOI as Wiley registered them: ``<>;():`` and the check character ``#``.
SICI = "10.1002/(SICI)1097-0258(19980115)17:1<3::AID-SIM1>3.0.CO;2-#"


def _with_doi(pmid: int, doi: str | None, **kw: Any) -> Any:
    return dataclasses.replace(make_record(pmid, **kw), doi=doi)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _index_sql(engine: Engine) -> str:
    """The definition of ``ix_articles_doi`` as the database holds it."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
        else:
            sql = "SELECT indexdef FROM pg_indexes WHERE indexname = :n"
        return str(conn.execute(text(sql), {"n": "ix_articles_doi"}).scalar_one())


def _pg_index_valid(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = 'ix_articles_doi'"
                )
            ).scalar_one()
        )


def _restore_doi_index(engine: Engine) -> None:
    """Put the schema's index back (the PostgreSQL test database outlives the test)."""
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX IF EXISTS ix_articles_doi"))
    db.add_missing_indexes(engine)


# --------------------------------------------------------------------------- as typed


@pytest.mark.parametrize(
    "typed",
    [
        "doi.org/10.1007/S00125-020-05000-1",  # journals print it so; address bars show it
        "DOI 10.1007/s00125-020-05000-1",  # Springer's article header
        "https://doi.org/10.1007%2Fs00125-020-05000-1",  # a link built by a tool
        "10.1007/s00125\u2010020\u201005000\u20101",  # U+2010 HYPHEN, copied from a PDF
        "10.1007/s00125-020-05000-\u00ad1",  # a soft hyphen where the PDF broke the line
    ],
)
def test_a_doi_pasted_as_found_in_the_wild_shows_its_article(
    sqlite_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    typed: str,
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    Store(db.connect(sqlite_settings)).apply([_with_doi(41, "10.1007/s00125-020-05000-1")])
    try:
        code = main(["article", typed, "--json"])
    except SystemExit as exc:  # refused by argparse: "not a PMID or a DOI"
        code = exc.code
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["pmid"] == 41


# --------------------------------------------------------------- parser vs doi_key


def _xml_with_doi(pmid: int, elocation: str) -> str:
    """:func:`article_xml` with PubMed's ``ELocationID`` of type doi holding ``elocation``
    (the ArticleIdList has no DOI, as in many records)."""
    return article_xml(pmid).replace(
        "</ArticleTitle>",
        f'</ArticleTitle><ELocationID EIdType="doi" ValidYN="Y">{elocation}</ELocationID>',
    )


@pytest.mark.parametrize(
    ("elocation", "doi"),
    [
        ("doi: 10.1000/abc.1", "10.1000/abc.1"),
        ("https://dx.doi.org/10.1000/abc.1", "10.1000/abc.1"),
        ("http://doi.org/10.1000/abc.1", "10.1000/abc.1"),
        (
            "https://doi.org/10.1002/(SICI)1097-0258(19980115)17:1%3C3::AID-SIM1%3E3.0.CO;2-4",
            "10.1002/(SICI)1097-0258(19980115)17:1<3::AID-SIM1>3.0.CO;2-4",
        ),
    ],
)
def test_a_parsed_record_is_found_by_the_doi_pubmed_gave_it(
    settings: Settings, tmp_path: Path, elocation: str, doi: str
) -> None:
    ingest_files(
        settings, [write_xml(tmp_path / "pubmed26n0001.xml", _xml_with_doi(51, elocation))]
    )
    store = Store(db.connect(settings))
    assert store.pmids_by_doi(elocation) == [51]  # as PubMed wrote it
    assert store.pmids_by_doi(doi) == [51]  # the DOI itself
    assert store.get_article(51)["doi"] == doi


def test_a_parsed_doi_with_a_prefix_or_a_full_stop_is_found(
    settings: Settings, tmp_path: Path
) -> None:
    path = write_xml(
        tmp_path / "pubmed26n0001.xml",
        _xml_with_doi(52, "doi:10.1000/XYZ.2."),
        _xml_with_doi(53, "https://doi.org/10.1000/xyz.3"),
    )
    ingest_files(settings, [path])
    store = Store(db.connect(settings))
    assert store.get_article(52)["doi"] == "10.1000/XYZ.2"
    assert store.pmids_by_doi("DOI: 10.1000/xyz.2.") == [52]
    assert store.pmids_by_doi("https://dx.doi.org/10.1000/XYZ.3") == [53]


# ------------------------------------------------------------------------ database


def test_a_doi_with_a_capital_beyond_ascii_is_found_as_typed(engine: Engine) -> None:
    Store(engine).apply([_with_doi(61, "10.4000/Études.123")])
    assert Store(engine).pmids_by_doi("10.4000/Études.123") == [61]


def test_the_lookup_by_doi_reads_its_index_on_sqlite(sqlite_settings: Settings) -> None:
    from litpulse.core.schema import articles

    engine = db.connect(sqlite_settings)
    Store(engine).apply([_with_doi(p, f"10.1000/n.{p}") for p in range(1, 60)])
    # the store as create_all makes it in a process where the set gave is_deleted last
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_articles_is_deleted"))
    next(i for i in articles.indexes if i.name == "ix_articles_is_deleted").create(engine)
    engine.dispose()  # connections that read the schema anew, as a new process does
    seen: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "lower(articles.doi)" in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        assert Store(engine).pmids_by_doi("10.1000/N.7") == [7]
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    statement, params = seen[0]
    with engine.connect() as conn:
        plan = " ".join(
            str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
        )
    assert "ix_articles_doi" in plan, plan


def test_a_doi_shared_by_several_pmids_shows_the_first_and_names_the_live_others(
    env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    Store(db.connect(env)).apply(
        [
            _with_doi(73, "10.1000/Dup"),
            _with_doi(71, "10.1000/dup", title="First"),
            _with_doi(72, "10.1000/DUP"),
            Deletion(72, src(1)),
        ]
    )
    assert main(["article", "DOI:10.1000/dup", "--json"]) == 0
    art = json.loads(capsys.readouterr().out)
    assert (art["pmid"], art["title"], art["same_doi"]) == (71, "First", [73])
    assert main(["article", "10.1000/none", "--json"]) == 1
    assert "10.1000/none" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["article", "10.12/short", "--json"])
    assert usage.value.code == 2


# ------------------------------------------------------------------------ withdrawn


def test_a_withdrawn_articles_doi_answers_as_its_pmid_does(
    settings: Settings, client: TestClient
) -> None:
    engine = db.connect(settings)
    Store(engine).apply([_with_doi(81, "10.1000/Gone.81"), Deletion(81, src(1))])
    assert Store(engine).get_article(81)["doi"] == "10.1000/Gone.81"  # still stored
    by_pmid = client.get("/articles/81")
    assert by_pmid.status_code == 410
    by_doi = client.get("/articles/doi/10.1000/gone.81")
    assert by_doi.status_code == 410, by_doi.text
    assert by_doi.json()["pmid"] == 81


# --------------------------------------------------------------------------- API


def test_the_api_finds_a_sici_doi_percent_encoded_in_the_path(
    settings: Settings, client: TestClient
) -> None:
    Store(db.connect(settings)).apply([_with_doi(91, SICI), _with_doi(92, "10.1000/q?x")])
    for path in (
        quote(SICI, safe="/"),
        quote(SICI, safe=""),  # '/' as %2F too
        "https://dx.doi.org/" + quote(quote(SICI, safe="/"), safe="/%"),
    ):
        r = client.get(f"/articles/doi/{path}")
        assert r.status_code == 200, (path, r.text)
        assert r.json()["pmid"] == 91 and r.json()["same_doi"] == []
    assert client.get("/articles/doi/" + quote("10.1000/Q?X", safe="/")).json()["pmid"] == 92
    assert client.get("/articles/doi/not-a-doi").status_code == 400
    spec = client.get("/openapi.json").json()["paths"]
    assert [p["name"] for p in spec["/articles/doi/{doi}"]["get"]["parameters"]] == ["doi"]


def test_the_openapi_400_of_the_doi_lookup_says_what_a_doi_is(sqlite_settings: Settings) -> None:
    with TestClient(create_app(sqlite_settings)) as c:
        op = c.get("/openapi.json").json()["paths"]["/articles/doi/{doi}"]["get"]
    assert "DOI" in op["responses"]["400"]["description"]


# ------------------------------------------------------------------------ search


def test_the_search_refusal_of_a_sici_doi_names_a_command_and_url_that_work() -> None:
    with pytest.raises(ConfigError) as refused:
        checked_query(SICI)
    message = str(refused.value)
    key = SICI.lower()
    assert f"litpulse article {shlex.quote(key)}" in message, message
    assert f"/articles/doi/{quote(key, safe='/')}" in message, message


def test_a_doi_searched_alone_is_refused_naming_the_lookup() -> None:
    for typed in ("https://doi.org/10.1056/NEJMoa2034577", "doi:10.1056/NEJMoa2034577."):
        with pytest.raises(ConfigError, match=r"litpulse article 10\.1056/nejmoa2034577"):
            checked_query(typed)


# ----------------------------------------------------------------------- upgrade


def test_an_index_of_the_name_on_another_expression_is_replaced(engine: Engine) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_articles_doi"))
            conn.execute(text("CREATE INDEX ix_articles_doi ON articles (doi)"))
        db.add_missing_indexes(engine)
        assert "lower(" in _index_sql(engine).lower(), _index_sql(engine)
    finally:
        _restore_doi_index(engine)


def test_an_invalid_doi_index_left_by_a_concurrent_build_is_rebuilt(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    if not settings.database_url:
        pytest.skip("PostgreSQL only: SQLite has no invalid indexes")
    engine = db.connect(settings)
    Store(engine).apply([_with_doi(11, "10.1000/a"), _with_doi(12, "10.1000/b")])
    writer = engine.connect()  # the nightly, in the middle of a batch
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_articles_doi"))
        writer.execute(text("UPDATE articles SET cited_by_in_corpus = 0 WHERE pmid = 11"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as op:
            op.execute(text("SET lock_timeout = 300"))
            with pytest.raises(DBAPIError, match="lock timeout"):
                op.execute(
                    text("CREATE INDEX CONCURRENTLY ix_articles_doi ON articles (lower(doi))")
                )
        writer.rollback()
        assert _pg_index_valid(engine) is False  # left behind, as PostgreSQL documents
        with caplog.at_level("WARNING", logger="litpulse.core.db"):
            made = db.add_missing_indexes(engine)  # the next start
        assert _pg_index_valid(engine) or "ix_articles_doi" in caplog.text, made
    finally:
        writer.close()
        _restore_doi_index(engine)


def test_concurrent_openers_of_an_older_store_both_end_with_the_index(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_articles_doi"))
    Store(engine).apply([_with_doi(21, "10.1000/c")])
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            db.add_missing_indexes(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert "ix_articles_doi" in db.index_names(engine, "articles")
    assert Store(engine).pmids_by_doi("10.1000/C") == [21]
