"""Hybrid search: fusion math (RRF, mix), modes, the lexical part of explanations, sort by
date — over the test corpus with a real lexical index and the hash-vector test index."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from litpulse.core.states import SearchMode
from ranking.lexical import LexicalIndex, build_lexical
from ranking.scoring import ScoringOptions
from ranking.search import NoIndexError, SearchFilters, SearchResult, relevances, run_search
from tests.ranking.corpus import ARTICLES, HashIndex, hash_embed, load_corpus


@pytest.fixture
def lex(engine: Engine, tmp_path: Path) -> LexicalIndex:
    load_corpus(engine)
    build_lexical(
        engine, tmp_path / "lexical", base=None, add=None, remove=np.zeros(0, dtype=np.int64)
    )
    return LexicalIndex.open(tmp_path / "lexical")


def go(
    settings: Settings,
    engine: Engine,
    lex: LexicalIndex | None,
    query: str,
    *,
    k: int = 10,
    index: Any = None,
    mode: str = "hybrid",
    sort: str = "score",
    options: ScoringOptions | None = None,
    embed: Any = hash_embed,
    **filters: Any,
) -> SearchResult:
    return run_search(
        settings,
        query,
        k=k,
        filters=SearchFilters(**filters),
        options=options,
        engine=engine,
        index=index or HashIndex.of(),
        embed=embed,
        lexical=lex,
        mode=mode,
        sort=sort,
    )


def _sums(res: SearchResult) -> None:
    for hit in res.hits:
        comps = hit.explanation["components"]
        assert sum(c["contribution"] for c in comps.values()) == pytest.approx(hit.score)
        assert hit.explanation["score"] == pytest.approx(hit.score)
        for c in comps.values():
            assert c["contribution"] == pytest.approx(c["weight"] * c["value"])


# ------------------------------------------------------------------------- fusion math


SIMS = {1: 0.9, 2: 0.5, 3: 0.7}
BM25 = {2: 12.0, 3: 3.0, 4: 6.0}
OPTS = ScoringOptions(1.0, 0.0, 0.0, 365.0, lexical_share=0.5, fusion="rrf", rrf_k=60)


def test_rrf_values_are_rank_based_and_zero_without_a_part() -> None:
    rel = relevances(SIMS, BM25, [1, 2, 3, 4], SearchMode.HYBRID, OPTS)
    assert rel[1].similarity_rank == 1 and rel[3].similarity_rank == 2
    assert rel[2].lexical_rank == 1 and rel[4].lexical_rank == 2
    assert rel[1].similarity == 1.0 and rel[3].similarity == pytest.approx(61 / 62)
    assert rel[2].similarity == pytest.approx(61 / 63) and rel[4].similarity == 0.0
    assert rel[2].lexical == 1.0 and rel[3].lexical == pytest.approx(61 / 63)
    assert rel[1].lexical == 0.0 and rel[1].bm25 is None
    # the fused relevance: 2 is in both lists, near the top of each: it wins
    fused = {p: 0.5 * r.similarity + 0.5 * r.lexical for p, r in rel.items()}
    assert max(fused, key=lambda p: fused[p]) == 2
    k10 = relevances(
        SIMS, BM25, [1, 2, 3, 4], SearchMode.HYBRID, dataclasses.replace(OPTS, rrf_k=10)
    )
    assert k10[3].similarity == pytest.approx(11 / 12)
    # ranks are among the candidates given (those passing the filters)
    only = relevances(SIMS, BM25, [3, 4], SearchMode.HYBRID, OPTS)
    assert only[3].similarity_rank == 1 and only[4].lexical_rank == 1


def test_mix_is_min_max_over_the_candidates() -> None:
    mix = dataclasses.replace(OPTS, fusion="mix")
    rel = relevances(SIMS, BM25, [1, 2, 3, 4], SearchMode.HYBRID, mix)
    assert rel[1].similarity == 1.0 and rel[2].similarity == 0.0
    assert rel[3].similarity == pytest.approx((0.7 - 0.5) / (0.9 - 0.5))
    assert rel[2].lexical == 1.0 and rel[3].lexical == 0.0
    assert rel[4].lexical == pytest.approx((6 - 3) / (12 - 3))
    assert rel[4].similarity == 0.0 and rel[1].lexical == 0.0  # a part missing counts 0


def test_single_mode_values() -> None:
    sem = relevances(SIMS, BM25, [1, 2, 3, 4], SearchMode.SEMANTIC, OPTS)
    assert sem[3].similarity == 0.7 and sem[3].share(OPTS) == 0.0
    lexical = relevances(SIMS, BM25, [1, 2, 3, 4], SearchMode.LEXICAL, OPTS)
    assert lexical[4].lexical == pytest.approx(0.5) and lexical[2].lexical == 1.0  # BM25/best
    assert lexical[4].share(OPTS) == 1.0


def test_bad_fusion_options_rejected() -> None:
    with pytest.raises(ConfigError, match="fusion"):
        ScoringOptions(fusion="sum")
    with pytest.raises(ConfigError, match="lexical weight"):
        ScoringOptions(lexical_share=1.5)
    with pytest.raises(ConfigError, match="rrf_k"):
        ScoringOptions(rrf_k=0)
    with pytest.raises(ConfigError, match="LITPULSE_FUSION"):
        Settings.from_env({"LITPULSE_FUSION": "max"})


# --------------------------------------------------------------------------- search


@pytest.mark.parametrize("fusion", ["rrf", "mix"])
def test_hybrid_explains_both_parts_and_adds_up(
    settings: Settings, lex: LexicalIndex, engine: Engine, fusion: str
) -> None:
    options = ScoringOptions.from_settings(settings, weights={"lexical": 0.4})
    options = dataclasses.replace(options, fusion=fusion)
    res = go(settings, engine, lex, "malaria vaccine for children", k=5, options=options)
    assert res.mode == res.requested_mode == SearchMode.HYBRID
    assert res.hits[0].pmid == 201
    _sums(res)
    top = res.hits[0].explanation
    assert top["mode"] == "hybrid" and top["lexical_share"] == 0.4
    sim, lexc = top["components"]["similarity"], top["components"]["lexical"]
    assert sim["weight"] == pytest.approx(0.6) and lexc["weight"] == pytest.approx(0.4)
    assert lexc["raw"] == pytest.approx(res.hits[0].bm25)
    terms = {t["term"]: t for t in lexc["terms"]}
    assert {"malaria", "vaccin", "children"} <= set(terms)
    assert sum(t["weight"] for t in terms.values()) == pytest.approx(lexc["raw"], rel=1e-4)
    assert "malaria" in lexc["text"] and res.to_dict()["mode"] == "hybrid"


def test_hybrid_finds_what_only_one_index_holds(
    settings: Settings, lex: LexicalIndex, engine: Engine
) -> None:
    no_402 = HashIndex.of([p for p in ARTICLES if p != 402])  # 402 has no vector
    res = go(settings, engine, lex, "metformin", index=no_402, k=20)
    hit = next(h for h in res.hits if h.pmid == 402)
    comps = hit.explanation["components"]
    assert comps["similarity"]["raw"] is None and comps["similarity"]["value"] == 0.0
    assert comps["lexical"]["rank"] == 1
    sem = go(settings, engine, lex, "metformin", index=no_402, k=20, mode="semantic")
    assert 402 not in [h.pmid for h in sem.hits]


def test_semantic_mode_ranks_as_before_and_still_shows_terms(
    settings: Settings, lex: LexicalIndex, engine: Engine
) -> None:
    plain = go(settings, engine, None, "type 2 diabetes", k=5)  # no lexical index at all
    assert plain.mode == SearchMode.SEMANTIC and plain.requested_mode == SearchMode.HYBRID
    assert "lexical" not in plain.hits[0].explanation["components"]
    sem = go(settings, engine, lex, "type 2 diabetes", k=5, mode="semantic")
    assert [h.pmid for h in sem.hits] == [h.pmid for h in plain.hits]
    assert [h.score for h in sem.hits] == pytest.approx([h.score for h in plain.hits])
    _sums(sem)
    lexc = sem.hits[0].explanation["components"]["lexical"]
    assert lexc["weight"] == 0.0 and lexc["terms"]  # shown, not counted


def test_lexical_mode_needs_no_model(settings: Settings, lex: LexicalIndex, engine: Engine) -> None:
    def no_model(text: str) -> np.ndarray:
        raise AssertionError("lexical mode must not embed the query")

    res = go(settings, engine, lex, "artemisinin resistance", mode="lexical", embed=no_model)
    assert res.mode == SearchMode.LEXICAL and res.hits[0].pmid == 202
    assert {h.pmid for h in res.hits} == {202}  # only articles with a query term
    _sums(res)
    comps = res.hits[0].explanation["components"]
    assert comps["lexical"]["value"] == 1.0 and comps["similarity"]["weight"] == 0.0
    with pytest.raises(NoIndexError, match="lexical"):
        go(settings, engine, None, "malaria", mode="lexical")


def test_lexical_mode_stops_when_every_match_is_in(
    settings: Settings, lex: LexicalIndex, engine: Engine
) -> None:
    """Fewer matches than asked for: the lexical list is whole, widening cannot add any."""
    asked: list[int] = []

    class Counting:  # the real index, its list lengths recorded
        size = lex.size

        def search(self, text: str, n: int) -> list[tuple[int, float]]:
            asked.append(n)
            return lex.search(text, n)

        def __getattr__(self, name: str) -> object:
            return getattr(lex, name)

    small = settings.replace(rerank_candidates=2)
    res = run_search(small, "artemisinin", k=2, engine=engine, index=HashIndex.of(),
                     lexical=Counting(), mode="lexical", offset=0)  # type: ignore[arg-type]
    assert [h.pmid for h in res.hits] == [202] and asked == [2]


def test_filters_apply_to_lexical_candidates(
    settings: Settings, lex: LexicalIndex, engine: Engine
) -> None:
    res = go(settings, engine, lex, "CRISPR gene editing", k=20, mode="lexical", mesh=("Animals",))
    assert {h.pmid for h in res.hits} == {102, 103}
    res = go(settings, engine, lex, "CRISPR gene editing", k=20, mode="lexical")
    assert 105 not in {h.pmid for h in res.hits} and 106 not in {h.pmid for h in res.hits}


def test_sort_by_date_is_deterministic(
    settings: Settings, lex: LexicalIndex, engine: Engine
) -> None:
    by_score = go(settings, engine, lex, "CRISPR gene editing", k=6)
    first = go(settings, engine, lex, "CRISPR gene editing", k=6, sort="date")
    again = go(settings, engine, lex, "CRISPR gene editing", k=6, sort="date")
    assert [h.pmid for h in first.hits] == [h.pmid for h in again.hits]
    assert {h.pmid for h in first.hits} == {h.pmid for h in by_score.hits}
    dated = [h for h in first.hits if h.best_date is not None]
    assert [h.best_date for h in dated] == sorted((h.best_date for h in dated), reverse=True)
    assert first.hits[-1].pmid == 107 and first.hits[-1].best_date is None  # undated last
    assert first.to_dict()["sort"] == "date"


def test_bad_mode_and_sort_rejected(sqlite_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="mode"):
        run_search(sqlite_settings, "x", index=HashIndex.of(), embed=hash_embed, mode="fuzzy")
    with pytest.raises(ConfigError, match="sort"):
        run_search(sqlite_settings, "x", index=HashIndex.of(), embed=hash_embed, sort="title")
