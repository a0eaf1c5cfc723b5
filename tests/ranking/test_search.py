"""search(): filters, retracted/deleted rules, widening, ordering and explanations."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.settings import Settings
from ranking.scoring import ScoringOptions
from ranking.search import (
    Hit,
    NoIndexError,
    SearchFilters,
    SearchResult,
    run_search,
    search,
    warm_up,
)
from tests.ranking.corpus import (
    ARTICLES,
    HashIndex,
    days_ago,
    hash_embed,
    load_corpus,
    make_article,
    pmids_of,
    real_corpus,
    search_in,
    store_and_index,
)

CRISPR = HashIndex.of(range(101, 108))  # only the gene-editing articles


@pytest.fixture
def corpus(engine: Engine) -> Engine:
    load_corpus(engine)
    return engine


def go(
    settings: Settings, engine: Engine, query: str, *, k: int = 10, index: Any = None,
    options: ScoringOptions | None = None, **filters: Any,
) -> SearchResult:
    return run_search(
        settings, query, k=k, filters=SearchFilters(**filters), options=options,
        engine=engine, index=index or HashIndex.of(), embed=hash_embed,
    )


def crispr(settings: Settings, engine: Engine, **filters: Any) -> list[int]:
    """PMIDs of the gene-editing articles passing the filters, best first."""
    return pmids(go(settings, engine, "CRISPR gene editing", k=20, index=CRISPR, **filters))


def pmids(result: SearchResult) -> list[int]:
    return [h.pmid for h in result.hits]


def test_relevant_articles_first_with_explanations(settings: Settings, corpus: Engine) -> None:
    res = go(settings, corpus, "malaria vaccine for children", k=5)
    assert pmids(res)[0] == 201
    assert len(res.hits) == 5 and len(set(pmids(res))) == 5
    assert res.index_version == "test-index-1" and res.model_version == "base"
    scores = [h.score for h in res.hits]
    assert scores == sorted(scores, reverse=True)
    for hit in res.hits:
        assert isinstance(hit, Hit)
        comps = hit.explanation["components"]
        total = sum(c["contribution"] for c in comps.values())
        assert total == pytest.approx(hit.score)
        assert comps["similarity"]["raw"] == pytest.approx(hit.similarity)
        assert hit.title == ARTICLES[hit.pmid]["title"]
    assert res.hits[0].journal and res.hits[0].pub_year == ARTICLES[201]["best"].year


def test_deleted_never_and_retracted_only_on_request(settings: Settings, corpus: Engine) -> None:
    default = pmids(go(settings, corpus, "CRISPR gene editing", k=20, index=CRISPR))
    assert 106 not in default and 105 not in default
    assert {101, 102, 103, 104, 107} <= set(default)
    with_retracted = go(
        settings, corpus, "CRISPR gene editing", k=20, index=CRISPR, include_retracted=True
    )
    assert 105 in pmids(with_retracted) and 106 not in pmids(with_retracted)
    retracted = next(h for h in with_retracted.hits if h.pmid == 105)
    assert retracted.explanation.get("retracted") is True


def test_date_range_filter(settings: Settings, corpus: Engine) -> None:
    got = crispr(settings, corpus, since=days_ago(365))
    assert set(got) == {101, 104}  # 103 is 400 days old, 107 has no date
    got = crispr(settings, corpus, until=days_ago(365))
    assert set(got) == {102, 103}
    got = pmids(go(
        settings, corpus, "CRISPR gene editing", k=20, index=CRISPR,
        since=days_ago(500).isoformat(), until=days_ago(100).isoformat(),
    ))
    assert set(got) == {103, 104}


def test_mesh_filter_is_case_insensitive_and_combines(settings: Settings, corpus: Engine) -> None:
    got = crispr(settings, corpus, mesh=("animals",))
    assert set(got) == {102, 103}
    got = crispr(settings, corpus, mesh=("Humans", "GENE EDITING"))
    assert set(got) == {101, 104, 107}
    assert pmids(go(settings, corpus, "CRISPR", k=5, mesh=("No Such Term",))) == []


def test_publication_type_filter(settings: Settings, corpus: Engine) -> None:
    got = crispr(settings, corpus, publication_type=("review",))
    assert got == [102]
    got = pmids(go(settings, corpus, "diabetes", k=20, publication_type=("meta-analysis",)))
    assert got == [402]


def test_language_and_abstract_filters(settings: Settings, corpus: Engine) -> None:
    assert crispr(settings, corpus, language="SPA") == [104]
    eng = pmids(go(settings, corpus, "diabetes", k=20, language="eng"))
    assert 404 not in eng and {401, 402, 403} <= set(eng)
    with_abs = crispr(settings, corpus, has_abstract=True)
    assert 103 not in with_abs and 101 in with_abs
    without = crispr(settings, corpus, has_abstract=False)
    assert without == [103]


def test_selective_filter_widens_the_candidate_list(
    settings: Settings, corpus: Engine
) -> None:
    narrow = settings.replace(rerank_candidates=2)
    index = HashIndex.of()
    # the one Spanish article is not among the 2 nearest neighbours of "sleep"
    res = go(narrow, corpus, "sleep memory", k=1, index=index, language="spa")
    assert pmids(res) == [104]
    assert index.calls[0] == 2 and index.calls[-1] == index.size
    assert index.calls == sorted(index.calls)
    # without filters no widening is needed
    index2 = HashIndex.of()
    res = go(narrow, corpus, "sleep memory", k=2, index=index2)
    assert len(res.hits) == 2 and index2.calls == [2]


def test_widening_follows_the_pass_rate() -> None:
    from ranking.search import WIDEN_FACTOR, widened

    assert widened(200, 198, 200, 10_000) == 253  # two retracted: ~50 more, not 600
    assert widened(200, 10, 200, 10_000) == 200 * WIDEN_FACTOR  # selective: the most
    assert widened(200, 0, 200, 10_000) == 200 * WIDEN_FACTOR  # nothing passed yet
    assert widened(200, 199, 200, 10_000) == 252  # the rate, with a quarter's margin
    assert widened(200, 100, 200, 300) == 300  # never beyond the index
    assert widened(1, 0, 1, 5) == 4 and widened(1, 1, 2, 5) == 3


def test_k_larger_than_index_and_unknown_pmids(settings: Settings, corpus: Engine) -> None:
    index = HashIndex.of([101, 102])
    index.vectors = {**index.vectors, 999999: hash_embed("CRISPR")[0]}  # not in the DB
    res = go(settings, corpus, "CRISPR", k=50, index=index)
    assert sorted(pmids(res)) == [101, 102]


def test_weights_reorder_results(settings: Settings, corpus: Engine) -> None:
    sim_only = ScoringOptions(1.0, 0.0, 0.0, 365.0)
    by_sim = go(settings, corpus, "type 2 diabetes", k=3, options=sim_only)
    sims = [h.similarity for h in by_sim.hits]
    assert sims == sorted(sims, reverse=True)
    cites = ScoringOptions(0.1, 0.0, 5.0, 365.0)
    by_cit = go(settings, corpus, "type 2 diabetes", k=3, options=cites)
    assert by_cit.hits[0].pmid == 402  # RCR 15
    fresh = ScoringOptions(0.1, 5.0, 0.0, 30.0)
    by_date = go(settings, corpus, "type 2 diabetes", k=3, options=fresh)
    assert by_date.hits[0].pmid in (301, 403)  # the newest articles win
    assert by_date.hits[0].best_date is not None
    assert by_date.hits[0].best_date >= dt.date.today() - dt.timedelta(days=20)


@pytest.mark.parametrize("bad", ["", "   ", "x" * 513])
def test_bad_query_rejected(sqlite_settings: Settings, bad: str) -> None:
    with pytest.raises(ConfigError, match="query"):
        run_search(sqlite_settings, bad, index=HashIndex.of(), embed=hash_embed)


@pytest.mark.parametrize(
    ("kw", "field"),
    [({"since": "2024-13-01"}, "since"), ({"since": "2024-05-01", "until": "2024-01-01"}, "since"),
     ({"mesh": "x" * 300}, "mesh"), ({"language": "english-language"}, "language")],
)
def test_bad_filters_rejected(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SearchFilters(**kw)


@pytest.mark.parametrize(
    ("kw", "said"),
    [({"mesh": "*"}, "mesh '*' names no descriptor"), ({"mesh": " * "}, "mesh '*'"),
     ({"mesh": ("Humans", "**")}, "mesh '**' names no descriptor"),
     ({"mesh": "- *"}, "mesh '- *' names no descriptor"),
     ({"publication_type": "*"}, "publication_type '*' names no publication type"),
     ({"publication_type": "\u2014"}, "publication_type '\u2014'")],
)
def test_a_term_naming_nothing_is_refused(kw: dict[str, Any], said: str) -> None:
    """A term of no letter or digit (the major-topic mark alone, a dash) matches no
    article: refused, as an over-long term is, never an empty answer."""
    with pytest.raises(ConfigError, match=re.escape(said)):
        SearchFilters(**kw)
    assert SearchFilters(mesh="Neoplasms*").mesh == ("Neoplasms*",)  # the mark after one


def test_bad_k_rejected(sqlite_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="k must"):
        run_search(sqlite_settings, "malaria", k=0, index=HashIndex.of(), embed=hash_embed)


# ------------------------------------------------------------- the real published index


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return real_corpus(tmp_path_factory)


def test_real_index_end_to_end(real: Settings) -> None:
    from ranking.index_files import open_published

    index = open_published(real)
    assert index is not None
    hits = search(real, "malaria vaccine trial in children", k=3)
    assert hits[0].pmid == 201
    assert 0 < hits[0].similarity <= 1.0001
    res = run_search(real, "neural network reads chest x-rays", k=2)
    assert set(pmids(res)) == {301, 302}
    assert res.index_version == index.id and res.model_version == index.model_version == "base"
    # filters and options through the public function
    hits = search(real, "gene editing", k=10, mesh="Animals", weights={"recency": 0.0},
                  half_life_days=90)
    assert {h.pmid for h in hits} == {102, 103}
    assert all(h.explanation["components"]["recency"]["weight"] == 0 for h in hits)
    assert all(h.pmid not in (105, 106) for h in search(real, "CRISPR gene editing", k=20))


def test_warm_up_loads_the_index_and_its_encoder(real: Settings, sqlite_settings: Settings) -> None:
    from ranking import embed as em
    from ranking.index_files import open_published

    assert warm_up(sqlite_settings) is None  # nothing published: nothing to load
    em.clear_cache()
    index = open_published(real)
    assert index is not None
    assert warm_up(real) == index.id
    loaded = dict(em._ENCODERS)
    assert len(loaded) == 1
    search(real, "malaria vaccine trial in children", k=3)
    assert em._ENCODERS == loaded  # the first search loaded nothing more


def test_no_published_index_says_what_to_run(sqlite_settings: Settings) -> None:
    with pytest.raises(NoIndexError, match="litpulse index refresh"):
        search(sqlite_settings, "anything")
    assert issubclass(NoIndexError, NotFoundError)


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"since": "2020-01-01", "until": "2020-01-10"},
        {"language": "eng", "has_abstract": True, "mesh": "Humans", "publication_type": "Review"},
    ],
)
def test_candidate_rows_are_read_by_pmid(
    sqlite_settings: Settings, filters: dict[str, Any]
) -> None:
    # the candidates' PMIDs are the way in: never a walk over every live article (SQLite's
    # planner without statistics took the is_deleted index: every row, every query)
    from sqlalchemy import text

    from ranking.search import _rows_query

    engine = db.connect(sqlite_settings)
    stmt = _rows_query(list(range(1000, 1300)), SearchFilters(**filters).clauses())
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = [row[-1] for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]
    outer = [p for p in plan if "articles " in p and "article_terms" not in p]
    # by the PMID key: the primary key's index (older stores) or the rowid itself (new
    # SQLite stores, whose INTEGER PMID key is the rowid)
    by_key = ("(pmid=?)", "INTEGER PRIMARY KEY (rowid=?)")
    assert outer and all(any(k in p for k in by_key) for p in outer), plan


def test_article_terms_is_reached_by_pmid_and_carries_no_other_index(
    settings: Settings, engine: Engine
) -> None:
    # every filter reads a candidate's terms by its PMID (the primary key's prefix); a
    # second B-tree over (kind, term) text costs each of ~6.7 rows a record (255 million at
    # the full baseline) its upkeep and disk, and no query reads it
    from sqlalchemy import inspect, text

    from ranking.search import _rows_query

    load_corpus(engine)
    assert inspect(engine).get_indexes("article_terms") == []
    filters = SearchFilters(language="eng", mesh="Humans", publication_type="Review")
    stmt = _rows_query([201, 202, 203], filters.clauses())
    sql = str(stmt.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(r[-1] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            reads = [p for p in plan.split("article_terms")[1:]]
            assert reads and all(p.lstrip().startswith("USING PRIMARY KEY (pmid=? AND kind=?")
                                 for p in reads), plan
        else:
            conn.execute(text("SET enable_seqscan = off"))  # a tiny table: the index or nothing
            plan = " ".join(r[0] for r in conn.execute(text("EXPLAIN " + sql)))
            assert "article_terms_pkey" in plan and "Seq Scan on article_terms" not in plan, plan


@pytest.mark.parametrize("term", ["Diabetes  Mellitus, Type 2", "Diabetes\u00a0Mellitus, Type 2"])
def test_mesh_filter_ignores_whitespace_differences_inside_a_term(
    settings: Settings, engine: Engine, term: str
) -> None:
    load_corpus(engine)
    expected = set(
        pmids_of(search_in(settings, engine, "diabetes", mesh="Diabetes Mellitus, Type 2"))
    )
    assert expected == {402, 403}
    assert set(pmids_of(search_in(settings, engine, "diabetes", mesh=term))) == expected


def test_language_filter_matches_any_language_of_the_article(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    index, lex = store_and_index(engine, tmp_path, [
        make_article(1, "Hepatitis vaccine in travellers", "Vaccine trial.",
                     languages=("spa", "eng")),
        make_article(2, "Hepatitis vaccine in children", "Vaccine trial.", languages=("eng",)),
    ])
    assert 1 in pmids_of(search_in(settings, engine, "vaccine", index=index, lexical=lex,
                                   language="spa"))
    assert set(pmids_of(search_in(settings, engine, "vaccine", index=index, lexical=lex,
                        language="eng"))) == {1, 2}
