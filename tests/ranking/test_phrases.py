"""Quoted phrases and NOT: required and excluded in every mode, by the lexical index.

``A NOT B`` (PubMed's operator) excludes every article holding ``B`` — a word, or a quoted
phrase — in any text field, in every mode, on every page; ``B`` is neither a term of the
query nor embedded.

A phrase in quotes (``"heart failure"``) is required: every result holds its words one
after the other (stop words aside, stemmed, never across two MeSH headings), whether the
results are ranked by meaning, by BM25 or both, on every page. The records go through the
real store and the real lexical index (tantivy, format 6 with positions); the vectors are
the hashed bag of words of :mod:`tests.ranking.corpus`, so the articles holding the words
apart are the nearest neighbours a phrase must turn away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from litpulse.core import db
from litpulse.core.errors import ConfigError, ConsistencyError
from litpulse.core.settings import Settings
from ranking import index_files, lexical, refresh
from ranking.search import NoIndexError, SearchFilters, checked_query, run_search
from tests.ranking.corpus import hash_embed, make_article, search_in, store_and_index
from tests.ranking.test_lexical import as_format, load

#: The phrase "heart failure" in the title, in the abstract, in one MeSH heading.
HOLDING = {
    1: ("Heart failure in older adults", "Outcomes of chronic disease.", ("Humans",)),
    2: ("Outcomes after discharge", "Readmissions for heart failure rose.", ("Humans",)),
    3: ("Outcomes of older adults", "A registry study.", ("Heart Failure", "Humans")),
    4: ("Heart failures treated at home", "Home care of the failing heart.", ("Humans",)),
}
#: Both words, never one after the other (or only across two MeSH headings).
APART = {
    10 + i: (f"Failure of the kidney after heart surgery {i}",
             f"Heart surgery and kidney failure in cohort {i}.", ("Humans",))
    for i in range(12)
} | {
    30: ("Heart outcomes", "Renal failure was rare.", ("Heart", "Failure to Thrive")),
}
#: Compound words, stop words.
OTHERS = {
    40: ("IL-6 signalling in sepsis", "Interleukin-6 in septic shock.", ("Sepsis",)),
    41: ("IL6 signalling pathways", "Cytokines in inflammation.", ("Cytokines",)),
    42: ("Signalling of IL-6 receptors", "Receptor biology.", ("Receptors",)),
    43: ("Quality of life after stroke", "Patients reported outcomes.", ("Stroke",)),
    44: ("Life and its quality after stroke", "Patients reported outcomes.", ("Stroke",)),
}
#: The alternatives of an OR: another phrase, a word.
ALTERNATIVES = {
    50: ("Cardiac failure in dialysis", "Dialysis and cardiac failure.", ("Renal Dialysis",)),
    51: ("Breathlessness at rest", "Dyspnea measured by questionnaire.", ("Dyspnea",)),
}
ALL = HOLDING | APART | OTHERS | ALTERNATIVES


def _world(engine: Engine, tmp_path: Path) -> tuple[Any, lexical.LexicalIndex]:
    records = [make_article(p, t, a, mesh=m) for p, (t, a, m) in ALL.items()]
    return store_and_index(engine, tmp_path, records)


def _pmids(result: Any) -> list[int]:
    return [h.pmid for h in result.hits]


def _paged(
    s: Settings, engine: Engine, query: str, index: Any, lex: Any, mode: str, *, k: int,
    pages: int,
) -> tuple[list[int], list[Any]]:
    """The PMIDs of the first ``pages`` pages of ``k`` results, in order, and the pages."""
    out = [run_search(s, query, k=k, offset=o * k, filters=SearchFilters(), engine=engine,
                      index=index, embed=hash_embed, lexical=lex, mode=mode)
           for o in range(pages)]
    return [p for page in out for p in _pmids(page)], out


def test_phrases_are_read_from_straight_and_curly_quotes() -> None:
    assert lexical.query_phrases('"heart failure" in the \u201celderly\u201d') == (
        ("heart", "failur"), ("elder",))
    # stemmed and without stop words, as a document is indexed; a compound as its segments
    assert lexical.query_phrases('"quality of life"') == (("qualiti", "life"),)
    assert lexical.query_phrases('"IL6 signalling"') == (("il", "6", "signal"),)
    # repeated once; an empty pair or a lone quote quotes nothing
    assert lexical.query_phrases('"heart failure" and "Heart failures"') == (
        ("heart", "failur"),)
    assert lexical.query_phrases('"" heart "failure') == ()
    # the quoted words are still terms of the query
    assert {"heart", "failur"} <= set(lexical.query_terms('"heart failure" outcomes'))


def test_a_quoted_phrase_with_nothing_to_require_is_refused() -> None:
    with pytest.raises(ConfigError, match="quoted phrase 'the' has no word"):
        checked_query('"the" heart failure')
    assert checked_query('"" heart failure') == '"" heart failure'
    assert checked_query('"heart failure" outcomes') == '"heart failure" outcomes'
    # a quoted NOT is no exclusion, in curly quotes too
    assert checked_query("\u201cDO NOT RESUSCITATE\u201d orders") == (
        "\u201cDO NOT RESUSCITATE\u201d orders")


def test_the_lexical_index_matches_a_phrase_by_position(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    _, lex = _world(db.connect(sqlite_settings), tmp_path)
    assert lex.phrases
    found = {p for p, _ in lex.search('"heart failure"', 100)}
    assert found == set(HOLDING)  # title, abstract, one heading; a plural too (stemmed)
    assert set(APART) <= {p for p, _ in lex.search("heart failure", 100)}
    # never across two MeSH headings ("Heart", "Failure to Thrive"): 30 is not there
    assert lex.matching('"heart failure"', list(ALL)) == set(HOLDING)
    assert lex.matching("heart failure", [1, 30, 999]) == {1, 30, 999}  # no phrase: all
    # compound words in either spelling; stop words aside
    assert {p for p, _ in lex.search('"IL-6 signalling"', 10)} == {40, 41}
    assert {p for p, _ in lex.search('"quality of life"', 10)} == {43}
    # the phrase filters; the scores are the words' BM25, quoted or not
    plain = dict(lex.search("heart failure", 100))
    assert dict(lex.search('"heart failure"', 100)) == {p: plain[p] for p in HOLDING}
    assert lex.scores('"heart failure"', [1, 10, 30]) == {1: plain[1]}
    assert set(lex.explain('"heart failure"', [1, 10])) == {1}


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_every_mode_returns_only_articles_holding_the_phrase(
    settings: Settings, tmp_path: Path, mode: str
) -> None:
    engine = db.connect(settings)
    index, lex = _world(engine, tmp_path)
    # few candidates per round: the twelve articles holding the words apart are nearer
    # the query than most holding the phrase, so the lists must widen past them
    s = settings.replace(rerank_candidates=3)
    query = '"heart failure" kidney heart surgery'
    index.calls.clear()
    result = search_in(s, engine, query, index=index, lexical=lex, mode=mode, k=10)
    assert set(_pmids(result)) == set(HOLDING)
    if mode == "hybrid":  # once the lexical list holds every phrase, no deeper neighbour can
        assert max(index.calls) < index.size
    unquoted = search_in(s, engine, query.replace('"', ""), index=index, lexical=lex,
                         mode=mode, k=10)
    assert set(_pmids(unquoted)) & set(APART)  # without the quotes they come first
    # pages: disjoint slices of the same phrase-holding list
    listed, pages = _paged(s, engine, query, index, lex, mode, k=1, pages=5)
    assert sorted(listed) == sorted(HOLDING) and not pages[-1].has_more


def test_a_phrase_without_a_lexical_index_is_refused(settings: Settings, tmp_path: Path) -> None:
    engine = db.connect(settings)
    index, _ = _world(engine, tmp_path)
    with pytest.raises(NoIndexError, match="quoted phrases"):
        search_in(settings, engine, '"heart failure"', index=index, lexical=None,
                  mode="semantic")
    # without quotes the semantic search goes on, as before
    assert _pmids(search_in(settings, engine, "heart failure", index=index, lexical=None,
                            mode="semantic"))


def test_an_index_built_before_positions_refuses_phrases_until_a_refresh_rebuilds_it(
    sqlite_settings: Settings,
) -> None:
    load(db.connect(sqlite_settings))
    first = refresh.refresh_index(sqlite_settings)
    old = lexical.LexicalIndex.open(as_format(Path(first.path), 5))
    assert not old.phrases
    assert [p for p, _ in old.search("IL-6 sepsis", 1)] == [1]  # words: searched as before
    with pytest.raises(ConsistencyError, match="litpulse index refresh"):
        old.search('"IL-6 signalling"', 5)
    with pytest.raises(ConsistencyError, match="without quotes"):
        old.matching('"IL-6 signalling"', [1])
    again = refresh.refresh_index(sqlite_settings)
    assert again.lexical_rebuilt
    assert index_files.read_files(again.path)[2]["lexical"]["format"] == lexical.FORMAT
    rebuilt = lexical.open_lexical(sqlite_settings)
    assert rebuilt is not None and rebuilt.phrases
    assert [p for p, _ in rebuilt.search('"IL-6 signalling"', 5)] == [1]


# --------------------------------------------------------------------------- exclusions


@pytest.mark.parametrize(("query", "searched", "excluded"), [
    ("COPD NOT asthma", "COPD", ("asthma",)),
    ('COPD NOT "heart failure" outcomes', "COPD outcomes", ("heart failure",)),
    ('COPD NOT \u201cheart failure\u201d', "COPD", ("heart failure",)),
    ('"heart failure" NOT kidney', '"heart failure"', ("kidney",)),
    ("sepsis NOT IL-6 NOT TNF-\u03b1 in adults", "sepsis in adults", ("IL-6", "TNF-\u03b1")),
    # NOT first: what follows is searched less what it excludes
    ("NOT asthma COPD", "COPD", ("asthma",)),
    ('NOT "heart failure" kidney NOT surgery', "kidney", ("heart failure", "surgery")),
    ("NOT (asthma OR bronchitis) COPD", "COPD", ("asthma", "bronchitis")),
    ("NOT to treat hypertension", "NOT to treat hypertension", ()),
    # no exclusion: NOT after a stop or question word, inside quotes, in a title in
    # capitals, NOT at the end, or part of a word
    ("DO NOT RESUSCITATE orders", "DO NOT RESUSCITATE orders", ()),
    ("cells do NOT divide", "cells do NOT divide", ()),
    ('"do NOT resuscitate" orders', '"do NOT resuscitate" orders', ()),
    ("EFFECT OF DIET NOT EXERCISE ON WEIGHT", "EFFECT OF DIET NOT EXERCISE ON WEIGHT", ()),
    ("asthma NOT", "asthma NOT", ()),
    ("CCR4-NOT complex", "CCR4-NOT complex", ()),
    ("COVID-19 in children: NOT just a cold", "COVID-19 in children: NOT just a cold", ()),
])
def test_not_excludes_the_word_or_phrase_after_it(
    query: str, searched: str, excluded: tuple[str, ...]
) -> None:
    assert lexical.split_exclusions(query) == (searched, excluded)
    assert checked_query(query) == query


def test_an_excluded_word_is_no_term_and_an_excluded_quote_no_required_phrase() -> None:
    assert lexical.query_terms("COPD NOT asthma") == {"copd": 1.0}
    assert lexical.query_phrases('COPD NOT "heart failure"') == ()
    assert lexical.query_exclusions('COPD NOT "heart failures" NOT IL-6') == (
        ("heart", "failur"), ("il", "6"))
    with pytest.raises(ConfigError, match="NOT 'the' excludes nothing"):
        checked_query("COPD NOT the")


def test_the_lexical_index_leaves_out_what_is_excluded(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    _, lex = _world(db.connect(sqlite_settings), tmp_path)
    both = {p for p, _ in lex.search("heart failure", 100)}
    kidney = {p for p in APART if p < 30}  # "kidney" in their titles and abstracts
    assert {p for p, _ in lex.search("heart failure NOT kidney", 100)} == both - kidney
    # in a MeSH heading too ("Failure to Thrive"), and a phrase excludes only itself
    assert 30 not in {p for p, _ in lex.search("heart NOT thrive", 100)}
    apart = {p for p, _ in lex.search('heart failure NOT "heart failure"', 100)}
    assert apart == both - set(HOLDING)
    assert lex.matching("heart NOT kidney", [1, 10, 30]) == {1, 30}
    assert lex.scores("heart NOT kidney", [1, 10]) == {1: pytest.approx(
        dict(lex.search("heart", 100))[1])}


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_every_mode_leaves_out_what_is_excluded_and_embeds_the_rest(
    settings: Settings, tmp_path: Path, mode: str
) -> None:
    engine = db.connect(settings)
    index, lex = _world(engine, tmp_path)
    s = settings.replace(rerank_candidates=3)
    embedded: list[str] = []

    def embed(text: str) -> Any:
        embedded.append(text)
        return hash_embed(text)

    query = "kidney failure after heart surgery NOT cohort"
    hits = []
    for offset in range(0, 20, 5):
        page = run_search(s, query, k=5, offset=offset, filters=SearchFilters(),
                          engine=engine, index=index, embed=embed, lexical=lex, mode=mode)
        hits += _pmids(page)
        assert page.excluded == ("cohort",)
        if not page.has_more:
            break
    assert hits and len(hits) == len(set(hits))
    # every article holding the apart words says "cohort" in its abstract: none is left
    assert not set(hits) & {p for p in APART if p < 30}
    assert embedded == [] if mode == "lexical" else set(embedded) == {
        "kidney failure after heart surgery"}
    # without NOT they are the best matches
    plain = search_in(s, engine, "kidney failure after heart surgery", index=index,
                      lexical=lex, mode=mode, k=5)
    assert set(_pmids(plain)) & set(APART)


def test_not_first_with_nothing_else_to_search_is_refused_not_searched() -> None:
    # before: "NOT asthma" searched asthma, the opposite of what was asked
    for query in ("NOT asthma", 'NOT "heart failure"', "NOT asthma NOT COPD",
                  "NOT (asthma OR COPD)"):
        with pytest.raises(ConfigError, match="only excludes"):
            checked_query(query)
    with pytest.raises(ConfigError, match="NOT NOT is not an exclusion"):
        checked_query("NOT NOT asthma")
    assert lexical.query_terms("NOT asthma COPD") == {"copd": 1.0}


def test_not_first_excludes_in_the_index(sqlite_settings: Settings, tmp_path: Path) -> None:
    _, lex = _world(db.connect(sqlite_settings), tmp_path)
    assert {p for p, _ in lex.search("NOT kidney heart failure", 100)} == (
        {p for p, _ in lex.search("heart failure NOT kidney", 100)})
    assert not {p for p, _ in lex.search("NOT kidney heart failure", 100)} & {10, 11}


# --------------------------------------------------------------------------------- OR


@pytest.mark.parametrize(("query", "required", "shown"), [
    # one requirement met by either phrase
    ('"heart failure" OR "cardiac failure"',
     ((("heart", "failur"), ("cardiac", "failur")),),
     (("heart", "failur"), ("cardiac", "failur"))),
    # a word beside OR is an alternative; brackets group; the rest is scored only
    ('("heart failure" OR dyspnea) elderly', ((("heart", "failur"), ("dyspnea",)),),
     (("heart", "failur"), ("dyspnea",))),
    ('elderly "heart failure" OR dyspnea', ((("heart", "failur"), ("dyspnea",)),),
     (("heart", "failur"), ("dyspnea",))),
    # chains, and two groups side by side
    ('"heart failure" OR "cardiac failure" OR HFrEF', (
        (("heart", "failur"), ("cardiac", "failur"), ("hfref",)),),
     (("heart", "failur"), ("cardiac", "failur"), ("hfref",))),
    ('("heart failure" OR dyspnea) ("older adults" OR elderly)', (
        (("heart", "failur"), ("dyspnea",)), (("older", "adult"), ("elder",))),
     (("heart", "failur"), ("dyspnea",), ("older", "adult"), ("elder",))),
    # AND ends a chain; a phrase outside it is required on its own
    ('"heart failure" OR dyspnea AND "older adults"', (
        (("heart", "failur"), ("dyspnea",)), (("older", "adult"),)),
     (("heart", "failur"), ("dyspnea",), ("older", "adult"))),
    # no phrase: OR between words needs nothing (a bag of words finds either)
    ("asthma OR COPD", (), ()),
    # OR inside quotes is a word of the phrase; lower-case or is no operator
    ('"heart failure" or dyspnea', ((("heart", "failur"),),), (("heart", "failur"),)),
    # an exclusion leaves the group
    ('"heart failure" OR dyspnea NOT kidney', ((("heart", "failur"), ("dyspnea",)),),
     (("heart", "failur"), ("dyspnea",))),
])
def test_or_between_a_phrase_and_another_term_requires_either(
    query: str, required: tuple[Any, ...], shown: tuple[Any, ...]
) -> None:
    assert lexical.phrase_forms(query)[0] == required
    assert lexical.query_phrases(query) == shown  # each alternative, for the snippets
    assert checked_query(query) == query


def test_the_lexical_index_matches_either_alternative(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    _, lex = _world(db.connect(sqlite_settings), tmp_path)
    # before: both phrases were required, and no article holds both
    either = {p for p, _ in lex.search('"heart failure" OR "cardiac failure"', 100)}
    assert either == set(HOLDING) | {50}
    assert {p for p, _ in lex.search('("heart failure" OR dyspnea) outcomes', 100)} == (
        set(HOLDING) | {51})
    assert lex.matching('"cardiac failure" OR dyspnea', list(ALL)) == {50, 51}
    # an OR group and an exclusion
    assert {p for p, _ in lex.search('"heart failure" OR dyspnea NOT home', 100)} == (
        set(HOLDING) - {4} | {51})


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_every_mode_returns_the_articles_holding_either(
    settings: Settings, tmp_path: Path, mode: str
) -> None:
    engine = db.connect(settings)
    index, lex = _world(engine, tmp_path)
    s = settings.replace(rerank_candidates=3)
    query = '"heart failure" OR "cardiac failure" kidney heart surgery'
    listed, pages = _paged(s, engine, query, index, lex, mode, k=2, pages=3)
    assert sorted(listed) == sorted(set(HOLDING) | {50}) and not pages[-1].has_more


@pytest.mark.parametrize(("query", "message"), [
    ('("heart failure" elderly) OR dyspnea', "brackets beside OR hold several terms"),
    ('(("heart failure" AND elderly) OR dyspnea)', "brackets beside OR hold several terms"),
    ('"heart failure" OR NOT "kidney failure"', 'OR NOT "kidney failure": NOT excludes'),
    ("NOT asthma OR COPD", r"an OR right after NOT asthma.*NOT \(asthma OR"),
    ("COPD NOT asthma OR bronchitis", "an OR right after NOT asthma"),
])
def test_or_that_cannot_be_read_one_way_is_refused_saying_what_to_write(
    query: str, message: str
) -> None:
    assert lexical.query_problems(query)
    with pytest.raises(ConfigError, match=message):
        checked_query(query)


@pytest.mark.parametrize(("query", "required"), [
    # brackets holding one chain of ORs join it; nested ones too
    ('"heart failure" OR (dyspnea OR "cardiac failure")',
     ((("heart", "failur"), ("dyspnea",), ("cardiac", "failur")),)),
    # a species' abbreviation is one alternative; OR before a number is the odds ratio
    ('"Escherichia coli" OR E. coli', ((("escherichia", "coli"), ("e", "coli")),)),
    ('"odds ratio" OR 95% CI', ((("odd", "ratio"),),)),
    # NOT first in brackets excludes; before a question word it is a word
    ('(NOT asthma) "COPD exacerbations"', ((("copd", "exacerb"),),)),
    ("To be OR NOT to be vaccinated", ()),
])
def test_how_or_and_brackets_are_read(query: str, required: tuple[Any, ...]) -> None:
    assert lexical.phrase_forms(query)[0] == required
    assert not lexical.query_problems(query)
    assert checked_query(query) == query
    assert lexical.split_exclusions("NOT all wheeze is asthma")[1] == ()
    assert lexical.split_exclusions("(NOT asthma) COPD")[1] == ("asthma",)


@pytest.mark.parametrize(
    ("query", "searched"),
    [("NOT copd AND asthma", "asthma"), ("(NOT copd) AND asthma", "asthma"),
     ("asthma AND (NOT copd)", "asthma"), ("asthma NOT copd AND smoking", "asthma AND smoking")],
)  # fmt: skip
def test_an_and_an_exclusion_leaves_first_or_last_is_no_word_to_search(
    query: str, searched: str
) -> None:
    # a capital AND is a term of the index (an abbreviation): searched, it found articles
    # holding "PCR AND ELISA" and not the topic
    assert lexical.split_exclusions(query) == (searched, ("copd",))
    assert "AND" not in lexical.query_terms(query)
