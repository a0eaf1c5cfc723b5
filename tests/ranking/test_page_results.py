"""What the researcher's page needs of search: per-hit details, pages, similar articles.

Runs on SQLite and PostgreSQL with the corpus and its exact bag-of-words index
(:class:`tests.ranking.corpus.HashIndex`: no lexical index, so highlights use the query's
own terms).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from litpulse.core import db
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.settings import Settings
from ranking.lexical import query_terms
from ranking.search import MAX_OFFSET, SearchFilters, SearchResult, run_search, sort_by_date
from ranking.similar import similar_articles
from tests.ranking.corpus import ARTICLES, HashIndex, hash_embed, load_corpus


@pytest.fixture
def corpus(engine: Engine) -> Engine:
    load_corpus(engine)
    return engine


def go(
    settings: Settings,
    engine: Engine,
    query: str,
    *,
    k: int = 10,
    index: Any = None,
    offset: int | None = None,
    sort: str = "score",
    **filters: Any,
) -> SearchResult:
    return run_search(
        settings,
        query,
        k=k,
        filters=SearchFilters(**filters),
        engine=engine,
        index=index or HashIndex.of(),
        embed=hash_embed,
        offset=offset,
        sort=sort,
    )


def words(text: str, spans: Any) -> list[str]:
    return [text[a:b] for a, b in spans]


def test_hits_carry_authors_snippet_mesh_types_doi_and_links(
    settings: Settings,
    corpus: Engine,
) -> None:
    query = "malaria vaccine for children"
    res = go(settings, corpus, query, k=20, include_retracted=True)
    by_pmid = {h.pmid: h for h in res.hits}
    terms = query_terms(query)
    for hit in res.hits:
        a = ARTICLES[hit.pmid]
        assert hit.authors == ("Doe J", "Test Consortium") and hit.author_count == 2
        assert hit.mesh == tuple(a["mesh"])  # the major topic (first here) leads
        assert hit.publication_types == tuple(a["ptype"])
        assert hit.doi == f"10.1000/test.{hit.pmid}"
        assert hit.retracted is bool(a.get("retracted"))
        if not a["abstract"]:
            assert hit.snippet is None
            continue
        assert hit.snippet is not None and hit.snippet.text == a["abstract"]
        # exactly the words whose index terms are query terms are highlighted
        expected = [
            w
            for w in a["abstract"].replace(",", " ").replace(".", " ").split()
            if set(query_terms(w)) & terms.keys()
        ]
        assert words(hit.snippet.text, hit.snippet.highlights) == expected
    assert words(by_pmid[201].snippet.text, by_pmid[201].snippet.highlights) == [  # type: ignore[union-attr]
        "malaria",
        "vaccine",
        "children",
    ]
    assert words(by_pmid[201].title, by_pmid[201].title_highlights) == [
        "Malaria",
        "vaccine",
        "children",
    ]
    assert by_pmid[105].retracted and by_pmid[105].explanation["retracted"] is True
    d = by_pmid[201].to_dict()
    assert d["links"] == {
        "pubmed": "https://pubmed.ncbi.nlm.nih.gov/201/",
        "doi": "https://doi.org/10.1000/test.201",
    }
    assert d["snippet"]["highlights"] == [list(s) for s in by_pmid[201].snippet.highlights]  # type: ignore[union-attr]
    assert d["authors"] == ["Doe J", "Test Consortium"] and d["retracted"] is False


def test_no_next_page_is_promised_past_the_deepest_offset(
    settings: Settings, corpus: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``has_more`` says a next page may be asked for: not when its offset would be
    refused (before: True at offset MAX_OFFSET, and the next page answered 422)."""
    import ranking.search

    monkeypatch.setattr(ranking.search, "MAX_OFFSET", 8)
    query = "gene editing in human cells"
    assert go(settings, corpus, query, k=4, offset=4).has_more  # the next offset, 8, is allowed
    deepest = go(settings, corpus, query, k=4, offset=8)
    assert len(deepest.hits) == 4 and not deepest.has_more  # 12 would be refused
    # more results match: said (truncated, and a note), never left as a list's end
    assert deepest.truncated and deepest.to_dict()["truncated"] is True
    assert [n for n in deepest.notes if "offsets stop at 8" in n]
    assert not go(settings, corpus, query, k=4, offset=4).truncated
    with pytest.raises(ConfigError):
        go(settings, corpus, query, k=4, offset=12)


def test_pages_are_disjoint_slices_of_one_ranking(settings: Settings, corpus: Engine) -> None:
    query = "gene editing in human cells"
    whole = go(settings, corpus, query, k=12, offset=0)
    assert len(whole.hits) == 12 and whole.has_more
    pages = [go(settings, corpus, query, k=4, offset=o) for o in (0, 4, 8)]
    got = [h.pmid for p in pages for h in p.hits]
    assert got == [h.pmid for h in whole.hits] and len(set(got)) == 12
    assert [p.offset for p in pages] == [0, 4, 8] and all(p.has_more for p in pages)
    again = go(settings, corpus, query, k=4, offset=4)
    assert [h.pmid for h in again.hits] == [h.pmid for h in pages[1].hits]  # deterministic
    # the end: 18 live, non-retracted articles
    last = go(settings, corpus, query, k=4, offset=16)
    assert len(last.hits) == 2 and not last.has_more
    assert go(settings, corpus, query, k=4, offset=20).hits == ()
    # newest first: each page holds its score page's results, in date order (36g X1)
    for o in (0, 5, 10, 15):
        dated = go(settings, corpus, query, k=5, offset=o, sort="date")
        best = go(settings, corpus, query, k=5, offset=o)
        assert [h.pmid for h in dated.hits] == [h.pmid for h in sort_by_date(best.hits)]
    everything = go(settings, corpus, query, k=18, offset=0)
    assert [h.pmid for h in go(settings, corpus, query, k=18, offset=0, sort="date").hits] \
        == [h.pmid for h in sort_by_date(everything.hits)]


def test_pages_stay_disjoint_when_filters_make_the_lists_widen(
    settings: Settings,
    corpus: Engine,
) -> None:
    narrow = settings.replace(rerank_candidates=3)
    query = "sleep and memory in humans"
    index = HashIndex.of()
    pages = [
        go(narrow, corpus, query, k=2, offset=o, index=index, language="eng", has_abstract=True)
        for o in (0, 2, 4)
    ]
    whole = go(narrow, corpus, query, k=6, offset=0, language="eng", has_abstract=True)
    assert [h.pmid for p in pages for h in p.hits] == [h.pmid for h in whole.hits]
    assert len({h.pmid for p in pages for h in p.hits}) == 6
    assert index.calls[0] == 3 and index.calls[-1] > 3  # it did widen


def test_pages_are_one_list_whatever_their_size_across_candidate_blocks(
    settings: Settings, corpus: Engine
) -> None:
    # finding 5 (rev-api): a page's candidate depth was its end rounded up to a block, so
    # pages before and after a block boundary were cut from different rankings
    narrow = settings.replace(rerank_candidates=4)  # blocks of 4 over the 18 results
    query = "gene editing in human cells"
    whole = [h.pmid for h in go(narrow, corpus, query, k=18, offset=0).hits]
    assert len(whole) == len(set(whole)) == 18
    for k in (1, 3, 5, 7):
        pages = [go(narrow, corpus, query, k=k, offset=o) for o in range(0, 18, k)]
        assert [h.pmid for p in pages for h in p.hits] == whole, k
        assert [p.has_more for p in pages] == [True] * (len(pages) - 1) + [False]
        # newest first: each page is its score page in date order (36g X1), so the
        # date-sorted pages list the same results, disjoint, whatever their size
        for page in pages:
            dated = go(narrow, corpus, query, k=k, offset=page.offset, sort="date")
            assert [h.pmid for h in dated.hits] == [h.pmid for h in sort_by_date(page.hits)]
            assert dated.has_more == page.has_more
    # the first block is what a search for its 4 best ranks: page 1 costs no more
    assert whole[:4] == [h.pmid for h in go(narrow, corpus, query, k=4).hits]


@pytest.mark.parametrize("offset", [-1, MAX_OFFSET + 1, True])
def test_bad_offsets_are_refused(settings: Settings, corpus: Engine, offset: Any) -> None:
    with pytest.raises(ConfigError, match="offset"):
        go(settings, corpus, "malaria", offset=offset)


def brute_force(index: HashIndex, pmid: int, allowed: set[int]) -> list[tuple[int, float]]:
    q = index.vectors[pmid]
    sims = {p: float(np.dot(v, q)) for p, v in index.vectors.items() if p != pmid and p in allowed}
    return sorted(sims.items(), key=lambda kv: (-kv[1], kv[0]))


def test_similar_articles_are_the_true_nearest_neighbours(
    settings: Settings,
    corpus: Engine,
) -> None:
    index = HashIndex.of()
    live = {p for p, a in ARTICLES.items() if not a.get("deleted") and not a.get("retracted")}
    for pmid in (101, 201, 302, 105):
        res = similar_articles(settings, pmid, k=5, engine=corpus, index=index)
        got = [(h.pmid, h.similarity) for h in res.hits]
        want = brute_force(index, pmid, live)[:5]
        assert [p for p, _ in got] == [p for p, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
        assert pmid not in [p for p, _ in got]
        assert res.title == ARTICLES[pmid]["title"]
    with corpus.connect() as conn:  # the store the pages were read from
        assert res.store_version == db.store_version(conn) == res.to_dict()["store_version"]
    with_retracted = similar_articles(
        settings, 101, k=18, engine=corpus, index=index, include_retracted=True
    )
    assert 105 in [h.pmid for h in with_retracted.hits]
    assert 106 not in [h.pmid for h in with_retracted.hits]  # deleted: never
    top = with_retracted.hits[0]
    assert top.authors and top.doi and top.to_dict()["links"]["pubmed"].endswith(f"/{top.pmid}/")


def test_similar_widens_past_filtered_neighbours(settings: Settings, corpus: Engine) -> None:
    index = HashIndex.of()
    res = similar_articles(settings, 102, k=3, engine=corpus, index=index)
    # k, the article itself, and one more: whether a next page follows (has_more)
    assert len(res.hits) == 3 and index.calls[0] == 5
    live = {p for p, a in ARTICLES.items() if not a.get("deleted") and not a.get("retracted")}
    assert [h.pmid for h in res.hits] == [p for p, _ in brute_force(index, 102, live)[:3]]


def test_similar_errors(settings: Settings, corpus: Engine) -> None:
    index = HashIndex.of()
    with pytest.raises(NotFoundError, match="999"):
        similar_articles(settings, 999, engine=corpus, index=index)
    with pytest.raises(ConfigError, match="k must"):
        similar_articles(settings, 101, k=0, engine=corpus, index=index)


# ------------------------------------------------------------ review (rev-api): findings


@pytest.mark.parametrize(
    "filters",
    [{"language": "\x00"}, {"mesh": ("Humans\x00",)}, {"publication_type": ("\x00Review",)}],
)
def test_a_nul_in_a_filter_is_a_config_error(
    settings: Settings, corpus: Engine, filters: dict[str, Any]
) -> None:
    # finding 3 (rev-api): on PostgreSQL the NUL reached SQL (DataError, HTTP 500)
    with pytest.raises(ConfigError, match="NUL"):
        go(settings, corpus, "malaria", **filters)


@pytest.mark.parametrize(
    "filters",
    [{"language": "en\x1bg"}, {"mesh": ("Hu\x08mans",)}, {"publication_type": ("Review\x85",)}],
)
def test_a_control_character_in_a_filter_or_query_is_a_config_error(
    settings: Settings, corpus: Engine, filters: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match="control characters"):
        go(settings, corpus, "malaria", **filters)
    with pytest.raises(ConfigError, match="query must not hold control characters"):
        go(settings, corpus, "malaria\x1b[31m")
    # ordinary whitespace is no control character here: trimmed as before
    assert go(settings, corpus, "malaria\n", mesh=("\tHumans\r\n",)).filters.mesh == ("Humans",)
