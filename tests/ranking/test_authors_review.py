"""Hostile review of author search (commit 7e6cc90): each test asserts the correct
behaviour; each was a strict xfail until its fix.

The worlds are those of :mod:`tests.ranking.test_authors` (the real store and the real
tantivy lexical index, format 7). In that world the asthma articles are 1-4, 6-8 and
10-19; Smith J's (Smith JA, Smith JR, Smith J, Smith John) asthma articles are 1, 2, 4, 6;
Smith J's COPD article is 5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from ranking.authors import author_keys, split_authors
from ranking.search import checked_query
from tests.ranking.test_authors import _found, _world

SMITH_J_ASTHMA = {1, 2, 4, 6}
ASTHMA = {1, 2, 3, 4, 6, 7, 8, *range(10, 20)}


def _found_or_refused(settings: Settings, engine: Engine, query: str, index, lex,
                      mode: str = "lexical") -> set[int] | None:  # fmt: skip
    """The PMIDs found, or None when the query is refused (a refusal is acceptable)."""
    try:
        return _found(settings, engine, query, index, lex, mode)
    except ConfigError:
        return None


# ----------------------------------------------------------------- silently wrong results


@pytest.mark.parametrize("mode", ["lexical", "semantic"])
def test_not_before_a_bracketed_author_excludes_the_author(
    settings: Settings, engine: Engine, tmp_path: Path, mode: str
) -> None:
    # Defect: split_authors decides `excluded` from the text right before the name; with
    # a bracket between NOT and the name ("asthma NOT (Smith J[au])") that text ends with
    # "(", so the clause is taken as REQUIRED, and the NOT is left dangling in the rest
    # ("asthma NOT"), where it excludes nothing. The query returns exactly the articles
    # it asked to leave out (1, 2, 4, 6) instead of the others. A bracketed NOT is the
    # way PubMed's own search builder writes it ("asthma NOT (Smith J[au])").
    index, lex = _world(engine, tmp_path)
    found = _found_or_refused(settings, engine, "asthma NOT (Smith J[au])", index, lex, mode)
    assert found is None or (found & SMITH_J_ASTHMA == set() and found >= ASTHMA - SMITH_J_ASTHMA)


def test_an_author_clause_keeps_a_capitals_not_an_exclusion(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Defect: lexical._split strips the author clause first and then asks whether the
    # rest is "shouted" (wholly in capitals: NOT is then a word, DO NOT RESUSCITATE).
    # "COPD NOT ASTHMA AND Smith J[au]" is not wholly in capitals, but its rest
    # "COPD NOT ASTHMA" is, so ASTHMA is SEARCHED instead of excluded: Smith J's asthma
    # articles 1, 2, 4, 6 come back. "COPD NOT ASTHMA smith" (no tag) and
    # "COPD NOT asthma AND Smith J[au]" both exclude asthma correctly (-> {5}).
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, "COPD NOT asthma AND Smith J[au]", index, lex) == {5}
    assert _found(settings, engine, "COPD NOT ASTHMA AND Smith J[au]", index, lex) == {5}


def test_an_author_tag_after_a_space_is_not_searched_as_words(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Defect: _TAG (and the field-tag refusal) need the tag glued to the name, so
    # "asthma AND Smith J [au]" is neither an author clause nor refused: "smith", "j"
    # and "au" are searched as words and every asthma article (Smithson, van der Berg,
    # Jones...) is returned; the author is silently ignored. PubMed accepts the space
    # ("smith j [au]"). Either read it as the author or refuse it.
    index, lex = _world(engine, tmp_path)
    for query in ("asthma AND Smith J [au]", 'asthma AND "Smith J" [au]'):
        assert _found(settings, engine, query, index, lex) == SMITH_J_ASTHMA, query


def test_initials_written_with_full_stops_find_the_author(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Defect: the query's name is folded by fold_term, which splits "J.A." into "j a"
    # (key "smith j a"), while the index joins the initials ("smith ja"). The query is
    # accepted and silently finds nothing; "Smith J A[au]" is refused instead, and
    # "Smith JA[au]" finds article 1. The citation style "Smith J.A." is common.
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, "asthma AND Smith JA[au]", index, lex) == {1}
    for query in ("asthma AND Smith J.A.[au]", "asthma AND Smith J A[au]",
                  "asthma AND Smith J. A.[au]"):
        assert _found(settings, engine, query, index, lex) == {1}, query


def test_hyphenated_initials_find_the_author() -> None:
    # Defect, same root: "Kim J-H[au]" is accepted with key "kim j h", but Kim Jae-Hoon
    # (PubMed initials JH) is indexed as "kim jh" / "kim jae hoon": silently nothing.
    rest, clauses, problems = split_authors("asthma AND Kim J-H[au]")
    assert problems == ()
    keys = author_keys([{"last_name": "Kim", "fore_name": "Jae-Hoon", "initials": "JH"}])
    assert clauses[0].key in keys


@pytest.mark.parametrize(
    "query",
    ["asthma AND Smith J[au] OR copd", "asthma NOT Smith J[au] OR copd",
     "(asthma AND Smith J[au]) OR copd"],
)  # fmt: skip
def test_an_author_joined_by_and_or_not_is_still_refused_among_alternatives(query: str) -> None:
    # Defect: in split_authors the OR check is an `elif` after the AND/NOT check, so a
    # clause preceded by AND or NOT is never checked for a following OR (and the bracket
    # case is not looked at at all). "asthma AND Smith J[au] OR copd" is accepted and
    # requires Smith J for the copd alternative too (PubMed: (asthma AND Smith J[au]) OR
    # copd gives copd articles by anyone); "asthma NOT Smith J[au] OR copd" excludes
    # Smith J from copd too. The documented rule refuses an author among alternatives
    # ("Smith J[au] OR copd asthma" is refused), and the word analogue
    # "asthma NOT children OR copd" is refused as ambiguous.
    with pytest.raises(ConfigError, match="OR"):
        checked_query(query)


def test_a_topic_word_is_not_silently_taken_into_a_two_word_name(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Defect: the name takes the text back to the last AND; two words pass as "surname
    # + initials/forename", so "asthma AND copd Smith[au]" looks up the author
    # "copd smith" and silently finds nothing, while "asthma AND copd Smith J[au]" (three
    # words) is refused as ambiguous ("does copd belong to the name?"). The same
    # ambiguity should be refused (or copd read as a word: Smith's copd article 5).
    index, lex = _world(engine, tmp_path)
    with pytest.raises(ConfigError):
        checked_query("copd AND asthma Smith J[au]")
    found = _found_or_refused(settings, engine, "asthma AND copd Smith[au]", index, lex,
                              "semantic")  # fmt: skip
    assert found is None or 5 in found


# ------------------------------------------------------------------- misleading refusals


def test_the_author_alone_refusal_does_not_advise_the_topic_as_part_of_the_name() -> None:
    # Defect: "asthma Smith[au]" is read as the author "asthma Smith" and refused as
    # "names only an author", advising 'asthma AND asthma Smith[au]' -- a query that
    # again looks up the author "asthma smith" and finds nothing.
    with pytest.raises(ConfigError) as err:
        checked_query("asthma Smith[au]")
    assert "asthma Smith[au]" not in str(err.value)


@pytest.mark.parametrize(
    ("query", "name"),
    [("asthma AND Garcia Lopez M[au]", "Garcia Lopez M"),
     ("asthma AND Global Asthma Network[au]", "Global Asthma Network")],
)  # fmt: skip
def test_a_long_name_after_and_is_accepted_or_the_advice_keeps_it_whole(
    query: str, name: str
) -> None:
    # Defect: after AND nothing but the name precedes the tag, yet a Spanish double
    # surname without a hyphen ("Garcia Lopez M", common in PubMed) or a collective name
    # is refused, and the advice is wrong both ways: "Garcia AND Lopez M[au]" searches
    # the word garcia and the author Lopez M; '"Lopez M"[au]' is another author. The
    # advice should quote the whole name ('"Garcia Lopez M"[au]'), or accept it.
    try:
        checked_query(query)
    except ConfigError as err:
        assert f'"{name}"[au]' in str(err)
