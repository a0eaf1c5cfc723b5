"""Hostile review (session 27): does a researcher who pages through, or exports, every
result of a search get every matching article exactly once, and nothing that does not
match?

Worlds: 60 generated asthma records (12 of them identical twins: same text, same date, so
the same score; every second one by Smith J; a fifth in French; a third without the MeSH
heading Asthma; two retracted) stored through the real store, embedded by the tiny random
encoder and published (FAISS + tantivy) with ``rerank_candidates`` 4, so that a page of 3
to 8 results crosses the blocks of ``ranking.search._page``; and 1,150 records, all on
asthma and all by Smith J, with the default blocks of 200, for the ``MAX_OFFSET`` edge.
Searched through ``GET /search``, ``GET /export``, ``GET /similar`` (FastAPI's test
client) and the CLI's ``search``, on SQLite.

Defects (each first a strict xfail asserting the correct behaviour; all fixed since, the
xfail marks removed: the deepest page says ``truncated`` with a note; every answer names
its ``store_version`` (``litpulse.core.db.store_version``: the newest article write and
the citation writes' mark) and the page says when a page comes from another list; an
export sends its index and store versions as headers; similar pages widen FAISS's list
until no tie straddles the page's end; the citations case now goes through the real
refresh against the loopback iCite):

1. **The last page before ``MAX_OFFSET`` cuts the list silently**
   (``ranking/search.py`` ``_page`` and ``_listing``: ``has_more = ... and end <=
   MAX_OFFSET``; ``GET /search`` ``offset`` ``le=MAX_OFFSET``). ``GET
   /search?q=asthma&k=100&offset=1000`` over 1,150 matching articles answers 100 results
   and ``has_more: false``, in every mode and for the author listing ``Smith J[au]``,
   exactly what it answers at the real end of a list: nothing says that 50 more match
   (``GET /export?offset=1000&k=500`` holds them). The page disables *Next* there (1,020
   results at its 20 a page) without a word. It should say the list was cut at the
   deepest page (``has_more`` true with the next offset refused, or a flag / note).
2. **A store change between two pages skips or repeats articles, and nothing in the
   answers tells** (``ranking/search.py`` ``run_search``/``_page`` rank live store rows
   — deletion, retraction, citation columns — while ``SearchResult`` stamps only
   ``index_version`` and ``options.today``). Page 1 of ``asthma inhaler`` (k=5) is read;
   then ``ingest --updatefiles`` applies a deletion of one article of page 1 (or a
   revision flagging it retracted), which README says to run daily beside the nightly,
   without an index publish; page 2 starts one article later in the new list, so the
   article that was 6th is never shown. A citation refresh (new RCR of the 11th article,
   ``w_citation`` 5) lifts it onto page 1: pages 2.. never show it and repeat one of page
   1. Both answers carry the same ``index_version`` and ``today`` (README: pages "of one
   query, index version and reference day are disjoint slices of one list"). Either the
   pages should stay one list or the answers should differ in something a client can
   compare.
3. **``GET /export`` names no index version** (``litpulse/app/api.py``
   ``export_endpoint``, ``litpulse/app/export.py``): the page's export buttons export the
   page shown; a researcher exporting page 1 and page 2 across a publish gets the same
   article in both files (or misses one), and neither the files nor the response headers
   say which index version each came from, while ``GET /search`` says it
   (``index_version``). A client cannot detect it.
4. **Similar articles repeat and skip neighbours of equal cosine**
   (``ranking/similar.py`` ``similar_articles``: FAISS's ``n`` nearest hold ties in the
   index's own order, then ``sorted(rows, key=(-cosine, pmid))[offset:offset + k]``
   slices lists of different ``n``). Six records identical to their twins (a title-only
   *Erratum* or *Correction* notice in PubMed is such a record) are deleted by an update
   file and served again by the next one (each followed by ``litpulse index refresh``):
   their vectors return at the end of the index. ``/similar/{twin}`` in pages of 5 (the
   page's *More similar articles*) then shows 7, 8, 9 and 10 twice and 2, 3, 4 and 5
   never, while ``k=20`` lists them all once.

Attacks that held (plain tests):

* Pages of k = 3 / 7 / 8 through hybrid, semantic and lexical, sorted by score and by
  date, with no filter, language, MeSH, a date range and all three, ``NOT`` exclusions,
  a quoted phrase and the author listing ``Smith J[au]``: every matching live article
  exactly once, nothing else, retracted ones only with ``include_retracted``, the same
  set ``k=100`` gives and, by score, in its order; the end (``has_more`` false) is the
  end (the page after it is empty).
* Twelve articles of equal score (identical text and date): pages of any ``k`` list them
  in one order, the same on every request; nothing repeated or skipped across the blocks.
* The CLI's ``search -k 60 --json`` lists exactly what the API's pages list, in order.
* ``GET /export`` (CSV, RIS, BibTeX), page by page with the search's ``k`` and
  ``offset``, holds exactly the PMIDs of those pages in order; CSV ranks run from
  offset + 1 without gap; one export of ``k=500`` holds every result once.
* An index publish between two pages changes ``index_version`` in ``GET /search``: a
  client can tell (no pinning, but no silent mix).
* The limits are loud: ``offset`` 1001 and ``k`` 101 (search) / 501 (export) are refused
  (422); over 1,150 results the CLI's ``-k 1150`` and ``/export?offset=1000&k=500`` list
  every one (the cut of defect 1 is the search API's and the page's).

Noted, not filed: ``has_more`` is true, then the next page is empty, when the list's
length is a multiple of ``rerank_candidates`` (documented as "may hold results"); a
date-sorted list is newest first within each block (documented); no answer carries a
total count; the page shows ``index …`` in its count line but does not warn when *Next*
answers from another version than the page before.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.records import Author, Deletion, SourceRef
from ingest.store import Store
from litpulse.core import db
from litpulse.core.settings import Settings
from tests.litpulse.app.apistore import UNLIMITED, clone_store
from tests.ranking.corpus import T0, dated, indexed_world, make_article, world_on
from tests.tiny_encoder import build_tiny_encoder

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from litpulse.app.api import create_app  # noqa: E402

P = 50_000  # PMIDs P + 0 .. P + 59
N = 60
TWINS = range(12)  # identical text and date: equal scores
RETRACTED = {58, 59}
WORDS = ("inhaled", "steroids", "children", "adults", "trial", "cohort", "exacerbation",
         "biologic", "eosinophil", "airway", "remodelling", "smoking", "obesity", "allergen")
BIG = 1150  # more than MAX_OFFSET + the largest k (1,100)


def _year(i: int) -> int:
    return 2020 if i in TWINS else 2010 + i % 15


def _record(i: int, base: int = P, *, smith: bool | None = None) -> Any:
    if i in TWINS:
        title, abstract = "Asthma inhaler adherence", "Asthma inhaler adherence in clinics."
    else:
        w = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(3)]
        title = f"Asthma {' '.join(w)} study {i}"
        abstract = f"We studied asthma and {w[0]} with {w[1]} among {w[2]} number {i}."
    r = make_article(base + i, title, abstract,
                     languages=("fre",) if i % 5 == 0 else ("eng",),
                     mesh=("Humans", "Asthma") if i % 3 else ("Animals",))  # fmt: skip
    r = dated(r, _year(i))
    if smith if smith is not None else i % 2 == 0:
        r = dataclasses.replace(r, authors=(Author("Smith", "John", "J"),))
    if base == P and i in RETRACTED:
        r = dataclasses.replace(r, is_retracted=True)
    return r


def _records() -> list[Any]:
    return [_record(i) for i in range(N)]


def src(n: int) -> SourceRef:
    """Update file number ``n`` (later files win)."""
    return SourceRef("file", f"pubmed26n{n:04d}.xml.gz", sequence=n, fetched_at=T0)


def _newest_best() -> Any:
    """A new article, the best match of ``asthma inhaler`` and the newest: it ranks first."""
    new = make_article(P + 1000, "Asthma inhaler", "Asthma inhaler, asthma inhaler.")
    return dated(dataclasses.replace(new, source=src(2)), 2025)


def _passes(i: int, f: dict[str, str], retracted: bool = False) -> bool:
    """Whether record ``i`` passes the filters ``f`` (the world's ground truth)."""
    if i in RETRACTED and not retracted:
        return False
    if f.get("language") == "fre" and i % 5 != 0:
        return False
    if f.get("language") == "eng" and i % 5 == 0:
        return False
    if f.get("mesh") == "Asthma" and i % 3 == 0:
        return False
    if f.get("mesh") == "Animals" and i % 3 != 0:
        return False
    return not ("since" in f and _year(i) < int(f["since"][:4]))


def _matches(query: str, i: int) -> bool:
    """Whether record ``i`` meets the query's own constraints (phrase, NOT, author)."""
    if query == "Smith J[au]":
        return i % 2 == 0
    if query == '"inhaler adherence"':
        return i in TWINS
    if query == "asthma NOT inhaler":
        return i not in TWINS
    return True  # asthma inhaler: every record holds asthma


# ------------------------------------------------------------------------------ worlds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-paging"), max_seq_length=32)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny: str) -> Iterator[Settings]:
    yield from world_on("sqlite", tmp_path_factory, "paging_review",
                        lambda home, url: indexed_world(home, url, tiny, _records(),
                                                        rerank_candidates=4, **UNLIMITED))


@pytest.fixture(scope="module")
def client(world: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def fresh(world: Settings, tmp_path: Path) -> Iterator[tuple[Settings, TestClient]]:
    """A private copy of the world (store and published index) that a test may change."""
    s = clone_store(world, tmp_path / "home", model=world.model, max_seq_length=32,
                    search_server_url="", rerank_candidates=4, **UNLIMITED)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        yield s, c
    eng = db._ENGINES.pop(s.effective_database_url, None)
    if eng is not None:
        eng.dispose()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, tiny: str) -> Iterator[TestClient]:
    records = [_record(i, 100_000, smith=True) for i in range(BIG)]
    for s in world_on("sqlite", tmp_path_factory, "paging_big",
                      lambda home, url: indexed_world(home, url, tiny, records, **UNLIMITED)):
        with TestClient(create_app(s), raise_server_exceptions=False) as c:
            c.settings = s  # type: ignore[attr-defined]
            yield c


# ----------------------------------------------------------------------------- helpers


def _get(c: TestClient, path: str, **params: Any) -> dict[str, Any]:
    r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def _ids(data: dict[str, Any], base: int = P) -> list[int]:
    return [h["pmid"] - base for h in data["results"]]


def _walk(c: TestClient, q: str, k: int, **params: Any) -> list[int]:
    """Every page of one search, following ``has_more``, as offsets from ``P``."""
    got: list[int] = []
    offset = 0
    for _ in range(200):
        d = _get(c, "/search", q=q, k=k, offset=offset, **params)
        assert len(d["results"]) <= k
        got += _ids(d)
        if not d["has_more"]:
            end = _get(c, "/search", q=q, k=k, offset=offset + k, **params)
            assert end["results"] == [], (q, k, params, offset)  # the end is the end
            return got
        offset += k
    raise AssertionError("has_more never ended")


def _meta(data: dict[str, Any]) -> dict[str, Any]:
    """What an answer says of where it came from: all but its page and what varies with
    the page (results, offset, has_more, candidates)."""
    return {k: v for k, v in data.items()
            if k not in ("results", "offset", "has_more", "candidates")}  # fmt: skip


# ------------------------------------------------------------------- attacks that held


FILTERS: list[dict[str, str]] = [
    {}, {"language": "fre"}, {"mesh": "Asthma"}, {"since": "2018-01-01"},
    {"mesh": "Animals", "since": "2015-01-01", "language": "eng"},
]


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_pages_list_every_matching_article_once_in_every_mode_filter_and_sort(
    client: TestClient, mode: str
) -> None:
    for query in ("asthma inhaler", "asthma NOT inhaler", '"inhaler adherence"',
                  "Smith J[au]"):
        for f in FILTERS:
            truth = {i for i in range(N) if _passes(i, f) and _matches(query, i)}
            whole = _ids(_get(client, "/search", q=query, k=100, mode=mode, **f))
            assert set(whole) == truth and len(whole) == len(truth), (query, f)
            for k, sort in ((3, "score"), (7, "date"), (8, "score")):
                got = _walk(client, query, k, mode=mode, sort=sort, **f)
                assert len(got) == len(set(got)), (query, f, k, sort)  # nothing twice
                assert set(got) == truth, (query, f, k, sort)  # nothing missing, or extra
                if sort == "score":
                    assert got == whole, (query, f, k)
    every = _walk(client, "asthma inhaler", 7, mode=mode, include_retracted="true")
    assert sorted(every) == list(range(N))  # the retracted ones on request, once


def test_equal_scores_keep_one_order_across_page_boundaries(client: TestClient) -> None:
    for mode in ("hybrid", "semantic", "lexical"):
        lists = [_walk(client, "Asthma inhaler adherence", k, mode=mode) for k in (1, 2, 5)]
        assert lists[0] == lists[1] == lists[2], mode
        twins = [i for i in lists[0] if i in TWINS]
        assert sorted(twins) == list(TWINS), mode
        again = _ids(_get(client, "/search", q="Asthma inhaler adherence", k=5, offset=5,
                          mode=mode))  # fmt: skip
        assert again == lists[0][5:10], mode


def test_cli_lists_what_the_api_pages_list(
    world: Settings, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from litpulse.app.cli import build_parser

    args = build_parser().parse_args(["search", "asthma inhaler", "-k", "60", "--json"])
    capsys.readouterr()
    assert args.func(args, world) == 0
    data = json.loads(capsys.readouterr().out)
    assert [h["pmid"] - P for h in data["results"]] == _walk(client, "asthma inhaler", 7)


def _export_ids(c: TestClient, fmt: str, **params: Any) -> tuple[list[int], Any]:
    r = c.get("/export", params={"format": fmt, **params})
    assert r.status_code == 200, r.text
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(r.text)))
        return [int(row["pmid"]) - P for row in rows], [int(row["rank"]) for row in rows]
    pattern = r"AN  - PMID:(\d+)" if fmt == "ris" else r"@article\{pmid(\d+),"
    return [int(p) - P for p in re.findall(pattern, r.text)], None


def test_exports_page_by_page_hold_exactly_the_search_pages(client: TestClient) -> None:
    for params in ({"q": "asthma inhaler"}, {"q": "Smith J[au]", "sort": "date"},
                   {"q": "asthma NOT inhaler", "mode": "lexical", "mesh": "Asthma"}):
        whole = _walk(client, params["q"], 7, **{k: v for k, v in params.items() if k != "q"})
        for fmt in ("csv", "ris", "bibtex"):
            got: list[int] = []
            for offset in range(0, len(whole), 7):
                page = _ids(_get(client, "/search", k=7, offset=offset, **params))
                ids, ranks = _export_ids(client, fmt, k=7, offset=offset, **params)
                assert ids == page, (params, fmt, offset)
                if ranks is not None:
                    assert ranks == list(range(offset + 1, offset + 1 + len(ids)))
                got += ids
            assert got == whole, (params, fmt)
            one, _ = _export_ids(client, fmt, k=500, **params)
            assert one == whole, (params, fmt)


def test_an_index_publish_between_pages_is_visible_in_the_answer(
    fresh: tuple[Settings, TestClient],
) -> None:
    from ranking.refresh import refresh_index

    s, c = fresh
    first = _get(c, "/search", q="asthma inhaler", k=5)
    Store(db.connect(s)).apply([_newest_best()])
    assert refresh_index(s).published
    second = _get(c, "/search", q="asthma inhaler", k=5, offset=5)
    assert second["index_version"] != first["index_version"]  # a client can tell


def test_limits_are_refused_loudly_and_the_cli_and_export_reach_the_end(
    big: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from litpulse.app.cli import build_parser

    assert big.get("/search", params={"q": "asthma", "offset": 1001}).status_code == 422
    assert big.get("/search", params={"q": "asthma", "k": 101}).status_code == 422
    assert big.get("/export", params={"q": "asthma", "k": 501}).status_code == 422
    tail, _ = _export_ids(big, "csv", q="asthma", mode="lexical", k=500, offset=1000)
    assert len(tail) == BIG - 1000  # the export reaches the last of the 1,150
    args = build_parser().parse_args(["search", "asthma", "-k", str(BIG), "--mode", "lexical",
                                      "--json"])  # fmt: skip
    capsys.readouterr()
    assert args.func(args, big.settings) == 0  # type: ignore[attr-defined]
    listed = [h["pmid"] for h in json.loads(capsys.readouterr().out)["results"]]
    assert len(listed) == len(set(listed)) == BIG


# ---------------------------------------------------------------------------- defects


def _tells_of_more(data: dict[str, Any]) -> bool:
    """Whether an answer says that more results match than its pages can show."""
    if data.get("has_more"):
        return True
    if any(data.get(key) for key in ("truncated", "cut", "limited", "more_beyond_limit",
                                      "capped", "total")):  # fmt: skip
        return True
    return any(re.search(r"offset|limit|cut|first 1,?100", n, re.I) for n in data["notes"])


@pytest.mark.parametrize(("query", "mode"), [("asthma", "lexical"), ("asthma", "hybrid"),
                                             ("Smith J[au]", "hybrid")])
def test_the_deepest_page_says_the_list_was_cut(big: TestClient, query: str, mode: str) -> None:
    deepest = _get(big, "/search", q=query, k=100, offset=1000, mode=mode)
    assert len(deepest["results"]) == 100
    beyond, _ = _export_ids(big, "csv", q=query, mode=mode, k=500, offset=1000)
    assert len(beyond) == BIG - 1000  # 50 more match: the export lists them
    assert _tells_of_more(deepest), "1,100 of 1,150 shown and nothing says so"


def _delete(s: Settings, i: int) -> None:
    Store(db.connect(s)).apply([Deletion(P + i, src(2))])


def _retract(s: Settings, i: int) -> None:
    revised = dataclasses.replace(_record(i), is_retracted=True, source=src(2))
    Store(db.connect(s)).apply([revised])


@pytest.mark.parametrize("change", ["deletion", "retraction", "citations"])
def test_a_store_change_between_pages_loses_no_article_unannounced(
    fresh: tuple[Settings, TestClient], change: str
) -> None:
    s, c = fresh
    params: dict[str, Any] = {"q": "asthma inhaler", "k": 5, "w_citation": 5}
    first = _get(c, "/search", **params)
    seen = _ids(first)
    if change == "deletion":
        _delete(s, seen[0])  # an update file withdraws an article the researcher read
        gone = {seen[0]}
    elif change == "retraction":
        _retract(s, seen[0])
        gone = {seen[0]}
    else:  # the citation refresh gives the 11th result a high relative citation ratio
        from ingest.citations import refresh_citations
        from tests.emulator import running_emulator

        lifted = _ids(_get(c, "/search", **{**params, "offset": 10}))[0]
        for emu in running_emulator():  # iCite, on the loopback
            emu.set_icite(P + lifted, citation_count=9000, relative_citation_ratio=400.0)
            assert refresh_citations(emu.configure(s), pmids=[P + lifted]).updated == 1
        gone = set()
    later: list[int] = []
    same = True
    for offset in range(5, 100, 5):
        d = _get(c, "/search", **{**params, "offset": offset})
        same = same and _meta(d) == _meta(first)
        later += _ids(d)
        if not d["has_more"]:
            break
    if same:  # nothing told the client the list changed: it must still be one list
        live = {i for i in range(N) if i not in RETRACTED} - gone
        shown = seen + later
        twice = sorted({i for i in shown if shown.count(i) > 1})
        never = sorted(live - set(shown))
        assert not twice and not never, f"shown twice: {twice}; never shown: {never}"


def test_an_export_says_which_index_version_it_holds(
    fresh: tuple[Settings, TestClient],
) -> None:
    from ranking.refresh import refresh_index

    s, c = fresh
    q = {"q": "asthma inhaler", "k": 5, "format": "csv"}
    v1 = _get(c, "/search", q=q["q"], k=5)["index_version"]
    one = c.get("/export", params=q)
    Store(db.connect(s)).apply([_newest_best()])
    assert refresh_index(s).published
    v2 = _get(c, "/search", q=q["q"], k=5)["index_version"]
    two = c.get("/export", params={**q, "offset": 5})
    a, b = ([int(r["pmid"]) for r in csv.DictReader(io.StringIO(x.text))] for x in (one, two))
    assert set(a) & set(b), "the control: a publish between the two files repeats one"
    for resp, version in ((one, v1), (two, v2)):
        said = resp.text + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
        assert version in said, "the file and its response name no index version"


def test_similar_pages_list_tied_neighbours_once(fresh: tuple[Settings, TestClient]) -> None:
    from ranking.refresh import refresh_index

    s, c = fresh
    back = [P + i for i in range(1, 7)]  # six twins withdrawn, then served again
    Store(db.connect(s)).apply([Deletion(p, src(2)) for p in back])
    assert refresh_index(s).published
    Store(db.connect(s)).apply([dataclasses.replace(_record(p - P), source=src(3))
                                for p in back])  # fmt: skip
    assert refresh_index(s).published
    whole = _ids(_get(c, f"/similar/{P}", k=20))
    assert set(TWINS) - {0} <= set(whole)  # the control: all 11 twins, once
    pages: list[int] = []
    for offset in range(0, 20, 5):  # the page's "More similar articles": 5 at a time
        pages += _ids(_get(c, f"/similar/{P}", k=5, offset=offset))
    assert len(pages) == len(set(pages)), f"shown twice: {pages}"
    assert pages == whole
