"""The API behind the researcher's page, on the real corpus (bundled model, FAISS, BM25):
the new fields of each hit, pages, and ``GET /similar/{pmid}`` against brute force."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import select

from litpulse.core import db
from litpulse.core.schema import articles, embeddings
from litpulse.core.settings import Settings
from ranking.embed import vector_from_bytes
from ranking.lexical import query_terms
from tests.litpulse.app.apistore import UNLIMITED, clone_store
from tests.ranking.corpus import ARTICLES, real_corpus

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    real = real_corpus(tmp_path_factory)
    return clone_store(real, tmp_path_factory.mktemp("page-api") / "home", **UNLIMITED)


@pytest.fixture(scope="module")
def client(store: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        yield c


def test_search_hits_have_the_page_fields(client: TestClient) -> None:
    r = client.get(
        "/search",
        params={
            "q": "artemisinin resistance in malaria parasites",
            "k": 20,
            "include_retracted": "true",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["offset"] == 0 and body["has_more"] is False
    hits = {h["pmid"]: h for h in body["results"]}
    for pmid, h in hits.items():
        a = ARTICLES[pmid]
        assert h["authors"] == ["Doe J", "Test Consortium"] and h["author_count"] == 2
        assert h["mesh"] == a["mesh"] and h["publication_types"] == a["ptype"]
        assert h["doi"] == f"10.1000/test.{pmid}"
        assert h["links"] == {
            "pubmed": f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/",
            "doi": f"https://doi.org/10.1000/test.{pmid}",
        }
        assert h["retracted"] is bool(a.get("retracted"))
        assert (h["snippet"] is None) is (not a["abstract"])
    assert hits[105]["retracted"] is True
    # highlights: the words matching the BM25 terms the lexical explanation names
    top = hits[202]
    matched = {t["term"] for t in top["explanation"]["components"]["lexical"]["terms"]}
    text = top["snippet"]["text"]
    marked = [text[a:b] for a, b in top["snippet"]["highlights"]]
    assert {"artemisinin", "malaria", "resistance"} <= set(marked)
    for word in marked:
        assert set(query_terms(word)) & matched
    unmarked = set(text.replace(".", " ").split()) - set(marked)
    assert all(not set(query_terms(w)) & matched for w in unmarked)
    title = top["title"]
    assert [title[a:b] for a, b in top["title_highlights"]] == [
        "Malaria",
        "parasite",
        "resistance",
        "artemisinin",
    ]


def test_pages_over_http_are_disjoint_and_deterministic(client: TestClient) -> None:
    base = {"q": "gene editing with CRISPR", "include_retracted": "true"}
    whole = client.get("/search", params={**base, "k": 19}).json()
    assert len(whole["results"]) == 19 and whole["has_more"] is False
    for sort in ("score", "date"):
        pages = [
            client.get("/search", params={**base, "k": 5, "offset": o, "sort": sort}).json()
            for o in (0, 5, 10, 15)
        ]
        got = [h["pmid"] for p in pages for h in p["results"]]
        assert len(got) == len(set(got)) == 19
        assert [p["has_more"] for p in pages] == [True, True, True, False]
        if sort == "score":
            assert got == [h["pmid"] for h in whole["results"]]
        else:  # each page is its score page newest first (36g X1), undated last
            assert sorted(got) == sorted(h["pmid"] for h in whole["results"])
            for o, p in zip((0, 5, 10, 15), pages, strict=True):
                assert {h["pmid"] for h in p["results"]} == {
                    h["pmid"] for h in whole["results"][o:o + 5]}
                dates = [h["best_date"] or "" for h in p["results"]]
                dated = [d for d in dates if d]
                assert dates == dated + [""] * (len(dates) - len(dated))
                assert dated == sorted(dated, reverse=True)
        again = client.get("/search", params={**base, "k": 5, "offset": 5, "sort": sort}).json()
        assert again["results"] == pages[1]["results"]
    assert client.get("/search", params={**base, "offset": -1}).status_code == 422
    assert client.get("/search", params={**base, "offset": 10**6}).status_code == 422


def _stored_vectors(settings: Settings, model_version: str) -> dict[int, np.ndarray]:
    with db.connect(settings).connect() as conn:
        rows = conn.execute(
            select(embeddings.c.pmid, embeddings.c.vector)
            .join(articles, articles.c.pmid == embeddings.c.pmid)
            .where(
                embeddings.c.model_version == model_version,
                articles.c.is_deleted.is_(False),
                articles.c.is_retracted.is_(False),
            )
        ).all()
    return {int(r.pmid): vector_from_bytes(r.vector) for r in rows}


def test_similar_articles_match_brute_force_cosine(client: TestClient, store: Settings) -> None:
    for pmid in (201, 301, 401):
        r = client.get(f"/similar/{pmid}", params={"k": 6})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["pmid"] == pmid and body["title"] == ARTICLES[pmid]["title"]
        vectors = _stored_vectors(store, body["model_version"])
        q = vectors[pmid] / np.linalg.norm(vectors[pmid])
        cos = {p: float(np.dot(v / np.linalg.norm(v), q)) for p, v in vectors.items() if p != pmid}
        want = sorted(cos, key=lambda p: (-cos[p], p))[:6]
        got = [h["pmid"] for h in body["results"]]
        assert pmid not in got and got == want
        assert [h["similarity"] for h in body["results"]] == pytest.approx(
            [cos[p] for p in want], abs=1e-4
        )
        assert all(h["authors"] and h["links"]["pubmed"] for h in body["results"])
    assert client.get("/similar/999999").status_code == 404
    assert client.get("/similar/0").status_code == 422
    assert client.get("/similar/201", params={"k": 0}).status_code == 422
    retracted = client.get("/similar/101", params={"k": 18, "include_retracted": "true"}).json()
    assert 105 in [h["pmid"] for h in retracted["results"]]
    assert 105 not in [
        h["pmid"] for h in client.get("/similar/101", params={"k": 18}).json()["results"]
    ]
    assert "/similar/{pmid}" in client.get("/openapi.json").json()["paths"]
    # pages: disjoint slices of the one list, has_more until it ends; bad offsets refused
    whole = client.get("/similar/201", params={"k": 100}).json()
    assert whole["has_more"] is False and whole["offset"] == 0
    first = client.get("/similar/201", params={"k": 3}).json()
    second = client.get("/similar/201", params={"k": 3, "offset": 3}).json()
    assert first["has_more"] is True and second["offset"] == 3
    assert [h["pmid"] for h in first["results"] + second["results"]] == [
        h["pmid"] for h in whole["results"][:6]
    ]
    last = client.get("/similar/201", params={"k": 5, "offset": len(whole["results"]) - 2})
    assert len(last.json()["results"]) == 2 and last.json()["has_more"] is False
    assert client.get("/similar/201", params={"offset": -1}).status_code == 422
    assert client.get("/similar/201", params={"offset": 10**6}).status_code == 422


# ------------------------------------------------------------ review (rev-api): findings


def test_pages_across_a_candidate_block_neither_repeat_nor_skip(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # finding 5 (rev-api): pages before and after a block boundary ranked different lists
    real = real_corpus(tmp_path_factory)
    # rerank_candidates=5 puts the block boundaries of the default 200 within 19 articles
    small = clone_store(real, tmp_path_factory.mktemp("page-blocks") / "home",
                        rerank_candidates=5, **UNLIMITED)
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        for mode in ("semantic", "hybrid", "lexical"):
            base = {"q": "gene editing", "mode": mode}
            got: list[int] = []
            for offset in range(0, 19, 3):
                page = client.get("/search", params={**base, "k": 3, "offset": offset}).json()
                got += [h["pmid"] for h in page["results"]]
                if not page["has_more"]:
                    break
            assert len(got) == len(set(got)), (mode, got)  # nothing shown twice
            whole = client.get("/search", params={**base, "k": 19, "offset": 0}).json()
            assert set(got) == {h["pmid"] for h in whole["results"]}, mode  # nothing skipped
            assert got == [h["pmid"] for h in whole["results"]], mode  # in one order
