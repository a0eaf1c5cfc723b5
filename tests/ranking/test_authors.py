"""Authors in queries: ``asthma AND Smith J[au]`` finds Smith J's articles on asthma.

The records go through the real store and the real lexical index (tantivy, format 7 with
the author field); the vectors are the hashed bag of words of :mod:`tests.ranking.corpus`,
so articles by other authors on the same topic are the nearest neighbours an author
clause must turn away, in every mode.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from ingest.records import Author
from litpulse.core.errors import ConfigError, ConsistencyError
from litpulse.core.settings import Settings
from ranking import lexical
from ranking.authors import Role, author_keys, split_authors
from ranking.search import NoIndexError, checked_query
from tests.ranking.corpus import make_article, pmids_of, search_in, store_and_index
from tests.ranking.test_lexical import _stats

SMITH_JA, SMITH_JR, SMITH_J = Author("Smith", "Jane A", "JA"), Author("Smith", "John R", "JR"), \
    Author("Smith", "Jo", "J")  # fmt: skip
JONES, LI = Author("Jones", "Kate", "K"), Author("Li", "Xin", "X")
#: title, abstract, authors
Article = tuple[str, str, tuple[Author, ...]]
#: pmid -> (title, abstract, authors)
WORLD: dict[int, Article] = {
    1: ("Asthma in children", "Wheeze and asthma in school children.", (SMITH_JA, JONES)),
    2: ("Inhaled steroids for asthma", "Asthma control with steroids.", (SMITH_JR, LI)),
    3: ("Biologics in severe asthma", "Asthma biologics.",
        (Author("Smithson", "Jan", "J"), Author("Müller", "Hans", "H"))),
    4: ("Asthma exacerbations in winter", "Asthma attacks.", (JONES, SMITH_J)),
    5: ("Chronic obstructive pulmonary disease", "COPD in smokers.", (SMITH_J,)),
    6: ("Asthma and obesity", "Obese adults with asthma.", (Author("Smith", "John"),)),
    7: ("Asthma phenotypes", "Clusters of asthma.", (Author("van der Berg", "Jan", "J"),)),
    8: ("Asthma registries", "A national asthma registry.",
        (Author(collective_name="Global Asthma Network"), JONES)),
    **{10 + i: (f"Asthma cohort {i}", f"Asthma outcomes in cohort {i}.", (JONES, LI))
       for i in range(10)},
}


def _world(
    engine: Engine, tmp_path: Path, extra: dict[int, Article] | None = None
) -> tuple[Any, lexical.LexicalIndex]:
    """:data:`WORLD` (and ``extra`` articles, the same shape) stored and indexed."""
    records = [dataclasses.replace(make_article(p, t, a), authors=au)
               for p, (t, a, au) in {**WORLD, **(extra or {})}.items()]  # fmt: skip
    return store_and_index(engine, tmp_path, records)


def _found(settings: Settings, engine: Engine, query: str, index: Any, lex: Any,
           mode: str = "lexical") -> set[int]:  # fmt: skip
    return set(pmids_of(search_in(settings, engine, query, index=index, lexical=lex, mode=mode,
                                  k=30)))  # fmt: skip


def test_author_keys_fold_the_name_and_mark_the_first_and_last_author() -> None:
    keys = author_keys([
        {"last_name": "Müller-Lüdenscheidt", "fore_name": "Hans-Peter", "initials": None},
        {"last_name": "O\u2019Brien", "fore_name": "K", "initials": "K"},
        {"collective_name": "ATLAS Collaboration"},
        "not an author",
    ])  # fmt: skip
    # no initials given: the forename's (Hans-Peter: HP), as PubMed writes them
    assert {"muller ludenscheidt", "muller ludenscheidt h", "muller ludenscheidt hp",
            "muller ludenscheidt hans", "muller ludenscheidt hans peter"} <= set(keys)
    assert "^muller ludenscheidt hp" in keys and "$muller ludenscheidt" not in keys
    assert "obrien k" in keys and "^obrien k" not in keys and "$obrien" not in keys
    assert "atlas collaboration" in keys and "$atlas collaboration" in keys
    assert author_keys([]) == () and author_keys([{"last_name": " "}]) == ()


@pytest.mark.parametrize(
    ("query", "rest", "shown", "keys"),
    [
        ("asthma AND Smith J[au]", "asthma", ["Smith J[au]"], ["smith j"]),
        ("Smith J[au] AND asthma", "asthma", ["Smith J[au]"], ["smith j"]),
        ("Smith J[au] asthma", "asthma", ["Smith J[au]"], ["smith j"]),
        ('asthma "van der Berg J"[au]', "asthma", ["van der Berg J[au]"], ["van der berg j"]),
        ("van der Berg J[au] AND asthma", "asthma", ["van der Berg J[au]"], ["van der berg j"]),
        ("asthma NOT Li X[1au]", "asthma", ["NOT Li X[1au]"], ["^li x"]),
        ("asthma AND Müller[lastau]", "asthma", ["Müller[lastau]"], ["$muller"]),
        ("asthma AND Smith J[AU]", "asthma", ["Smith J[au]"], ["smith j"]),
        ("asthma AND Smith John[author]", "asthma", ["Smith John[au]"], ["smith john"]),
        ("asthma AND (Smith J[au] AND Li X[au])", "asthma", ["Smith J[au]", "Li X[au]"],
         ["smith j", "li x"]),
        ("covid-19 AND O'Brien K[fau]", "covid-19", ["O'Brien K[fau]"], ["obrien k"]),
        # the results line shows the tag as PubMed names it: [fau], [cn], [1au]
        ("asthma AND Smith, John[Full Author Name]", "asthma", ["Smith John[fau]"],
         ["smith john"]),
        ("asthma AND Smith J[Author - First]", "asthma", ["Smith J[1au]"], ["^smith j"]),
        ("asthma AND Smith J Jr.[au]", "asthma", ["Smith J[au]"], ["smith j"]),
        ('asthma AND "King ML Jr"[au]', "asthma", ["King ML[au]"], ["king ml"]),
        ("asthma AND Smith JR[au]", "asthma", ["Smith JR[au]"], ["smith jr"]),
        # a group's name whole ([cn]), alone too
        ("Global Asthma Network[cn]", "", ["Global Asthma Network[cn]"],
         ["global asthma network"]),
        ("ATLAS Collaboration[cn]", "", ["ATLAS Collaboration[cn]"], ["atlas collaboration"]),
        ("asthma AND ATLAS[Corporate Author]", "asthma", ["ATLAS[cn]"], ["atlas"]),
        # alternative authors: one clause met by any of them
        ("Smith J[au] OR Li X[au]", "", ["(Smith J[au] OR Li X[au])"], ["smith j"]),
        ("asthma AND (Smith J[1au] OR Jones K[lastau] OR ATLAS Collaboration[cn])", "asthma",
         ["(Smith J[1au] OR Jones K[lastau] OR ATLAS Collaboration[cn])"], ["^smith j"]),
        ("(Smith J[au] OR Li X[au]) AND asthma NOT Wu Y[au]", "asthma",
         ["(Smith J[au] OR Li X[au])", "NOT Wu Y[au]"], ["smith j", "wu y"]),
        ("Smith J[au] OR Li X[au] AND asthma", "asthma", ["(Smith J[au] OR Li X[au])"],
         ["smith j"]),  # read left to right: (Smith J OR Li X) AND asthma
        # not author tags: gold, a bracket after a space, a tag PubMed does not have
        ("gold [Au] nanoparticles", "gold [Au] nanoparticles", [], []),
        ("Cl[Au] complexes", "Cl[Au] complexes", [], []),
    ],
)
def test_author_clauses_are_read_as_pubmed_reads_them(
    query: str, rest: str, shown: list[str], keys: list[str]
) -> None:
    got_rest, clauses, problems = split_authors(query)
    assert (got_rest, [c.shown for c in clauses], [c.key for c in clauses]) == (rest, shown, keys)
    assert problems == ()
    if shown:
        checked_query(query)  # accepted as it is


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("asthma Smith J[au]", "Put AND between the topic and the author"),
        ("Asthma, Smith[au]", "part of the author's name"),
        ("asthma OR Smith J[au]", "cannot be one of alternatives"),
        # read left to right: (asthma AND Smith J) OR Li X
        ("asthma AND Smith J[au] OR Li X[au]", "asthma AND (Smith J[au] OR Li X[au])"),
        ("asthma AND (Smith J[au] OR Li X[au] OR copd)", "brackets of their own"),
        ("copd OR (Smith J[au] OR Li X[au])", "cannot be one of alternatives"),
        ("NOT (Smith J[au] OR Li X[au])", "only excludes"),  # two exclusions, no topic
        ("asthma NOT (children OR Smith J[au])", "exclude each on its own"),
        ("asthma NOT ((Smith J[au] OR Li X[au]) OR Wu Y[au])", "exclude each on its own"),
        ("asthma and Smith J[au]", "capitals: asthma AND Smith J[au]"),
        ("asthma AND {x} Smith[au]", "an author's name?"),  # braces: no format string
        ("asthma AND x{tag}y[au]", "'x{tag}y'"),  # the name as typed, braces and all
        ("{0} Collaboration[cn]", "an author's name?"),
        ("asthma NOT Smith J[au] OR Li X[au]", "exclude each on its own"),
        ("asthma AND 5-FU[au]", "an author's name?"),
        ("NOT Smith J[au]", "only excludes"),
        ("NOT Smith J[au] AND NOT Li X[1au]", "only excludes"),
        ("asthma AND Smith J[ti]", "field tags"),
        ("asthma AND Smith J[ir]", "investigators and author identifiers are not indexed"),
        ("asthma smith[au]", "Quote the whole name"),
        ("Smith John[au]", "Quote the whole name"),  # alone: "Smith John"[au]
        ("asthma World Health Organization[cn]", "asthma AND World Health Organization[cn]"),
    ],
)
def test_author_clauses_that_cannot_be_read_one_way_are_refused(query: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r".*") as err:
        checked_query(query)
    assert says in str(err.value)


def test_an_author_clause_requires_the_author_in_every_mode(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    index, lex = _world(engine, tmp_path)
    smith_j = {1, 2, 4, 6}  # Smith JA, Smith JR, Smith J, Smith John (no initials: J)
    for mode in ("lexical", "semantic", "hybrid"):
        found = _found(settings, engine, "asthma AND Smith J[au]", index, lex, mode)
        # 5 is Smith J's too, without the word: meaning may rank it, BM25 cannot
        assert found - {5} == smith_j, mode
        assert {3, 7, 8} & found == set(), mode  # Smithson J is no Smith J
    assert _found(settings, engine, "Smith JA[au] asthma", index, lex) == {1}
    assert _found(settings, engine, "asthma AND Smith J[1au]", index, lex) == {1, 2, 6}
    assert _found(settings, engine, "asthma AND Smith J[lastau]", index, lex) == {4, 6}
    assert _found(settings, engine, "asthma AND Smith[au]", index, lex) == smith_j
    assert _found(settings, engine, "asthma AND Muller H[au]", index, lex) == {3}
    assert _found(settings, engine, "asthma AND Müller[au]", index, lex) == {3}
    assert _found(settings, engine, 'asthma AND "van der Berg J"[au]', index, lex) == {7}
    assert _found(settings, engine, "asthma AND van der Berg[au]", index, lex) == {7}
    assert _found(settings, engine, 'asthma AND "Global Asthma Network"[au]', index, lex) == {8}
    assert _found(settings, engine, "asthma AND Smith J[au] AND Jones K[au]", index, lex) \
        == {1, 4}  # fmt: skip
    everyone = _found(settings, engine, "asthma", index, lex)
    assert _found(settings, engine, "asthma NOT Smith J[au]", index, lex) == everyone - smith_j
    result = search_in(settings, engine, "asthma NOT Li X[au] AND Smith J[au]", index=index,
                       lexical=lex, mode="lexical", k=30)  # fmt: skip
    assert set(pmids_of(result)) == smith_j - {2}
    assert result.authors == ("NOT Li X[au]", "Smith J[au]")
    assert result.to_dict()["authors"] == ["NOT Li X[au]", "Smith J[au]"]


def test_not_before_a_bracket_of_alternative_authors_excludes_each(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """``asthma NOT (Smith J[au] OR Li X[au])`` leaves out the articles of either author,
    as PubMed reads it and as ``asthma NOT Smith J[au] NOT Li X[au]`` says (it was
    refused); in every mode, with square brackets, three authors, and beside a group of
    required authors."""
    from ranking.authors import split_authors

    index, lex = _world(engine, tmp_path)
    everyone = _found(settings, engine, "asthma", index, lex)
    smith_j = _found(settings, engine, "asthma AND Smith J[au]", index, lex)
    li_x = _found(settings, engine, "asthma AND Li X[au]", index, lex)
    assert smith_j and li_x and everyone - smith_j - li_x
    for mode in ("lexical", "hybrid", "semantic"):
        flat = _found(settings, engine, "asthma NOT Smith J[au] NOT Li X[au]", index, lex, mode)
        for query in ("asthma NOT (Smith J[au] OR Li X[au])",
                      "asthma NOT [Smith J[au] OR Li X[au]]",
                      "NOT (Smith J[au] OR Li X[au]) asthma"):
            assert _found(settings, engine, query, index, lex, mode) == flat, (mode, query)
        assert flat & (smith_j | li_x) == set(), mode
    assert _found(settings, engine, "asthma NOT (Smith J[au] OR Li X[au])", index, lex) == (
        everyone - smith_j - li_x)
    rest, clauses, problems = split_authors(
        "asthma AND (Smith J[au] OR Jones K[au]) NOT (Li X[au] OR Wu Y[1au] OR Muller H[au])")
    assert (rest, problems) == ("asthma", ())
    assert [c.shown for c in clauses] == [
        "(Smith J[au] OR Jones K[au])", "NOT Li X[au]", "NOT Wu Y[1au]", "NOT Muller H[au]"]
    # the same bracket beside another OR is still refused (what would the OR join?)
    assert split_authors("asthma NOT (Smith J[au] OR Li X[au]) OR copd")[2]


def test_semantic_search_meets_a_rare_author_without_widening_to_the_whole_index(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # van der Berg J wrote one article, far from "obesity": with 3 candidates asked for,
    # the neighbours alone would widen towards all 18; the author's articles are scored
    # by their stored vectors at once
    index, lex = _world(engine, tmp_path)
    s = settings.replace(rerank_candidates=3)
    calls: list[int] = []
    search = index.search

    def counted(vectors: np.ndarray, k: int) -> Any:
        calls.append(k)
        return search(vectors, k)

    index.search = counted  # type: ignore[method-assign]
    result = search_in(s, engine, "obesity AND van der Berg J[au]", index=index, lexical=lex,
                       mode="semantic", k=1)  # fmt: skip
    assert pmids_of(result) == [7]
    assert calls == [3]
    calls.clear()
    index.search = search  # type: ignore[method-assign]
    assert pmids_of(search_in(s, engine, "obesity", index=index, lexical=lex, mode="semantic",
                              k=1)) == [6]  # fmt: skip


def test_an_index_built_before_authors_refuses_an_author_clause(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    index, lex = _world(engine, tmp_path)
    folder = tmp_path / "lexical"
    (folder / lexical.STATS_FILE).write_text(json.dumps({**_stats(folder), "format": 6}))
    old = lexical.LexicalIndex.open(folder)
    assert old.search("asthma", 3)  # searched as before
    with pytest.raises(ConsistencyError, match="before authors were indexed"):
        search_in(settings, engine, "asthma AND Smith J[au]", index=index, lexical=old)
    with pytest.raises(NoIndexError, match="authors"):
        search_in(settings, engine, "asthma AND Smith J[au]", index=index, lexical=None,
                  mode="semantic")  # fmt: skip


def test_a_corrected_author_list_is_indexed_again(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from ingest.store import Store

    index, lex = _world(engine, tmp_path)
    pmids = np.asarray(sorted(WORLD), dtype=np.int64)
    assert len(lexical.changed_docs(engine, lex, pmids)) == 0
    title, abstract, _ = WORLD[2]
    fixed = dataclasses.replace(make_article(2, title, abstract), version=2,
                                authors=(Author("Smith", "Joan R", "JR"), LI))  # fmt: skip
    Store(engine).apply([fixed])
    assert lexical.changed_docs(engine, lex, pmids).tolist() == [2]


def test_roles_name_the_tags() -> None:
    assert [r.value for r in Role] == ["au", "1au", "lastau"]


def test_authors_alone_list_their_articles_by_recency_and_citation(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    from ingest.records import PartialDate
    from ranking.search import SearchFilters, run_search

    records = [dataclasses.replace(make_article(p, t, a), authors=au)
               for p, (t, a, au) in WORLD.items()]  # fmt: skip
    years = {1: 2019, 2: 2024, 4: 2021, 5: 2023, 6: 2016}  # Smith J's, newest 2 then 5 4 1 6
    records = [dataclasses.replace(r, pub_date=PartialDate(years.get(r.pmid, 2010), 6, None,
                                                           "x"), article_date=None)
               for r in records]  # fmt: skip
    index, lex = store_and_index(engine, tmp_path, records)
    checked_query("Smith J[au]")  # accepted: the author's list
    for mode in ("lexical", "semantic", "hybrid"):
        result = search_in(settings, engine, "Smith J[au]", index=index, lexical=lex,
                           mode=mode, k=10)  # fmt: skip
        assert pmids_of(result) == [2, 5, 4, 1, 6], mode  # equal citations: newest first
        assert result.authors == ("Smith J[au]",) and result.candidates == 5
    hit = search_in(settings, engine, "Smith J[au]", index=index, lexical=lex, k=1).hits[0]
    assert "names authors alone" in hit.explanation["components"]["lexical"]["text"]
    assert hit.score == pytest.approx(hit.explanation["score"])
    # NOT a word, a second author, [1au], filters and pages apply
    assert set(pmids_of(search_in(settings, engine, "Smith J[au] NOT copd", index=index,
                                  lexical=lex))) == {1, 2, 4, 6}  # fmt: skip
    assert pmids_of(search_in(settings, engine, "Smith J[au] AND Jones K[au]", index=index,
                              lexical=lex)) == [4, 1]  # fmt: skip
    assert pmids_of(search_in(settings, engine, "Smith J[1au]", index=index,
                              lexical=lex)) == [2, 5, 1, 6]  # fmt: skip
    assert pmids_of(search_in(settings, engine, "Smith J[au]", index=index, lexical=lex,
                              since="2020-01-01")) == [2, 5, 4]  # fmt: skip
    pages = [run_search(settings, "Smith J[au]", k=2, offset=o, filters=SearchFilters(),
                        engine=engine, index=index, lexical=lex) for o in (0, 2, 4)]  # fmt: skip
    assert [pmids_of(p) for p in pages] == [[2, 5], [4, 1], [6]]
    assert [p.has_more for p in pages] == [True, True, False]
    dated = run_search(settings, "Jones K[au]", k=3, sort="date", filters=SearchFilters(),
                       engine=engine, index=index, lexical=lex)  # fmt: skip
    assert [h.best_date for h in dated.hits] == sorted((h.best_date for h in dated.hits),
                                                       reverse=True)  # fmt: skip


def test_a_listing_ranks_every_article_as_each_scored_alone_and_pages_through_them(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    """The listing ranks all the author's articles at once (ranking.scoring.scores) and
    explains only the page: the order, the scores and the explanations are those of
    score_article applied to each article, citations and dates differing."""
    from sqlalchemy import update

    from litpulse.core.schema import articles
    from ranking.scoring import Relevance, ScoringOptions, SearchMode, score_article
    from ranking.search import SearchFilters, load_rows, run_search

    index, lex = _world(engine, tmp_path)
    ratios = {1: 4.0, 2: 0.5, 4: 2.0, 5: None, 6: 9.0}  # Smith J's: 1, 2, 4, 5, 6
    with engine.begin() as conn:
        for pmid, rcr in ratios.items():
            conn.execute(update(articles).where(articles.c.pmid == pmid)
                         .values(relative_citation_ratio=rcr, citation_count=pmid * 7))  # fmt: skip
    options = ScoringOptions()
    rel = Relevance(SearchMode.LEXICAL, similarity=0.0, lexical=1.0)
    rows = load_rows(engine, sorted(ratios), SearchFilters().clauses())
    alone = {p: score_article(0.0, row, options, rel).score for p, row in rows.items()}
    expected = sorted(alone, key=lambda p: (-alone[p], p))
    assert len(set(alone.values())) == len(alone)  # the citations order them, not the PMIDs
    pages = [run_search(settings, "Smith J[au]", k=2, offset=o, filters=SearchFilters(),
                        engine=engine, index=index, lexical=lex) for o in (0, 2, 4)]  # fmt: skip
    assert [h.pmid for p in pages for h in p.hits] == expected
    assert [p.has_more for p in pages] == [True, True, False]
    for hit in (h for p in pages for h in p.hits):
        assert hit.score == alone[hit.pmid] == hit.explanation["score"]
        assert "names authors alone" in hit.explanation["components"]["lexical"]["text"]


def test_an_author_with_too_many_articles_to_list_is_refused_and_a_subset_index_lists_its_own(
    settings: Settings, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from ranking import search as searching

    index, lex = _world(engine, tmp_path)
    monkeypatch.setattr(searching, "LISTING_MAX", 4)
    with pytest.raises(ConfigError, match="names more than 4 articles"):
        search_in(settings, engine, "Smith J[au]", index=index, lexical=lex)
    assert set(pmids_of(search_in(settings, engine, "Smith JR[au]", index=index,
                                  lexical=lex))) == {2}  # fmt: skip
    monkeypatch.undo()
    # a digest's index of the new articles (ids): only those of them are listed
    new = np.array([1, 3], dtype=np.int64)
    subset = types.SimpleNamespace(id="ix-test", model_version="base", size=2, ids=new,
                                   only=new, search=index.search)  # fmt: skip
    assert pmids_of(search_in(settings, engine, "Smith[au]", index=subset, lexical=lex)) == [1]


def test_an_author_with_too_many_articles_is_listed_when_the_filters_leave_few(
    settings: Settings, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prolific author (``Wang Y[au]``: ~10⁵ articles in PubMed) with a filter that leaves
    few (a language, a date range) is listed: the filters are applied to every article of
    theirs before the cap, not after it (it was refused, "filters aside"). Without such a
    filter, or with more articles than can be filtered, it is refused as before."""
    from sqlalchemy import update

    from litpulse.core.schema import articles
    from ranking import search as searching

    index, lex = _world(engine, tmp_path)
    with engine.begin() as conn:  # two of Smith J's five in French
        conn.execute(update(articles).where(articles.c.pmid.in_([1, 2])).values(language="fre"))
    monkeypatch.setattr(searching, "LISTING_MAX", 4)
    with pytest.raises(ConfigError, match="names more than 4 articles that pass the filters"):
        search_in(settings, engine, "Smith J[au]", index=index, lexical=lex)
    for mode in ("lexical", "hybrid", "semantic"):
        french = search_in(settings, engine, "Smith J[au]", index=index, lexical=lex,
                           mode=mode, language="fre")  # fmt: skip
        assert sorted(pmids_of(french)) == [1, 2], mode
    english = search_in(settings, engine, "Smith J[au]", index=index, lexical=lex, k=10,
                        language="eng")  # fmt: skip
    assert sorted(pmids_of(english)) == [4, 5, 6]
    monkeypatch.setattr(searching, "HOLDERS_MAX", 4)  # more of theirs than can be filtered
    with pytest.raises(ConfigError, match="names more than 4 articles"):
        search_in(settings, engine, "Smith J[au]", index=index, lexical=lex, language="fre")


def test_alternative_authors_meet_the_clause_by_any_of_them(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    index, lex = _world(engine, tmp_path)
    query = "asthma AND (Smith JA[au] OR Muller H[au] OR van der Berg[au])"
    checked_query(query)
    for mode in ("lexical", "semantic", "hybrid"):
        assert _found(settings, engine, query, index, lex, mode) == {1, 3, 7}, mode
    # beside another author, NOT and roles: each alternative keeps its own role
    got = _found(settings, engine, "(Smith J[1au] OR Li X[lastau]) AND Jones K[au] NOT copd",
                 index, lex)  # fmt: skip
    assert got == {1} | set(range(10, 20))  # first author Smith J, or last author Li X
    # alone: every article of either, listed
    listed = search_in(settings, engine, "Smith JR[au] OR Smithson J[au] OR Global Asthma "
                       "Network[cn]", index=index, lexical=lex, k=30)  # fmt: skip
    assert set(pmids_of(listed)) == {2, 3, 8} and listed.candidates == 3
    assert listed.authors == ("(Smith JR[au] OR Smithson J[au] OR Global Asthma Network[cn])",)
    assert listed.to_dict()["authors"] == list(listed.authors)
