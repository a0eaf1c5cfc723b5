"""Third review of ``OR`` and ``NOT`` — the interactions the first two rounds left: an
exclusion naming an alternative of an OR group, a bracketed NOT leaving its bracket in the
embedded text, a phrase in single quotes after NOT, names with a bracket or a digit first
beside OR (``25(OH)D``, ``(S)-ibuprofen``), gene names holding ``OR`` or ``NO``
(``OR2A4``, ``NO2``), an OR left dangling beside a phrase, a title in capitals with quotes.

Records go the real way: :class:`ingest.records.Record` through :class:`ingest.store.Store`,
a real published index (:func:`ranking.refresh.refresh_index` with the tiny random
encoder), then :func:`ranking.search.search` — on SQLite and on PostgreSQL (one corpus per
database, built once for the module).

The ``xfail(strict=True)`` tests state what the user expects where the code does
otherwise; the plain ones pin what holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.settings import Settings
from ranking.lexical import phrase_forms, query_problems, query_terms, split_exclusions
from ranking.search import checked_query, run_search
from tests.ranking.corpus import BOTH_DATABASES, found_offsets, review_world, titled_records
from tests.tiny_encoder import build_tiny_encoder

P = 46000000

#: offset -> (title, abstract)
CORPUS: dict[int, tuple[str, str]] = {
    1: ("Heart failure in elderly patients", "Heart failure outcomes in the elderly."),
    2: ("Dyspnea in elderly patients", "Dyspnea and breathlessness in the elderly."),
    3: ("Dyspnea and heart failure", "Heart failure causes dyspnea at rest."),
    4: ("COPD rehabilitation", "Pulmonary rehabilitation for COPD patients."),
    5: ("COPD and chronic bronchitis", "Chronic bronchitis in COPD patients."),
    # a range of numbers: "2-4" holds the terms 2 and 4 in a row
    6: ("COPD antibiotics for 2-4 weeks", "COPD exacerbations were treated for 2-4 weeks."),
    7: ("Olfactory receptor expression in cilia", "Olfactory receptor genes in the nose."),
    # vitamin D by its metabolite only, and by its name
    9: ("Serum 25(OH)D levels in winter", "Low 25(OH)D levels were common in winter."),
    10: ("Vitamin D supplements in winter", "Vitamin D supplementation in adults."),
    # the letter S alone, a stereoisomer, a kinase inhibitor
    11: ("Protein S deficiency and thrombosis", "Protein S deficiency raises thrombosis risk."),
    12: ("(S)-ibuprofen pharmacokinetics", "(S)-ibuprofen was absorbed faster."),
    13: ("Kinase inhibitor resistance", "Kinase inhibitor therapy in leukaemia."),
    14: ("COPD and asthma overlap", "Asthma and COPD in smokers."),
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-or3"), max_seq_length=32)


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: str
) -> Iterator[Settings]:
    yield from review_world(request, tmp_path_factory, tiny, "or_third_review",
                            titled_records(P, CORPUS), rerank_candidates=3)


def _found(s: Settings, query: str, mode: str = "lexical") -> set[int]:
    return found_offsets(s, query, P, mode)


def _embedded(s: Settings, query: str) -> list[str]:
    """The texts a semantic search of ``query`` embeds (the real embedder, recorded)."""
    from ranking import index_files
    from ranking.search import _query_embedder

    engine = db.connect(s)
    index = index_files.open_published(s, engine)
    real = _query_embedder(s, engine, index)
    seen: list[str] = []

    def embed(text: str) -> np.ndarray:
        seen.append(text)
        return real(text)

    run_search(s, query, k=5, engine=engine, index=index, embed=embed, mode="semantic")
    return seen


def _refused(query: str) -> bool:
    try:
        checked_query(query)
    except ConfigError:
        return True
    return False


# ----------------------------------------------------------------------- what holds


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_the_same_phrase_in_two_groups_requires_each_group(world: Settings, mode: str) -> None:
    # (HF or dyspnea) and (HF or elderly): 1 (HF), 2 (dyspnea, elderly), 3 (HF, dyspnea)
    found = _found(world, '("heart failure" OR dyspnea) ("heart failure" OR elderly)', mode)
    assert found == {1, 2, 3}, found


@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_a_repeated_alternative_is_one_alternative(world: Settings, mode: str) -> None:
    assert _found(world, '"heart failure" OR dyspnea OR dyspnea OR "heart failure"',
                  mode) == {1, 2, 3}


def test_nested_groups_after_not_say_each_thing_excluded(world: Settings) -> None:
    result = run_search(world, 'COPD NOT ("asthma" OR (bronchitis OR "lung cancer"))', k=20,
                        mode="lexical")
    assert result.excluded == ("asthma", "bronchitis", "lung cancer")
    assert {h.pmid - P for h in result.hits} == {4, 6}


# ------------------------------------------------------------------------ defects


# ranking/lexical.py _split/_alternatives: a phrase that is both an alternative of an OR
# group and excluded — '"heart failure" OR dyspnea NOT "heart failure"' (PubMed: dyspnea
# without heart failure) — stays an alternative: its words remain query terms and
# '"heart failure" OR dyspnea' is what gets embedded, so semantic mode ranks by nearness
# to heart failure the very articles that must not hold it. The README: "B is neither
# searched for nor embedded". Fix: drop an excluded alternative from its group (and from
# the searched text), or refuse the contradiction.
def test_an_excluded_alternative_is_neither_searched_nor_embedded(world: Settings) -> None:
    query = '"heart failure" OR dyspnea NOT "heart failure"'
    if _refused(query):
        return
    assert _found(world, query) == {2}
    assert not {"heart", "failur"} & set(query_terms(query)), query_terms(query)
    assert all("heart" not in t.lower() for t in _embedded(world, query))


# ranking/lexical.py _split: a NOT first in brackets — '(NOT asthma) COPD', 'COPD (NOT
# asthma)', README's form — is cut from "(" to the word it excludes, leaving the closing
# bracket in the searched text: ') COPD' and 'COPD )' are embedded (and
# '(NOT (asthma OR bronchitis)) COPD' leaves ') COPD'), so the query's vector is not that
# of 'COPD'. Fix: cut the bracket pair with the clause.
@pytest.mark.parametrize("query", ["(NOT asthma) COPD", "COPD (NOT asthma)",
                                   "(NOT (asthma OR bronchitis)) COPD"])
def test_a_bracketed_not_leaves_no_bracket_to_embed(world: Settings, query: str) -> None:
    assert split_exclusions(query)[0] == "COPD"
    assert _embedded(world, query) == ["COPD"]


# ranking/lexical.py _NOT_TARGET: a word in single quotes after NOT is excluded ('COPD NOT
# 'asthma''), but a phrase in single quotes — 'COPD NOT 'chronic bronchitis'', the British
# way of quoting — is no target (the quotes may hold no space), so NOT is dropped as an
# operator and "chronic bronchitis" is *searched for*, with no refusal: lexical mode lists
# the COPD-and-chronic-bronchitis article, the one asked to be left out. Fix: take a
# single-quoted phrase as the phrase to exclude (or refuse it, saying to use double
# quotes).
@pytest.mark.parametrize("query", ["COPD NOT 'chronic bronchitis'",
                                   "COPD NOT \u2018chronic bronchitis\u2019"])
def test_not_before_a_phrase_in_single_quotes_excludes_or_is_refused(
    world: Settings, query: str
) -> None:
    if _refused(query):
        return
    assert 5 not in _found(world, query)
    assert "bronchiti" not in query_terms(query)


# ranking/lexical.py _structure: "OR before a number alone is the odds ratio" reads the
# next *match* of _CHAIN_ITEM, and a word stops at a bracket: in '"vitamin D" OR 25(OH)D'
# (the metabolite every vitamin D study measures) the next match is "25", a number, so the
# OR ends the chain and "vitamin D" alone is required — the article naming only 25(OH)D is
# silently missing, in every mode. The second review's comment named 25(OH)D and
# 1,25-dihydroxyvitamin D, but only 5-FU and 2019-nCoV were tested. Fix: a number is one
# followed by space, punctuation or the end, not by a bracket or a letter; take a name
# with brackets inside (25(OH)D, 1,25(OH)2D3) whole.
@pytest.mark.parametrize("mode", ["lexical", "semantic"])
def test_a_metabolite_with_brackets_beside_or_is_an_alternative(
    world: Settings, mode: str
) -> None:
    assert _found(world, '"vitamin D" OR 25(OH)D', mode) == {9, 10}


# ranking/lexical.py _CHAIN_ITEM: a stereo prefix in brackets — '(S)-ibuprofen',
# '(R)-warfarin' — is read as a bracketed group holding the lone letter S, an alternative
# of its own (and -ibuprofen a word after the chain): '"kinase inhibitor" OR
# (S)-ibuprofen' is met by any article holding an "S" — Protein S deficiency is listed
# for a kinase-inhibitor-or-ibuprofen query. The earlier rounds fixed the same for E. and
# p. Fix: take "(X)-word" whole as one alternative, or never let a lone letter stand as
# one.
def test_a_stereo_prefix_beside_or_is_not_a_lone_letter(world: Settings) -> None:
    found = _found(world, '"kinase inhibitor" OR (S)-ibuprofen')
    assert 11 not in found, found
    assert {12, 13} <= found


# ranking/lexical.py _forms: the "loose" form drops an abbreviation in capitals that spells
# a stop word (NO, OR, AS) when two terms are left — meant for '"NO synthase"' — so a
# gene or chemical name holding one, OR2A4 (olfactory receptor), NO2, loses its letters
# and keeps its digits: '"olfactory receptor" OR OR2A4' is met by any text holding "2"
# then "4" — "treated for 2-4 weeks" — and lexical mode lists a COPD antibiotic article.
# Fix: never drop such an abbreviation glued to digits inside one word.
def test_a_gene_name_holding_or_is_no_pair_of_digits(world: Settings) -> None:
    found = _found(world, '"olfactory receptor" OR OR2A4')
    assert found == {7}, found


# Same rule on the exclusion side: 'COPD NOT OR2A4' (or NOT "NO2 exposure") excludes
# every article holding "2 4" ("2 exposures") in a row: the COPD article treated "for 2-4
# weeks", which names no gene, is silently dropped in every mode.
@pytest.mark.parametrize("mode", ["hybrid", "semantic", "lexical"])
def test_not_a_gene_name_holding_or_keeps_a_range_of_numbers(
    world: Settings, mode: str
) -> None:
    assert 6 in _found(world, "COPD NOT OR2A4", mode)


# ranking/lexical.py _structure: "OR NOT x" is refused when x is a term, and a word in
# capitals spelling a stop word counts as an abbreviation (a term) — but in a title typed
# wholly in capitals with a quoted phrase, every word is in capitals: '"HEART FAILURE":
# TO TREAT OR NOT TO TREAT' is refused as "OR NOT TO ... write A NOT TO", nonsense advice
# for a legitimate title (the same title in lower case, and without quotes, is searched;
# the README: NOT before a stop word is a word). Fix: in a query wholly in capitals read
# its words as the lower-case ones (as query_terms does), quotes or not.
def test_a_title_in_capitals_with_quotes_and_or_not_to_is_searched() -> None:
    query = '"HEART FAILURE" IN THE ELDERLY: TO TREAT OR NOT TO TREAT'
    assert checked_query(query) == query
    assert not query_problems(query)


# ranking/lexical.py _query_terms: OR is dropped as an operator only between two words; an
# OR left first or last beside a quoted phrase — '"heart failure" OR' (the alternative
# not typed yet), 'OR "heart failure"' — is kept as the
# term "OR" (odds ratio, in capitals): articles reporting "OR 1.9" rank up, and the word
# is embedded. The second review made a trailing NOT no term; OR beside a phrase is the
# operator by the README. Fix: drop a capital OR next to a quoted phrase or a bracket.
@pytest.mark.parametrize("query", ['"heart failure" OR', 'OR "heart failure"'])
def test_a_dangling_or_beside_a_phrase_is_no_term(query: str) -> None:
    assert "OR" not in query_terms(query) and "or" not in query_terms(query)


# ----------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(
    ["NOT", "OR", "AND", "(", ")", "[", "]", '"', "'", "\u2018", "\u2019", "asthma", "COPD",
     "25(OH)D", "(S)-ibuprofen", "OR2A4", "NOT1", "NO2", "1,25(OH)2D3", "'chronic", "x'",
     "(NOT", "NOT)", "(OR", "OR,", "[18F]FDG", "\u201c", "\u201d", "\u201e", "TO", "1.9",
     ":", ",", "a", "((", "))"]), max_size=9).map(" ".join))
def test_odd_queries_are_refused_or_read_never_an_error(query: str) -> None:
    for read in (checked_query, phrase_forms, query_problems, split_exclusions, query_terms):
        try:
            read(query)
        except ConfigError:
            pass
