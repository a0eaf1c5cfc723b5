"""The HTTP API: status codes, search JSON, exports that parse, feedback, the page."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from litpulse.core import db
from litpulse.core.schema import feedback
from litpulse.core.settings import Settings
from tests.litpulse.app.apistore import UNLIMITED, clone_store
from tests.ranking.corpus import ARTICLES, load_corpus, real_corpus

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import SearchSpec, create_app  # noqa: E402
from litpulse.app.tokens import create_token  # noqa: E402


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return real_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def store(real: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """This module's own copy of the corpus (it records feedback), without rate limits."""
    return clone_store(real, tmp_path_factory.mktemp("api") / "home", **UNLIMITED)


@pytest.fixture(scope="module")
def client(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def ana(store: Settings) -> dict[str, str]:
    """The Authorization header of expert ana's API token."""
    return {"Authorization": f"Bearer {create_token(store, 'ana').token}"}


def test_search_returns_ranked_explained_results(client: TestClient) -> None:
    r = client.get("/search", params={"q": "malaria vaccine for children", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "malaria vaccine for children"
    assert body["index_version"].startswith("ix-") and body["model_version"] == "base"
    results = body["results"]
    assert len(results) == 3 and results[0]["pmid"] == 201
    assert results[0]["title"] == ARTICLES[201]["title"]
    for hit in results:
        assert {"pmid", "title", "journal", "pub_year", "score", "similarity", "recency",
                "citation", "explanation"} <= set(hit)
        parts = hit["explanation"]["components"]
        assert sum(p["contribution"] for p in parts.values()) == pytest.approx(hit["score"])
    scores = [h["score"] for h in results]
    assert scores == sorted(scores, reverse=True)


def test_search_by_author_over_http(client: TestClient) -> None:
    # every article of the corpus is Doe J's, with the Test Consortium as last author
    plain = client.get("/search", params={"q": "malaria", "k": 20}).json()
    by = client.get("/search", params={"q": "malaria AND Doe J[au]", "k": 20})
    assert by.status_code == 200, by.text
    assert by.json()["authors"] == ["Doe J[au]"]
    assert [h["pmid"] for h in by.json()["results"]] == [h["pmid"] for h in plain["results"]]
    last = client.get("/search", params={"q": 'malaria AND "Test Consortium"[lastau]',
                                         "k": 20}).json()  # fmt: skip
    assert [h["pmid"] for h in last["results"]] == [h["pmid"] for h in plain["results"]]
    for q in ("malaria AND Roe J[au]", "malaria AND Doe J[lastau]", "malaria NOT Doe J[au]"):
        r = client.get("/search", params={"q": q, "mode": "semantic"})
        assert r.status_code == 200 and r.json()["results"] == [], q
    alone = client.get("/search", params={"q": "Doe J[au]", "k": 20})  # the author's list
    assert alone.status_code == 200 and alone.json()["mode"] == "lexical"
    live = [p for p, a in ARTICLES.items() if not a.get("deleted") and not a.get("retracted")]
    listed = alone.json()["results"]
    assert len(listed) == min(20, len(live)) and {h["pmid"] for h in listed} <= set(live)
    assert [h["score"] for h in listed] == sorted((h["score"] for h in listed), reverse=True)
    excluded = client.get("/search", params={"q": "NOT Doe J[au]"})
    assert excluded.status_code == 400 and "only excludes" in excluded.json()["detail"]
    unread = client.get("/search", params={"q": "malaria Doe J[au]"})
    assert unread.status_code == 400 and "AND" in unread.json()["detail"]


def test_search_modes_sort_and_lexical_explanation(client: TestClient) -> None:
    r = client.get("/search", params={"q": "artemisinin malaria resistance", "k": 3})
    body = r.json()
    assert r.status_code == 200 and body["mode"] == "hybrid" and body["sort"] == "score"
    top = next(h for h in body["results"] if h["pmid"] == 202)
    assert top["bm25"] > 0
    lexical = top["explanation"]["components"]["lexical"]
    assert {"artemisinin", "malaria", "resist"} <= {t["term"] for t in lexical["terms"]}
    assert sum(t["weight"] for t in lexical["terms"]) == pytest.approx(lexical["raw"], rel=1e-4)
    r = client.get("/search", params={"q": "malaria", "mode": "lexical", "sort": "date",
                                      "w_lexical": 0.3, "k": 10})
    body = r.json()
    assert body["mode"] == "lexical" and body["sort"] == "date"
    assert {h["pmid"] for h in body["results"]} == {201, 202, 203}
    assert [h["pmid"] for h in body["results"]] == [201, 202, 203]  # newest first
    assert body["options"]["lexical_share"] == 0.3
    semantic = client.get("/search", params={"q": "malaria", "mode": "semantic"}).json()
    assert semantic["mode"] == "semantic"
    assert semantic["results"][0]["explanation"]["components"]["lexical"]["weight"] == 0


def test_search_filters_and_weights_over_http(client: TestClient) -> None:
    r = client.get("/search", params=[("q", "gene editing"), ("k", "20"), ("mesh", "humans"),
                                      ("mesh", "Gene Editing"), ("language", "eng")])
    assert r.status_code == 200, r.text
    assert {h["pmid"] for h in r.json()["results"]} == {101, 107}
    r = client.get("/search", params={"q": "gene editing", "type": "Review", "k": 5})
    assert [h["pmid"] for h in r.json()["results"]] == [102]
    r = client.get("/search", params={"q": "gene editing", "k": 20, "include_retracted": "true",
                                      "since": "2000-01-01", "has_abstract": "true"})
    got = {h["pmid"] for h in r.json()["results"]}
    assert 105 in got and 103 not in got and 107 not in got
    r = client.get("/search", params={"q": "diabetes", "w_sim": 0.1, "w_recency": 0,
                                      "w_citation": 3, "half_life": 30, "k": 3})
    body = r.json()
    assert body["results"][0]["pmid"] == 402  # RCR 15 wins when citations dominate
    assert body["options"]["w_citation"] == 3 and body["options"]["half_life_days"] == 30


@pytest.mark.parametrize(
    "params",
    [
        {},                                   # q missing
        {"q": ""},
        {"q": "x" * 513},
        {"q": "malaria", "k": 0},
        {"q": "malaria", "k": 101},
        {"q": "malaria", "k": "ten"},
        {"q": "malaria", "since": "yesterday"},
        {"q": "malaria", "until": "2024-02-30"},
        {"q": "malaria", "w_sim": -1},
        {"q": "malaria", "w_recency": "nan"},
        {"q": "malaria", "w_citation": "inf"},
        {"q": "malaria", "half_life": 0},
        {"q": "malaria", "has_abstract": "perhaps"},
        {"q": "malaria", "language": "x" * 50},
        {"q": "   "},                          # the schema asks for a non-space character
        {"q": "\u2028\x1c\x85\ufeff"},
        {"q": "malaria", "mesh": "m" * 300},  # each term at most 255 characters
        {"q": "malaria", "since": "1704067200"},  # a date, not a Unix time
        {"q": "malaria", "mesh": [f"m{i}" for i in range(21)]},  # 20 terms at most
        {"q": "malaria", "mode": "fuzzy"},
        {"q": "malaria", "sort": "title"},
        {"q": "malaria", "w_lexical": 2},
    ],
)
def test_bad_search_input_is_422(client: TestClient, params: dict[str, object]) -> None:
    r = client.get("/search", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_semantic_errors_are_400_with_a_message(client: TestClient) -> None:
    r = client.get("/search", params={"q": "malaria", "since": "2024-05-01",
                                      "until": "2024-01-01"})
    assert r.status_code == 400 and "since" in r.json()["detail"]
    r = client.get("/search", params={"q": "malaria", "w_sim": 0, "w_recency": 0,
                                      "w_citation": 0})
    assert r.status_code == 400 and "at least one" in r.json()["detail"]
    spec = client.get("/openapi.json").json()
    for path in ("/search", "/export"):  # what the schema cannot say is documented
        assert "400" in spec["paths"][path]["get"]["responses"]


@pytest.mark.parametrize(
    "url",
    [
        "/search?q=%00%ff%fe",
        "/search?q=' OR 1=1 --&k=5",
        "/search?q=malaria&k=99999999999999999999999",
        "/search?q=malaria&k=-5&since=0000-00-00",
        "/search?q=malaria&mesh=%25&type=%27%22%3B",
        "/search?q=<script>alert(1)</script>",
        "/search?q=malaria&w_sim=1e309",
        "/export?q=malaria&format=pdf",
        "/export?q=malaria&format=ris&k=100000",
        "/articles/abc",
        "/articles/-1",
        "/articles/0",
        "/articles/99999999999999999999999999",
        "/articles/1e5",
        "/nothing-here",
    ],
)
def test_garbage_never_500(client: TestClient, url: str) -> None:
    r = client.get(url)
    assert 400 <= r.status_code < 500 or r.status_code == 200, (r.status_code, r.text)


def test_articles_endpoint(client: TestClient) -> None:
    r = client.get("/articles/201")
    assert r.status_code == 200
    body = r.json()
    assert body["pmid"] == 201 and body["title"] == ARTICLES[201]["title"]
    assert body["relative_citation_ratio"] == 2.0
    assert body["links"] == {"pubmed": "https://pubmed.ncbi.nlm.nih.gov/201/",
                             "doi": "https://doi.org/10.1000/test.201"}  # as hits carry them
    r = client.get("/articles/987654")
    assert r.status_code == 404 and "987654" in r.json()["detail"]


def test_an_article_by_doi(client: TestClient) -> None:
    for doi in ("10.1000/test.201", "10.1000/TEST.201", "doi:10.1000/test.201",
                "https://doi.org/10.1000/test.201"):
        r = client.get(f"/articles/doi/{doi}")
        assert r.status_code == 200, (doi, r.text)
        body = r.json()
        assert body["pmid"] == 201 and body["title"] == ARTICLES[201]["title"]
        assert body["same_doi"] == []
    r = client.get("/articles/doi/10.1000/none")
    assert r.status_code == 404 and "10.1000/none" in r.json()["detail"]
    assert client.get("/articles/doi/malaria").status_code == 400
    # a DOI typed as a search names the lookup
    r = client.get("/search", params={"q": "doi:10.1000/test.201"})
    assert r.status_code == 400 and "/articles/doi/10.1000/test.201" in r.json()["detail"]
    # ... and where it is, for a client to follow (the page does): the server's reading
    for q, path in (("doi:10.1000/TEST.201", "/articles/doi/10.1000/test.201"),
                    ("https://doi.org/10.1000%2Ftest.201", "/articles/doi/10.1000/test.201"),
                    ("PMID: 201", "/articles/201"), ("\uff12\uff10\uff11", "/articles/201")):
        r = client.get("/search", params={"q": q})
        assert r.status_code == 400 and r.json()["article"] == path, q
        assert client.get(path).json()["pmid"] == 201
    r = client.get("/search", params={"q": "malaria[ti]"})
    assert r.status_code == 400 and "article" not in r.json()  # other refusals: none
    assert client.get("/search", params={"q": "0"}).status_code == 200  # no PMID: searched


def test_status_reports_freshness(client: TestClient) -> None:
    r = client.get("/status")
    assert r.status_code == 200
    s = r.json()
    assert s["articles"]["live"] == len(ARTICLES) - 1
    assert s["articles"]["deleted"] == 1 and s["articles"]["retracted"] == 1
    newest = max(a["best"] for a in ARTICLES.values() if a["best"] and not a.get("deleted"))
    assert s["articles"]["newest_best_date"] == newest.isoformat()
    assert s["index"]["size"] == len(ARTICLES) - 1 and s["index"]["published_at"]
    assert s["index"]["model_version"] == "base" and s["model_version"] == "base"
    assert s["scoring"]["recency_half_life_days"] == 365.0
    assert s["missing"] == {"waiting": 0, "given_up": 0}


def test_status_counts_the_pmids_efetch_still_owes(client: TestClient, store: Settings) -> None:
    from ingest import missing

    missing.note_window(db.connect(store), listed=[901, 902], missing=[901], where="w",
                        key="w#gen1", retries=3)  # fmt: skip
    assert client.get("/status").json()["missing"] == {"waiting": 1, "given_up": 0}


def test_status_counts_the_given_up_alerts_still_owed(
    client: TestClient, store: Settings
) -> None:
    """A PMID given up whose alert no webhook took yet is owed (35c's outbox): said by
    ``GET /status`` as by ``litpulse status``, and no longer once it is told."""
    import datetime as dt

    from ingest import missing
    from litpulse.core.schema import missing_pmids

    engine = db.connect(store)
    assert client.get("/status").json()["alerts_owed"] == 0
    missing.note_window(engine, listed=[11], missing=[11], where="w", key="k", retries=1)
    with engine.begin() as conn:  # first missed a day ago: old enough to give up
        conn.execute(missing_pmids.update().values(
            first_missing_at=db.utcnow() - dt.timedelta(days=1, minutes=1)))  # fmt: skip
    missing.settle(engine, asked=[11], missing=[11], key="k2", retries=1)
    assert client.get("/status").json()["alerts_owed"] == 1
    missing.mark_told(engine, [11])
    assert client.get("/status").json()["alerts_owed"] == 0


def test_status_counts_the_open_quarantine_entries(client: TestClient, store: Settings) -> None:
    from ingest.records import QuarantineEntry, SourceRef
    from ingest.store import Store

    before = client.get("/status").json().get("quarantined")
    bad = QuarantineEntry("XML syntax error", "<PubmedArticle>", SourceRef("file", "x.xml"), 903)
    Store(db.connect(store)).apply([bad])
    assert client.get("/status").json()["quarantined"] == before + 1  # as `litpulse status`


def test_feedback_is_recorded(client: TestClient, store: Settings,
                              ana: dict[str, str]) -> None:
    body = {"query": "malaria vaccine", "pmid": 201, "relevant": True}
    r = client.post("/feedback", json=body, headers=ana)
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    r = client.post("/feedback", json={**body, "relevant": False}, headers=ana)  # a change
    assert r.status_code == 201 and r.json()["id"] == fid
    with db.connect(store).connect() as conn:
        rows = conn.execute(
            select(feedback).where(feedback.c.pmid == 201, feedback.c.user == "ana")
        ).all()
    assert len(rows) == 1 and rows[0].relevant is False and rows[0].query == "malaria vaccine"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"query": "q", "pmid": 987654, "relevant": True, "user": "ana"}, 404),
        ({"query": "q", "pmid": 106, "relevant": True}, 404),  # deleted
        ({"query": "q", "pmid": 201, "relevant": "maybe", "user": "ana"}, 422),
        ({"query": "q", "pmid": 201, "relevant": "true"}, 422),  # JSON true, not text
        ({"query": "q", "pmid": "201", "relevant": True}, 422),
        ({"query": "", "pmid": 201, "relevant": True, "user": "ana"}, 422),
        ({"query": "   ", "pmid": 201, "relevant": True}, 422),  # no non-space character
        ({"query": "\x1c\x85", "pmid": 201, "relevant": True}, 422),  # space to Python or Rust
        ({"query": "q", "pmid": 201, "relevant": True, "user": "  "}, 422),
        ({"query": "q", "pmid": -3, "relevant": True, "user": "ana"}, 422),
        ({"query": "q", "pmid": 201}, 422),
        ({"query": "q", "pmid": 201, "relevant": True, "user": "a", "admin": 1}, 422),
        ({"query": "q", "pmid": 201, "relevant": True, "user": "bob"}, 403),  # not the token's
        ({"query": "q\x00", "pmid": 201, "relevant": True}, 400),  # no NUL in the store
        ({"query": "\u200b", "pmid": 201, "relevant": True}, 400),  # nothing searchable
        ({"query": "?! \u2014", "pmid": 201, "relevant": True}, 400),
    ],
)
def test_feedback_rejects_bad_input(client: TestClient, ana: dict[str, str], body: object,
                                    status: int) -> None:
    r = client.post("/feedback", json=body, headers=ana)
    assert r.status_code == status, r.text


def test_feedback_garbage_body(client: TestClient, ana: dict[str, str]) -> None:
    for raw in (b"not json", b"[]", b"{", b"null"):
        r = client.post("/feedback", content=raw,
                        headers={**ana, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text


def _export(client: TestClient, fmt: str) -> tuple[str, str]:
    r = client.get("/export", params={"q": "type 2 diabetes", "format": fmt, "k": 4})
    assert r.status_code == 200, r.text
    assert "attachment" in r.headers["content-disposition"]
    return r.text, r.headers["content-type"]


def test_export_csv_parses(client: TestClient) -> None:
    text, ctype = _export(client, "csv")
    assert ctype.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    pmid = int(first["pmid"])
    assert first["title"] == ARTICLES[pmid]["title"]
    assert first["url"] == f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/"
    assert first["authors"] == "Doe, Jane; Test Consortium"
    assert float(first["score"]) > 0 and first["doi"] == f"10.1000/test.{pmid}"


def test_export_ris_parses(client: TestClient) -> None:
    text, ctype = _export(client, "ris")
    assert ctype.startswith("application/x-research-info-systems")
    records = [r for r in text.split("ER  - ") if r.strip()]
    assert len(records) == 4
    for rec in records:
        tags = [line[:2] for line in rec.strip().splitlines()]
        assert tags[0] == "TY" and "TI" in tags and "AU" in tags and "UR" in tags
        assert all(re.fullmatch(r"[A-Z][A-Z0-9]  - .*", line) for line in rec.strip().splitlines())
    assert text.count("TY  - JOUR") == 4 and text.rstrip().endswith("ER  -")
    assert "SP  - 100" in text and "EP  - 110" in text


def test_export_bibtex_parses(client: TestClient) -> None:
    text, ctype = _export(client, "bibtex")
    assert ctype.startswith("application/x-bibtex")
    entries = re.findall(r"@article\{pmid(\d+),\n(.*?)\n\}", text, flags=re.S)
    assert len(entries) == 4
    for pmid, body in entries:
        fields = dict(re.findall(r"^  (\w+) = \{(.*)\},?$", body, flags=re.M))
        assert fields["title"] == "{" + ARTICLES[int(pmid)]["title"] + "}"
        assert fields["author"] == "Doe, Jane and {Test Consortium}"
        assert fields["pmid"] == pmid and fields["pages"] == "100--110"
        assert body.count("{") == body.count("}")  # balanced braces


def test_openapi_and_page(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/search", "/export", "/articles/{pmid}", "/status", "/feedback"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="q"' in page.text and "export-ris" in page.text


def test_no_index_yet_is_503_with_hint(settings: Settings) -> None:
    """On SQLite and PostgreSQL: status, articles and export SQL, and the 503 hint."""
    load_corpus(db.connect(settings))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.get("/search", params={"q": "malaria"})
        assert r.status_code == 503
        assert "litpulse index refresh" in r.json()["detail"]
        r = c.get("/export", params={"q": "malaria", "format": "csv"})
        assert r.status_code == 503
        s = c.get("/status").json()
        assert s["index"] is None and s["model_version"] == "base"
        assert s["articles"]["live"] == len(ARTICLES) - 1 and s["articles"]["retracted"] == 1
        assert c.get("/articles/402").json()["relative_citation_ratio"] == 15.0
        assert c.get("/articles/4020").status_code == 404


def test_the_search_dependency_gives_a_frozen_search_spec(settings: Settings) -> None:
    import dataclasses

    from fastapi.routing import APIRoute

    app = create_app(settings)
    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/search")
    spec_dep = next(d for d in route.dependant.dependencies if d.name == "spec")
    spec = spec_dep.call(
        q="statin", since=None, until=None, mesh=["Humans"], ptype=None, language=None,
        has_abstract=None, include_retracted=False, w_sim=None, w_recency=0.0,
        w_citation=None, half_life=None, w_lexical=0.25, mode="lexical", sort="date",
    )
    assert isinstance(spec, SearchSpec) and spec.query == "statin"
    assert (spec.mode, spec.sort, spec.options.lexical_share) == ("lexical", "date", 0.25)
    assert spec.filters.mesh == ("Humans",) and spec.options.w_recency == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.query = "other"  # type: ignore[misc]


# ------------------------------------------------- hostile review: BibTeX on odd titles


def _bibtex_entries(text: str) -> list[tuple[str, dict[str, str]]]:
    """The entries of a .bib text as BibTeX itself reads them: a field's value runs to its
    matching brace, every ``{`` and ``}`` counted, a backslash before one included (BibTeX
    and biber know no escaped brace: tex.stackexchange 230750; pybtex's writer refuses
    unbalanced braces); text outside an entry is a comment."""
    entries = []
    head = re.compile(r"@(\w+)\s*\{\s*([^,\s]+)\s*,")
    field = re.compile(r"\s*(\w+)\s*=\s*\{")
    i = 0
    while (m := head.search(text, i)) is not None:
        i, fields = m.end(), {}
        while (f := field.match(text, i)) is not None:
            depth, j = 1, f.end()
            while depth and j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            fields[f.group(1)] = text[f.end():j - 1]
            i = j
            if (comma := re.compile(r"\s*,").match(text, i)) is None:
                break
            i = comma.end()
        entries.append((m.group(2), fields))
    return entries


@pytest.mark.parametrize("title", [
    "The {1,2}-dioxetane route: a } too many",
    "Sets {x : x > 0 revisited",
])
def test_export_bibtex_keeps_every_field_of_a_title_with_a_lone_brace(title: str) -> None:
    """Review finding: a lone brace escaped as ``\\{``/``\\}`` still counted for BibTeX: a
    `}` ended the field and the entry early (author, journal, year, doi lost), a `{`
    swallowed every field after the title."""
    from litpulse.app.export import to_bibtex

    rows = {
        7: {"title": title, "authors": [{"last_name": "Doe", "fore_name": "Jane"}],
            "journal": "J Test", "pub_year": 2024, "doi": "10.1000/x.7",
            "abstract": "Plain text.", "record": {"volume": "3"}},
        8: {"title": "A second, ordinary article", "authors": [], "journal": "J Other",
            "pub_year": 2023, "doi": None, "abstract": "", "record": {}},
    }
    entries = dict(_bibtex_entries(to_bibtex([7, 8], rows)))
    assert set(entries) == {"pmid7", "pmid8"}, entries
    assert {"title", "author", "journal", "year", "volume", "doi", "pmid"} <= set(
        entries["pmid7"]), entries["pmid7"]
    assert entries["pmid7"]["year"] == "2024" and entries["pmid8"]["journal"] == "J Other"
