"""Exports (``GET /export``, :mod:`litpulse.app.export`): the articles the search shows,
with what the search says of them (found by a hostile review of the API)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from litpulse.core.settings import Settings
from tests.litpulse.app.apistore import UNLIMITED, clone_store
from tests.ranking.corpus import real_corpus

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return real_corpus(tmp_path_factory)


@pytest.fixture
def client(real: Settings, tmp_path: Path) -> Iterator[TestClient]:
    store = clone_store(real, tmp_path / "home", **UNLIMITED)
    with TestClient(create_app(store), raise_server_exceptions=False) as c:
        yield c


def _pmids(r: Any) -> list[int]:
    assert r.status_code == 200, r.text
    return [h["pmid"] for h in r.json()["results"]]



def test_export_holds_the_articles_the_search_shows(client: TestClient) -> None:
    for sort in ("date", "score"):
        for q in ("malaria", "gene editing"):
            params: dict[str, Any] = {"q": q, "k": 3, "sort": sort}
            shown = _pmids(client.get("/search", params=params))
            r = client.get("/export", params={**params, "format": "csv"})
            assert r.status_code == 200, r.text
            exported = [int(row["pmid"]) for row in csv.DictReader(io.StringIO(r.text))]
            assert exported == shown, (sort, q)



def test_export_marks_retracted_articles(client: TestClient) -> None:
    params: dict[str, Any] = {"q": "CRISPR gene editing cures everything", "k": 20,
                              "include_retracted": "true"}
    hits = {h["pmid"]: h for h in client.get("/search", params=params).json()["results"]}
    assert hits[105]["retracted"] is True  # the search says so
    r = client.get("/export", params={**params, "format": "csv"})
    rows = {int(row["pmid"]): row for row in csv.DictReader(io.StringIO(r.text))}
    assert rows[105]["retracted"] == "true"
    assert {rows[p]["retracted"] for p in rows if p != 105} == {"false"}
    ris = client.get("/export", params={**params, "format": "ris"}).text
    record = next(r for r in ris.split("ER  -") if "AN  - PMID:105\r\n" in r)
    assert "Retracted article" in record
    assert ris.count("Retracted article") == 1
    bib = client.get("/export", params={**params, "format": "bibtex"}).text
    entry = next(e for e in bib.split("\n@") if "pmid = {105}" in e.replace("  ", " "))
    assert "Retracted article" in entry
    assert bib.count("Retracted article") == 1


def test_exported_ranks_are_the_pages_ranks(client: TestClient) -> None:
    params = {"q": "malaria", "k": 3, "offset": 3}
    shown = [h["pmid"] for h in client.get("/search", params=params).json()["results"]]
    assert len(shown) == 3
    r = client.get("/export", params={**params, "format": "csv"})
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["pmid"]) for x in rows] == shown  # the page itself: sound
    assert [int(x["rank"]) for x in rows] == [4, 5, 6]
