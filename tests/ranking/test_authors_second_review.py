"""Second hostile review of author search (commits 7e6cc90, 7db7dda): each test asserts
the correct behaviour; each was a strict xfail until its fix.

The world is that of :mod:`tests.ranking.test_authors` (the real store and the real
tantivy lexical index, format 7). In it the asthma articles are 1-4, 6-8 and 10-19;
Smith J's (Smith JA, Smith JR, Smith J, Smith John) asthma articles are 1, 2, 4, 6;
"children" is in article 1 only (Smith JA, Jones K); article 2 is Smith JR's and Li X's;
Smith John's (forename John: Smith John R and Smith John) are 2 and 6.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from litpulse.core.text import fold_term
from ranking.authors import author_keys, split_authors
from ranking.search import checked_query
from tests.ranking.test_authors import _found, _world

SMITH_J_ASTHMA = {1, 2, 4, 6}
ASTHMA = {1, 2, 3, 4, 6, 7, 8, *range(10, 20)}


# ----------------------------------------------------------------- silently wrong results


@pytest.mark.parametrize(
    ("query", "left_out"),
    [("asthma NOT (children AND Smith J[au])", {1}),
     ("asthma NOT (Smith J[au] AND children)", {1}),
     ("asthma NOT (Smith J[au] AND Li X[au])", {2})],
)  # fmt: skip
def test_an_author_in_a_not_group_is_not_turned_into_a_requirement(
    settings: Settings, engine: Engine, tmp_path: Path, query: str, left_out: set[int]
) -> None:
    # Defect: split_authors decides NOT from the text right before the name only.
    # - "asthma NOT (children AND Smith J[au])": the clause follows "AND", so Smith J is
    #   REQUIRED and the rest "asthma NOT (children )" excludes children: the result is
    #   Smith J's asthma articles without children (2, 4, 6), the opposite of the query
    #   (PubMed: every asthma article but Smith J's on children, i.e. all but 1).
    #   result.authors even says "Smith J[au]".
    # - "asthma NOT (Smith J[au] AND children)": Smith J is excluded, NOT takes the "("
    #   but not its ")", and the rest "asthma AND children)" SEARCHES children.
    # - "asthma NOT (Smith J[au] AND Li X[au])": Smith J excluded, Li X REQUIRED.
    # The word analogue "asthma NOT (children AND copd)" is refused ("what NOT excludes in
    # brackets must be words or quoted phrases joined by OR"), so a refusal is as right
    # as reading the group.
    # (fixed: refused, naming the form to write; left_out is what reading it would drop)
    index, lex = _world(engine, tmp_path)
    assert left_out
    with pytest.raises(ConfigError, match="inside a group after NOT"):
        _found(settings, engine, query, index, lex)


def test_not_before_a_square_bracketed_author_excludes_the_author(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Defect: the bracket NOT may take before a name is only "(" (before.rstrip("( \t")),
    # but the word machinery reads square brackets as a group ("asthma NOT [children]"
    # excludes children, "NOT [children OR copd]" both). "asthma NOT [Smith J[au]]" leaves
    # "asthma NOT" as the rest and REQUIRES Smith J: exactly the articles it asked to
    # leave out (1, 2, 4, 6).
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, "asthma NOT [children]", index, lex) == ASTHMA - {1}
    assert _found(settings, engine, "asthma NOT [Smith J[au]]", index, lex) \
        == ASTHMA - SMITH_J_ASTHMA  # fmt: skip


def test_the_inverted_full_name_with_a_comma_names_the_author(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Defect: a comma is a boundary, and the "ends at the comma" refusal only fires for
    # one word of at most 3 capitals ("Smith, J[au]"). PubMed's documented full-name form
    # "Smith, John[fau]" is read as the author "John" (key "john") with "Smith," left as
    # a topic word: silently nothing (result.authors says "John[au]"). "Smith John[fau]"
    # finds 2 and 6.
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, "asthma AND Smith John[fau]", index, lex) == {2, 6}
    assert _found(settings, engine, "asthma AND Smith, John[fau]", index, lex) == {2, 6}


@pytest.mark.parametrize(
    "query",
    ["asthma AND Smith, J.A.[au]", "asthma AND Smith, J A[au]", "asthma AND Smith, J. A.[au]"],
)  # fmt: skip
def test_a_comma_before_dotted_or_spaced_initials_is_not_silently_misread(
    settings: Settings, engine: Engine, tmp_path: Path, query: str
) -> None:
    # Defect: "Smith, J[au]" and "Smith, JA[au]" are refused ("the author's name ends at
    # the comma"), but the check looks at the typed words before joining initials
    # (one word, at most 3 characters, in capitals): "J.A." is 4 characters, "J A" two
    # words. So "Smith, J.A.[au]" is accepted as the author "JA" (key "ja") and the word
    # smith, and silently finds nothing. Refused like "Smith, J[au]", or read as Smith JA
    # (article 1), is right.
    # (fixed: read as PubMed's inverted form, Smith JA)
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, query, index, lex) == {1}


def test_a_full_name_in_natural_order_finds_the_author(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    # Defect: PubMed searches a full author name "in natural or inverted order"
    # ("julia s wong[fau]" or "wong julia s[fau]"); after AND any text is taken as the
    # name whole, so "Jane A Smith[fau]" is looked up as the key "jane a smith", which no
    # article has: accepted, and silently no results. Smith Jane A wrote article 1.
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, "asthma AND Smith Jane A[fau]", index, lex) == {1}
    assert _found(settings, engine, "asthma AND Jane A Smith[fau]", index, lex) == {1}


@pytest.mark.parametrize(
    ("query", "expected"),
    [("asthma AND Smith J[Author - First]", {1, 2, 6}),
     ("asthma AND Smith J[Author - Last]", {4, 6}),
     ("asthma AND Smith John[Author - Full]", {2, 6}),
     ('asthma AND "Global Asthma Network"[cn]', {8}),
     ('asthma AND "Global Asthma Network"[Author - Corporate]', {8})],
)  # fmt: skip
def test_pubmeds_own_author_field_names_are_not_searched_as_words(
    settings: Settings, engine: Engine, tmp_path: Path, query: str, expected: set[int]
) -> None:
    # Defect: PubMed's Advanced Search builder and its "Search details" write the author
    # fields as [Author], [Author - First], [Author - Last], [Author - Full] and
    # [Author - Corporate] (tag [cn] for a collective name). _TAG knows [author] and the
    # long forms "first author name"/"last author name" but not these, and the field-tag
    # refusal (search._FIELD_TAG) does not catch them either: the query is accepted, the
    # author is silently ignored and "smith", "j", "author", "first" are searched as
    # words: every asthma article comes back. A refusal naming the supported tag would
    # also do; silently dropping the author is wrong.
    # (fixed: read as the author tags they are)
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, query, index, lex) == expected


def test_author_keys_from_a_dotted_forename_without_initials() -> None:
    # Not a defect (kept as a control for the next test): a spaced forename gives "smith ja".
    keys = author_keys([{"last_name": "Smith", "fore_name": "J. A."}])
    assert "smith ja" in keys


def test_author_keys_take_the_initials_of_a_dotted_forename() -> None:
    # Defect: a record without initials has them made from the forename's words split at
    # spaces and hyphens only: "J.A." is one word, so its initials are "J", and
    # "Smith JA[au]" / "Smith J.A.[au]" (key "smith ja") miss the author that
    # "J. A." (with a space) or initials "JA" would find.
    keys = author_keys([{"last_name": "Smith", "fore_name": "J.A."}])
    assert "smith ja" in keys
    assert split_authors("asthma AND Smith J.A.[au]")[1][0].key in keys


# ------------------------------------------------------------------- misleading refusals


@pytest.mark.parametrize("query", ["NOT asthma AND Smith J[au]", "Smith J[au] NOT asthma"])
def test_an_author_with_only_an_exclusion_is_not_told_to_search_the_excluded_word(
    settings: Settings, engine: Engine, tmp_path: Path, query: str
) -> None:
    # Defect: checked_query said "the query names only an author (Smith J[au])" and
    # advised 'asthma AND Smith J[au]': the query names an exclusion too, and the advice
    # REQUIRES asthma, the word the user asked to leave out. (Fixed by listing an author
    # alone: Smith J's articles without asthma, the COPD one.)
    index, lex = _world(engine, tmp_path)
    assert _found(settings, engine, query, index, lex) == {5}


def test_excluding_two_authors_is_not_advised_to_require_one() -> None:
    # Defect: "asthma NOT (Smith J[au] OR Li X[au])" (leave both authors out) is refused
    # as "an author cannot be one of alternatives" with the advice 'search Smith J[au]
    # with the topic's words (asthma AND Smith J[au])': that requires the author the user
    # excludes. The refusal may stand, but the way to write it is "asthma NOT Smith J[au]
    # NOT Li X[au]" (accepted). Same for "asthma NOT (children OR Smith J[au])".
    # Since: the first is read as that (tests/ranking/test_authors.py); the second stays
    # refused, with the advice to exclude each
    with pytest.raises(ConfigError) as err:
        checked_query("asthma NOT (children OR Smith J[au])")
    assert "AND Smith J[au]" not in str(err.value)
    checked_query("asthma NOT Smith J[au] NOT Li X[au]")
    checked_query("asthma NOT (Smith J[au] OR Li X[au])")


@pytest.mark.parametrize(
    "name",
    ["do Carmo M", "Ortega y Gasset J", "zu Guttenberg K", "dello Russo C", "degli Esposti M",
     "Silva e Souza M"],
)  # fmt: skip
def test_surnames_with_other_particles_are_read_after_and(name: str) -> None:
    # Defect: after AND the text names the author whole (README), unless a lower-case
    # word comes before a capitalised one (a topic's), particles aside. _PARTICLES lacks
    # common ones (Portuguese do/e, Spanish y, German zu, Italian dello/degli), so these
    # real PubMed surnames are refused as "which words name the author?", with the advice
    # to write "do AND Carmo M[au]" (the word do and another author).
    rest, clauses, problems = split_authors(f"asthma AND {name}[au]")
    assert problems == ()
    assert [c.key for c in clauses] == [fold_term(name)]
