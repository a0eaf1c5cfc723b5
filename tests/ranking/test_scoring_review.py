"""Review: the score and its explanation as a researcher reads them.

The score is ``w_sim·((1−λ)·similarity + λ·lexical) + w_rec·recency + w_cit·citation``
(``ranking.scoring``); every hit carries an explanation (``--explain``, ``explanation`` of
``GET /search``, the page's "Why this score?") whose components are said to add up to it.
These tests recompute the score from what each surface shows, across the modes, the
per-query overrides, odd store values (future and missing dates, provisional, negative or
NaN citation data), ties, pages, and the saved searches' digest.

Every record goes the real way: PubMed XML through :func:`ingest.parse.parse_bytes`,
:class:`ingest.store.Store`, a real published index (:func:`ranking.refresh.refresh_index`
with the tiny random encoder), then the surface under test — on SQLite and PostgreSQL. The
iCite columns are written into the store as ``litpulse citations`` would (and, for the
odd values, as a store written before ingest refused them would hold them).

The ``xfail(strict=True)`` tests state what a demanding user expects where the code does
otherwise; the plain ones pin what holds.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from ingest.parse import parse_bytes
from ingest.records import Record, SourceRef
from ingest.store import Store
from litpulse.app.api import create_app
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from litpulse.core.timeutil import utcnow
from ranking import embed as em
from ranking.refresh import refresh_index
from ranking.search import run_search, search
from tests.ranking.corpus import BOTH_DATABASES, world_on
from tests.tiny_encoder import build_tiny_encoder

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
QUERY = "sepsis biomarker"
TODAY = utcnow().date()
NEXT_YEAR = TODAY.year + 1

#: pmid -> (title, abstract, publication date as (y, m, d) or None)
CORPUS: dict[int, tuple[str, str, tuple[int, int, int] | None]] = {
    # iCite RCR 2.5, provisional
    7001: ("Sepsis biomarker lactate in adults", "Lactate as a sepsis biomarker.", (2020, 5, 1)),
    # iCite citation count only (no RCR, no rate): the rate is count ÷ age
    7002: (
        "Sepsis biomarker procalcitonin",
        "Procalcitonin sepsis biomarker cohort.",
        (2018, 1, 1),
    ),
    # dated next January: a date in the future
    7003: (
        "Sepsis in neonates",
        "Neonatal sepsis outcomes in a biomarker study.",
        (NEXT_YEAR, 1, 1),
    ),
    # no date at all
    7004: ("Biomarker discovery in sepsis", "A sepsis biomarker panel.", None),
    # unrelated to the query
    7005: ("Malaria vaccine trial", "Malaria vaccine in children.", (2015, 3, 3)),
    # 7006 and 7007: the same text and date, no citation data: an exact tie
    7006: ("Sepsis biomarker interleukin", "Interleukin as a sepsis biomarker.", (2021, 6, 1)),
    7007: ("Sepsis biomarker interleukin", "Interleukin as a sepsis biomarker.", (2021, 6, 1)),
    # a negative RCR and a NaN rate (impossible values a store written before ingest
    # refused them may hold): unknown, so the in-corpus count decides
    7008: ("Sepsis biomarker kinetics", "Kinetics of a sepsis biomarker.", (2019, 9, 9)),
}
ICITE: dict[int, dict[str, Any]] = {
    7001: {"relative_citation_ratio": 2.5, "icite_provisional": True},
    7002: {"citation_count": 10},
    7008: {
        "relative_citation_ratio": -1.0,
        "citations_per_year": math.nan,
        "cited_by_in_corpus": 3,
    },
}


def _article(pmid: int, title: str, abstract: str, date: tuple[int, int, int] | None) -> str:
    pub = (
        ""
        if date is None
        else (f"<Year>{date[0]}</Year><Month>{date[1]:02d}</Month><Day>{date[2]:02d}</Day>")
    )
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE"><PMID Version="1">{pmid}</PMID>'
        f"<Article><Journal><JournalIssue><PubDate>{pub}</PubDate></JournalIssue>"
        f"<Title>J Test</Title></Journal><ArticleTitle>{title}</ArticleTitle>"
        f"<Abstract><AbstractText>{abstract}</AbstractText></Abstract>"
        f"<Language>eng</Language></Article></MedlineCitation>"
        f"<PubmedData></PubmedData></PubmedArticle>"
    )


def _records(*pmids: int, corpus: dict[int, Any] = CORPUS) -> list[Record]:
    body = "".join(_article(p, *corpus[p]) for p in pmids)
    xml = f'<?xml version="1.0" encoding="utf-8"?>\n<PubmedArticleSet>{body}</PubmedArticleSet>'
    items = parse_bytes(xml.encode(), source_ref=SourceRef("file", "scoring.xml"))
    out = [i for i in items if isinstance(i, Record)]
    assert {r.pmid for r in out} == set(pmids), items
    return out


def _write_icite(s: Settings) -> None:
    with db.connect(s).begin() as conn:
        for pmid, values in ICITE.items():
            conn.execute(update(articles).where(articles.c.pmid == pmid).values(**values))


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-scoring"), max_seq_length=32)


def _tiny_settings(s: Settings, tiny: str) -> Settings:
    return s.replace(
        model=tiny,
        max_seq_length=32,
        search_server_url="",
        api_rate_per_second=10000.0,
        api_rate_burst=100000,
    )


def _world(home: Path, url: str, tiny: str) -> Settings:
    s = _tiny_settings(Settings.from_env({}, home=home, database_url=url), tiny)
    Store(db.connect(s)).apply(_records(*CORPUS))
    _write_icite(s)
    report = refresh_index(s)
    assert report.published and report.size == len(CORPUS)
    return s


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: str
) -> Iterator[Settings]:
    """The corpus stored and indexed, on SQLite and on PostgreSQL (a database of its own)."""
    yield from world_on(request.param, tmp_path_factory, "scoring",
                        lambda home, url: _world(home, url, tiny))


@pytest.fixture(scope="module")
def client(world: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def store(settings: Settings, tiny: str) -> Settings:
    """An empty store of its own (the conftest's, on both databases), on the tiny model."""
    em.clear_cache()
    return _tiny_settings(settings, tiny)


def _cli(s: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from litpulse.app.cli import search as cli

    parser = argparse.ArgumentParser(prog="litpulse")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    capsys.readouterr()
    assert args.func(args, s) == 0
    return capsys.readouterr().out


def _lam(mode: str, options: dict[str, Any]) -> float:
    return {"semantic": 0.0, "lexical": 1.0}.get(mode, options["lexical_share"])


def _check_adds_up(hit: dict[str, Any], options: dict[str, Any], mode: str) -> None:
    """The explanation's weights are the options', each contribution is weight × value,
    and the contributions add up to the score."""
    ex = hit["explanation"]
    comps = ex["components"]
    lam = _lam(mode, options)
    want = {
        "similarity": options["w_similarity"] * (1 - lam),
        "lexical": options["w_similarity"] * lam,
        "recency": options["w_recency"],
        "citation": options["w_citation"],
    }
    assert set(comps) == set(want), comps.keys()
    for name, c in comps.items():
        assert c["weight"] == pytest.approx(want[name], abs=1e-12), name
        assert c["contribution"] == pytest.approx(c["weight"] * c["value"], abs=1e-12), name
    total = sum(c["contribution"] for c in comps.values())
    assert total == pytest.approx(hit["score"], abs=1e-12)
    assert ex["score"] == pytest.approx(hit["score"], abs=1e-12)
    assert 0.0 <= comps["recency"]["value"] <= 1.0
    assert 0.0 <= comps["citation"]["value"] < 1.0


# ----------------------------------------------------------------------- what holds


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_every_explanation_adds_up_to_its_score_in_every_mode(
    client: TestClient, mode: str
) -> None:
    """GET /search: the contributions add up to the score, the weights are the query's,
    a mode without a part gives it weight 0 (lexical mode claims no similarity, semantic
    none of BM25), and the list is best first."""
    params: dict[str, Any] = {"q": QUERY, "k": 20, "mode": mode}
    data = client.get("/search", params=params).json()
    hits = data["results"]
    assert len(hits) >= 7, data
    for hit in hits:
        _check_adds_up(hit, data["options"], mode)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    comps = hits[0]["explanation"]["components"]
    if mode == "lexical":
        assert comps["similarity"]["weight"] == 0.0
        assert comps["similarity"]["contribution"] == 0.0
    if mode == "semantic":
        assert comps["lexical"]["weight"] == 0.0


def test_odd_store_values_are_explained_and_add_up(client: TestClient) -> None:
    """No date: neutral recency; a provisional RCR says so; a negative RCR and a NaN rate
    count as unknown (the in-corpus count decides); a count alone becomes a rate."""
    data = client.get("/search", params={"q": QUERY, "k": 20}).json()
    hits = {h["pmid"]: h for h in data["results"]}
    undated = hits[7004]["explanation"]["components"]["recency"]
    assert undated["value"] == 0.5 and undated["source"] == "missing"
    rcr = hits[7001]["explanation"]["components"]["citation"]
    assert rcr["source"] == "icite_rcr" and rcr["provisional"] is True
    assert "provisional" in rcr["text"]
    bad = hits[7008]["explanation"]["components"]["citation"]
    assert bad["source"] == "in_corpus" and 0.5 < bad["value"] < 1.0
    count = hits[7002]["explanation"]["components"]["citation"]
    assert count["source"] == "icite_citation_count"
    future = hits[7003]["explanation"]["components"]["recency"]
    assert future["value"] == 1.0


def test_overrides_rank_and_explain_alike_on_core_cli_and_api(
    world: Settings, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """--w-sim, --w-recency, --w-citation, --w-lexical and --half-life: the same order,
    the same scores and the same explanation weights from search(), the CLI and the API,
    and each explanation uses them."""
    over = {"w_sim": 0.4, "w_recency": 2.0, "w_citation": 0.7, "w_lexical": 0.8, "half_life": 30.0}
    resp = client.get("/search", params={"q": QUERY, "k": 20, **over})
    assert resp.status_code == 200, resp.text
    api = resp.json()
    out = _cli(
        world,
        [
            "search",
            QUERY,
            "-k",
            "20",
            "--json",
            "--explain",
            "--w-sim",
            "0.4",
            "--w-recency",
            "2",
            "--w-citation",
            "0.7",
            "--w-lexical",
            "0.8",
            "--half-life",
            "30",
        ],
        capsys,
    )
    cli = json.loads(out)
    core = search(
        world,
        QUERY,
        k=20,
        half_life_days=30.0,
        weights={"similarity": 0.4, "recency": 2.0, "citation": 0.7, "lexical": 0.8},
    )
    assert (
        [h["pmid"] for h in api["results"]]
        == [h["pmid"] for h in cli["results"]]
        == [h.pmid for h in core]
    )
    for a, c, k in zip(api["results"], cli["results"], core, strict=True):
        assert a["score"] == pytest.approx(c["score"], abs=1e-12)
        assert a["score"] == pytest.approx(k.score, abs=1e-12)
        _check_adds_up(a, api["options"], "hybrid")
        _check_adds_up(c, cli["options"], "hybrid")
        assert a["explanation"]["components"]["lexical"]["weight"] == pytest.approx(0.32)
        if a["best_date"] and a["pmid"] != 7003:
            assert "half-life 30 days" in a["explanation"]["components"]["recency"]["text"]


def test_all_weights_zero_is_refused_everywhere(
    world: Settings, client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    zero = {"w_sim": 0, "w_recency": 0, "w_citation": 0}
    resp = client.get("/search", params={"q": QUERY, **zero})
    assert resp.status_code == 400, resp.text
    assert "at least one" in resp.text
    with pytest.raises(ConfigError):
        search(world, QUERY, weights={"similarity": 0, "recency": 0, "citation": 0})
    from litpulse.app.cli import search as cli

    parser = argparse.ArgumentParser(prog="litpulse")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["search", QUERY, "--w-sim", "0", "--w-recency", "0", "--w-citation", "0"]
    )
    with pytest.raises(ConfigError):
        args.func(args, world)
    # one weight left: allowed, and it alone decides
    only = client.get(
        "/search", params={"q": QUERY, "k": 20, "w_sim": 0, "w_recency": 0, "w_citation": 1}
    ).json()
    for hit in only["results"]:
        assert hit["score"] == pytest.approx(hit["citation"], abs=1e-12)


@pytest.mark.parametrize("half_life", [1.0, 1e6])  # the range of the setting
def test_extreme_half_lives_stay_in_range_and_add_up(client: TestClient, half_life: float) -> None:
    data = client.get("/search", params={"q": QUERY, "k": 20, "half_life": half_life}).json()
    assert data["results"]
    for hit in data["results"]:
        _check_adds_up(hit, data["options"], "hybrid")


def test_an_exact_tie_is_ordered_by_pmid_on_one_page_or_two(client: TestClient) -> None:
    """7006 and 7007 are the same article under two PMIDs: the same score, the lower PMID
    first, whether both are on one page or split over two."""
    whole = client.get("/search", params={"q": QUERY, "k": 20}).json()["results"]
    order = [h["pmid"] for h in whole]
    a, b = order.index(7006), order.index(7007)
    assert whole[a]["score"] == whole[b]["score"]
    assert b == a + 1
    first = client.get("/search", params={"q": QUERY, "k": b, "offset": 0}).json()["results"]
    second = client.get("/search", params={"q": QUERY, "k": 5, "offset": b}).json()["results"]
    assert first[-1]["pmid"] == 7006 and second[0]["pmid"] == 7007
    assert first[-1]["score"] == whole[a]["score"] and second[0]["score"] == whole[b]["score"]


def test_pages_of_one_block_give_each_article_the_score_of_the_whole_list(
    world: Settings,
) -> None:
    """With blocks of 3 candidates, an article's score and explanation are the same on a
    small page as on one page holding them all (README: pages are slices of one list)."""
    s = world.replace(rerank_candidates=3)
    whole = run_search(s, QUERY, k=len(CORPUS), offset=0).hits
    for offset in range(0, len(whole), 2):
        page = run_search(s, QUERY, k=2, offset=offset).hits
        assert [h.pmid for h in page] == [h.pmid for h in whole[offset : offset + 2]]
        for h, w in zip(page, whole[offset : offset + 2], strict=True):
            assert h.score == w.score
            assert h.explanation["components"] == w.explanation["components"]


def test_min_max_fusion_makes_scores_depend_on_the_other_candidates_as_documented(
    store: Settings,
) -> None:
    """Hybrid (mix) normalises over the candidates: an unrelated article added to the
    index moves another article's score, and the README says the range is the
    candidates'."""
    s = store
    Store(db.connect(s)).apply(_records(7001, 7002, 7006))
    assert refresh_index(s).published
    before = {h.pmid: h for h in search(s, QUERY, k=10)}
    Store(db.connect(s)).apply(_records(7005))
    assert refresh_index(s).published
    after = {h.pmid: h for h in search(s, QUERY, k=10)}
    assert 7005 in after
    moved = [p for p in before if before[p].score != after[p].score]
    assert moved, "min-max over the candidates: a new candidate moves the range"
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert "min-max normalises cosine and BM25 over the candidates" in readme


# --------------------------------------------------------------------- the defects


# ranking/scoring.py:score_article (``Score(total, sim, …)``) → ranking/search.py:_hit: a
# hit's top-level ``similarity`` (API ``similarity``, the CLI's "sim" column) is the raw
# cosine, while its ``lexical`` is the fused (min-max) value and the score uses the fused
# similarity too: the score cannot be recomputed from the hit's own fields with the
# README's formula in hybrid mode.
def test_a_hits_own_fields_add_up_to_its_score(client: TestClient) -> None:
    data = client.get("/search", params={"q": QUERY, "k": 20}).json()
    o = data["options"]
    lam = o["lexical_share"]
    for hit in data["results"]:
        recomputed = (
            o["w_similarity"] * ((1 - lam) * hit["similarity"] + lam * hit["lexical"])
            + o["w_recency"] * hit["recency"]
            + o["w_citation"] * hit["citation"]
        )
        assert recomputed == pytest.approx(hit["score"], abs=1e-9), hit["pmid"]
        assert hit["similarity"] == hit["explanation"]["components"]["similarity"]["value"]


_TERM = re.compile(r"([-0-9.e+]+)x([-0-9.]+) \((\w+)\)")


# ranking/scoring.py:score_article (``summary`` / ``explanation["text"]``): the one-line
# explanation (CLI --explain, the page's formula line) prints each value to 3 decimals and
# the total to 4; with weights above 1 (allowed per query, up to 1000) the printed
# products add up to a different total — "20x0.010 (recency) + … = X" where X is off in
# the third decimal.
def test_the_printed_explanation_adds_up_to_the_printed_total(client: TestClient) -> None:
    params: dict[str, Any] = {"q": QUERY, "k": 20, "w_recency": 20, "w_citation": 20}
    off = []
    for hit in client.get("/search", params=params).json()["results"]:
        text = hit["explanation"]["text"]
        terms = _TERM.findall(text)
        assert len(terms) == 4, text
        printed_total = float(text.rsplit("=", 1)[1])
        recomputed = sum(float(w) * float(v) for w, v, _ in terms)
        if abs(recomputed - printed_total) >= 1.5e-4:  # more than the total's rounding
            off.append((round(recomputed - printed_total, 5), hit["pmid"], text))
    assert not off, sorted(off, key=lambda o: -abs(o[0]))


# ranking/scoring.py:recency_value (the ``text``/``age_days`` of a future best_date): an
# article dated next January is explained as "published <next year>-01-01 (0 days ago)";
# the age is false — the date is in the future and merely counted as today (recency 1).
def test_a_future_date_is_not_explained_as_zero_days_ago(client: TestClient) -> None:
    data = client.get("/search", params={"q": QUERY, "k": 20}).json()
    rec = next(h for h in data["results"] if h["pmid"] == 7003)
    comp = rec["explanation"]["components"]["recency"]
    assert comp["raw"] > TODAY.isoformat()
    assert "0 days ago" not in comp["text"], comp["text"]
    assert "future" in comp["text"].lower(), comp["text"]


# ranking/search.py:_explain (semantic branch: ``relevances(pool.sims, pool.bm25, pmids,
# …)``): in semantic mode the cosine and BM25 ranks the explanation prints are ranks among
# the hits shown on this page, not among the candidates (as in hybrid and lexical mode):
# the same article for the same query is "rank 4" with k=20 and "rank 2" with k=2, and
# the first hit of every further page is "rank 1".
def test_semantic_ranks_in_the_explanation_do_not_depend_on_the_page(
    client: TestClient,
) -> None:
    def ranks(k: int, offset: int = 0) -> dict[int, tuple[Any, Any]]:
        data = client.get(
            "/search", params={"q": QUERY, "k": k, "offset": offset, "mode": "semantic"}
        ).json()
        return {
            h["pmid"]: (
                h["explanation"]["components"]["similarity"]["rank"],
                h["explanation"]["components"]["lexical"]["rank"],
            )
            for h in data["results"]
        }

    whole = ranks(20)
    assert len(whole) == len(CORPUS)
    for k, offset in ((2, 0), (2, 2), (3, 4)):
        for pmid, r in ranks(k, offset).items():
            assert r == whole[pmid], (k, offset, pmid, r, whole[pmid])


# ranking/scoring.py:citation_value (text of source ``icite_citation_count``) /
# litpulse/app/cli/search.py:run_search_cmd (prints ``comp['text']`` only): the README
# says "`--explain` names the source: icite_rcr, icite_citations_per_year,
# icite_citation_count, in_corpus or missing", but a rate made from iCite's bare count ÷
# the article's age is printed as "iCite 1.12 citations/year", exactly like iCite's own
# rate; nothing in --explain says it was derived from a count.
def test_cli_explain_names_a_count_derived_citation_source(
    world: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _cli(world, ["search", QUERY, "-k", "20", "--explain"], capsys)
    block = out.split("PMID 7002:", 1)[1].split("\n\n", 1)[0]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("citation"))
    assert "citations/year" in line  # the source's line is there
    assert "count" in line.lower(), line


# litpulse/app/web/index.html (the "Saved searches" section, ~line 89) and
# litpulse/app/cli/alerts.py (``--min-score`` help): the digest compares the threshold
# with a *semantic* score at the server's default weights (pipeline/digest.py, README),
# while the page shows the hybrid score at the researcher's own weights right above the
# "Lowest score" field it is chosen from; neither the page nor `alerts add --help` says
# the threshold is on another scale, so a threshold read off the page is wrong.
def test_the_saved_search_threshold_says_which_score_it_is_compared_with(
    sqlite_settings: Settings, tiny: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from litpulse.pipeline.digest import matches_of, run_digest
    from litpulse.pipeline.saved_searches import add_search

    em.clear_cache()
    s = _tiny_settings(sqlite_settings, tiny)
    engine = db.connect(s)
    saved = add_search(s, name="sepsis", query=QUERY, owner="cli:test", min_score=0.0)
    time.sleep(0.01)
    Store(engine).apply(_records(*CORPUS))
    _write_icite(s)
    assert refresh_index(s).published
    assert not run_digest(s).failures
    digest = {m.pmid: m.score for m in matches_of(engine, saved.id)}
    page = {h.pmid: h.score for h in search(s, QUERY, k=20)}  # what the page shows
    semantic = {h.pmid: h.score for h in search(s, QUERY, k=20, mode="semantic")}
    assert set(digest) == set(page) == set(semantic)
    for pmid, score in digest.items():  # the digest scores as semantic search does ...
        assert score == pytest.approx(semantic[pmid], abs=1e-5)
    assert any(abs(digest[p] - page[p]) > 0.05 for p in digest)  # ... not as the page
    html = (ROOT / "litpulse/app/web/index.html").read_text(encoding="utf-8")
    saved_section = html.split('id="saved"', 1)[1].split("</section>", 1)[0]
    from litpulse.app.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["alerts", "add", "--help"])
    help_text = capsys.readouterr().out
    assert "--min-score" in help_text
    assert "semantic" in saved_section.lower(), saved_section
    assert "semantic" in help_text.lower(), help_text
